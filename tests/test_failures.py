"""A run that must stop loses nothing already saved: a kill during a save, a checkpoint directory that
turns read-only, a loss that becomes NaN. Real `accelerate launch` processes under DeepSpeed ZeRO-1 BF16."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import (
    ROOT,
    digest,
    kill_tree,
    launch_cmd,
    pause_env,
    run_real,
    small_embedded_beton,
    tiny_flags,
    wait_for,
)

pytestmark = pytest.mark.slow

FLAGS = tiny_flags(epochs=4, save_every=2, keep_last=3, blr="1e-3", seed=5)


def command(data: Path, out: Path, *extra: str, config: str = "cpu_1proc.yaml") -> list[str]:
    return launch_cmd(config, "pretrain", "--data", str(data), "--output-dir", str(out), *FLAGS, *extra)


def run(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_real(command(data, out, *extra), timeout=600, check=False)


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("failures"), limit=96, max_resolution=48)


def read_only_bind(folder: Path) -> None:
    """Make ``folder`` read-only for root too (a bind mount remounted ``ro``), or skip where the
    container does not allow mounts."""
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bind.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


def test_kill_during_save_then_read_only_disk_then_nan_loss(small_beton, tmp_path):
    from mae_trainer.training.checkpoint import complete_checkpoints

    out = tmp_path / "run"
    ckpts = out / "checkpoints"

    # 1. SIGKILL while step 4's checkpoint is being written: the run stops for good just before it publishes
    #    step_00000004.tmp as step_00000004 (tests/pause_hook), and is killed there. Step 2's stays the
    #    resume point.
    marker = tmp_path / "paused"
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            command(small_beton, out),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                **pause_env(ckpts / "step_00000004", marker, "before"),
            },
        )
    try:
        wait_for(marker.exists, proc, "the save of step 4 to reach its rename", log=log)
        assert (ckpts / "step_00000004.tmp").is_dir()
    finally:
        kill_tree(proc.pid)  # the launcher and its worker, mid-save
        proc.wait(timeout=60)
    complete = [p.name for p in complete_checkpoints(ckpts)]
    assert complete == ["step_00000002"], complete
    last = ckpts / complete[-1]
    last_step = int(last.name[len("step_") :])
    saved = digest(last)

    # 2. The checkpoint directory is read-only when step 4 is saved: a clear error naming the step and
    #    the intact checkpoint, a non-zero exit, step 2 byte-for-byte unchanged.
    read_only_bind(ckpts)
    try:
        failed = run(small_beton, out, "--resume", "auto")
    finally:
        subprocess.run(["umount", str(ckpts)], check=True)
    assert failed.returncode != 0
    assert "resumed from" in failed.stdout and f"at step {last_step}" in failed.stdout, failed.stdout[-2000:]
    assert "mae-trainer: run stopped:" in failed.stderr, failed.stderr[-3000:]
    message = failed.stderr[failed.stderr.index("mae-trainer: run stopped:") :].splitlines()[0]
    assert f"checkpoint at step {last_step + 2} could not be written" in message, message
    assert "Read-only file system" in message or "cannot be opened" in message, message
    assert f"{last} is intact" in message and "--resume auto" in message
    assert [p.name for p in complete_checkpoints(ckpts)] == complete
    assert digest(last) == saved

    # 3. The intact checkpoint still resumes and the run completes.
    done = run(small_beton, out, "--resume", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").exists()

    # 4. A learning rate that blows the weights up (a run of its own: a resumed run cannot change its lr):
    #    step 1 trains at lr 0 (the warmup starts there) and is saved; the next update at 1e29 breaks the
    #    loss. The run stops at the first non-finite loss, names that step and the last good checkpoint,
    #    and writes no checkpoint or model after it.
    out = tmp_path / "exploding"
    exploded = run(small_beton, out, "--lr", "1e30", "--save-every", "1")
    assert exploded.returncode != 0
    message = exploded.stderr[exploded.stderr.index("mae-trainer: run stopped:") :].splitlines()[0]
    assert "loss is nan at step" in message or "loss is inf at step" in message, message
    step = int(message.split(" at step ")[1].split()[0])
    kept = complete_checkpoints(out / "checkpoints")
    assert kept and all(int(p.name[5:]) < step for p in kept)
    assert f"Last good checkpoint: {kept[-1]}" in message
    assert 2 <= step <= int(kept[-1].name[5:]) + 2, message
    assert not (out / "model.safetensors").exists()


def test_bad_global_batch_fails_before_any_work(small_beton, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        command(small_beton, out, "--global-batch-size", "20", "--grad-accum", "3", config="cpu_2proc.yaml"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "--global-batch-size 20: not divisible by 2 rank(s) × --grad-accum 3 = 6" in result.stderr
    assert result.stderr.count("mae-trainer: error:") == 1  # rank 0 reports it; rank 1 stays silent
    assert not out.exists()
