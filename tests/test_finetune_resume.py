"""Fine-tuning survives what pre-training survives, through the same pieces (run_state, lifecycle,
checkpoint): SIGTERM checkpoints at a step boundary and resumes bit-identically (one process with
accumulation, EMA on, the FFCV decode path), two DeepSpeed ranks killed after a mid-epoch checkpoint
resume bit-identically on one plain process (fp32, the PIL decode path: every random draw is keyed by
sample or micro-batch, so nothing depends on the layout; only the logged loss, a mean summed in another
order, moves in its last bits). Each decode path's position and random draws are resumed by one of the
two. A same-layout resume on 2 DeepSpeed ranks goes through the code pre-training's does
(``accelerator.resume``, accelerate's ``load_state``): tests/test_resume.py proves it there."""

from __future__ import annotations

import json
import os
import signal

import pytest

from .conftest import (
    FP32_ZERO1,
    command_cmd,
    kill_after_publish,
    metrics_steps,
    run_to_end,
    small_embedded_beton,
    start_logged,
    wait_for,
    weight_gap,
)

pytestmark = pytest.mark.slow

# 96 labelled images of 3 classes; 24 held out; 72 train at a global batch of 8: 9 steps per epoch
FLAGS = (
    "--val-fraction 0.25 --warmup-epochs 1 --batch-size 4 --num-workers 1 --log-every 1 --blr 1e-2 "
    "--seed 5 --report-to none --keep-last 2"
).split()


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("ft_resume"), limit=96, max_resolution=64)


def command(model, data, out, *extra, launcher=None):
    args = ("--model", str(model), "--train", str(data), "--output-dir", str(out), *FLAGS, *extra)
    return command_cmd("finetune", launcher, *args)


def records(out, key: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def assert_same_run(a, b, ema: bool, loss_tolerance: float = 0.0) -> None:
    """The two output folders hold the same run: best weights (and EMA), every held-out evaluation, every
    logged training loss (the mean over a step's micro-batches, summed in another order on another
    layout: ``loss_tolerance``), the same results."""
    assert weight_gap(a, b) == 0
    if ema:
        assert weight_gap(a / "ema", b / "ema") == 0
    assert records(a, "val/acc1") == records(b, "val/acc1")
    assert records(a, "val_ema/acc1") == records(b, "val_ema/acc1")
    losses = [
        (r["step"], pytest.approx(r["train/loss"], abs=loss_tolerance)) for r in records(a, "train/loss")
    ]
    assert losses == [(r["step"], r["train/loss"]) for r in records(b, "train/loss")]
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())


def test_sigterm_then_resume_is_bitwise(tiny_pretrained, beton, tmp_path):
    """One process, accumulation 2, EMA, FFCV loader: SIGTERM mid-run → exit 143 with a checkpoint at the
    step boundary; ``--resume auto`` finishes the same run as an uninterrupted one, bit for bit."""
    extra = ("--epochs", "4", "--grad-accum", "2", "--ema-decay", "0.9", "--loader", "ffcv")
    reference = tmp_path / "reference"
    run_to_end(command(tiny_pretrained, beton, reference, *extra))
    out = tmp_path / "stopped"
    proc = start_logged(command(tiny_pretrained, beton, out, *extra), tmp_path / "stopped.log")
    wait_for(lambda: len(metrics_steps(out)) >= 3, proc, "step 3 to be logged", log=proc.log)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    log = proc.log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped = [x for x in log.splitlines() if x.startswith("mae-trainer: stopped by SIGTERM")]
    assert len(stopped) == 1 and "rerun with --resume auto" in stopped[0], log[-3000:]
    log = run_to_end(command(tiny_pretrained, beton, out, *extra, "--resume", "auto"))
    assert "resumed from" in log
    assert_same_run(reference, out, ema=True)
    results = json.loads((out / "results.json").read_text())
    assert results["weights"] in ("raw", "ema") and {"raw", "ema"} <= results.keys()
    assert results["val_images"] == 24 and results["raw"]["val_images"] == 24


def test_two_ranks_killed_mid_epoch_resume_on_one_plain_process(tiny_pretrained, beton, tmp_path):
    """DeepSpeed ZeRO-1 (fp32) on 2 ranks, PIL loader, killed right after the step-4 checkpoint (mid-epoch 0),
    resumed in one plain process (accumulation 2, torch's AdamW from DeepSpeed's universal checkpoint): its
    weights and evaluations are the uninterrupted 2-rank run's bit for bit (measured: the logged loss differs
    by ≤ 1.2e-7, the order of a mean)."""
    two = ("cpu_2proc.yaml", *FP32_ZERO1)
    extra = ("--epochs", "2", "--save-every", "4", "--loader", "pil")
    reference = tmp_path / "reference"
    run_to_end(command(tiny_pretrained, beton, reference, *extra, launcher=two))
    out = tmp_path / "killed"
    cmd = command(tiny_pretrained, beton, out, *extra, launcher=two)
    kill_after_publish(cmd, out / "checkpoints" / "step_00000004", tmp_path / "killed.log")
    state = json.loads((out / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["sampler"] == {"epoch": 0, "samples": 32}
    log = run_to_end(command(tiny_pretrained, beton, out, *extra, "--resume", "auto"))
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'} at step 4" in log
    assert "→ 1 rank(s) × 4 images × 2 accumulation step(s) = 8 (global batch kept)" in log
    assert_same_run(reference, out, ema=False, loss_tolerance=1e-6)
    assert json.loads((reference / "results.json").read_text())["val_images"] == 24  # each image once
