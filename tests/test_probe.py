"""Probes (k-NN, linear) on real encoders and real files, and the shapes set they are measured on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.shapes import SHAPES, TRAIN_PHOTOS, VAL_PHOTOS, ShapeSettings, shape_samples
from mae_trainer.cli import main, parse_config
from mae_trainer.config import ProbeConfig
from mae_trainer.downstream import probe

SMALL = ShapeSettings(size=32)


def parse(*argv: str) -> ProbeConfig:
    return parse_config(["probe", *argv])


def clusters(
    count: int, classes: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random class centres (``spread`` is the noise std; centres have norm ~√dim)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(count) % classes
    return centres[labels] + spread * torch.randn(count, dim, generator=gen), labels


@pytest.mark.parametrize("probe_name", ["knn", "linear"])
def test_probes_separate_clusters_and_stay_at_chance_on_noise(probe_name):
    train_f, train_y = clusters(400, 5, 32, 0.3, seed=0)
    val_f, val_y = clusters(200, 5, 32, 0.3, seed=1)
    noise_train, noise_val = torch.randn(400, 32), torch.randn(200, 32)

    def score(train: torch.Tensor, val: torch.Tensor) -> float:
        if probe_name == "knn":
            return probe.knn_top1(train, train_y, val, val_y, k=20, temperature=0.07)
        return probe.linear_probe_top1(train, train_y, val, val_y, epochs=30, lr=0.1, batch_size=64)

    assert score(train_f, val_f) > 0.95
    assert score(noise_train, noise_val) < 0.4  # chance is 0.2


def test_linear_probe_is_deterministic_and_knn_rejects_large_k():
    train_f, train_y = clusters(100, 4, 16, 2.0, seed=0)
    val_f, val_y = clusters(60, 4, 16, 2.0, seed=1)
    runs = [probe.linear_probe_top1(train_f, train_y, val_f, val_y, epochs=5, seed=3) for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="k=101"):
        probe.knn_top1(train_f, train_y, val_f, val_y, k=101)


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = np.repeat(np.arange(4), [10, 20, 5, 2])
    train, val = probe.stratified_split(labels, 0.2, seed=0)
    again_train, again_val = probe.stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 4, 1, 1]
    assert set(labels[train]) == {0, 1, 2, 3}


def test_shapes_are_deterministic_balanced_and_held_out_photos_are_disjoint():
    images, labels = shape_samples(24, "train", seed=5, settings=SMALL)
    again, again_labels = shape_samples(24, "train", seed=5, settings=SMALL)
    assert labels == again_labels
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    assert np.bincount(labels).tolist() == [3] * len(SHAPES)
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in images)
    other, _ = shape_samples(24, "train", seed=6, settings=SMALL)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))
    val, _ = shape_samples(24, "val", seed=5, settings=SMALL)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(val[0]))
    assert not set(TRAIN_PHOTOS) & set(VAL_PHOTOS)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """A labelled train/val pair of small shapes .beton files, an ImageFolder copy of the train split and a
    saved (untrained) tiny model at 32 px."""
    from benchmarks.shapes import write_shapes_beton, write_shapes_folder
    from mae_trainer import MAEConfig, MAEForPreTraining

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_beton(root / "train.beton", 48, "train", settings=SMALL)
    write_shapes_beton(root / "val.beton", 24, "val", settings=SMALL)
    write_shapes_folder(root / "folder", *shape_samples(48, "train", settings=SMALL))
    torch.manual_seed(0)
    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32)).save_pretrained(root / "model")
    return root


def test_probe_saved_model_on_betons_writes_json(shapes_data, tmp_path, capsys):
    output = tmp_path / "probe.json"
    args = parse(
        "--model", str(shapes_data / "model"), "--train", str(shapes_data / "train.beton"),
        "--val", str(shapes_data / "val.beton"), "--knn", "--linear", "--k", "5", "--epochs", "3",
        "--num-workers", "1", "--output", str(output),
    )  # fmt: skip
    results = probe.run(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["probe"] for line in lines] == ["knn", "linear"]
    assert json.loads(output.read_text()) == results
    for result in results.values():
        assert 0.0 <= result["top1"] <= 1.0
        assert result["train_samples"] == 48 and result["val_samples"] == 24
        assert (
            result["classes"] == len(SHAPES) and result["resolution"] == 32 and result["feature_dim"] == 192
        )


def test_probe_random_init_on_image_folder_with_val_fraction(shapes_data):
    args = parse(
        "--random-init", "tiny", "--image-size", "32", "--train", str(shapes_data / "folder"),
        "--val-fraction", "0.25", "--knn", "--pool", "avg", "--k", "10", "--num-workers", "0",
    )  # fmt: skip
    result = probe.run(args)["knn"]
    assert 0.0 <= result["top1"] <= 1.0
    assert (result["train_samples"], result["val_samples"]) == (32, 16)  # round(0.25 × 6) = 2 per class
    assert result["encoder"] == "random-init:tiny" and result["pool"] == "avg"


def test_extract_features_matches_between_beton_and_folder(shapes_data):
    """The .beton (FFCV centre crop) and ImageFolder (torchvision) paths feed the encoder the same pixels."""
    from mae_trainer import MAEModel
    from mae_trainer.data.labelled import centre_crop_batches, open_labelled

    encoder = MAEModel.from_pretrained(shapes_data / "model")
    beton_data = open_labelled(shapes_data / "train.beton")
    folder = centre_crop_batches(open_labelled(shapes_data / "folder"), 32, 16, 0, 1.0)
    # 5 per batch, not a multiple of the label period: catches labels kept as views of FFCV's reused buffers
    beton_f, beton_y = probe.extract_features(encoder, centre_crop_batches(beton_data, 32, 5, 1, 1.0), "cls")
    folder_f, folder_y = probe.extract_features(encoder, folder, "cls")
    assert torch.equal(beton_y, torch.tensor(beton_data.labels))
    # ImageFolder numbers the classes in sorted directory order and lists files class by class; the .beton
    # keeps generation order with SHAPES' numbering. Map, then sort both by class (stable: file order).
    folder_y = torch.tensor([SHAPES.index(name) for name in sorted(SHAPES)])[folder_y]
    beton_order, folder_order = torch.argsort(beton_y, stable=True), torch.argsort(folder_y, stable=True)
    assert torch.equal(beton_y[beton_order], folder_y[folder_order])
    assert torch.allclose(beton_f[beton_order], folder_f[folder_order], atol=1e-4)


def unlabelled_beton(path):
    from ffcv.fields import RGBImageField
    from ffcv.writer import DatasetWriter

    images, _ = shape_samples(8, settings=SMALL)
    arrays = [np.asarray(image) for image in images]

    class Source:
        def __len__(self):
            return len(arrays)

        def __getitem__(self, index):
            return (arrays[index],)

    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw")}, num_workers=1).from_indexed_dataset(
        Source()
    )
    return path


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing-train", ["--train", "no such file"]),
        ("no-labels", ["--train", "no 'label' field"]),
        ("k-too-large", ["--k 100", "48 training samples"]),
        ("not-a-model", ["--model", "no config.json"]),
        ("no-probe", ["--knn / --linear"]),
        ("bad-fraction", ["--val-fraction 1.5"]),
        ("bad-resolution", ["--resolution 40", "patch size 16"]),
        ("unknown-preset", ["--random-init 'giant'", "unknown preset"]),
    ],
)
def test_bad_input_names_the_flag(shapes_data, tmp_path, case, needles, capsys):
    train, val, model = shapes_data / "train.beton", shapes_data / "val.beton", shapes_data / "model"
    argv = {
        "missing-train": ["--model", model, "--train", tmp_path / "nope.beton", "--val", val, "--knn"],
        "no-labels": [
            "--model",
            model,
            "--train",
            unlabelled_beton(tmp_path / "x.beton"),
            "--val",
            val,
            "--knn",
        ],
        "k-too-large": ["--model", model, "--train", train, "--val", val, "--knn", "--k", "100"],
        "not-a-model": ["--model", tmp_path, "--train", train, "--val", val, "--knn"],
        "no-probe": ["--model", model, "--train", train, "--val", val],
        "bad-fraction": ["--model", model, "--train", train, "--val-fraction", "1.5", "--knn"],
        "bad-resolution": ["--model", model, "--train", train, "--val", val, "--knn", "--resolution", "40"],
        "unknown-preset": ["--random-init", "giant", "--train", train, "--val", val, "--knn"],
    }[case]
    capsys.readouterr()  # the fixtures' progress bars
    assert main(["probe", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mae-trainer: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


def test_model_and_random_init_are_mutually_exclusive(shapes_data, capsys):
    with pytest.raises(SystemExit):
        parse("--model", "m", "--random-init", "tiny", "--train", "t", "--val", "v", "--knn")
    assert "not allowed with argument" in capsys.readouterr().err
