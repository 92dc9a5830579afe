"""``pretrain --compile`` in a real run: DeepSpeed ZeRO-1 BF16 on one CPU rank (the product's launch), a
progressive schedule whose two stages differ in side and mask ratio. One graph per stage shape, no more
(a recompile per stage would mean a guard on something that changes, e.g. the position-table cache), the
loss falls, and the saved model is an ordinary one (no compile wrapper in its weights' names).

The run compiles with ``--compile-backend aot_eager``: dynamo captures the same graphs with the same
guards under every backend, and AOTAutograd traces the backward as it does for inductor; only inductor's
code generation is left out, which on this CPU builds C++ kernels (141 s of a cold test alone, 232 s
inside the suite, against 65 s with aot_eager) where a GPU would run Triton's."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from .conftest import ROOT, launch_cmd, run_main, small_embedded_beton


@pytest.mark.slow
def test_compiled_progressive_run_compiles_once_per_stage(tmp_path):
    data = small_embedded_beton(tmp_path, limit=64, max_resolution=64)
    out = tmp_path / "run"
    result = subprocess.run(
        launch_cmd(
            "cpu_1proc.yaml",
            "pretrain",
            *("--data", str(data), "--model", "tiny", "--resolution", "64", "--epochs", "4"),
            *("--progressive", "steps", "--resolution-steps", "0:32:0.5,2:64:0.75"),
            *("--batch-size", "16", "--blr", "5e-3", "--warmup-epochs", "1", "--num-workers", "1"),
            *("--log-every", "2", "--recon-images", "0", "--output-dir", str(out), "--compile"),
            *("--compile-backend", "aot_eager"),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert "torch.compile: 2 graph(s) compiled for 2 stage shape(s)" in result.stdout, tail
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["resolution"]) for r in records] == [(2, 32), (4, 32), (6, 32), (8, 32)] + [
        (s, 64) for s in (10, 12, 14, 16)
    ]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[3]["loss"] < records[0]["loss"]  # it learns within the compiled first stage

    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as saved:
        names = list(saved.keys())
    assert names and not any("_orig_mod" in name for name in names)
    from mae_trainer.modeling import MAEForPreTraining

    model = MAEForPreTraining.from_pretrained(out)
    assert model.config.patch_size == 16


def test_an_unknown_backend_is_refused_before_any_work(demo_beton, tmp_path):
    out = tmp_path / "run"
    result = run_main("pretrain", "--data", str(demo_beton), "--output-dir", str(out),
                      "--model", "tiny", "--compile", "--compile-backend", "inductorr")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("mae-trainer: error: --compile-backend inductorr: not a torch.compile")
    assert "inductor" in result.stderr and not out.exists()
