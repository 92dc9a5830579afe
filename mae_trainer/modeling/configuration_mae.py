"""Configuration of the Masked Autoencoder (He et al., 2022) as a Hugging Face ``PretrainedConfig``."""

from __future__ import annotations

from transformers import PretrainedConfig

from .presets import PRESETS


class MAEConfig(PretrainedConfig):
    """Every hyper-parameter of the MAE; the model is rebuilt from this alone.

    Args:
        image_size: native input side in pixels (the size the saved position table describes). Any side
            that is a multiple of ``patch_size`` is accepted at run time.
        patch_size: side of a square patch in pixels.
        num_channels: input channels.
        hidden_size / num_hidden_layers / num_attention_heads: encoder width, depth and heads.
        mlp_ratio: encoder MLP hidden width as a multiple of the block width.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads: decoder shape.
        decoder_mlp_ratio: decoder MLP hidden width as a multiple of the decoder width.
        mask_ratio: fraction of patches hidden from the encoder (default for ``forward``).
        norm_pix_loss: regress per-patch normalised pixels (MAE's better-performing target).
        layer_norm_eps: LayerNorm epsilon (1e-6 as the reference MAE).
        qkv_bias: bias on the fused query/key/value projection.
        initializer_range: std of the normal init of the class and mask tokens.
        image_mean / image_std: normalisation applied to 0..1 pixels before the model (ImageNet defaults).
        drop_path_rate: stochastic depth of the encoder's last block (linearly 0 → this over the blocks);
            0 for pre-training, 0.1 (B) / 0.2 (L) for fine-tuning as the reference MAE.
        global_pool: classification feature: ``"avg"`` (mean of the patch tokens, then ``fc_norm``, the
            reference MAE fine-tune) or ``"token"`` (the class token after the encoder's final norm).
    """

    model_type = "mae_trainer_mae"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        image_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.drop_path_rate = drop_path_rate
        self.global_pool = global_pool
        self._validate()

    def _validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} is not divisible by "
                f"decoder_num_attention_heads={self.decoder_num_attention_heads}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        if self.global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool={self.global_pool!r} must be 'avg' or 'token'")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MAEConfig:
        """Build a config from a named preset (``tiny``, ``small``, ``base``, ``large``, ``huge``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
