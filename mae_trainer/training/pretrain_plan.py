"""What ``mae-trainer pretrain`` settles before any work: the plan.

:func:`check` reads the config, the world size, the ``.beton`` headers and the checkpoint to resume (if
any) and derives everything the run needs (:class:`Plan`: the resolution schedule, the micro-batches of
each epoch, the resume contract) before a process group, a model or a file of the run exists. Bad input
is refused here as a ``ConfigError`` naming its flag. Import-light (no torch, FFCV or timm; dynamo only
under ``--compile``, to check its backend): a refusal takes about 0.2 s; the CLI imports the training loop
(``pretrain.train``) only once the plan holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError, PretrainConfig, about
from ..data.beton import check_beton
from ..data.resolution import ResolutionSchedule, ScheduleError, parse_steps, whole_batches
from ..hub import check_push
from ..modeling.presets import PRESETS
from .init_from import check_init_from
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
    if config.compile:
        check_compile_backend(config.compile_backend)
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


def check_compile_backend(name: str) -> None:
    """Refuse a ``--compile-backend`` torch.compile does not know, before any work. Only runs that compile
    pay dynamo's import here (about a second; they pay it anyway to compile)."""
    from torch._dynamo import list_backends

    if name not in list_backends(exclude_tags=()):  # debug backends (aot_eager, eager) included
        usual = ", ".join([*list_backends(), "aot_eager", "eager"])
        raise ConfigError(
            "compile_backend",
            name,
            f"not a torch.compile backend here ({usual}; all: torch._dynamo.list_backends(exclude_tags=()))",
        )
