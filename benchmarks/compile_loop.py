"""``pretrain --compile`` in the real training loop: two real ``mae-trainer pretrain`` runs on the same data,
seed and progressive schedule (two stages of different side and mask ratio), one eager (the baseline) and one
with ``--compile``, fp32 on this machine's CPU (BF16 has no native support here; on a GPU see
``benchmarks/gpu_check.py``).

Per stage: the steady images/s (median of the stage's log windows after its first, which holds the
stage's compile) of each run and ``ratio`` = compiled ÷ eager. A last line gives the whole runs' wall times
(compiles included) and the graphs compiled (one per stage shape: the log line the run prints).

    .venv/bin/python benchmarks/compile_loop.py [--model small] [--steps 0:64:0.5,1:96:0.75]
        [--epochs 2] [--batch 16] [--log-every 4]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(args, data: Path, out: Path, compiled: bool) -> tuple[float, list[dict], str]:
    command = [
        str(BIN / "mae-trainer"),
        "pretrain",
        "--data", str(data),
        "--model", args.model,
        "--resolution", str(args.resolution),
        "--progressive", "steps",
        "--resolution-steps", args.steps,
        "--epochs", str(args.epochs),
        "--warmup-epochs", "0.5",
        "--batch-size", str(args.batch),
        "--num-workers", "1",
        "--log-every", str(args.log_every),
        "--recon-images", "0",
        "--output-dir", str(out),
        "--overwrite",
        *(["--compile"] if compiled else []),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, records, result.stdout


def steady(records: list[dict]) -> dict[int, float]:
    """Per stage side: the median images/s of its windows after its first."""
    by_side: dict[int, list[float]] = {}
    for record in records:
        by_side.setdefault(record["resolution"], []).append(record["images_per_s"])
    return {side: statistics.median(rates[1:]) for side, rates in by_side.items() if len(rates) > 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--steps", default="0:64:0.5,1:96:0.75")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "embedded_128.beton"
    if not data.exists():
        subprocess.run(
            [str(BIN / "mae-trainer"), "write-dataset", "--source", "embedded", "--output", str(data),
             "--max-resolution", "128"],
            check=True, capture_output=True,
        )  # fmt: skip
    eager_wall, eager, _ = run(args, data, args.work / "compile_loop_eager", compiled=False)
    compiled_wall, compiled, stdout = run(args, data, args.work / "compile_loop_compiled", compiled=True)
    eager_rates, compiled_rates = steady(eager), steady(compiled)
    for side in eager_rates:
        print(
            json.dumps(
                {
                    "benchmark": "compile_loop",
                    "model": args.model,
                    "resolution": side,
                    "batch": args.batch,
                    "precision": "fp32 (CPU)",
                    "baseline": "the same run without --compile",
                    "eager_img_per_s": round(eager_rates[side], 1),
                    "compiled_img_per_s": round(compiled_rates[side], 1),
                    "ratio": round(compiled_rates[side] / eager_rates[side], 3),
                }
            ),
            flush=True,
        )
    graphs = re.search(r"torch\.compile: (\d+) graph\(s\) compiled for (\d+) stage shape", stdout)
    print(
        json.dumps(
            {
                "benchmark": "compile_loop",
                "case": "whole run (compiles included)",
                "steps": eager[-1]["step"],
                "eager_wall_s": round(eager_wall, 1),
                "compiled_wall_s": round(compiled_wall, 1),
                "graphs_compiled": int(graphs.group(1)) if graphs else None,
                "stage_shapes": int(graphs.group(2)) if graphs else None,
                "ratio": round(compiled_wall / eager_wall, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
