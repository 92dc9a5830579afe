"""write-dataset sources beyond folders: local Parquet/Arrow files, WebDataset .tar shards, a Hub dataset
streamed from the loopback Hub. Real files: the JPEGs of ``jpeg_folder``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_trainer.data.labelled import open_labelled
from mae_trainer.data.streamed import expand_braces

from .conftest import ROOT, TOKEN, run_main


def jpegs(folder: Path) -> list[tuple[bytes, int, str]]:
    """(JPEG bytes, label, name) of every image of ``jpeg_folder``, in a fixed order."""
    files = sorted(folder.glob("class_*/*.jpg"))
    return [(p.read_bytes(), int(p.parent.name[-1]), f"{p.parent.name}-{p.stem}") for p in files]


def assert_beton(path: Path, labels: list[int], classes: list[str], sizes: list[tuple[int, int]]) -> None:
    """The .beton holds these labels in order, every image decodes at its size, the sidecar agrees."""
    summary = json.loads(path.with_name(path.name + ".json").read_text())
    assert summary["count"] == len(labels) and summary["classes"] == classes
    source = open_labelled(path)
    assert list(source.labels) == labels
    for item, size in enumerate(sizes):
        with source.open(item) as image:
            assert image.size == size
            assert np.asarray(image.convert("RGB")).std() > 5  # a photo, not a blank


def sizes_of(samples) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(data)).size for data, _, _ in samples]


def write(*args):
    return run_main("write-dataset", "--num-workers", "1", *args)


def test_parquet_shards_with_class_label(jpeg_folder, tmp_path):
    import datasets

    samples = jpegs(jpeg_folder)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "cup"])}
    )
    data = tmp_path / "parquet"
    data.mkdir()
    for shard, part in enumerate((samples[:5], samples[5:])):
        table = {
            "image": [{"bytes": b, "path": None} for b, _, _ in part],
            "label": [lab for _, lab, _ in part],
        }
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(data / f"train-{shard}.parquet"))
    out = tmp_path / "pq.beton"
    result = write("--source", str(data / "*.parquet"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert_beton(out, [lab for _, lab, _ in samples], ["cat", "cup"], sizes_of(samples))
    # --limit applies; --label-column none: one class named after the source
    out2 = tmp_path / "pq_unlabelled.beton"
    result = write("--source", str(data / "train-1.parquet"), "--label-column", "none", "--output", str(out2))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out2.with_name(out2.name + ".json").read_text())
    # unlabelled: one class named after the source, or (with an image field only) none
    assert summary["count"] == len(samples) - 5 and len(summary["classes"]) <= 1


def test_arrow_file_with_string_labels(jpeg_folder, tmp_path):
    import datasets

    samples = jpegs(jpeg_folder)
    names = ["zebra", "apple"]  # sorted: apple (1) first
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.Value("string")})
    table = {
        "img": [{"bytes": b, "path": None} for b, _, _ in samples],
        "kind": [names[lab] for _, lab, _ in samples],
    }
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(saved))
    arrow = next(saved.glob("*.arrow"))
    out = tmp_path / "arrow.beton"
    result = write(
        "--source",
        str(arrow),
        "--image-column",
        "img",
        "--label-column",
        "kind",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert_beton(out, [1 - lab for _, lab, _ in samples], ["apple", "zebra"], sizes_of(samples))


def write_shards(folder: Path, samples, per_shard: int, json_labels: bool = False) -> None:
    folder.mkdir()
    for shard in range(0, len(samples), per_shard):
        with tarfile.open(folder / f"shard-{shard // per_shard:04d}.tar", "w") as tar:
            for data, label, key in samples[shard : shard + per_shard]:
                label_member = (
                    ("json", json.dumps({"label": f"c{label}"}).encode())
                    if json_labels
                    else ("cls", str(label).encode())
                )
                for ext, payload in (("jpg", data), label_member):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_by_brace_range_and_glob(jpeg_folder, tmp_path):
    samples = jpegs(jpeg_folder)
    shards = tmp_path / "wds"
    write_shards(shards, samples, per_shard=4)  # 3 shards
    assert expand_braces(str(shards / "shard-{0000..0002}.tar"))[-1] == str(shards / "shard-0002.tar")
    labels = [lab for _, lab, _ in samples]
    for name, pattern in (("brace", "shard-{0000..0002}.tar"), ("glob", "shard-*.tar")):
        out = tmp_path / f"{name}.beton"
        result = write("--source", str(shards / pattern), "--output", str(out))
        assert result.returncode == 0, result.stderr
        assert_beton(out, labels, ["0", "1"], sizes_of(samples))
    # --limit reads only the start of the stream
    out = tmp_path / "limited.beton"
    result = write("--source", str(shards / "shard-{0000..0002}.tar"), "--limit", "5", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.with_name(out.name + ".json").read_text())["count"] == 5
    # --fraction on a stream of unknown length: a seeded coin per item, the same items on every run
    kept = []
    for run in range(2):
        out = tmp_path / f"fraction{run}.beton"
        result = write("--source", str(shards / "shard-*.tar"), "--fraction", "0.5", "--output", str(out))
        assert result.returncode == 0, result.stderr
        kept.append(list(open_labelled(out).labels))
    assert kept[0] == kept[1] and 0 < len(kept[0]) < len(samples)


def test_webdataset_json_label(jpeg_folder, tmp_path):
    samples = jpegs(jpeg_folder)
    shards = tmp_path / "wds_json"
    write_shards(shards, samples, per_shard=6, json_labels=True)
    out = tmp_path / "json.beton"
    result = write("--source", str(shards / "shard-{0000..0001}.tar"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert_beton(out, [lab for _, lab, _ in samples], ["c0", "c1"], sizes_of(samples))


@pytest.mark.parametrize(
    "args, start",
    [
        (["--source", "{tmp}/none/*.parquet"], "--source {tmp}/none/*.parquet: no files match"),
        (
            ["--source", "{tmp}/wds/shard-{{0007..0009}}.tar"],
            "--source {tmp}/wds/shard-{{0007..0009}}.tar: no files",
        ),
        (
            ["--source", "{tmp}/wds/shard-0000.tar", "--label-column", "kind"],
            "--label-column 'kind': not a column",
        ),
        (
            ["--source", "{tmp}/wds/shard-0000.tar", "--image-column", "png"],
            "--image-column 'png': not a column",
        ),
    ],
)
def test_bad_sources_are_one_line_before_any_output(args, start, jpeg_folder, tmp_path):
    write_shards(tmp_path / "wds", jpegs(jpeg_folder)[:2], per_shard=2)
    out = tmp_path / "bad.beton"
    result = write(*[a.format(tmp=tmp_path) for a in args], "--output", str(out))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and start.format(tmp=tmp_path) in message, message
    assert not list(tmp_path.glob("*.beton*")) and not list(tmp_path.glob(".*"))


def stream_env(hub, home: Path) -> dict[str, str]:
    """A write-dataset process that streams from the loopback Hub, with its own empty HF_HOME."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(home),
        "OMP_NUM_THREADS": "1",
    }


def run_module(*args: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mae_trainer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_hub_dataset_streamed(jpeg_folder, tmp_path, hub):
    """Parquet shards uploaded with the real HfApi to a dataset repo, streamed back by load_dataset."""
    import datasets
    from huggingface_hub import HfApi

    samples = jpegs(jpeg_folder)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "cup"])}
    )
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    for shard, part in enumerate((samples[:7], samples[7:])):
        table = {
            "image": [{"bytes": b, "path": None} for b, _, _ in part],
            "label": [lab for _, lab, _ in part],
        }
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(data / f"train-{shard:05d}-of-00002.parquet")
        )
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("alice/pets", repo_type="dataset")
    api.upload_folder(folder_path=str(tmp_path / "repo"), repo_id="alice/pets", repo_type="dataset")
    env = stream_env(hub, tmp_path / "hf_home")
    # --source-type hub: the Hub even where a local folder has the name (datasets alone would read that)
    local = tmp_path / "cwd" / "alice" / "pets" / "dog"
    local.mkdir(parents=True)
    (local / "a.jpg").write_bytes(samples[0][0])
    out = tmp_path / "hub.beton"
    args = ("--source", "alice/pets", "--source-type", "hub", "--num-workers", "1", "--output", str(out))
    result = run_module("write-dataset", *args, env=env, cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_beton(out, [lab for _, lab, _ in samples], ["cat", "cup"], sizes_of(samples))
    assert not list((tmp_path / "hf_home").rglob("*.arrow"))  # streamed: no Arrow copy
    # a dataset that does not exist: one line naming it, nothing written
    missing = tmp_path / "missing.beton"
    result = run_module("write-dataset", "--source", "alice/nope", "--output", str(missing), env=env)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "mae-trainer: error: --source alice/nope: no such dataset on the Hub"
    ), result.stderr[-3000:]
    assert "no local file or folder of that name either" in result.stderr
    assert not missing.exists()
