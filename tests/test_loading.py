"""One loader for saved models (``mae_trainer/modeling/loading.py``): our folders and transformers ``vit_mae``
folders load into every class and every ``--model`` command with the same weights; anything else is refused
in one line naming the folder, and no command goes on with weights it failed to load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mae_trainer import MAEConfig, MAEForPreTraining, MAEModel
from mae_trainer.modeling import MAEForImageClassification
from mae_trainer.modeling.convert import to_vit_mae
from mae_trainer.modeling.loading import ModelLoadError

from .conftest import run_cli, run_main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random tiny MAE saved in our format and as transformers vit_mae."""
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, num_hidden_layers=4)).eval()
    model.save_pretrained(root / "ours")
    to_vit_mae(model).save_pretrained(root / "vit_mae")
    return root, model


def _encoder(state: dict) -> dict:
    return {k[len("mae.") :]: v for k, v in state.items() if k.startswith("mae.")}


@pytest.mark.parametrize("kind", ["ours", "vit_mae"])
def test_every_class_loads_both_formats_with_identical_weights(folders, kind):
    root, model = folders
    reference = model.state_dict()
    pre = MAEForPreTraining.from_pretrained(root / kind).state_dict()
    assert pre.keys() == reference.keys()
    assert all(torch.equal(pre[k], reference[k]) for k in reference)
    encoder = MAEModel.from_pretrained(root / kind).state_dict()
    assert encoder.keys() == _encoder(reference).keys()
    assert all(torch.equal(encoder[k], v) for k, v in _encoder(reference).items())
    clf = MAEForImageClassification.from_pretrained(str(root / kind), num_labels=3, drop_path_rate=0.1)
    assert clf.config.num_labels == 3 and clf.config.drop_path_rate == 0.1
    assert all(torch.equal(v, _encoder(reference)[k]) for k, v in _encoder(clf.state_dict()).items())
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 4)
    with torch.no_grad():
        ours, loaded = (
            model(x, noise=noise),
            MAEForPreTraining.from_pretrained(root / kind).eval()(x, noise=noise),
        )
    assert torch.equal(ours.logits, loaded.logits) and torch.equal(ours.loss, loaded.loss)


def _broken(root, tmp_path):
    """name → (folder, the words the one-line refusal must contain)."""
    cases = {}
    (tmp_path / "empty").mkdir(parents=True)
    cases["no config"] = (tmp_path / "empty", "no config.json")
    bert = tmp_path / "bert"
    shutil.copytree(root / "vit_mae", bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    cases["other model_type"] = (bert, "model_type 'bert' is not a masked autoencoder")
    for kind in ("ours", "vit_mae"):
        truncated = tmp_path / f"truncated_{kind}"
        shutil.copytree(root / kind, truncated)
        weights = truncated / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        cases[f"truncated {kind}"] = (truncated, "model.safetensors: truncated")
        no_weights = tmp_path / f"no_weights_{kind}"
        shutil.copytree(root / kind, no_weights)
        (no_weights / "model.safetensors").unlink()
        cases[f"no weights {kind}"] = (no_weights, "no model.safetensors")
    lacking = tmp_path / "lacking"
    shutil.copytree(root / "ours", lacking)
    state = load_file(root / "ours" / "model.safetensors")
    del state["mae.blocks.0.attn.qkv.weight"]
    save_file(state, lacking / "model.safetensors", metadata={"format": "pt"})
    cases["missing tensor ours"] = (lacking, "lack 1 tensor(s)")
    lacking_vit = tmp_path / "lacking_vit"
    shutil.copytree(root / "vit_mae", lacking_vit)
    state = load_file(root / "vit_mae" / "model.safetensors")
    del state["vit.encoder.layer.0.attention.attention.query.weight"]  # saved under the checkpoint names
    save_file(state, lacking_vit / "model.safetensors", metadata={"format": "pt"})
    cases["missing tensor vit_mae"] = (lacking_vit, "lack 1 tensor(s)")
    cases["no such folder"] = (tmp_path / "does" / "not" / "exist", "no such folder")
    return cases


def test_library_refuses_bad_folders_in_one_line(folders, tmp_path):
    root, _ = folders
    for name, (folder, words) in _broken(root, tmp_path).items():
        for cls in (MAEForPreTraining, MAEModel, MAEForImageClassification):
            with pytest.raises(ModelLoadError) as info:
                cls.from_pretrained(folder)
            message = str(info.value)
            assert message.startswith(str(folder)) and words in message, (name, cls, message)
            assert "\n" not in message, (name, message)
            assert isinstance(info.value, ValueError)  # an ordinary exception for library callers


def _assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mae-trainer: error: "), result.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_every_model_command_refuses_bad_folders_and_writes_nothing(
    folders, tmp_path, demo_beton, jpeg_folder
):
    """In-process (``run_main``: an exception that escapes is a failure); a refusal in a process of its own
    is the next test's."""
    root, _ = folders
    cases = _broken(root, tmp_path / "cases")
    out = tmp_path / "out"
    ft = ["finetune", "--train", str(jpeg_folder), "--output-dir", str(out / "ft"), "--epochs", "1"]
    probe = ["probe", "--train", str(jpeg_folder), "--val-fraction", "0.5", "--knn", "--k", "3"]
    recon = ["reconstruct", "--data", str(demo_beton), "--output", str(out / "grid.png")]
    commands = {
        "finetune": ([*ft, "--warmup-epochs", "0", "--model", "{}"],
                     ["missing tensor vit_mae", "truncated ours"]),
        "probe": ([*probe, "--output", str(out / "p.json"), "--model", "{}"],
                  ["missing tensor ours", "no weights vit_mae"]),
        "reconstruct": ([*recon, "--model", "{}"], ["missing tensor vit_mae", "other model_type"]),
        "export": (["export", "--to", "vit_mae", "{}", str(out / "exported")],
                   ["truncated vit_mae", "no config"]),
    }  # fmt: skip
    for command, (args, names) in commands.items():
        for name in names:
            folder, words = cases[name]
            flag = "SRC" if command == "export" else "--model"
            result = run_main(*(str(folder) if a == "{}" else a for a in args))
            _assert_one_line_error(result, f"{flag} {folder}", words)
    assert not out.exists()  # nothing was written by any refused command


def test_export_and_reconstruct_refuse_truncated_or_missing_weights_and_keep_existing_outputs(
    folders, tmp_path, demo_beton
):
    """A truncated or missing ``model.safetensors``: one line naming the flag and folder, exit status 2 (the
    truncated file in a process of its own: no traceback, no crash); an earlier export and an earlier grid
    at the output paths keep their bytes, and nothing else appears."""
    root, _ = folders
    cases = _broken(root, tmp_path / "cases")
    out = tmp_path / "out"
    assert run_main("export", "--to", "vit_mae", str(root / "ours"), str(out / "exported")).returncode == 0
    (out / "exported" / "notes.txt").write_text("mine")
    (out / "grid.png").write_bytes(b"an earlier grid")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for name, run in (("truncated ours", run_cli), ("no weights ours", run_main)):
        folder, words = cases[name]
        export = ["export", "--to", "vit_mae", str(folder), str(out / "exported"), "--overwrite"]
        _assert_one_line_error(run(*export), f"SRC {folder}", words)
        recon = [
            "reconstruct",
            "--model",
            str(folder),
            "--data",
            str(demo_beton),
            "--output",
            str(out / "grid.png"),
        ]
        _assert_one_line_error(run(*recon), f"--model {folder}", words)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(out.rglob("*")) == sorted([out / "exported", *before])  # no new file, no hidden one


def test_reconstruct_and_export_read_vit_mae_folders_as_our_own(folders, tmp_path, demo_beton):
    root, _ = folders
    grids = {}
    for kind in ("ours", "vit_mae"):
        out = tmp_path / f"{kind}.png"
        result = run_main("reconstruct", "--model", str(root / kind), "--data", str(demo_beton),
                          "--output", str(out), "--count", "2")  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        grids[kind] = out.read_bytes()
    assert grids["ours"] == grids["vit_mae"]  # same weights, same seeded masks: the same picture

    result = run_main("export", "--to", "mae", str(root / "vit_mae"), str(tmp_path / "mae"))
    assert result.returncode == 0, result.stderr[-3000:]
    back = load_file(tmp_path / "mae" / "model.safetensors")
    original = load_file(root / "ours" / "model.safetensors")
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def test_finetune_on_a_vit_mae_folder_starts_from_its_weights(folders, tmp_path, jpeg_folder):
    """Before the one loader, finetune built a random encoder from a vit_mae folder and exited 0. With lr 0
    the saved model's encoder is exactly the loaded one, so random weights cannot pass."""
    root, model = folders
    out = tmp_path / "ft"
    result = run_main(
        "finetune", "--model", str(root / "vit_mae"), "--train", str(jpeg_folder),
        "--val-fraction", "0.34", "--epochs", "1", "--max-steps", "1", "--warmup-epochs", "0",
        "--batch-size", "4", "--lr", "0", "--mixup", "0", "--cutmix", "0", "--num-workers", "0",
        "--output-dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = load_file(out / "model.safetensors")
    for key, value in _encoder(model.state_dict()).items():
        assert torch.equal(tuned[f"mae.{key}"], value), key


def test_probe_reads_a_vit_mae_folder_like_ours(folders, tmp_path, jpeg_folder):
    root, _ = folders
    results = {}
    for kind in ("ours", "vit_mae"):
        out = tmp_path / f"{kind}.json"
        result = run_main("probe", "--model", str(root / kind), "--train", str(jpeg_folder),
                          "--val-fraction", "0.5", "--knn", "--k", "3", "--num-workers", "0",
                          "--output", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        knn = json.loads(out.read_text())["knn"]
        results[kind] = {k: v for k, v in knn.items() if k not in ("encoder", "seconds", "extract_seconds")}
    assert results["ours"] == results["vit_mae"] and results["ours"]["val_samples"] == 6
