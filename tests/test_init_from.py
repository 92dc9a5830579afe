"""``pretrain --init-from``: a run starts from saved weights (a pre-training run's output, a transformers
``vit_mae`` folder) with a fresh optimizer and schedule; another architecture is refused in one line before
any work; a checkpoint found by ``--resume`` wins over it. Weights are compared bit for bit: with ``--lr 0``
the model a run saves is the model it started from."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from mae_trainer.modeling import MAEConfig, MAEForPreTraining

from .conftest import (
    BIN,
    ROOT,
    pretrain_cmd,
    run_main,
    run_to_end,
    small_embedded_beton,
    tiny_flags,
    wandb_offline_env,
)

FLAGS = tiny_flags(seed=3)


def pretrain(data, out, *extra, launcher=None, report_to="none", env=None):
    cmd = pretrain_cmd(
        launcher, "--data", str(data), "--output-dir", str(out), *FLAGS, "--report-to", report_to
    )
    return run_to_end([*cmd, *extra], env=env)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_embedded_beton(tmp_path_factory.mktemp("init"), limit=64, max_resolution=64)  # 4 steps/epoch


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A fresh tiny run of 8 steps: the weights the other runs start from."""
    out = tmp_path_factory.mktemp("trained") / "run"
    pretrain(data, out, "--blr", "1e-3")
    return out


def assert_weights(out, expected: dict):
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == expected.keys()
    different = [k for k in saved if not torch.equal(saved[k], expected[k])]
    assert not different, different[:5]


def test_init_from_our_run_starts_there_and_a_resumed_run_keeps_its_checkpoint(data, trained, tmp_path):
    out = tmp_path / "continued"
    same = ("--init-from", str(trained), "--lr", "0", "--max-steps", "3", "--save-every", "1")
    log = pretrain(data, out, *same)
    assert f"weights from --init-from {trained}" in log
    assert_weights(out, load_file(trained / "model.safetensors"))  # lr 0: saved = started from, bit for bit
    # a fresh optimizer, schedule and sampler: step 1 of epoch 0 again, but the loss of trained weights
    first, fresh = json.loads((out / "metrics.jsonl").read_text().splitlines()[0]), losses(trained)
    assert (first["step"], first["epoch"]) == (1, 0)
    assert first["loss"] < fresh[0] - 0.05, (first["loss"], fresh[:3])
    assert "init-from: " + str(trained) in (out / "resolved_config.yaml").read_text()

    # the same command line restarted with --resume auto continues from its checkpoint, not the init weights
    log = pretrain(data, out, *same, "--resume", "auto", "--overwrite")
    checkpoint = out / "checkpoints" / "step_00000002"
    assert f"--init-from {trained} not used: resuming from the checkpoint {checkpoint}" in log
    assert f"resumed from {checkpoint} at step 2" in log
    assert "weights from --init-from" not in log


@pytest.mark.slow
def test_init_from_a_hub_repo_id_through_hf_endpoint(data, trained, tmp_path, monkeypatch):
    """A run pushed to the (loopback) Hub, then ``--init-from owner/name`` in a fresh process whose Hub is
    that server (``HF_ENDPOINT``, an empty ``HF_HOME``): the weights arrive through the real client's
    download and a ``--lr 0`` run saves them bit for bit. A repo id the Hub does not have: one line, exit 2,
    no files."""
    import huggingface_hub.constants

    from mae_trainer.hub import push_to_hub

    from .hub_server import LoopbackHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # loopback only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the server speaks LFS
    with LoopbackHub(tokens={"hf_loopback"}) as hub:
        url = hub.url
        push_to_hub(trained, "alice/tiny-run", token="hf_loopback", endpoint=hub.url)  # vit_mae, the default
        # no token and no cache of the user's: the repo is public, the cache empty
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(
            HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0"
        )
        out = tmp_path / "from_hub"
        log = pretrain(data, out, "--init-from", "alice/tiny-run", "--lr", "0", "--max-steps", "1", env=env)
        resolved = [r.path.split("/")[-1] for r in hub.requests if "/resolve/" in r.path]
        assert "weights from --init-from alice/tiny-run" in log
        assert str(tmp_path / "hf_home") in log  # the folder it came from: the Hugging Face cache
        assert_weights(out, load_file(trained / "model.safetensors"))  # through vit_mae and back, exactly
        # config.json and the weights by the Hub's resolve endpoint, the weights' bytes from its LFS "CDN"
        assert {"config.json", "model.safetensors"} <= set(resolved), resolved
        assert any(r.method == "GET" and r.path.startswith("/lfs-objects/") for r in hub.requests)

        missing = tmp_path / "missing"
        result = subprocess.run(
            [str(BIN / "mae-trainer"), "pretrain", "--data", str(data), "--output-dir", str(missing), *FLAGS,
             "--init-from", "alice/no-such-run"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert not hub.unhandled, [(r.method, r.path) for r in hub.unhandled]
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mae-trainer: error: --init-from alice/no-such-run: "), line
    assert f"fetching it from the Hub ({url}) failed" in line, line
    assert any("alice/no-such-run" in r.path for r in hub.requests)  # this server, not huggingface.co
    assert not missing.exists()


@pytest.mark.slow
def test_init_from_under_two_deepspeed_ranks(data, trained, tmp_path):
    """ZeRO-1 BF16: the weights are loaded before DeepSpeed copies them into its fp32 master weights, which
    hold them rounded to bf16 (the precision of the training parameters)."""
    out = tmp_path / "ranks"
    log = pretrain(data, out, "--init-from", str(trained), "--lr", "0", "--max-steps", "2",
                   launcher="cpu_2proc.yaml", report_to="all", env=wandb_offline_env(tmp_path))  # fmt: skip
    assert "on 2 process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in log
    assert log.count("weights from --init-from") == 1  # printed by the main process only
    started = {k: v.bfloat16().float() for k, v in load_file(trained / "model.safetensors").items()}
    assert_weights(out, started)
    # --report-to all under 2 ranks: one TensorBoard log and one W&B run (the main process's)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_init_from_a_transformers_vit_mae_folder(data, tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(1)
    hf = ViTMAEForPreTraining(
        ViTMAEConfig(
            hidden_size=192,
            num_hidden_layers=12,
            num_attention_heads=3,
            intermediate_size=768,
            decoder_hidden_size=128,
            decoder_num_hidden_layers=4,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
            image_size=224,
            layer_norm_eps=1e-12,
        )
    )
    # transformers 5 builds the model with zero position tables (its init skips them); a real vit_mae save
    # (facebook/vit-mae-base) holds the fixed sin-cos ones: fill them with transformers' own initialisers
    hf.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    hf.vit.embeddings.initialize_weights()
    hf.decoder.initialize_weights(hf.vit.embeddings.patch_embeddings.num_patches)
    hf.save_pretrained(tmp_path / "vit_mae")
    out = tmp_path / "run"
    log = pretrain(data, out, "--init-from", str(tmp_path / "vit_mae"), "--lr", "0", "--max-steps", "1")
    assert "weights from --init-from" in log
    saved, theirs = load_file(out / "model.safetensors"), hf.state_dict()
    assert torch.equal(saved["mae.cls_token"], theirs["vit.embeddings.cls_token"])
    assert torch.equal(saved["decoder.mask_token"], theirs["decoder.mask_token"])
    for i in (0, 11):
        theirs_qkv = torch.cat([theirs[f"vit.layers.{i}.attention.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(saved[f"mae.blocks.{i}.attn.qkv.weight"], theirs_qkv)
        assert torch.equal(saved[f"mae.blocks.{i}.mlp.fc1.weight"], theirs[f"vit.layers.{i}.mlp.fc1.weight"])
    assert torch.equal(saved["mae.norm.weight"], theirs["vit.layernorm.weight"])


def test_another_architecture_is_refused_in_one_line_before_any_work(demo_beton, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: the Hub id fails
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, num_hidden_layers=2)).save_pretrained(
        tmp_path / "shallow"
    )
    ViTMAEForPreTraining(
        ViTMAEConfig(
            hidden_size=96,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=384,
            decoder_hidden_size=64,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=256,
            image_size=32,
        )
    ).save_pretrained(tmp_path / "narrow")
    out = tmp_path / "out"
    cases = [
        ("shallow", "tiny", "num_hidden_layers is 2 in the saved model, 12 in tiny"),
        ("shallow", "small", "hidden_size is 192 in the saved model, 384 in small"),
        ("narrow", "tiny", "hidden_size is 96 in the saved model, 192 in tiny"),
    ]
    for source, preset, words in cases:
        result = run_main("pretrain", "--data", str(demo_beton), "--output-dir", str(out),
                          "--model", preset, "--init-from", str(tmp_path / source))  # fmt: skip
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"mae-trainer: error: --init-from {tmp_path / source}: "
        )
        assert words in lines[0], lines[0]
    # not a model, and a Hub id that cannot be fetched (offline): refused the same way
    for spec, words in [
        (str(tmp_path), "no config.json"),
        ("nobody/no-such-mae", "fetching it from the Hub"),
    ]:
        result = run_main("pretrain", "--data", str(demo_beton), "--output-dir", str(out),
                          "--model", "tiny", "--init-from", spec)  # fmt: skip
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert f"--init-from {spec}: " in result.stderr and words in result.stderr, result.stderr
    assert not out.exists()
