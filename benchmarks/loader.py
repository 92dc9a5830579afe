"""Data-loading throughput: our FFCV loader vs a torch DataLoader with PIL RandomResizedCrop.

Same real-photo source (crops of scikit-image's bundled photos, JPEG quality 90, long side ≤ 320 px), same
crop distribution (scale 0.2–1, ratio 3/4–4/3) and flip, uint8 CHW output, same batch size and worker count.
Ours reads jpg (full decode and crop decode), smart and raw .beton files written from those files; the
baseline decodes the JPEG files with PIL in DataLoader workers. One warm-up epoch each (FFCV compiles its
pipeline with numba then — its cost is reported as `first_epoch_compile_s`), then timed epochs. One JSON
line per (resolution, format, crop decode).

    .venv/bin/python benchmarks/loader.py [--sizes 112,160,224] [--workers 2] [--epochs 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _photos import beton, photo_folder

from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.train_loader import ProgressiveLoader


def torch_loader(folder: Path, resolution: int, batch: int, workers: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(resolution, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    data = datasets.ImageFolder(str(folder), transform=tf)
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
        prefetch_factor=4,
    )


def timed_epochs(make_epoch, epochs: int) -> tuple[float, float]:
    """(first epoch seconds, images/s over the next ``epochs``); ``make_epoch(e)`` iterates epoch ``e``."""
    start = time.perf_counter()
    for _ in make_epoch(0):
        pass
    first = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in make_epoch(epoch):
            images += (batch.images if hasattr(batch, "images") else batch[0]).shape[0]
    return first, images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="112,160,224")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = photo_folder(args.work, per_photo=64)
    betons = {mode: beton(folder, mode) for mode in ("jpg", "smart", "raw")}
    variants = [("jpg", False), ("jpg", True), ("smart", False), ("raw", False)]
    torch.set_num_threads(1)
    for size in map(int, args.sizes.split(",")):
        baseline_loader = torch_loader(folder, size, args.batch, args.workers)
        base_first, base_rate = timed_epochs(lambda _epoch, dl=baseline_loader: dl, args.epochs)
        del baseline_loader  # stop its workers before timing ours
        for mode, crop_decode in variants:
            schedule = ResolutionSchedule(resolution=size, batch_size=args.batch)
            ours = ProgressiveLoader(
                betons[mode], schedule, num_workers=args.workers, seed=0, crop_decode=crop_decode
            )
            first, rate = timed_epochs(lambda epoch, loader=ours: loader.epoch(epoch), args.epochs)
            compile_s = first - ours.batches_in_epoch(0) * args.batch / rate  # first epoch minus a steady one
            print(
                json.dumps(
                    {
                        "benchmark": "loader",
                        "resolution": size,
                        "format": mode,
                        "crop_decode": crop_decode,
                        "workers": args.workers,
                        "batch": args.batch,
                        "baseline": "torch DataLoader + PIL RandomResizedCrop on the JPEG files",
                        "ours_img_per_s": round(rate, 1),
                        "baseline_img_per_s": round(base_rate, 1),
                        "ratio": round(rate / base_rate, 2),
                        "first_epoch_compile_s": round(compile_s, 1),
                        "baseline_first_epoch_s": round(base_first, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
