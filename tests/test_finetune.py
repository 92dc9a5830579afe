"""Fine-tuning: MAEForImageClassification from a pre-training save, layer decay, augmentations, and
`mae-trainer finetune` on real JPEGs, a real .beton and a real HF dataset, plain and under accelerate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mae_trainer import MAEForImageClassification, MAEForPreTraining

from .conftest import command_cmd, run_cli, run_main, run_real


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained):
    """The tiny pre-training save (conftest) and its model."""
    return tiny_pretrained, MAEForPreTraining.from_pretrained(tiny_pretrained)


def test_from_pretrained_loads_the_encoder_and_drops_the_decoder(pretrained):
    path, pre = pretrained
    clf, info = MAEForImageClassification.from_pretrained(
        path, num_labels=7, drop_path_rate=0.2, output_loading_info=True
    )
    assert info["missing_keys"] == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for (name, a), (_, b) in zip(clf.mae.state_dict().items(), pre.mae.state_dict().items()):
        assert torch.equal(a, b), name
    assert clf.head.out_features == 7 and torch.all(clf.head.bias == 0)
    assert 1e-5 < clf.head.weight.std().item() < 4e-5  # N(0, 2e-5) as the reference fine-tune
    rates = [block.drop_path1.drop_prob for block in clf.mae.blocks[1:]]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2)  # linear stochastic-depth rule
    assert isinstance(clf.mae.blocks[0].drop_path1, torch.nn.Identity)  # rate 0 for the first block


def test_pooling_options_and_soft_target_loss(pretrained):
    path, _ = pretrained
    x = torch.randn(3, 3, 32, 32)
    avg = MAEForImageClassification.from_pretrained(path, num_labels=4).eval()
    token = MAEForImageClassification.from_pretrained(path, num_labels=4, global_pool="token").eval()
    with torch.no_grad():
        tokens = avg.mae(x, final_norm=False).last_hidden_state
        assert torch.allclose(avg.features(x), avg.fc_norm(tokens[:, 1:].mean(1)), atol=1e-6)
        assert torch.allclose(token.features(x), token.mae(x).last_hidden_state[:, 0], atol=1e-6)
        labels = torch.tensor([0, 3, 1])
        hard = avg(x, labels=labels)
        soft = avg(x, labels=torch.nn.functional.one_hot(labels, 4).float())
    assert hard.logits.shape == (3, 4) and torch.allclose(hard.loss, soft.loss, atol=1e-6)


def test_layer_decay_groups_follow_the_reference_rule(pretrained):
    from timm.optim import param_groups_layer_decay

    path, _ = pretrained
    clf = MAEForImageClassification.from_pretrained(path, num_labels=3)
    names = {id(p): n for n, p in clf.named_parameters()}
    groups = param_groups_layer_decay(
        clf, weight_decay=0.05, no_weight_decay_list=clf.no_weight_decay(), layer_decay=0.65
    )
    scale = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    depth = clf.config.num_hidden_layers
    assert scale["mae.patch_embed.proj.weight"] == (pytest.approx(0.65 ** (depth + 1)), 0.05)
    assert scale["mae.cls_token"] == (pytest.approx(0.65 ** (depth + 1)), 0.0)
    assert scale["mae.blocks.0.attn.qkv.weight"] == (pytest.approx(0.65**depth), 0.05)
    assert scale["mae.blocks.0.norm1.bias"][1] == 0.0
    assert scale[f"mae.blocks.{depth - 1}.mlp.fc1.weight"][0] == pytest.approx(0.65)
    assert scale["head.weight"] == (1.0, 0.05) and scale["fc_norm.weight"] == (1.0, 0.0)


def test_auto_class_and_save_round_trip(pretrained, tmp_path):
    from transformers import AutoModelForImageClassification

    path, _ = pretrained
    clf = MAEForImageClassification.from_pretrained(path, num_labels=3).eval()
    clf.save_pretrained(tmp_path / "clf")
    again = AutoModelForImageClassification.from_pretrained(tmp_path / "clf").eval()
    assert type(again) is MAEForImageClassification and again.config.num_labels == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clf(x).logits, again(x).logits)


def test_augmentations_and_beton_reader(tmp_path, jpeg_folder):
    from PIL import Image

    from mae_trainer.data.labelled import (
        LabelledImages,
        ThreeAugment,
        eval_transform,
        open_labelled,
        train_transform,
    )
    from mae_trainer.data.sources import image_folder_source
    from mae_trainer.data.write import WriteSettings, write_beton
    from mae_trainer.training.feature_eval import stratified_split

    raw = tmp_path / "raw.beton"
    write_beton(image_folder_source(jpeg_folder), raw, WriteSettings(max_resolution=512, write_mode="raw"))
    beton, folder = open_labelled(raw), open_labelled(jpeg_folder)
    assert beton.labels == folder.labels and beton.classes == folder.classes
    for i in range(len(folder)):  # raw pixels come back exactly as the JPEG decodes
        with folder.open(folder.order[i]) as image:
            assert np.array_equal(np.asarray(beton.open(i)), np.asarray(image.convert("RGB")))

    train, held = (part.tolist() for part in stratified_split(np.asarray(folder.labels), 0.34, seed=1))
    assert sorted(train + held) == list(range(len(folder)))
    assert sorted(folder.labels[i] for i in held) == [0, 0, 1, 1]  # per class
    again = stratified_split(np.asarray(folder.labels), 0.34, seed=1)
    assert (again[0].tolist(), again[1].tolist()) == (train, held)

    mean, std = [0.5] * 3, [0.25] * 3
    for augment in ("randaug", "three", "none"):
        x, label = LabelledImages(folder, train, train_transform(48, augment, mean, std, 0.25))[0]
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and label in (0, 1)
    x, _ = LabelledImages(folder, held, eval_transform(48, mean, std))[0]
    assert x.shape == (3, 48, 48)

    torch.manual_seed(0)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    outcomes = {ThreeAugment()(photo).tobytes() for _ in range(30)}
    assert len(outcomes) >= 3  # grayscale, solarize and blur (random radius) all occur


def test_finetune_cli_on_real_jpegs_learns_and_saves_the_best(pretrained, tmp_path, jpeg_folder):
    path, _ = pretrained
    out = tmp_path / "ft"
    result = run_main(
        "finetune",
        "--model",
        str(path),
        "--train",
        str(jpeg_folder),
        "--val-fraction",
        "0.34",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "1",
        "--log-every",
        "1",
        "--blr",
        "1e-2",
        "--output-dir",
        str(out),
        check=True,
    )
    best = json.loads(result.stdout.strip().splitlines()[-1])
    assert best["val_images"] == 4 and 0 <= best["val_acc1"] <= 1
    saved = json.loads((out / "results.json").read_text())
    assert saved == {k: v for k, v in best.items() if k != "finetune"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val/acc1" in r] == [0, 1, 2]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert all(0 <= r["train/acc1"] <= 1 for r in records if "train/loss" in r)
    tuned = MAEForImageClassification.from_pretrained(out)
    assert tuned.config.num_labels == 2 and tuned.config.id2label == {0: "class_0", 1: "class_1"}
    assert next(tuned.parameters()).dtype == torch.float32


def test_finetune_errors_name_the_flag(pretrained, tmp_path, jpeg_folder):
    path, _ = pretrained
    base = ["finetune", "--train", str(jpeg_folder), "--output-dir", str(tmp_path / "x")]
    bad_model = run_main(*base, "--model", str(tmp_path))
    assert bad_model.returncode == 2 and f"--model {tmp_path}: no config.json" in bad_model.stderr
    odd = run_main(*base, "--model", str(path), "--batch-size", "3")
    assert odd.returncode == 2 and "--batch-size 3" in odd.stderr and "even" in odd.stderr
    missing = run_main("finetune", "--model", str(path), "--train", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--train" in missing.stderr and "no such file" in missing.stderr
    assert not (tmp_path / "x").exists()
    ffcv = run_main(*base, "--model", str(path), "--loader", "ffcv")
    assert ffcv.returncode == 2 and "--loader ffcv: needs a .beton --train" in ffcv.stderr

    # the output folder of a running fine-tune (or pre-training) is locked: one shared piece (lifecycle.py);
    # the lock is this process's, the refused command another's
    from mae_trainer.training.lifecycle import lock_output_dir, release_output_locks

    busy = tmp_path / "busy"
    lock_output_dir(busy)
    try:
        refused = run_cli(
            "finetune", "--model", str(path), "--train", str(jpeg_folder), "--output-dir", str(busy)
        )
    finally:
        release_output_locks()
    assert refused.returncode == 2 and "another run is writing into this folder" in refused.stderr


@pytest.mark.slow
def test_finetune_two_ranks_deepspeed_on_an_hf_dataset(pretrained, tmp_path, jpeg_folder):
    """Two ranks under ZeRO-1 BF16, data from a `datasets` save_to_disk folder, an fp32 EMA of the BF16
    weights; held-out metrics are reduced over both ranks, and the best model is saved as consolidated fp32
    weights."""
    import datasets

    path, _ = pretrained
    hf = datasets.load_dataset("imagefolder", data_dir=str(jpeg_folder))
    hf.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "ft"
    result = run_real(
        command_cmd(
            "finetune",
            "cpu_2proc.yaml",
            *("--model", str(path), "--train", str(tmp_path / "hf"), "--val-fraction", "0.34"),
            *("--epochs", "2", "--warmup-epochs", "0", "--batch-size", "4", "--num-workers", "0"),
            *("--log-every", "1", "--ema-decay", "0.9", "--output-dir", str(out)),
        )
    )
    assert "on 2 process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in result.stdout
    best = json.loads((out / "results.json").read_text())
    assert best["val_images"] == 4 and best["ema"]["val_images"] == 4  # each rank its half, reduced
    ema = MAEForImageClassification.from_pretrained(out / "ema")  # fp32 EMA of the BF16 weights
    assert next(ema.parameters()).dtype == torch.float32
    tuned = MAEForImageClassification.from_pretrained(out)
    assert next(tuned.parameters()).dtype == torch.float32
    start = MAEForImageClassification.from_pretrained(path, num_labels=2)
    moved = (tuned.mae.blocks[0].attn.qkv.weight - start.mae.blocks[0].attn.qkv.weight).abs().max()
    assert moved > 0  # the encoder was trained, not only the head
