"""Same math as transformers' ViTMAEForPreTraining (the maintained port of the reference MAE)."""

from __future__ import annotations

import pytest
import torch

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.modeling import sincos_pos_embed_2d
from mae_trainer.modeling.convert import from_vit_mae, to_vit_mae

CONFIGS = {
    "tiny-224": dict(**{"image_size": 224}, preset="tiny"),
    "patch8-deep-decoder": dict(
        image_size=64,
        patch_size=8,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        decoder_hidden_size=64,
        decoder_num_hidden_layers=3,
        decoder_num_attention_heads=2,
        mlp_ratio=2.0,
        decoder_mlp_ratio=3.0,
    ),
    "patch14-wide-decoder": dict(
        image_size=56,
        patch_size=14,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        decoder_hidden_size=80,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=5,
    ),
    "patch16-no-qkv-bias": dict(
        image_size=96,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        qkv_bias=False,
        mask_ratio=0.6,
    ),
}


def build(name: str, norm_pix_loss: bool) -> MAEForPreTraining:
    kwargs = dict(CONFIGS[name])
    preset = kwargs.pop("preset", None)
    config = (
        MAEConfig.from_preset(preset, norm_pix_loss=norm_pix_loss, **kwargs)
        if preset
        else MAEConfig(norm_pix_loss=norm_pix_loss, **kwargs)
    )
    torch.manual_seed(0)
    return MAEForPreTraining(config).eval()


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_converted_weights_give_the_same_loss_and_logits(name, norm_pix_loss):
    ours = build(name, norm_pix_loss)
    theirs = to_vit_mae(ours).eval()
    side, patch = ours.config.image_size, ours.config.patch_size
    x = torch.randn(2, 3, side, side)
    noise = torch.rand(2, (side // patch) ** 2)
    with torch.no_grad():
        a, b = ours(x, noise=noise), theirs(x, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_restore, b.ids_restore)
    assert (a.logits - b.logits).abs().max() <= 1e-5
    assert (a.loss - b.loss).abs() <= 1e-5

    back = from_vit_mae(theirs)
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_hf_initialised_model_converts_to_ours():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(1)
    theirs = ViTMAEForPreTraining(
        ViTMAEConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            image_size=64,
            patch_size=16,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=128,
            layer_norm_eps=1e-12,
        )
    ).eval()
    # transformers 5.x leaves a freshly built ViTMAE with all-zero position tables (its embedding init
    # returns early once the patch projection is initialised); real checkpoints carry the sin-cos tables.
    with pytest.raises(ValueError, match="is not the fixed sin-cos table"):
        from_vit_mae(theirs)
    with torch.no_grad():
        theirs.vit.embeddings.position_embeddings.copy_(sincos_pos_embed_2d(64, 4, 4))
        theirs.decoder.decoder_pos_embed.copy_(sincos_pos_embed_2d(32, 4, 4))
    ours = from_vit_mae(theirs).eval()
    assert ours.config.layer_norm_eps == 1e-12
    x, noise = torch.randn(3, 3, 64, 64), torch.rand(3, 16)
    with torch.no_grad():
        assert (ours(x, noise=noise).logits - theirs(x, noise=noise).logits).abs().max() <= 1e-5


def test_non_native_resolution_exact_table_vs_hf_interpolation():
    """At 160 px a 224-px model needs a 10×10 table. We compute it exactly; HF resamples the 14×14 table
    bicubically (interpolate_pos_encoding=True). Same weights and noise: the only difference is the table."""
    ours = build("tiny-224", True)
    theirs = to_vit_mae(ours).eval()
    x, noise = torch.randn(2, 3, 160, 160), torch.rand(2, 100)
    with torch.no_grad():
        a = ours(x, noise=noise)
        b = theirs(x, noise=noise, interpolate_pos_encoding=True)
        resampled = theirs.vit.embeddings.interpolate_pos_encoding(torch.zeros(1, 101, 192), 160, 160)
    # bicubic resampling of a sin-cos table aliases its high-frequency channels: measured here, max 1.97
    # and mean 0.13 per entry away from the exact 10x10 table, so logits differ by up to ~1.6 (see README)
    table_gap = (resampled - sincos_pos_embed_2d(192, 10, 10)).abs()
    assert table_gap.max() > 1.0 and table_gap.mean() > 0.05
    assert (a.logits - b.logits).abs().mean() > 1e-2

    # an HF model built for 160 px carries the exact 10x10 table: then the outputs agree again
    ours.config.image_size = 160
    exact = to_vit_mae(ours).eval()
    with torch.no_grad():
        c = exact(x, noise=noise)
    assert (a.logits - c.logits).abs().max() <= 1e-5
