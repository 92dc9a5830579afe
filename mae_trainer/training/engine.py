"""What the training commands share once the accelerator, model and optimizer exist (``accelerator.py``
makes them), so that pre-training and fine-tuning each read as a straight loop over their own data, model
and loss:

- one micro-step: forward, backward, optimizer step, with no host read on the hot path; a non-finite loss
  is recorded on the device and stops every rank together at the next log, checkpoint or save;
- the per-iteration lr (``lr_scale`` of layer-decay groups honoured);
- the metrics window: mean loss (and any other per-micro-step means) over ranks, images/s, the fraction of
  time spent waiting for data, the gradient norm → the ``--report-to`` trackers (``trackers.py``),
  ``metrics.jsonl`` and the progress bar;
- checkpoints (``checkpoint.py``) and the final fp32 save from ZeRO shards.

Nothing here reads flags: it gets a :class:`~mae_trainer.config.TrainingConfig`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import TrainingConfig
from ..errors import TrainingError
from ..publish import publish_folder
from .checkpoint import complete_checkpoints, raise_if_final_save_failed, save_checkpoint, write_error
from .schedules import warmup_cosine_lr
from .throughput import window_throughput
from .trackers import drop_records_after, log_image, start_trackers


class Engine:
    """One training run's step counter, lr, metrics window, checkpoints and final save, on a prepared
    ``accelerator`` (``accelerator.make_accelerator``; model and optimizer prepared, and a checkpoint
    loaded with ``accelerator.resume``, before the Engine is made).

    Whole when constructed: ``step`` is ``resumed_at`` (0 for a fresh run), ``lr`` the lr at that step,
    ``grad_norm`` NaN until the first step that computes one, the trackers started, ``metrics.jsonl``
    started (a fresh run) or cut back to ``resumed_at`` (a resumed run keeps each step once; TensorBoard
    discards its events past it too), the progress bar open at ``step`` of ``total_steps``.

    Per micro-batch the caller does, in this order: :meth:`set_lr` → :meth:`micro_step` (which advances
    ``step`` when the accumulation completes) → when it stepped: :meth:`log` if :attr:`log_due`,
    :meth:`checkpoint` when one is due; until :attr:`done`. Then :meth:`save_model` and :meth:`finish`.
    :meth:`timed` wraps the batches to count the time spent waiting for data.

    ``peak_lr`` and ``warmup_steps`` shape MAE's per-iteration lr (:meth:`lr_at`); ``cosine``: ``(step,
    progress)`` where a ``--replan`` re-anchored the cosine (``schedules.warmup_cosine_lr``).
    ``hparams`` (the resolved recipe) go to the trackers. ``metric_prefix`` is put before each metric's
    name in ``metrics.jsonl`` (``""`` → ``loss``, ``"train/"`` → ``train/loss``); the trackers always get
    ``train/<name>``.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: TrainingConfig,
        *,
        name: str,
        total_steps: int,
        peak_lr: float,
        warmup_steps: int,
        hparams: dict,
        resumed_at: int | None = None,
        metric_prefix: str = "",
        cosine: tuple[int, float] | None = None,
    ):
        self.accelerator = accelerator
        self.config = config
        self.name, self.prefix = name, metric_prefix
        self.output_dir: Path = config.output_dir
        self.metrics_file = self.output_dir / "metrics.jsonl"
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.peak_lr = peak_lr
        self.cosine = tuple(cosine) if cosine else None
        self.step = resumed_at or 0
        self.lr = self.lr_at(self.step)
        self.grad_norm: torch.Tensor | float = math.nan

        scalars = {k: str(v) if isinstance(v, Path) else v for k, v in hparams.items()}
        scalars = {k: v for k, v in scalars.items() if isinstance(v, (int, float, str, bool))}
        fresh = resumed_at is None
        start_trackers(accelerator, name, scalars, self.output_dir, fresh=fresh, resumed_at=resumed_at)
        if self.is_main and fresh:
            self.metrics_file.write_text("")
        elif self.is_main:
            drop_records_after(self.metrics_file, self.step)
        self.progress = tqdm(
            total=total_steps,
            initial=self.step,
            disable=not accelerator.is_local_main_process,
            desc=name,
            dynamic_ncols=True,
        )
        self._new_window()

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

    # -------------------------------------------------------------------------------------- the step

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @property
    def log_due(self) -> bool:
        return self._log_at(self.step)

    def lr_at(self, step: int, peak_lr: float | None = None) -> float:
        """MAE's per-iteration lr at ``step``: linear warmup, half-cycle cosine to ``--min-lr``, from
        ``peak_lr`` (a stage's own, under ``--scale-batch-with-resolution``) or the run's."""
        peak = self.peak_lr if peak_lr is None else peak_lr
        return warmup_cosine_lr(
            step, self.total_steps, self.warmup_steps, peak, self.config.min_lr, anchor=self.cosine
        )

    def set_lr(self, optimizer, peak_lr: float | None = None) -> float:
        """Set the lr of the current step (:meth:`lr_at`) on ``optimizer``; a group's ``lr_scale`` (layer
        decay) multiplies it."""
        lr = self.lr = self.lr_at(self.step, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
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
        """One micro-step: ``forward()`` (returns an output with ``.loss``), backward, and the optimizer step
        when accumulation is complete (``self.step`` then advances). Returns ``(output, stepped)``.

        Nothing here reads a value back to the host: on a GPU the host queues step after step while the
        card works. A non-finite loss is recorded on the device (:meth:`_watch`) and stops the run at the
        next :meth:`verify` (every log step, before every checkpoint and before the final save), naming the
        first bad step and ``where`` (the batch): it can reach the weights, never a checkpoint or the saved
        model. ``flops_per_image`` (the model's training FLOPs per image, when the caller knows them) adds
        the achieved rate to the log (``throughput.py``)."""
        accelerator = self.accelerator
        with accelerator.accumulate(model):
            output = forward()
            loss = output.loss
            self._watch(loss.detach(), where)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self._log_at(self.step + 1) and not self.deepspeed:
                # DeepSpeed computes its own norm; a tensor, read at the log with the rest
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

    def _watch(self, loss: torch.Tensor, where: str) -> None:
        """Record on the device, without a host read, the first micro-step of the window whose loss is not
        finite (its index and loss) and how many were."""
        bad = ~torch.isfinite(loss.float())
        first = bad & (self.bad[1] < 0)
        self.bad[0] += bad.float()
        self.bad[2] = torch.where(first, loss.float(), self.bad[2])
        self.bad[1].masked_fill_(first, len(self.window["where"]))
        self.window["where"].append((self.step + 1, where))

    def verify(self) -> None:
        """The finite-loss check of the window so far, agreed by every rank (one collective, one host read):
        raises :class:`TrainingError` naming the first bad step when any rank saw a non-finite loss."""
        self._gather([])

    def _gather(self, values: list[torch.Tensor]) -> list[list[float]]:
        """Every rank's ``values`` (scalars) plus its non-finite record, in one all-gather and one host read;
        raises on a non-finite loss anywhere. Returns one row of ``values`` per rank."""
        device = self.device
        row = torch.cat([*(v.to(device, torch.float32).reshape(1) for v in values), self.bad])
        rows = self.accelerator.gather(row[None]) if self.num_processes > 1 else row[None]
        rows = rows.tolist()  # the host read
        ranks = [r for r in rows if r[-3] > 0]
        if ranks:
            first = min(ranks, key=lambda r: r[-2])
            step, where = self.window["where"][int(first[-2])]
            self._raise_nonfinite(first[-1], step, where, len(ranks))
        return [r[: len(values)] for r in rows]

    def _raise_nonfinite(self, loss: float, step: int, where: str, ranks: int) -> None:
        found = complete_checkpoints(self.output_dir / "checkpoints")
        raise TrainingError(
            f"loss is {loss} at step {step} ({where}) on {ranks} rank(s); the run stopped before any "
            "checkpoint or model held it. "
            + (
                f"Last good checkpoint: {found[-1]} (lower --blr/--lr or lengthen --warmup-epochs, then "
                "--resume auto)"
                if found
                else "No checkpoint was written yet (lower --blr/--lr or lengthen --warmup-epochs)"
            )
        )

    # -------------------------------------------------------------------------------------- metrics

    def _log_at(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == self.total_steps

    def _new_window(self) -> None:
        self.window = {"sums": {}, "micro": 0, "images": 0, "wait": 0.0, "flops": 0.0, "where": []}
        self.bad = torch.zeros(3, device=self.device)  # [count, first micro-step index, its loss]
        self.bad[1].fill_(-1)
        self.window_start = time.perf_counter()

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add a per-micro-step value to the window; the log reports its mean over micro-steps and ranks."""
        sums = self.window["sums"]
        sums[name] = sums[name] + value if name in sums else value.detach().float().clone()

    def log(self, epoch: int, **extra) -> dict:
        """Close the window: one record to the trackers and ``metrics.jsonl``, the progress bar's postfix.
        Every tensor of the window (metric sums, the grad norm, the non-finite record) comes back to the
        host in one all-gather and one read; a non-finite loss in the window stops the run here."""
        window = self.window
        names = list(window["sums"])
        values = [window["sums"][n] / window["micro"] for n in names]
        grad_norm = self.grad_norm
        if isinstance(grad_norm, torch.Tensor):
            values.append(grad_norm.detach())
        rows = self._gather(values)
        elapsed = time.perf_counter() - self.window_start  # after the read: the device's work included
        record = {"step": self.step, "epoch": epoch}
        for i, name in enumerate(names):
            record[self.prefix + name] = sum(r[i] for r in rows) / len(rows)
        record[self.prefix + "lr"] = self.lr
        if isinstance(grad_norm, torch.Tensor):
            grad_norm = rows[0][len(names)]  # the same on every rank (gradients are all-reduced)
        record[self.prefix + "grad_norm"] = float(grad_norm)
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
        """``record`` (``step``, ``epoch`` and metrics) to the trackers (as ``train/<name>`` unless the name
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
        self.verify()  # a non-finite loss since the last log never reaches a checkpoint
        state = {"step": self.step, **state}
        return save_checkpoint(self.accelerator, self.output_dir / "checkpoints", self.step, state, keep_last)

    def save_model(self, model, model_class, config, staging: str = "final"):
        """Save fp32 weights with ``save_pretrained`` into the output directory (returns the fp32 model on
        the main process, None elsewhere). Under DeepSpeed the fp32 master copy is sharded across ranks,
        so the state goes through a ZeRO checkpoint (``checkpoints/<staging>``) that is consolidated on the
        main process, then removed (also when the save fails). A write that fails anywhere (a full disk)
        raises ``TrainingError`` on every rank naming the folder and the newest complete checkpoint; the
        checkpoints stay as they were and no model file is left half written (``publish_folder``)."""
        accelerator = self.accelerator
        self.verify()  # nor the saved model
        accelerator.wait_for_everyone()
        final, error = None, None
        checkpoint = self.output_dir / "checkpoints" / staging  # not step_*: never a resume point
        try:
            if self.deepspeed:
                error = write_error(lambda: accelerator.save_state(str(checkpoint)))
                raise_if_final_save_failed(accelerator, error, self.output_dir)
                if accelerator.is_main_process:
                    from deepspeed.utils.zero_to_fp32 import (  # DeepSpeed runs only
                        get_fp32_state_dict_from_zero_checkpoint,
                    )

                    final = model_class(config)
                    final.load_state_dict(
                        get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model")
                    )
                    shutil.rmtree(checkpoint, ignore_errors=True)  # consolidated: its space is free again
            elif accelerator.is_main_process:
                final = accelerator.unwrap_model(model).float()
            if final is not None:  # config first, weights last: a model file means a complete save
                error = write_error(
                    lambda: publish_folder(
                        self.output_dir, lambda folder: final.save_pretrained(folder, safe_serialization=True)
                    )
                )
            raise_if_final_save_failed(accelerator, error, self.output_dir)
        finally:
            if self.deepspeed and accelerator.is_main_process:
                shutil.rmtree(checkpoint, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def finish(self) -> None:
        """Close the progress bar and the trackers."""
        self.progress.close()
        self.accelerator.end_training()
