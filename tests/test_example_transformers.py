"""examples/finetune_with_transformers.py: our model's vit_mae export fine-tuned with plain transformers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.modeling.convert import write_vit_mae
from mae_trainer.modeling.modeling_mae import sincos_pos_embed_2d

from .conftest import ROOT
from .test_export import plain_python

EXAMPLE = ROOT / "examples" / "finetune_with_transformers.py"
SIZE = 32


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small mae_trainer model (tiny width, 4 blocks, 32 px) saved with save_pretrained."""
    torch.manual_seed(0)
    config = MAEConfig.from_preset("tiny", image_size=SIZE, num_hidden_layers=4, decoder_num_hidden_layers=1)
    model = MAEForPreTraining(config)
    path = tmp_path_factory.mktemp("pretrained") / "model"
    model.save_pretrained(path)
    return path, model.eval()


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_with_transformers", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vit_model_matches_our_encoder(pretrained, tmp_path):
    """The vit_mae export in plain ViTModel / ViTForImageClassification: nothing but the head is new, the
    fixed sin-cos table arrives as ViT's (learnable) position table, and features equal our MAEModel's."""
    src, model = pretrained
    dst = tmp_path / "vit_mae"
    write_vit_mae(MAEForPreTraining.from_pretrained(src), dst)
    x = torch.randn(3, 3, SIZE, SIZE)
    torch.save(x, tmp_path / "x.pt")
    plain_python(f"""
import torch
from transformers import ViTForImageClassification, ViTModel
vit, vit_info = ViTModel.from_pretrained({str(dst)!r}, add_pooling_layer=False, output_loading_info=True)
clf, clf_info = ViTForImageClassification.from_pretrained(
    {str(dst)!r}, num_labels=3, output_loading_info=True
)
assert not vit_info["missing_keys"] and not vit_info["mismatched_keys"], vit_info
assert clf_info["missing_keys"] == {{"classifier.weight", "classifier.bias"}}, clf_info["missing_keys"]
assert not clf_info["mismatched_keys"], clf_info
assert all(k.startswith("decoder.") for k in vit_info["unexpected_keys"] | clf_info["unexpected_keys"])
assert clf.config.to_dict()["model_type"] == "vit"
assert clf.vit.embeddings.position_embeddings.requires_grad
x = torch.load({str(tmp_path / "x.pt")!r})
with torch.no_grad():
    out = {{
        "features": vit.eval()(x).last_hidden_state,
        "logits": clf.eval()(x).logits,
        "head": (clf.classifier.weight, clf.classifier.bias),
        "q0": clf.vit.layers[0].attention.q_proj.weight,
        "patch": clf.vit.embeddings.patch_embeddings.projection.weight,
        "pos": clf.vit.embeddings.position_embeddings,
    }}
torch.save(out, {str(tmp_path / "out.pt")!r})
""")
    theirs = torch.load(tmp_path / "out.pt")
    ours = model.state_dict()
    assert torch.equal(theirs["q0"], ours["mae.blocks.0.attn.qkv.weight"].chunk(3)[0])
    assert torch.equal(theirs["patch"], ours["mae.patch_embed.proj.weight"])
    grid = SIZE // model.config.patch_size
    assert theirs["pos"].shape == (1, 1 + grid * grid, model.config.hidden_size)
    assert torch.equal(theirs["pos"], sincos_pos_embed_2d(model.config.hidden_size, grid, grid))
    with torch.no_grad():
        features = model.mae(x).last_hidden_state  # no masking: class token + every patch, final norm
    assert features.shape == theirs["features"].shape
    assert (features - theirs["features"]).abs().max() <= 1e-4
    weight, bias = theirs["head"]
    assert (features[:, 0] @ weight.T + bias - theirs["logits"]).abs().max() <= 1e-4


def test_example_finetunes_the_export_with_trainer(pretrained, jpeg_folder, tmp_path):
    from transformers import AutoModelForImageClassification, ViTForImageClassification

    src, model = pretrained
    out = tmp_path / "finetuned"
    paths = ["--model", str(src), "--data", str(jpeg_folder), "--output-dir", str(out)]
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *paths, *"--max-steps 3 --batch-size 4 --lr 1e-3".split()],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["steps"] == 3
    assert (metrics["train_images"], metrics["eval_images"]) == (
        9,
        3,
    )  # 6 per class; 20 % held out, rounded up
    for key in ("train_loss", "eval_loss", "eval_accuracy"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert "new: classifier.bias, classifier.weight" in result.stderr

    assert json.loads((out / "config.json").read_text())["model_type"] == "vit"
    assert (out / "preprocessor_config.json").is_file()
    tuned = ViTForImageClassification.from_pretrained(out).eval()
    assert tuned.classifier.out_features == 2
    assert tuned.config.id2label == {0: "class_0", 1: "class_1"}
    start = ViTForImageClassification.from_pretrained(out / "vit_mae", num_labels=2).state_dict()
    ours = model.state_dict()
    assert torch.equal(start["vit.layers.1.mlp.fc1.weight"], ours["mae.blocks.1.mlp.fc1.weight"])
    tuned_state = tuned.state_dict()
    for key in ("vit.layers.1.mlp.fc1.weight", "vit.embeddings.patch_embeddings.projection.weight"):
        assert not torch.equal(tuned_state[key], start[key]), f"{key} did not train"
    # plain Auto classes load it too (model_type "vit")
    auto = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(auto(x).logits, tuned(x).logits)
        assert tuned(x).logits.shape == (2, 2)


def test_position_table_resampled_for_another_image_size(pretrained, tmp_path):
    from transformers import ViTForImageClassification

    example = load_example()
    src, model = pretrained
    dst = tmp_path / "vit_mae"
    write_vit_mae(MAEForPreTraining.from_pretrained(src), dst)
    clf = ViTForImageClassification.from_pretrained(dst, num_labels=2).eval()
    before = clf.vit.embeddings.position_embeddings.detach().clone()
    example.resize_position_table(clf, SIZE)  # same size: untouched
    assert torch.equal(clf.vit.embeddings.position_embeddings, before)

    example.resize_position_table(clf, 48)
    table = clf.vit.embeddings.position_embeddings
    assert isinstance(table, torch.nn.Parameter) and table.shape == (1, 1 + 9, model.config.hidden_size)
    assert torch.equal(table[:, 0], before[:, 0])  # the class token's entry is kept
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        logits = clf(x).logits
    clf.save_pretrained(tmp_path / "at48")
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "at48").eval()
    assert reloaded.config.image_size == 48
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, logits)
    with pytest.raises(SystemExit, match="multiple of the patch size"):
        example.resize_position_table(clf, 40)
