"""Checkpoint and resume with real processes killed with SIGKILL."""

from __future__ import annotations

import json
import subprocess

import pytest
from safetensors.torch import load_file

from .conftest import (
    BIN,
    kill_tree,
    launch_cmd,
    output_tail,
    pause_env,
    run_cli,
    small_embedded_beton,
    start_logged,
    wait_for,
)

pytestmark = pytest.mark.slow

FLAGS = (
    "--model tiny --resolution 32 --epochs 3 --warmup-epochs 1 --batch-size 16 --num-workers 1 "
    "--log-every 1 --recon-images 0 --save-every 4 --keep-last 2 --blr 1e-3 --seed 3"
).split()


def start(data, out, *extra, launcher=None, env=None):
    """A pretraining run in the background, its output (stdout and stderr) going to ``out``'s sibling
    ``<name>.log`` (a pipe that nobody reads while the run trains would fill up and stall it)."""
    cmd = [str(BIN / "mae-trainer"), "pretrain"] if launcher is None else launch_cmd(launcher, "pretrain")
    args = [*cmd, "--data", str(data), "--output-dir", str(out), *FLAGS, *extra]
    return start_logged(args, out.with_name(out.name + ".log"), env)


def kill_after_checkpoint(data, out, *extra, name="step_00000008", launcher=None):
    """Start a run that stops for good right after publishing checkpoint ``name`` (tests/pause_hook), wait
    until it has, and SIGKILL the launcher and every worker there: no step after ``name`` ever runs."""
    marker = out.with_name(out.name + ".paused")
    paused = pause_env(out / "checkpoints" / name, marker, when="after")
    proc = start(data, out, *extra, launcher=launcher, env=paused)
    try:
        wait_for(marker.exists, proc, f"checkpoint {name} to be published", log=proc.log)
    finally:
        kill_tree(proc.pid)  # the launcher and every worker, mid-epoch
        proc.wait()


def finish(proc, timeout=900):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail(f"run still going after {timeout} s{output_tail(proc.log)}")
    out = proc.log.read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory):
    return small_embedded_beton(
        tmp_path_factory.mktemp("resume"), limit=160, max_resolution=64
    )  # 10 steps/epoch


def test_fp32_single_process_resume_is_bitwise(small_beton, tmp_path):
    reference = tmp_path / "reference"
    finish(start(small_beton, reference))
    interrupted = tmp_path / "interrupted"
    kill_after_checkpoint(small_beton, interrupted)
    assert not (interrupted / "model.safetensors").exists()
    log = finish(start(small_beton, interrupted, "--resume", "auto"))
    assert "resumed from" in log
    ours, theirs = load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours), [k for k in ours if not ours[k].equal(theirs[k])][:5]
    # the metrics of the resumed run continue the interrupted one and agree with the reference
    ref = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    got = {r["step"]: r for r in map(json.loads, (interrupted / "metrics.jsonl").read_text().splitlines())}
    assert [got[r["step"]]["loss"] for r in ref[-5:]] == [r["loss"] for r in ref[-5:]]
    kept = sorted(p.name for p in (interrupted / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert len(kept) == 2 and not [p for p in (interrupted / "checkpoints").iterdir() if p.suffix == ".tmp"]


def test_two_rank_bf16_resume(small_beton, tmp_path):
    reference = tmp_path / "reference"
    finish(start(small_beton, reference, launcher="cpu_2proc.yaml"))
    interrupted = tmp_path / "interrupted"
    kill_after_checkpoint(small_beton, interrupted, launcher="cpu_2proc.yaml", name="step_00000004")
    finish(start(small_beton, interrupted, "--resume", "auto", launcher="cpu_2proc.yaml"))
    ours, theirs = load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors")
    gap = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    print(f"max weight difference after a 2-rank BF16 resume: {gap:.3g}")
    assert gap == 0.0  # measured 0: the resumed 2-rank BF16 run replays the uninterrupted one exactly


@pytest.fixture(scope="module")
def odd_beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("odd"), limit=144, max_resolution=64)  # 9 batches


def assert_same_weights(a, b, exact=True):
    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ours.keys() == theirs.keys()
    gap = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert gap == 0.0, f"max weight difference after resume: {gap:.3g}"


@pytest.mark.parametrize(
    "data, launcher, kill_at",
    [
        # 9 batches per epoch, accumulation 2: epoch 0 ends mid-step, so its checkpoint is the one after
        # step 5 (micro-batch 10); killed right after it
        ("odd_beton", None, "step_00000005"),
        # 2 ranks x 5 batches per epoch (160 images, 16 per rank): epoch 0's checkpoint comes after step 3
        ("small_beton", "cpu_2proc.yaml", "step_00000003"),
    ],
    ids=["fp32-1-process", "bf16-2-ranks"],
)
def test_resume_with_gradient_accumulation_is_exact(data, launcher, kill_at, request, tmp_path):
    data = request.getfixturevalue(data)
    accumulate = ("--grad-accum", "2", "--save-every", "0")
    reference = tmp_path / "reference"
    finish(start(data, reference, *accumulate, launcher=launcher))
    interrupted = tmp_path / "interrupted"
    kill_after_checkpoint(data, interrupted, *accumulate, launcher=launcher, name=kill_at)
    saved = json.loads((interrupted / "checkpoints" / kill_at / "trainer_state.json").read_text())
    assert saved["sampler"]["epoch"] == 1 and saved["sampler"]["batch"] == 1  # a step boundary in epoch 1
    log = finish(start(data, interrupted, *accumulate, "--resume", "auto", launcher=launcher))
    assert f"resumed from {interrupted / 'checkpoints' / kill_at}" in log
    assert_same_weights(interrupted, reference)


def test_changed_model_config_is_refused(small_beton, tmp_path):
    out = tmp_path / "run"
    kill_after_checkpoint(small_beton, out, name="step_00000004")
    result = run_cli(
        "pretrain",
        "--data",
        str(small_beton),
        "--output-dir",
        str(out),
        *FLAGS,
        "--mask-ratio",
        "0.6",
        "--resume",
        "auto",
    )
    assert result.returncode == 2
    assert "model config differs" in result.stderr and "mask_ratio: 0.75 → 0.6" in result.stderr
    result = run_cli(
        "pretrain",
        "--data",
        str(small_beton),
        "--output-dir",
        str(out),
        *FLAGS,
        "--resume",
        str(tmp_path / "nowhere"),
    )
    assert result.returncode == 2 and "not a complete checkpoint" in result.stderr
