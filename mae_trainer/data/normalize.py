"""On-device normalisation: the loaders deliver uint8 images, the model takes normalised floats."""

from __future__ import annotations

import numpy as np
import torch


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → normalised float on the images' device: ``(x/255 - mean) / std``, in
    contiguous (NCHW) memory whatever the input's layout (the GPU loader hands over a channels-last view)."""
    x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1)).to(dtype)


def stats_tensor(values, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
