"""What the training commands share (pre-training and fine-tuning), so each of them reads as its own
straight loop over its own data, model and loss:

- the accelerator: process group (gloo on CPU ranks, ``--dist-timeout`` on every group), DeepSpeed's
  micro-batch, gradient accumulation, trackers;
- one micro-step: forward, a finite-loss stop agreed by every rank, backward, optimizer step;
- the per-iteration lr (``lr_scale`` of layer-decay groups honoured);
- the metrics window: mean loss (and any other per-micro-step means) over ranks, images/s, the fraction of
  time spent waiting for data, the gradient norm → the ``--report-to`` trackers (``trackers.py``),
  ``metrics.jsonl`` and the progress bar;
- checkpoints (``checkpoint.py``) and the final fp32 save from ZeRO shards.

Nothing here reads flags: it gets a :class:`~mae_trainer.config.TrainingConfig`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import torch

from ..config import TrainingConfig
from ..errors import TrainingError
from ..publish import publish_folder
from .checkpoint import complete_checkpoints, read_state, save_checkpoint
from .schedules import warmup_cosine_lr
from .throughput import window_throughput
from .trackers import log_image, make_trackers


def make_accelerator(config: TrainingConfig, micro_batch: int, trackers: list):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=config.dist_timeout)
    # Groups created later without a timeout (DeepSpeed's clone of the world group for ZeRO's collectives)
    # take torch's module default (30 min gloo, 10 min NCCL): make that --dist-timeout too, so that a hung
    # node ends the run within the bound and not only a dead one.
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    handlers = [InitProcessGroupKwargs(timeout=timeout)]
    launched = (
        any(os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK"))
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    )
    if launched and not torch.cuda.is_available():
        # DeepSpeed on CPU ranks needs gloo; with the default backend its batch-size check fails.
        handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timeout)]
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        log_with=trackers or None,
        project_dir=str(config.output_dir),
        kwargs_handlers=handlers,
    )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # FFCV's Loader is not a torch DataLoader, so accelerate cannot infer the micro-batch: set it here.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
    return accelerator


class Engine:
    """One training run's accelerator, step counter, lr, metrics window, checkpoints and final save.

    ``metric_prefix`` is put before each metric's name in ``metrics.jsonl`` (``""`` → ``loss``,
    ``"train/"`` → ``train/loss``); the trackers always get ``train/<name>``.
    """

    def __init__(self, config: TrainingConfig, *, micro_batch: int, name: str, metric_prefix: str = ""):
        self.config = config
        self.name, self.prefix = name, metric_prefix
        self.micro_batch = micro_batch
        trackers = make_trackers(config.trackers, config.output_dir, name)  # --report-to
        self.accelerator = make_accelerator(config, micro_batch, trackers)
        self.output_dir: Path = config.output_dir
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.metrics_file = self.output_dir / "metrics.jsonl"
        self.step, self.total_steps = 0, 0
        self.grad_norm = None
        self.progress = None
        self._new_window()

    # -------------------------------------------------------------------------------------- set-up

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    def print(self, *args) -> None:
        self.accelerator.print(*args)

    def prepare(self, *objects):
        return self.accelerator.prepare(*objects)

    def start(self, total_steps: int, hparams: dict, *, fresh: bool) -> None:
        """Open the trackers and the progress bar; a fresh run (not a resume) starts ``metrics.jsonl``."""
        self.total_steps = total_steps
        scalars = {k: str(v) if isinstance(v, Path) else v for k, v in hparams.items()}
        scalars = {k: v for k, v in scalars.items() if isinstance(v, (int, float, str, bool))}
        self.accelerator.init_trackers(self.name, config=scalars)  # trackers.py: where each one writes
        if self.is_main and fresh:
            self.metrics_file.write_text("")
        from tqdm.auto import tqdm

        self.progress = tqdm(
            total=total_steps,
            initial=self.step,
            disable=not self.accelerator.is_local_main_process,
            desc=self.name,
            dynamic_ncols=True,
        )
        self.window_start = time.perf_counter()

    # -------------------------------------------------------------------------------------- the step

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @property
    def log_due(self) -> bool:
        return self.step % self.config.log_every == 0 or self.step == self.total_steps

    def set_lr(self, optimizer, peak_lr: float, warmup_steps: int) -> float:
        """MAE's per-iteration lr (linear warmup, half-cycle cosine to ``--min-lr``) at the current step;
        a group's ``lr_scale`` (layer decay) multiplies it."""
        lr = warmup_cosine_lr(self.step, self.total_steps, warmup_steps, peak_lr, self.config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.lr = lr
        return lr

    def timed(self, batches: Iterable) -> Iterator:
        """``batches``, counting the time spent waiting for each one (the data-wait fraction)."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            self.window["wait"] += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def micro_step(
        self, model, optimizer, forward: Callable, images: int, where: str, flops_per_image: float = 0.0
    ):
        """One micro-step: ``forward()`` (returns an output with ``.loss``), the finite-loss stop,
        backward, and the optimizer step when accumulation is complete (``self.step`` then advances).
        Returns ``(output, stepped)``. ``where`` names the batch in a non-finite-loss report;
        ``flops_per_image`` (the model's training FLOPs per image, when the caller knows them) adds the
        achieved rate to the log (``throughput.py``)."""
        accelerator = self.accelerator
        with accelerator.accumulate(model):
            output = forward()
            loss = output.loss
            self.check_finite(loss, where)
            accelerator.backward(loss)
            due = (self.step + 1) % self.config.log_every == 0 or self.step + 1 == self.total_steps
            if accelerator.sync_gradients and due and not self.deepspeed:  # DeepSpeed computes its own
                self.grad_norm = torch.nn.utils.get_total_norm(
                    [p.grad for p in model.parameters() if p.grad is not None]
                )
            optimizer.step()
            if accelerator.sync_gradients and self.deepspeed:
                self.grad_norm = model.get_global_grad_norm()
            optimizer.zero_grad()
        self.add("loss", loss.detach().float())
        self.window["micro"] += 1
        self.window["images"] += images * self.num_processes
        self.window["flops"] += flops_per_image * images * self.num_processes
        if not accelerator.sync_gradients:
            return output, False
        self.step += 1
        self.progress.update(1)
        return output, True

    def check_finite(self, loss: torch.Tensor, where: str) -> None:
        """Stop every rank together when any rank's loss is NaN/inf, before it reaches the weights or a
        checkpoint; the error names the step and the last good checkpoint to resume from."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() == 0:
            return
        found = complete_checkpoints(self.output_dir / "checkpoints")
        raise TrainingError(
            f"loss is {loss.item()} at step {self.step + 1} ({where}) on {int(bad.item())} rank(s); "
            "nothing from this step was applied or saved. "
            + (
                f"Last good checkpoint: {found[-1]} (lower --blr/--lr or lengthen --warmup-epochs, then "
                "--resume auto)"
                if found
                else "No checkpoint was written yet (lower --blr/--lr or lengthen --warmup-epochs)"
            )
        )

    # -------------------------------------------------------------------------------------- metrics

    def _new_window(self) -> None:
        self.window = {"sums": {}, "micro": 0, "images": 0, "wait": 0.0, "flops": 0.0}
        self.window_start = time.perf_counter()

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add a per-micro-step value to the window; the log reports its mean over micro-steps and ranks."""
        sums = self.window["sums"]
        sums[name] = sums[name] + value if name in sums else value.detach().float().clone()

    def log(self, epoch: int, **extra) -> dict:
        """Close the window: one record to TensorBoard and ``metrics.jsonl``, the progress bar's postfix."""
        window, elapsed = self.window, time.perf_counter() - self.window_start
        record = {"step": self.step, "epoch": epoch}
        for name, total in window["sums"].items():
            record[self.prefix + name] = self.accelerator.reduce(total / window["micro"], "mean").item()
        record[self.prefix + "lr"] = self.lr
        grad_norm = float(self.grad_norm) if self.grad_norm is not None else float("nan")
        record[self.prefix + "grad_norm"] = grad_norm
        record[self.prefix + "images_per_s"] = window["images"] / elapsed
        record[self.prefix + "data_wait_fraction"] = window["wait"] / elapsed
        if window["flops"]:  # GFLOPs per image, TFLOP/s per rank, MFU on a known GPU
            rates = window_throughput(
                window["flops"], window["images"], elapsed, self.num_processes, self.device
            )
            record.update({self.prefix + k: v for k, v in rates.items()})
        record.update({self.prefix + k: v for k, v in extra.items()})
        self.write(record)
        self.progress.set_postfix(loss=f"{record[self.prefix + 'loss']:.4f}", lr=f"{self.lr:.2e}", **extra)
        self._new_window()
        return record

    def write(self, record: dict) -> None:
        """``record`` (``step``, ``epoch`` and metrics) to TensorBoard (as ``train/<name>`` unless the name
        has a ``/``) and, on the main process, as one line of ``metrics.jsonl``."""
        scalars = {(k if "/" in k else f"train/{k}"): v for k, v in record.items() if k not in ("step",)}
        self.accelerator.log(scalars, step=record["step"])
        if self.is_main:
            with self.metrics_file.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def log_image(self, tag: str, picture) -> None:
        """An ``(H, W, 3)`` uint8 image at this step to the trackers that take images (main process)."""
        log_image(self.accelerator, tag, picture, self.step)

    # -------------------------------------------------------------------------------------- state

    def checkpoint(self, state: dict, keep_last: int) -> Path:
        """Every rank: write the model, optimizer, RNG and ``state`` (+ the step) as a complete
        checkpoint, atomically (``checkpoint.py``)."""
        state = {"step": self.step, **state}
        return save_checkpoint(self.accelerator, self.output_dir / "checkpoints", self.step, state, keep_last)

    def resume(self, path: Path) -> dict:
        """Load model, optimizer (DeepSpeed shards included) and every rank's RNG from ``path``; the step
        counter continues from it. Returns the saved state."""
        self.accelerator.load_state(str(path))
        state = read_state(path)
        self.step = state["step"]
        return state

    def save_model(self, model, model_class, config, staging: str = "final"):
        """Save fp32 weights with ``save_pretrained`` into the output directory (returns the fp32 model on
        the main process, None elsewhere). Under DeepSpeed the fp32 master copy is sharded across ranks,
        so the state goes through a ZeRO checkpoint (``checkpoints/<staging>``) that is consolidated on the
        main process."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        final = None
        if self.deepspeed:
            checkpoint = self.output_dir / "checkpoints" / staging  # not step_*: never a resume point
            accelerator.save_state(str(checkpoint))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                final = model_class(config)
                final.load_state_dict(
                    get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model")
                )
        elif accelerator.is_main_process:
            final = accelerator.unwrap_model(model).float()
        if final is not None:  # config first, weights last: a model file means a complete save
            publish_folder(
                self.output_dir, lambda folder: final.save_pretrained(folder, safe_serialization=True)
            )
        accelerator.wait_for_everyone()
        return final

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.accelerator.end_training()
