"""Writing real JPEGs to .beton and reading them back through FFCV's own decoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mae_trainer.data.beton import check_beton
from mae_trainer.data.sources import image_folder_source
from mae_trainer.data.write import WriteSettings, write_beton
from mae_trainer.errors import InputError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def same_size_folder(tmp_path_factory):
    """Real JPEGs of one size (FFCV's SimpleRGBImageDecoder reads only constant-size images)."""
    from mae_trainer.data.demo import load_photo

    root = tmp_path_factory.mktemp("same")
    for name in ["astronaut.png", "rocket.jpg"]:
        (root / name.split(".")[0]).mkdir()
        photo = load_photo(name)
        for i in range(3):
            photo.crop((i * 40, i * 30, i * 40 + 240, i * 30 + 180)).resize((160, 120)).save(
                root / name.split(".")[0] / f"{i}.jpg", quality=92
            )
    return root


def read_all(path, count):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    loader = Loader(
        str(path),
        batch_size=count,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder(), ToTensor()]},
    )
    images, labels = next(iter(loader))
    return images, labels.view(-1).tolist()


def source_pixels(folder):
    source = image_folder_source(folder)
    return [np.asarray(Image.open(p).convert("RGB")) for p in source.paths], source.labels


def test_raw_mode_stores_the_pil_decode_exactly(same_size_folder, tmp_path):
    out = tmp_path / "raw.beton"
    write_beton(image_folder_source(same_size_folder), out, WriteSettings(write_mode="raw", num_workers=1))
    images, labels = read_all(out, 6)
    expected, expected_labels = source_pixels(same_size_folder)
    assert labels == expected_labels == [0, 0, 0, 1, 1, 1]
    for got, want in zip(images, expected):
        assert np.array_equal(got, want)


def test_jpg_mode_is_close_to_the_pil_decode(same_size_folder, tmp_path):
    out = tmp_path / "jpg.beton"
    write_beton(
        image_folder_source(same_size_folder),
        out,
        WriteSettings(write_mode="jpg", jpeg_quality=95, num_workers=2),
    )
    images, _ = read_all(out, 6)
    expected, _ = source_pixels(same_size_folder)
    scores = [psnr(got, want) for got, want in zip(images, expected)]
    assert min(scores) > 33, scores  # one extra JPEG generation at quality 95
    assert not any(np.array_equal(got, want) for got, want in zip(images, expected))  # it really re-encoded


def test_max_resolution_and_sidecar(jpeg_folder, tmp_path):
    from ffcv.reader import Reader

    out = tmp_path / "small.beton"
    summary = write_beton(
        image_folder_source(jpeg_folder), out, WriteSettings(max_resolution=128, num_workers=2)
    )
    meta = Reader(str(out)).metadata["f0"]
    sizes = [Image.open(p).size for p in image_folder_source(jpeg_folder).paths]
    for (w, h), width, height in zip(sizes, meta["width"], meta["height"]):
        assert max(width, height) == min(128, max(w, h))
        assert abs(width / height - w / h) < 0.05
    sidecar = json.loads((tmp_path / "small.beton.json").read_text())
    assert sidecar == summary and sidecar["count"] == 12 and sidecar["classes"] == ["class_0", "class_1"]
    assert sidecar["settings"]["max_resolution"] == 128 and sidecar["skipped"] == []
    assert check_beton(out) == 12


def test_unreadable_images_are_skipped_and_listed(jpeg_folder, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(jpeg_folder, folder)
    (folder / "class_0" / "garbage.jpg").write_bytes(b"this is not an image")
    whole = (folder / "class_1" / "img_0.jpg").read_bytes()
    (folder / "class_1" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "mixed.beton"
    summary = write_beton(image_folder_source(folder), out, WriteSettings(num_workers=2))
    assert summary["count"] == 12
    assert sorted(item["file"].rsplit("/", 1)[1] for item in summary["skipped"]) == [
        "garbage.jpg",
        "truncated.jpg",
    ]
    assert all(item["reason"].startswith("unreadable") for item in summary["skipped"])
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_existing_output_is_not_overwritten(jpeg_folder, tmp_path):
    out = tmp_path / "keep.beton"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match=rf"^{out}: already exists") as info:
        write_beton(image_folder_source(jpeg_folder), out, WriteSettings())
    assert info.value.argument == "output"
    assert out.read_bytes() == b"precious"


def test_training_loader_yields_uint8_crops_of_each_image_once(demo_beton):
    from mae_trainer.data.resolution import ResolutionSchedule, parse_steps
    from mae_trainer.data.train_loader import ProgressiveLoader

    schedule = ResolutionSchedule(kind="steps", resolution=96, batch_size=16, steps=parse_steps("0:64,1:96"))
    loader = ProgressiveLoader(demo_beton, schedule, num_workers=2, seed=3)
    first = [(b.images.clone(), b.labels.clone()) for b in loader.epoch(0)]
    assert len(first) == 512 // 16
    images, labels = first[0]
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 64, 64)
    assert labels.dtype == torch.int64 and labels.shape == (16,) and 0 <= labels.min() and labels.max() < 16
    assert images.float().std() > 10  # real pixels, not a constant
    second = next(iter(loader.epoch(1)))
    assert second.images.shape == (16, 3, 96, 96) and second.resolution == 96
    all_labels = torch.cat([y for _, y in first])
    assert sorted(all_labels.tolist()) == sorted(np.repeat(np.arange(16), 32).tolist())  # each image once


@pytest.mark.parametrize("write_mode", ["jpg", "raw"])
def test_fixed_images_are_the_eval_loaders_centre_crops(jpeg_folder, tmp_path, write_mode):
    """The reconstruction grids' images, decoded without a loader, are the evaluation loader's pixels
    (FFCV's centre-crop decoder) of the same evenly spread samples, JPEG or raw."""
    from mae_trainer.data.eval_loader import eval_loader, fixed_images

    path = tmp_path / f"{write_mode}.beton"
    write_beton(image_folder_source(jpeg_folder), path, WriteSettings(write_mode=write_mode, num_workers=1))
    total = check_beton(path)
    for resolution, count in [(48, 5), (96, 3), (64, total + 4)]:
        images = fixed_images(path, resolution, count)
        spread = np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()
        loader = eval_loader(
            path, batch_size=len(spread), resolution=resolution, num_workers=1, indices=spread
        )
        expected = next(iter(loader))[0]
        assert images.dtype == torch.uint8 and images.shape == (len(spread), 3, resolution, resolution)
        assert images.is_contiguous() and torch.equal(images, expected)


def test_check_beton_rejects_other_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        check_beton(tmp_path / "missing.beton")
    fake = tmp_path / "fake.beton"
    fake.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match=r"not an FFCV \.beton file"):
        check_beton(fake)


def test_check_beton_refuses_truncated_and_inconsistent_files(demo_beton, tmp_path):
    whole = demo_beton.read_bytes()
    for cut in (40, 24, 1):  # 24 bytes: exactly the last allocation record; 40 and 1 end mid-record
        damaged = tmp_path / f"cut_{cut}.beton"
        damaged.write_bytes(whole[:-cut])
        with pytest.raises(InputError, match=r"damaged \.beton file .*truncated"):
            check_beton(damaged)
    # a sample whose data pointer was overwritten points outside every allocation
    from ffcv.reader import Reader

    reader = Reader(str(demo_beton))
    offset = reader.header.itemsize + reader.field_descriptors.nbytes
    record = reader.metadata.itemsize
    pointer = reader.metadata.dtype.fields["f0"][1] + reader.metadata.dtype["f0"].fields["data_ptr"][1]
    broken = bytearray(whole)
    broken[offset + 5 * record + pointer : offset + 5 * record + pointer + 8] = (12345).to_bytes(8, "little")
    inconsistent = tmp_path / "inconsistent.beton"
    inconsistent.write_bytes(bytes(broken))
    with pytest.raises(InputError, match=r"sample 5 point|first: sample 5"):
        check_beton(inconsistent)
    assert check_beton(demo_beton) == 512  # the intact file still passes
