"""Cost of one pre-training epoch at 160 px relative to 224 px on the same data (the saving progressive
resolution buys). Real components: our FFCV loader over a jpg .beton of real photos, MAEForPreTraining,
AdamW, fp32 on the CPU, forward + backward + step per batch; mask ratio 0.75 at both sizes (the
constant-visible variant is reported too). One warm-up epoch per size, then one timed epoch each,
alternating. Prints one JSON line; goal: ratio ≤ 0.55.

    .venv/bin/python benchmarks/progressive_epoch.py [--model small] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _photos import beton, photo_folder

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.data.normalize import normalize, stats_tensor
from mae_trainer.data.resolution import ResolutionSchedule, constant_visible_mask_ratio
from mae_trainer.data.train_loader import ProgressiveLoader


def epoch_seconds(loader, model, optimizer, epoch: int, mask_ratio: float) -> float:
    mean, std = stats_tensor(model.config.image_mean, "cpu"), stats_tensor(model.config.image_std, "cpu")
    start = time.perf_counter()
    for batch in loader.epoch(epoch):
        loss = model(normalize(batch.images, mean, std, torch.float32), mask_ratio=mask_ratio).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data = beton(photo_folder(args.work, per_photo=64), "jpg")
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset(args.model)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    loaders = {
        res: ProgressiveLoader(
            data, ResolutionSchedule(resolution=res, batch_size=args.batch), num_workers=args.workers
        )
        for res in (160, 224)
    }
    visible_mask = constant_visible_mask_ratio(160, 16, 224, 0.75)
    for loader in loaders.values():  # warm-up: numba compile, allocator, page cache
        epoch_seconds(loader, model, optimizer, 0, 0.75)
    seconds = {
        key: epoch_seconds(loaders[res], model, optimizer, 1, mask)
        for key, res, mask in (("160", 160, 0.75), ("224", 224, 0.75), ("160cv", 160, visible_mask))
    }
    print(
        json.dumps(
            {
                "benchmark": "progressive_epoch",
                "model": args.model,
                "batch": args.batch,
                "threads": args.threads,
                "baseline": "one epoch at 224 px, mask 0.75",
                "epoch_224_s": round(seconds["224"], 1),
                "epoch_160_s": round(seconds["160"], 1),
                "ratio": round(seconds["160"] / seconds["224"], 3),
                "epoch_160_constant_visible_s": round(seconds["160cv"], 1),
                "constant_visible_mask_ratio": visible_mask,
                "ratio_constant_visible": round(seconds["160cv"] / seconds["224"], 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
