"""The engine's hot path in one process: no value read back to the host between log steps (so a GPU is
never made to drain its queue), one read per log step, and the finite-loss guarantee kept all the same (a
non-finite loss stops the run at the next log or checkpoint, naming its step, and nothing holds it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import mae_trainer
from mae_trainer.config import TrainingConfig
from mae_trainer.errors import TrainingError
from mae_trainer.modeling import MAEConfig, MAEForPreTraining
from mae_trainer.training.accelerator import make_accelerator
from mae_trainer.training.checkpoint import complete_checkpoints
from mae_trainer.training.engine import Engine

# What makes the host wait for the device: a tensor's value read into Python.
HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"}
PACKAGE = str(Path(mae_trainer.__file__).parent)
TORCH = str(Path(torch.__file__).parent)


class CountHostReads(TorchFunctionMode):
    """The host reads made by this library's code (the first caller outside torch is in ``mae_trainer``).
    torch's own optimizer reads its step counters, which live on the host on every device (so reading them
    never waits for a GPU): those are not counted."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
                self.reads.append(f"{name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        return func(*args, **(kwargs or {}))


def make_run(tmp_path, total_steps: int, warmup_steps: int, **overrides):
    config = TrainingConfig(output_dir=tmp_path / "run", batch_size=4, log_every=4, **overrides)
    accelerator = make_accelerator(config, name="test", micro_batch=4)
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig.from_preset("tiny", image_size=32, patch_size=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    engine = Engine(
        accelerator,
        config,
        name="test",
        total_steps=total_steps,
        peak_lr=1e-3,
        warmup_steps=warmup_steps,
        hparams={},
    )
    return engine, model, optimizer


def test_one_host_read_per_log_step_and_none_between(tmp_path):
    engine, model, optimizer = make_run(tmp_path, 8, 2, grad_accum=2)
    images = torch.randn(4, 3, 32, 32)
    hot, at_log = [], []
    while not engine.done:
        engine.set_lr(optimizer)
        with CountHostReads() as counter:
            _, stepped = engine.micro_step(
                model,
                optimizer,
                lambda: model(images, mask_ratio=0.75),
                images=4,
                where="x",
                flops_per_image=1e6,
            )
        hot.append(counter.reads)
        if stepped and engine.log_due:
            with CountHostReads() as counter:
                engine.log(0)
            at_log.append(counter.reads)
    engine.finish()
    assert len(hot) == 16 and all(reads == [] for reads in hot), hot  # 8 steps × 2 micro-steps
    assert [len(reads) for reads in at_log] == [1, 1], at_log  # steps 4 and 8: one read each
    assert all(reads[0].startswith("tolist (engine.py") for reads in at_log), at_log
    records = [json.loads(line) for line in engine.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    for r in records:  # what that one read brought back is the whole record
        assert 0 < r["loss"] < 10 and r["grad_norm"] > 0 and r["tflops_per_rank"] > 0


@pytest.mark.parametrize("stop_at", ["log", "checkpoint"])
def test_nonfinite_loss_stops_at_the_next_log_or_checkpoint_naming_its_step(tmp_path, stop_at):
    engine, model, optimizer = make_run(tmp_path, 12, 0)
    images = torch.randn(4, 3, 32, 32)
    for _ in range(4):  # steps 1-4, a log at 4, then a good checkpoint
        engine.micro_step(model, optimizer, lambda: model(images, mask_ratio=0.75), images=4, where="ok")
        engine.set_lr(optimizer)
    engine.log(0)
    good = engine.checkpoint({}, keep_last=2)

    def poisoned():
        output = model(images, mask_ratio=0.75)
        output.loss = output.loss * float("inf")  # a loss that overflowed
        return output

    # Step 5 is fine, step 6 is not, step 7 is fine again: nothing is read on the way...
    for step, forward in ((5, None), (6, poisoned), (7, None)):
        engine.micro_step(
            model,
            optimizer,
            forward or (lambda: model(images, mask_ratio=0.75)),
            images=4,
            where=f"batch {step}",
        )
    # ...and the next log or checkpoint names step 6, not 7, and writes nothing.
    with pytest.raises(TrainingError) as caught:
        engine.log(0) if stop_at == "log" else engine.checkpoint({}, keep_last=2)
    message = str(caught.value)
    assert message.startswith("loss is inf at step 6 (batch 6) on 1 rank(s)"), message
    assert f"Last good checkpoint: {good}" in message
    assert complete_checkpoints(tmp_path / "run" / "checkpoints") == [good]
    records = [json.loads(line) for line in engine.metrics_file.read_text().splitlines()]
    assert [r["step"] for r in records] == [4]
    engine.finish()
