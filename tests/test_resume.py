"""Checkpoint and resume with real processes killed with SIGKILL."""

from __future__ import annotations

import json

import pytest

from mae_trainer.training.schedules import warmup_cosine_lr

from .conftest import (
    kill_after_publish,
    pretrain_cmd,
    run_main,
    run_to_end,
    small_embedded_beton,
    tiny_flags,
    weight_gap,
)

pytestmark = pytest.mark.slow

FLAGS = tiny_flags(epochs=3, save_every=4, keep_last=2, blr="1e-3", seed=3)


def command(data, out, *extra, launcher=None, flags=FLAGS):
    """``pretrain`` on ``data`` into ``out`` (``launcher``: see :func:`conftest.pretrain_cmd`)."""
    return pretrain_cmd(launcher, "--data", str(data), "--output-dir", str(out), *flags, *extra)


def kill_after_checkpoint(data, out, *extra, name="step_00000008", launcher=None, flags=FLAGS):
    """Start a run that stops for good right after publishing checkpoint ``name`` (tests/pause_hook), wait
    until it has, and SIGKILL the launcher and every worker there: no step after ``name`` ever runs."""
    cmd = command(data, out, *extra, launcher=launcher, flags=flags)
    kill_after_publish(cmd, out / "checkpoints" / name, out.with_name(out.name + ".log"))


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory):
    return small_embedded_beton(
        tmp_path_factory.mktemp("resume"), limit=160, max_resolution=64
    )  # 10 steps/epoch


@pytest.fixture(scope="module")
def odd_beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("odd"), limit=144, max_resolution=64)  # 144 images


def assert_same_weights(a, b):
    gap = weight_gap(a, b)
    assert gap == 0.0, f"max weight difference after resume: {gap:.3g}"


@pytest.mark.parametrize(
    "data, launcher, save_every, kill_at, position",
    [
        # 144 images, 16 × accumulation 2: an epoch is 4 steps (128 images); killed mid-epoch 1 at step 6
        ("odd_beton", None, "6", "step_00000006", {"epoch": 1, "samples": 64}),
        # 2 ranks × 16 × accumulation 2 = 64 per step: 2 steps per epoch; killed mid-epoch 1 at step 3
        ("small_beton", "cpu_2proc.yaml", "3", "step_00000003", {"epoch": 1, "samples": 64}),
    ],
    ids=["fp32-1-process", "bf16-2-ranks"],
)
def test_killed_mid_epoch_then_resumed_is_exact(
    data, launcher, save_every, kill_at, position, request, tmp_path
):
    """SIGKILL right after a mid-epoch checkpoint, then ``--resume auto`` on the same layout (accelerate's
    ``load_state``), with gradient accumulation: the final weights equal the uninterrupted run's bit for
    bit (fp32 in one process, and BF16 ZeRO-1 on 2 ranks: measured 0), the metrics continue, and the
    checkpoints kept are ``--keep-last``'s."""
    data = request.getfixturevalue(data)
    accumulate = ("--grad-accum", "2", "--save-every", save_every)
    reference = tmp_path / "reference"
    run_to_end(command(data, reference, *accumulate, launcher=launcher))
    interrupted = tmp_path / "interrupted"
    kill_after_checkpoint(data, interrupted, *accumulate, launcher=launcher, name=kill_at)
    assert not (interrupted / "model.safetensors").exists()
    saved = json.loads((interrupted / "checkpoints" / kill_at / "trainer_state.json").read_text())
    assert saved["sampler"] == position  # layout-free: the images of the epoch consumed
    log = run_to_end(command(data, interrupted, *accumulate, "--resume", "auto", launcher=launcher))
    assert f"resumed from {interrupted / 'checkpoints' / kill_at}" in log
    assert_same_weights(interrupted, reference)
    # the metrics of the resumed run continue the interrupted one and agree with the reference: every step
    # trained after the resume logs the reference's loss
    ref = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    got = {r["step"]: r for r in map(json.loads, (interrupted / "metrics.jsonl").read_text().splitlines())}
    assert sorted(got) == [r["step"] for r in ref]  # each step once
    resumed = [r for r in ref if r["step"] > saved["step"]]
    assert len(resumed) >= 3 and [got[r["step"]]["loss"] for r in resumed] == [r["loss"] for r in resumed]
    checkpoints = list((interrupted / "checkpoints").iterdir())
    assert len([p for p in checkpoints if p.name.startswith("step_")]) == 2  # --keep-last 2
    assert not [p for p in checkpoints if p.suffix == ".tmp"]


def test_every_math_changing_setting_is_refused_by_name(small_beton, tmp_path):
    """The checkpoint's contract against a rerun that changes each setting the remaining steps depend on:
    one line listing each as ``name: saved → now``; nothing written. In-process (the comparison happens
    before any work), on the checkpoint of a real killed run."""
    out = tmp_path / "run"
    kill_after_checkpoint(small_beton, out, name="step_00000004")
    other = small_embedded_beton(tmp_path, limit=48, max_resolution=64)
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.name != ".lock")  # the killed run's lock

    def rerun(*changes):
        flags = [*FLAGS]
        for flag, value in zip(changes[::2], changes[1::2]):
            if flag in flags and value is not None:
                flags[flags.index(flag) + 1] = value
            elif flag in flags:
                flags.remove(flag)
        extra = [x for f, v in zip(changes[::2], changes[1::2]) if f not in FLAGS for x in (f, v) if x]
        return run_main("pretrain", "--data", str(small_beton), "--output-dir", str(out),
                        *flags, *extra, "--resume", "auto")  # fmt: skip

    changes = {
        "--blr": ("--blr", "3e-3"), "--seed": ("--seed", "4"), "--warmup-epochs": ("--warmup-epochs", "2"),
        "--min-lr": ("--min-lr", "1e-6"), "--weight-decay": ("--weight-decay", "0.1"),
        "--mask-ratio": ("--mask-ratio", "0.6"), "--interpolation": ("--interpolation", "area"),
        "--crop-decode": ("--no-crop-decode", ""), "--no-norm-pix-loss": ("--no-norm-pix-loss", ""),
        "--progressive": ("--progressive", "steps"),
        "--resolution-steps": ("--resolution-steps", "0:32,2:64"),
        "--mask-schedule": ("--mask-schedule", "constant-visible"), "--epochs": ("--epochs", "4"),
        "--max-steps": ("--max-steps", "40"), "global batch": ("--global-batch-size", "32"),
        "--lr": ("--lr", "1e-3"), "--model": ("--model", "small"), "--resolution": ("--resolution", "48"),
        "--scale-batch-with-resolution": ("--scale-batch-with-resolution", ""),
    }  # fmt: skip
    result = rerun(*[x for pair in changes.values() for x in pair])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "--resume" in line]
    assert len(lines) == 1, result.stderr
    for name in changes:
        assert f"{name}:" in lines[0], (name, lines[0])
    assert "--blr: 0.001 → 0.003" in lines[0] and "global batch: 16 → 32" in lines[0]
    assert "model mask_ratio: 0.75 → 0.6" in lines[0]
    # the data file is compared by identity (samples, size, digest), not by path
    result = run_main("pretrain", "--data", str(other), "--output-dir", str(out), *FLAGS,
                      "--resume", "auto")  # fmt: skip
    assert result.returncode == 2 and "--data: 160 samples" in result.stderr
    assert "→ 48 samples" in result.stderr
    # the length changes only with --replan, and never to before the checkpoint
    result = rerun("--max-steps", "3", "--replan", "")
    assert result.returncode == 2 and "at step 4" in result.stderr
    assert "nothing would be trained" in result.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written (stale lock gone)
    result = run_main("pretrain", "--data", str(small_beton), "--output-dir", str(out), *FLAGS,
                      "--resume", str(tmp_path / "nowhere"))  # fmt: skip
    assert result.returncode == 2 and "not a complete checkpoint" in result.stderr


def test_replan_stretches_the_rest_of_the_cosine(small_beton, tmp_path):
    """--replan with a longer --epochs: the lr continues from where the run stood and decays to --min-lr at
    the new end; the step counter and the data position continue."""
    out = tmp_path / "run"
    kill_after_checkpoint(small_beton, out, name="step_00000016")  # epoch 1 of 3, past the warmup (10)
    log = run_to_end(command(small_beton, out, "--resume", "auto", "--replan", "--epochs", "4"))
    assert "resumed from" in log
    after = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    # the lr logged at step s is the one its update used, the schedule's value at s - 1; the old plan ran
    # 30 steps (3 epochs × 10) with a warmup of 10 at a peak of blr × 16 / 256
    peak = 1e-3 * 16 / 256
    assert after[17] == pytest.approx(warmup_cosine_lr(16, 30, 10, peak))  # continuous at the resume
    assert after[18] > warmup_cosine_lr(17, 30, 10, peak)  # the rest of the cosine spread over more steps
    # 4 epochs × 10 steps, down to --min-lr 0
    assert max(after) == 40 and after[40] < 0.01 * after[17]
    assert all(after[s] > after[s + 1] for s in range(17, 40))
