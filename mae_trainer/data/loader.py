"""FFCV loading helpers: file checks, decoders, the evaluation loader and on-device normalisation.

The training loader is :class:`mae_trainer.data.sampler.ProgressiveLoader`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

RRC_SCALE = (0.2, 1.0)  # MAE's RandomResizedCrop scale
RRC_RATIO = (3 / 4, 4 / 3)


def check_beton(path: Path, flag: str = "--data") -> int:
    """Fail early, naming ``flag``, unless ``path`` is a readable FFCV file with an ``image`` field.
    Returns the number of samples."""
    from ffcv.reader import Reader

    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise UsageError(f"{flag} {path}: not a file")
    try:
        reader = Reader(str(path))
    except Exception as err:
        raise UsageError(f"{flag} {path}: not an FFCV .beton file ({type(err).__name__}: {err})") from None
    if "image" not in reader.handlers:
        raise UsageError(f"{flag} {path}: has no 'image' field (fields: {', '.join(reader.handlers)})")
    if reader.num_samples == 0:
        raise UsageError(f"{flag} {path}: holds no samples")
    problem = layout_problem(reader, path.stat().st_size)
    if problem:
        raise UsageError(f"{flag} {path}: damaged .beton file ({problem}); write it again")
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


def eval_loader(
    path: Path,
    batch_size: int,
    resolution: int,
    *,
    num_workers: int = 1,
    crop_ratio: float = 1.0,
    indices: list[int] | None = None,
):
    """Sequential order, centre crop (``crop_ratio`` of the short side) resized to ``resolution``."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    pipelines = {
        "image": [
            CenterCropRGBImageDecoder((resolution, resolution), ratio=crop_ratio),
            ToTensor(),
            ToTorchImage(channels_last=False),
        ],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines=pipelines,
        indices=indices,
    )


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → normalised float on the images' device: ``(x/255 - mean) / std``."""
    x = images.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1)).to(dtype)


def stats_tensor(values, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
