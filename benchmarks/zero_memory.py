"""ZeRO-1's promise, measured: optimizer-state and parameter bytes per rank for MAE-B/16 under accelerate +
DeepSpeed ZeRO-1 BF16 (``ds_configs/zero1_bf16.json``), 1 rank against N ranks.

Each layout is a real ``accelerate launch`` of this file (``--config_file accelerate_configs/cpu_1proc.yaml``
/ ``cpu_2proc.yaml`` on CPUs; ``1gpu.yaml`` / ``1node_8gpu.yaml`` where CUDA is present), which builds the
model and the AdamW groups as ``pretrain`` does, takes one real training step through the trainer's
``Engine`` (forward, backward, ZeRO optimizer step) and then reads, on every rank, the optimizer DeepSpeed
built: its fp32 master partition (the parameters of the wrapped torch AdamW) and the Adam moments
(that optimizer's state), plus the rank's BF16 model parameters. One JSON line per layout, then one line
per N with the ratio N-rank ÷ 1-rank optimizer-state bytes per rank (ideal 1/N; goal ≤ 1.1/N: 0.55 for 2).
The image side does not change any of these bytes, so the step runs at 64 px to stay short.

    .venv/bin/python benchmarks/zero_memory.py                # 1 and 2 CPU ranks (40 s here)
    .venv/bin/python benchmarks/zero_memory.py --ranks 8      # 1 and 8 ranks on a GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD_TAG = "zero_memory_child"


def launch_config(ranks: int, cuda: bool) -> list[str]:
    """``--config_file ...`` (and ``--num_processes`` when the file holds another count) for ``ranks``."""
    if cuda:
        name, count = ("1gpu.yaml", 1) if ranks == 1 else ("1node_8gpu.yaml", 8)
    else:
        name, count = ("cpu_1proc.yaml", 1) if ranks == 1 else ("cpu_2proc.yaml", 2)
    config = ["--config_file", str(ROOT / "accelerate_configs" / name)]
    return config + ([] if ranks == count else ["--num_processes", str(ranks)])


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def child(output_dir: Path, batch: int, side: int) -> None:
    """One rank of a layout: one training step, then this rank's bytes, gathered and printed by rank 0."""
    import numpy as np  # noqa: F401  (numpy before torch, as pretrain)
    import torch
    import torch.distributed as dist
    from timm.optim import param_groups_weight_decay

    from mae_trainer import MAEConfig, MAEForPreTraining
    from mae_trainer.config import TrainingConfig
    from mae_trainer.training.accelerator import make_accelerator
    from mae_trainer.training.engine import Engine

    config = TrainingConfig(output_dir=output_dir, batch_size=batch)
    accelerator = make_accelerator(config, name="zero", micro_batch=batch)
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("base"))
    params = sum(p.numel() for p in model.parameters())
    groups = param_groups_weight_decay(model, 0.05, model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    engine = Engine(
        accelerator, config, name="zero", total_steps=1, peak_lr=1.5e-4, warmup_steps=0, hparams={}
    )
    engine.set_lr(optimizer)
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch, 3, side, side, device=engine.device).to(dtype)
    engine.micro_step(model, optimizer, lambda: model(x, mask_ratio=0.75), images=batch, where="benchmark")
    assert engine.step == 1 and engine.deepspeed, "expected one DeepSpeed optimizer step"

    zero = model.optimizer  # DeepSpeed's ZeRO optimizer; .optimizer is the torch AdamW it steps
    inner = zero.optimizer
    master = tensor_bytes(p for group in inner.param_groups for p in group["params"])
    moments = tensor_bytes(t for state in inner.state.values() for t in state.values() if torch.is_tensor(t))
    peak_rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    mine = {
        "zero_optimizer": type(zero).__name__,
        "param_dtype": str(dtype).removeprefix("torch."),
        "param_bytes": tensor_bytes(model.parameters()),
        "fp32_master_bytes": master,
        "adam_state_bytes": moments,
        "peak_rss_mib": round(peak_rss / 1024),
    }
    ranks = [None] * engine.num_processes
    dist.all_gather_object(ranks, mine)
    if engine.is_main:
        print(json.dumps({CHILD_TAG: ranks, "params": params}), flush=True)
    engine.finish()


def measure(ranks: int, cuda: bool, batch: int, side: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            *launch_config(ranks, cuda),
            __file__,
            "--child",
            tmp,
            "--batch",
            str(batch),
            "--side",
            str(side),
        ]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{ranks}-rank launch failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    found = json.loads(next(line for line in out.stdout.splitlines() if CHILD_TAG in line))
    per_rank = found[CHILD_TAG]
    optimizer_state = [r["fp32_master_bytes"] + r["adam_state_bytes"] for r in per_rank]
    return {
        "benchmark": "zero_memory",
        "model": "MAE-B/16",
        "params": found["params"],
        "ranks": ranks,
        "device": "cuda" if cuda else "cpu",
        "ds_config": "ds_configs/zero1_bf16.json",
        "zero_optimizer": per_rank[0]["zero_optimizer"],
        "param_dtype": per_rank[0]["param_dtype"],
        "param_bytes_per_rank": [r["param_bytes"] for r in per_rank],
        "fp32_master_bytes_per_rank": [r["fp32_master_bytes"] for r in per_rank],
        "adam_state_bytes_per_rank": [r["adam_state_bytes"] for r in per_rank],
        "optimizer_state_bytes_per_rank": optimizer_state,
        "optimizer_state_mib_max_rank": round(max(optimizer_state) / 2**20, 1),
        "peak_rss_mib_per_rank": [r["peak_rss_mib"] for r in per_rank],
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", default="2", help="comma-separated rank counts compared with 1 rank")
    parser.add_argument("--batch", type=int, default=2, help="images per rank in the one step")
    parser.add_argument("--side", type=int, default=64, help="image side of the one step")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child), args.batch, args.side)

    import torch

    cuda = torch.cuda.is_available()
    counts = [int(n) for n in args.ranks.split(",") if int(n) != 1]
    layouts = {n: measure(n, cuda, args.batch, args.side) for n in [1, *counts]}
    for layout in layouts.values():
        print(json.dumps(layout), flush=True)
    one = max(layouts[1]["optimizer_state_bytes_per_rank"])
    for n in counts:
        ratio = max(layouts[n]["optimizer_state_bytes_per_rank"]) / one
        print(
            json.dumps(
                {
                    "benchmark": "zero_memory",
                    "metric": "optimizer-state bytes per rank (largest rank)",
                    "baseline": "1 rank, same model, config and step",
                    "ranks": n,
                    "ratio": round(ratio, 4),
                    "ideal": round(1 / n, 4),
                    "goal": f"<= {1.1 / n:.4g}",
                    "met": ratio <= 1.1 / n,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
