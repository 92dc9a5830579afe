"""Conversion between our MAE and the formats other tools load without this package.

- ``transformers`` ``vit_mae`` (``ViTMAEForPreTraining``, the maintained port of the reference MAE):
  both ways.
  A ``vit_mae`` folder also loads as ``ViTModel`` / ``ViTForImageClassification`` (same ``vit.`` weights).
- ``timm`` ViT: the encoder as a state dict that ``timm.create_model("vit_<size>_patch<p>_<res>",
  num_classes=0)`` loads with ``strict=True``.
- a fine-tuned ``MAEForImageClassification`` → a plain transformers image classifier with the same
  predictions (``BeitForImageClassification`` for the mean-pool head, ``ViTForImageClassification`` for the
  class-token head): :func:`to_transformers_classifier`.
- a transformers image processor that prepares images as our evaluation does, saved with ``vit_mae``
  folders (:func:`write_vit_mae`) and Hub uploads.

Our blocks fuse query/key/value into one ``qkv`` projection (timm's layout); transformers keeps three.
The fixed sin-cos tables are not stored in our state dict (they are recomputed for each grid); exports
write the table of the native ``image_size`` grid, and imports check that the incoming table is that table.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .configuration_mae import MAEConfig
from .modeling_mae import MAEForPreTraining
from .pos_embed import sincos_pos_embed_2d
from .vit_mae_format import mae_config_from_vit_mae, native_tables, our_state_from_vit_mae, qkv_keys, rename

# The evaluation resize of mae_trainer.data.labelled.eval_transform (timm's, crop_pct 0.875): the short
# side to floor(image_size / 0.875) with bicubic resampling, then the centre image_size square.
EVAL_CROP_PCT = 0.875


def _encoder_fields(config: MAEConfig) -> dict:
    """The ViT encoder's settings in transformers' names (shared by the vit_mae and classifier configs)."""
    return dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=int(config.hidden_size * config.mlp_ratio),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
    )


def vit_mae_config(config: MAEConfig):
    """The ``ViTMAEConfig`` describing the same network."""
    from transformers import ViTMAEConfig

    return ViTMAEConfig(
        **_encoder_fields(config),
        qkv_bias=config.qkv_bias,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_intermediate_size=int(config.decoder_hidden_size * config.decoder_mlp_ratio),
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def to_vit_mae_state_dict(model: MAEForPreTraining) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        split = qkv_keys(key)
        if split:
            for name, part in zip(split, value.chunk(3, dim=0)):
                state[name] = part.clone()
        else:
            state[rename(key)] = value.clone()
    state.update(native_tables(model.config))
    return state


def to_vit_mae(model: MAEForPreTraining):
    """A ``transformers.ViTMAEForPreTraining`` with our weights (same outputs for the same ``noise``)."""
    from transformers import ViTMAEForPreTraining

    hf = ViTMAEForPreTraining(vit_mae_config(model.config))
    missing, unexpected = hf.load_state_dict(to_vit_mae_state_dict(model), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"vit_mae conversion mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval() if not model.training else hf


def image_processor(config: MAEConfig):
    """A transformers image processor that prepares images the way our evaluation does: shortest edge to
    ``floor(image_size / 0.875)`` (bicubic), centre crop ``image_size``, rescale to 0..1, the model's mean
    and std. ``BitImageProcessor`` is transformers' processor with exactly these steps (``ViTImageProcessor``
    has no crop: it squashes the whole image to a square)."""
    from PIL import Image
    from transformers import BitImageProcessor

    size = config.image_size
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": math.floor(size / EVAL_CROP_PCT)},
        resample=Image.BICUBIC,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        do_convert_rgb=True,
    )


def write_vit_mae(model: MAEForPreTraining, folder: Path) -> None:
    """``model`` as a transformers ``vit_mae`` folder with its image processor (``save_pretrained`` writes
    into ``folder`` as it goes: publish it with :func:`mae_trainer.publish.publish_folder`)."""
    to_vit_mae(model).save_pretrained(folder)
    image_processor(model.config).save_pretrained(folder)


def from_vit_mae(hf_model_or_dir) -> MAEForPreTraining:
    """Our model from a ``ViTMAEForPreTraining`` (instance, or a ``save_pretrained`` folder such as a
    downloaded ``facebook/vit-mae-base``)."""
    from transformers import ViTMAEForPreTraining

    hf = hf_model_or_dir
    if isinstance(hf_model_or_dir, (str, Path)):
        hf = ViTMAEForPreTraining.from_pretrained(hf_model_or_dir)
    config = mae_config_from_vit_mae(hf.config)
    model = MAEForPreTraining(config)
    model.load_state_dict(our_state_from_vit_mae(hf.state_dict(), config), strict=True)
    return model.train(hf.training)


TIMM_SIZES = {
    (192, 12, 3): "tiny",
    (384, 12, 6): "small",
    (768, 12, 12): "base",
    (1024, 24, 16): "large",
    (1280, 32, 16): "huge",
}


def timm_model_name(config: MAEConfig) -> str | None:
    """The timm architecture with this encoder, e.g. ``vit_base_patch16_224``, or None."""
    size = TIMM_SIZES.get((config.hidden_size, config.num_hidden_layers, config.num_attention_heads))
    if size is None or config.mlp_ratio != 4.0:
        return None
    return f"vit_{size}_patch{config.patch_size}_{config.image_size}"


def to_timm_state_dict(model: MAEForPreTraining) -> dict[str, torch.Tensor]:
    """The encoder as a timm ``VisionTransformer`` state dict (class token, sin-cos ``pos_embed`` of the
    native grid, blocks, final norm)."""
    config = model.config
    grid = config.image_size // config.patch_size
    state = {k[len("mae.") :]: v.clone() for k, v in model.state_dict().items() if k.startswith("mae.")}
    state["pos_embed"] = sincos_pos_embed_2d(config.hidden_size, grid, grid)
    return state


# ------------------------------------------------------------------------------ fine-tuned classifiers
#
# A fine-tuned MAEForImageClassification exported as an image classifier that plain transformers has:
#
# - global_pool "token" (the class token after the encoder's final norm, then the head) is exactly
#   ViTForImageClassification: same blocks (vit_mae's names, under "vit."), final layernorm, the class token
#   into "classifier".
# - global_pool "avg" (the MAE recipe: the mean of the patch tokens BEFORE the final norm, then fc_norm, then
#   the head) is BeitForImageClassification configured as a plain ViT: absolute position embeddings (our
#   fixed sin-cos table of the native grid, class-token row zero, added to the class token too, as ours),
#   no relative position bias, no layer scale (lambda = 1.0), use_mean_pooling (the encoder's final norm is
#   Identity and the pooler's LayerNorm is applied to the mean of the patch tokens: our fc_norm), exact
#   "gelu", no dropout or drop path. BEiT's key projection has no bias; ours has one, and it cancels in the
#   softmax: q·(k_j + b) = q·k_j + q·b adds the same q·b to every key's score of a query, which softmax
#   ignores. Our final norm is not used by this head and is not exported.


def _encoder_state(model, prefix: str, key_bias: bool) -> dict[str, torch.Tensor]:
    """The encoder of ``model`` (an ``MAEForImageClassification``) with transformers ViT names under
    ``prefix`` (``vit`` or ``beit``), q/k/v split, the sin-cos table of the native grid included; without
    the final norm (``mae.norm``). ``key_bias=False`` drops the key projection's bias (BEiT has none)."""
    config = model.config
    hidden = config.hidden_size
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("mae.") or key.startswith("mae.norm."):
            continue
        split = qkv_keys(key)
        names, parts = (split, value.chunk(3, dim=0)) if split else ([rename(key)], [value])
        for name, part in zip(names, parts):
            if not key_bias and name.endswith("k_proj.bias"):
                continue
            state[prefix + name[len("vit") :]] = part.clone()
    if not config.qkv_bias:  # transformers' q/v projections may carry a bias: make it zero
        for i in range(config.num_hidden_layers):
            for name in ("q", "v") + (("k",) if key_bias else ()):
                state.setdefault(f"{prefix}.layers.{i}.attention.{name}_proj.bias", torch.zeros(hidden))
    grid = config.image_size // config.patch_size
    state[f"{prefix}.embeddings.position_embeddings"] = sincos_pos_embed_2d(hidden, grid, grid)
    return state


def _classifier_common(config: MAEConfig) -> dict:
    labels = {int(i): str(name) for i, name in config.id2label.items()}
    return dict(
        **_encoder_fields(config),
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )


def classifier_config(config: MAEConfig):
    """The transformers config of the classifier that computes what ours does: ``BeitConfig`` for
    ``global_pool="avg"``, ``ViTConfig`` for ``"token"`` (see the comment above)."""
    from transformers import BeitConfig, ViTConfig

    common = _classifier_common(config)
    if config.global_pool == "token":
        return ViTConfig(**common, qkv_bias=True, encoder_stride=config.patch_size)
    return BeitConfig(
        **common,
        use_mask_token=False,
        use_absolute_position_embeddings=True,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        layer_scale_init_value=0.0,
        drop_path_rate=0.0,
        use_mean_pooling=True,
    )


def to_transformers_classifier(model):
    """A ``transformers`` image classifier with the predictions of ``model`` (our
    ``MAEForImageClassification``): ``BeitForImageClassification`` for ``global_pool="avg"``,
    ``ViTForImageClassification`` for ``"token"``; ``config.id2label`` / ``label2id`` carry the class
    names."""
    from transformers import BeitForImageClassification, ViTForImageClassification

    config = model.config
    head = {"classifier.weight": model.head.weight, "classifier.bias": model.head.bias}
    if config.global_pool == "token":
        hf = ViTForImageClassification(classifier_config(config))
        state = _encoder_state(model, "vit", key_bias=True)
        state.update(
            {"vit.layernorm.weight": model.mae.norm.weight, "vit.layernorm.bias": model.mae.norm.bias}
        )
    else:
        hf = BeitForImageClassification(classifier_config(config))
        state = _encoder_state(model, "beit", key_bias=False)
        state.update(
            {
                "beit.pooler.layernorm.weight": model.fc_norm.weight,
                "beit.pooler.layernorm.bias": model.fc_norm.bias,
            }
        )
    state.update({k: v.detach().clone() for k, v in head.items()})
    state = {k: v.detach().clone() for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"classifier conversion mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval() if not model.training else hf


def write_transformers_classifier(model, folder: Path) -> None:
    """``model`` (our ``MAEForImageClassification``) as a plain-transformers classifier folder (BEiT or ViT,
    :func:`to_transformers_classifier`) with its image processor (:func:`image_processor`)."""
    to_transformers_classifier(model).save_pretrained(folder)
    image_processor(model.config).save_pretrained(folder)
