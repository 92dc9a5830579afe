"""The fixed 2-D sin-cos position table of MAE (shared by the model and the ``vit_mae`` format)."""

from __future__ import annotations

import torch


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of shape ``(1, [1 +] grid_h * grid_w, dim)``, computed for the grid.

    Half of the channels encode the column, half the row, each as ``[sin(pos·ω), cos(pos·ω)]`` with
    ``ω_i = 10000^(-i / (dim/4))`` — the MAE reference layout, so the 14×14 table equals the reference one.
    The class-token row is zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)
