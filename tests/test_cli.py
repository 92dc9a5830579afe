"""Bad input: one line naming the flag or file, non-zero exit, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, run_cli


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mae-trainer: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "run"


def pretrain(data, out, *extra):
    return run_cli(
        "pretrain",
        "--data",
        str(data),
        "--model",
        "tiny",
        "--resolution",
        "64",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--output-dir",
        str(out),
        *extra,
    )


def test_missing_data_path(tmp_path, out):
    result = pretrain(tmp_path / "nope.beton", out)
    assert_one_line_error(result, "--data", "nope.beton", "no such file")
    assert not out.exists()


def test_file_that_is_not_a_beton(tmp_path, out):
    bogus = tmp_path / "photo.beton"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 definitely a jpeg header" * 10)
    assert_one_line_error(pretrain(bogus, out), "--data", "photo.beton", "not an FFCV .beton file")
    assert not out.exists()


def test_resolution_not_a_multiple_of_the_patch(demo_beton, out):
    result = pretrain(demo_beton, out, "--resolution", "100")
    assert_one_line_error(result, "--resolution 100", "multiple of the patch size 16")
    assert not out.exists()


def test_unknown_model_preset(demo_beton, out):
    result = run_cli("pretrain", "--data", str(demo_beton), "--model", "gigantic", "--output-dir", str(out))
    assert_one_line_error(result, "--model 'gigantic'", "tiny, small, base, large, huge")
    assert not out.exists()


def test_write_dataset_errors(tmp_path, jpeg_folder):
    assert_one_line_error(
        run_cli("write-dataset", "--source", str(tmp_path / "none"), "--output", str(tmp_path / "x.beton")),
        "--source",
        "no such directory",
    )
    assert_one_line_error(
        run_cli("write-dataset", "--source", str(jpeg_folder), "--output", str(tmp_path / "x.ffcv")),
        "--output",
        "must end in .beton",
    )
    existing = tmp_path / "kept.beton"
    existing.write_bytes(b"old")
    assert_one_line_error(
        run_cli("write-dataset", "--source", str(jpeg_folder), "--output", str(existing)),
        "--output",
        "already exists",
        "--overwrite",
    )
    assert existing.read_bytes() == b"old"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        run_cli("write-dataset", "--source", str(empty), "--output", str(tmp_path / "e.beton")),
        "no images found",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kept.beton"]


def test_write_dataset_cli_from_a_folder(tmp_path, jpeg_folder):
    result = run_cli(
        "write-dataset",
        "--source",
        str(jpeg_folder),
        "--output",
        str(tmp_path / "ok.beton"),
        "--write-mode",
        "jpg",
        "--max-resolution",
        "96",
        "--jpeg-quality",
        "85",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 12 images (12 JPEG, 0 raw) in 2 classes" in result.stdout
    assert (tmp_path / "ok.beton").exists() and (tmp_path / "ok.beton.json").exists()


@pytest.mark.parametrize("recipe", ["dailymae_base_800ep_8xa100.yaml", "demo_cpu.yaml", "single_gpu.yaml"])
def test_example_recipes_are_valid(recipe, demo_beton):
    from mae_trainer.cli import parse_config
    from mae_trainer.training.pretrain_plan import make_schedule

    args = parse_config(["pretrain", "--recipe", str(ROOT / "examples" / recipe), "--data", str(demo_beton)])
    schedule = make_schedule(args, args.batch_size)
    assert schedule.stage(args.epochs - 1).resolution == args.resolution
    assert args.crop_decode and args.interpolation == "bicubic"
    if recipe != "demo_cpu.yaml":  # the authors' stages: 160/0.5, 192/0.66 from epoch 200, 224/0.75 from 400
        stages = [schedule.stage(epoch) for epoch in (0, 199, 200, 399, 400, 799)]
        assert [(s.resolution, s.mask_ratio) for s in stages] == [
            (160, 0.5), (160, 0.5), (192, 0.66), (192, 0.66), (224, 0.75), (224, 0.75)
        ]  # fmt: skip


def test_truncated_data_and_bad_stages_are_refused_before_any_file(demo_beton, tmp_path, out):
    truncated = tmp_path / "truncated.beton"
    truncated.write_bytes(demo_beton.read_bytes()[:-40])
    assert_one_line_error(pretrain(truncated, out), "--data", "truncated.beton", "damaged .beton file")
    result = pretrain(demo_beton, out, "--progressive", "steps", "--resolution-steps", "0:32:0.5,1:64:1.5")
    assert_one_line_error(result, "--resolution-steps", "epoch 1 (64 px) has mask ratio 1.5")
    assert not out.exists()  # refused before the output directory was made


def test_recipe_with_equals_sign_and_bad_recipe_values(demo_beton, tmp_path, out):
    from mae_trainer.cli import parse_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny\nepochs: 3\nwarmup-epochs: 1\ncrop_decode: false\n")
    # once silently ignored: the run trained the base preset for 800 epochs
    args = parse_config(["pretrain", f"--recipe={recipe}", "--data", str(demo_beton)])
    assert (args.model, args.epochs, args.crop_decode) == ("tiny", 3, False)
    # null means the default; a whole float is an int (once: `log_every: null` ended in a TypeError traceback
    # after training started, `save_every: 0.5` silently turned checkpoints off, `seed: 1.9` became 1)
    recipe.write_text("log-every: null\nepochs: null\nseed: 2.0\n")
    args = parse_config(["pretrain", f"--recipe={recipe}", "--data", str(demo_beton)])
    assert (args.log_every, args.epochs, args.seed) == (10, 800, 2) and isinstance(args.seed, int)

    for text, needles in [
        ("batch-size: abc\n", ("batch-size: 'abc' is not valid", "invalid literal")),
        ("epochs: [1, 2]\n", ("epochs: [1, 2] is not valid", "not a list")),
        (
            "interpolation: lanczos\n",
            ("interpolation: 'lanczos' is not valid", "choose one of bicubic, area"),
        ),
        ("crop-decode: maybe\n", ("crop-decode: 'maybe' is not valid", "expected true or false")),
        ("save-every: 0.5\n", ("save-every: 0.5 is not valid", "expected a whole number, not 0.5")),
        ("log-every: true\n", ("log-every: True is not valid", "expected a whole number, not true")),
        ("mask-ratio: false\n", ("mask-ratio: False is not valid", "expected a number, not false")),
        ("output-dir: 5\n", ("output-dir: 5 is not valid", "expected a path")),
        ("- just\n- a list\n", ("expected a mapping",)),
    ]:
        recipe.write_text(text)
        result = run_cli(
            "pretrain", f"--recipe={recipe}", "--data", str(demo_beton), "--output-dir", str(out)
        )
        assert_one_line_error(result, f"--recipe {recipe}", *needles)
    assert not out.exists()


def test_help_and_usage_errors_do_not_import_torch(tmp_path, demo_beton):
    """`--help` and every refusal below come back before torch, transformers or FFCV is imported (what makes
    them fast: benchmarks/cli_latency.py measures the seconds)."""
    not_beton = tmp_path / "x.beton"
    not_beton.write_text("not an FFCV file")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("batch-size: abc\n")
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    cases = [
        ["--help"],
        ["pretrain", "--help"],
        ["pretrain", "--data", str(not_beton), "--mask-ratio", "2"],
        ["pretrain", "--data", str(tmp_path / "missing.beton")],
        ["pretrain", "--data", str(not_beton), "--model", "tiny"],
        ["pretrain", "--recipe", str(recipe), "--data", str(not_beton)],
        ["pretrain", "--data", str(not_beton), "--report-to", "tensorboard,mlflow"],
        ["pretrain", "--data", str(demo_beton), "--model", "tiny", "--report-to", "wandb"],  # no W&B login
        ["pretrain", "--data", str(demo_beton), "--model", "tiny", "--init-from", str(folder)],
        ["finetune", "--model", str(folder), "--train", str(not_beton), "--report-to", "none,all"],
        ["pretrain", "--data", str(not_beton), "--eval-data", str(tmp_path / "missing.beton")],
        ["finetune", "--model", str(folder), "--train", str(not_beton)],
        ["probe", "--model", str(folder), "--train", str(not_beton), "--val", str(not_beton), "--knn"],
        ["export", "--to", "timm", str(folder), str(tmp_path / "out.safetensors")],
        [
            "reconstruct",
            "--model",
            str(folder),
            "--data",
            str(not_beton),
            "--output",
            str(tmp_path / "g.png"),
        ],
        ["push", str(folder), "user/repo", "--endpoint", "notaurl"],
        ["write-dataset", "--source", str(tmp_path / "none"), "--output", str(tmp_path / "o.beton")],
    ]
    code = f"""
import contextlib, io, sys
from mae_trainer.cli import main
statuses = []
for argv in {cases!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            statuses.append(main(argv))
        except SystemExit as done:
            statuses.append(done.code)
heavy = sorted(m for m in ("torch", "transformers", "ffcv", "timm") if m in sys.modules)
print(statuses, heavy)
"""
    # no W&B key, mode or settings of the user's (the --report-to wandb case must find no login)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), NETRC=str(tmp_path / "home" / ".netrc"),
               WANDB_CONFIG_DIR=str(tmp_path / "home" / "wandb"))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{[0, 0] + [2] * (len(cases) - 2)} []", result.stdout


def test_output_dir_that_cannot_hold_the_run(demo_beton, tmp_path):
    """`--output-dir` that is a file, or lies under one: one line naming the flag, exit 2, the file intact;
    for pretrain and finetune alike (the check is the training config's)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("kept")
    model = tmp_path / "model"
    from mae_trainer.modeling import MAEConfig, MAEForPreTraining

    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32)).save_pretrained(model)
    for output, words in [(blocker, "exists and is not a folder"), (blocker / "run", f"{blocker} is a file")]:
        pretrain = run_cli(
            "pretrain", "--data", str(demo_beton), "--model", "tiny", "--output-dir", str(output)
        )
        assert_one_line_error(pretrain, f"--output-dir {output}", words)
        finetune = run_cli(
            "finetune", "--model", str(model), "--train", str(demo_beton), "--output-dir", str(output)
        )
        assert_one_line_error(finetune, f"--output-dir {output}", words)
    assert blocker.read_text() == "kept"


def test_hub_flags_are_shared_by_the_training_commands(demo_beton, tmp_path):
    """The Hub options live in TrainingConfig: pretrain and finetune both take them, push takes
    --dataset-name (alias --dataset) and --license."""
    from mae_trainer.cli import parse, parse_config

    for command, required in [
        ("pretrain", ["--data", str(demo_beton)]),
        ("finetune", ["--model", str(tmp_path), "--train", str(tmp_path)]),
    ]:
        config = parse_config([command, *required, "--push-to-hub", "a/b", "--hub-license", "mit",
                               "--dataset-name", "a/data", "--hub-private"])  # fmt: skip
        assert (config.push_to_hub, config.hub_license, config.dataset_name) == ("a/b", "mit", "a/data")
        assert config.hub_private and "hub_token" not in {k.replace("-", "_") for k in config.to_recipe()}
    _, args = parse(["push", "dir", "a/b", "--dataset-name", "a/x", "--dataset", "a/y", "--license", "mit"])
    assert args.datasets == ["a/x", "a/y"] and args.license == "mit"
    assert parse(["push", "dir", "a/b"])[1].license is None  # the folder's provenance, else apache-2.0


def test_the_program_freezes_the_collector_once_the_command_is_done(monkeypatch):
    """The console script and ``python -m mae_trainer`` run ``entry``: the command, then ``gc.freeze`` (so
    interpreter shutdown does not walk the objects torch and co. leave behind), whatever its status."""
    from importlib.metadata import entry_points

    import mae_trainer.__main__ as module_main
    from mae_trainer import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mae-trainer"]
    assert script.value == "mae_trainer.cli:entry" and module_main.entry is cli.entry
    events = []
    monkeypatch.setattr(cli, "main", lambda: events.append("command") or 2)
    monkeypatch.setattr(cli.gc, "freeze", lambda: events.append("freeze"))
    assert cli.entry() == 2 and events == ["command", "freeze"]
