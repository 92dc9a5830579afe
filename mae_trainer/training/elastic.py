"""Resuming a checkpoint on another layout: the optimizer state re-partitioned by DeepSpeed's own tools.

A ZeRO-1 checkpoint holds each rank's slice of the fp32 master weights and Adam moments; DeepSpeed refuses
to load it on another number of ranks. Its *universal checkpoint* is the answer it maintains: the
``ds_to_universal`` converter (``python -m deepspeed.checkpoint.ds_to_universal``) rewrites the slices as
one folder per parameter (``zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``), and an engine configured with
``checkpoint.load_universal`` cuts its own partitions out of them, for any number of ranks. Both ends are
DeepSpeed's; nothing here knows its shard format.

- ZeRO on N ranks → ZeRO on M ranks: convert, then ``load_checkpoint`` on an engine created with
  ``load_universal`` (:func:`universal_config`).
- ZeRO → one process without DeepSpeed (no ``accelerate launch``): convert, then copy each parameter's
  fp32 weight, both moments and the step count into the model and torch's AdamW
  (:func:`load_universal_into_torch`): the universal folder is DeepSpeed's documented per-parameter form.

The conversion runs once, on the main process, into ``checkpoints/.universal-step_N`` (never a resume point,
removed after the load); the other ranks wait for it at a barrier.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import TrainingError

TAG = "pytorch_model"  # accelerate's DeepSpeed checkpoint tag (save_state/load_state)


def universal_config(deepspeed_config: dict) -> None:
    """Make an engine created from ``deepspeed_config`` load universal checkpoints (before ``prepare``)."""
    deepspeed_config.setdefault("checkpoint", {})["load_universal"] = True


def staging_folder(checkpoint: Path) -> Path:
    return checkpoint.parent / f".universal-{checkpoint.name}"


def convert(checkpoint: Path, staging: Path) -> None:
    """``checkpoint`` (accelerate's DeepSpeed layout: ``<checkpoint>/pytorch_model/``) as a universal
    checkpoint in ``staging/pytorch_model/``, with DeepSpeed's converter in a child process (its command
    line is its public interface). ``--inject_missing_state`` adds the version record that a plain
    data-parallel run (no tensor or pipeline parallelism to describe) never writes."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    workers = str(max(1, min(4, os.cpu_count() or 1)))
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--inject_missing_state",
               "--input_folder", str(checkpoint / TAG), "--output_folder", str(staging / TAG),
               "--num_extract_workers", workers, "--num_merge_workers", workers]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TrainingError(
            f"{checkpoint}: DeepSpeed's ds_to_universal could not convert it for another layout "
            f"({tail[0]}); resume it on its own number of ranks"
        )


def load_universal_into_torch(staging: Path, model, optimizer) -> int:
    """Load the universal checkpoint in ``staging`` into ``model`` (fp32 weights) and ``optimizer`` (torch
    AdamW: both moments and the step count of every parameter). Returns the optimizer's step count."""
    import torch

    folder = staging / TAG / "zero"
    named = dict(model.named_parameters())
    missing = sorted(set(named) - {p.name for p in folder.iterdir()})
    if missing:
        raise TrainingError(f"{folder}: no state for {len(missing)} parameter(s), e.g. {missing[0]}")

    def read(name: str, what: str) -> torch.Tensor:
        return torch.load(folder / name / f"{what}.pt", map_location="cpu", weights_only=False)["param"]

    ids = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state, step = {}, 0
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(read(name, "fp32").reshape(param.shape))
            step_value = torch.load(folder / name / "step.pt", map_location="cpu", weights_only=False)
            step = int(step_value.item() if isinstance(step_value, torch.Tensor) else step_value)
            state[ids[id(param)]] = {
                "step": torch.tensor(float(step)),
                "exp_avg": read(name, "exp_avg").reshape(param.shape),
                "exp_avg_sq": read(name, "exp_avg_sq").reshape(param.shape),
            }
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return step
