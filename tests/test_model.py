"""Masking and loss properties of the MAE, checked on the real model."""

from __future__ import annotations

import pytest
import torch

from mae_trainer import MAEConfig, MAEForPreTraining, MAEModel
from mae_trainer.modeling import sincos_pos_embed_2d

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    image_size=64,
    patch_size=16,
)


@pytest.fixture(scope="module")
def model() -> MAEForPreTraining:
    torch.manual_seed(0)
    return MAEForPreTraining(MAEConfig(**SMALL)).eval()


def test_presets_match_the_reference_shapes():
    base = MAEConfig.from_preset("base")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (768, 12, 12)
    assert (base.decoder_hidden_size, base.decoder_num_hidden_layers, base.decoder_num_attention_heads) == (
        512,
        8,
        16,
    )
    assert (base.patch_size, base.mask_ratio, base.norm_pix_loss, base.layer_norm_eps) == (
        16,
        0.75,
        True,
        1e-6,
    )
    params = sum(p.numel() for p in MAEModel(base).parameters())
    assert 85e6 < params < 87e6  # ViT-B/16 encoder: 85.8M without the fixed position table
    with pytest.raises(ValueError, match="unknown model preset 'giant'"):
        MAEConfig.from_preset("giant")


@pytest.mark.parametrize("mask_ratio", [0.5, 0.75, 0.9])
def test_mask_ratio_is_honoured(model, mask_ratio):
    out = model(torch.randn(3, 3, 64, 64), mask_ratio=mask_ratio)
    num_patches = 16
    hidden = num_patches - int(num_patches * (1 - mask_ratio))
    assert out.mask.shape == (3, num_patches)
    assert out.mask.sum(dim=1).tolist() == [hidden] * 3
    assert out.logits.shape == (3, num_patches, 16 * 16 * 3)
    # ids_restore is a permutation per sample
    assert torch.equal(out.ids_restore.sort(dim=1).values, torch.arange(num_patches).expand(3, -1))


def test_noise_makes_masking_deterministic_and_keeps_the_smallest(model):
    x = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, 16)
    a, b = model(x, noise=noise), model(x, noise=noise)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss) and torch.equal(a.mask, b.mask)
    kept = noise.argsort(dim=1)[:, :4]  # 25 % of 16 patches are visible at mask ratio 0.75
    assert (a.mask.gather(1, kept) == 0).all()
    c = model(x, noise=torch.rand(2, 16))
    assert not torch.equal(a.mask, c.mask)


def test_loss_is_only_on_masked_patches(model):
    x = torch.randn(2, 3, 64, 64)
    out = model(x, noise=torch.rand(2, 16))
    logits = out.logits.detach().requires_grad_(True)
    loss = model.reconstruction_loss(x, logits, out.mask)
    assert torch.allclose(loss, out.loss)
    loss.backward()
    per_patch_grad = logits.grad.abs().sum(dim=-1)
    assert (per_patch_grad[out.mask == 0] == 0).all()
    assert (per_patch_grad[out.mask == 1] > 0).all()
    # by hand: mean over masked patches of the per-patch MSE against normalised target patches
    target = model.patchify(x)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    manual = ((out.logits - target) ** 2).mean(-1)[out.mask.bool()].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_pixel_loss_without_normalisation():
    torch.manual_seed(0)
    raw = MAEForPreTraining(MAEConfig(**SMALL, norm_pix_loss=False)).eval()
    x = torch.randn(1, 3, 64, 64)
    out = raw(x, noise=torch.rand(1, 16))
    manual = ((out.logits - raw.patchify(x)) ** 2).mean(-1)[out.mask.bool()].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_patchify_roundtrip_and_other_resolutions(model):
    x = torch.randn(2, 3, 48, 80)
    assert torch.equal(model.unpatchify(model.patchify(x), (3, 5)), x)
    out = model(x)
    assert out.logits.shape == (2, 15, 768) and out.mask.sum(1).tolist() == [12, 12]
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        model(torch.randn(1, 3, 64, 72))


def test_sincos_table_is_exact_for_each_grid():
    table = sincos_pos_embed_2d(8, 2, 3)
    assert table.shape == (1, 7, 8) and torch.equal(table[0, 0], torch.zeros(8))
    # patch (row 1, col 2): first half encodes the column, second half the row; omega = [1, 1/100]
    row, col = 1.0, 2.0
    expected = torch.tensor(
        [
            torch.sin(torch.tensor(col)),
            torch.sin(torch.tensor(col / 100)),
            torch.cos(torch.tensor(col)),
            torch.cos(torch.tensor(col / 100)),
            torch.sin(torch.tensor(row)),
            torch.sin(torch.tensor(row / 100)),
            torch.cos(torch.tensor(row)),
            torch.cos(torch.tensor(row / 100)),
        ]
    )
    assert torch.allclose(table[0, 1 + 1 * 3 + 2], expected, atol=1e-7)


def test_reference_initialisation():
    torch.manual_seed(0)
    m = MAEForPreTraining(MAEConfig.from_preset("small"))
    qkv = m.mae.blocks[0].attn.qkv
    bound = (6 / (qkv.in_features + qkv.out_features)) ** 0.5  # xavier uniform
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    proj = m.mae.patch_embed.proj.weight
    bound = (6 / (proj[0].numel() + proj.shape[0])) ** 0.5  # xavier on the flattened (out, in*k*k) view
    assert proj.abs().max() <= bound and proj.abs().max() > 0.9 * bound
    assert abs(m.mae.cls_token.std().item() - 0.02) < 0.005
    assert abs(m.decoder.mask_token.std().item() - 0.02) < 0.01
    assert torch.equal(m.mae.norm.weight, torch.ones_like(m.mae.norm.weight))


def test_encoder_without_mask_sees_every_patch_in_order(model):
    x = torch.randn(2, 3, 64, 64)
    out = model.mae(x)
    assert out.last_hidden_state.shape == (2, 17, 64) and out.mask.sum() == 0


def test_generator_makes_masking_reproducible(model):
    x = torch.randn(2, 3, 64, 64)
    a = model(x, generator=torch.Generator().manual_seed(7))
    b = model(x, generator=torch.Generator().manual_seed(7))
    c = model(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.logits, b.logits)
    assert not torch.equal(a.mask, c.mask)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = MAEForPreTraining(MAEConfig(**SMALL)).train()
    torch.manual_seed(0)
    ckpt = MAEForPreTraining(MAEConfig(**SMALL)).train()
    ckpt.activation_checkpointing_enable()
    assert ckpt.mae.gradient_checkpointing and ckpt.decoder.gradient_checkpointing
    x, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 16)
    for m in (plain, ckpt):
        m(x, noise=noise).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
