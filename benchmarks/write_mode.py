"""Which ``write-dataset --write-mode`` to default to: file size and training-loader cost of jpg vs smart.

Data: real-photo crops (scikit-image's bundled photos) in two groups — ImageNet-like (short side 300–400 px,
long side ≤ 500: 90 % of the images) and small (short side 96–160 px: 10 %, the thumbnails a crawl also
holds). Both written at ``write-dataset``'s defaults (longest side 500, JPEG quality 90) as ``jpg`` (every
image JPEG) and ``smart`` (JPEG only above ``--smart-threshold``, 3·256·256 bytes raw; below it raw pixels).
For each: bytes, JPEG/raw sample counts, and the training loader's (``ProgressiveLoader``: crop decode,
bicubic, 2 threads, batch 64) CPU seconds per image and images/s at 160 and 224 px after a warm-up epoch.
One JSON line per (mode, size); ``cpu_ratio_vs_jpg`` = jpg ÷ this mode (above 1: cheaper than jpg).

    .venv/bin/python benchmarks/write_mode.py [--epochs 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _photos import photo_folder

from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.sources import image_folder_source
from mae_trainer.data.train_loader import ProgressiveLoader
from mae_trainer.data.write import WriteSettings, write_beton


def mixed_folder(work: Path) -> Path:
    """ImageNet-like photos plus 10 % small ones, as one ImageFolder."""
    large = photo_folder(work, per_photo=58, min_side=300, max_side=400, max_resolution=500)
    small = photo_folder(work, per_photo=6, min_side=96, max_side=160, max_resolution=500)
    mixed = work / "mixed"
    if not mixed.exists():
        for group, folder in (("large", large), ("small", small)):
            for path in folder.rglob("*.jpg"):
                target = mixed / path.parent.name / f"{group}_{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
    return mixed


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path: Path, resolution: int, epochs: int) -> tuple[float, float]:
    """(CPU seconds per image, images/s) of ``epochs`` timed epochs after one warm-up epoch."""
    schedule = ResolutionSchedule(resolution=resolution, batch_size=64)
    loader = ProgressiveLoader(path, schedule, num_workers=2, seed=0, rank=0, world_size=1)
    for _ in loader.epoch(0):  # numba compiles the pipeline here
        pass
    images, cpu, wall = 0, cpu_seconds(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in loader.epoch(epoch):
            images += batch.images.shape[0]
    return (cpu_seconds() - cpu) / images, images / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="write_mode_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = mixed_folder(work)
    written = {}
    for mode in ("jpg", "smart"):
        path = work / f"{mode}.beton"
        summary = write_beton(
            image_folder_source(folder), path, WriteSettings(write_mode=mode), overwrite=True
        )
        written[mode] = (path, summary)
    for resolution in (160, 224):
        results = {mode: measure(path, resolution, args.epochs) for mode, (path, _) in written.items()}
        for mode, (_, summary) in written.items():
            cpu, rate = results[mode]
            line = {
                "benchmark": "write_mode",
                "mode": mode,
                "resolution": resolution,
                "images": summary["count"],
                "jpeg": summary["jpeg"],
                "raw": summary["raw"],
                "mib": round(summary["bytes"] / 2**20, 1),
                "cpu_ms_per_image": round(cpu * 1e3, 3),
                "images_per_s": round(rate, 1),
                "cpu_ratio_vs_jpg": round(results["jpg"][0] / cpu, 3),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
