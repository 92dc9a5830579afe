"""``--report-to``: the training commands log through accelerate's trackers. Weights & Biases runs in
offline mode (no network, no login): its run is read back from the ``.wandb`` file it writes under the output
folder, and the logged loss is the one in ``metrics.jsonl``. Every wandb location is under ``tmp_path``, so a
user's own wandb settings are never read or written."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from mae_trainer.report_to import report_to_problem
from mae_trainer.training.trackers import wandb_run_id

from .conftest import (
    BIN,
    ROOT,
    pretrain_cmd,
    run_main,
    run_to_end,
    small_embedded_beton,
    tiny_flags,
    wandb_offline_env,
)


def wandb_history(run_file) -> list[dict]:
    """The ``history`` records (one per logged step) of an offline run's ``.wandb`` file."""
    return [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.item}
        for record in wandb_records(run_file, "history")
    ]


def wandb_records(run_file, record_type: str) -> list:
    """The records of one ``record_type`` (``history``, ``run``, ...) of an offline ``.wandb`` file, decoded
    with wandb's own protobuf ``Record``. The file is wandb's record log (LevelDB's log format): a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks, each ``crc32c(4) length(2) type(1)`` + data; types 1
    (full) or 2/3/4 (first/middle/last part) of a record."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == record_type:
                records.append(getattr(record, record_type))
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("trackers"), limit=48, max_resolution=64)  # 3 steps


def pretrain(data, out, report_to, env, *extra):
    flags = tiny_flags(epochs=1, warmup_epochs=0, recon_images=2, recon_every=2, blr="1e-3")
    cmd = pretrain_cmd(None, "--data", str(data), "--output-dir", str(out), *flags, "--report-to", report_to)
    run_to_end([*cmd, *extra], env=env)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(data, tmp_path):
    """``--resume`` logs into the W&B run of the run it resumes (offline: a second ``offline-run-*`` folder
    with the same run id, its steps after the checkpoint's); a run in another output folder is another run,
    and its file holds every logged loss, lr and reconstruction grid."""
    env = wandb_offline_env(tmp_path)
    out, other = tmp_path / "run", tmp_path / "other"
    longer = ("--epochs", "2", "--save-every", "1")
    pretrain(data, out, "wandb", env, *longer, "--max-steps", "2")  # checkpoint step_1, model at step 2
    (first,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    (run_id,) = [run.run_id for run in wandb_records(first, "run")]
    assert (out / "wandb" / "run_id").read_text() == run_id + "\n"
    resume = ("--max-steps", "4", "--replan", "--resume", "auto", "--overwrite")
    records = pretrain(data, out, "wandb", env, *longer, *resume)
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and first in runs, runs
    (second,) = [path for path in runs if path != first]
    assert [run.run_id for run in wandb_records(second, "run")] == [run_id]
    assert second.name == first.name == f"run-{run_id}.wandb"
    # each folder holds its own steps: 1-2 before, 2-4 after resuming from the step-1 checkpoint
    assert [h["_step"] for h in wandb_history(first)] == [1, 2]
    resumed = [h for h in wandb_history(second) if "train/loss" in h]
    assert [h["_step"] for h in resumed] == [r["step"] for r in records][-3:] == [2, 3, 4]
    assert [h["train/loss"] for h in resumed] == [r["loss"] for r in records][-3:]

    records = pretrain(data, other, "wandb", env)  # a fresh run elsewhere: a new run id
    (elsewhere,) = (other / "wandb").glob("offline-run-*/run-*.wandb")  # under the output folder
    (other_id,) = [run.run_id for run in wandb_records(elsewhere, "run")]
    assert other_id != run_id and (other / "wandb" / "run_id").read_text() == other_id + "\n"
    # what the run logged, as the run's file holds it: every step's loss and lr, and the grids
    assert not (other / "tensorboard").exists()
    history = wandb_history(elsewhere)
    assert [h["_step"] for h in history] == [r["step"] for r in records] == [1, 2, 3]
    assert [h["train/loss"] for h in history] == [r["loss"] for r in records]
    assert [h["train/lr"] for h in history] == [r["lr"] for r in records]
    # the reconstruction grids: PNGs on disk, and images in the run at steps 2 and 3 (the final one)
    assert [h["_step"] for h in history if "reconstruction/_type" in h] == [2, 3]
    assert all(
        h["reconstruction/_type"] == "images/separated" for h in history if "reconstruction/_type" in h
    )
    assert (other / "reconstructions" / "step_00000002.png").is_file()
    assert (other / "reconstruction.png").is_file()
    # the runs went to --output-dir, not to $WANDB_DIR
    assert not list((tmp_path / "wandb_home" / "dir").glob("wandb/*run-*"))


def test_wandb_run_id_is_kept_for_resumes_and_new_for_fresh_runs(tmp_path):
    first = wandb_run_id(tmp_path, fresh=True)
    assert len(first) == 8 and (tmp_path / "wandb" / "run_id").read_text() == first + "\n"
    assert wandb_run_id(tmp_path, fresh=False) == first  # --resume: the same run
    again = wandb_run_id(tmp_path, fresh=True)  # --overwrite without --resume: a new run, stored
    assert again != first and wandb_run_id(tmp_path, fresh=False) == again
    assert wandb_run_id(tmp_path / "elsewhere", fresh=False) not in (first, again)  # resumed, none stored
    assert (tmp_path / "elsewhere" / "wandb" / "run_id").is_file()
    assert [p.name for p in (tmp_path / "wandb").iterdir()] == ["run_id"]  # no partial file left


def test_report_to_none_writes_metrics_and_pictures_only(data, tmp_path):
    out = tmp_path / "run"
    records = pretrain(data, out, "none", None)  # no tracker: in this process
    assert [r["step"] for r in records] == [1, 2, 3]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    assert (out / "reconstructions" / "step_00000002.png").is_file() and (
        out / "reconstruction.png"
    ).is_file()


def test_bad_report_to_is_refused_in_one_line(demo_beton, tmp_path, monkeypatch):
    out = tmp_path / "out"
    for value, words in [
        ("tensorbord", "unknown tracker 'tensorbord'; choose from tensorboard, wandb, all, none"),
        ("none,wandb", "'none' stands alone"),
        (",", "name at least one tracker, or none"),
    ]:
        for command in (
            ["pretrain", "--data", str(demo_beton)],
            ["finetune", "--model", "m", "--train", "t"],
        ):
            result = run_main(*command, "--output-dir", str(out), "--report-to", value)
            assert result.returncode == 2
            assert result.stderr.strip() == f"mae-trainer: error: --report-to {value}: {words}", result.stderr
    # a tracker whose package is missing: import of it made impossible, the way Python blocks a module
    monkeypatch.setitem(sys.modules, "wandb", None)
    for value in ("wandb", "all", "tensorboard,wandb"):
        result = run_main("pretrain", "--data", str(demo_beton), "--output-dir", str(out),
                          "--report-to", value)  # fmt: skip
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert f"--report-to {value}: wandb not installed (pip install wandb" in result.stderr, result.stderr
    assert not out.exists()


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path):
    """No W&B credentials or settings of the user's: wandb variables unset, HOME, NETRC and the config folder
    under ``tmp_path`` (empty), the working folder too (its ``wandb/settings`` is read)."""
    import os

    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb_config"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_online_wandb_without_credentials_is_refused_before_training(
    demo_beton, tmp_path, monkeypatch, no_wandb_login
):
    out = tmp_path / "out"
    for value in ("wandb", "all", "tensorboard,wandb"):
        for command in (
            ["pretrain", "--data", str(demo_beton)],
            ["finetune", "--model", "m", "--train", "t"],
        ):
            result = run_main(*command, "--output-dir", str(out), "--report-to", value)
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert result.stderr.startswith(
                f"mae-trainer: error: --report-to {value}: online W&B needs an API key and none was found "
                f"(WANDB_API_KEY, or a {no_wandb_login / '.netrc'} entry for api.wandb.ai): "
                "run `wandb login`, or set WANDB_MODE=offline"
            ), result.stderr
    assert not out.exists()
    assert report_to_problem("tensorboard") is None  # only wandb needs a login
    # each way wandb finds a key, or does not need one, lets it through
    monkeypatch.setenv("WANDB_MODE", "online")
    assert "needs an API key" in report_to_problem("wandb")
    for mode in ("offline", "dryrun", "disabled"):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert report_to_problem("wandb") is None
    monkeypatch.delenv("WANDB_MODE")
    settings = no_wandb_login / "wandb_config" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    assert report_to_problem("wandb") is None
    settings.write_text("[default]\nbase_url = https://wandb.example.org\n")  # `wandb login --host`
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert report_to_problem("wandb") is None
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = no_wandb_login / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    assert "entry for wandb.example.org" in report_to_problem("wandb")  # a key for another host
    settings.write_text("")
    assert report_to_problem("wandb") is None  # the default host's key
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org/")
    assert "entry for wandb.example.org" in report_to_problem("wandb")
    netrc.write_text(f"machine wandb.example.org login user password {'b' * 40}\n")
    assert report_to_problem("wandb") is None


@pytest.mark.slow
def test_finetune_reports_to_wandb_too(jpeg_folder, tmp_path):
    import torch

    from mae_trainer.modeling import MAEConfig, MAEForPreTraining

    torch.manual_seed(0)
    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, num_hidden_layers=2)).save_pretrained(
        tmp_path / "pre"
    )
    out = tmp_path / "ft"
    result = subprocess.run(
        [str(BIN / "mae-trainer"), "finetune", "--model", str(tmp_path / "pre"), "--train", str(jpeg_folder),
         "--val-fraction", "0.34", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4",
         "--num-workers", "0", "--log-every", "1", "--output-dir", str(out), "--report-to", "wandb"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=wandb_offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    train = [r for r in records if "train/loss" in r]
    assert len(train) == 2 and [h["train/loss"] for h in history if "train/loss" in h] == [
        r["train/loss"] for r in train
    ]
    assert [h["val/acc1"] for h in history if "val/acc1" in h] == [
        r["val/acc1"] for r in records if "val/acc1" in r
    ]
    assert not (out / "tensorboard").exists()
