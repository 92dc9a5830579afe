"""The writer on real awkward files, Hugging Face datasets sources, subsets, and interruption."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from mae_trainer.data.demo import load_photo
from mae_trainer.data.write import WriteSettings, image_folder_source, resolve_source, write_beton

from .conftest import BIN, ROOT


def read_images(path):
    """Every stored image as an array, through FFCV's reader (sizes differ, so decode one at a time)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    loader = Loader(
        str(path),
        batch_size=1,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0)],
            "label": [IntDecoder(), ToTensor()],
        },
    )
    return [(image[0].copy(), int(label)) for image, label in loader]  # FFCV reuses its buffers


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """Real photo content saved in every awkward way a crawl produces."""
    root = tmp_path_factory.mktemp("awkward")
    (root / "a").mkdir()
    photo = load_photo("chelsea.png").resize((120, 90))
    photo.save(root / "a" / "rgb.jpg", quality=90)
    photo.convert("CMYK").save(root / "a" / "cmyk.jpg", quality=90)
    photo.convert("L").save(root / "a" / "gray.jpg", quality=90)
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "a" / "gray16.png")  # 16-bit PNG (mode I;16)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 0))  # fully transparent: must come out white, not black
    rgba.save(root / "a" / "alpha.png")
    photo.convert("P").save(root / "a" / "palette.png")
    photo.resize((6, 5)).save(root / "a" / "tiny.png")
    whole = (root / "a" / "rgb.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (root / "a" / "empty.png").write_bytes(b"")
    return root


def test_awkward_images_are_converted_or_skipped(awkward_folder, tmp_path):
    out = tmp_path / "awkward.beton"
    summary = write_beton(
        image_folder_source(awkward_folder), out, WriteSettings(write_mode="raw", num_workers=2)
    )
    skipped = {item["file"].rsplit("/", 1)[1]: item["reason"] for item in summary["skipped"]}
    assert set(skipped) == {"tiny.png", "truncated.jpg", "corrupt.jpg", "empty.png"}
    assert skipped["tiny.png"].startswith("too small (6x5")
    assert all(
        skipped[name].startswith("unreadable") for name in ("truncated.jpg", "corrupt.jpg", "empty.png")
    )
    assert summary["count"] == 6 and json.loads((tmp_path / "awkward.beton.json").read_text()) == summary
    kept = sorted(p.name for p in (awkward_folder / "a").iterdir() if p.name not in skipped)
    images = dict(zip(kept, (image for image, _ in read_images(out))))
    assert images["alpha.png"].min() == 255  # transparent composited on white
    gray = images["gray16.png"].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and abs(gray.mean() - images["gray.jpg"].mean()) < 3
    for name in ("cmyk.jpg", "palette.png", "gray.jpg"):
        assert abs(images[name].astype(int).mean() - images["rgb.jpg"].astype(int).mean()) < 12, name


def test_limit_and_fraction(jpeg_folder, tmp_path):
    source = image_folder_source(jpeg_folder)
    source.select(limit=5)
    assert len(source) == 5 and source.order == [0, 1, 2, 3, 4]
    source = image_folder_source(jpeg_folder)
    source.select(fraction=0.5, seed=1)
    again = image_folder_source(jpeg_folder)
    again.select(fraction=0.5, seed=1)
    assert len(source) == 6 and source.order == again.order and source.order == sorted(source.order)
    summary = write_beton(source, tmp_path / "half.beton", WriteSettings(num_workers=1))
    assert summary["count"] == 6


@pytest.fixture(scope="module")
def hf_dataset_dir(tmp_path_factory, jpeg_folder):
    import datasets

    paths = image_folder_source(jpeg_folder).paths
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "cup"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "label": [0 if "class_0" in str(p) else 1 for p in paths]},
        features=features,
    )
    target = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(3))}).save_to_disk(str(target))
    return target


def test_hf_load_from_disk_source(hf_dataset_dir, jpeg_folder, tmp_path):
    source = resolve_source(str(hf_dataset_dir), split="validation")
    assert source.classes == ["cat", "cup"] and len(source) == 3
    source = resolve_source(str(hf_dataset_dir))  # auto-detected, train split
    out = tmp_path / "hf.beton"
    summary = write_beton(source, out, WriteSettings(write_mode="raw", num_workers=2))
    assert summary["count"] == 12 and summary["classes"] == ["cat", "cup"]
    folder = write_beton(
        image_folder_source(jpeg_folder), tmp_path / "f.beton", WriteSettings(write_mode="raw")
    )
    assert folder["count"] == 12
    ours, theirs = read_images(out), read_images(tmp_path / "f.beton")
    assert all(np.array_equal(a, b) and la == lb for (a, la), (b, lb) in zip(ours, theirs))


def test_hf_imagefolder_source_and_column_errors(jpeg_folder, hf_dataset_dir, tmp_path):
    from mae_trainer.errors import UsageError

    source = resolve_source(str(jpeg_folder), kind="hf-imagefolder")
    assert len(source) == 12 and source.classes == ["class_0", "class_1"]
    with pytest.raises(UsageError, match="--image-column 'img'"):
        resolve_source(str(hf_dataset_dir), image_column="img")
    with pytest.raises(UsageError, match="--split 'test'"):
        resolve_source(str(hf_dataset_dir), split="test")
    unlabeled = resolve_source(str(hf_dataset_dir), label_column=None)
    assert set(unlabeled.labels) == {0}


@pytest.mark.slow
def test_ctrl_c_leaves_no_file(tmp_path):
    """Interrupt a real write half-way: no output, no partial file, exit status 130."""
    src = tmp_path / "many" / "x"
    src.mkdir(parents=True)
    photo = load_photo("astronaut.png")
    for i in range(400):
        photo.crop((i, i, i + 400, i + 400)).save(src / f"{i}.png")
    out = tmp_path / "big.beton"
    proc = subprocess.Popen(
        [
            str(BIN / "mae-trainer"),
            "write-dataset",
            "--source",
            str(src.parent),
            "--output",
            str(out),
            "--write-mode",
            "raw",
            "--max-resolution",
            "400",
            "--num-workers",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob(".big.beton.partial-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many"]
