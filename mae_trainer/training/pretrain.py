"""MAE pre-training (``mae-trainer pretrain``), read top to bottom like nanoGPT's train.py:
accelerator → model → data → optimizer → resume → engine → loop (lr, step, log, checkpoint) → save →
push. What the run is (schedule, batches, resume contract) was settled before, by ``pretrain_plan.check``.

Runs as is (one process, no DeepSpeed) or under ``accelerate launch`` with a DeepSpeed config
(ZeRO-1, BF16: ``accelerate_configs/*.yaml`` → ``ds_configs/zero1_bf16.json``). The machinery shared
with fine-tuning is ``accelerator.py`` (process group, optimizer, resume) and ``engine.py`` (micro-step,
lr, metrics, checkpoints, fp32 save).

The image size in plain sight: ``config`` → ``pretrain_plan.make_schedule`` → ``schedule.stage(epoch)``
→ ``ProgressiveLoader.epoch`` sets the decoder's ``output_size`` → ``batch`` → ``model(pixels,
mask_ratio=batch.mask_ratio)`` (the position table follows the batch's side).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np  # noqa: F401  (numpy before torch keeps FFCV's numba happy)
import torch
from accelerate.utils import set_seed
from timm.optim import param_groups_weight_decay

from ..config import PretrainConfig, world_size
from ..data.eval_loader import fixed_images
from ..data.normalize import normalize, stats_tensor
from ..data.train_loader import ProgressiveLoader
from ..hub import push_run
from ..modeling import MAEConfig, MAEForPreTraining
from ..modeling.flops import mae_training_flops_per_image
from ..modeling.modeling_mae import kept_patches
from ..provenance import origin_of, write_provenance
from .accelerator import adamw, compile_in_place, compiled_graphs, make_accelerator, resume
from .engine import Engine
from .init_from import init_weights
from .lifecycle import StopSignals
from .online_eval import OnlineEval
from .pretrain_plan import Plan
from .run_state import KEY as RUN_KEY
from .schedules import optimizer_steps_before, scaled_lr
from .visualize import reconstruction_grid, save_png

RESOLVED_CONFIG = "resolved_config.yaml"


def train(config: PretrainConfig, plan: Plan) -> Path:
    """Pre-train on ``plan`` (from ``pretrain_plan.check``) and save the model into ``config.output_dir``."""
    model_config = MAEConfig.from_preset(
        config.model,
        image_size=config.resolution,
        mask_ratio=config.mask_ratio,
        norm_pix_loss=not config.no_norm_pix_loss,
    )
    layout = plan.run.layout
    evaluator = OnlineEval(config, plan.batch_size, world_size()) if config.eval_data else None
    accelerator = make_accelerator(
        config,
        name="pretrain",
        micro_batch=layout.batch,
        grad_accum=layout.accumulation,
        load_universal=plan.load_universal,
    )
    device = accelerator.device
    stop = StopSignals(accelerator.num_processes)  # SIGTERM/SIGUSR1 → checkpoint at the next step
    output_dir = config.output_dir

    # Same seed everywhere for the weights; a rank-specific one for masks and crops.
    set_seed(config.seed)
    model = MAEForPreTraining(model_config)
    init_weights(accelerator.print, model, config.init_from, plan)  # --init-from, before prepare
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    set_seed(config.seed, device_specific=True)

    loader = ProgressiveLoader(
        config.data,
        plan.schedule,
        num_workers=config.num_workers,
        seed=config.seed,
        accumulation=layout.accumulation,
        os_cache=not config.no_os_cache,
        crop_decode=config.crop_decode,
        interpolation=config.interpolation,
        batches_ahead=config.batches_ahead,
        device=device,
    )
    effective_batch = layout.global_batch
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.blr, effective_batch)
    # The linear rule per stage: a stage whose batch is scaled gets its lr scaled the same way.
    peak_lrs = [peak_lr * plan.schedule.stage(e).batch_size / plan.batch_size for e in range(config.epochs)]
    total_steps = plan.total_steps
    warmup_steps = optimizer_steps_before(config.warmup_epochs, plan.batches, layout.accumulation)

    groups = param_groups_weight_decay(model, config.weight_decay, model.no_weight_decay())
    optimizer = adamw(groups, peak_lr, (0.9, 0.95), device)
    if config.compile:
        shapes = set()
        for epoch in range(config.epochs):
            stage = plan.schedule.stage(epoch)
            grid = (stage.resolution // config.patch_size) ** 2
            shapes.add((stage.batch_size, stage.resolution, kept_patches(grid, stage.mask_ratio)))
        compile_in_place(model, graphs=len(shapes), backend=config.compile_backend)
        graphs_before = compiled_graphs()
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = next(model.parameters()).dtype
    mean = stats_tensor(model_config.image_mean, device)
    std = stats_tensor(model_config.image_std, device)

    # the per-rank batch and accumulation this run used
    resolved = dataclasses.replace(config, batch_size=layout.batch, grad_accum=layout.accumulation)
    if accelerator.is_main_process:
        resolved.write_recipe(output_dir / RESOLVED_CONFIG)
        if plan.resume is None:  # a fresh run: where its model comes from, for the model card
            write_provenance(output_dir, base_model=origin_of(config.init_from),
                             datasets=config.dataset_names, license=config.hub_license)  # fmt: skip
    recon_images = None
    if accelerator.is_main_process and config.recon_images > 0:
        recon_images = fixed_images(config.recon_data or config.data, config.resolution, config.recon_images)
    start_epoch = 0
    point = plan.resume
    if point is not None:
        resume(accelerator, point.path, point.saved.layout, model, optimizer)
        sampler = point.state["sampler"]
        start_epoch = sampler["epoch"]
        loader.load_state_dict(sampler)
        if point.layout_note:
            accelerator.print(point.layout_note)
        accelerator.print(
            f"resumed from {point.path} at step {point.state['step']} (epoch {start_epoch}, "
            f"{sampler['samples']} images into it)"
        )
    engine = Engine(
        accelerator,
        config,
        name="pretrain",
        total_steps=total_steps,
        peak_lr=peak_lr,
        warmup_steps=warmup_steps,
        hparams=resolved.to_recipe(),
        resumed_at=None if point is None else point.state["step"],
        cosine=plan.run.cosine,
    )
    if point is None:
        engine.print(
            f"pretraining {config.model} ({config.progressive} schedule, final {config.resolution}px) on "
            f"{engine.num_processes} process(es) ({accelerator.distributed_type}, {dtype}); "
            f"effective batch {effective_batch}, peak lr {peak_lr:.3g}"
            + (
                f" ({min(peak_lrs):.3g}-{max(peak_lrs):.3g} over the stages)"
                if config.scale_batch_with_resolution
                else ""
            )
            + f", {total_steps} steps"
        )

    def checkpoint() -> Path:
        state = {"sampler": loader.state_dict(), RUN_KEY: plan.run.to_dict()}
        return engine.checkpoint({**state, "args": resolved.to_recipe()}, config.keep_last)

    # Checkpoints are written at optimizer-step boundaries only, so that no accumulated gradient is pending;
    # an epoch holds whole optimizer steps (sampler.py), so its end is one.
    patch = config.patch_size
    model.train()
    for epoch in range(start_epoch, config.epochs):
        if engine.done:
            break
        stage = plan.schedule.stage(epoch)  # what loader.epoch applies; the FLOPs follow it
        flops_per_image = mae_training_flops_per_image(model_config, stage.resolution, stage.mask_ratio)
        for batch in engine.timed(loader.epoch(epoch)):
            engine.set_lr(optimizer, peak_lrs[epoch])
            pixels = normalize(batch.images.to(device, non_blocking=True), mean, std, dtype)
            noise = batch.mask_noise((batch.resolution // patch) ** 2, device)  # layout-free masks
            _, stepped = engine.micro_step(
                model,
                optimizer,
                functools.partial(model, pixels, noise=noise, mask_ratio=batch.mask_ratio),
                images=batch.images.shape[0],
                where=f"epoch {epoch}, batch {batch.index}",
                flops_per_image=flops_per_image,
            )
            if not stepped:
                continue
            if engine.log_due:
                engine.log(
                    epoch,
                    resolution=batch.resolution,
                    mask_ratio=round(batch.mask_ratio, 4),
                    batch_size=batch.images.shape[0],
                )
            if not engine.done and stop.requested():  # a signal on any rank, agreed by all: save, exit
                stop.stop(engine, checkpoint())
            if config.save_every and engine.step % config.save_every == 0 and not engine.done:
                checkpoint()
            if recon_images is not None and config.recon_every and engine.step % config.recon_every == 0:
                log_reconstruction(engine, accelerator.unwrap_model(model), recon_images)
            if engine.done:
                break
        if evaluator is not None:  # before the epoch-end checkpoint: a resumed run never skips one
            evaluator.after_epoch(engine, model, epoch)
        if not engine.done:  # epoch end: the resume point after a crash (the last step saves the model)
            checkpoint()

    if config.compile:
        engine.print(
            f"torch.compile: {compiled_graphs() - graphs_before} graph(s) compiled for {len(shapes)} stage "
            "shape(s) (side, batch, kept tokens)"
        )
    final = engine.save_model(model, MAEForPreTraining, model_config)
    if recon_images is not None:
        with torch.compiler.set_stance("force_eager"):  # a compiled model: no graph for this one call
            picture = reconstruction_grid(final.float().cpu(), recon_images)
        save_png(picture, output_dir / "reconstruction.png")
        engine.log_image("reconstruction", picture)
    if engine.is_main and config.push_to_hub:
        engine.print(f"pushed to {config.push_to_hub}: {push_run(config, output_dir)}")
    engine.finish()
    if engine.is_main:
        engine.print(
            f"model: {output_dir} (config.json, model.safetensors)\n"
            + (f"tensorboard: {output_dir / 'tensorboard'}\n" if "tensorboard" in config.trackers else "")
            + (f"wandb: {output_dir / 'wandb'}\n" if "wandb" in config.trackers else "")
            + f"metrics: {engine.metrics_file}"
            + (f"\nreconstruction: {output_dir / 'reconstruction.png'}" if recon_images is not None else "")
        )
    return output_dir


def log_reconstruction(engine, model, images) -> None:
    """Main process only: the grid at this step as ``reconstructions/step_N.png`` and a tracker image.
    Runs the training weights in place (their dtype and device), in eval mode, without gradients."""
    if not engine.is_main:
        return
    with torch.compiler.set_stance("force_eager"):  # a compiled model: no graph for an occasional grid
        picture = reconstruction_grid(model, images)
    folder = engine.output_dir / "reconstructions"
    folder.mkdir(exist_ok=True)
    save_png(picture, folder / f"step_{engine.step:08d}.png")
    engine.log_image("reconstruction", picture)
