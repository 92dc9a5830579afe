"""Reading and checking FFCV ``.beton`` files before anything is decoded from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

# The fixed header at the start of every FFCV file (format version 2, little-endian; FFCV's ``HeaderType``),
# read here without importing FFCV, whose import compiles numba code for seconds: a file that is plainly not
# a .beton is refused at once.
_HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
     ("alloc_table_ptr", "<u8")],
    align=True,
)  # fmt: skip
_FFCV_VERSION = 2


def header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an FFCV file judging by its header alone, or None."""
    size = path.stat().st_size
    if size < _HEADER.itemsize:
        return f"{size} bytes, shorter than the FFCV header"
    header = np.fromfile(path, dtype=_HEADER, count=1)[0]
    if int(header["version"]) != _FFCV_VERSION:
        return f"format version {int(header['version'])}, not FFCV's {_FFCV_VERSION}"
    page = int(header["page_size"])
    if not 0 < int(header["num_fields"]) <= 256 or page <= 0 or page & (page - 1):
        return "no FFCV field table or page size in its header"
    return None


NO_LABELS = "write it from a labelled source"


def field_names(path: Path) -> list[str]:
    """The names of the fields of the FFCV file ``path`` (e.g. ``["image", "label"]``, or ``["image"]`` for
    one written without labels), read from its field table alone."""
    from ffcv.types import FieldDescType, HeaderType

    count = int(np.fromfile(path, dtype=HeaderType, count=1)[0]["num_fields"])
    table = np.fromfile(path, dtype=FieldDescType, count=count, offset=HeaderType.itemsize)
    return [bytes(name).split(b"\0", 1)[0].decode("ascii") for name in table["name"]]


def check_beton(path: Path, labels: bool = False) -> int:
    """The number of samples of ``path``, a readable FFCV file with an ``image`` field (and a ``label``
    field when ``labels``); else :class:`InputError`, its message starting with ``path``."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    problem = header_problem(path)
    if problem:
        raise InputError(f"{path}: not an FFCV .beton file ({problem})")
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as err:
        raise InputError(f"{path}: not an FFCV .beton file ({type(err).__name__}: {err})") from None
    if "image" not in reader.handlers:
        raise InputError(f"{path}: has no 'image' field (fields: {', '.join(reader.handlers)})")
    if labels and "label" not in reader.handlers:
        raise InputError(f"{path}: has no 'label' field (fields: {', '.join(reader.handlers)}); {NO_LABELS}")
    if reader.num_samples == 0:
        raise InputError(f"{path}: holds no samples")
    problem = layout_problem(reader, path.stat().st_size)
    if problem:
        raise InputError(f"{path}: damaged .beton file ({problem}); write it again")
    return int(reader.num_samples)


def layout_problem(reader, file_size: int) -> str | None:
    """What is wrong with the layout of an FFCV file (truncated, or samples pointing outside their data),
    or None. Reads only the header, metadata and allocation table: milliseconds even for ImageNet."""
    from ffcv.types import ALLOC_TABLE_TYPE

    table_start = int(reader.header["alloc_table_ptr"])
    # The metadata follows the header and the field descriptors; the samples' data lies after it.
    metadata_end = reader.header.itemsize + reader.field_descriptors.nbytes + reader.metadata.nbytes
    if len(reader.metadata) != reader.num_samples or table_start > file_size or table_start < metadata_end:
        return f"{file_size} bytes cannot hold {reader.num_samples} samples and their allocation table"
    if (file_size - table_start) % ALLOC_TABLE_TYPE.itemsize:
        return f"the allocation table ends mid-record: the file is truncated ({file_size} bytes)"
    table = reader.alloc_table
    ends = table["ptr"].astype(np.uint64) + table["size"].astype(np.uint64)
    if len(table) and (table["ptr"].min() < metadata_end or ends.max() > table_start):
        return "an allocation lies outside the data region: the file is truncated or overwritten"
    for name in reader.metadata.dtype.names:  # every variable-size field points at one allocation
        field = reader.metadata[name]
        if field.dtype.names is None or "data_ptr" not in field.dtype.names:
            continue
        missing = np.flatnonzero(~np.isin(field["data_ptr"], table["ptr"]))
        if len(missing):
            return (
                f"{len(missing)} sample(s) point at data not in the allocation table (first: sample "
                f"{int(missing[0])}): the file is truncated"
            )
    return None
