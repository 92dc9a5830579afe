"""Reconstruction grids: what the MAE sees and what it predicts for the hidden patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ..data.normalize import normalize, stats_tensor
from ..modeling import MAEForPreTraining
from ..publish import publishing

ROWS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruction_grid(
    model: MAEForPreTraining, images: torch.Tensor, mask_ratio: float | None = None, seed: int = 0
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 grid with one column per image and the rows of :data:`ROWS`.

    ``images`` are uint8 ``(B, 3, H, W)``. The per-patch normalisation of the target (``norm_pix_loss``) is
    undone with each patch's own mean and variance, as the reference MAE visualisation does.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    mean, std = (
        stats_tensor(model.config.image_mean, param.device),
        stats_tensor(model.config.image_std, param.device),
    )
    x = normalize(images.to(param.device), mean, std, torch.float32)
    grid = model.mae.patch_grid(x)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape[0], grid[0] * grid[1], generator=generator).to(param.device)
    out = model(x.to(param.dtype), noise=noise, mask_ratio=mask_ratio)
    pred = out.logits.float()
    if model.config.norm_pix_loss:
        patches = model.patchify(x)
        pred = pred * (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
    recon = model.unpatchify(pred, grid)
    hidden = model.unpatchify(out.mask.unsqueeze(-1).expand_as(pred), grid)
    shown = x * (1 - hidden)
    pasted = shown + recon * hidden
    rows = torch.cat([x, shown, recon, pasted]) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    rows = torch.where(
        torch.cat(
            [torch.zeros_like(hidden), hidden, torch.zeros_like(hidden), torch.zeros_like(hidden)]
        ).bool(),
        0.5,
        rows,
    )  # hidden patches as gray
    picture = make_grid(rows.clamp(0, 1).cpu(), nrow=x.shape[0], padding=2, pad_value=1.0)
    model.train(was_training)
    return (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(picture: np.ndarray, path: Path) -> Path:
    """Write atomically: a reader never sees half a PNG."""
    with publishing(path) as partial:
        Image.fromarray(picture).save(partial, format="PNG")
    return path
