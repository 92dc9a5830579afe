"""Exports that plain transformers and timm load in processes that never import mae_trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mae_trainer import MAEConfig, MAEForPreTraining

from .conftest import (
    assert_plain_outputs_match,
    plain_transformers_script,
    run_cli,
    run_main,
    save_plain_inputs,
)
from .test_cli import assert_one_line_error


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def plain_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and fail if it imported mae_trainer."""
    guard = "\nimport sys\nassert not any(m.startswith('mae_trainer') for m in sys.modules), 'imported us'\n"
    out = subprocess.run([sys.executable, "-c", code + guard], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ours") / "model"
    model = MAEForPreTraining(MAEConfig.from_preset("tiny"))
    model.save_pretrained(path)
    return path, model.eval()


def test_vit_mae_export_loads_in_plain_transformers(saved, tmp_path):
    src, model = saved
    dst = tmp_path / "vit_mae"
    result = run_main("export", "--to", "vit_mae", str(src), str(dst))
    assert result.returncode == 0, result.stderr
    assert json.loads((dst / "config.json").read_text())["model_type"] == "vit_mae"
    assert json.loads((dst / "preprocessor_config.json").read_text())["image_mean"] == [0.485, 0.456, 0.406]

    x = torch.randn(2, 3, 224, 224)
    noise = torch.rand(2, 196)
    save_plain_inputs(tmp_path, x, noise)
    plain_python(plain_transformers_script(str(dst), tmp_path))
    assert_plain_outputs_match(model, x, noise, tmp_path)

    # and back: the vit_mae folder imports into our model unchanged
    back = tmp_path / "back"
    assert run_main("export", "--to", "mae", str(dst), str(back)).returncode == 0
    reloaded = MAEForPreTraining.from_pretrained(back)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_timm_export_loads_strictly(saved, tmp_path):
    src, model = saved
    dst = tmp_path / "encoder.safetensors"
    result = run_main("export", "--to", "timm", str(src), str(dst))
    assert result.returncode == 0, result.stderr
    assert "vit_tiny_patch16_224" in result.stdout
    x = torch.randn(2, 3, 224, 224)
    torch.save(x, tmp_path / "x.pt")
    plain_python(f"""
import timm, torch
from safetensors.torch import load_file
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
model.load_state_dict(load_file({str(dst)!r}), strict=True)
with torch.no_grad():
    features = model.eval().forward_features(torch.load({str(tmp_path / "x.pt")!r}))
torch.save(features, {str(tmp_path / "f.pt")!r})
""")
    with torch.no_grad():
        ours = model.mae(x).last_hidden_state
    assert (ours - torch.load(tmp_path / "f.pt")).abs().max() <= 1e-4


def test_export_refuses_bad_paths(saved, tmp_path):
    src, _ = saved
    existing = tmp_path / "exists"
    existing.mkdir()
    result = run_main("export", "--to", "vit_mae", str(src), str(existing))
    assert result.returncode == 2 and "already exists" in result.stderr
    result = run_main("export", "--to", "timm", str(src), str(tmp_path / "x.bin"))
    assert result.returncode == 2 and ".safetensors" in result.stderr
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = run_main("export", "--to", "mae", str(tmp_path / "bert"), str(tmp_path / "y"))
    assert result.returncode == 2 and f"SRC {tmp_path / 'bert'}: model_type 'bert'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "exists"]


def test_export_creates_missing_parent_folders(saved, tmp_path):
    """DST names where the output should go: missing parents are created, as for write-dataset --output."""
    src, _ = saved
    dst = tmp_path / "missing_parent" / "dir" / "out.safetensors"
    result = run_main("export", "--to", "timm", str(src), str(dst))
    assert result.returncode == 0, result.stderr
    assert "pos_embed" in load_file(dst)
    assert listing(tmp_path) == ["missing_parent", "missing_parent/dir", "missing_parent/dir/out.safetensors"]
    folder = tmp_path / "new" / "vit_mae"
    assert run_main("export", "--to", "vit_mae", str(src), str(folder)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]


def test_export_refuses_destinations_under_a_file_and_writes_nothing(saved, tmp_path):
    src, _ = saved
    blocker = tmp_path / "blocker"
    blocker.write_text("kept")
    for to, dst, words in [
        ("timm", blocker / "sub" / "out.safetensors", f"DST {blocker}/sub: cannot create the folder"),
        ("vit_mae", blocker / "sub", f"({blocker} is a file, not a folder)"),
        ("mae", blocker, f"DST {blocker}: exists and is not a folder"),
    ]:
        for extra in ([], ["--overwrite"]):
            assert_one_line_error(run_main("export", "--to", to, str(src), str(dst), *extra), words)
    assert listing(tmp_path) == ["blocker"] and blocker.read_text() == "kept"
    # and in a process of its own: the one line, no traceback
    result = run_cli("export", "--to", "timm", str(src), str(blocker / "sub" / "out.safetensors"))
    assert_one_line_error(result, f"DST {blocker}/sub: cannot create the folder")


def test_export_overwrite_replaces_only_the_files_it_writes(saved, tmp_path):
    src, model = saved
    dst = tmp_path / "exported"
    assert run_main("export", "--to", "vit_mae", str(src), str(dst)).returncode == 0
    (dst / "notes.txt").write_text("mine")
    (dst / "runs").mkdir()
    (dst / "runs" / "log.txt").write_text("also mine")
    before = {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()}

    refused = run_main("export", "--to", "mae", str(src), str(dst))  # no --overwrite
    assert_one_line_error(refused, f"DST {dst}: already exists (pass --overwrite")
    assert {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()} == before

    result = run_main("export", "--to", "mae", str(src), str(dst), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "runs" / "log.txt").read_text() == "also mine"
    assert json.loads((dst / "config.json").read_text())["model_type"] == "mae_trainer_mae"
    assert (dst / "preprocessor_config.json").read_bytes() == before["preprocessor_config.json"]  # kept
    reloaded = MAEForPreTraining.from_pretrained(dst)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_export_overwrite_refuses_a_folder_that_is_not_an_export(saved, tmp_path):
    src, _ = saved
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')  # not a model's: never replaced
    (folder / "notes.txt").write_text("mine")
    result = run_main("export", "--to", "vit_mae", str(src), str(folder), "--overwrite")
    assert_one_line_error(result, f"DST {folder}: holds files but no saved model")
    timm = run_main("export", "--to", "timm", str(src), str(tmp_path / "project.safetensors"))
    assert timm.returncode == 0, timm.stderr
    result = run_main("export", "--to", "timm", str(src), str(folder), "--overwrite")
    assert_one_line_error(result, f"DST {folder}: the timm export is a file ending in .safetensors")
    taken = tmp_path / "dir.safetensors"
    taken.mkdir()
    result = run_main("export", "--to", "timm", str(src), str(taken), "--overwrite")
    assert_one_line_error(result, f"DST {taken}: is a folder")
    assert listing(tmp_path) == [
        "dir.safetensors",
        "project",
        "project.safetensors",
        "project/config.json",
        "project/notes.txt",
    ]
    assert (folder / "config.json").read_text() == '{"my": "settings"}'
