"""The one reader of labelled splits (``data/labelled.py``) on real files: a .beton written by our writer,
the ImageFolder of real JPEGs it came from and a saved Hugging Face dataset of the same JPEGs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mae_trainer.data.labelled import centre_crop_batches, open_labelled
from mae_trainer.downstream import finetune_plan, probe
from mae_trainer.errors import InputError

from .test_probe import unlabelled_beton


@pytest.fixture(scope="module")
def labelled_beton(tmp_path_factory, jpeg_folder):
    """``jpeg_folder`` written by our writer as raw pixels (so both decode paths see the same pixels)."""
    from mae_trainer.data.sources import image_folder_source
    from mae_trainer.data.write import WriteSettings, write_beton

    path = tmp_path_factory.mktemp("labelled") / "split.beton"
    write_beton(image_folder_source(jpeg_folder), path, WriteSettings(max_resolution=512, write_mode="raw"))
    return path


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory, jpeg_folder):
    """``jpeg_folder`` through the ``imagefolder`` builder, saved with ``save_to_disk`` (a DatasetDict
    with one split, ``train``)."""
    import datasets

    path = tmp_path_factory.mktemp("hf") / "saved"
    datasets.load_dataset("imagefolder", data_dir=str(jpeg_folder)).save_to_disk(str(path))
    return path


def rgb(source, index: int) -> np.ndarray:
    with source.open(source.order[index]) as image:
        return np.asarray(image.convert("RGB"))


def test_beton_folder_and_saved_dataset_give_the_same_split(labelled_beton, jpeg_folder, saved_dataset):
    beton, folder, hf = (
        open_labelled(labelled_beton),
        open_labelled(jpeg_folder),
        open_labelled(saved_dataset),
    )
    assert folder.classes == beton.classes == hf.classes == ["class_0", "class_1"]
    assert beton.labels == folder.labels == [0] * 6 + [1] * 6
    assert len(beton) == len(folder) == len(hf) == 12
    for i in range(len(folder)):  # the writer keeps the folder's order; raw pixels are the decoded JPEG
        assert np.array_equal(rgb(beton, i), rgb(folder, i))
    # datasets orders the files its own way: match each of its images to the folder's by pixels
    by_pixels = {rgb(folder, i).tobytes(): folder.labels[i] for i in range(len(folder))}
    assert [by_pixels[rgb(hf, i).tobytes()] for i in range(len(hf))] == hf.labels


def test_centre_crop_batches_agree_between_beton_and_folder(labelled_beton, jpeg_folder):
    """The probe's two decode paths: FFCV's centre-crop loader (.beton) and torchvision (folder)."""
    images, labels = {}, {}
    for kind, path in (("beton", labelled_beton), ("folder", jpeg_folder)):
        # clone as they come: FFCV's loader reuses its output buffers from batch to batch
        found = [
            (x.clone(), y.reshape(-1).clone()) for x, y in centre_crop_batches(open_labelled(path), 32, 5, 1)
        ]
        images[kind], labels[kind] = (torch.cat(part) for part in zip(*found))
    assert images["beton"].shape == images["folder"].shape == (12, 3, 32, 32)
    assert images["beton"].dtype == images["folder"].dtype == torch.uint8
    assert labels["beton"].tolist() == labels["folder"].tolist() == [0] * 6 + [1] * 6
    # close, not equal (other resamplers, crop offsets rounded differently on odd sizes): about 4 levels
    # apart on average; images paired with their neighbours' are about 30 apart
    gap = (images["beton"].float() - images["folder"].float()).abs().mean()
    assert gap < 6, gap


def refusal(path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        open_labelled(path, **kwargs)
    assert "--" not in str(err.value)  # the library never names a flag
    return str(err.value)


def test_unlabelled_and_empty_inputs_are_refused_naming_the_file(tmp_path, jpeg_folder):
    beton = unlabelled_beton(tmp_path / "unlabelled.beton")  # FFCV's writer, an image field only
    message = refusal(beton)
    assert message.startswith(f"{beton}: has no 'label' field (fields: image)")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert refusal(empty).startswith(f"{empty}: no class sub-directories")
    flat = tmp_path / "flat"  # images without class sub-directories carry no labels
    flat.mkdir()
    shutil.copy(next(jpeg_folder.rglob("*.jpg")), flat / "a.jpg")
    assert refusal(flat).startswith(f"{flat}: no class sub-directories")
    (empty / "cats").mkdir()
    assert refusal(empty).startswith(f"{empty}: no images found")
    assert refusal(tmp_path / "nope").startswith(f"{tmp_path / 'nope'}: no such file or directory")
    text = tmp_path / "notes.beton"
    text.write_text("not a beton")
    assert refusal(text).startswith(f"{text}: not an FFCV .beton file")


def test_saved_dataset_splits_columns_and_missing_labels(tmp_path, saved_dataset):
    import datasets

    assert open_labelled(saved_dataset, split="train").name == f"{saved_dataset}:train"
    assert refusal(saved_dataset, split="validation").startswith(
        f"{saved_dataset}: has no split 'validation'"
    )
    assert "has no column 'labels'" in refusal(saved_dataset, label_column="labels")

    two = tmp_path / "two"
    loaded = datasets.load_from_disk(str(saved_dataset))
    datasets.DatasetDict({"train": loaded["train"], "test": loaded["train"]}).save_to_disk(str(two))
    assert refusal(two).startswith(f"{two}: holds the splits train, test; open one ({two / 'train'})")
    assert len(open_labelled(two / "test")) == 12  # one split's own folder

    unlabelled = tmp_path / "unlabelled"  # datasets' test splits mark a missing label -1
    features = loaded["train"].features
    loaded["train"].map(lambda row: {"label": -1}, features=features).save_to_disk(str(unlabelled))
    assert refusal(unlabelled).startswith(f"{unlabelled}: 12 of 12 samples have no label")


def test_held_out_split_must_number_the_classes_as_the_training_split(tmp_path, jpeg_folder, labelled_beton):
    train = open_labelled(labelled_beton)
    subset = tmp_path / "subset"  # the first class only: its labels mean the same
    shutil.copytree(jpeg_folder / "class_0", subset / "class_0")
    assert open_labelled(subset, train=train).classes == ["class_0"]
    other = tmp_path / "other"  # the second class alone would be numbered 0
    shutil.copytree(jpeg_folder / "class_1", other / "class_1")
    assert refusal(other, train=train).startswith(
        f"{other}: classes ['class_1'] differ from {labelled_beton}'s"
    )


def test_commands_prefix_the_flag(tmp_path, jpeg_folder, saved_dataset):
    from mae_trainer.cli.flags import usage_message
    from mae_trainer.config import ConfigError, FinetuneConfig

    def message(call, *args) -> str:
        with pytest.raises(ConfigError) as err:
            call(*args)
        return usage_message(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert message(probe.open_split, empty, "train").startswith(f"--train {empty}: no class sub-directories")
    train = probe.open_split(saved_dataset, "train")  # the probe reads saved datasets too
    images, labels = next(iter(centre_crop_batches(train, 32, 12, 0)))
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == train.labels
    other = tmp_path / "other"
    shutil.copytree(jpeg_folder / "class_1", other / "class_1")
    assert message(probe.open_split, other, "val", train).startswith(f"--val {other}: classes")
    config = FinetuneConfig(model="m", train=jpeg_folder, val=saved_dataset)
    train = finetune_plan.open_split(config, "train")
    assert message(finetune_plan.open_split, config, "val", train).startswith(
        f"--val {saved_dataset}: has no split 'validation'"
    )
