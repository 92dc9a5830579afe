"""The user's whole day in one test, against the loopback Hub (LFS included): pre-train a tiny MAE and push it
→ ``finetune --model USER/REPO`` (the Hub id, downloaded) on a labelled ``.beton`` (the FFCV path) with EMA
and ``--push-to-hub`` → a process where mae_trainer cannot be imported runs
``pipeline("image-classification", model=...)`` on a photo and gets the label of mae-trainer's own
evaluation of that photo, and the card says where the model came from."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from .conftest import TOKEN, run_cli, small_embedded_beton
from .test_classifier_export import run_plain

pytestmark = pytest.mark.slow


def test_pretrain_push_finetune_from_the_hub_push_and_plain_pipeline(
    demo_beton,
    hub,
    no_saved_token,
    tmp_path,
):
    import torch

    from mae_trainer import MAEForImageClassification
    from mae_trainer.data.demo import load_photo
    from mae_trainer.data.labelled import eval_transform

    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}  # fmt: skip
    pre = tmp_path / "pretrain"
    done = run_cli(
        "pretrain", "--data", str(demo_beton), "--model", "tiny", "--resolution", "32", "--epochs", "1",
        "--warmup-epochs", "0", "--batch-size", "8", "--max-steps", "2", "--num-workers", "1",
        "--recon-images", "0", "--report-to", "none", "--output-dir", str(pre),
        "--push-to-hub", "alice/mae-tiny", "--hub-license", "mit", "--dataset-name", "alice/photos", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    data = small_embedded_beton(tmp_path, limit=96, max_resolution=64)
    out = tmp_path / "finetune"
    done = run_cli(
        "finetune", "--model", "alice/mae-tiny", "--train", str(data), "--val-fraction", "0.25",
        "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--num-workers", "1", "--blr", "1e-2",
        "--ema-decay", "0.5", "--report-to", "none", "--output-dir", str(out),
        "--push-to-hub", "alice/mae-tiny-photos", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with the ffcv loader" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["val_images"] == 24 and "val_acc5" in results["raw"]
    best = out if results["weights"] == "raw" else out / "ema"

    files = hub.files("alice/mae-tiny-photos")
    meta = yaml.safe_load(files["README.md"].decode().split("---\n", 2)[1])
    assert meta["pipeline_tag"] == "image-classification" and meta["base_model"] == "alice/mae-tiny"
    assert meta["license"] == "mit"  # the pre-trained card's
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(results["val_acc1"])

    # mae-trainer's own evaluation of a photo: the saved best weights, the evaluation transform
    photo = tmp_path / "photo.jpg"
    load_photo("chelsea.png").convert("RGB").save(photo, quality=95)
    model = MAEForImageClassification.from_pretrained(best).eval()
    with Image.open(photo) as image:
        x = eval_transform(32, model.config.image_mean, model.config.image_std)(image.convert("RGB"))
    with torch.no_grad():
        ours = model.config.id2label[int(model(x[None]).logits.argmax())]

    answer = run_plain(
        "import json\nfrom transformers import pipeline\n"
        f"print(json.dumps(pipeline('image-classification', model='alice/mae-tiny-photos')({str(photo)!r})))",
        tmp_path,
        env={**os.environ, **env, "HF_HOME": str(tmp_path / "plain_home")},
    )
    top = json.loads(answer.strip().splitlines()[-1])[0]
    assert top["label"] == ours
