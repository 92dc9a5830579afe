"""Write images to an FFCV ``.beton`` file (``mae-trainer write-dataset``).

The output appears under its final name only once it is complete: FFCV writes into a temporary file
beside it, which is renamed at the end and removed on any error or Ctrl-C. A sidecar ``FILE.beton.json``
records what was written (count, classes, settings).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
WRITE_MODES = ("smart", "jpg", "raw")


@dataclass
class WriteSettings:
    """How images are stored. ``smart`` stores an image as JPEG when its raw size (after the
    ``max_resolution`` resize) exceeds ``smart_threshold`` bytes, raw otherwise."""

    max_resolution: int = 256
    write_mode: str = "smart"
    jpeg_quality: int = 90
    smart_threshold: int = 3 * 256 * 256
    num_workers: int = 2

    def validate(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise UsageError(f"--write-mode {self.write_mode!r}: choose one of {', '.join(WRITE_MODES)}")
        if self.max_resolution < 16:
            raise UsageError(f"--max-resolution {self.max_resolution}: must be at least 16 pixels")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"--jpeg-quality {self.jpeg_quality}: must be between 1 and 100")
        if self.num_workers < 1:
            raise UsageError(f"--num-workers {self.num_workers}: must be at least 1")


@dataclass
class ImageSource:
    """An indexable source of ``(HWC uint8 RGB array, label)`` samples, as FFCV's writer reads them."""

    name: str
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    arrays: list[np.ndarray] | None = None  # in-memory images (embedded set) instead of paths

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if self.arrays is not None:
            return self.arrays[index], self.labels[index]
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB")), self.labels[index]
        except Exception as err:  # PIL raises many types; name the file whatever it was
            raise RuntimeError(f"{path}: cannot decode image ({err})") from err


def image_folder_source(root: Path) -> ImageSource:
    """An ImageFolder tree (``root/<class>/<image>``; images directly in ``root`` form one class)."""
    if not root.is_dir():
        raise UsageError(f"--source {root}: no such directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    groups = [(d.name, d) for d in class_dirs] or [(root.name, root)]
    source = ImageSource(name=str(root), classes=[name for name, _ in groups])
    for label, (_, directory) in enumerate(groups):
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                source.paths.append(path)
                source.labels.append(label)
    if not source.paths:
        raise UsageError(f"--source {root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return source


def embedded_source() -> ImageSource:
    """The embedded demo set (crops of the photos that ship with scikit-image)."""
    from .demo import class_names, demo_samples

    arrays, labels = [], []
    for image, label in demo_samples():
        arrays.append(np.asarray(image))
        labels.append(label)
    return ImageSource(name="embedded", classes=class_names(), labels=labels, arrays=arrays)


def resolve_source(spec: str) -> ImageSource:
    return embedded_source() if spec == "embedded" else image_folder_source(Path(spec))


def check_output(output: Path, overwrite: bool) -> None:
    if output.suffix != ".beton":
        raise UsageError(f"--output {output}: the file name must end in .beton")
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output}: already exists (pass --overwrite to replace it)")
    if not output.parent.exists():
        raise UsageError(f"--output {output}: directory {output.parent} does not exist")


def write_beton(source: ImageSource, output: Path, settings: WriteSettings, overwrite: bool = False) -> dict:
    """Write ``source`` to ``output`` atomically and return the summary also saved as ``output.json``."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    settings.validate()
    check_output(output, overwrite)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    fields = {
        "image": RGBImageField(write_mode=settings.write_mode, max_resolution=settings.max_resolution,
                               jpeg_quality=settings.jpeg_quality, smart_threshold=settings.smart_threshold),
        "label": IntField(),
    }
    start = time.perf_counter()
    try:
        writer = DatasetWriter(str(partial), fields, num_workers=settings.num_workers)
        writer.from_indexed_dataset(source, chunksize=64)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    summary = {
        "file": output.name,
        "source": source.name,
        "count": len(source),
        "classes": source.classes,
        "settings": asdict(settings),
        "bytes": output.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    sidecar = output.with_name(output.name + ".json")
    sidecar.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_summary(path: Path) -> dict | None:
    sidecar = path.with_name(path.name + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None

