"""``mae_trainer.hub``: push a saved tiny MAE through the real ``huggingface_hub`` client to a loopback Hub
(tests/hub_server.py) and check what arrives, byte for byte and by reloading it, also by repo id in fresh
processes pointed at the loopback Hub with ``HF_ENDPOINT``.

``model.safetensors`` travels the way the Hub makes the client send it: ``preupload`` answers ``lfs`` (the
repo's ``.gitattributes`` lists ``*.safetensors``), then the LFS batch API, a multipart upload and verify.
The installed client would use Xet storage instead whenever ``hf_xet`` is installed (it is); the loopback
Hub does not implement Xet, so the tests turn it off with the client's own switch, ``HF_HUB_DISABLE_XET``."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.cards import TAGS
from mae_trainer.cli.push import add_push_arguments, run_push
from mae_trainer.errors import InputError
from mae_trainer.hub import check_endpoint, collect_files, push_to_hub
from mae_trainer.modeling.convert import to_vit_mae

from .conftest import (
    PART,
    TOKEN,
    assert_plain_outputs_match,
    plain_transformers_script,
    run_cli,
    run_main,
    save_plain_inputs,
)
from .test_cli import assert_one_line_error

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


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def pushed(hub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    """The repo's files less the ``.gitattributes`` the Hub wrote when it created the repo."""
    return {k: v for k, v in hub.files(repo_id, revision).items() if k != ".gitattributes"}


def lfs_calls(hub, start: int = 0) -> list[tuple[str, str, int]]:
    return [(r.method, r.path.split("/")[1], r.status) for r in hub.requests[start:] if "lfs" in r.path]


def _rebuild(files: dict[str, bytes], folder):
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_push_uploads_vit_mae_through_lfs_and_reloads(model_dir, hub, tmp_path, no_saved_token):
    url = push_to_hub(model_dir, "alice/mae-tiny", token=TOKEN, private=True, endpoint=hub.url,
                      datasets=["ILSVRC/imagenet-1k"])  # fmt: skip
    assert url.startswith(f"{hub.url}/alice/mae-tiny/commit/")

    received = pushed(hub, "alice/mae-tiny")
    assert set(received) == UPLOADED  # never checkpoints/, tensorboard/ or metrics.jsonl
    assert received["reconstruction.png"] == (model_dir / "reconstruction.png").read_bytes()
    expected = collect_files(
        model_dir, "alice/mae-tiny", tmp_path / "staging", datasets=["ILSVRC/imagenet-1k"]
    )
    for name in ("README.md", "preprocessor_config.json"):
        assert received[name] == expected[name], name
    for name in ("config.json", "model.safetensors"):  # what `export --to vit_mae` writes
        assert received[name] == expected[name].read_bytes(), name
    assert json.loads(received["config.json"])["model_type"] == "vit_mae"

    # the weights went the LFS way: preupload said lfs, batch → 4 parts → completion → verify → lfsFile
    weights = received["model.safetensors"]
    oid = hashlib.sha256(weights).hexdigest()
    assert hub.lfs_paths("alice/mae-tiny") == {"model.safetensors": oid}
    preupload = hub.requests_to("POST", "/api/models/alice/mae-tiny/preupload/main")[0]
    assert {f["path"] for f in preupload.json["files"]} == UPLOADED
    parts = -(-len(weights) // PART)
    assert parts == 4
    assert [(r.method, r.path) for r in hub.requests] == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/models/alice/mae-tiny/preupload/main"),
        ("POST", "/alice/mae-tiny.git/info/lfs/objects/batch"),
        *[("PUT", f"/lfs-upload/{oid}/part/{n}") for n in range(1, parts + 1)],
        ("POST", f"/lfs-upload/{oid}"),
        ("POST", "/alice/mae-tiny.git/info/lfs/objects/verify"),
        ("POST", "/api/models/alice/mae-tiny/commit/main"),
    ]
    batch = hub.requests_to("POST", "/alice/mae-tiny.git/info/lfs/objects/batch")[0]
    assert batch.json["objects"] == [{"oid": oid, "size": len(weights)}]
    create = hub.requests_to("POST", "/api/repos/create")
    assert [r.json for r in create] == [
        {"name": "mae-tiny", "organization": "alice", "visibility": "private", "type": "model"}
    ]
    assert hub.repos["alice/mae-tiny"].private
    hub_api = [r for r in hub.requests if not r.path.startswith("/lfs-upload/")]  # pre-signed URLs: no token
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub_api)
    assert all(r.status == 200 for r in hub.requests)

    # model card: plain transformers first, then this package
    readme = received["README.md"].decode()
    meta = _front_matter(readme)
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0"
    # no pipeline tag: transformers' image-feature-extraction pipeline builds ViTMAEModel, which shuffles
    # and masks the patches at random on every call (hub.py's docstring); the card shows ViTModel instead
    assert "pipeline_tag" not in meta
    assert meta["datasets"] == ["ILSVRC/imagenet-1k"]
    assert set(TAGS) <= set(meta["tags"]) and {"mae", "mae_trainer", "self-supervised"} <= set(meta["tags"])
    plain = readme.index('ViTMAEForPreTraining.from_pretrained("alice/mae-tiny")')
    assert plain < readme.index('MAEForPreTraining.from_pretrained("alice/mae-tiny")', plain + 10)
    assert 'ViTModel.from_pretrained("alice/mae-tiny", add_pooling_layer=False)' in readme
    assert "import mae_trainer  #" not in readme  # nothing to register: plain transformers reads it
    assert "resizes the short side to 36 px (bicubic), crops the centre 32 px" in readme
    assert "interpolate_pos_encoding=True" in readme and "exact 2-D sin-cos" in readme
    assert "| optimizer steps | 8 |" in readme
    assert "| epochs | 4 |" in readme
    assert "| final loss | 0.875 |" in readme
    assert "| resolutions seen (px) | 16, 32 |" in readme
    assert "| mask ratios seen | 0.8, 0.75 |" in readme
    assert "| encoder width / depth / heads | 192 / 12 / 3 |" in readme
    assert "![MAE reconstructions](reconstruction.png)" in readme
    Image.open(io.BytesIO(received["reconstruction.png"])).verify()  # a real PNG arrived

    # a folder rebuilt from the received bytes loads with transformers and with mae_trainer
    from transformers import AutoImageProcessor, ViTMAEForPreTraining

    folder = _rebuild(received, tmp_path / "download")
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "BitImageProcessor"
    assert processor.size == {"shortest_edge": 36} and processor.crop_size == {"height": 32, "width": 32}
    original = MAEForPreTraining.from_pretrained(model_dir)
    reloaded = MAEForPreTraining.from_pretrained(folder)
    state, reference = reloaded.state_dict(), original.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
    inputs = processor(images=Image.open(folder / "reconstruction.png"), return_tensors="pt")
    noise = torch.rand(1, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = ViTMAEForPreTraining.from_pretrained(folder).eval()(**inputs, noise=noise)
        ours = original.eval()(**inputs, noise=noise)
    assert (theirs.logits - ours.logits).abs().max() <= 1e-5 and (theirs.loss - ours.loss).abs() <= 1e-5


def test_cli_push_to_branch_with_env_token(model_dir, hub, monkeypatch, capsys, no_saved_token):
    push_to_hub(model_dir, "alice/mae-tiny", token=TOKEN, endpoint=hub.url)  # main exists first (vit_mae)
    main_before = hub.files("alice/mae-tiny", "main")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    parser = argparse.ArgumentParser(prog="mae-trainer push")
    add_push_arguments(parser)
    args = parser.parse_args([
        str(model_dir), "alice/mae-tiny", "--revision", "dev", "--endpoint", hub.url,
        "--license", "mit", "--dataset", "alice/faces", "--dataset", "alice/cats", "--format", "mae_trainer",
    ])  # fmt: skip
    assert args.func is run_push
    first = len(hub.requests)
    args.func(args)
    out = capsys.readouterr().out
    assert f"commit: {hub.url}/alice/mae-tiny/commit/" in out

    calls = [(r.method, r.path, r.status) for r in hub.requests[first:] if "lfs" not in r.path]
    assert calls == [
        ("POST", "/api/repos/create", 409),  # exists: exist_ok
        ("POST", "/api/models/alice/mae-tiny/branch/dev", 200),
        ("POST", "/api/validate-yaml", 200),
        ("POST", "/api/models/alice/mae-tiny/preupload/dev", 200),
        ("POST", "/api/models/alice/mae-tiny/commit/dev", 200),
    ]
    # our weights are a new object: batch, 4 parts, completion, verify
    assert lfs_calls(hub, first) == [
        ("POST", "alice", 200),
        *[("PUT", "lfs-upload", 200)] * 4,
        ("POST", "lfs-upload", 200),
        ("POST", "alice", 200),
    ]
    assert hub.requests[first].json["visibility"] == "public"
    signed = [r for r in hub.requests[first:] if r.path.startswith("/lfs-upload/")]  # pre-signed: no token
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests[first:] if r not in signed)

    dev = pushed(hub, "alice/mae-tiny", "dev")
    assert set(dev) == UPLOADED
    for name in ("config.json", "model.safetensors"):  # --format mae_trainer: the folder's own files
        assert dev[name] == (model_dir / name).read_bytes(), name
    assert json.loads(dev["config.json"])["model_type"] == "mae_trainer_mae"
    assert "import mae_trainer  #" in dev["README.md"].decode()
    assert hub.files("alice/mae-tiny", "main") == main_before  # the branch took the commit, not main
    assert [c["branch"] for c in hub.repos["alice/mae-tiny"].commits] == ["main", "main", "dev"]
    meta = _front_matter(dev["README.md"].decode())
    assert meta["license"] == "mit"
    assert meta["datasets"] == ["alice/faces", "alice/cats"]
    assert 'from_pretrained("alice/mae-tiny", revision="dev")' in dev["README.md"].decode()

    # the same branch again: the branch exists (409, exist_ok), the weights are already stored (the batch
    # answers without actions, nothing is uploaded) and the commit lands on the branch
    again = len(hub.requests)
    args.func(args)
    assert lfs_calls(hub, again) == [("POST", "alice", 200)]
    assert ("POST", "/api/models/alice/mae-tiny/branch/dev", 409) in [
        (r.method, r.path, r.status) for r in hub.requests
    ]
    assert hub.repos["alice/mae-tiny"].commits[-1]["branch"] == "dev"


def test_cli_push_subcommand(model_dir, hub, monkeypatch, no_saved_token):
    from mae_trainer import cli

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(model_dir), "bob/mae", "--endpoint", hub.url, "--private"]) == 0
    assert set(pushed(hub, "bob/mae")) == UPLOADED
    assert hub.requests_to("POST", "/api/repos/create")[0].json["visibility"] == "private"
    monkeypatch.delenv("HF_TOKEN")
    assert cli.main(["push", str(model_dir), "bob/mae", "--endpoint", hub.url]) == 2


def test_missing_token_is_an_input_error(model_dir, hub, no_saved_token):
    with pytest.raises(InputError, match=r"^no Hugging Face token: .*HF_TOKEN") as info:
        push_to_hub(model_dir, "alice/mae-tiny", endpoint=hub.url)
    assert info.value.argument == "token"
    assert hub.requests == []


def test_rejected_token_is_an_input_error(model_dir, hub, no_saved_token):
    with pytest.raises(InputError, match=r"refused the token.*401"):
        push_to_hub(model_dir, "alice/mae-tiny", token="hf_wrong", endpoint=hub.url)
    assert hub.repos == {}
    assert all(r.authorization == "Bearer hf_wrong" for r in hub.requests)


def test_bad_folder_is_an_input_error(tmp_path, hub, model_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match=str(missing)):
        push_to_hub(missing, "alice/x", token=TOKEN, endpoint=hub.url)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"{empty}: no config\.json") as info:
        push_to_hub(empty, "alice/x", token=TOKEN, endpoint=hub.url)
    assert info.value.argument == "model_dir"

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(InputError, match=rf"{no_weights}: no model\.safetensors"):
        push_to_hub(no_weights, "alice/x", token=TOKEN, endpoint=hub.url)

    not_mae = tmp_path / "bert"
    not_mae.mkdir()
    (not_mae / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match=rf"{not_mae}: model_type 'bert' is not a masked autoencoder"):
        push_to_hub(not_mae, "alice/x", token=TOKEN, endpoint=hub.url)

    truncated = tmp_path / "truncated"
    to_vit_mae(MAEForPreTraining.from_pretrained(model_dir)).save_pretrained(truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(InputError, match=rf"{truncated}/model\.safetensors: truncated"):
        push_to_hub(truncated, "alice/x", token=TOKEN, endpoint=hub.url)

    with pytest.raises(InputError, match="'alice/bad name!': not a repo id"):
        push_to_hub(model_dir, "alice/bad name!", token=TOKEN, endpoint=hub.url)
    assert hub.requests == []  # bad input fails before any request


def test_unreachable_endpoint_is_an_input_error(model_dir):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match=f"127.0.0.1:{port}: cannot connect"):
        push_to_hub(model_dir, "alice/x", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")


MALFORMED_ENDPOINTS = {
    "notaurl": "not an http:// or https:// URL",
    "huggingface.co": "not an http:// or https:// URL",
    "ftp://hub.example": "not an http:// or https:// URL",
    "http://": "no host name",
    "http://hub.example:port": "not a URL (Port could not be cast",
    "http://hub.example:99999": "not a URL (Port out of range",
    "http://[::1": "not a URL (Invalid IPv6 URL)",
    "http://hub..example": "host name 'hub..example' is not valid",
    "http://hub example.org": "white space in the URL",
    "https://hub.example/?user=1": "has a ?query or #fragment",
}


def test_malformed_endpoints_are_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for endpoint, words in MALFORMED_ENDPOINTS.items():
        with pytest.raises(InputError) as info:
            check_endpoint(endpoint)
        assert str(info.value).startswith(f"{endpoint!r}: {words}"), str(info.value)
        assert info.value.argument == "endpoint"
    assert check_endpoint("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_endpoint("https://hub.example/mirror") == "https://hub.example/mirror"
    assert check_endpoint(None) is None
    monkeypatch.setenv("HF_ENDPOINT", "https://from.env/")
    assert check_endpoint(None) == "https://from.env"


def test_push_command_refuses_bad_input_in_one_line_naming_the_flag(
    model_dir, tmp_path, monkeypatch, no_saved_token
):
    """Every malformed --endpoint (and HF_ENDPOINT), a missing token, a bad DIR or REPO: one line naming
    where the value came from, exit status 2, nothing sent and nothing in DIR touched."""
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    before = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    push = ["push", str(model_dir), "alice/x", "--token", TOKEN]
    for endpoint, words in MALFORMED_ENDPOINTS.items():
        assert_one_line_error(run_main(*push, "--endpoint", endpoint), f"--endpoint {endpoint!r}: {words}")
    monkeypatch.setenv("HF_ENDPOINT", "notaurl")
    assert_one_line_error(run_main(*push), "HF_ENDPOINT 'notaurl': not an http:// or https:// URL")
    monkeypatch.delenv("HF_ENDPOINT")
    assert_one_line_error(run_main("push", str(model_dir), "alice/x"), "--token: no Hugging Face token")
    assert_one_line_error(
        run_main("push", str(tmp_path), "alice/x", "--token", TOKEN),
        f"DIR {tmp_path}: no config.json",
    )
    assert_one_line_error(
        run_main(*push[:2], "bad name!", "--token", TOKEN), "REPO 'bad name!': not a repo id"
    )
    assert {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()} == before
    # and in a process of its own: the one line, no traceback
    result = run_cli(*push, "--endpoint", "notaurl")
    assert_one_line_error(result, "--endpoint 'notaurl': not an http:// or https:// URL")


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
    files = pushed(hub, "carol/run")
    assert set(files) == UPLOADED
    assert json.loads(files["config.json"])["model_type"] == "vit_mae"  # portable by default
    assert hub.lfs_paths("carol/run") == {
        "model.safetensors": hashlib.sha256(files["model.safetensors"]).hexdigest()
    }
    assert "final loss" in files["README.md"].decode().lower()


def _fresh(code: str, hub, home, *, without_us: bool) -> str:
    """Run ``code`` in a new interpreter whose only Hub is the loopback one (``HF_ENDPOINT``), with an empty
    cache; ``without_us``: fail if it imported mae_trainer."""
    if without_us:
        code += (
            "\nimport sys\nassert not any(m.startswith('mae_trainer') for m in sys.modules), 'imported us'\n"
        )
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN}  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    if without_us:
        env.pop("PYTHONPATH", None)  # and nothing on the path points at this checkout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=home)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_pushed_repos_load_by_repo_id_in_fresh_processes(model_dir, hub, tmp_path, no_saved_token):
    """Both formats go up through LFS and come back down through resolve/redirect by repo id."""
    push_to_hub(model_dir, "alice/portable", token=TOKEN, endpoint=hub.url)
    push_to_hub(model_dir, "alice/ours", token=TOKEN, endpoint=hub.url, format="mae_trainer")
    original = MAEForPreTraining.from_pretrained(model_dir).eval()
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 4)
    save_plain_inputs(tmp_path, x, noise)
    first = len(hub.requests)

    # vit_mae: plain transformers, no mae_trainer anywhere in the process
    also = """
from transformers import AutoImageProcessor, AutoModel
auto = AutoModel.from_pretrained("alice/portable")
processor = AutoImageProcessor.from_pretrained("alice/portable")
assert type(auto).__name__ == "ViTMAEModel" and type(processor).__name__ == "BitImageProcessor"
auto_state = auto.state_dict()
for key, value in vit_state.items():
    assert torch.equal(value, auto_state[key]), key
"""
    _fresh(
        plain_transformers_script("alice/portable", tmp_path, also),
        hub,
        tmp_path / "home_plain",
        without_us=True,
    )
    assert_plain_outputs_match(original, x, noise, tmp_path)

    # the download went through the Hub's endpoints: revision info, HEAD/GET resolve, the CDN redirect
    calls = {
        (r.method, r.path.split("/")[3] if r.path.count("/") > 3 else r.path) for r in hub.requests[first:]
    }
    assert ("HEAD", "resolve") in calls and ("GET", "resolve") in calls
    assert any(r.path.startswith("/lfs-objects/") and r.method == "GET" for r in hub.requests[first:])
    assert all(r.status in (200, 302, 404) for r in hub.requests[first:])

    # both repos, by id, into mae_trainer's classes (and AutoModel after `import mae_trainer`)
    state = _fresh("""
import torch
import mae_trainer
from transformers import AutoModel
from mae_trainer import MAEForPreTraining, MAEModel
for repo in ("alice/portable", "alice/ours"):
    pre = MAEForPreTraining.from_pretrained(repo)
    torch.save(pre.state_dict(), repo.split("/")[1] + ".pt")
    encoder = MAEModel.from_pretrained(repo).state_dict()
    assert all(torch.equal(v, pre.state_dict()["mae." + k]) for k, v in encoder.items())
assert type(AutoModel.from_pretrained("alice/ours")).__name__ == "MAEModel"
print("ok")
""", hub, tmp_path / "home_ours", without_us=False)  # fmt: skip
    assert state.strip().endswith("ok")
    reference = original.state_dict()
    for name in ("portable", "ours"):
        loaded = torch.load(tmp_path / "home_ours" / f"{name}.pt")
        assert loaded.keys() == reference.keys() and all(
            torch.equal(loaded[k], reference[k]) for k in reference
        )


# ------------------------------------------------------------------------------ fine-tuned classifier


def test_fine_tuned_classifier_push_loads_in_plain_transformers_by_repo_id(
    model_dir, hub, tmp_path, monkeypatch, no_saved_token
):
    """A fine-tune output folder goes up as a BEiT classifier (LFS weights, processor, card with
    model-index, provenance and flags), and a process where mae_trainer cannot be imported predicts as we do
    from the repo id: ``AutoModelForImageClassification`` (32 images) and ``pipeline`` (a photo)."""
    from huggingface_hub import ModelCard

    from mae_trainer import cli
    from mae_trainer.provenance import origin_of, read_provenance, write_provenance

    from .test_classifier_export import (
        BLOCK_US,
        LABELS,
        PHOTO,
        assert_same_predictions,
        fine_tuned,
        plain_classifier_script,
    )

    folder = tmp_path / "finetune"
    model = fine_tuned(model_dir, "avg")
    model.save_pretrained(folder)
    (folder / "results.json").write_text(json.dumps(
        {"val_acc1": 0.625, "val_acc5": 1.0, "val_loss": 0.9, "val_images": 40, "epoch": 3, "step": 20}
    ))  # fmt: skip
    (folder / "resolved_config.yaml").write_text(
        "epochs: 4\nblr: 0.0005\nlayer-decay: 0.65\nval-fraction: 0.1\n"
    )
    write_provenance(folder, base_model="alice/mae-tiny", datasets=["alice/pets"], license="cc-by-4.0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = ["push", str(folder), "alice/clf", "--endpoint", hub.url, "--dataset-name", "alice/more-pets"]
    assert cli.main([*args, "--license", "mit"]) == 0

    files = pushed(hub, "alice/clf")
    assert set(files) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    config = json.loads(files["config.json"])
    assert config["model_type"] == "beit" and config["architectures"] == ["BeitForImageClassification"]
    assert {int(k): v for k, v in config["id2label"].items()} == LABELS
    assert hub.lfs_paths("alice/clf") == {
        "model.safetensors": hashlib.sha256(files["model.safetensors"]).hexdigest()
    }
    readme = files["README.md"].decode()
    card = ModelCard(readme)  # the metadata and model-index parse with huggingface_hub
    meta = _front_matter(readme)
    assert meta["pipeline_tag"] == "image-classification" and meta["library_name"] == "transformers"
    assert meta["base_model"] == "alice/mae-tiny"
    assert meta["license"] == "mit"  # the flag wins over the provenance
    assert meta["datasets"] == ["alice/pets", "alice/more-pets"]  # provenance, then the flag
    results = {
        (r.metric_type, r.metric_value, r.dataset_type, r.dataset_split) for r in card.data.eval_results
    }
    assert results == {
        ("accuracy", 0.625, "alice/pets", "held-out 0.1 of train"),
        ("top_5_accuracy", 1.0, "alice/pets", "held-out 0.1 of train"),
    }
    assert "| 62.50 % | 100.00 % | 3 | 20 |" in readme and "| layer-wise lr decay | 0.65 |" in readme
    assert 'pipeline("image-classification", model="alice/clf")' in readme
    assert 'AutoModelForImageClassification.from_pretrained("alice/clf")' in readme
    assert read_provenance(folder)["pushed_to"] == "alice/clf" and origin_of(str(folder)) == "alice/clf"

    # without --license: the provenance's
    assert cli.main(["push", str(folder), "alice/clf2", "--endpoint", hub.url]) == 0
    assert _front_matter(pushed(hub, "alice/clf2")["README.md"].decode())["license"] == "cc-by-4.0"

    from mae_trainer.data.demo import photo_dir

    torch.save(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2)), tmp_path / "x.pt")
    code = BLOCK_US + plain_classifier_script("alice/clf", tmp_path, str(photo_dir() / PHOTO))
    _fresh(code, hub, tmp_path / "home_clf", without_us=True)
    assert assert_same_predictions(model, tmp_path)["type"] == "BeitForImageClassification"


def test_provenance_records_origin_license_and_datasets(
    model_dir, hub, tmp_path, monkeypatch, no_saved_token
):
    """``--init-from`` provenance (unit level: what pretrain calls at the start of a fresh run) → the
    card's ``base_model``; ``license_of`` reads a folder's or a Hub repo's card; unknown is None."""
    import huggingface_hub.constants

    from mae_trainer.cards import build_model_card
    from mae_trainer.provenance import license_of, origin_of, read_provenance, write_provenance

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert read_provenance(tmp_path) == {} and origin_of(str(tmp_path)) is None  # a folder never pushed
    assert origin_of("alice/mae-tiny") == "alice/mae-tiny"  # a Hub id (no such folder)
    assert origin_of(str(tmp_path / "no such folder!")) is None

    run = tmp_path / "run"
    pushed_from = tmp_path / "pushed"
    pushed_from.mkdir()
    (pushed_from / "provenance.json").write_text(json.dumps({"pushed_to": "alice/mae-tiny"}))
    write_provenance(run, base_model=origin_of(str(pushed_from)), datasets=["alice/faces"], license=None)
    assert read_provenance(run) == {"base_model": "alice/mae-tiny", "datasets": ["alice/faces"]}
    card = build_model_card(
        MAEConfig.from_preset("tiny", image_size=32), "bob/next", base_model="alice/mae-tiny"
    )
    assert _front_matter(card)["base_model"] == "alice/mae-tiny" and "`alice/mae-tiny`" in card

    push_to_hub(model_dir, "alice/licensed", token=TOKEN, endpoint=hub.url, license="mit")
    assert license_of("alice/licensed", endpoint=hub.url) == "mit"  # a Hub repo's card
    assert license_of("alice/missing", endpoint=hub.url) is None
    (run / "README.md").write_text("---\nlicense: bsd-3-clause\n---\n# x\n")
    assert license_of(str(run)) == "bsd-3-clause"  # a folder's card
    write_provenance(pushed_from, base_model=None, datasets=None, license="cc-by-4.0")
    assert license_of(str(pushed_from)) == "cc-by-4.0"  # no card: the provenance
    assert license_of(str(tmp_path / "empty")) is None
