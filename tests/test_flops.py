"""The FLOPs formula against torch's FlopCounterMode on the real models, and the MFU peak table. The models
and inputs live on the meta device: FlopCounterMode counts from shapes, so nothing is initialised or
computed (MAE-B at 224 px: 3 s a case on the CPU, milliseconds here)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.modeling.convert import vit_mae_config
from mae_trainer.modeling.flops import mae_forward_flops_per_image, mae_training_flops_per_image
from mae_trainer.modeling.modeling_mae import kept_patches
from mae_trainer.training.throughput import peak_bf16_tflops, window_throughput

CASES = [
    (preset, side, mask)
    for preset, sides in (("tiny", (64, 112)), ("base", (160, 224)))
    for side in sides
    for mask in (0.5, 0.75)
]
BATCH = 2


def counted(run) -> int:
    """Matmul FLOPs of ``run()`` as FlopCounterMode counts them. On the CPU, torch's fused attention kernel
    has no FLOP formula, so attention runs on the math backend, whose QKᵀ and AV are counted bmm's."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


META = torch.device("meta")


@pytest.fixture(scope="module")
def models():
    with META:
        return {preset: MAEForPreTraining(MAEConfig.from_preset(preset)) for preset in ("tiny", "base")}


@pytest.mark.parametrize("preset,side,mask", CASES)
def test_formula_counts_every_matmul_of_the_forward(models, preset, side, mask):
    model = models[preset]
    x = torch.randn(BATCH, 3, side, side, device=META)
    # exact: the formula names every matmul the model runs
    assert counted(lambda: model(x, mask_ratio=mask)) == BATCH * mae_forward_flops_per_image(
        model.config, side, mask
    )


@pytest.mark.parametrize("preset,side,mask", [("tiny", 112, 0.5), ("base", 160, 0.75)])
def test_training_step_is_about_three_forwards(models, preset, side, mask):
    """Backward counts 2 matmuls per forward one, less the pixels' gradient, which nobody needs: forward +
    backward measures 2.981-2.986 forwards for tiny, 2.996-2.997 for base (64-160 px, mask 0.5/0.75), so
    3× is an upper bound within 1 %."""
    model = models[preset]
    x = torch.randn(BATCH, 3, side, side, device=META)
    step = counted(lambda: model(x, mask_ratio=mask).loss.backward()) / BATCH
    training = mae_training_flops_per_image(model.config, side, mask)
    assert 0.99 * training < step <= training


@pytest.mark.parametrize("preset,side,mask", CASES)
def test_same_count_as_transformers_vit_mae(models, preset, side, mask):
    """transformers' ViTMAEForPreTraining at the same shape, counted the same way, does the same work
    plus two things we skip: it embeds the hidden patches too and predicts the class token. Ours ÷ theirs:
    0.955-0.981 for tiny (its embedding is a large share of its work), 0.991-0.996 for base."""
    from transformers import ViTMAEForPreTraining

    config = MAEConfig.from_preset(preset, image_size=side, mask_ratio=mask)
    with META:
        hf = ViTMAEForPreTraining(vit_mae_config(config))
    x = torch.randn(BATCH, 3, side, side, device=META)
    theirs = counted(lambda: hf(x))
    ours = counted(lambda: models[preset](x, mask_ratio=mask))
    patch, num_patches = 3 * 16 * 16, (side // 16) ** 2
    hidden = num_patches - kept_patches(num_patches, mask)
    skipped = 2 * hidden * patch * config.hidden_size + 2 * config.decoder_hidden_size * patch
    assert theirs - ours == BATCH * skipped
    assert (0.95 if preset == "tiny" else 0.99) < ours / theirs < 1.0


def test_peak_table_and_window_rates():
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_bf16_tflops("NVIDIA A100 80GB PCIe") == 312
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756
    assert peak_bf16_tflops("NVIDIA H200") == 989
    assert peak_bf16_tflops("NVIDIA L40S") == 362
    assert peak_bf16_tflops("NVIDIA L4") == 121
    assert peak_bf16_tflops("NVIDIA L40") is None  # unknown card: no MFU
    assert peak_bf16_tflops("Tesla V100-SXM2-32GB") is None

    # 100 images of 30 GFLOPs each on 2 ranks in 2 s: 0.75 TFLOP/s per rank; no MFU off CUDA
    rates = window_throughput(100 * 30e9, 100, 2.0, 2, torch.device("cpu"))
    assert rates == pytest.approx({"gflops_per_image": 30.0, "tflops_per_rank": 0.75})
