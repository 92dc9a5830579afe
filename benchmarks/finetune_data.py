"""Fine-tune data throughput: the FFCV path vs today's PIL path, images/s up to a mixed batch.

Both paths turn the same real-photo JPEGs (crops of scikit-image's bundled photos, long side 512 px, q90)
into normalised, RandAugment-ed (timm's ``rand-m9-mstd0.5-inc1``), randomly erased (0.25) 224 px batches
of 64, mixed by timm's ``Mixup`` (mixup 0.8, cutmix 1.0, smoothing 0.1) in the main process:

- ours: ``ProgressiveLoader`` over a jpg ``.beton`` written from those files (crop decode, bicubic,
  RandomResizedCrop scale 0.08–1, ``--workers`` decode threads), then :class:`BatchAugment` on the CPU
  batch in the main process;
- baseline: ``data.labelled.LabelledImages`` + ``train_transform(224, "randaug", ...)`` (PIL) in a torch
  ``DataLoader`` with ``--workers`` processes.

One warm-up epoch each (FFCV compiles its pipeline with numba then), then ``--rounds`` rounds of
``--epochs`` timed epochs, alternating the paths; the best round of each counts. Prints one JSON line with
both rates and ``ratio`` = ours ÷ baseline.

    .venv/bin/python benchmarks/finetune_data.py [--workers 2] [--epochs 2] [--rounds 3] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _photos import beton, photo_folder

from mae_trainer.data.batch_augment import BatchAugment, augment_seed
from mae_trainer.data.labelled import LabelledImages, open_labelled, train_transform
from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.train_loader import ProgressiveLoader
from mae_trainer.training.accelerator import keep_host_memory

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESOLUTION, REPROB = 224, 0.25


def mixup(classes: int):
    from timm.data import Mixup

    return Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=classes)


def timed(run_epoch, epochs: int, first: int) -> float:
    """images/s over ``epochs`` epochs from ``first``; ``run_epoch(e)`` returns its image count."""
    images, start = 0, time.perf_counter()
    for epoch in range(first, first + epochs):
        images += run_epoch(epoch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--no-host-heap", action="store_true", help="leave glibc's malloc as it is (keep_host_memory)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of each path)")
    parser.add_argument("--per-photo", type=int, default=40, help="images per source photo (16 photos)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="intra-op threads of the main process (0: torch's default)",
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = photo_folder(args.work, per_photo=args.per_photo, min_side=384, max_side=512, max_resolution=512)
    path = beton(folder, "jpg", max_resolution=512)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    source = open_labelled(folder)
    classes = len(source.classes)

    if not args.no_host_heap:  # what a training command does on the CPU, for both paths (accelerator.py)
        keep_host_memory()
    transform = train_transform(RESOLUTION, "randaug", MEAN, STD, REPROB)
    data = LabelledImages(source, range(len(source)), transform)
    baseline_loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=True, prefetch_factor=4,
    )  # fmt: skip
    mix = mixup(classes)

    def baseline_epoch(_epoch: int) -> int:
        count = 0
        for images, labels in baseline_loader:
            images, _targets = mix(images, labels)
            count += images.shape[0]
        return count

    schedule = ResolutionSchedule(resolution=RESOLUTION, batch_size=args.batch)
    loader = ProgressiveLoader(
        path, schedule, num_workers=args.workers, seed=0, crop_decode=True, interpolation="bicubic",
        scale=(0.08, 1.0),
    )  # fmt: skip
    augment = BatchAugment("randaug", MEAN, STD, REPROB, RESOLUTION)
    mix = mixup(classes)

    def ffcv_epoch(epoch: int) -> int:
        count = 0
        for batch in loader.epoch(epoch):
            images = augment(batch.images, augment_seed(0, epoch, batch.micro_batch))
            images, _targets = mix(images, batch.labels.long())
            count += images.shape[0]
        return count

    # One warm-up epoch each (FFCV compiles its pipeline then; the DataLoader starts its workers), then
    # rounds that alternate the two paths, so that a change in machine load hits both; best round each.
    # Idle persistent workers and FFCV threads hold no CPU between epochs.
    start = time.perf_counter()
    baseline_epoch(0)
    base_warm = time.perf_counter() - start
    start = time.perf_counter()
    ffcv_epoch(0)
    warm = time.perf_counter() - start
    base_rates, our_rates = [], []
    for round_ in range(args.rounds):
        first = 1 + round_ * args.epochs
        base_rates.append(timed(baseline_epoch, args.epochs, first))
        our_rates.append(timed(ffcv_epoch, args.epochs, first))
    base_rate, ours = max(base_rates), max(our_rates)
    print(
        json.dumps(
            {
                "benchmark": "finetune_data",
                "resolution": RESOLUTION,
                "images": len(source),
                "workers": args.workers,
                "torch_threads": torch.get_num_threads(),
                "batch": args.batch,
                "ours": "ProgressiveLoader (crop decode, bicubic, scale 0.08-1) + BatchAugment randaug (CPU) "
                "+ Mixup",
                "baseline": "DataLoader + LabelledImages + PIL train_transform randaug + Mixup",
                "host_heap": not args.no_host_heap,
                "ours_img_per_s": round(ours, 1),
                "baseline_img_per_s": round(base_rate, 1),
                "ratio": round(ours / base_rate, 2),
                "rounds_ours_img_per_s": [round(r, 1) for r in our_rates],
                "rounds_baseline_img_per_s": [round(r, 1) for r in base_rates],
                "ours_warmup_epoch_s": round(warm, 1),
                "baseline_warmup_epoch_s": round(base_warm, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
