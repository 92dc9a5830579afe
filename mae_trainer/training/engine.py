"""What the training commands share (pre-training and fine-tuning), so each of them reads as its own
straight loop over its own data, model and loss:

- the accelerator: process group (gloo on CPU ranks, ``--dist-timeout`` on every group), DeepSpeed's
  micro-batch, gradient accumulation, trackers;
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

import ctypes
import ctypes.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed.distributed_c10d as c10d
from accelerate import Accelerator
from accelerate.checkpointing import load_custom_state
from accelerate.utils import InitProcessGroupKwargs
from tqdm.auto import tqdm

from ..config import TrainingConfig, deepspeed_launched
from ..errors import TrainingError
from ..publish import publish_folder
from . import elastic
from .checkpoint import (
    any_rank_failed,
    complete_checkpoints,
    raise_if_final_save_failed,
    save_checkpoint,
    write_error,
)
from .elastic import universal_config
from .rendezvous import end_rendezvous, rendezvous_timeout
from .schedules import warmup_cosine_lr
from .throughput import window_throughput
from .trackers import drop_records_after, log_image, make_trackers, start_trackers


def make_accelerator(
    config: TrainingConfig, micro_batch: int, trackers: list, grad_accum: int, load_universal: bool = False
):
    timeout = timedelta(seconds=config.dist_timeout)
    # Groups created later without a timeout (DeepSpeed's clone of the world group for ZeRO's collectives)
    # take torch's module default (30 min gloo, 10 min NCCL): make that --dist-timeout too, so that a hung
    # node ends the run within the bound and not only a dead one.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    # The ranks meet under a longer bound (a slow node's start is no failure), then --dist-timeout applies.
    rendezvous = rendezvous_timeout(timeout)
    handlers = [InitProcessGroupKwargs(timeout=rendezvous)]
    launched = any(os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK")) or deepspeed_launched()
    if launched and not torch.cuda.is_available():
        # DeepSpeed on CPU ranks needs gloo; with the default backend its batch-size check fails.
        handlers = [InitProcessGroupKwargs(backend="gloo", timeout=rendezvous)]
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accum,
        log_with=trackers or None,
        project_dir=str(config.output_dir),
        kwargs_handlers=handlers,
    )
    end_rendezvous(timeout, rendezvous)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # FFCV's Loader is not a torch DataLoader, so accelerate cannot infer the micro-batch: set it here.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
        if load_universal:  # a checkpoint of another layout is loaded (elastic.py)
            universal_config(plugin.deepspeed_config)
    return accelerator


HOST_HEAP_BYTES = 256 << 20


def keep_host_memory() -> bool:
    """Make glibc's ``malloc`` serve blocks up to 256 MiB from its heap and keep up to 512 MiB freed there,
    instead of mapping fresh pages for every allocation above its 32 MiB ceiling and unmapping them when
    freed: a CPU run allocates a batch-sized float tensor several times per step (a batch of 64 images at
    224 px is 38.5 MB), and each fresh mapping is paid again in page faults (≈ 17 ms per batch here). It
    lifts the FFCV fine-tune data path from 1.8× to 2.4× the PIL path's images/s on this machine
    (``benchmarks/finetune_data.py``, the setting applied to both). No-op (False) without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, HOST_HEAP_BYTES) and mallopt(m_trim_threshold, 2 * HOST_HEAP_BYTES))


def adamw(groups, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel (one kernel per step for all tensors) where torch has one for
    ``device``: CUDA, and the CPU too (there 0.34-0.47× the time of the default step for MAE-S/16's
    parameters: ``benchmarks/fused_adamw.py``). Same update; DeepSpeed's ZeRO-1 wraps it like any torch
    optimizer."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = torch.device(device).type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the helper: the devices with a fused AdamW
        fused = torch.device(device).type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def compile_in_place(model: torch.nn.Module, graphs: int, **options) -> None:
    """``torch.compile`` ``model`` in place (``nn.Module.compile``: its state dict, checkpoints and
    ``save_pretrained`` are unchanged), before ``prepare`` (DeepSpeed's engine and DDP then call the
    compiled module). Static shapes (``dynamic=False``): a stage lasts many epochs, so each of its shapes
    (side, batch, kept tokens) gets its own kernels, compiled once when it first appears. ``graphs`` is
    how many such shapes the run has: dynamo's recompile limit is raised to hold them all (past its limit
    it would fall back to eager without a word). ``options`` go to ``torch.compile`` (e.g. ``backend``)."""
    import torch._dynamo.config as dynamo  # dynamo's import is seconds: only runs that compile pay it

    dynamo.recompile_limit = max(dynamo.recompile_limit, graphs + 2)
    model.compile(dynamic=False, **options)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Engine:
    """One training run's accelerator, step counter, lr, metrics window, checkpoints and final save.

    ``metric_prefix`` is put before each metric's name in ``metrics.jsonl`` (``""`` → ``loss``,
    ``"train/"`` → ``train/loss``); the trackers always get ``train/<name>``. ``grad_accum`` overrides
    ``--grad-accum`` (a resumed run's layout derives it); ``load_universal``: a checkpoint of another
    layout will be loaded (:meth:`resume`); ``cosine``: ``(step, progress)`` where a ``--replan``
    re-anchored the lr cosine (``schedules.warmup_cosine_lr``).
    """

    def __init__(
        self,
        config: TrainingConfig,
        *,
        micro_batch: int,
        name: str,
        metric_prefix: str = "",
        grad_accum: int | None = None,
        load_universal: bool = False,
        cosine: tuple[int, float] | None = None,
    ):
        self.config = config
        self.name, self.prefix = name, metric_prefix
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum or config.grad_accum
        self.cosine = tuple(cosine) if cosine else None
        trackers = make_trackers(config.trackers, config.output_dir, name)  # --report-to
        self.accelerator = make_accelerator(config, micro_batch, trackers, self.grad_accum, load_universal)
        if self.device.type == "cpu":  # batches live in host memory: keep it mapped (keep_host_memory)
            keep_host_memory()
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

    def keep_in_checkpoints(self, obj) -> None:
        """Save ``obj``'s ``state_dict`` (whole, as the main process holds it) with every checkpoint and
        load it on every rank at a resume, on any layout (an EMA of the weights)."""
        self.accelerator.register_for_checkpointing(obj)

    def start(self, total_steps: int, hparams: dict, *, fresh: bool) -> None:
        """Open the trackers and the progress bar; a fresh run (not a resume) starts ``metrics.jsonl``. A
        run resumed at step S keeps each step once: ``metrics.jsonl`` drops its records past S (written
        by the run that went on after the checkpoint) and TensorBoard discards its events past S."""
        self.total_steps = total_steps
        scalars = {k: str(v) if isinstance(v, Path) else v for k, v in hparams.items()}
        scalars = {k: v for k, v in scalars.items() if isinstance(v, (int, float, str, bool))}
        resumed_at = None if fresh else self.step
        start_trackers(
            self.accelerator, self.name, scalars, self.output_dir, fresh=fresh, resumed_at=resumed_at
        )
        if self.is_main and fresh:
            self.metrics_file.write_text("")
        elif self.is_main:
            drop_records_after(self.metrics_file, self.step)
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
        return self._log_at(self.step)

    def set_lr(self, optimizer, peak_lr: float, warmup_steps: int) -> float:
        """MAE's per-iteration lr (linear warmup, half-cycle cosine to ``--min-lr``) at the current step;
        a group's ``lr_scale`` (layer decay) multiplies it."""
        lr = warmup_cosine_lr(
            self.step, self.total_steps, warmup_steps, peak_lr, self.config.min_lr, anchor=self.cosine
        )
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
        if self.bad is None:
            self.bad = torch.zeros(3, device=loss.device)  # [count, first micro-step index, its loss]
            self.bad[1].fill_(-1)
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
        bad = self.bad if self.bad is not None else torch.tensor([0.0, -1.0, 0.0], device=device)
        row = torch.cat([*(v.to(device, torch.float32).reshape(1) for v in values), bad])
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
        self.bad = None
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
        record[self.prefix + "grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
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

    def resume(self, path: Path, state: dict, saved, model, optimizer) -> dict:
        """Load model, optimizer and RNG from checkpoint ``path`` (whose ``trainer_state.json`` is
        ``state``), written on layout ``saved`` (:class:`~mae_trainer.training.run_state.Layout`); the step
        counter continues from it. Returns ``state``.

        The same number of ranks and engine: accelerate's ``load_state`` (bit-exact, every rank's RNG).
        Another number of DeepSpeed ranks, or one process without DeepSpeed: the optimizer state goes
        through DeepSpeed's universal checkpoint (``elastic.py``); the RNG files of the old ranks do not
        map onto the new ones and are not loaded (the streams that matter are keyed: ``run_state.py``)."""
        if saved.needs_conversion(self.num_processes, "deepspeed" if self.deepspeed else "torch"):
            self._load_elsewhere(path, model, optimizer)
        else:
            self.accelerator.load_state(str(path))
        self.step = state["step"]
        return state

    def _load_elsewhere(self, path: Path, model, optimizer) -> None:
        staging = elastic.staging_folder(path)
        error = None
        if self.is_main:
            try:
                elastic.convert(path, staging)
            except TrainingError as err:
                error = err
        if any_rank_failed(self.accelerator, error):
            raise error or TrainingError(f"{path}: the conversion failed on the main process")
        try:
            if self.deepspeed:
                model.load_checkpoint(str(staging), tag=elastic.TAG, load_lr_scheduler_states=False)
            else:
                elastic.load_universal_into_torch(staging, self.accelerator.unwrap_model(model), optimizer)
            for index, obj in enumerate(self.accelerator._custom_objects):  # whole on every rank (EMA)
                load_custom_state(obj, str(path), index)
        finally:
            self.accelerator.wait_for_everyone()
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)

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
        if self.progress is not None:
            self.progress.close()
        self.accelerator.end_training()
