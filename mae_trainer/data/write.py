"""Write images to an FFCV ``.beton`` file (``mae-trainer write-dataset``).

The defaults follow the DailyMAE authors (and FFCV's ImageNet example): longest side 500 px, JPEG quality
90, so that crop decode has JPEG samples to work on and RandomResizedCrop rarely enlarges.

Every image is decoded once: in FFCV's writer workers, checked, oriented by its EXIF tag, converted to RGB
and resized here, so nothing that can fail reaches FFCV (whose writer hangs forever when one of its workers
raises). An image that cannot be written (unreadable, truncated, too small) is replaced by a tiny placeholder
that is removed from the file's tables once FFCV is done: the file holds only the images kept, and the
sidecar lists the others. Should a worker fail anyway, or the process get SIGTERM/Ctrl-C, the write stops
with a clear error. The output appears under its final name only once it is complete: FFCV writes into a
hidden file beside it, renamed at the end and removed on any error or signal. A sidecar ``FILE.beton.json``
records what was written (count, JPEG and raw samples, classes, settings, skipped files with the reason).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, TrainingError
from ..publish import check_output_dir, publish_text, publishing, remove_stale_partials

WRITE_MODES = ("smart", "jpg", "raw")


def image_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open (``.jpg``, ``.png``, ``.gif``, ``.tif``, ``.bmp``, ``.webp``...)."""
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


@dataclass
class WriteSettings:
    """How images are stored. ``smart`` stores an image as JPEG when its raw size (after the
    ``max_resolution`` resize) exceeds ``smart_threshold`` bytes, raw otherwise."""

    max_resolution: int = 500
    write_mode: str = "jpg"
    jpeg_quality: int = 90
    smart_threshold: int = 3 * 256 * 256
    num_workers: int = 2

    def validate(self) -> None:
        """``InputError`` whose ``argument`` is the field at fault."""
        if self.write_mode not in WRITE_MODES:
            raise InputError(f"{self.write_mode!r}: choose one of {', '.join(WRITE_MODES)}", "write_mode")
        if self.max_resolution < 16:
            raise InputError(f"{self.max_resolution}: must be at least 16 pixels", "max_resolution")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"{self.jpeg_quality}: must be between 1 and 100", "jpeg_quality")
        if self.num_workers < 1:
            raise InputError(f"{self.num_workers}: must be at least 1", "num_workers")


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
        self._skips: _Skips | None = None  # where writer workers record the items they skip (write_beton)
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


def _cell_bytes(cell) -> bytes:
    """The encoded bytes of an image cell (read from its path when only that is stored)."""
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if cell.get("bytes"):
        return cell["bytes"]
    with open(cell["path"], "rb") as file:
        return file.read()


class StreamSource(ImageSource):
    """A source that can only be read once, in order: a streaming ``datasets.IterableDataset`` (a Hub dataset,
    WebDataset ``.tar`` shards), which has no random access and maybe no length.

    FFCV's writer needs an indexable source of known length (its forked workers call ``source[i]``), so the
    stream is read exactly once, in :meth:`ready` (which :func:`write_beton` calls before writing):
    each kept item's *encoded* image bytes are appended to an anonymous temporary spool file (in ``TMPDIR``;
    deleted by the OS when the process ends, whatever happens) and its label recorded; then the writer's
    workers read them back by offset, each checked as it is written like any other source's
    (``os.pread``: no shared file position). Nothing is converted to Arrow and nothing lands in the
    ``datasets`` cache; the spool needs the images' compressed size on disk, never a decoded copy.

    ``--limit`` stops reading the stream after that many items (a 150 GB dataset is not downloaded to write
    1000 images). ``--fraction`` picks the same seeded positions as for other sources when the split's
    ``num_examples`` is known (Hub metadata), otherwise each item is kept with that probability (seeded).
    Plain labels (strings, or integers such as WebDataset's ``.cls``) get a sorted class list once the whole
    stream is read; ``ClassLabel`` names are the classes as given.
    """

    def __init__(
        self,
        name: str,
        dataset,
        image_column: str,
        label_column: str | None,
        classes: list[str] | None = None,
        label_key: str | None = None,
        num_examples: int | None = None,
    ):
        super().__init__(name, classes or [], [])
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.label_key = label_key  # a key of the label column's dict (a WebDataset ``.json`` member)
        self.labelled = label_column is not None  # False: an image field only (where write_beton supports it)
        self.class_label = classes is not None
        self.num_examples = num_examples
        self.limit: int | None = None
        self.fraction: float | None = None
        self.seed = 0
        self.read = False
        self.spool = None
        self.offsets: list[tuple[int, int]] = []
        self.keys: list[str] = []

    def __len__(self) -> int:
        if not self.read:
            raise TypeError(f"{self.name}: a stream has no length before it is read (ready)")
        return len(self.order)

    def select(self, limit: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        """Recorded, and applied while the stream is read (:meth:`ready`)."""
        if self.read:
            super().select(limit, fraction, seed)
            return
        self.limit, self.fraction, self.seed = limit, fraction, seed

    def _kept_positions(self):
        """Which stream positions to keep: a set (``fraction`` with a known length), a predicate, or None."""
        if self.fraction is None:
            return None
        rng = np.random.default_rng(self.seed)
        if self.num_examples:
            count = max(1, round(self.num_examples * self.fraction))
            return set(rng.choice(self.num_examples, size=count, replace=False).tolist())
        return rng  # unknown length: a seeded coin per item

    def _label(self, row):
        if self.label_column is None:
            return 0
        value = row[self.label_column]
        if self.label_key is not None:
            if not isinstance(value, dict) or self.label_key not in value:
                raise InputError(
                    f"{self.label_key!r}: not a key of the {self.label_column!r} member of "
                    f"{row.get('__key__', 'an item')} in {self.name}",
                    "label_column",
                )
            value = value[self.label_key]
        return value

    def _read_stream(self) -> None:
        import tempfile

        from datasets import Image as ImageFeature

        keep = self._kept_positions()
        dataset = self.dataset
        features = getattr(dataset, "features", None) or {}
        if isinstance(features.get(self.image_column), ImageFeature):
            dataset = dataset.cast_column(self.image_column, ImageFeature(decode=False))
        self.spool = tempfile.TemporaryFile(prefix="mae-trainer-stream-")
        values, end = [], 0
        for position, row in enumerate(dataset):
            if self.limit is not None and len(values) >= self.limit:
                break
            if isinstance(keep, set) and position not in keep:
                continue
            if isinstance(keep, np.random.Generator) and keep.random() >= self.fraction:
                continue
            data = _cell_bytes(row[self.image_column])
            self.spool.write(data)
            self.offsets.append((end, len(data)))
            end += len(data)
            values.append(self._label(row))
            self.keys.append(str(row.get("__key__", position)))
        self.spool.flush()
        if self.label_column is None:
            self.classes, labels = [self.name], [0] * len(values)
        elif self.class_label:
            labels = [int(v) for v in values]
        else:
            self.classes, labels = index_labels(values)
        self.labels = labels
        self.order = list(range(len(labels)))
        self.read = True

    def ready(self) -> None:
        if not self.read:
            self._read_stream()
            if not self.order:
                raise InputError(f"{self.name}: the stream holds no items", "source")

    def open(self, item: int) -> Image.Image:
        import io

        offset, size = self.offsets[item]
        return Image.open(io.BytesIO(os.pread(self.spool.fileno(), size, offset)))

    def describe(self, item: int) -> str:
        return f"{self.name}[{self.keys[item]}]" if self.keys else super().describe(item)


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


FILE_KINDS = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}
WEBDATASET_IMAGES = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{0000..0099}.tar`` as its 100 names (zero padding kept, as the ``webdataset`` package and
    ``braceexpand`` do); several ranges multiply; a pattern without a range is itself."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") or len(first) == len(last) else 0
    step = 1 if int(last) >= int(first) else -1
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        name
        for number in range(int(first), int(last) + step, step)
        for name in expand_braces(f"{head}{number:0{width}d}{tail}")
    ]


def match_files(spec: str) -> list[str]:
    """The files a ``--source`` pattern names: brace ranges expanded, then globs (``*``, ``?``, ``[...]``,
    ``**``) matched; sorted, existing files only. ``InputError`` naming the pattern when none exist."""
    import glob

    files: list[str] = []
    for name in expand_braces(spec):
        if glob.has_magic(name):
            files += sorted(p for p in glob.glob(name, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(name):
            files.append(name)
    if not files:
        raise InputError(f"{spec}: no files match", "source")
    return list(dict.fromkeys(files))


def _check_columns(name: str, columns: list[str], image_column: str, label_column: str | None) -> None:
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in columns:
            raise InputError(f"{column!r}: not a column of {name} (columns: {', '.join(columns)})", argument)


def file_source(spec: str, kind: str, image_column: str, label_column: str | None) -> HFDatasetSource:
    """Local Parquet (``kind="parquet"``) or Arrow (``"arrow"``) files: one file or a glob/brace pattern, read
    with ``datasets.load_dataset(kind, data_files=...)`` (not streaming: the table is memory-mapped, so
    items are read by index with no copy in memory; ``datasets`` keeps an Arrow copy of Parquet files in its
    cache). ``ClassLabel`` names (kept in the files' schema metadata) become the classes, other labels a
    sorted class list."""
    import datasets

    files = match_files(spec)
    try:
        loaded = datasets.load_dataset(kind, data_files=files, split="train")
    except Exception as err:  # pyarrow and datasets raise many types for a bad file
        raise InputError(f"{spec}: cannot read as {kind} ({type(err).__name__}: {err})", "source") from None
    return HFDatasetSource(spec, loaded, image_column, label_column)


def webdataset_source(spec: str, image_column: str, label_column: str | None) -> StreamSource:
    """WebDataset ``.tar`` shards (brace ranges such as ``shard-{0000..0099}.tar``, or a glob), read in order
    through ``datasets``' ``webdataset`` builder with ``streaming=True``.

    Why ``datasets`` and not the ``webdataset`` package: that package is not installed here (it would be a
    new dependency), while ``datasets`` already is and its builder reads the same shards (members grouped by
    key, ``.cls`` decoded to an integer, ``.json`` to a dict) without converting them to Arrow. The image
    member is ``--image-column``; by default (``image``, not a member) the first of jpg/jpeg/png/webp; the
    label is ``--label-column`` when it is a member (default ``label``, else ``cls``), or a key of the
    ``.json`` member (``--label-column label`` reads ``json["label"]``)."""
    import datasets

    files = match_files(spec)
    try:
        stream = datasets.load_dataset("webdataset", data_files=files, split="train", streaming=True)
    except Exception as err:
        raise InputError(
            f"{spec}: cannot read as WebDataset shards ({type(err).__name__}: {err})", "source"
        ) from None
    members = list(stream.features or {})
    if image_column == "image" and image_column not in members:  # the default: by extension
        image_column = next((m for m in WEBDATASET_IMAGES if m in members), image_column)
    label_key = None
    if label_column is not None and label_column not in members:
        if label_column == "label" and "cls" in members:
            label_column = "cls"
        elif "json" in members:
            label_column, label_key = "json", label_column
    _check_columns(spec, members, image_column, label_column)
    return StreamSource(spec, stream, image_column, label_column, label_key=label_key)


def hub_source(
    repo_id: str,
    split: str,
    image_column: str,
    label_column: str | None,
    revision: str | None = None,
    config_name: str | None = None,
) -> StreamSource:
    """A dataset on the Hugging Face Hub (``HF_ENDPOINT`` and ``HF_TOKEN`` as usual), read with
    ``datasets.load_dataset(..., streaming=True)``: nothing is copied to disk as Arrow first (see
    :class:`StreamSource`). The split's ``num_examples`` is used when the dataset's metadata gives it."""
    import datasets
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    repo_id = repo_id.removeprefix("hf://datasets/")
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        # hf://datasets/: the Hub even where a local folder has the same name (datasets would read that)
        stream = datasets.load_dataset(
            f"hf://datasets/{repo_id}", name=config_name, split=split, revision=revision, streaming=True
        )
    except (datasets.exceptions.DatasetNotFoundError, RepositoryNotFoundError):
        raise InputError(
            f"{repo_id}: no such dataset on the Hub ({_endpoint()}), or no access with this token"
            + ("" if Path(repo_id).exists() else "; no local file or folder of that name either"),
            "source",
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{revision}: no such revision of {repo_id}", "revision") from None
    except ValueError as err:
        message = str(err)
        if "split" in message.lower():
            raise InputError(f"{split!r}: not a split of {where} ({message})", "split") from None
        if "config" in message.lower():
            raise InputError(f"{config_name!r}: not a config of {where} ({message})", "config_name") from None
        raise InputError(f"{repo_id}: cannot stream ({type(err).__name__}: {message})", "source") from None
    except Exception as err:
        raise InputError(f"{repo_id}: cannot stream ({type(err).__name__}: {err})", "source") from None
    name = f"{where}:{split}"
    features = stream.features
    if features is None:  # unknown until read: the first row's keys
        columns = list(next(iter(stream)).keys())
    else:
        columns = list(features)
    _check_columns(name, columns, image_column, label_column)
    classes = None
    if label_column is not None and features is not None:
        if isinstance(features[label_column], datasets.ClassLabel):
            classes = list(features[label_column].names)
    splits = getattr(stream.info, "splits", None) or {}
    num_examples = splits[split].num_examples if split in splits else None
    return StreamSource(name, stream, image_column, label_column, classes, num_examples=num_examples or None)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def resolve_source(
    spec: str,
    kind: str = "auto",
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = "label",
    revision: str | None = None,
    config_name: str | None = None,
) -> ImageSource:
    """``--source`` with ``--source-type``. ``auto`` picks, in order: ``embedded``; a ``save_to_disk`` folder
    (it holds ``dataset_info.json`` or ``dataset_dict.json``); an existing folder (ImageFolder tree); a file
    or pattern (glob, or brace range ``{0000..0099}``) ending in ``.parquet``, ``.arrow`` or ``.tar``
    (``parquet``, ``arrow``, ``webdataset``); a ``USER/NAME`` that is no local path, or
    ``hf://datasets/USER/NAME`` (``hub``). ``hub`` forces
    the Hub where a local folder has the same name. ``revision`` and ``config_name`` apply to ``hub``."""
    path = Path(spec)
    if kind == "auto":
        suffix = Path(expand_braces(spec)[0]).suffix.lower()
        if spec == "embedded":
            kind = "embedded"
        elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            kind = "hf-disk"
        elif path.is_dir():
            kind = "folder"
        elif suffix in FILE_KINDS:
            kind = FILE_KINDS[suffix]
        elif spec.startswith("hf://datasets/") or (not path.exists() and _HUB_ID.match(spec)):
            kind = "hub"
        else:
            kind = "folder"
    if kind == "embedded":
        return embedded_source()
    if kind == "folder":
        return image_folder_source(path)
    if kind in ("hf-disk", "hf-imagefolder"):
        return hf_source(path, kind, split, image_column, label_column)
    if kind in ("parquet", "arrow"):
        return file_source(spec, kind, image_column, label_column)
    if kind == "webdataset":
        return webdataset_source(spec, image_column, label_column)
    if kind == "hub":
        return hub_source(spec, split, image_column, label_column, revision, config_name)
    raise InputError(f"{kind!r}: choose one of {', '.join(SOURCE_TYPES)}", "source_type")


SOURCE_TYPES = (
    "auto",
    "folder",
    "embedded",
    "hf-disk",
    "hf-imagefolder",
    "parquet",
    "arrow",
    "webdataset",
    "hub",
)


def check_output(output: Path, overwrite: bool) -> None:
    """``InputError`` (``argument`` ``"output"``) for an output that cannot or may not be written: not a
    ``.beton`` name, an existing file without ``overwrite``, a folder that is not one or cannot be written
    (nothing is created by the check)."""
    if output.suffix != ".beton":
        raise InputError(f"{output}: the file name must end in .beton", "output")
    if os.path.isdir(output):
        raise InputError(f"{output}: is a folder", "output")
    if os.path.lexists(output) and not overwrite:
        raise InputError(f"{output}: already exists (overwrite=True replaces it)", "output")
    try:
        check_output_dir(output.parent)
    except InputError as err:
        err.argument = "output"
        raise


def write_beton(source: ImageSource, output: Path, settings: WriteSettings, overwrite: bool = False) -> dict:
    """Write ``source`` to ``output`` atomically and return the summary also saved as ``output.json``."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    settings.validate()
    check_output(output, overwrite)
    for stale in remove_stale_partials(output, suffixes=("", ".json")):
        print(f"removed {stale}: left by an earlier write whose process is gone", file=sys.stderr)
    source.max_side = settings.max_resolution
    source.ready()
    fields = {
        "image": RGBImageField(
            write_mode=settings.write_mode,
            max_resolution=settings.max_resolution,
            jpeg_quality=settings.jpeg_quality,
            smart_threshold=settings.smart_threshold,
        ),
    }
    if source.labelled:
        fields["label"] = IntField()
    start = time.perf_counter()
    writer = None
    source._skips = skips = _Skips(len(source))
    try:
        # the watch ends the workers before the partial file is removed (they could write it again)
        with publishing(output) as partial, _WorkerWatch(source, output, partial) as watch:
            writer = _skipping_writer(DatasetWriter, source)(
                str(partial), fields, num_workers=settings.num_workers
            )
            writer.from_indexed_dataset(source, chunksize=64)
            watch.finished()
    except OSError as err:
        raise InputError(f"{output}: cannot write ({err.strerror}: {err.filename})", "output") from None
    finally:
        source._skips = None
        skips.log.close()
        _release_shared_memory(writer)
    summary = {
        "file": output.name,
        "source": source.name,
        "count": len(source),
        **stored_formats(output),
        "labelled": source.labelled,
        "classes": source.classes if source.labelled else [],
        "class_counts": source.class_counts() if source.labelled else {},
        "skipped": source.skipped,
        "settings": asdict(settings),
        "bytes": output.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    sidecar = output.with_name(output.name + ".json")
    publish_text(sidecar, json.dumps(summary, indent=2) + "\n")
    return summary


class _Skips:
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


def _skipping_writer(DatasetWriter, source: ImageSource):
    """FFCV's ``DatasetWriter`` that, once its workers are done, drops the placeholders of the items they
    skipped: their rows of the metadata table and their entries of the allocation table go, the other samples
    are renumbered in order and the header's count is the samples kept (the placeholders' few bytes stay in
    the data region, unreferenced). ``source`` then lists the skipped items and keeps the others only."""
    from ffcv.types import ALLOC_TABLE_TYPE

    class SkippingWriter(DatasetWriter):
        def finalize(self, allocations):
            skips = source._skips
            bad = np.frombuffer(skips.flags, dtype=np.uint8)[: self.num_samples].astype(bool)
            if bad.any():
                entries = skips.entries()
                source.skipped += [{"file": e["file"], "reason": e["reason"]} for e in entries]
                source.order = [item for item, dropped in zip(source.order, bad) if not dropped]
                if not source.order:
                    raise InputError(
                        f"{source.name}: none of the images can be read "
                        f"(first: {entries[0]['file']}: {entries[0]['reason']})",
                        "source",
                    )
                keep = ~bad
                metadata = np.frombuffer(self.metadata_sm.buf, dtype=self.metadata_type)
                metadata[: keep.sum()] = metadata[keep]  # rows past the count are never read
                del metadata  # the shared memory cannot be closed while a view of it exists
                table = np.array(allocations, dtype=ALLOC_TABLE_TYPE)
                table = table[keep[table["sample_id"]]]
                table["sample_id"] = (np.cumsum(keep) - 1)[table["sample_id"]]
                allocations = table.tolist()
                self.header["num_samples"] = int(keep.sum())
            super().finalize(allocations)

    return SkippingWriter


def stored_formats(path: Path) -> dict:
    """How many samples of a ``.beton`` are stored as JPEG (crop decode applies) and how many raw."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    modes = Reader(str(path)).metadata["f0"]["mode"]
    return {"jpeg": int((modes == IMAGE_MODES["jpg"]).sum()), "raw": int((modes == IMAGE_MODES["raw"]).sum())}


class WriteInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a write (the partial file is removed); ``exit_status`` is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__()
        self.exit_status = 128 + signum


class _WorkerFailed(Exception):
    pass


class _WorkerWatch:
    """FFCV's ``DatasetWriter`` waits for its worker processes in a loop that never ends when one of them
    dies. While a write runs, a thread watches the workers (their exit codes, and the file in which
    :meth:`ImageSource.__getitem__` reports a failure) and interrupts the writing thread with SIGUSR1 when
    one fails; SIGINT and SIGTERM raise :class:`WriteInterrupted`. Either way the workers are ended and the
    exception propagates, so the caller removes the partial file. Only in the main thread (signals); a write
    from another thread runs unwatched.

    Every wait ends: the exception is raised wherever the writing thread blocks (also in FFCV's wait for
    the workers' allocations, where a worker that hit a full disk at its last page once left the write
    hanging after its progress bar was full), except while a worker is being forked (then the next signal
    of the watcher raises it); workers that outlive SIGTERM are killed; FFCV's work queue is told not to
    hold the exit (its feeder thread would wait forever to hand chunks to dead workers)."""

    def __init__(self, source: ImageSource, output: Path, partial: Path):
        self.source, self.output = source, output
        self.failure_file = partial.with_name(partial.name + ".failed")
        self.active = threading.current_thread() is threading.main_thread()
        self.stop = threading.Event()
        self.signalled: int | None = None
        self.workers: dict[int, multiprocessing.Process] = {}
        self.queues: list = []  # the multiprocessing queues FFCV's writer makes for this write
        # where a worker that fails outside __getitem__ (e.g. writing its last page to a full disk) says why:
        # shared memory made before the workers fork, as the disk may have no room for a file
        self.report = multiprocessing.RawArray("c", 2048)

    def __enter__(self) -> _WorkerWatch:
        import ffcv.writer

        self.source._failure_file, self.source._writer_pid = self.failure_file, os.getpid()
        self.before = set(multiprocessing.active_children())  # not this write's workers
        self.ffcv_queue = ffcv.writer.Queue

        def recorded_queue(*args, **kwargs):
            queue = self.ffcv_queue(*args, **kwargs)
            self.queues.append(queue)
            return queue

        ffcv.writer.Queue = recorded_queue
        self.ffcv_jobs = {name: getattr(ffcv.writer, name) for name in _WORKER_JOBS}
        for name, job in self.ffcv_jobs.items():
            setattr(ffcv.writer, name, self._reporting(job))
        if not self.active:
            return self
        owner = os.getpid()

        def on_signal(signum, frame):
            if os.getpid() != owner:  # a forked worker inherits this handler: just end it
                os._exit(128 + signum)
            if signum != signal.SIGUSR1:
                self.signalled = signum
            if self.stop.is_set() or _inside_fork(frame):
                # Raised while FFCV starts a worker, the exception would be swallowed by an at-fork
                # callback or leave a worker unknown to us (it would recreate the partial file); raised
                # in a queue's put, it could leave the queue's lock held: the watcher thread signals
                # again once out of these. Once stopping, __exit__ decides.
                return
            if self.signalled is not None:
                raise WriteInterrupted(self.signalled)
            if not self.stop.is_set() and self._failure() is not None:
                raise _WorkerFailed()

        self.saved = {
            signum: signal.signal(signum, on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
        }
        self.thread = threading.Thread(target=self._watch, name="ffcv-writer-watch", daemon=True)
        self.thread.start()
        return self

    def _reporting(self, job):
        """``job`` (an FFCV worker's function) that, should it raise, puts the reason in :attr:`report` and
        ends its process (status 1) without a traceback."""
        report = self.report

        def run(*args):
            try:
                job(*args)
            except BaseException as err:
                message = f"{type(err).__name__}: {err}".encode(errors="replace")[: len(report) - 1]
                report[: len(message)] = message
                os._exit(1)

        return run

    def _failure(self) -> str | None:
        if self.failure_file.exists():
            return self.failure_file.read_text()
        if self.report.value:
            return f"a writer worker process failed: {self.report.value.decode(errors='replace')}"
        for worker in self.workers.values():
            code = worker.exitcode
            if code not in (None, 0):
                return f"a writer worker process exited with status {code} (see its output above)"
        return None

    def _watch(self) -> None:
        main = threading.main_thread().ident
        while not self.stop.wait(0.1):
            for worker in multiprocessing.active_children():  # keep each: exit codes are read later
                if worker not in self.before:
                    self.workers.setdefault(worker.pid, worker)
            if self.signalled is not None or self._failure() is not None:
                signal.pthread_kill(main, signal.SIGUSR1)  # repeated until the main thread can raise

    def finished(self) -> None:
        """Called when FFCV's writer returns: a signal or failure it may have swallowed still counts."""
        self.stop.set()
        if self.signalled is not None:
            raise WriteInterrupted(self.signalled)
        if self._failure() is not None:
            raise _WorkerFailed()

    def __exit__(self, kind, error, trace) -> None:
        import ffcv.writer

        self.stop.set()
        ffcv.writer.Queue = self.ffcv_queue
        for name, job in self.ffcv_jobs.items():
            setattr(ffcv.writer, name, job)
        try:
            if self.active:
                self.thread.join()
                for signum, handler in self.saved.items():
                    signal.signal(signum, handler)
            if error is not None:
                for queue in self.queues:  # chunks no worker will read must not hold the exit
                    queue.cancel_join_thread()
                workers = [*self.workers.values(), *set(multiprocessing.active_children()) - self.before]
                for worker in workers:
                    if worker.is_alive():
                        worker.terminate()
                for worker in workers:
                    worker.join(10)
                    if worker.is_alive():  # SIGTERM is not enough (e.g. stuck on a dead file system)
                        worker.kill()
                        worker.join(10)
                _close_progress_bars()  # before the error line, not after it at exit
            failure = self._failure() if isinstance(error, _WorkerFailed) else None
        finally:
            self.failure_file.unlink(missing_ok=True)
            self.source._failure_file = None
        if failure is not None:
            raise TrainingError(f"writing {self.output} failed: {failure}; nothing was written") from None
        if error is None and self.signalled is not None:  # arrived after finished()
            raise WriteInterrupted(self.signalled)


_WORKER_JOBS = ("worker_job_indexed_dataset", "worker_job_webdataset")  # ffcv.writer's worker functions


def _close_progress_bars() -> None:
    """Close FFCV's progress bar of a failed write (its frame, kept by the traceback, would print it at
    exit)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


# Where multiprocessing starts a process (and runs its at-fork callbacks), and where a queue's put() holds
# its buffer's lock or starts its feeder thread (an exception raised there can leave that lock held, and
# the exit then waits on it forever: FFCV puts every chunk before it starts its workers, so a signal right
# at the start of a write lands there); waiting on a queue (get), a lock or a connection is not in these,
# so an exception raised there ends the wait.
_FORK_FILES = {"popen_fork.py", "popen_forkserver.py", "popen_spawn_posix.py", "resource_tracker.py"}
_FORK_FUNCTIONS = {
    ("process.py", "start"),
    ("process.py", "_bootstrap"),
    ("util.py", "_run_after_forkers"),
    ("util.py", "spawnv_passfds"),  # the resource tracker's start (FFCV's first shared-memory block)
    ("queues.py", "put"),  # a queue's put holds its buffer's lock: raised there, the exit waits on it forever
    ("queues.py", "_start_thread"),
}


def _inside_fork(frame) -> bool:
    """Whether ``frame`` runs inside multiprocessing's start of a process or a queue's put, or inside tqdm
    (raised in the progress bar's close, after it drew the bar and before its newline, the error line
    would follow the bar on the same line: a closed bar does not close again)."""
    while frame is not None:
        code = frame.f_code
        if f"{os.sep}tqdm{os.sep}" in code.co_filename:
            return True
        if "multiprocessing" in code.co_filename:
            name = os.path.basename(code.co_filename)
            if name in _FORK_FILES or (name, code.co_name) in _FORK_FUNCTIONS:
                return True
        frame = frame.f_back
    return False


def _release_shared_memory(writer) -> None:
    """FFCV's writer frees its shared-memory metadata block only on success."""
    from multiprocessing import shared_memory

    memory = getattr(writer, "metadata_sm", None)
    if not isinstance(memory, shared_memory.SharedMemory):  # FFCV sets a placeholder int before creating it
        return
    try:
        memory.close()
        memory.unlink()
    except (FileNotFoundError, BufferError):
        pass


def read_summary(path: Path) -> dict | None:
    sidecar = path.with_name(path.name + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None
