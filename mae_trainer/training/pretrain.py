"""MAE pre-training loop (``mae-trainer pretrain``), read top to bottom like nanoGPT's train.py:
arguments → checks → accelerator → data → model/optimizer → loop (lr, step, log) → save.

Runs as is (one process, no DeepSpeed) or under ``accelerate launch`` with a DeepSpeed config
(ZeRO-1, BF16: ``accelerate_configs/*.yaml`` → ``ds_configs/zero1_bf16.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from ..data.beton import check_beton
from ..data.normalize import normalize, stats_tensor
from ..data.schedules import ResolutionSchedule, ScheduleError, parse_steps
from ..data.train_loader import ProgressiveLoader
from ..errors import InputError, TrainingError, UsageError
from ..modeling import PRESETS, MAEConfig, MAEForPreTraining
from .checkpoint import (
    check_compatible,
    complete_checkpoints,
    read_state,
    resolve_resume,
    save_checkpoint,
)
from .schedules import optimizer_steps_before, scaled_lr, warmup_cosine_lr
from .visualize import reconstruction_grid, save_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="YAML file of flag values (keys are flag names); command-line flags override it",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None, help="training .beton (mae-trainer write-dataset)")
    data.add_argument("--num-workers", type=int, default=8, help="FFCV decode threads per process")
    data.add_argument(
        "--crop-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode only the crop region of JPEG samples (libjpeg crop/skip + DCT scaling), as DailyMAE "
        "does; --no-crop-decode decodes whole images (same crops, same seeds)",
    )
    data.add_argument(
        "--interpolation",
        default="bicubic",
        choices=["bicubic", "area"],
        help="filter that resizes each crop: bicubic (reference MAE, antialiased like PIL) or area (FFCV)",
    )
    data.add_argument("--batches-ahead", type=int, default=2, help="batches FFCV prepares in advance")
    data.add_argument(
        "--no-os-cache",
        action="store_true",
        help="read through FFCV's process cache instead of the OS page cache",
    )
    res = parser.add_argument_group("resolution schedule (progressive resolution, DailyMAE)")
    res.add_argument(
        "--resolution",
        type=int,
        default=224,
        help="crop side; the final/reference side of a progressive schedule",
    )
    res.add_argument("--progressive", default="constant", choices=["constant", "linear", "steps"])
    res.add_argument("--start-resolution", type=int, default=160, help="linear: side before the ramp")
    res.add_argument("--ramp-start-epoch", type=int, default=0, help="linear: first epoch of the ramp")
    res.add_argument(
        "--ramp-end-epoch", type=int, default=0, help="linear: epoch the ramp reaches --resolution"
    )
    res.add_argument("--resolution-multiple", type=int, default=32, help="linear: round sides to this")
    res.add_argument(
        "--resolution-steps",
        default=None,
        help="steps: EPOCH:RES[:MASK],... e.g. the authors' 0:160:0.5,200:192:0.66,400:224:0.75",
    )
    res.add_argument(
        "--mask-schedule",
        default="fixed",
        choices=["fixed", "constant-visible"],
        help="constant-visible: mask ratio keeps the encoder's token count of --resolution",
    )
    res.add_argument(
        "--scale-batch-with-resolution",
        action="store_true",
        help="scale the per-rank batch by (resolution / side)^2 to keep patches per step; the lr follows "
        "each stage's effective batch (linear rule)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="base", help=f"preset: {', '.join(PRESETS)}")
    model.add_argument("--mask-ratio", type=float, default=0.75)
    model.add_argument(
        "--no-norm-pix-loss", action="store_true", help="regress raw (not per-patch normalised) pixels"
    )
    model.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute block activations (saves memory; L/H)",
    )
    optim = parser.add_argument_group("optimisation (MAE recipe defaults)")
    optim.add_argument("--epochs", type=int, default=800)
    optim.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    optim.add_argument("--batch-size", type=int, default=64, help="images per process per micro-step")
    optim.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help="images per optimizer step over all ranks; sets --batch-size to it ÷ (ranks × --grad-accum)",
    )
    optim.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    optim.add_argument("--blr", type=float, default=1.5e-4, help="base lr: lr = blr * effective batch / 256")
    optim.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides --blr)")
    optim.add_argument("--min-lr", type=float, default=0.0)
    optim.add_argument("--warmup-epochs", type=float, default=40)
    optim.add_argument("--weight-decay", type=float, default=0.05)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", type=Path, default=Path("runs/pretrain"))
    run.add_argument("--overwrite", action="store_true", help="reuse an output directory that holds a model")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--dist-timeout",
        type=float,
        default=1800,
        help="seconds a collective may wait for the other ranks before the run fails (a dead node)",
    )
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="optimizer steps between checkpoints (0: at each epoch end only)",
    )
    ckpt.add_argument("--keep-last", type=int, default=2, help="complete checkpoints kept")
    ckpt.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="auto: the newest complete checkpoint in OUTPUT_DIR/checkpoints (if any); or a path",
    )
    hub = parser.add_argument_group("publishing (Hugging Face Hub)")
    hub.add_argument(
        "--push-to-hub", default=None, metavar="REPO", help="upload the final model to this repo"
    )
    hub.add_argument("--hub-token", default=None, help="write token (default: $HF_TOKEN, saved login)")
    hub.add_argument("--hub-private", action="store_true", help="create the repo private")
    hub.add_argument("--hub-revision", default=None, help="branch to commit to")
    hub.add_argument("--hub-endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or the public Hub)")
    run.add_argument("--log-every", type=int, default=10, help="optimizer steps between log lines")
    run.add_argument(
        "--recon-images", type=int, default=8, help="images in each reconstruction grid (0: none)"
    )
    run.add_argument(
        "--recon-every",
        type=int,
        default=0,
        help="optimizer steps between reconstruction grids of the same images (0: only at the end)",
    )
    run.add_argument(
        "--recon-data",
        type=Path,
        default=None,
        help="held-out .beton for the reconstruction grids (default: images spread over --data)",
    )


def check_arguments(args: argparse.Namespace) -> MAEConfig:
    """Every check that needs no process group: fail before any work or any file is written."""
    if args.data is None:
        raise UsageError("--data: required (on the command line or in the --recipe file)")
    if args.model not in PRESETS:
        raise UsageError(f"--model {args.model!r}: unknown preset; choose one of {', '.join(PRESETS)}")
    patch = PRESETS[args.model].get("patch_size", 16)
    if args.resolution <= 0 or args.resolution % patch:
        raise UsageError(
            f"--resolution {args.resolution}: must be a positive multiple of the patch size {patch}"
        )
    if not 0.0 < args.mask_ratio < 1.0:
        raise UsageError(f"--mask-ratio {args.mask_ratio}: must be between 0 and 1")
    for flag in ("epochs", "batch_size", "grad_accum", "log_every", "num_workers"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps {args.max_steps}: must be at least 1")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise UsageError(f"--warmup-epochs {args.warmup_epochs}: must be in [0, --epochs={args.epochs})")
    if args.dist_timeout <= 0:
        raise UsageError(f"--dist-timeout {args.dist_timeout}: must be positive (seconds)")
    if args.recon_every < 0 or args.recon_images < 0:
        raise UsageError(
            f"--recon-every {args.recon_every} / --recon-images {args.recon_images}: must be ≥ 0"
        )
    if args.global_batch_size is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = world * args.grad_accum
        if args.global_batch_size < per_step or args.global_batch_size % per_step:
            raise UsageError(
                f"--global-batch-size {args.global_batch_size}: not divisible by {world} rank(s) × "
                f"--grad-accum {args.grad_accum} = {per_step}; choose a multiple of {per_step}"
            )
        args.batch_size = args.global_batch_size // per_step
    if args.batches_ahead < 1:
        raise UsageError(f"--batches-ahead {args.batches_ahead}: must be at least 1")
    args.schedule = make_schedule(args, patch)
    try:
        check_beton(args.data)
    except InputError as err:
        raise UsageError(f"--data {err}") from None
    if args.recon_data is not None:
        try:
            check_beton(args.recon_data)
        except InputError as err:
            raise UsageError(f"--recon-data {err}") from None
    config = MAEConfig.from_preset(
        args.model,
        image_size=args.resolution,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=not args.no_norm_pix_loss,
    )
    if args.push_to_hub:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        from ..hub import resolve_token

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as err:
            raise UsageError(f"--push-to-hub {args.push_to_hub!r}: {err}") from None
        resolve_token(args.hub_token)  # fail now, not after a day of training
    if args.save_every < 0 or args.keep_last < 1:
        raise UsageError(f"--save-every {args.save_every} / --keep-last {args.keep_last}: must be ≥ 0 / ≥ 1")
    args.resume_path = resolve_resume(args.resume, args.output_dir / "checkpoints")
    if args.resume_path is not None:
        saved = check_compatible(args.resume_path, config.to_dict())["sampler"]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if (saved["world_size"], saved["seed"]) != (world, args.seed):
            raise UsageError(
                f"--resume {args.resume_path}: saved by {saved['world_size']} rank(s) with --seed "
                f"{saved['seed']}; this run has {world} rank(s) and --seed {args.seed}. Resume with the same "
                "ranks and seed (each rank's data shard and position depend on them)"
            )
    if (args.output_dir / "model.safetensors").exists() and not args.overwrite:
        raise UsageError(
            f"--output-dir {args.output_dir}: already holds a model (pass --overwrite to replace it)"
        )
    return config


# The flag each ResolutionSchedule argument comes from (ScheduleError.argument).
SCHEDULE_FLAGS = {
    "kind": "--progressive",
    "steps": "--resolution-steps",
    "multiple": "--resolution-multiple",
    "resolution": "--resolution",
    "start_resolution": "--start-resolution",
    "mask_ratio": "--mask-ratio",
    "constant_visible": "--mask-schedule constant-visible:",
}


def make_schedule(args: argparse.Namespace, patch: int) -> ResolutionSchedule:
    if args.progressive == "linear" and not args.ramp_start_epoch <= args.ramp_end_epoch <= args.epochs:
        raise UsageError(
            f"--ramp-end-epoch {args.ramp_end_epoch}: must lie in [--ramp-start-epoch, --epochs]"
        )
    try:
        return ResolutionSchedule(
            kind=args.progressive,
            resolution=args.resolution,
            mask_ratio=args.mask_ratio,
            batch_size=args.batch_size,
            patch_size=patch,
            start_resolution=args.start_resolution,
            start_epoch=args.ramp_start_epoch,
            end_epoch=args.ramp_end_epoch,
            multiple=args.resolution_multiple,
            steps=parse_steps(args.resolution_steps) if args.resolution_steps else [],
            constant_visible=args.mask_schedule == "constant-visible",
            scale_batch=args.scale_batch_with_resolution,
        )
    except ScheduleError as err:
        raise UsageError(f"{SCHEDULE_FLAGS[err.argument]} {err}") from None


def make_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=args.dist_timeout)
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
        gradient_accumulation_steps=args.grad_accum,
        log_with="tensorboard",
        project_dir=str(args.output_dir),
        kwargs_handlers=handlers,
    )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # FFCV's Loader is not a torch DataLoader, so accelerate cannot infer the micro-batch: set it here.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.batch_size
    return accelerator


def run(args: argparse.Namespace) -> Path:
    """Pre-train and save the model into ``args.output_dir``; returns that directory."""
    from accelerate.utils import set_seed
    from timm.optim import param_groups_weight_decay
    from tqdm.auto import tqdm

    config = check_arguments(args)
    accelerator = make_accelerator(args)
    output_dir: Path = args.output_dir
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # Same seed everywhere for the weights; a rank-specific one for masks and crops.
    set_seed(args.seed)
    model = MAEForPreTraining(config)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    set_seed(args.seed, device_specific=True)

    loader = ProgressiveLoader(
        args.data,
        args.schedule,
        num_workers=args.num_workers,
        seed=args.seed,
        os_cache=not args.no_os_cache,
        crop_decode=args.crop_decode,
        interpolation=args.interpolation,
        batches_ahead=args.batches_ahead,
    )
    batches = [loader.batches_in_epoch(epoch) for epoch in range(args.epochs)]
    if min(batches) < args.grad_accum:
        raise UsageError(
            f"--batch-size {args.batch_size}: {accelerator.num_processes} process(es) × "
            f"{args.grad_accum} accumulation steps need more images than {args.data} holds"
        )
    effective_batch = args.batch_size * args.grad_accum * accelerator.num_processes
    peak_lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    # The linear rule per stage: a stage whose batch is scaled gets its lr scaled the same way.
    peak_lrs = [
        peak_lr * args.schedule.stage(epoch).batch_size / args.batch_size for epoch in range(args.epochs)
    ]
    total_steps = sum(batches) // args.grad_accum
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = optimizer_steps_before(args.warmup_epochs, batches, args.grad_accum)

    groups = param_groups_weight_decay(model, args.weight_decay, model.no_weight_decay())
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = next(model.parameters()).dtype
    mean = stats_tensor(config.image_mean, accelerator.device)
    std = stats_tensor(config.image_std, accelerator.device)

    hparams = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    hparams = {
        k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"
    }
    accelerator.init_trackers("tensorboard", config=hparams)
    if accelerator.is_main_process:
        write_resolved_config(args, output_dir / RESOLVED_CONFIG)
    recon_images = None
    if accelerator.is_main_process and args.recon_images > 0:
        recon_images = fixed_images(args.recon_data or args.data, args.resolution, args.recon_images)
    metrics_file = output_dir / "metrics.jsonl"
    step, start_epoch = 0, 0
    if args.resume_path is not None:
        # model, optimizer (DeepSpeed shards included) and every rank's python/numpy/torch RNG
        accelerator.load_state(str(args.resume_path))
        state = read_state(args.resume_path)
        step, start_epoch = state["step"], state["sampler"]["epoch"]
        loader.load_state_dict(state["sampler"])
        accelerator.print(
            f"resumed from {args.resume_path} at step {step} (epoch {start_epoch}, "
            f"batch {state['sampler']['batch']})"
        )
    if accelerator.is_main_process and args.resume_path is None:
        metrics_file.write_text("")
        accelerator.print(
            f"pretraining {args.model} ({args.progressive} schedule, final {args.resolution}px) on "
            f"{accelerator.num_processes} "
            f"process(es) ({accelerator.distributed_type}, {dtype}); effective batch "
            f"{effective_batch}, peak lr {peak_lr:.3g}"
            + (
                f" ({min(peak_lrs):.3g}-{max(peak_lrs):.3g} over the stages)"
                if args.scale_batch_with_resolution
                else ""
            )
            + f", {total_steps} steps"
        )

    window = {"loss": torch.zeros((), device=accelerator.device), "micro": 0, "images": 0, "wait": 0.0}
    window_start = time.perf_counter()
    progress = tqdm(
        total=total_steps,
        initial=step,
        disable=not accelerator.is_local_main_process,
        desc="pretrain",
        dynamic_ncols=True,
    )

    def checkpoint() -> None:
        state = {
            "step": step,
            "sampler": loader.state_dict(),
            "model_config": config.to_dict(),
            "args": hparams,
        }
        save_checkpoint(accelerator, output_dir / "checkpoints", step, state, args.keep_last)

    deepspeed = accelerator.state.deepspeed_plugin is not None
    grad_norm = None
    # Checkpoints are written at optimizer-step boundaries only, so that no accumulated gradient is pending
    # (it would be lost on resume): an epoch that ends mid-accumulation saves after the next step.
    checkpoint_due = False
    model.train()
    for epoch in range(start_epoch, args.epochs):
        if step >= total_steps:
            break
        batch_iter = loader.epoch(epoch)
        while True:
            wait_start = time.perf_counter()
            batch = next(batch_iter, None)
            window["wait"] += time.perf_counter() - wait_start
            if batch is None:
                break
            lr = warmup_cosine_lr(step, total_steps, warmup_steps, peak_lrs[epoch], args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pixel_values = normalize(batch.images.to(accelerator.device, non_blocking=True), mean, std, dtype)
            with accelerator.accumulate(model):
                loss = model(pixel_values, mask_ratio=batch.mask_ratio).loss
                check_finite(accelerator, loss, step + 1, epoch, batch.index, output_dir / "checkpoints")
                accelerator.backward(loss)
                logging = (step + 1) % args.log_every == 0 or step + 1 == total_steps
                if accelerator.sync_gradients and logging and not deepspeed:  # DeepSpeed computes its own
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in model.parameters() if p.grad is not None]
                    )
                optimizer.step()
                if accelerator.sync_gradients and deepspeed:
                    grad_norm = model.get_global_grad_norm()
                optimizer.zero_grad()
            window["loss"] += loss.detach().float()
            window["micro"] += 1
            window["images"] += batch.images.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % args.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(window["loss"] / window["micro"], "mean").item()
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "images_per_s": window["images"] / elapsed,
                    "data_wait_fraction": window["wait"] / elapsed,
                    "resolution": batch.resolution,
                    "mask_ratio": batch.mask_ratio,
                    "batch_size": batch.images.shape[0],
                }
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                if accelerator.is_main_process:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{mean_loss:.4f}", res=batch.resolution, lr=f"{lr:.2e}")
                window = {"loss": window["loss"].zero_(), "micro": 0, "images": 0, "wait": 0.0}
                window_start = time.perf_counter()
            if (checkpoint_due or (args.save_every and step % args.save_every == 0)) and step < total_steps:
                checkpoint()
                checkpoint_due = False
            if recon_images is not None and args.recon_every and step % args.recon_every == 0:
                log_reconstruction(
                    accelerator, accelerator.unwrap_model(model), recon_images, step, output_dir
                )
            if step >= total_steps:
                break
        if step < total_steps:  # epoch end: the resume point after a crash (the last step saves the model)
            if accelerator.sync_gradients:
                checkpoint()
            else:
                checkpoint_due = True
    progress.close()

    final = save_model(accelerator, model, config, output_dir)
    if recon_images is not None:
        picture = reconstruction_grid(final.float().cpu(), recon_images)
        save_png(picture, output_dir / "reconstruction.png")
        accelerator.get_tracker("tensorboard", unwrap=True).add_image(
            "reconstruction", picture, step, dataformats="HWC"
        )
    if accelerator.is_main_process and args.push_to_hub:
        from ..hub import push_to_hub

        url = push_to_hub(
            output_dir,
            args.push_to_hub,
            token=args.hub_token,
            private=args.hub_private,
            revision=args.hub_revision,
            endpoint=args.hub_endpoint,
        )
        accelerator.print(f"pushed to {args.push_to_hub}: {url}")
    accelerator.end_training()
    if accelerator.is_main_process:
        accelerator.print(
            f"model: {output_dir} (config.json, model.safetensors)\n"
            f"tensorboard: {output_dir / 'tensorboard'}\nmetrics: {metrics_file}"
            + (f"\nreconstruction: {output_dir / 'reconstruction.png'}" if recon_images is not None else "")
        )
    return output_dir


def save_model(
    accelerator, model, config: MAEConfig, output_dir: Path, model_class=MAEForPreTraining, staging="final"
):
    """Save fp32 weights with ``save_pretrained`` (returns the fp32 model on the main process). Under
    DeepSpeed the fp32 master copy is sharded across ranks, so the state goes through a ZeRO checkpoint
    (``checkpoints/<staging>``) that is consolidated on the main process."""
    accelerator.wait_for_everyone()
    final = None
    if accelerator.state.deepspeed_plugin is not None:
        checkpoint = output_dir / "checkpoints" / staging  # not step_*: never a resume point
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
    if final is not None:
        partial = output_dir / ".model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        final.save_pretrained(partial, safe_serialization=True)
        for item in partial.iterdir():  # config first, weights last: a model file means a complete save
            item.replace(output_dir / item.name)
        partial.rmdir()
    accelerator.wait_for_everyone()
    return final


def fixed_images(data: Path, resolution: int, count: int) -> torch.Tensor:
    """``count`` images spread evenly over ``data`` (so across classes), centre-cropped: the same ones in
    every reconstruction grid of a run, so the grids show progress."""
    from ..data.eval_loader import eval_loader

    total = check_beton(data)
    spread = np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()
    loader = eval_loader(data, batch_size=len(spread), resolution=resolution, num_workers=1, indices=spread)
    images, _ = next(iter(loader))
    return images.clone()  # FFCV reuses its output buffers


def log_reconstruction(accelerator, model, images: torch.Tensor, step: int, output_dir: Path) -> None:
    """Main process only: the grid at ``step`` as a TensorBoard image and ``reconstructions/step_N.png``.
    Runs the training weights in place (their dtype and device), in eval mode, without gradients."""
    if not accelerator.is_main_process:
        return
    picture = reconstruction_grid(model, images)
    folder = output_dir / "reconstructions"
    folder.mkdir(exist_ok=True)
    save_png(picture, folder / f"step_{step:08d}.png")
    accelerator.get_tracker("tensorboard", unwrap=True).add_image(
        "reconstruction", picture, step, dataformats="HWC"
    )


def check_finite(accelerator, loss: torch.Tensor, step: int, epoch: int, batch: int, root: Path) -> None:
    """Stop every rank together when any rank's loss is NaN/inf, before it reaches the weights or a
    checkpoint; the error names the step and the last good checkpoint to resume from."""
    bad = (~torch.isfinite(loss.detach())).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if bad.item() == 0:
        return
    found = complete_checkpoints(root)
    raise TrainingError(
        f"loss is {loss.item()} at step {step} (epoch {epoch}, batch {batch}) on {int(bad.item())} rank(s); "
        "nothing from this step was applied or saved. "
        + (
            f"Last good checkpoint: {found[-1]} (lower --blr/--lr or lengthen --warmup-epochs, then "
            "--resume auto)"
            if found
            else "No checkpoint was written yet (lower --blr/--lr or lengthen --warmup-epochs)"
        )
    )


RESOLVED_CONFIG = "resolved_config.yaml"
_NOT_RECIPE_KEYS = {"func", "command", "recipe", "schedule", "resume_path", "hub_token"}


def write_resolved_config(args: argparse.Namespace, path: Path) -> None:
    """Every flag's final value (recipe file + command line + derived per-rank batch) as a recipe file:
    ``mae-trainer pretrain --recipe OUTPUT/resolved_config.yaml`` repeats the run."""
    import yaml

    values = {
        key.replace("_", "-"): str(value) if isinstance(value, Path) else value
        for key, value in sorted(vars(args).items())
        if key not in _NOT_RECIPE_KEYS and not callable(value)
    }
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(
        "# Resolved settings of this run (mae-trainer pretrain --recipe THIS_FILE repeats it)\n"
        + yaml.safe_dump(values, sort_keys=False)
    )
    partial.replace(path)
