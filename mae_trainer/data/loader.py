"""FFCV loaders over a ``.beton``: uint8 batches out, float conversion and normalisation on the device."""

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
    return int(reader.num_samples)


def train_loader(
    path: Path,
    batch_size: int,
    resolution: int,
    *,
    num_workers: int = 2,
    distributed: bool = False,
    seed: int = 0,
    os_cache: bool = True,
    batches_ahead: int = 2,
    drop_last: bool = True,
):
    """Random order, RandomResizedCrop (scale 0.2–1, ratio 3/4–4/3) to ``resolution`` and horizontal flip.

    Yields ``(images uint8 (B, 3, R, R), labels int64 (B,))`` on the CPU. The crop size can be changed
    between epochs with :func:`set_resolution` without recompiling the pipeline.
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    decoder = RandomResizedCropRGBImageDecoder((resolution, resolution), scale=RRC_SCALE, ratio=RRC_RATIO)
    pipelines = {
        "image": [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage(channels_last=False)],
        "label": [IntDecoder(), ToTensor(), Squeeze()],
    }
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM,
        distributed=distributed,
        seed=seed,
        os_cache=os_cache,
        batches_ahead=batches_ahead,
        drop_last=drop_last,
        pipelines=pipelines,
    )


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
        "label": [IntDecoder(), ToTensor(), Squeeze()],
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


def set_resolution(loader, resolution: int) -> None:
    """Change the crop output size for the next epoch (FFCV reads it when the epoch's iterator starts)."""
    decoder = loader.pipeline_specs["image"].decoder
    decoder.output_size = (resolution, resolution)


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → normalised float on the images' device: ``(x/255 - mean) / std``."""
    x = images.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1)).to(dtype)


def stats_tensor(values, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
