"""Where ``write-dataset`` reads images from: an indexable :class:`ImageSource` per kind of input (an
ImageFolder tree, the embedded demo set, a ``datasets`` split on disk, Parquet/Arrow files, WebDataset shards,
a Hub dataset streamed into a spool file), :func:`resolve_source` that picks one for ``--source``, and the
preparation of each image in the writer's workers (checked, EXIF-oriented, RGB, resized; a bad image becomes
a placeholder flagged in :class:`Skips`). The writer itself is :mod:`mae_trainer.data.write`."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError


def image_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open (``.jpg``, ``.png``, ``.gif``, ``.tif``, ``.bmp``, ``.webp``...)."""
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


MIN_SIDE = 8  # smaller images are skipped: no crop of them is worth training on
# A large photo is fine here (JPEGs are drafted down): PIL still refuses what exceeds twice this limit.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation tag is applied."""
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def stored_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size an image is stored at: longest side at most ``max_side``, aspect ratio kept (rounded)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    if width >= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def load_for_writing(image: Image.Image, max_side: int | None) -> np.ndarray:
    """The HWC uint8 RGB array stored for ``image``: EXIF orientation applied, longest side at most
    ``max_side``. Large JPEGs are decoded straight at a reduced scale (libjpeg DCT scaling, never below the
    target size) before the area-filter resize, which makes writing ImageNet-sized photos much cheaper."""
    width, height = oriented_size(image)
    target = stored_size(width, height, max_side)
    if image.format == "JPEG" and target != (width, height):
        swapped = image.size != (width, height)
        image.draft("RGB", target[::-1] if swapped else target)
    if image.getexif().get(0x0112, 1) not in (0, 1):  # exif_transpose copies even an upright image
        image = ImageOps.exif_transpose(image)
    array = to_rgb(image)
    if (array.shape[1], array.shape[0]) != target:
        array = np.asarray(Image.fromarray(array).resize(target, Image.Resampling.BOX))
    return array


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
    # convert() copies even an image already RGB (a large share of a write's time)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def size_problem(image: Image.Image, max_side: int | None) -> str | None:
    """Why an opened image is too small or too elongated to keep ``MIN_SIDE`` pixels at ``max_side``, or
    None (reads the header only)."""
    width, height = oriented_size(image)
    if min(width, height) < MIN_SIDE:
        return f"too small ({width}x{height}, minimum side {MIN_SIDE})"
    stored = stored_size(width, height, max_side)
    if min(stored) < MIN_SIDE:
        return (
            f"too elongated ({width}x{height} would be stored as {stored[0]}x{stored[1]} at "
            f"--max-resolution {max_side}; minimum side {MIN_SIDE})"
        )
    return None


def unreadable_reason(err: Exception) -> str:
    if isinstance(err, Image.DecompressionBombError):
        return f"too large for PIL's decompression-bomb limit ({err})"
    return f"unreadable: {type(err).__name__}: {err}"


def prepare(open_image, max_side: int | None) -> tuple[np.ndarray | None, str | None]:
    """``(the array stored, None)`` for a writable image, ``(None, why not)`` for one that is unreadable,
    truncated, too small or too elongated: the single decode of the write pass, which never raises."""
    try:
        with open_image() as image:
            reason = size_problem(image, max_side)
            if reason is not None:
                return None, reason
            return load_for_writing(image, max_side), None
    except Exception as err:  # PIL raises many types for bad files
        return None, unreadable_reason(err)


class ImageSource:
    """An indexable source of ``(HWC uint8 RGB array, label)`` samples, as FFCV's writer reads them.

    Subclasses say how to open item ``i`` (:meth:`open`) and how to name it in reports (:meth:`describe`).
    """

    def __init__(self, name: str, classes: list[str], labels: list[int]):
        self.name, self.classes, self.labels = name, classes, list(labels)
        # False: the .beton gets an image field only (--label-column none); the labels still stratify select()
        self.labelled = True
        self.order = list(range(len(self.labels)))  # the items kept, in writing order
        self.skipped: list[dict] = []
        self.max_side: int | None = None  # longest side stored (set by write_beton)
        self._failure_file: Path | None = None  # where a writer worker reports a failure (write_beton)
        self._skips: Skips | None = None  # where writer workers record the items they skip (write_beton)
        self._writer_pid = -1

    def open(self, item: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, item: int) -> str:
        return f"{self.name}[{item}]"

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int] | tuple[np.ndarray]:
        item = self.order[index]
        if self._skips is None or os.getpid() == self._writer_pid:  # not in an FFCV writer worker
            with self.open(item) as image:
                array = load_for_writing(image, self.max_side)
        else:
            array, reason = prepare(lambda: self.open(item), self.max_side)
            if array is None:
                # An exception here would leave FFCV's writer waiting forever: the worker writes a tiny
                # placeholder instead, which write_beton removes from the file once FFCV is done.
                self._record_skip(index, item, reason)
                array = np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8)
        return (array, self.labels[item]) if self.labelled else (array,)

    def _record_skip(self, index: int, item: int, reason: str) -> None:
        try:
            self._skips.flag(index)
            line = json.dumps({"index": int(index), "file": self.describe(item), "reason": reason}) + "\n"
            os.write(self._skips.log.fileno(), line.encode())  # one append: whole lines from every worker
        except Exception as err:
            # Cannot even record it (e.g. no room for the log): report it to the writing process (which
            # watches for this file) and end this worker.
            self._failure_file.write_text(f"{self.describe(item)}: {type(err).__name__}: {err}")
            os._exit(1)

    def ready(self) -> None:
        """Called by :func:`write_beton` before the write: make ``len`` and ``order`` final."""

    def select(self, limit: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        """Keep a seeded subset of ``round(fraction * len)`` items (at least one), at most ``limit``,
        stratified by label: one item of every class when there are enough, the rest shared in proportion to
        the classes' sizes (largest remainders, ties drawn from ``seed``), each class's items drawn at random
        from ``seed``; the items kept stay in their order. The same arguments give the same subset."""
        count = len(self.order)
        if fraction is not None:
            count = max(1, round(count * fraction))
        if limit is not None:
            count = min(count, limit)
        if count >= len(self.order):
            return
        rng = np.random.default_rng(seed)
        labels = np.asarray([self.labels[item] for item in self.order])
        classes, members = np.unique(labels, return_inverse=True)
        sizes = np.bincount(members, minlength=len(classes))
        base = np.ones_like(sizes) if count >= len(classes) else np.zeros_like(sizes)  # 1 each if it can
        share = base + (sizes - base) * (count - base.sum()) / (sizes - base).sum()
        quota = np.floor(share).astype(np.int64)
        extra = count - int(quota.sum())  # one more for the largest remainders, ties drawn at random
        tiebreak = rng.random(len(classes))
        quota[np.lexsort((tiebreak, -(share - quota)))[:extra]] += 1
        kept = [
            position
            for c in range(len(classes))
            for position in rng.choice(np.flatnonzero(members == c), size=quota[c], replace=False).tolist()
        ]
        self.order = [self.order[position] for position in sorted(kept)]

    def class_counts(self) -> dict[str, int]:
        """How many of the items kept are in each class (every class, zero included), in class order."""
        counts = np.bincount([self.labels[item] for item in self.order], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}


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


class HFDatasetSource(ImageSource):
    """A Hugging Face ``datasets`` split; images are read from their stored bytes (or paths)."""

    def __init__(self, name: str, dataset, image_column: str, label_column: str | None):
        from datasets import ClassLabel
        from datasets import Image as ImageFeature

        for argument, column in (("image_column", image_column), ("label_column", label_column)):
            if column is not None and column not in dataset.column_names:
                raise InputError(
                    f"{column!r}: not a column of {name} (columns: {', '.join(dataset.column_names)})",
                    argument,
                )
        if label_column is None:
            classes, labels = [name], [0] * len(dataset)
        elif isinstance(dataset.features[label_column], ClassLabel):
            classes, labels = list(dataset.features[label_column].names), list(dataset[label_column])
        else:
            classes, labels = index_labels(dataset[label_column])
        super().__init__(name, classes, labels)
        self.labelled = label_column is not None
        self.dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        self.image_column = image_column

    def open(self, item: int) -> Image.Image:
        import io

        cell = self.dataset[item][self.image_column]
        return Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") else Image.open(cell["path"])


def index_labels(values) -> tuple[list[str], list[int]]:
    """Class names and label indices for plain (not ``ClassLabel``) label values: integers keep their numeric
    order (``2`` before ``10``), anything else is sorted as text."""
    values = list(values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        distinct = sorted({int(v) for v in values})
        index = {v: i for i, v in enumerate(distinct)}
        return [str(v) for v in distinct], [index[int(v)] for v in values]
    texts = [str(v) for v in values]
    classes = sorted(set(texts))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[t] for t in texts]


def _open_cell(cell) -> Image.Image:
    """A ``datasets`` ``Image(decode=False)`` cell (``{"bytes", "path"}``), or raw bytes, as a PIL image."""
    import io

    if isinstance(cell, (bytes, bytearray)):
        return Image.open(io.BytesIO(cell))
    if cell.get("bytes"):
        return Image.open(io.BytesIO(cell["bytes"]))
    return Image.open(cell["path"])


def image_folder_source(root: Path) -> FolderSource:
    """An ImageFolder tree (``root/<class>/<image>``; images directly in ``root`` form one class)."""
    if not root.is_dir():
        raise InputError(f"{root}: no such directory", "source")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    groups = [(d.name, d) for d in class_dirs] or [(root.name, root)]
    extensions = set(image_extensions())
    paths, labels, others, names, empty = [], [], [], [], []
    for name, directory in groups:
        found = [path for path in sorted(directory.rglob("*")) if path.is_file()]
        images = [path for path in found if path.suffix.lower() in extensions]
        others += [path for path in found if path.suffix.lower() not in extensions]
        if not images:  # not a class: no label is given to it
            empty.append(directory)
            continue
        paths += images
        labels += [len(names)] * len(images)
        names.append(name)
    if not paths:
        raise InputError(
            f"{root}: no images found (looked for the formats PIL reads: {', '.join(sorted(extensions))})",
            "source",
        )
    source = FolderSource(str(root), names, paths, labels)
    # Never dropped silently: files that are not in a format PIL reads are listed with the skipped images,
    # and class folders without images (not counted as classes) too.
    source.skipped += [
        {"file": str(path), "reason": f"not an image format PIL reads ({path.suffix or 'no extension'})"}
        for path in others
    ]
    source.skipped += [
        {"file": f"{directory}/", "reason": "a class folder without images: not counted as a class"}
        for directory in empty
    ]
    return source


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
        raise InputError(f"{path}: no such file or directory", "source")
    try:
        if kind == "hf-disk":
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except Exception as err:  # datasets raises many types for a wrong folder
        raise InputError(f"{path}: cannot load as {kind} ({type(err).__name__}: {err})", "source") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{split!r}: not a split of {path} (splits: {', '.join(loaded)})", "split")
        loaded = loaded[split]
    return HFDatasetSource(f"{path}:{split}", loaded, image_column, label_column)


class Skips:
    """Where FFCV's writer workers record the items they replaced by a placeholder: a flag per sample in
    shared memory, and one JSON line per item (its file and why) in an anonymous temporary file."""

    def __init__(self, count: int):
        import tempfile

        self.flags = multiprocessing.RawArray("B", max(count, 1))
        self.log = tempfile.TemporaryFile(prefix="mae-trainer-skips-")
        import fcntl

        flags = fcntl.fcntl(self.log.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(self.log.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)  # whole lines from every worker

    def flag(self, index: int) -> None:
        self.flags[index] = 1

    def entries(self) -> list[dict]:
        """The skipped items recorded, in sample order."""
        self.log.seek(0)
        return sorted((json.loads(line) for line in self.log.read().splitlines()), key=lambda e: e["index"])
