"""Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022) as HF models.

Read top to bottom: position table → masking → encoder (``MAEModel``) → decoder → pre-training head
(``MAEForPreTraining``). Blocks come from timm (fused qkv + ``F.scaled_dot_product_attention``), so the
encoder's state-dict names are timm's ViT names under the ``mae.`` prefix.

Over 400 lines and kept whole on purpose: it is one architecture, and one ``modeling_*.py`` per architecture
is the convention of transformers (``modeling_vit_mae.py`` is ~1000 lines) that a reader of a Hub model
expects; the pieces (position table, masking, encoder, decoder, head) call each other and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_mae import MAEConfig
from .pos_embed import sincos_pos_embed_2d


def kept_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` the encoder sees at ``mask_ratio``: rounded down, as the reference MAE,
    after a 1e-6 allowance for the ratio's decimal rounding (a constant-visible stage's 0.5556 of 9 patches
    keeps the 4 it means, not int(3.9996) = 3)."""
    return int(num_patches * (1 - mask_ratio) + 1e-6)


def random_masking(num_patches: int, mask_ratio: float, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample random masking by argsort of ``noise`` (small noise = kept), as the reference MAE.

    Returns ``ids_keep (B, n_keep)``, ``mask (B, L)`` with 1 = hidden, and ``ids_restore (B, L)``.
    """
    len_keep = kept_patches(num_patches, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :len_keep], mask, ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x[b, ids[b]]`` for a ``(B, L, D)`` tensor."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class MAEModelOutput(ModelOutput):
    """Encoder output. ``last_hidden_state`` holds the class token then the visible patches."""

    last_hidden_state: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """Pre-training output.

    Args:
        loss: mean squared error on the masked patches (per-patch normalised pixels if ``norm_pix_loss``).
        logits: ``(B, L, patch_size**2 * channels)`` predicted patch pixels, in patchify order (p, q, c).
        mask: ``(B, L)``, 1 for patches hidden from the encoder.
        ids_restore: ``(B, L)``, the permutation that undoes the masking shuffle.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None


class MAEPreTrainedModel(PreTrainedModel):
    config_class = MAEConfig
    base_model_prefix = "mae"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load our folder or a transformers ``vit_mae`` one (converted), locally or by Hub repo id.

        Refuses (``ModelLoadError``, one line naming the folder) another ``model_type``, missing or
        truncated weights, and weights lacking a tensor the model needs (only a classifier's new head may
        start untrained)."""
        from .loading import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Reference MAE init: xavier-uniform linears (patch projection as a flattened linear), zero
        biases, unit LayerNorms, N(0, 0.02) class/mask tokens. Loaded tensors are left alone."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # xavier on the (out, in*k*k) view, written without a view so transformers' "already loaded" flag
            # on the parameter is honoured.
            fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MAEModel):
            nn.init.normal_(module.cls_token, std=std)
        elif isinstance(module, MAEDecoder):
            nn.init.normal_(module.mask_token, std=std)


class PositionTable(nn.Module):
    """Fixed sin-cos table regenerated (and cached) for whatever patch grid the input has."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, grid_h: int, grid_w: int, like: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Inside a compiled graph the table is part of the graph (a constant of the grid): reading or
            # filling the cache there would guard on its contents, so a model compiled before the cache
            # held this grid would compile twice at it (miss, then hit).
            return sincos_pos_embed_2d(self.dim, grid_h, grid_w).to(like.device, like.dtype)
        key = (grid_h, grid_w, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = sincos_pos_embed_2d(self.dim, grid_h, grid_w).to(like.device, like.dtype)
        return self._cache[key]


def _blocks(
    config: MAEConfig, width: int, depth: int, heads: int, mlp_ratio: float, drop_path: float = 0.0
) -> nn.ModuleList:
    """``depth`` timm blocks; stochastic depth rises linearly from 0 to ``drop_path`` (the usual ViT rule)."""
    norm = partial(nn.LayerNorm, eps=config.layer_norm_eps)
    # on the CPU whatever the default device: a model built under ``torch.device("meta")`` needs numbers here
    rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path] * depth
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=config.qkv_bias, norm_layer=norm, drop_path=rate)
        for rate in rates
    )


def _run_blocks(module: nn.Module, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Run ``blocks``, recomputing activations in backward when activation checkpointing is on (set by
    transformers' ``activation_checkpointing_enable``, which also supplies the checkpoint function)."""
    if not (module.gradient_checkpointing and module.training and torch.is_grad_enabled()):
        for block in blocks:
            x = block(x)
        return x
    checkpoint = getattr(module, "_gradient_checkpointing_func", None) or partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=False
    )
    for block in blocks:
        x = checkpoint(block, x)
    return x


class MAEModel(MAEPreTrainedModel):
    """The ViT encoder. Without ``mask_ratio`` it sees every patch (features for downstream use)."""

    # Loading a pre-training checkpoint into the encoder alone drops the decoder on purpose.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            embed_dim=config.hidden_size,
            strict_img_size=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = PositionTable(config.hidden_size)
        self.blocks = _blocks(
            config,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.mlp_ratio,
            config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        height, width = pixel_values.shape[-2:]
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def _patches(self, pixel_values: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, L, C*p*p)`` in the patch projection's (channel, row, column) order."""
        b, c, p = pixel_values.shape[0], pixel_values.shape[1], self.config.patch_size
        x = pixel_values.reshape(b, c, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, grid_h * grid_w, c * p * p)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        final_norm: bool = True,
        **kwargs,
    ) -> MAEModelOutput | tuple:
        """Encode normalised images ``(B, C, H, W)``; ``H`` and ``W`` must be multiples of the patch size.

        ``noise (B, L)`` fixes which patches are kept (the ``1 - mask_ratio`` smallest); without it the
        mask is drawn with ``torch.rand`` (from ``generator`` when given, for reproducible masks).
        ``mask_ratio`` defaults to 0 (no masking). ``final_norm=False`` returns the tokens before the final
        LayerNorm (what global-average-pool fine-tuning pools, then normalises with its own ``fc_norm``).
        """
        grid_h, grid_w = self.patch_grid(pixel_values)
        batch, num_patches = pixel_values.shape[0], grid_h * grid_w
        pos = self.pos_embed(grid_h, grid_w, pixel_values)
        mask_ratio = 0.0 if mask_ratio is None else mask_ratio
        if mask_ratio > 0 or noise is not None:
            if noise is None:
                device = generator.device if generator is not None else pixel_values.device
                noise = torch.rand(batch, num_patches, device=device, generator=generator)
            ids_keep, mask, ids_restore = random_masking(
                num_patches, mask_ratio, noise.to(pixel_values.device)
            )
            # Embed only the visible patches: the patch projection is a linear map of each patch, so
            # projecting the kept 1 - mask_ratio of them is exact and skips the rest of the work.
            visible = gather_tokens(self._patches(pixel_values, grid_h, grid_w), ids_keep)
            proj = self.patch_embed.proj
            x = F.linear(visible, proj.weight.flatten(1), proj.bias)
            x = x + gather_tokens(pos[:, 1:].expand(batch, -1, -1), ids_keep)
        else:
            x = self.patch_embed(pixel_values) + pos[:, 1:]
            mask = x.new_zeros(batch, num_patches)
            ids_restore = torch.arange(num_patches, device=x.device).expand(batch, -1)
        cls = (self.cls_token + pos[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = _run_blocks(self, self.blocks, x)
        if final_norm:
            x = self.norm(x)
        out = MAEModelOutput(last_hidden_state=x, mask=mask, ids_restore=ids_restore)
        return out if return_dict is not False else out.to_tuple()


class MAEDecoder(nn.Module):
    """Lightweight decoder: visible tokens plus mask tokens, unshuffled, to per-patch pixel predictions."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = PositionTable(width)
        self.blocks = _blocks(
            config,
            width,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_mlp_ratio,
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.pred = nn.Linear(width, config.patch_size**2 * config.num_channels)
        self.gradient_checkpointing = False

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.decoder_embed(latent)
        batch, num_patches = ids_restore.shape
        masked = self.mask_token.expand(batch, num_patches + 1 - x.shape[1], -1)
        patches = gather_tokens(torch.cat([x[:, 1:], masked], dim=1), ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed(*grid, x)
        x = self.norm(_run_blocks(self, self.blocks, x))
        return self.pred(x[:, 1:])


class MAEForPreTraining(MAEPreTrainedModel):
    """MAE encoder + decoder with the masked-patch reconstruction loss."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.mae = MAEModel(config)
        self.decoder = MAEDecoder(config)
        self.post_init()

    def no_weight_decay(self) -> set[str]:
        return {"mae.cls_token", "decoder.mask_token"}

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, L, p*p*C)``, each patch flattened in (row, column, channel) order."""
        p = self.config.patch_size
        b, c, h, w = pixel_values.shape
        x = pixel_values.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Inverse of :meth:`patchify` for a ``(grid_h, grid_w)`` patch grid."""
        p, c = self.config.patch_size, self.config.num_channels
        (gh, gw), b = grid, patches.shape[0]
        x = patches.reshape(b, gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, gh * p, gw * p)

    def target_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The regression target: patches, per-patch normalised when ``norm_pix_loss``."""
        target = self.patchify(pixel_values.float())
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def reconstruction_loss(
        self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only (computed in fp32)."""
        per_patch = (logits.float() - self.target_patches(pixel_values)).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MAEForPreTrainingOutput | tuple:
        """Mask, encode, decode and score normalised images ``(B, C, H, W)``.

        ``mask_ratio`` overrides ``config.mask_ratio`` for this call (progressive schemes change it);
        ``noise (B, L)`` or a ``generator`` makes the mask deterministic.
        """
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be in (0, 1) for pre-training")
        grid = self.mae.patch_grid(pixel_values)
        encoded = self.mae(pixel_values, noise=noise, mask_ratio=mask_ratio, generator=generator)
        logits = self.decoder(encoded.last_hidden_state, encoded.ids_restore, grid)
        loss = self.reconstruction_loss(pixel_values, logits, encoded.mask)
        out = MAEForPreTrainingOutput(
            loss=loss, logits=logits, mask=encoded.mask, ids_restore=encoded.ids_restore
        )
        return out if return_dict is not False else out.to_tuple()


@dataclass
class MAEImageClassifierOutput(ModelOutput):
    """``logits (B, num_labels)``; ``loss`` when labels were given; ``pooled (B, D)`` the head's input."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class MAEForImageClassification(MAEPreTrainedModel):
    """The MAE encoder with a linear head: the reference MAE fine-tune.

    ``config.global_pool == "avg"``: mean of the patch tokens before the encoder's final norm, then its own
    ``fc_norm``; ``"token"``: the class token after the final norm. ``config.drop_path_rate`` sets stochastic
    depth. ``from_pretrained`` on a pre-training save loads the encoder and drops the decoder; the head
    starts at N(0, 2e-5) with zero bias, as the reference does.

        MAEForImageClassification.from_pretrained(dir_or_repo, num_labels=10, drop_path_rate=0.1)

    ``labels`` may be class indices ``(B,)`` or soft targets ``(B, num_labels)`` (mixup/cutmix, label
    smoothing): the loss is the cross-entropy against them either way.
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.mae = MAEModel(config)
        self.fc_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.global_pool == "avg"
            else nn.Identity()
        )
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "head", None):
            nn.init.trunc_normal_(module.weight, std=2e-5)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def no_weight_decay(self) -> set[str]:
        return {"mae.cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's layer-wise lr decay (``param_groups_layer_decay``): patch embedding and
        class token first, then one group per block, then the final norm and head."""
        return {
            "stem": r"^mae\.cls_token|^mae\.patch_embed",
            # the final norm, fc_norm and head are matched by nothing: timm puts them in the last layer
            # (scale 1), as the reference MAE fine-tune does
            "blocks": [(r"^mae\.blocks\.(\d+)", None)],
        }

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled ``(B, D)`` feature the head reads."""
        avg = self.config.global_pool == "avg"
        tokens = self.mae(pixel_values, final_norm=not avg).last_hidden_state
        return self.fc_norm(tokens[:, 1:].mean(dim=1)) if avg else tokens[:, 0]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MAEImageClassifierOutput | tuple:
        pooled = self.features(pixel_values)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            if labels.ndim == 2:  # soft targets
                loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), labels)
        out = MAEImageClassifierOutput(loss=loss, logits=logits, pooled=pooled)
        return out if return_dict is not False else out.to_tuple()
