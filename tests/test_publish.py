"""``mae_trainer/publish.py``: outputs appear whole or not at all, and a failure leaves what was there."""

from __future__ import annotations

import json

import pytest
import torch

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.errors import InputError
from mae_trainer.publish import check_output_dir, publish_folder, publish_text, publishing


class Boom(Exception):
    pass


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_publishing_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with publishing(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".out.bin.partial")
        partial.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["out.bin"]


def test_publishing_failure_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom), publishing(target) as partial:
        partial.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]

    fresh = tmp_path / "new" / "deeper" / "x.txt"  # parents created for the write are removed again
    with pytest.raises(Boom), publishing(fresh) as partial:
        partial.write_text("half")
        raise Boom
    assert listing(tmp_path) == ["out.bin"]

    with pytest.raises(FileNotFoundError), publishing(tmp_path / "never.txt"):
        pass  # nothing written: nothing to publish
    assert listing(tmp_path) == ["out.bin"]


def test_publish_text_creates_missing_parents(tmp_path):
    target = publish_text(tmp_path / "a" / "b" / "c.yaml", "x: 1\n")
    assert target.read_text() == "x: 1\n"
    assert listing(tmp_path) == ["a", "a/b", "a/b/c.yaml"]


def test_publish_folder_moves_weights_last_and_keeps_other_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"stale")
    seen = []

    def write(staging):
        # the earlier weights are not replaced before the new save is complete
        assert (folder / "model.safetensors").read_bytes() == b"stale"
        (staging).mkdir()
        for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
            (staging / name).write_text(name)
        seen.append(staging)

    names = publish_folder(folder, write)
    assert names[-1] == "model.safetensors" and set(names) == {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
    }
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "config.json").read_text() == "config.json"
    assert listing(folder) == ["config.json", "model.safetensors", "notes.txt", "preprocessor_config.json"]
    assert not seen[0].exists()


def test_publish_folder_of_a_real_model_loads_and_replaces_a_shadowing_file(tmp_path):
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, num_hidden_layers=2))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"an earlier save")
    names = publish_folder(folder, lambda staging: model.save_pretrained(staging, max_shard_size="1MB"))
    assert names[-1] == "model.safetensors.index.json"
    assert not (folder / "model.safetensors").exists()  # it would shadow the new sharded save
    loaded = MAEForPreTraining.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mae_trainer_mae"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_publish_folder_failure_changes_nothing(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"kept")

    def fail(staging):
        staging.mkdir()
        (staging / "config.json").write_text("{}")
        raise Boom

    with pytest.raises(Boom):
        publish_folder(folder, fail)
    assert listing(tmp_path) == ["model", "model/model.safetensors"]
    with pytest.raises(Boom):
        publish_folder(tmp_path / "new" / "model", fail)
    assert listing(tmp_path) == ["model", "model/model.safetensors"]


def test_check_output_dir_refuses_files_and_uncreatable_folders(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("data")
    with pytest.raises(InputError, match=rf"^{a_file}: exists and is not a folder"):
        check_output_dir(a_file)
    under = a_file / "run" / "out"
    with pytest.raises(InputError, match=rf"^{under}: cannot create the folder \({a_file} is a file"):
        check_output_dir(under)
    too_long = tmp_path / ("x" * 300) / "out"  # refused to root too (ENAMETOOLONG)
    with pytest.raises(InputError, match=r"cannot create the folder \(File name too long\)"):
        check_output_dir(too_long)
    assert a_file.read_text() == "data" and listing(tmp_path) == ["file"]


def test_check_output_dir_accepts_new_and_existing_folders_and_creates_nothing(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "f").write_text("x")
    check_output_dir(tmp_path / "kept")
    check_output_dir(tmp_path / "new" / "deeper")
    assert listing(tmp_path) == ["kept", "kept/f"]
