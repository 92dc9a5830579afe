"""save_pretrained → from_pretrained round trips, and the Auto-class registration (in a fresh process, with
either import first: tests/test_lazy_import.py)."""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from mae_trainer import MAEConfig, MAEForPreTraining, MAEModel


def test_save_and_reload_exactly(tmp_path):
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=64, mask_ratio=0.6)).eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mae_trainer_mae"

    reloaded = MAEForPreTraining.from_pretrained(tmp_path).eval()
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 16)
    assert torch.equal(model(x, noise=noise).logits, reloaded(x, noise=noise).logits)
    assert reloaded.config.mask_ratio == 0.6


def test_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=64))
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MAEConfig)
    pre = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert isinstance(pre, MAEForPreTraining)
    encoder = AutoModel.from_pretrained(tmp_path)
    assert isinstance(encoder, MAEModel)
    enc_state = encoder.state_dict()
    for key, value in model.mae.state_dict().items():
        assert torch.equal(enc_state[key], value), key
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(encoder(x).last_hidden_state, model.mae(x).last_hidden_state)
