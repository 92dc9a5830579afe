"""The evaluation loader: every sample once, in file order, centre-cropped (reconstruction grids, probes,
fine-tune evaluation), :func:`eval_shard`, one rank's share of an evaluation set, and :func:`fixed_images`,
the images of a run's reconstruction grids.

The training loader is :class:`mae_trainer.data.train_loader.ProgressiveLoader`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .beton import check_beton


def eval_shard(num_samples: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s samples of ``num_samples`` shared by ``world`` ranks: a contiguous block, the first
    ``num_samples % world`` ranks one sample more. Over the ranks every sample appears exactly once (no
    padding, unlike ``DistributedSampler``, so metrics count each sample once); with more ranks than
    samples the last ranks get an empty list."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world} rank(s)")
    if num_samples < 0:
        raise ValueError(f"num_samples must be ≥ 0, not {num_samples}")
    per_rank, extra = divmod(num_samples, world)
    start = rank * per_rank + min(rank, extra)
    return list(range(start, start + per_rank + (rank < extra)))


def eval_loader(
    path: Path,
    batch_size: int,
    resolution: int,
    *,
    num_workers: int = 1,
    crop_ratio: float = 1.0,
    indices: list[int] | None = None,
):
    """Sequential order, centre crop (``crop_ratio`` of the short side) resized to ``resolution``; every
    sample of ``indices`` (default: the whole file) once, the last batch possibly smaller. Empty
    ``indices`` (a rank with no share, :func:`eval_shard`) give an empty iterable. Batches are
    ``(images, labels)``, or ``(images,)`` for a file written without labels. FFCV reuses its output
    buffers: consume or copy each batch before taking the next."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    from .beton import field_names
    from .jit_cache import cached_pipeline

    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return []  # FFCV cannot build a loader over no samples
    pipelines = {
        "image": [
            CenterCropRGBImageDecoder((resolution, resolution), ratio=crop_ratio),
            ToTensor(),
            ToTorchImage(channels_last=False),
        ],
    }
    if "label" in field_names(path):
        pipelines["label"] = [IntDecoder(), ToTensor(), Squeeze(1)]
    with cached_pipeline():  # FFCV's pipeline from numba's on-disk cache (jit_cache.py)
        return Loader(
            str(path),
            batch_size=batch_size,
            num_workers=num_workers,
            order=OrderOption.SEQUENTIAL,
            drop_last=False,
            pipelines=pipelines,
            indices=indices,
        )


def fixed_images(data: Path, resolution: int, count: int):
    """``count`` images spread evenly over ``data`` (so across classes), centre-cropped: the same ones in
    every reconstruction grid of a run, so the grids show progress. A uint8 ``(count, 3, resolution,
    resolution)`` tensor.

    The pixels of :func:`eval_loader` (FFCV's ``CenterCropRGBImageDecoder``, ``crop_ratio`` 1), made by the
    same C functions (FFCV's ``imdecode`` and ``resize``, OpenCV's INTER_AREA) on the same crop box, but
    called from Python: a loader would compile FFCV's pipeline with numba for these few images, and its
    centre-crop decoder's ctypes calls keep numba from caching it (a second in every run)."""
    import torch
    from ffcv.fields.rgb_image import IMAGE_MODES, get_center_crop
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.reader import Reader

    total = check_beton(data)
    spread = np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()
    reader = Reader(str(data))
    field = reader.metadata[f"f{reader.field_names.index('image')}"]
    table = reader.alloc_table
    sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    stored = np.memmap(data, dtype=np.uint8, mode="r")
    images = np.empty((len(spread), resolution, resolution, 3), dtype=np.uint8)
    for out, index in zip(images, spread):
        sample = field[index]
        height, width, ptr = int(sample["height"]), int(sample["width"]), int(sample["data_ptr"])
        if int(sample["mode"]) == IMAGE_MODES["jpg"]:
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            source = np.ascontiguousarray(stored[ptr : ptr + sizes[ptr]])
            imdecode(source, pixels, height, width, height, width, 0, 0, 1, 1, False, False)
        else:
            pixels = np.ascontiguousarray(stored[ptr : ptr + height * width * 3]).reshape(height, width, 3)
        row, col, h, w = get_center_crop(height, width, None, 1.0)
        resize_crop(pixels, row, row + h, col, col + w, out)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
