"""``mae_trainer.hub``: push a saved tiny MAE through the real ``huggingface_hub`` client to a loopback Hub
(tests/hub_server.py) and check what arrives, byte for byte and by reloading it."""

from __future__ import annotations

import argparse
import io
import json
import socket

import pytest
import torch
import yaml
from PIL import Image

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.errors import UsageError
from mae_trainer.hub import TAGS, add_push_arguments, collect_files, push_to_hub, run_push

from .hub_server import LoopbackHub

TOKEN = "hf_loopback_test_token"
UPLOADED = {
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "reconstruction.png",
    "README.md",
}
METRICS = [
    # two progressive stages: 16 px at mask 0.8, then 32 px at 0.75
    {"step": 2, "epoch": 0, "loss": 1.21, "lr": 1.0e-4, "images_per_s": 310.0, "resolution": 16,
     "mask_ratio": 0.8, "batch_size": 8},
    {"step": 4, "epoch": 1, "loss": 1.05, "lr": 2.0e-4, "images_per_s": 305.5, "resolution": 16,
     "mask_ratio": 0.8, "batch_size": 8},
    {"step": 6, "epoch": 2, "loss": 0.93, "lr": 1.5e-4, "images_per_s": 180.25, "resolution": 32,
     "mask_ratio": 0.75, "batch_size": 4},
    {"step": 8, "epoch": 3, "loss": 0.875, "lr": 5.0e-5, "images_per_s": 175.0, "resolution": 32,
     "mask_ratio": 0.75, "batch_size": 4},
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A pretrain-style output folder: weights, metrics, a reconstruction PNG, and files never to upload."""
    path = tmp_path_factory.mktemp("run") / "model"
    torch.manual_seed(0)
    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32)).save_pretrained(path)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    picture = Image.new("RGB", (96, 32))
    picture.putdata([(x * 2, y * 7, (x + y) % 256) for y in range(32) for x in range(96)])
    picture.save(path / "reconstruction.png")
    (path / "checkpoints" / "step_8").mkdir(parents=True)
    (path / "checkpoints" / "step_8" / "optimizer.bin").write_bytes(b"\0" * 64)
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"tb")
    return path


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # loopback only
    with LoopbackHub(tokens={TOKEN}) as server:
        yield server
    # after stop(): every request was one the server knows
    assert not server.unhandled, [(r.method, r.path) for r in server.unhandled]


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def _rebuild(files: dict[str, bytes], folder):
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_push_uploads_whitelist_byte_identical_and_reloads(model_dir, hub, tmp_path, no_saved_token):
    url = push_to_hub(model_dir, "alice/mae-tiny", token=TOKEN, private=True, endpoint=hub.url,
                      datasets=["ILSVRC/imagenet-1k"])  # fmt: skip
    assert url.startswith(f"{hub.url}/alice/mae-tiny/commit/")

    received = hub.files("alice/mae-tiny", "main")
    assert set(received) == UPLOADED  # never checkpoints/, tensorboard/ or metrics.jsonl
    for name in ("config.json", "model.safetensors", "reconstruction.png"):
        assert received[name] == (model_dir / name).read_bytes(), name
    expected = collect_files(model_dir, "alice/mae-tiny", datasets=["ILSVRC/imagenet-1k"])
    for name in ("README.md", "preprocessor_config.json"):
        assert received[name] == expected[name], name

    # the client's requests: create (private) → validate card → preupload → commit, all with the token
    create = hub.requests_to("POST", "/api/repos/create")
    assert [r.json for r in create] == [
        {"name": "mae-tiny", "organization": "alice", "visibility": "private", "type": "model"}
    ]
    assert hub.repos["alice/mae-tiny"].private
    assert [(r.method, r.path) for r in hub.requests] == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/alice/mae-tiny/preupload/main"),
        ("POST", "/api/models/alice/mae-tiny/commit/main"),
    ]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests)
    assert all(r.status == 200 for r in hub.requests)

    # model card
    readme = received["README.md"].decode()
    meta = _front_matter(readme)
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["datasets"] == ["ILSVRC/imagenet-1k"]
    assert set(TAGS) <= set(meta["tags"]) and {"mae", "mae_trainer", "self-supervised"} <= set(meta["tags"])
    assert "import mae_trainer" in readme and 'AutoModel.from_pretrained("alice/mae-tiny")' in readme
    assert "| optimizer steps | 8 |" in readme
    assert "| epochs | 4 |" in readme
    assert "| final loss | 0.875 |" in readme
    assert "| resolutions seen (px) | 16, 32 |" in readme
    assert "| mask ratios seen | 0.8, 0.75 |" in readme
    assert "| encoder width / depth / heads | 192 / 12 / 3 |" in readme
    assert "![MAE reconstructions](reconstruction.png)" in readme
    Image.open(io.BytesIO(received["reconstruction.png"])).verify()  # a real PNG arrived

    # a folder rebuilt from the received bytes loads with transformers and mae_trainer
    from transformers import AutoModel, ViTImageProcessor

    folder = _rebuild(received, tmp_path / "download")
    config = MAEConfig.from_pretrained(folder)
    processor = ViTImageProcessor.from_pretrained(folder)
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    assert list(processor.image_mean) == pytest.approx(config.image_mean)
    assert list(processor.image_std) == pytest.approx(config.image_std)
    assert processor.do_resize and processor.do_normalize

    original = MAEForPreTraining.from_pretrained(model_dir).state_dict()
    reloaded = MAEForPreTraining.from_pretrained(folder)
    state = reloaded.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)

    # the card's snippet works on what arrived
    inputs = processor(images=Image.open(folder / "reconstruction.png").convert("RGB"), return_tensors="pt")
    encoder = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        features = encoder(**inputs).last_hidden_state
        loss = reloaded.eval()(**inputs).loss
    assert features.shape == (1, 1 + 4, 192)
    assert torch.isfinite(loss)


def test_cli_push_to_branch_with_env_token(model_dir, hub, monkeypatch, capsys, no_saved_token):
    push_to_hub(model_dir, "alice/mae-tiny", token=TOKEN, endpoint=hub.url)  # main exists first
    main_before = hub.files("alice/mae-tiny", "main")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    parser = argparse.ArgumentParser(prog="mae-trainer push")
    add_push_arguments(parser)
    args = parser.parse_args([
        str(model_dir), "alice/mae-tiny", "--revision", "dev", "--endpoint", hub.url,
        "--license", "mit", "--dataset", "alice/faces", "--dataset", "alice/cats",
    ])  # fmt: skip
    assert args.func is run_push
    first = len(hub.requests)
    args.func(args)
    out = capsys.readouterr().out
    assert f"commit: {hub.url}/alice/mae-tiny/commit/" in out

    calls = [(r.method, r.path, r.status) for r in hub.requests[first:]]
    assert calls == [
        ("POST", "/api/repos/create", 409),  # exists: exist_ok
        ("POST", "/api/models/alice/mae-tiny/branch/dev", 200),
        ("POST", "/api/validate-yaml", 200),
        ("POST", "/api/models/alice/mae-tiny/preupload/dev", 200),
        ("POST", "/api/models/alice/mae-tiny/commit/dev", 200),
    ]
    assert hub.requests[first].json["visibility"] == "public"
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests[first:])

    dev = hub.files("alice/mae-tiny", "dev")
    assert set(dev) == UPLOADED
    assert hub.files("alice/mae-tiny", "main") == main_before  # the branch took the commit, not main
    assert [c["branch"] for c in hub.repos["alice/mae-tiny"].commits] == ["main", "main", "dev"]
    meta = _front_matter(dev["README.md"].decode())
    assert meta["license"] == "mit"
    assert meta["datasets"] == ["alice/faces", "alice/cats"]
    assert 'from_pretrained("alice/mae-tiny", revision="dev")' in dev["README.md"].decode()

    # the same branch again: the branch exists (409, exist_ok) and the commit lands on it
    args.func(args)
    assert ("POST", "/api/models/alice/mae-tiny/branch/dev", 409) in [
        (r.method, r.path, r.status) for r in hub.requests
    ]
    assert hub.repos["alice/mae-tiny"].commits[-1]["branch"] == "dev"


def test_cli_push_subcommand(model_dir, hub, monkeypatch, no_saved_token):
    from mae_trainer import cli

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(model_dir), "bob/mae", "--endpoint", hub.url, "--private"]) == 0
    assert set(hub.files("bob/mae")) == UPLOADED
    assert hub.requests_to("POST", "/api/repos/create")[0].json["visibility"] == "private"
    monkeypatch.delenv("HF_TOKEN")
    assert cli.main(["push", str(model_dir), "bob/mae", "--endpoint", hub.url]) == 2


def test_missing_token_is_a_usage_error(model_dir, hub, no_saved_token):
    with pytest.raises(UsageError, match=r"--token.*HF_TOKEN"):
        push_to_hub(model_dir, "alice/mae-tiny", endpoint=hub.url)
    assert hub.requests == []


def test_rejected_token_is_a_usage_error(model_dir, hub, no_saved_token):
    with pytest.raises(UsageError, match=r"refused the token.*401"):
        push_to_hub(model_dir, "alice/mae-tiny", token="hf_wrong", endpoint=hub.url)
    assert hub.repos == {}
    assert all(r.authorization == "Bearer hf_wrong" for r in hub.requests)


def test_bad_folder_is_a_usage_error(tmp_path, hub, model_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match=str(missing)):
        push_to_hub(missing, "alice/x", token=TOKEN, endpoint=hub.url)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=rf"{empty}: no config\.json"):
        push_to_hub(empty, "alice/x", token=TOKEN, endpoint=hub.url)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(UsageError, match=rf"{no_weights}: no model\.safetensors"):
        push_to_hub(no_weights, "alice/x", token=TOKEN, endpoint=hub.url)

    not_ours = tmp_path / "vit"
    not_ours.mkdir()
    (not_ours / "config.json").write_text(json.dumps({"model_type": "vit_mae"}))
    (not_ours / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:100])
    with pytest.raises(UsageError, match=r"config\.json: model_type 'vit_mae'"):
        push_to_hub(not_ours, "alice/x", token=TOKEN, endpoint=hub.url)

    with pytest.raises(UsageError, match="repo id"):
        push_to_hub(model_dir, "alice/bad name!", token=TOKEN, endpoint=hub.url)
    assert hub.requests == []  # bad input fails before any request


def test_unreachable_endpoint_is_a_usage_error(model_dir):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match=f"127.0.0.1:{port}: cannot connect"):
        push_to_hub(model_dir, "alice/x", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_pretrain_pushes_at_the_end(demo_beton, hub, tmp_path, monkeypatch, no_saved_token):
    from mae_trainer import cli

    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        str(demo_beton),
        "--model",
        "tiny",
        "--resolution",
        "32",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--num-workers",
        "1",
        "--log-every",
        "1",
        "--output-dir",
        str(out),
        "--push-to-hub",
        "carol/run",
        "--hub-endpoint",
        hub.url,
        "--hub-private",
    ]
    assert cli.main(args) == 2  # no token anywhere: refused before any work
    assert not out.exists() and not hub.requests
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(args) == 0
    files = hub.files("carol/run")
    assert set(files) == UPLOADED
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "final loss" in files["README.md"].decode().lower()
