"""Real `accelerate launch` runs: 2 CPU ranks under DeepSpeed ZeRO-1 with BF16."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import launch_cmd, run_main, run_real

pytestmark = pytest.mark.slow


def launch(config: str, *args: str, timeout: int = 900, umbrella=False) -> subprocess.CompletedProcess:
    cmd = launch_cmd(config, "pretrain", *args, umbrella=umbrella)
    return run_real(cmd, timeout=timeout, check=False, threads=None)


def test_two_rank_zero1_bf16_pretraining_learns_and_saves(demo_beton, tmp_path):
    out = tmp_path / "run"
    flags = (
        "--model tiny --resolution 64 --epochs 2 --warmup-epochs 0.25 --batch-size 16 --blr 5e-3 "
        "--num-workers 1 --log-every 1 --recon-images 4 --progressive steps --resolution-steps 0:48,1:64 "
        "--mask-schedule constant-visible --recon-every 10"
    ).split()
    result = launch(
        "cpu_2proc.yaml",
        "--data",
        str(demo_beton),
        "--recon-data",
        str(demo_beton),
        "--output-dir",
        str(out),
        "--global-batch-size",
        "32",  # → 16 per rank
        *flags,
        umbrella=True,  # the README's `accelerate launch`; the other tests use `accelerate-launch`
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "on 2 process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in result.stdout

    # ZeRO stage 1: the optimizer state is sharded, one file per rank (epoch 0's checkpoint); the final
    # save's staging checkpoint is gone once consolidated
    shards = sorted(
        p.name for p in (out / "checkpoints" / "step_00000016" / "pytorch_model").glob("*optim_states.pt")
    )
    assert len(shards) == 2 and all("zero_pp_rank" in s for s in shards), shards
    assert not (out / "checkpoints" / "final").exists()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 33))  # 512 images / (2 ranks × 16) × 2 epochs
    first, last = records[:4], records[-4:]
    first_loss, last_loss = (sum(r["loss"] for r in rs) / len(rs) for rs in (first, last))
    assert last_loss < first_loss - 0.05, (first_loss, last_loss)
    assert records[-1]["lr"] < records[8]["lr"]  # cosine decay after warmup
    # the sampler's stage reaches the step: 48 px keeps the 4 visible tokens of 64 px at mask 0.75
    assert {(r["resolution"], r["mask_ratio"]) for r in records[:16]} == {(48, 0.5556)}
    assert {(r["resolution"], r["mask_ratio"]) for r in records[16:]} == {(64, 0.75)}
    assert all(0 <= r["data_wait_fraction"] < 1 for r in records)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)  # DeepSpeed's norm
    assert {r["batch_size"] for r in records} == {16}

    # grids of the same held-out images every 10 steps (PNG + TensorBoard), and the final one
    assert sorted(p.name for p in (out / "reconstructions").glob("*.png")) == [
        f"step_{s:08d}.png" for s in (10, 20, 30)
    ]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Images("reconstruction")] == [10, 20, 30, 32]
    assert {"train/grad_norm", "train/resolution", "train/mask_ratio"} <= set(events.Tags()["scalars"])

    # the resolved config is a recipe that reproduces these settings
    from mae_trainer.cli import parse_config

    again = parse_config(["pretrain", "--recipe", str(out / "resolved_config.yaml")])
    assert (again.batch_size, again.global_batch_size, again.resolution_steps, again.recon_every) == (
        16,
        32,
        "0:48,1:64",
        10,
    )
    assert again.data == demo_beton and again.model == "tiny" and again.mask_schedule == "constant-visible"

    assert (out / "reconstruction.png").stat().st_size > 1000
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))

    # the saved model loads in a fresh process through the Auto classes and reproduces its loss
    code = f"""
import torch, mae_trainer
from transformers import AutoModel, AutoModelForPreTraining
model = AutoModelForPreTraining.from_pretrained({str(out)!r}).eval()
encoder = AutoModel.from_pretrained({str(out)!r})
assert type(model).__name__ == "MAEForPreTraining" and type(encoder).__name__ == "MAEModel"
assert next(model.parameters()).dtype == torch.float32
torch.manual_seed(0)
fresh = mae_trainer.MAEForPreTraining(model.config)
changed = (model.mae.blocks[0].attn.qkv.weight - fresh.mae.blocks[0].attn.qkv.weight).abs().max().item()
x = torch.randn(2, 3, 64, 64)
print(changed, model(x, noise=torch.rand(2, 16)).loss.item())
"""
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    changed, loss = map(float, check.stdout.split())
    assert changed > 1e-3 and math.isfinite(loss)  # trained weights, finite loss


def test_single_rank_config_recipe_file_and_max_steps(demo_beton, tmp_path):
    out = tmp_path / "one"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"data: {demo_beton}\nmodel: tiny\nresolution: 64\nepochs: 1\nwarmup-epochs: 0\nbatch_size: 8\n"
        "max_steps: 3\nnum_workers: 1\nlog_every: 1\nrecon_images: 0\nprogressive: constant\n"
        "mask_ratio: 0.6\n"
    )
    # the flag on the command line overrides the recipe's mask ratio
    result = launch(
        "cpu_1proc.yaml", "--recipe", str(recipe), "--mask-ratio", "0.5", "--output-dir", str(out)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "on 1 process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {(r["resolution"], r["mask_ratio"], r["batch_size"]) for r in records} == {(64, 0.5, 8)}
    # model FLOPs of the stage (tiny, 64 px, mask 0.5) and the rate they give with images/s; no MFU on CPU
    from mae_trainer import MAEConfig
    from mae_trainer.modeling.flops import mae_training_flops_per_image

    gflops = mae_training_flops_per_image(MAEConfig.from_preset("tiny"), 64, 0.5) / 1e9
    for r in records:
        assert r["gflops_per_image"] == pytest.approx(gflops) and r["tflops_per_rank"] > 0
        assert r["tflops_per_rank"] == pytest.approx(r["gflops_per_image"] * r["images_per_s"] / 1000)
        assert "mfu" not in r
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"train/gflops_per_image", "train/tflops_per_rank"} <= set(events.Tags()["scalars"])
    assert (out / "model.safetensors").exists() and not (out / "reconstruction.png").exists()
    # a second run into the same directory is refused rather than overwriting the model, and a recipe with
    # a typo is refused by name (in-process: both refusals come before any process group; test_failures
    # shows a refusal under the launcher)
    again = run_main("pretrain", "--recipe", str(recipe), "--output-dir", str(out))
    assert (
        again.returncode != 0 and "--output-dir" in again.stderr and "already holds a model" in again.stderr
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolutoin: 64\n")
    typo = run_main("pretrain", "--recipe", str(bad), "--output-dir", str(out))
    assert typo.returncode == 2 and "unknown key(s) resolutoin" in typo.stderr
