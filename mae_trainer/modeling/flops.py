"""Model FLOPs of MAE pre-training per image, from the config, the image side and the mask ratio.

Only matrix multiplies are counted, each ``(m × k) @ (k × n)`` as ``2·m·n·k`` FLOPs (a multiply and an
add), as ``torch.utils.flop_counter.FlopCounterMode`` and the MFU literature count them; LayerNorm,
GELU, softmax, the loss and the optimizer are left out (a few per cent at most). With ``N`` patches of
``p²·C`` values, ``K = kept_patches(N, mask_ratio)`` visible ones, an encoder of width ``D`` and depth
``L`` and a decoder of width ``d`` and depth ``l``, one forward pass of one image costs::

    2·K·p²C·D                     patch embedding, visible patches only (the model embeds no others)
    + L · block(K + 1, D)         encoder on the visible tokens and the class token
    + 2·(K + 1)·D·d               decoder embedding
    + l · block(N + 1, d)         decoder on every token and the class token
    + 2·N·d·p²C                   prediction head, patch tokens only

    block(T, W) = 2·T·(3W² + W² + 2·W·H) + 2·2·T²·W     qkv, output projection, the two MLP layers
                                                         (hidden width H = int(W · mlp_ratio)), QKᵀ, AV

A training step is forward + backward ≈ 3 × forward: backward computes two matmuls for every forward
one (the gradient of its input and of its weight). It is slightly less (FlopCounterMode measures
2.981-2.986× for tiny, 2.996-2.997× for base, ``tests/test_flops.py``) because the pixels need no
gradient. These are model FLOPs: recomputation (activation checkpointing, flash attention's backward) is
not counted, as MFU wants.
"""

from __future__ import annotations

from .modeling_mae import kept_patches

TRAINING_PASSES = 3  # forward + backward ≈ 3 forwards


def block_flops(tokens: int, width: int, mlp_ratio: float) -> int:
    """Forward matmul FLOPs of one transformer block on ``tokens`` tokens of ``width`` channels."""
    hidden = int(width * mlp_ratio)
    linear = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden)
    attention = 2 * 2 * tokens * tokens * width  # QKᵀ and AV over all heads
    return linear + attention


def mae_forward_flops_per_image(config, resolution: int, mask_ratio: float) -> int:
    """Matmul FLOPs of one ``MAEForPreTraining`` forward pass of one ``resolution``² image at
    ``mask_ratio`` (``config``: an ``MAEConfig``)."""
    patch = config.patch_size**2 * config.num_channels
    num_patches = (resolution // config.patch_size) ** 2
    visible = kept_patches(num_patches, mask_ratio)
    enc, dec = config.hidden_size, config.decoder_hidden_size
    return (
        2 * visible * patch * enc
        + config.num_hidden_layers * block_flops(visible + 1, enc, config.mlp_ratio)
        + 2 * (visible + 1) * enc * dec
        + config.decoder_num_hidden_layers * block_flops(num_patches + 1, dec, config.decoder_mlp_ratio)
        + 2 * num_patches * dec * patch
    )


def mae_training_flops_per_image(config, resolution: int, mask_ratio: float) -> float:
    """Model FLOPs of one training step per image: forward + backward ≈ 3 × forward."""
    return float(TRAINING_PASSES * mae_forward_flops_per_image(config, resolution, mask_ratio))
