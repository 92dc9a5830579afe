"""Nothing can corrupt a run (training/lifecycle.py), with real processes: a second run into a live run's
folder is refused, ranks die with a SIGKILLed launcher, and SIGTERM/SIGUSR1 stop a run with a checkpoint
from which ``--resume auto`` continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from .conftest import (
    digest,
    kill_tree,
    metrics_steps,
    output_tail,
    pretrain_cmd,
    run_cli,
    small_embedded_beton,
    start_logged,
    tiny_flags,
    wait_for,
)

pytestmark = pytest.mark.slow

# 384 images: 48 steps per epoch on one process, 24 on two ranks; no periodic checkpoint, so the only
# checkpoints are the epoch ends (far away) and the one a signal asks for.
FLAGS = tiny_flags(epochs=50, batch_size=8, save_every=0, blr="1e-3", seed=7, report_to="none")


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("lifecycle"), limit=384, max_resolution=48)


def pretrain(beton, out, *extra, launcher=None, env=None):
    cmd = pretrain_cmd(launcher, "--data", str(beton), "--output-dir", str(out), *FLAGS, *extra)
    return start_logged(cmd, out.with_name(out.name + ".log"), env)


def wait_exit(proc, timeout=300) -> float:
    """Seconds until ``proc`` exits (the tree is killed and the test fails after ``timeout``)."""
    start = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail(f"still running {timeout} s after the signal{output_tail(proc.log)}")
    return time.monotonic() - start


def checkpoints(out) -> list[str]:
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def assert_stopped_with_checkpoint(out, log: str, signame: str) -> int:
    """The run's one stop line names the last logged step and a complete checkpoint of it; no .tmp left.
    Returns the step."""
    lines = [x for x in log.splitlines() if x.startswith("mae-trainer: stopped by")]
    assert len(lines) == 1, log[-3000:]  # rank 0 reports it, once
    step = metrics_steps(out)[-1]
    path = out / "checkpoints" / f"step_{step:08d}"
    assert lines[0] == f"mae-trainer: stopped by {signame} at step {step}: checkpoint {path} written; " + (
        "rerun with --resume auto"
    )
    assert json.loads((path / "trainer_state.json").read_text())["step"] == step
    assert checkpoints(out) == [path.name]  # before the epoch end: the only checkpoint, and no .tmp
    return step


def test_live_run_holds_the_folder_then_sigusr1_checkpoints_and_exits_138(beton, tmp_path):
    out = tmp_path / "run"
    first = pretrain(beton, out)
    try:
        wait_for(lambda: len(metrics_steps(out)) >= 1, first, "the first logged step", log=first.log)
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid  # a plain run: rank 0 is the process itself

        # frozen, so that its folder holds still while the second run is refused
        os.kill(first.pid, signal.SIGSTOP)
        before = digest(out)
        second = run_cli("pretrain", "--data", str(beton), "--output-dir", str(out), *FLAGS, timeout=120)
        assert digest(out) == before  # nothing written, nothing removed
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr  # one line
        assert second.stderr.startswith(f"mae-trainer: error: --output-dir {out}: another run is writing"), (
            second.stderr
        )
        assert f"PID {first.pid} on {holder['host']} since {holder['started']}" in second.stderr

        # the first run carries on, then SIGUSR1 stops it with a checkpoint at the next step
        logged = metrics_steps(out)[-1]
        wait_for(lambda: metrics_steps(out)[-1] > logged, first, "a step after SIGCONT", log=first.log)
        os.kill(first.pid, signal.SIGUSR1)
        seconds = wait_exit(first)
    finally:
        kill_tree(first.pid)
    log = first.log.read_text()
    assert first.returncode == 128 + signal.SIGUSR1 == 138, log[-3000:]
    step = assert_stopped_with_checkpoint(out, log, "SIGUSR1")
    assert not (out / ".lock").exists()  # released at the end
    print(f"SIGUSR1 to exit (plain process, stopped at step {step}): {seconds:.1f} s")


def test_ranks_die_with_a_killed_launcher_and_the_stale_lock_is_taken_over(beton, tmp_path):
    out = tmp_path / "run"
    proc = pretrain(beton, out, "--save-every", "2", launcher="cpu_1proc.yaml")
    try:
        wait_for(lambda: bool(checkpoints(out)), proc, "the first checkpoint", log=proc.log)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only, not its tree
        start = time.monotonic()
        _, alive = psutil.wait_procs(children, timeout=30)
        seconds = time.monotonic() - start
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        kill_tree(proc.pid)
        for child in children:
            kill_tree(child.pid)
        proc.wait()
    saved = checkpoints(out)
    time.sleep(3)
    assert checkpoints(out) == saved  # nobody is training any more
    print(f"children gone {seconds:.1f} s after the launcher's SIGKILL")

    # the killed rank 0 left its lock file: the next process takes it over (and releases it)
    from mae_trainer.training.lifecycle import lock_output_dir, release_output_locks

    dead = json.loads((out / ".lock").read_text())["pid"]
    assert dead in [c.pid for c in children]
    lock_output_dir(out)
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    release_output_locks()
    assert not (out / ".lock").exists()


def test_sigterm_to_the_launcher_checkpoints_two_ranks_then_resume_continues(beton, tmp_path):
    out = tmp_path / "run"
    proc = pretrain(beton, out, launcher="cpu_2proc.yaml")
    try:
        wait_for(lambda: any(s > 2 for s in metrics_steps(out)), proc, "step 3 in metrics", log=proc.log)
        assert not checkpoints(out)
        os.kill(proc.pid, signal.SIGTERM)  # the launcher: torchrun's agent forwards it to both ranks
        seconds = wait_exit(proc)
    finally:
        kill_tree(proc.pid)
    log = proc.log.rename(tmp_path / "stopped.log").read_text()  # the resumed run's log takes the name
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]  # accelerate exits 128 + the signal
    step = assert_stopped_with_checkpoint(out, log, "SIGTERM")
    assert step < 24  # before the first epoch end
    print(f"SIGTERM to exit (2 ranks, stopped at step {step}): {seconds:.1f} s")

    resumed = pretrain(
        beton, out, "--resume", "auto", "--replan", "--max-steps", str(step + 2), launcher="cpu_2proc.yaml"
    )
    wait_exit(resumed, timeout=600)
    log = resumed.log.read_text()
    assert resumed.returncode == 0, log[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{step:08d}'} at step {step}" in log
    assert metrics_steps(out)[-2:] == [step + 1, step + 2]
    assert (out / "model.safetensors").exists()
