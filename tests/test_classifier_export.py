"""A fine-tuned ``MAEForImageClassification`` exported for plain transformers (``convert.to_transformers_
classifier``): the mean-pool head as ``BeitForImageClassification``, the class-token head as
``ViTForImageClassification``. The proof is numerical, in a process where mae_trainer cannot be imported:
``AutoModelForImageClassification`` gives our logits (≤ 1e-4 on 32 random fp32 images) and
``pipeline("image-classification")`` on a real photo gives our top label and score."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mae_trainer import MAEConfig, MAEForImageClassification, MAEForPreTraining
from mae_trainer.data.demo import load_photo, photo_dir
from mae_trainer.modeling.convert import image_processor, write_transformers_classifier

LABELS = {0: "cat", 1: "dog", 2: "fox"}
PHOTO = "chelsea.png"
# In the plain process, an import of mae_trainer fails (it is installed in this venv): nothing of ours runs.
BLOCK_US = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mae_trainer":
            raise ImportError("mae_trainer is blocked in this process")
sys.meta_path.insert(0, _Blocked())
"""


def run_plain(code: str, cwd, env: dict | None = None) -> str:
    """``code`` in a fresh interpreter with mae_trainer unimportable, no PYTHONPATH, outside the repo."""
    env = {**(env or os.environ)}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", BLOCK_US + code], capture_output=True, text=True, timeout=300,
                         env=env, cwd=cwd)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def fine_tuned(pretrained, pool: str, seed: int = 0) -> MAEForImageClassification:
    """A classifier from a pre-training save with every weight moved off its init (the head starts near 0,
    which would make every prediction agree trivially)."""
    torch.manual_seed(seed)
    model = MAEForImageClassification.from_pretrained(
        pretrained, num_labels=len(LABELS), id2label=LABELS, global_pool=pool
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.head.weight.normal_(0, 0.5)
    return model.eval()


def plain_classifier_script(ref: str, work, photo: str) -> str:
    """Load ``ref`` (folder or repo id) with ``AutoModelForImageClassification`` and ``pipeline``: logits of
    ``work/x.pt`` and the pipeline's answer on ``photo`` into ``work/plain.pt``."""
    return f"""
import torch
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained({ref!r}).eval()
with torch.no_grad():
    logits = model(torch.load({str(work / "x.pt")!r})).logits
answer = pipeline("image-classification", model={ref!r})({photo!r})
torch.save({{"type": type(model).__name__, "logits": logits, "answer": answer,
            "id2label": model.config.id2label}}, {str(work / "plain.pt")!r})
"""


def assert_same_predictions(model, work) -> dict:
    """Our logits on ``work/x.pt`` and our top label and score on the photo, as the image processor
    prepares it, equal the plain process's (``work/plain.pt``)."""
    theirs = torch.load(work / "plain.pt")
    with torch.no_grad():
        ours = model(torch.load(work / "x.pt")).logits
        inputs = image_processor(model.config)(images=load_photo(PHOTO), return_tensors="pt")
        probs = model(inputs["pixel_values"]).logits.softmax(-1)[0]
    assert (ours - theirs["logits"]).abs().max() <= 1e-4
    top = theirs["answer"][0]
    assert top["label"] == LABELS[probs.argmax().item()]
    assert abs(top["score"] - probs.max().item()) <= 1e-4
    assert {int(k): v for k, v in theirs["id2label"].items()} == LABELS
    return theirs


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    path = tmp_path_factory.mktemp("pre") / "model"
    torch.manual_seed(0)
    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32)).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "pool, architecture, model_type",
    [("avg", "BeitForImageClassification", "beit"), ("token", "ViTForImageClassification", "vit")],
)
def test_classifier_export_predicts_as_ours_in_plain_transformers(
    pretrained, tmp_path, pool, architecture, model_type
):
    model = fine_tuned(pretrained, pool)
    folder = tmp_path / "export"
    write_transformers_classifier(model, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [architecture]
    assert config["image_size"] == 32 and config["label2id"] == {v: k for k, v in LABELS.items()}
    assert json.loads((folder / "preprocessor_config.json").read_text())["crop_size"] == {
        "height": 32,
        "width": 32,
    }
    torch.save(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)), tmp_path / "x.pt")
    run_plain(plain_classifier_script(str(folder), tmp_path, str(photo_dir() / PHOTO)), tmp_path)
    assert assert_same_predictions(model, tmp_path)["type"] == architecture
