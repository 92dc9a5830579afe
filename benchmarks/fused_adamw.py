"""AdamW step time: torch's fused kernel (what ``mae_trainer.training.accelerator.adamw`` picks where the
device has one) against torch's default AdamW (``foreach``), on the real parameters and gradients of an
MAE, in one process, timed in alternation so machine noise hits both alike. fp32 (the master weights
ZeRO-1 steps). One JSON line: ``ratio`` = fused ÷ default step time (below 1: fused is faster).

    .venv/bin/python benchmarks/fused_adamw.py [--preset small] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mae_trainer.modeling import MAEConfig, MAEForPreTraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset(args.preset, image_size=160)).to(args.device)
    model(torch.randn(8, 3, 160, 160, device=args.device), mask_ratio=0.5).loss.backward()
    optimizers = {
        "default": torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95)),
        "fused": torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True),
    }
    best = {kind: float("inf") for kind in optimizers}
    for _ in range(args.rounds):
        for kind, optimizer in optimizers.items():
            for _ in range(3):  # state allocated, caches warm
                optimizer.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            best[kind] = min(best[kind], (time.perf_counter() - start) / args.steps)
    print(
        json.dumps(
            {
                "benchmark": "fused_adamw",
                "preset": args.preset,
                "device": args.device,
                "parameters": sum(p.numel() for p in model.parameters()),
                "threads": torch.get_num_threads(),
                "default_step_ms": round(best["default"] * 1e3, 2),
                "fused_step_ms": round(best["fused"] * 1e3, 2),
                "baseline": "torch.optim.AdamW default (foreach)",
                "ratio": round(best["fused"] / best["default"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
