"""Exports that plain transformers and timm load in processes that never import mae_trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mae_trainer import MAEConfig, MAEForPreTraining

from .conftest import (
    assert_plain_outputs_match,
    plain_transformers_script,
    run_cli,
    save_plain_inputs,
)


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
    result = run_cli("export", "--to", "vit_mae", str(src), str(dst))
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
    assert run_cli("export", "--to", "mae", str(dst), str(back)).returncode == 0
    reloaded = MAEForPreTraining.from_pretrained(back)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_timm_export_loads_strictly(saved, tmp_path):
    src, model = saved
    dst = tmp_path / "encoder.safetensors"
    result = run_cli("export", "--to", "timm", str(src), str(dst))
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
    result = run_cli("export", "--to", "vit_mae", str(src), str(existing))
    assert result.returncode == 2 and "already exists" in result.stderr
    result = run_cli("export", "--to", "timm", str(src), str(tmp_path / "x.bin"))
    assert result.returncode == 2 and ".safetensors" in result.stderr
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = run_cli("export", "--to", "mae", str(tmp_path / "bert"), str(tmp_path / "y"))
    assert result.returncode == 2 and f"SRC {tmp_path / 'bert'}: model_type 'bert'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "exists"]
