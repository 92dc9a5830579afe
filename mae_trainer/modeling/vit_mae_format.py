"""The ``transformers`` ``vit_mae`` format, as data: how our state-dict keys and config map onto
``ViTMAEForPreTraining``'s, both ways, without building either model. The loader (``loading.py``) turns a
``vit_mae`` folder into our weights with it, and ``convert.py`` writes ``vit_mae`` models with it; neither
this module nor the loader imports our model classes (no import cycle through ``from_pretrained``).

Our blocks fuse query/key/value into one ``qkv`` projection (timm's layout); transformers keeps three. The
fixed sin-cos tables are not in our state dict; ``vit_mae`` stores the table of the native grid, which an
import checks.
"""

from __future__ import annotations

import torch

from .configuration_mae import MAEConfig
from .pos_embed import sincos_pos_embed_2d

# Block sub-module names: ours (timm) → transformers vit_mae (5.x).
_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP_RENAMES = {
    "mae.cls_token": "vit.embeddings.cls_token",
    "mae.patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "mae.norm": "vit.layernorm",
    "decoder.decoder_embed": "decoder.decoder_embed",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.norm": "decoder.decoder_norm",
    "decoder.pred": "decoder.decoder_pred",
}
_STACKS = {"mae.blocks": "vit.layers", "decoder.blocks": "decoder.decoder_layers"}
POS_TOLERANCE = 1e-5


def mae_config_from_vit_mae(hf_config) -> MAEConfig:
    """Our ``MAEConfig`` for a ``ViTMAEConfig``; refuses what our blocks cannot express."""
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"vit_mae hidden_act={hf_config.hidden_act!r}: only exact 'gelu' is supported")
    if hf_config.hidden_dropout_prob or hf_config.attention_probs_dropout_prob:
        raise ValueError("vit_mae dropout > 0 is not supported (MAE pre-training uses none)")
    extra = {k: getattr(hf_config, k) for k in ("image_mean", "image_std") if hasattr(hf_config, k)}
    return MAEConfig(
        image_size=hf_config.image_size,
        patch_size=hf_config.patch_size,
        num_channels=hf_config.num_channels,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        mlp_ratio=hf_config.intermediate_size / hf_config.hidden_size,
        decoder_hidden_size=hf_config.decoder_hidden_size,
        decoder_num_hidden_layers=hf_config.decoder_num_hidden_layers,
        decoder_num_attention_heads=hf_config.decoder_num_attention_heads,
        decoder_mlp_ratio=hf_config.decoder_intermediate_size / hf_config.decoder_hidden_size,
        mask_ratio=hf_config.mask_ratio,
        norm_pix_loss=bool(hf_config.norm_pix_loss),
        layer_norm_eps=hf_config.layer_norm_eps,
        qkv_bias=hf_config.qkv_bias,
        initializer_range=hf_config.initializer_range,
        **extra,
    )


def rename(ours: str) -> str:
    """Our state-dict key → the vit_mae key (for everything but the fused qkv)."""
    for prefix, theirs in _STACKS.items():
        if ours.startswith(prefix + "."):
            index, rest = ours[len(prefix) + 1 :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            return f"{theirs}.{index}.{_BLOCK_RENAMES[module]}.{leaf}"
    module, leaf = ours.rsplit(".", 1) if ours.count(".") > 1 else (ours, "")
    if module in _TOP_RENAMES:
        return f"{_TOP_RENAMES[module]}.{leaf}" if leaf else _TOP_RENAMES[module]
    return _TOP_RENAMES[ours]


def qkv_keys(ours: str) -> list[str] | None:
    """Our fused ``...attn.qkv.{weight,bias}`` → the three vit_mae keys it splits into (q, k, v order);
    ``None`` for every other key."""
    if not (ours.endswith("attn.qkv.weight") or ours.endswith("attn.qkv.bias")):
        return None
    pattern = rename(ours.replace("attn.qkv", "attn.proj")).replace("o_proj", "{}_proj")
    return [pattern.format(name) for name in "qkv"]


def native_tables(config: MAEConfig) -> dict[str, torch.Tensor]:
    grid = config.image_size // config.patch_size
    return {
        "vit.embeddings.position_embeddings": sincos_pos_embed_2d(config.hidden_size, grid, grid),
        "decoder.decoder_pos_embed": sincos_pos_embed_2d(config.decoder_hidden_size, grid, grid),
    }


def _ours(theirs: str) -> str | None:
    """The key of ours that vit_mae key ``theirs`` holds (``attn.qkv`` for each of the three projections),
    or None for a key we do not store (the position tables)."""
    for prefix, their_prefix in _STACKS.items():
        if theirs.startswith(their_prefix + "."):
            index, rest = theirs[len(their_prefix) + 1 :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
                return f"{prefix}.{index}.attn.qkv.{leaf}"
            ours = next((o for o, t in _BLOCK_RENAMES.items() if t == module), None)
            return None if ours is None else f"{prefix}.{index}.{ours}.{leaf}"
    for ours, their_module in _TOP_RENAMES.items():
        if theirs == their_module:
            return ours
        if theirs.startswith(their_module + ".") and theirs.count(".") == their_module.count(".") + 1:
            return f"{ours}.{theirs.rsplit('.', 1)[1]}"
    return None


def our_state_from_vit_mae(theirs: dict[str, torch.Tensor], config: MAEConfig) -> dict[str, torch.Tensor]:
    """Our ``MAEForPreTraining`` state dict from a ``ViTMAEForPreTraining`` one (``ValueError`` when its
    position tables are not the fixed sin-cos ones of ``config``'s grid); keys we do not store are left."""
    for key, table in native_tables(config).items():
        gap = (theirs[key].float() - table).abs().max().item()
        if gap > POS_TOLERANCE:
            raise ValueError(f"{key} is not the fixed sin-cos table (max difference {gap:.2e})")
    state = {}
    for key in theirs:
        ours = _ours(key)
        if ours is not None and ours not in state:
            split = qkv_keys(ours)
            state[ours] = torch.cat([theirs[k] for k in split], dim=0) if split else theirs[key]
    return state
