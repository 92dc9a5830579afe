"""Sources given by a file pattern or a Hub dataset id: Parquet/Arrow files (read with ``datasets``),
WebDataset ``.tar`` shards and Hub datasets, both streamed with ``datasets`` into a spool file
(:class:`StreamSource`), so a 150 GB dataset is never first copied to disk as Arrow; and
:func:`resolve_source`, which picks the source of ``write-dataset --source``. The local sources (ImageFolder
tree, embedded set, ``save_to_disk`` folder) and the image preparation are :mod:`mae_trainer.data.sources`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .sources import (
    HFDatasetSource,
    ImageSource,
    embedded_source,
    hf_source,
    image_folder_source,
    index_labels,
)


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
