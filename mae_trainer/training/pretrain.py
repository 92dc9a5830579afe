"""MAE pre-training (``mae-trainer pretrain``), read top to bottom like nanoGPT's train.py:
checks → engine → data → model/optimizer → loop (lr, step, log, checkpoint) → save → push.

Runs as is (one process, no DeepSpeed) or under ``accelerate launch`` with a DeepSpeed config
(ZeRO-1, BF16: ``accelerate_configs/*.yaml`` → ``ds_configs/zero1_bf16.json``). The machinery shared
with fine-tuning (accelerator, micro-step, lr, metrics, checkpoints, fp32 save) is ``engine.py``.

The image size in plain sight: ``config`` → :func:`make_schedule` → ``schedule.stage(epoch)`` →
``ProgressiveLoader.epoch`` sets the decoder's ``output_size`` → ``batch`` → ``model(pixels,
mask_ratio=batch.mask_ratio)`` (the position table follows the batch's side).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from ..config import ConfigError, PretrainConfig, about, world_size
from ..data.resolution import ResolutionSchedule, ScheduleError, parse_steps, whole_batches
from ..hub import check_push, push_run
from ..provenance import origin_of, write_provenance
from .init_from import check_init_from
from .lifecycle import StopSignals
from .run_state import KEY as RUN_KEY
from .run_state import (
    Layout,
    ResumePoint,
    RunState,
    check_resume,
    data_identity,
    loads_universal,
    open_run,
    planned_layout,
    recipe_of,
    total_steps,
)

RESOLVED_CONFIG = "resolved_config.yaml"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run derives from its config and the world size before any work: checked inputs."""

    schedule: ResolutionSchedule
    batches: list[int]  # micro-batches per rank in each epoch
    run: RunState  # the resume contract of this run (run_state.py): layout included
    init_from: Path | None = None  # the resolved --init-from folder; None when a checkpoint is resumed
    resume: ResumePoint | None = None  # the checkpoint continued, if any

    @property
    def batch_size(self) -> int:
        """Images per rank per micro-step."""
        return self.run.layout.batch

    @property
    def grad_accum(self) -> int:
        return self.run.layout.accumulation

    @property
    def total_steps(self) -> int:
        return total_steps(self.batches, self.grad_accum, self.run.length["max_steps"])

    @property
    def load_universal(self) -> bool:
        return loads_universal(self.resume, self.run.layout)


# The config field behind each ResolutionSchedule argument (a ScheduleError names the argument at fault).
SCHEDULE_KEYS = {
    "kind": "progressive",
    "steps": "resolution_steps",
    "multiple": "resolution_multiple",
    "resolution": "resolution",
    "start_resolution": "start_resolution",
    "mask_ratio": "mask_ratio",
    "constant_visible": "mask_schedule",
}


def make_schedule(config: PretrainConfig, batch_size: int) -> ResolutionSchedule:
    try:
        return ResolutionSchedule(
            kind=config.progressive,
            resolution=config.resolution,
            mask_ratio=config.mask_ratio,
            batch_size=batch_size,
            patch_size=config.patch_size,
            start_resolution=config.start_resolution,
            start_epoch=config.ramp_start_epoch,
            end_epoch=config.ramp_end_epoch,
            multiple=config.resolution_multiple,
            steps=parse_steps(config.resolution_steps) if config.resolution_steps else [],
            constant_visible=config.mask_schedule == "constant-visible",
            scale_batch=config.scale_batch_with_resolution,
        )
    except ScheduleError as err:
        raise ConfigError.about(SCHEDULE_KEYS[err.argument], err) from None


def check(config: PretrainConfig, world: int) -> Plan:
    """Every check that needs neither torch nor a process group: fail before any work or file. A resumed
    run is compared with its checkpoint's contract here, once (run_state.py)."""
    from ..data.beton import check_beton
    from ..modeling.presets import PRESETS

    # the lock, the checkpoint and the layout that keeps its global batch (run_state.py)
    layout, point = open_run(config, planned_layout(config, world))
    init_from = None
    if config.init_from is not None and point is None:  # a preempted --init-from run resumes, not re-inits
        init_from = check_init_from(config.init_from, config.model).folder
    with about("data"):
        count = check_beton(config.data)
    for key in ("recon_data", "eval_data"):  # held-out sets: refused now, not at their first use
        if getattr(config, key) is not None:
            with about(key):
                check_beton(getattr(config, key), labels=key == "eval_data")
    schedule = make_schedule(config, layout.batch)

    def batches_for(epochs: int) -> list[int]:
        """Local batches of each epoch of a run of ``epochs`` epochs (the sampler's rule)."""
        return [
            whole_batches(count, world, schedule.stage(e).batch_size, layout.accumulation)
            for e in range(epochs)
        ]

    batches = batches_for(config.epochs)
    if min(batches) == 0:
        raise ConfigError(
            "batch_size",
            layout.batch,
            f"{layout.describe()} images per optimizer step: more than {config.data} holds ({count})",
        )
    model = {**PRESETS[config.model], "image_size": config.resolution, "mask_ratio": config.mask_ratio,
             "norm_pix_loss": not config.no_norm_pix_loss}  # fmt: skip
    run = RunState(
        command=config.command,
        model=model,
        recipe=recipe_of(config, "same"),
        length=recipe_of(config, "length"),
        stages=stages_of(schedule, config.epochs, layout),
        data=data_identity(config.data, count),
        layout=layout,
    )
    if point is not None:
        run = check_resume(config, point.path, point.state["step"], point.saved, run, batches_for)
    plan = Plan(schedule, batches, run, init_from, point)
    check_push(config)  # fail now, not after a day of training
    config.check_output()
    return plan


def stages_of(schedule: ResolutionSchedule, epochs: int, layout: Layout) -> list[list]:
    """``[first epoch, side, mask ratio, global batch]`` of each stage in ``epochs``: the data schedule
    without the layout."""
    stages = []
    for epoch in range(epochs):
        stage = schedule.stage(epoch)
        entry = [
            stage.resolution,
            round(stage.mask_ratio, 6),
            stage.batch_size * layout.ranks * layout.accumulation,
        ]
        if not stages or stages[-1][1:] != entry:
            stages.append([epoch, *entry])
    return stages


def run(config: PretrainConfig) -> Path:
    """Pre-train and save the model into ``config.output_dir``; returns that directory."""
    return train(config, check(config, world_size()))


def train(config: PretrainConfig, plan: Plan) -> Path:
    import numpy as np  # noqa: F401  (numpy before torch keeps FFCV's numba happy)
    import torch
    from accelerate.utils import set_seed
    from timm.optim import param_groups_weight_decay

    from ..data.eval_loader import fixed_images
    from ..data.normalize import normalize, stats_tensor
    from ..data.train_loader import ProgressiveLoader
    from ..modeling import MAEConfig, MAEForPreTraining
    from ..modeling.flops import mae_training_flops_per_image
    from ..modeling.modeling_mae import kept_patches
    from .engine import Engine, adamw, compile_in_place, compiled_graphs
    from .init_from import init_weights
    from .online_eval import OnlineEval
    from .schedules import optimizer_steps_before, scaled_lr
    from .visualize import reconstruction_grid, save_png

    model_config = MAEConfig.from_preset(
        config.model,
        image_size=config.resolution,
        mask_ratio=config.mask_ratio,
        norm_pix_loss=not config.no_norm_pix_loss,
    )
    layout = plan.run.layout
    evaluator = OnlineEval(config, plan.batch_size, world_size()) if config.eval_data else None
    engine = Engine(
        config,
        micro_batch=layout.batch,
        grad_accum=layout.accumulation,
        name="pretrain",
        load_universal=plan.load_universal,
        cosine=plan.run.cosine,
    )
    stop = StopSignals(engine.num_processes)  # SIGTERM/SIGUSR1 → checkpoint at the next step (lifecycle.py)
    output_dir = config.output_dir

    # Same seed everywhere for the weights; a rank-specific one for masks and crops.
    set_seed(config.seed)
    model = MAEForPreTraining(model_config)
    init_weights(engine, model, config.init_from, plan)  # --init-from, before prepare (init_from.py)
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
        device=engine.device,
    )
    effective_batch = layout.global_batch
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.blr, effective_batch)
    # The linear rule per stage: a stage whose batch is scaled gets its lr scaled the same way.
    peak_lrs = [peak_lr * plan.schedule.stage(e).batch_size / plan.batch_size for e in range(config.epochs)]
    total_steps = plan.total_steps
    warmup_steps = optimizer_steps_before(config.warmup_epochs, plan.batches, layout.accumulation)

    groups = param_groups_weight_decay(model, config.weight_decay, model.no_weight_decay())
    optimizer = adamw(groups, peak_lr, (0.9, 0.95), engine.device)
    if config.compile:
        shapes = set()
        for epoch in range(config.epochs):
            stage = plan.schedule.stage(epoch)
            grid = (stage.resolution // config.patch_size) ** 2
            shapes.add((stage.batch_size, stage.resolution, kept_patches(grid, stage.mask_ratio)))
        compile_in_place(model, graphs=len(shapes))
        graphs_before = compiled_graphs()
    model, optimizer = engine.prepare(model, optimizer)
    dtype = next(model.parameters()).dtype
    mean = stats_tensor(model_config.image_mean, engine.device)
    std = stats_tensor(model_config.image_std, engine.device)

    # the per-rank batch and accumulation this run used
    resolved = dataclasses.replace(config, batch_size=layout.batch, grad_accum=layout.accumulation)
    if engine.is_main:
        resolved.write_recipe(output_dir / RESOLVED_CONFIG)
        if plan.resume is None:  # a fresh run: where its model comes from, for the model card
            write_provenance(output_dir, base_model=origin_of(config.init_from),
                             datasets=config.dataset_names, license=config.hub_license)  # fmt: skip
    recon_images = None
    if engine.is_main and config.recon_images > 0:
        recon_images = fixed_images(config.recon_data or config.data, config.resolution, config.recon_images)
    start_epoch = 0
    point = plan.resume
    if point is not None:
        state = engine.resume(point.path, point.state, point.saved.layout, model, optimizer)
        start_epoch = state["sampler"]["epoch"]
        loader.load_state_dict(state["sampler"])
        if point.layout_note:
            engine.print(point.layout_note)
        engine.print(
            f"resumed from {point.path} at step {engine.step} (epoch {start_epoch}, "
            f"{state['sampler']['samples']} images into it)"
        )
    engine.start(total_steps, resolved.to_recipe(), fresh=plan.resume is None)
    if plan.resume is None:
        engine.print(
            f"pretraining {config.model} ({config.progressive} schedule, final {config.resolution}px) on "
            f"{engine.num_processes} process(es) ({engine.accelerator.distributed_type}, {dtype}); "
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
            engine.set_lr(optimizer, peak_lrs[epoch], warmup_steps)
            pixels = normalize(batch.images.to(engine.device, non_blocking=True), mean, std, dtype)
            noise = batch.mask_noise((batch.resolution // patch) ** 2, engine.device)  # layout-free masks
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
                log_reconstruction(engine, engine.accelerator.unwrap_model(model), recon_images)
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
    from .visualize import reconstruction_grid, save_png

    if not engine.is_main:
        return
    import torch

    with torch.compiler.set_stance("force_eager"):  # a compiled model: no graph for an occasional grid
        picture = reconstruction_grid(model, images)
    folder = engine.output_dir / "reconstructions"
    folder.mkdir(exist_ok=True)
    save_png(picture, folder / f"step_{engine.step:08d}.png")
    engine.log_image("reconstruction", picture)
