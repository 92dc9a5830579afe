"""Elastic resume (a preempted run continues on another number of ranks): real `accelerate launch` runs
under DeepSpeed ZeRO-1 on 1 and 2 CPU ranks, killed right after a checkpoint and resumed on another layout
of the same global batch, one of them a plain run without a launcher (in the test's process:
``conftest.run_to_end``). The optimizer state crosses layouts through DeepSpeed's universal checkpoint
(training/elastic.py); the sample order, crops and masks are layout-free (tests/test_sampler.py proves the
per-step sample ids), so the final weights are compared with the uninterrupted run's."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import FP32_ZERO1, run_to_end, small_embedded_beton, tiny_flags, weight_gap
from .test_resume import command, kill_after_checkpoint

pytestmark = pytest.mark.slow

# 160 images, global batch 32 (2 ranks × 16, or 1 rank × 16 × accumulation 2): 5 steps per epoch, 10 in all;
# killed right after the step-3 checkpoint, in the middle of epoch 0
FLAGS = tiny_flags(save_every=3, keep_last=2, blr="1e-3", seed=3)
KILL_AT = "step_00000003"


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("elastic"), limit=160, max_resolution=64)


def interrupted(beton, out, launcher, *extra):
    kill_after_checkpoint(beton, out, *extra, name=KILL_AT, launcher=launcher, flags=FLAGS)
    assert not (out / "model.safetensors").exists()
    saved = json.loads((out / "checkpoints" / KILL_AT / "trainer_state.json").read_text())
    assert saved["sampler"] == {"epoch": 0, "samples": 3 * 32}  # layout-free position
    return out


def resume(beton, source, out, launcher, *extra):
    """Copy the interrupted run ``source`` to ``out`` and resume it there with ``launcher``."""
    shutil.copytree(source, out)
    log = run_to_end(command(beton, out, *extra, "--resume", "auto", launcher=launcher, flags=FLAGS))
    assert f"resumed from {out / 'checkpoints' / KILL_AT} at step 3" in log
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 10 and sorted(set(steps)) == list(range(1, 11))
    return log


def test_two_ranks_to_one_and_to_a_plain_process_fp32(beton, tmp_path):
    """fp32 ZeRO-1 on 2 ranks → ZeRO-1 on 1 rank (accumulation 2), and → one process without accelerate
    launch or DeepSpeed (torch's AdamW gets the fp32 master weights, both moments and the step count)."""
    two = ("cpu_2proc.yaml", *FP32_ZERO1)
    reference = tmp_path / "reference"
    run_to_end(command(beton, reference, launcher=two, flags=FLAGS))
    source = interrupted(beton, tmp_path / "interrupted", two)
    log = resume(beton, source, tmp_path / "one_rank", ("cpu_1proc.yaml", *FP32_ZERO1))
    assert "layout: 2 rank(s) × 16 images × 1 accumulation step(s) = 32 → 1 rank(s) × 16 images × 2" in log
    log = resume(beton, source, tmp_path / "plain", None)
    assert not list((tmp_path / "plain" / "checkpoints").glob(".universal-*"))  # the staging is gone
    to_one, to_plain = weight_gap(tmp_path / "one_rank", reference), weight_gap(tmp_path / "plain", reference)
    print(
        f"fp32 max |Δ| of the final weights: 2 → 1 ranks {to_one:.3g}, "
        f"2 ranks → 1 plain process {to_plain:.3g}"
    )
    assert to_one <= 1e-6 and to_plain <= 1e-6  # measured 0 and 0 on this machine


def test_one_rank_to_two_bf16(beton, tmp_path):
    """BF16 ZeRO-1: 1 rank (accumulation 2) → 2 ranks, against the uninterrupted 1-rank run (the 2-rank run
    trains on the same samples, crops and masks). The other direction, 2 ranks → 1, is the fp32 test's: the
    universal checkpoint holds the fp32 master weights and moments whatever the run's dtype."""
    reference = tmp_path / "reference"
    run_to_end(command(beton, reference, "--grad-accum", "2", launcher="cpu_1proc.yaml", flags=FLAGS))
    one = interrupted(beton, tmp_path / "one", "cpu_1proc.yaml", "--grad-accum", "2")
    resume(beton, one, tmp_path / "one_to_two", "cpu_2proc.yaml", "--grad-accum", "2")
    up = weight_gap(tmp_path / "one_to_two", reference)
    print(f"bf16 max |Δ| of the final weights: 1 → 2 ranks {up:.3g}")
    assert up <= 1e-3  # bf16 rounding bound; measured 0 on this machine
