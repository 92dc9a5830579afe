"""CPU time of a tiny plain ``mae-trainer pretrain`` run through ``cli.main`` in a process that has imported
the training stack already (what the tests' ``conftest.run_to_end`` does) ÷ the same run in a fresh
``mae-trainer`` process (imports included).

The data is the first 160 embedded photos at 64 px (10 steps of 16 an epoch); the run is MAE-Tiny at 32 px
for 2 epochs, one torch thread, no trackers, both variants on one numba cache (filled by an untimed warm-up of
each first). The variants alternate (round robin), so other load hits them alike. CPU time is user + system:
``os.times()`` of this process for the in-process run, of the reaped child for the fresh one. One JSON line;
``ratio`` = in-process median ÷ fresh-process median.

    .venv/bin/python benchmarks/in_process_run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--model tiny --resolution 32 --epochs 2 --warmup-epochs 1 --batch-size 16 --num-workers 1 "
         "--log-every 1 --recon-images 0 --report-to none --overwrite").split()  # fmt: skip


def cpu_seconds(children: bool) -> float:
    t = os.times()
    return t.children_user + t.children_system if children else t.user + t.system


def fresh(data: Path, out: Path) -> float:
    before = cpu_seconds(children=True)
    cmd = [str(Path(sys.executable).parent / "mae-trainer"), "pretrain", "--data", str(data), "--output-dir",
           str(out), *FLAGS]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return cpu_seconds(children=True) - before


def in_process(data: Path, out: Path) -> float:
    from mae_trainer.cli import main

    before = cpu_seconds(children=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["pretrain", "--data", str(data), "--output-dir", str(out), *FLAGS])
    if status:
        raise SystemExit(f"the in-process run ended with status {status}")
    return cpu_seconds(children=False) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mae_trainer_in_process_"))
    os.environ["MAE_TRAINER_NUMBA_CACHE"] = str(work / "numba")
    try:
        import torch

        from mae_trainer.data.sources import embedded_source
        from mae_trainer.data.write import WriteSettings, write_beton

        torch.set_num_threads(1)
        source = embedded_source()
        source.order = source.order[:160]
        data = work / "small.beton"
        write_beton(source, data, WriteSettings(max_resolution=64, write_mode="jpg", num_workers=1))
        times: dict[str, list[float]] = {"in_process": [], "fresh": []}
        for round_ in range(args.repeats + 1):  # round 0 fills the numba cache and imports: not timed
            for name, run in (("fresh", fresh), ("in_process", in_process)):
                seconds = run(data, work / name)
                if round_:
                    times[name].append(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours, base = statistics.median(times["in_process"]), statistics.median(times["fresh"])
    print(json.dumps({
        "benchmark": "in_process_run",
        "case": "tiny plain pretrain through cli.main, the stack imported already (conftest.run_to_end)",
        "baseline": "the same run in a fresh mae-trainer process",
        "median_cpu_s": round(ours, 2),
        "baseline_median_cpu_s": round(base, 2),
        "range_cpu_s": [round(min(times["in_process"]), 2), round(max(times["in_process"]), 2)],
        "baseline_range_cpu_s": [round(min(times["fresh"]), 2), round(max(times["fresh"]), 2)],
        "ratio": round(ours / base, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
