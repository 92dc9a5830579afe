"""Shared benchmark data: real-photo crops (scikit-image's bundled photos) as JPEG files and .beton files."""

from __future__ import annotations

from pathlib import Path

from mae_trainer.data.demo import demo_samples
from mae_trainer.data.sources import image_folder_source
from mae_trainer.data.write import WriteSettings, write_beton
from mae_trainer.publish import publishing


def photo_folder(
    root: Path, per_photo: int = 32, min_side: int = 256, max_side: int = 400, max_resolution: int = 320
) -> Path:
    """ImageFolder of JPEG crops (quality 90), already resized so the long side is ≤ ``max_resolution``,
    the same pre-resizing the .beton files get. Built once per ``root``."""
    folder = root / f"photos_{per_photo}_{min_side}_{max_side}_{max_resolution}"
    if not folder.exists():
        with publishing(folder) as partial:
            for i, (image, label) in enumerate(demo_samples(per_photo, min_side, max_side)):
                scale = min(1.0, max_resolution / max(image.size))
                image = image.resize((round(image.width * scale), round(image.height * scale)))
                (partial / f"c{label:02d}").mkdir(parents=True, exist_ok=True)
                image.save(partial / f"c{label:02d}" / f"{i:05d}.jpg", quality=90)
    return folder


def beton(folder: Path, mode: str, max_resolution: int = 320, smart_threshold: int = 3 * 256 * 256) -> Path:
    path = folder.with_name(f"{folder.name}_{mode}.beton")
    if not path.exists():
        settings = WriteSettings(
            max_resolution=max_resolution,
            write_mode=mode,
            jpeg_quality=90,
            smart_threshold=smart_threshold,
            num_workers=2,
        )
        write_beton(image_folder_source(folder), path, settings)
    return path
