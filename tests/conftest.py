"""Shared fixtures: real JPEG files cut from the photos in scikit-image's wheel, and real .beton files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pytest_configure(config):
    """One numba cache for the whole session (``mae_trainer/data/jit_cache.py``), inherited by every
    process the tests launch: FFCV's pipeline is compiled once, not once per process. A fresh folder per
    session unless ``MAE_TRAINER_NUMBA_CACHE`` is set (then that one, or none with ``off``). The test hooks
    (``tests/pause_hook/sitecustomize.py``) on ``PYTHONPATH`` of every process the tests start."""
    os.environ["PYTHONPATH"] = _with_hooks()
    sys.unraisablehook = _drop_numba_finalizer_errors
    if "MAE_TRAINER_NUMBA_CACHE" not in os.environ:
        import tempfile

        folder = tempfile.mkdtemp(prefix="mae_trainer_numba_")
        os.environ["MAE_TRAINER_NUMBA_CACHE"] = folder
        config._mae_trainer_numba_cache = folder


def _drop_numba_finalizer_errors(unraisable) -> None:
    """``sys.unraisablehook`` of the test processes. numba's dispatcher finalizer raises ``KeyError`` when
    the compiled functions of an FFCV loader made by a run in the test process are collected
    (``numba/core/dispatcher.py``, ``finalizer``): dropped, so that the one-line stderr of a later command
    stays one line. Anything else goes to Python's own hook (pytest's is off: ``pyproject.toml``)."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    if (
        unraisable.exc_type is KeyError
        and code is not None
        and code.co_name == "finalizer"
        and code.co_filename.endswith(os.path.join("numba", "core", "dispatcher.py"))
    ):
        return
    sys.__unraisablehook__(unraisable)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """Real runs (``slow``) first, in file order: under ``pytest -n`` (``make test``) the long launches start
    while the quick tests fill the gaps, instead of one of them ending the session alone. A module's real
    runs form one ``xdist_group`` (``--dist loadgroup``): they go to one worker together, so the data and
    runs their module fixtures build once (a killed run, a trained model) are not built again on the other
    worker; the quick tests go out one by one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_runtest_setup(item):
    """Under ``--dist loadgroup``, fail each real run that xdist did not group, saying why. xdist marks a
    group by appending ``@group`` to each test's nodeid; pytest 9.2 no longer reads the attribute it writes
    (pytest-dev/pytest-xdist#1386), and the groups then silently stop holding: each module's fixtures (a
    killed run, a trained model) get built on both workers. ``pyproject.toml`` pins pytest below 9.2."""
    grouping = getattr(item.config.option, "loadgroup", False)
    if grouping and item.get_closest_marker("slow") is not None and "@" not in item.nodeid:
        pytest.fail(
            f"--dist loadgroup did not group this real run: pytest {pytest.__version__} with this "
            "pytest-xdist (pytest-dev/pytest-xdist#1386); install the pytest that pyproject.toml's dev extra "
            "pins (make test does), or run with --dist load",
            pytrace=False,
        )


def pytest_unconfigure(config):
    folder = getattr(config, "_mae_trainer_numba_cache", None)
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    """An ImageFolder tree of real JPEGs: 2 classes, odd sizes, quality 95."""
    from mae_trainer.data.demo import load_photo

    root = tmp_path_factory.mktemp("jpegs")
    sizes = [(97, 131), (160, 120), (203, 150), (64, 64), (250, 181), (121, 199)]
    for label, name in enumerate(["chelsea.png", "coffee.png"]):
        photo = load_photo(name)
        (root / f"class_{label}").mkdir()
        for i, size in enumerate(sizes):
            crop = photo.crop((i * 13, i * 7, i * 13 + 300, i * 7 + 280)).resize(size)
            crop.save(root / f"class_{label}" / f"img_{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny pre-trained MAE save (image size 32, 4 blocks; random weights: what matters is that they
    arrive unchanged)."""
    import torch

    from mae_trainer import MAEConfig, MAEForPreTraining

    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, num_hidden_layers=4))
    path = tmp_path_factory.mktemp("pre") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def demo_beton(tmp_path_factory) -> Path:
    """The embedded demo set written once per session."""
    from mae_trainer.data.sources import embedded_source
    from mae_trainer.data.write import WriteSettings, write_beton

    path = tmp_path_factory.mktemp("beton") / "demo.beton"
    write_beton(embedded_source(), path, WriteSettings(max_resolution=128, write_mode="jpg"))
    return path


def run_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``mae-trainer`` console script in a fresh process."""
    return subprocess.run(
        [str(BIN / "mae-trainer"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def run_real(
    cmd: list[str],
    *,
    env: dict | None = None,
    timeout: int = 900,
    check: bool = True,
    threads: int | None = 1,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (from :func:`command_cmd`, :func:`pretrain_cmd` or :func:`launch_cmd`) in fresh
    processes, output unbuffered and captured. ``env`` replaces the environment (default: this one);
    ``threads`` sets ``OMP_NUM_THREADS`` (None: leave it); ``check`` fails the test with the output's tail
    on a non-zero exit."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it. torchrun starts its workers in their own sessions,
    so killing the launcher's process group alone leaves a worker training (a machine that dies takes all
    of them). The tree is collected first, then everything is killed at once."""
    import signal

    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


PAUSE_HOOK = ROOT / "tests" / "pause_hook"


def _with_hooks() -> str:
    """``PYTHONPATH`` with the test hooks' folder first (its sitecustomize runs in every Python process)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PAUSE_HOOK)]
    return os.pathsep.join([str(PAUSE_HOOK), *rest])


def pause_env(target: Path, marker: Path, when: str = "after", until: Path | None = None) -> dict[str, str]:
    """Environment entries under which a child process, and every Python process it starts, stops for good
    just ``when`` (``"before"`` or ``"after"``) it ``os.replace``s something onto ``target`` (a checkpoint
    being published), after creating ``marker`` (tests/pause_hook/sitecustomize.py). Wait for ``marker``
    with :func:`wait_for`, then :func:`kill_tree`: the kill lands at that point however loaded the machine.
    With ``until``, the process goes on once that file exists instead of stopping for good."""
    config = {"target": str(target), "when": when, "marker": str(marker)}
    if until is not None:
        config["until"] = str(until)
    return {"PYTHONPATH": _with_hooks(), "MAE_TRAINER_TEST_PAUSE": json.dumps(config)}


def start_logged(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """``cmd`` in the background in its own session (so :func:`kill_tree` reaches every process), with
    ``OMP_NUM_THREADS=1`` and its output (stdout and stderr) going to ``log`` (a pipe that nobody reads
    while the run trains would fill up and stall it); ``proc.log`` is ``log``."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
    proc.log = log
    return proc


def kill_after_publish(cmd: list[str], target: Path, log: Path, env: dict | None = None) -> None:
    """Run ``cmd`` until it publishes ``target`` (a checkpoint folder), stopping it for good right after
    (:func:`pause_env`), then SIGKILL the launcher and every worker there: nothing after ``target`` runs."""
    marker = log.with_name(log.name + ".paused")
    proc = start_logged(cmd, log, {**(env or {}), **pause_env(target, marker, when="after")})
    try:
        wait_for(marker.exists, proc, f"{target} to be published", log=log)
    finally:
        kill_tree(proc.pid)  # the launcher and every worker, mid-epoch
        proc.wait()


def start_delay_env(rank: int, seconds: float, marker: Path) -> dict[str, str]:
    """Environment entries under which the launched worker of global ``rank`` sleeps ``seconds`` at
    start-up (a node slow to start), after appending ``pid seconds`` to ``marker``
    (tests/pause_hook/sitecustomize.py)."""
    config = {"rank": rank, "seconds": seconds, "marker": str(marker)}
    return {"PYTHONPATH": _with_hooks(), "MAE_TRAINER_TEST_START_DELAY": json.dumps(config)}


def output_tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- last output ({log}) ---\n" + log.read_text(errors="replace")[-chars:]


def wait_for(
    condition: Callable[[], bool],
    proc: subprocess.Popen,
    what: str,
    timeout: float = 900,
    log: Path | None = None,
) -> None:
    """Return once ``condition()`` holds (a file the child creates at the moment that matters). Fail the test
    with a message naming ``what`` and the tail of ``log`` if ``proc`` exits first, or after ``timeout``
    seconds: a generous bound that only ends a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None and not condition():
            pytest.fail(
                f"waiting for {what}: the process exited with status {proc.returncode}{output_tail(log)}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"waiting for {what}: still not there after {timeout:.0f} s{output_tail(log)}")
        time.sleep(0.05)


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) → its SHA-256: equal digests, untouched files."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metrics_steps(output_dir: Path) -> list[int]:
    """The steps logged so far in ``output_dir/metrics.jsonl`` (complete lines only)."""
    path = output_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last piece is empty or a line still being written
    return [json.loads(line)["step"] for line in lines if line.strip()]


TINY_RUN = {
    "model": "tiny",
    "resolution": 32,
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 16,
    "num_workers": 1,
    "log_every": 1,
    "recon_images": 0,
}


def tiny_flags(**changes) -> list[str]:
    """The ``pretrain`` flags of a tiny real run (:data:`TINY_RUN`: MAE-Tiny at 32 px, batch 16, a log
    record per step, no reconstruction grid) with ``changes`` applied: ``epochs=4``, ``save_every=2``,
    ``blr="1e-3"``; a value of None drops that flag."""
    values = {**TINY_RUN, **changes}
    return [x for name, value in values.items() if value is not None
            for x in ("--" + name.replace("_", "-"), str(value))]  # fmt: skip


def launch_cmd(
    config: str, *args: str, launcher_args: tuple[str, ...] = (), umbrella: bool = False
) -> list[str]:
    """``accelerate-launch --config_file accelerate_configs/CONFIG [LAUNCHER_ARGS] -m mae_trainer ARGS...``

    ``accelerate-launch`` is accelerate's own console script for ``accelerate.commands.launch:main``, the
    function ``accelerate launch`` dispatches to: the same launcher, without the umbrella CLI importing
    every other command first (``accelerate estimate-memory`` pulls in timm and transformers), which costs
    about 4.5 s of CPU per launch here. ``umbrella=True`` gives the README's ``accelerate launch`` itself.

    Unless ``launcher_args`` name one, ``--main_process_port 0``: accelerate picks a free port, so runs
    that the suite's parallel workers (``pytest -n``) launch at once never meet on its default 29500."""
    if "--main_process_port" not in launcher_args:
        launcher_args = ("--main_process_port", "0", *launcher_args)
    return [
        *([str(BIN / "accelerate"), "launch"] if umbrella else [str(BIN / "accelerate-launch")]),
        "--config_file",
        str(ROOT / "accelerate_configs" / config),
        *launcher_args,
        "-m",
        "mae_trainer",
        *args,
    ]


def command_cmd(command: str, launcher, *args: str) -> list[str]:
    """``mae-trainer COMMAND ARGS...`` (``launcher`` None), or the same under ``accelerate launch`` with
    ``launcher``: an accelerate config (``cpu_2proc.yaml``) or a tuple of it and launcher arguments."""
    if launcher is None:
        return [str(BIN / "mae-trainer"), command, *args]
    config, *launcher_args = (launcher,) if isinstance(launcher, str) else launcher
    return launch_cmd(config, command, *args, launcher_args=tuple(launcher_args))


def pretrain_cmd(launcher, *args: str) -> list[str]:
    """:func:`command_cmd` of ``pretrain``."""
    return command_cmd("pretrain", launcher, *args)


def weight_gap(a: Path, b: Path) -> float:
    """The largest absolute difference between the ``model.safetensors`` weights of output folders ``a`` and
    ``b`` (which hold the same tensors)."""
    from safetensors.torch import load_file

    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ours.keys() == theirs.keys()
    return max((ours[k] - theirs[k]).abs().max().item() for k in ours)


def small_embedded_beton(folder: Path, limit: int, max_resolution: int) -> Path:
    """The first ``limit`` images of the embedded set as a jpg .beton (a few steps per epoch)."""
    from mae_trainer.data.sources import embedded_source
    from mae_trainer.data.write import WriteSettings, write_beton

    source = embedded_source()
    source.order = source.order[:limit]
    path = folder / "small.beton"
    write_beton(source, path, WriteSettings(max_resolution=max_resolution, write_mode="jpg", num_workers=1))
    return path


def plain_transformers_script(ref: str, work: Path, extra: str = "") -> str:
    """Source for a process that has only transformers: load ``ref`` (a ``vit_mae`` folder or Hub repo id) as
    ``ViTMAEForPreTraining``, ``ViTModel`` and ``ViTForImageClassification``, check that the three share the
    encoder weights, run ``work/inputs.pt`` (``x``, ``noise``) and save loss, logits and features to
    ``work/plain.pt`` (read back by :func:`assert_plain_outputs_match`). ``extra`` runs after the loads."""
    return f"""
import torch
from transformers import ViTForImageClassification, ViTMAEForPreTraining, ViTModel
inputs = torch.load({str(work / "inputs.pt")!r})
mae = ViTMAEForPreTraining.from_pretrained({ref!r}).eval()
vit = ViTModel.from_pretrained({ref!r}, add_pooling_layer=False).eval()
clf = ViTForImageClassification.from_pretrained({ref!r}, num_labels=5)
mae_state, vit_state, clf_state = mae.state_dict(), vit.state_dict(), clf.state_dict()
for key, value in vit_state.items():
    assert torch.equal(value, mae_state["vit." + key]), key
    assert torch.equal(value, clf_state["vit." + key]), key
{extra}
with torch.no_grad():
    out = mae(inputs["x"], noise=inputs["noise"])
    feats = vit(inputs["x"]).last_hidden_state
torch.save({{"loss": out.loss, "logits": out.logits, "features": feats}}, {str(work / "plain.pt")!r})
"""


def save_plain_inputs(work: Path, x, noise) -> None:
    import torch

    torch.save({"x": x, "noise": noise}, work / "inputs.pt")


def assert_plain_outputs_match(model, x, noise, work: Path) -> None:
    """Our ``MAEForPreTraining`` on the same input and noise gives the plain-transformers process's loss and
    logits (≤ 1e-5) and, through its encoder, its ``ViTModel`` features (≤ 1e-4)."""
    import torch

    theirs = torch.load(work / "plain.pt")
    with torch.no_grad():
        ours = model(x, noise=noise)
        features = model.mae(x).last_hidden_state
    logits_gap = (ours.logits - theirs["logits"]).abs().max().item()
    loss_gap = (ours.loss - theirs["loss"]).abs().item()
    assert logits_gap <= 1e-5 and loss_gap <= 1e-5, (logits_gap, loss_gap)
    assert (features - theirs["features"]).abs().max() <= 1e-4


def run_main(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """``mae_trainer.cli.main(args)`` in this process, reported as :func:`run_cli` reports a fresh one
    (status, stdout, stderr), with one torch thread as :func:`run_real` gives its processes. The code a
    plain ``mae-trainer`` process runs, without a fresh interpreter's start: about 6 s of CPU importing
    torch, timm, FFCV and transformers, where a tiny run trains in about 1 s. Every run that is not about
    the process itself (signals, kills, launchers, a fresh interpreter's imports or environment) runs
    here. ``check``: fail the test with the output's tail on a non-zero status. An exception that escapes
    ``main`` (a traceback) fails the test, and so does a SIGTERM or SIGUSR1 handler left changed: a
    command's stop handlers end with it (``training/lifecycle.py``)."""
    import contextlib
    import io
    import signal

    import torch

    from mae_trainer.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([str(arg) for arg in args])
    finally:
        torch.set_num_threads(threads)
    result = subprocess.CompletedProcess(["mae-trainer", *args], status, out.getvalue(), err.getvalue())
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers, "stop handlers left behind"
    if check:
        assert status == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def run_to_end(cmd: list[str], env: dict | None = None) -> str:
    """Run ``cmd`` (from :func:`command_cmd` or :func:`pretrain_cmd`) to a zero exit status and return its
    output (stdout, then stderr). A plain ``mae-trainer`` command under this environment runs in this
    process (:func:`run_main`); one under a launcher, or with ``env``, in fresh processes
    (:func:`run_real`)."""
    if cmd[0] == str(BIN / "mae-trainer") and env is None:
        result = run_main(*cmd[1:], check=True)
    else:
        result = run_real(cmd, env=env)
    return result.stdout + result.stderr


FP32_ZERO1 = ("--deepspeed_config_file", str(ROOT / "ds_configs" / "zero1_fp32.json"))  # ZeRO-1 without bf16


def wandb_offline_env(tmp_path) -> dict[str, str]:
    """Offline, silent, every wandb folder under ``tmp_path``, no key or settings of the user's."""
    home = tmp_path / "wandb_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(home / "dir"),
               WANDB_CONFIG_DIR=str(home / "config"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_DATA_DIR=str(home / "data"), WANDB_DISABLE_GIT="true", OMP_NUM_THREADS="1")  # fmt: skip
    return env


# ----------------------------------------------------------------------------------- the loopback Hub

TOKEN = "hf_loopback_test_token"
PART = 8 * 2**20  # LFS objects above this go up in parts (the tiny model's weights are ~26 MB: 4 parts)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # loopback only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # LFS: see the docstring
    from .hub_server import LoopbackHub

    with LoopbackHub(tokens={TOKEN}, multipart_size=PART) as server:
        yield server
    # after stop(): every request was one the server knows
    assert not server.unhandled, [(r.method, r.path) for r in server.unhandled]


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
