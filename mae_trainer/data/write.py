"""Write images to an FFCV ``.beton`` file (``mae-trainer write-dataset``).

The output appears under its final name only once it is complete: FFCV writes into a temporary file
beside it, which is renamed at the end and removed on any error or Ctrl-C. A sidecar ``FILE.beton.json``
records what was written (count, classes, settings).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
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


def probe(open_image) -> str | None:
    """Why an image cannot be written (unreadable, truncated, too small), or None when it can.

    JPEGs are decoded at 1/8 scale (DCT scaling): every entropy-coded byte is still read, so corrupt and
    truncated files fail here, at a fraction of a full decode's cost.
    """
    try:
        with open_image() as image:
            width, height = image.size
            if min(width, height) < MIN_SIDE:
                return f"too small ({width}x{height}, minimum side {MIN_SIDE})"
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Exception as err:  # PIL raises many types for bad files
        return f"unreadable: {type(err).__name__}: {err}"
    return None


_PROBED = None  # the ImageSource being probed, inherited by the forked probe workers


def _probe_index(item: int) -> str | None:
    return probe(lambda: _PROBED.open(item))


class ImageSource:
    """An indexable source of ``(HWC uint8 RGB array, label)`` samples, as FFCV's writer reads them.

    Subclasses say how to open item ``i`` (:meth:`open`) and how to name it in reports (:meth:`describe`).
    """

    def __init__(self, name: str, classes: list[str], labels: list[int]):
        self.name, self.classes, self.labels = name, classes, list(labels)
        self.order = list(range(len(self.labels)))  # the items kept, in writing order
        self.skipped: list[dict] = []

    def open(self, item: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, item: int) -> str:
        return f"{self.name}[{item}]"

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        item = self.order[index]
        with self.open(item) as image:
            return to_rgb(image), self.labels[item]

    def select(self, limit: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        """Keep a seeded random ``fraction`` of the items (in their order), then the first ``limit``."""
        if fraction is not None:
            count = max(1, round(len(self.order) * fraction))
            chosen = np.random.default_rng(seed).choice(len(self.order), size=count, replace=False)
            self.order = [self.order[i] for i in sorted(chosen)]
        if limit is not None:
            self.order = self.order[:limit]

    def drop_unreadable(self, num_workers: int) -> None:
        """Probe every item (in forked workers) and keep only the writable ones; the rest go to ``skipped``.
        FFCV's writer hangs when a worker raises, so nothing that can fail may reach it."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        global _PROBED
        _PROBED = self
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=context) as pool:
                reasons = list(pool.map(_probe_index, self.order, chunksize=256))
        finally:
            _PROBED = None
        self.skipped += [
            {"file": self.describe(item), "reason": reason}
            for item, reason in zip(self.order, reasons)
            if reason is not None
        ]
        self.order = [item for item, reason in zip(self.order, reasons) if reason is None]


class FolderSource(ImageSource):
    def __init__(self, name: str, classes: list[str], paths: list[Path], labels: list[int]):
        super().__init__(name, classes, labels)
        self.paths = paths

    def open(self, item: int) -> Image.Image:
        return Image.open(self.paths[item])

    def describe(self, item: int) -> str:
        return str(self.paths[item])


class ArraySource(ImageSource):
    """Images already in memory (the embedded demo set); always readable."""

    def __init__(self, name: str, classes: list[str], arrays: list[np.ndarray], labels: list[int]):
        super().__init__(name, classes, labels)
        self.arrays = arrays

    def open(self, item: int) -> Image.Image:
        return Image.fromarray(self.arrays[item])

    def drop_unreadable(self, num_workers: int) -> None:
        return


class HFDatasetSource(ImageSource):
    """A Hugging Face ``datasets`` split; images are read from their stored bytes (or paths)."""

    def __init__(self, name: str, dataset, image_column: str, label_column: str | None):
        from datasets import ClassLabel
        from datasets import Image as ImageFeature

        for flag, column in (("--image-column", image_column), ("--label-column", label_column)):
            if column is not None and column not in dataset.column_names:
                raise UsageError(
                    f"{flag} {column!r}: not a column of {name} (columns: {', '.join(dataset.column_names)})"
                )
        if label_column is None:
            classes, labels = [name], [0] * len(dataset)
        elif isinstance(dataset.features[label_column], ClassLabel):
            classes, labels = list(dataset.features[label_column].names), list(dataset[label_column])
        else:
            values = [str(v) for v in dataset[label_column]]
            classes = sorted(set(values))
            index = {c: i for i, c in enumerate(classes)}
            labels = [index[v] for v in values]
        super().__init__(name, classes, labels)
        self.dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        self.image_column = image_column

    def open(self, item: int) -> Image.Image:
        import io

        cell = self.dataset[item][self.image_column]
        return Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") else Image.open(cell["path"])


def image_folder_source(root: Path) -> FolderSource:
    """An ImageFolder tree (``root/<class>/<image>``; images directly in ``root`` form one class)."""
    if not root.is_dir():
        raise UsageError(f"--source {root}: no such directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    groups = [(d.name, d) for d in class_dirs] or [(root.name, root)]
    paths, labels = [], []
    for label, (_, directory) in enumerate(groups):
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                paths.append(path)
                labels.append(label)
    if not paths:
        raise UsageError(f"--source {root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return FolderSource(str(root), [name for name, _ in groups], paths, labels)


def embedded_source() -> ArraySource:
    """The embedded demo set (crops of the photos that ship with scikit-image)."""
    from .demo import class_names, demo_samples

    arrays, labels = [], []
    for image, label in demo_samples():
        arrays.append(np.asarray(image))
        labels.append(label)
    return ArraySource("embedded", class_names(), arrays, labels)


def hf_source(
    path: Path, kind: str, split: str, image_column: str, label_column: str | None
) -> HFDatasetSource:
    """A dataset saved with ``save_to_disk`` (``kind="hf-disk"``) or a local folder read by the
    ``imagefolder`` builder (``kind="hf-imagefolder"``, labels from sub-folder names)."""
    import datasets

    if not path.exists():
        raise UsageError(f"--source {path}: no such file or directory")
    try:
        if kind == "hf-disk":
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except Exception as err:  # datasets raises many types for a wrong folder
        raise UsageError(f"--source {path}: cannot load as {kind} ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UsageError(f"--split {split!r}: not in {path} (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    return HFDatasetSource(f"{path}:{split}", loaded, image_column, label_column)


def resolve_source(
    spec: str,
    kind: str = "auto",
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = "label",
) -> ImageSource:
    """``--source`` with ``--source-type``: ``auto`` picks ``embedded``, a ``save_to_disk`` folder (it holds
    ``dataset_info.json`` or ``dataset_dict.json``) or an ImageFolder tree."""
    path = Path(spec)
    if kind == "auto":
        if spec == "embedded":
            kind = "embedded"
        elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            kind = "hf-disk"
        else:
            kind = "folder"
    if kind == "embedded":
        return embedded_source()
    if kind == "folder":
        return image_folder_source(path)
    if kind in ("hf-disk", "hf-imagefolder"):
        return hf_source(path, kind, split, image_column, label_column)
    raise UsageError(f"--source-type {kind!r}: choose auto, folder, embedded, hf-disk or hf-imagefolder")


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
