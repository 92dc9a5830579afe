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
    return int(reader.num_samples)


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
