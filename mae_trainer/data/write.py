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


MIN_SIDE = 8  # smaller images are skipped: no crop of them is worth training on


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as an HWC uint8 RGB array: 16-bit and float scaled to 8 bits, alpha composited on
    white, CMYK/palette/grayscale converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode != "F" or array.max() > 1.0 else 1.0
        gray = np.clip(array / high * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return to_rgb(image)


def probe_image(path: Path) -> str | None:
    """Why ``path`` cannot be written (unreadable, truncated, too small), or None when it can.

    JPEGs are decoded at 1/8 scale (DCT scaling): every entropy-coded byte is still read, so corrupt and
    truncated files fail here, at a fraction of a full decode's cost.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) < MIN_SIDE:
                return f"too small ({width}x{height}, minimum side {MIN_SIDE})"
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Exception as err:  # PIL raises many types for bad files
        return f"unreadable: {type(err).__name__}: {err}"
    return None


@dataclass
class ImageSource:
    """An indexable source of ``(HWC uint8 RGB array, label)`` samples, as FFCV's writer reads them."""

    name: str
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    arrays: list[np.ndarray] | None = None  # in-memory images (embedded set) instead of paths
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if self.arrays is not None:
            return self.arrays[index], self.labels[index]
        return load_rgb(self.paths[index]), self.labels[index]

    def drop_unreadable(self, num_workers: int) -> None:
        """Probe every file (in parallel) and keep only the writable ones; the rest go to ``skipped``.
        FFCV's writer hangs when a worker raises, so nothing that can fail may reach it."""
        if self.arrays is not None:
            return
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            reasons = list(pool.map(probe_image, self.paths, chunksize=64))
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        self.skipped += [
            {"file": str(self.paths[i]), "reason": reasons[i]}
            for i in range(len(reasons))
            if reasons[i] is not None
        ]
        self.paths = [self.paths[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]


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
    if output.parent.exists() and not output.parent.is_dir():
        raise UsageError(f"--output {output}: {output.parent} is not a directory")


def write_beton(source: ImageSource, output: Path, settings: WriteSettings, overwrite: bool = False) -> dict:
    """Write ``source`` to ``output`` atomically and return the summary also saved as ``output.json``."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    settings.validate()
    check_output(output, overwrite)
    source.drop_unreadable(settings.num_workers)
    if len(source) == 0:
        raise UsageError(
            f"--source {source.name}: none of the images can be read "
            f"(first: {source.skipped[0]['file']}: {source.skipped[0]['reason']})"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    fields = {
        "image": RGBImageField(
            write_mode=settings.write_mode,
            max_resolution=settings.max_resolution,
            jpeg_quality=settings.jpeg_quality,
            smart_threshold=settings.smart_threshold,
        ),
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
        "skipped": source.skipped,
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
