"""The writer on real awkward files, Hugging Face datasets sources, subsets, and interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_trainer.data.demo import load_photo
from mae_trainer.data.sources import image_folder_source
from mae_trainer.data.streamed import resolve_source
from mae_trainer.data.write import WriteSettings, write_beton

from .conftest import BIN, ROOT, output_tail, run_cli, run_main, wait_for
from .test_cli import assert_one_line_error


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


@pytest.fixture(scope="module")
def sixteen_classes(tmp_path_factory):
    """An ImageFolder tree of 16 classes of real JPEGs, 4 images each (class_15 has 10), and one empty
    class folder (``empty``, holding a text file only)."""
    root = tmp_path_factory.mktemp("sixteen")
    photo = load_photo("coffee.png")
    for c in range(16):
        (root / f"class_{c:02d}").mkdir()
        for i in range(10 if c == 15 else 4):
            crop = photo.crop((c * 9 + i, i * 5, c * 9 + i + 200, i * 5 + 160)).resize((40, 32))
            crop.save(root / f"class_{c:02d}" / f"img_{i}.jpg", quality=90)
    (root / "empty").mkdir()
    (root / "empty" / "README.txt").write_text("no images here")
    return root


def test_limit_and_fraction_keep_every_class_in_proportion(sixteen_classes, jpeg_folder, tmp_path):
    """``--limit``/``--fraction`` pick a seeded subset stratified by class, in source order; an empty class
    folder is no class; the summary counts what was written."""
    source = image_folder_source(sixteen_classes)
    assert len(source.classes) == 16 and "empty" not in source.classes and len(source) == 70
    source.select(limit=35, seed=3)
    counts = source.class_counts()
    assert len(source) == 35 and counts["class_15"] == 5 and set(counts.values()) == {2, 5}
    assert source.order == sorted(source.order)
    again = image_folder_source(sixteen_classes)
    again.select(limit=35, seed=3)
    other = image_folder_source(sixteen_classes)
    other.select(limit=35, seed=4)
    assert again.order == source.order != other.order
    half = image_folder_source(jpeg_folder)
    half.select(fraction=0.5, seed=1)
    assert len(half) == 6 and half.class_counts() == {"class_0": 3, "class_1": 3}
    few = image_folder_source(jpeg_folder)
    few.select(limit=5, fraction=0.5)
    assert len(few) == 5 and sorted(few.class_counts().values()) == [2, 3]

    out = tmp_path / "subset.beton"
    args = ["write-dataset", "--source", str(sixteen_classes), "--output", str(out), "--num-workers", "1"]
    result = run_main(*args, "--limit", "16")
    assert result.returncode == 0, result.stderr
    assert "wrote 16 images (16 JPEG, 0 raw) in 16 classes to" in result.stdout
    assert f"skipped {sixteen_classes}/empty/: a class folder without images" in result.stdout
    summary = json.loads((tmp_path / "subset.beton.json").read_text())
    assert summary["count"] == 16 and len(summary["classes"]) == 16
    assert set(summary["class_counts"].values()) == {1}
    assert sorted(label for _, label in read_images(out)) == list(range(16))
    result = run_main(*args, "--limit", "3", "--overwrite")
    assert "wrote 3 images (3 JPEG, 0 raw) in 3 of 16 classes" in result.stdout, result.stdout
    summary = json.loads((tmp_path / "subset.beton.json").read_text())
    assert sum(summary["class_counts"].values()) == 3 == sum(n > 0 for n in summary["class_counts"].values())


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
    from mae_trainer.errors import InputError

    source = resolve_source(str(jpeg_folder), kind="hf-imagefolder")
    assert len(source) == 12 and source.classes == ["class_0", "class_1"]
    with pytest.raises(InputError, match=r"^'img': not a column") as info:
        resolve_source(str(hf_dataset_dir), image_column="img")
    assert info.value.argument == "image_column"
    with pytest.raises(InputError, match=r"^'test': not a split") as info:
        resolve_source(str(hf_dataset_dir), split="test")
    assert info.value.argument == "split"
    unlabeled = resolve_source(str(hf_dataset_dir), label_column=None)
    assert set(unlabeled.labels) == {0}


def test_write_dataset_refuses_outputs_it_cannot_write(jpeg_folder, tmp_path):
    """``--output`` under a file, with a name too long, onto a folder, or in a folder that refuses new files
    (sysfs refuses them even to root, which passes every permission bit): one line naming ``--output``,
    exit status 2, before any image is read; nothing is written and nothing there is removed."""
    blocker = tmp_path / "blocker"
    blocker.write_text("kept")
    taken = tmp_path / "taken.beton"
    taken.mkdir()
    (taken / "inside").write_text("kept too")
    cases = {
        blocker / "sub" / "x.beton": f"--output {blocker}/sub: cannot create the folder ({blocker} is a file",
        blocker / "x.beton": f"--output {blocker}: exists and is not a folder",
        tmp_path / ("x" * 300) / "x.beton": "cannot create the folder (File name too long)",
        taken: f"--output {taken}: is a folder",
    }
    if os.path.isdir("/sys"):
        cases[Path("/sys/mae_trainer_test.beton")] = "--output /sys: cannot write in the folder (Permission"
    for output, words in cases.items():
        args = ["write-dataset", "--source", str(jpeg_folder), "--output", str(output)]
        assert_one_line_error(run_main(*args), words)
        if output.parent == tmp_path:
            assert_one_line_error(run_main(*args, "--overwrite"), words)
    # and in a process of its own: the one line, no traceback
    result = run_cli("write-dataset", "--source", str(jpeg_folder), "--output", str(blocker / "x.beton"))
    assert_one_line_error(result, f"--output {blocker}: exists and is not a folder")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "blocker",
        "taken.beton",
        "taken.beton/inside",
    ]
    assert blocker.read_text() == "kept" and (taken / "inside").read_text() == "kept too"


def start_long_write(tmp_path, log):
    """A real ``write-dataset`` run that lasts ~20 s (2000 hard links to one 500x400 photo, one worker),
    returned once its hidden partial output exists: FFCV's writer creates it after our signal handlers are
    in place and before the first image, so interrupting it then always lands mid-write. Its stderr goes
    to ``log`` (a pipe left unread while we wait could fill up and stall it)."""
    import os

    src = tmp_path / "many" / "x"
    src.mkdir(parents=True)
    load_photo("astronaut.png").resize((500, 400)).save(src / "0.jpg", quality=90)
    for i in range(1, 2000):
        os.link(src / "0.jpg", src / f"{i}.jpg")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                str(BIN / "mae-trainer"),
                "write-dataset",
                "--source",
                str(src.parent),
                "--output",
                str(tmp_path / "big.beton"),
                "--num-workers",
                "1",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    wait_for(lambda: any(tmp_path.glob(".big.beton.partial-*")), proc, "the partial output file", log=log)
    assert proc.poll() is None, "finished before it could be interrupted" + output_tail(log)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_write_leaves_no_file(tmp_path, tmp_path_factory, signum, status):
    """Ctrl-C or SIGTERM half-way through a real write: no output, no partial file, 128 + the signal."""
    log = tmp_path_factory.mktemp("log") / "write.log"
    proc = start_long_write(tmp_path, log)
    proc.send_signal(signum)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"write-dataset still running 600 s after signal {signum}{output_tail(log)}")
    err = log.read_text()
    assert proc.returncode == status, err[-2000:]
    assert "mae-trainer: interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many"]


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """Images PIL opens that once hung the writer, were stored sideways or were dropped without a word."""
    root = tmp_path_factory.mktemp("odd")
    (root / "a").mkdir()
    photo = load_photo("chelsea.png")
    photo.resize((3000, 10)).save(root / "a" / "elongated.png")  # 500x2 at max side 500
    photo.resize((600, 40)).save(root / "a" / "wide.png")  # 500x33: kept
    photo.resize((9000, 6000)).save(root / "a" / "huge.jpg", quality=85)  # 54 Mpx, drafted down
    frame = photo.resize((200, 150))
    frame.save(root / "a" / "animated.gif", save_all=True, append_images=[frame.rotate(20)])
    frame.save(root / "a" / "picture.tif")
    frame.save(root / "a" / "picture.bmp")
    frame.save(root / "a" / "picture.webp")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright = photo.resize((160, 240))
    upright.rotate(90, expand=True).save(root / "a" / "exif_rotated.jpg", quality=95, exif=exif)
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_odd_images_are_written_or_listed_never_dropped(odd_folder, tmp_path):
    from ffcv.reader import Reader

    out = tmp_path / "odd.beton"
    summary = write_beton(image_folder_source(odd_folder), out, WriteSettings(num_workers=2))
    skipped = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in summary["skipped"]}
    assert set(skipped) == {"elongated.png", "notes.txt"}, skipped
    assert "too elongated (3000x10 would be stored as 500x2" in skipped["elongated.png"]
    assert "not an image format PIL reads (.txt)" in skipped["notes.txt"]
    kept = [p.name for p in image_folder_source(odd_folder).paths if p.name != "elongated.png"]
    assert summary["count"] == len(kept) == 7 and summary["jpeg"] == 7 and summary["raw"] == 0
    meta = Reader(str(out)).metadata["f0"]
    sizes = dict(zip(kept, zip(meta["width"].tolist(), meta["height"].tolist())))
    assert sizes["huge.jpg"] == (500, 333) and sizes["wide.png"] == (500, 33)
    assert sizes["animated.gif"] == sizes["picture.tif"] == sizes["picture.webp"] == (200, 150)
    assert sizes["exif_rotated.jpg"] == (160, 240)  # upright, as a viewer shows it

    # and the pixels are the upright photo's, not the sideways file's
    def centre_32(image):  # what read_images gives: the centred square, resized to 32x32
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return np.asarray(image.crop((left, top, left + side, top + side)).resize((32, 32)), dtype=float)

    upright = load_photo("chelsea.png").resize((160, 240))
    got = read_images(out)[kept.index("exif_rotated.jpg")][0].astype(float)
    error_upright = np.abs(got - centre_32(upright)).mean()
    error_sideways = np.abs(got - centre_32(upright.rotate(90, expand=True))).mean()
    assert error_upright < 8 < 20 < error_sideways, (error_upright, error_sideways)


def test_a_file_that_vanishes_mid_write_is_skipped_and_never_reaches_the_file(jpeg_folder, tmp_path):
    """Images are checked in the pass that writes them (no probe pass): a file gone by then, as on a flaky
    network file system, is listed as skipped, and the .beton holds the others only, renumbered in order."""
    import shutil

    from ffcv.reader import Reader

    folder = tmp_path / "src"
    shutil.copytree(jpeg_folder, folder)
    source = image_folder_source(folder)
    gone = [source.paths[source.order[i]] for i in (0, 5)]
    kept = [source.paths[item] for item in source.order if source.paths[item] not in gone]
    for path in gone:
        path.unlink()
    out = tmp_path / "out" / "data.beton"
    summary = write_beton(source, out, WriteSettings(num_workers=2))
    assert summary["count"] == len(kept) == len(source) and summary["jpeg"] == len(kept)
    skipped = {e["file"]: e["reason"] for e in summary["skipped"]}
    assert set(skipped) == {str(p) for p in gone} and "FileNotFoundError" in skipped[str(gone[0])]
    reader = Reader(str(out))
    assert reader.num_samples == len(kept) and sorted(reader.alloc_table["sample_id"].tolist()) == list(
        range(len(kept))
    )
    widths = reader.metadata["f0"]["width"].tolist()
    expected = [Image.open(p).size[0] for p in kept]
    assert widths == expected and min(widths) > 8  # no placeholder left
    assert len(read_images(out)) == len(kept)  # FFCV's loader reads every sample


class UnencodableLabels:
    """A source whose labels FFCV's IntField cannot store: FFCV's worker raises outside ``__getitem__``."""

    @staticmethod
    def make(folder):
        source = image_folder_source(folder)
        source.labels = ["not a number"] * len(source.labels)
        return source


def test_a_failing_writer_worker_ends_the_write_with_a_clear_error(jpeg_folder, tmp_path):
    from mae_trainer.errors import TrainingError

    out = tmp_path / "out" / "data.beton"
    with pytest.raises(TrainingError) as caught:
        write_beton(UnencodableLabels.make(jpeg_folder), out, WriteSettings(num_workers=2))
    message = str(caught.value)
    assert f"writing {out} failed: a writer worker process failed: ValueError" in message
    assert "nothing was written" in message
    assert not out.parent.exists()  # no output, no hidden partial file, not even the folder made for them
    import multiprocessing

    assert multiprocessing.active_children() == []  # every writer worker was ended


@pytest.mark.slow
def test_a_killed_write_leaves_a_partial_the_next_write_removes(jpeg_folder, tmp_path, tmp_path_factory):
    """SIGKILL (no handler runs) leaves the hidden partial file; the next write of the same output removes
    it, and other stale partials of dead writers, but never the partial of a writer still running."""
    from .conftest import kill_tree

    log = tmp_path_factory.mktemp("log") / "write.log"
    proc = start_long_write(tmp_path, log)
    kill_tree(proc.pid)  # the writer and its FFCV worker, mid-write
    proc.wait()
    left = sorted(p.name for p in tmp_path.glob(".big.beton*"))
    assert left == [f".big.beton.partial-{proc.pid}"], left
    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that is no process any more
    (tmp_path / f".big.beton.json.partial-{dead.pid}").write_text("{")
    (tmp_path / f".big.beton.partial-{dead.pid}.failed").write_text("x")
    live = tmp_path / f".big.beton.partial-{os.getpid()}"  # this test process: alive
    live.write_text("a live writer's file")
    result = run_cli("write-dataset", "--source", str(jpeg_folder), "--output", str(tmp_path / "big.beton"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"removed {tmp_path}/.big.beton.partial-{proc.pid}: left by an earlier write" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "big.beton", "big.beton.json", "many"]
    assert json.loads((tmp_path / "big.beton.json").read_text())["count"] == 12


def test_label_column_none_writes_images_only_and_such_a_file_pretrains(jpeg_folder, tmp_path):
    """``--label-column none`` gives an image field only, for a folder and for the embedded set; pre-training
    runs on such a file (reconstruction grid included), and whatever needs labels refuses it in one line
    naming the file."""
    from ffcv.reader import Reader

    from mae_trainer.data.beton import field_names

    out = tmp_path / "unlabelled.beton"
    for source in (str(jpeg_folder), "embedded"):
        args = ["write-dataset", "--source", source, "--output", str(out), "--label-column", "none"]
        result = run_main(*args, "--limit", "12", "--num-workers", "1", "--overwrite")
        assert result.returncode == 0, result.stderr
        assert "wrote 12 images (12 JPEG, 0 raw) without labels to" in result.stdout, result.stdout
        assert Reader(str(out)).field_names == field_names(out) == ["image"], source
        summary = json.loads((tmp_path / "unlabelled.beton.json").read_text())
        assert summary["labelled"] is False and summary["classes"] == [] and summary["count"] == 12
    write_beton(image_folder_source(jpeg_folder), tmp_path / "labelled.beton", WriteSettings(num_workers=1))
    assert field_names(tmp_path / "labelled.beton") == ["image", "label"]

    run = tmp_path / "run"
    pretrain = ["pretrain", "--data", str(out), "--model", "tiny", "--resolution", "32", "--epochs", "1",
                "--warmup-epochs", "0", "--batch-size", "4", "--max-steps", "2", "--num-workers", "1",
                "--log-every", "1", "--recon-images", "4", "--report-to", "none"]  # fmt: skip
    result = run_main(*pretrain, "--output-dir", str(run))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 2
    result = run_main(*pretrain, "--output-dir", str(tmp_path / "eval"), "--eval-data", str(out))
    assert_one_line_error(result, f"{out}: has no 'label' field (fields: image); write it from a labelled")
    assert "--eval-data" in result.stderr and not (tmp_path / "eval").exists()
    probe = ["probe", "--model", str(run), "--train", str(out), "--val-fraction", "0.2", "--knn"]
    assert_one_line_error(run_main(*probe), f"{out}: has no 'label' field (fields: image)")


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs: room for one of FFCV's 8 MiB pages, not two (or a skip where mounts are refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_write_into_a_full_disk_always_ends(small_disk, tmp_path):
    """Two workers each fill one 8 MiB page and write it when their last chunk is done: the second write of
    a page hits ENOSPC after the progress bar is full, while the writing process waits for the workers'
    allocations. That wait once never ended (1 in 6 writes; here every time): now every try ends within
    seconds with one error line, status 1, and no file left on the disk."""
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    load_photo("coffee.png").resize((160, 120)).save(src / "0.jpg", quality=90)
    for i in range(1, 200):  # 4 chunks of 64: both workers get some
        os.link(src / "0.jpg", src / f"{i}.jpg")
    out = small_disk / "full.beton"
    for attempt in range(3):
        try:
            result = run_cli("write-dataset", "--source", str(src.parent), "--output", str(out), timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"try {attempt}: write-dataset still running 120 s into a full disk")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1, result.stderr[-3000:]
        assert last.startswith(f"mae-trainer: run stopped: writing {out} failed: "), result.stderr[-3000:]
        assert "a writer worker process failed: OSError: [Errno 28] No space left on device" in last
        assert last.endswith("nothing was written") and "Traceback" not in result.stderr
        assert list(small_disk.iterdir()) == [], f"try {attempt}"


def test_sigterm_ends_a_write_waiting_on_its_workers(jpeg_folder, tmp_path):
    """SIGTERM while the writing thread waits on a multiprocessing queue (as FFCV's writer waits for its
    workers' allocations) ends the wait at once: it was taken for a fork in progress and ignored forever."""
    import multiprocessing
    import queue
    import threading
    import time

    from mae_trainer.data.write_watch import WorkerWatch, WriteInterrupted

    source = image_folder_source(jpeg_folder)
    before = signal.getsignal(signal.SIGTERM)
    waiting = multiprocessing.Queue()
    with pytest.raises(WriteInterrupted) as caught:
        with WorkerWatch(source, tmp_path / "x.beton", tmp_path / ".x.beton.partial-1"):
            start = time.monotonic()
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
            try:
                waiting.get(timeout=30)
            except queue.Empty:
                pytest.fail("SIGTERM did not end the wait")
    assert caught.value.exit_status == 143 and time.monotonic() - start < 10
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_source_with_no_readable_image_writes_nothing(tmp_path):
    """Found out in the writing pass now: the write is refused in one line and leaves no file."""
    from mae_trainer.errors import InputError

    folder = tmp_path / "src" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "out" / "data.beton"
    with pytest.raises(
        InputError, match=r"none of the images can be read \(first: .*broken_0.jpg: unreadable"
    ):
        write_beton(image_folder_source(tmp_path / "src"), out, WriteSettings(num_workers=2))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
