"""The process side of a training run, set up before its Engine: the accelerate ``Accelerator`` (process
group with gloo on CPU ranks and ``--dist-timeout`` on every group, DeepSpeed's micro-batch, gradient
accumulation, the ``--report-to`` trackers, the output folder), host memory, the optimizer, ``torch.compile``
and loading a checkpoint into the prepared model and optimizer (:func:`resume`, on the layout it was saved
on or another one). ``engine.py`` is what runs the steps once these exist.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed.distributed_c10d as c10d
from accelerate import Accelerator
from accelerate.checkpointing import load_custom_state
from accelerate.utils import InitProcessGroupKwargs

from ..config import TrainingConfig, deepspeed_launched
from ..errors import TrainingError
from . import elastic
from .checkpoint import any_rank_failed
from .rendezvous import end_rendezvous, rendezvous_timeout
from .trackers import make_trackers


def make_accelerator(
    config: TrainingConfig,
    *,
    name: str,
    micro_batch: int,
    grad_accum: int | None = None,
    load_universal: bool = False,
) -> Accelerator:
    """The run's ``Accelerator``, every rank in its process group, the trackers of ``--report-to`` made
    (started by the Engine) and ``config.output_dir`` created. ``grad_accum`` overrides ``--grad-accum``
    (a resumed run's layout derives it); ``load_universal``: a checkpoint of another layout will be loaded
    (:func:`resume`), which DeepSpeed must be told before its engine exists."""
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
    trackers = make_trackers(config.trackers, config.output_dir, name)
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accum or config.grad_accum,
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
            elastic.universal_config(plugin.deepspeed_config)
    if accelerator.device.type == "cpu":  # batches live in host memory: keep it mapped
        keep_host_memory()
    if accelerator.is_main_process:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
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


def resume(accelerator: Accelerator, path: Path, saved, model, optimizer) -> None:
    """Load model, optimizer, RNG and the objects registered for checkpointing (an EMA) from checkpoint
    ``path``, written on layout ``saved`` (:class:`~mae_trainer.training.run_state.Layout`), into the
    prepared ``model`` and ``optimizer``.

    The same number of ranks and engine: accelerate's ``load_state`` (bit-exact, every rank's RNG).
    Another number of DeepSpeed ranks, or one process without DeepSpeed: the optimizer state goes
    through DeepSpeed's universal checkpoint (``elastic.py``); the RNG files of the old ranks do not
    map onto the new ones and are not loaded (the streams that matter are keyed: ``run_state.py``)."""
    deepspeed = accelerator.state.deepspeed_plugin is not None
    if not saved.needs_conversion(accelerator.num_processes, "deepspeed" if deepspeed else "torch"):
        accelerator.load_state(str(path))
        return
    staging = elastic.staging_folder(path)
    error = None
    if accelerator.is_main_process:
        try:
            elastic.convert(path, staging)
        except TrainingError as err:
            error = err
    if any_rank_failed(accelerator, error):
        raise error or TrainingError(f"{path}: the conversion failed on the main process")
    try:
        if deepspeed:
            model.load_checkpoint(str(staging), tag=elastic.TAG, load_lr_scheduler_states=False)
        else:
            elastic.load_universal_into_torch(staging, accelerator.unwrap_model(model), optimizer)
        for index, obj in enumerate(accelerator._custom_objects):  # whole on every rank (EMA)
            load_custom_state(obj, str(path), index)
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
