"""A checkpoint is complete only when every file it needs is there, readable and of the size it was written
with; a damaged one is skipped (with a warning) by ``--resume auto``, refused by ``--resume PATH`` and by
``--strict-resume``, and left in place. A full disk at the final save is one line, the checkpoints intact.
After a resume, metrics.jsonl and TensorBoard hold each step once. Real 1-rank DeepSpeed ZeRO-1 BF16 runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (
    digest,
    kill_after_publish,
    kill_tree,
    output_tail,
    pause_env,
    pretrain_cmd,
    run_main,
    run_to_end,
    small_embedded_beton,
    start_logged,
    tiny_flags,
    wait_for,
)

pytestmark = pytest.mark.slow

# 96 images: 6 steps per epoch, 12 in all; checkpoints every 2 steps
FLAGS = tiny_flags(save_every=2, keep_last=3, blr="1e-3", seed=5)


def pretrain(data: Path, out: Path, *extra: str, launcher: str | None = "cpu_1proc.yaml") -> list[str]:
    return pretrain_cmd(launcher, "--data", str(data), "--output-dir", str(out), *FLAGS, *extra)


def finish(proc: subprocess.Popen, timeout: float = 900) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail(f"run still going after {timeout} s{output_tail(proc.log)}")


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("integrity"), limit=96, max_resolution=48)


@pytest.fixture(scope="module")
def killed_run(small_beton, tmp_path_factory) -> Path:
    """One real run killed right after publishing step 4: checkpoints step 2 and 4, metrics up to step 4."""
    out = tmp_path_factory.mktemp("killed") / "run"
    started = time.monotonic()
    kill_after_publish(
        pretrain(small_beton, out), out / "checkpoints" / "step_00000004", out.parent / "run.log"
    )
    print(f"run killed after step 4's checkpoint: {time.monotonic() - started:.1f} s")
    return out


def _optimizer_shard(ckpt: Path) -> str:
    (shard,) = (ckpt / "pytorch_model").glob("*optim_states.pt")
    return shard.relative_to(ckpt).as_posix()


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def damage(ckpt: Path, case: str) -> str:
    """Damage checkpoint ``ckpt`` as ``case`` says; returns the problem ``verify_checkpoint`` must report."""
    shard = _optimizer_shard(ckpt)
    model = "pytorch_model/mp_rank_00_model_states.pt"
    size = {name: (ckpt / name).stat().st_size for name in (shard, model)}
    if case == "optimizer shard deleted":
        (ckpt / shard).unlink()
        return f"{shard}: missing"
    if case == "optimizer shard truncated":
        _truncate(ckpt / shard, 1234)
        return f"{shard}: 1234 bytes, expected {size[shard]}"
    if case == "model states emptied":
        _truncate(ckpt / model, 0)
        return f"{model}: 0 bytes, expected {size[model]}"
    if case == "trainer_state.json truncated":
        _truncate(ckpt / "trainer_state.json", 100)
        return "trainer_state.json: not JSON ("  # then what json says
    if case == "random_states_0.pkl deleted":
        (ckpt / "random_states_0.pkl").unlink()
        return "random_states_0.pkl: missing"
    raise AssertionError(case)


CASES = [
    "optimizer shard deleted",
    "optimizer shard truncated",
    "model states emptied",
    "trainer_state.json truncated",
    "random_states_0.pkl deleted",
]


def test_the_manifest_lists_every_file_with_its_size(killed_run):
    from mae_trainer.training.checkpoint import complete_checkpoints, verify_checkpoint

    ckpts = killed_run / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step_00000002", "step_00000004"]
    for ckpt in complete_checkpoints(ckpts):
        files = json.loads((ckpt / "trainer_state.json").read_text())["files"]
        on_disk = {
            p.relative_to(ckpt).as_posix(): p.stat().st_size
            for p in ckpt.rglob("*")
            if p.is_file() and p.name != "trainer_state.json"
        }
        assert files == on_disk
        assert {
            "random_states_0.pkl",
            _optimizer_shard(ckpt),
            "pytorch_model/mp_rank_00_model_states.pt",
        } <= set(files)
        assert verify_checkpoint(ckpt) is None


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_checkpoint_is_skipped_named_and_kept(killed_run, tmp_path, case):
    from mae_trainer.errors import InputError
    from mae_trainer.training.checkpoint import complete_checkpoints, resolve_resume, verify_checkpoint

    root = tmp_path / "checkpoints"
    shutil.copytree(killed_run / "checkpoints", root)
    older, newer = root / "step_00000002", root / "step_00000004"
    problem = damage(newer, case)

    found = verify_checkpoint(newer)
    assert found is not None and found.startswith(problem) and "\n" not in found, found
    assert verify_checkpoint(older) is None
    assert complete_checkpoints(root) == [older]

    warnings: list[str] = []
    assert resolve_resume("auto", root, warn=warnings.append) == older
    assert warnings == [f"warning: checkpoint {newer} is damaged ({found}); resuming from {older}"]

    with pytest.raises(InputError) as named:  # named explicitly: refused, no fallback
        resolve_resume(str(newer), root)
    assert str(named.value) == f"{newer}: checkpoint is damaged ({found}); it is left as it is"
    with pytest.raises(InputError) as strict:
        resolve_resume("auto", root, strict=True, warn=warnings.append)
    assert f"checkpoint {newer} is damaged ({found}); --strict-resume refuses to fall back to {older}" in str(
        strict.value
    )
    assert len(warnings) == 1
    assert newer.is_dir() and verify_checkpoint(newer) == found  # left where it was, as it was


def test_only_damaged_checkpoints_are_refused(killed_run, tmp_path):
    from mae_trainer.errors import InputError
    from mae_trainer.training.checkpoint import resolve_resume

    root = tmp_path / "checkpoints"
    shutil.copytree(killed_run / "checkpoints", root)
    for ckpt in root.iterdir():
        (ckpt / "random_states_0.pkl").unlink()
    with pytest.raises(InputError, match="and so are the 1 older one"):
        resolve_resume("auto", root, warn=pytest.fail)
    assert resolve_resume("auto", tmp_path / "none_yet") is None


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tensorboard_steps(out: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_auto_falls_back_past_a_damaged_checkpoint_and_logs_each_step_once(
    killed_run, small_beton, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    newer, older = out / "checkpoints" / "step_00000004", out / "checkpoints" / "step_00000002"
    problem = damage(newer, "random_states_0.pkl deleted")
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]  # the killed run logged past step 2
    assert {3, 4} <= set(tensorboard_steps(out))

    # named explicitly, or with --strict-resume: refused in one line, before any work, nothing touched
    before = digest(out / "checkpoints")
    explicit = run_main(*pretrain(small_beton, out, "--resume", str(newer), launcher=None)[1:])
    assert explicit.returncode == 2
    assert explicit.stderr == (
        f"mae-trainer: error: --resume {newer}: checkpoint is damaged ({problem}); it is left as it is\n"
    )
    strict = run_main(*pretrain(small_beton, out, "--resume", "auto", "--strict-resume", launcher=None)[1:])
    assert strict.returncode == 2 and strict.stderr.count("\n") == 1
    assert f"--strict-resume refuses to fall back to {older}" in strict.stderr
    assert digest(out / "checkpoints") == before

    # --resume auto: one warning naming the file, then the run continues from step 2 and completes
    started = time.monotonic()
    log = run_to_end(pretrain(small_beton, out, "--resume", "auto"))
    print(f"resumed run (10 steps and the final save): {time.monotonic() - started:.1f} s")
    warning = f"warning: checkpoint {newer} is damaged ({problem}); resuming from {older}"
    assert log.count(warning) == 1, log[-4000:]
    assert log.count("is damaged") == 1
    assert f"resumed from {older} at step 2" in log
    assert (out / "model.safetensors").exists()
    # each step once: metrics.jsonl dropped the killed run's steps 3-4, TensorBoard discards its events
    assert [r["step"] for r in records(out)] == list(range(1, 13))
    assert tensorboard_steps(out) == list(range(1, 13))
    # the staging checkpoint of the final save is gone; the kept checkpoints are complete
    from mae_trainer.training.checkpoint import complete_checkpoints

    assert not (out / "checkpoints" / "final").exists()
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == [
        "step_00000006",
        "step_00000008",
        "step_00000010",
    ]


@pytest.fixture
def small_disk(tmp_path):
    """A 400 MiB tmpfs (2 checkpoints of the tiny model are 180 MB), or a skip where mounts are refused."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free - leave)
    return filler


@pytest.mark.parametrize(
    "launcher",
    [
        "cpu_1proc.yaml",  # DeepSpeed: the staging save of the ZeRO shards fails
        None,  # one plain process: save_pretrained's model.safetensors fails
    ],
    ids=["deepspeed-staging", "plain-save-pretrained"],
)
def test_disk_full_at_the_final_save_is_one_line_and_keeps_the_checkpoints(small_beton, small_disk, launcher):
    from mae_trainer.training.checkpoint import complete_checkpoints

    out = small_disk / "run"
    ckpts = out / "checkpoints"
    marker, go_on = small_disk.parent / "paused", small_disk.parent / "go-on"
    # the last checkpoint before the final save is step 4 (6 steps); once it is published the disk is
    # filled, leaving 1 MiB (the log lines of steps 5 and 6 fit, no model does), and the run goes on
    env = pause_env(ckpts / "step_00000004", marker, when="after", until=go_on)
    started = time.monotonic()
    proc = start_logged(
        pretrain(small_beton, out, "--max-steps", "6", launcher=launcher), small_disk.parent / "log", env
    )
    try:
        wait_for(marker.exists, proc, "step 4's checkpoint", log=proc.log)
        saved = {p.name: digest(p) for p in complete_checkpoints(ckpts)}
        assert list(saved) == ["step_00000002", "step_00000004"]
        filler = fill(small_disk, 2**20)
        go_on.touch()
        status = finish(proc)
    finally:
        kill_tree(proc.pid)
    print(f"run ending in a full disk: {time.monotonic() - started:.1f} s")
    log = proc.log.read_text()
    assert status == 1, log[-4000:]
    assert log.count("mae-trainer: run stopped:") == 1, log[-4000:]
    message = log[log.index("mae-trainer: run stopped:") :].splitlines()[0]  # after the progress bar's \r
    print(message)
    assert message.startswith(f"mae-trainer: run stopped: the final model could not be written to {out}: ")
    assert "MiB free on that file system" in message or "No space left on device" in message, message
    assert message.endswith(
        f"The newest checkpoint {ckpts / 'step_00000004'} is intact: free space or fix the directory, then "
        "rerun with --resume auto."
    ), message
    assert "Traceback" not in log.split("mae-trainer: run stopped:")[0]  # the worker's own: none
    assert "engine.py" not in log
    # nothing half written: no model file, no staging folder, the checkpoints byte for byte as they were
    leftovers = sorted(p.name for p in out.iterdir())
    assert not {"model.safetensors", "config.json"} & set(leftovers), leftovers
    assert not [name for name in leftovers if name.startswith(".")], leftovers
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000002", "step_00000004"]
    assert {p.name: digest(p) for p in complete_checkpoints(ckpts)} == saved

    # space freed: the newest checkpoint resumes and the run completes
    filler.unlink()
    log = run_to_end(pretrain(small_beton, out, "--max-steps", "6", "--resume", "auto", launcher=launcher))
    assert f"resumed from {ckpts / 'step_00000004'} at step 4" in log
    assert (out / "model.safetensors").exists() and not (ckpts / "final").exists()
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5, 6]
