"""Progressive-resolution schedules: pure functions of the epoch, testable without data or a model.

A schedule maps an epoch to a :class:`Stage` — crop resolution, mask ratio and per-rank batch size — and
the training loader applies that stage to the whole epoch. Three ingredients, combinable:

- ``linear``: FFCV-ImageNet's ramp, ``start → end`` resolution between two epochs, rounded to a multiple.
- ``steps``: DailyMAE-style steps, e.g. 160 px / mask 0.50 → 192 / 0.66 → 224 / 0.75.
- ``constant_visible``: the mask ratio follows the resolution so the encoder sees as many tokens as at the
  reference resolution (49 visible of 196 at 224 px and 0.75; 49 of 100 at 160 → 0.51; 49 of 144 at 192 →
  0.66), and ``scale_batch`` keeps patches per step constant by scaling the batch with ``(ref / res)²``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError


class ScheduleError(InputError):
    """A schedule that cannot be used. ``argument`` names the :class:`ResolutionSchedule` argument at fault
    (``parse_steps``' text is ``steps``), so that a caller can say where the value came from."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def check_side(side: int, patch_size: int) -> int:
    """``side`` (an image side in pixels) if it is a positive multiple of ``patch_size``; else
    :class:`InputError`, its message starting with ``side``."""
    if side <= 0:
        raise InputError(f"{side}: not positive (image sides are multiples of the patch size {patch_size})")
    if side % patch_size:
        raise InputError(f"{side}: not a multiple of the patch size {patch_size}")
    return side


@dataclass(frozen=True)
class Stage:
    resolution: int
    mask_ratio: float
    batch_size: int


def linear_ramp(
    epoch: int, start_epoch: int, end_epoch: int, start_res: int, end_res: int, multiple: int
) -> int:
    """Resolution ramped linearly from ``start_res`` (until ``start_epoch``) to ``end_res`` (from
    ``end_epoch`` on), rounded to the nearest multiple of ``multiple``."""
    if epoch <= start_epoch:
        return start_res
    if epoch >= end_epoch:
        return end_res
    value = np.interp(epoch, [start_epoch, end_epoch], [start_res, end_res])
    return round(value / multiple) * multiple


def constant_visible_mask_ratio(
    resolution: int, patch_size: int, reference_resolution: int, reference_mask_ratio: float
) -> float:
    """The mask ratio that keeps the encoder's visible-token count at its reference value."""
    reference_tokens = (reference_resolution // patch_size) ** 2
    visible = int(reference_tokens * (1 - reference_mask_ratio))
    tokens = (resolution // patch_size) ** 2
    return max(0.0, 1.0 - visible / tokens)


def scaled_batch_size(batch_size: int, resolution: int, reference_resolution: int, multiple: int = 8) -> int:
    """Per-rank batch that keeps patches per step constant: ``batch × (ref / res)²``, rounded down to a
    multiple of ``multiple`` (never below ``multiple``)."""
    scaled = batch_size * (reference_resolution / resolution) ** 2
    return max(multiple, int(scaled // multiple) * multiple)


def whole_batches(num_samples: int, world: int, batch_size: int, accumulation: int = 1) -> int:
    """Local batches of ``batch_size`` each of ``world`` ranks gets in an epoch of ``num_samples`` when an
    optimizer step takes ``accumulation`` of them on every rank: the epoch is cut to whole optimizer steps
    of the global batch ``world × batch_size × accumulation`` (the rest, fewer than one global batch, is
    left out). The training sampler's rule, also used by ``pretrain_plan.check`` before FFCV is imported."""
    return num_samples // (world * batch_size * accumulation) * accumulation


def parse_steps(text: str) -> list[tuple[int, int, float | None]]:
    """``"0:160:0.5,30:192:0.66,60:224"`` → ``[(0, 160, 0.5), (30, 192, 0.66), (60, 224, None)]``."""
    steps = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            epoch, res = int(parts[0]), int(parts[1])
            mask = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise ScheduleError(
                "steps", f"{text!r}: expected EPOCH:RES[:MASK],... e.g. 0:160:0.5,30:224"
            ) from None
        steps.append((epoch, res, mask))
    if not steps or steps[0][0] != 0 or any(a[0] >= b[0] for a, b in itertools.pairwise(steps)):
        raise ScheduleError("steps", f"{text!r}: epochs must start at 0 and increase")
    return steps


@dataclass
class ResolutionSchedule:
    """Which resolution, mask ratio and batch each epoch uses.

    Args:
        kind: ``constant``, ``linear`` or ``steps``.
        resolution: the resolution of ``constant`` and the reference resolution of ``constant_visible``
            and ``scale_batch`` (the final, full resolution of a progressive run).
        mask_ratio: the mask ratio at ``resolution``.
        batch_size: the per-rank batch at ``resolution``.
        patch_size: every resolution must be a multiple of it (:func:`check_side`).
        start_resolution / start_epoch / end_epoch / multiple: the ``linear`` ramp.
        steps: ``(epoch, resolution, mask_ratio or None)`` for ``steps``.
        constant_visible: derive the mask ratio from the resolution (overrides per-step ratios).
        scale_batch: scale the batch with the resolution.

    Raises :class:`ScheduleError` (an ``InputError``) naming the argument at fault before any stage is
    used: a resolution that is not a multiple of the patch size, a stage whose mask ratio is not in (0, 1).
    """

    kind: str = "constant"
    resolution: int = 224
    mask_ratio: float = 0.75
    batch_size: int = 64
    patch_size: int = 16
    start_resolution: int = 160
    start_epoch: int = 0
    end_epoch: int = 0
    multiple: int = 32
    steps: list[tuple[int, int, float | None]] = field(default_factory=list)
    constant_visible: bool = False
    scale_batch: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "steps"):
            raise ScheduleError(
                "kind", f"{self.kind!r}: not a schedule kind; choose constant, linear or steps"
            )
        if self.kind == "steps" and not self.steps:
            raise ScheduleError("steps", "(none): a 'steps' schedule needs at least one step")
        sides = {"multiple": self.multiple} if self.kind == "linear" else {}
        for argument, side in [*sides.items(), *self.resolution_arguments()]:
            try:
                check_side(side, self.patch_size)
            except InputError as err:
                raise ScheduleError(argument, str(err)) from None
        for epoch in self.stage_epochs():  # every stage, before any work or any file is written
            stage = self.stage(epoch)
            if not 0.0 < stage.mask_ratio < 1.0:
                raise ScheduleError(
                    self.mask_argument(epoch),
                    f"{epoch}:{stage.resolution}:{stage.mask_ratio}: the stage from epoch {epoch} "
                    f"({stage.resolution} px) has mask ratio {stage.mask_ratio}; it must be between 0 and 1 "
                    "(exclusive)",
                )

    def resolution_arguments(self) -> list[tuple[str, int]]:
        """``(argument, resolution)`` for every resolution the schedule names."""
        if self.kind == "steps":
            return [("steps", res) for _, res, _ in self.steps]
        if self.kind == "linear":
            return [("start_resolution", self.start_resolution), ("resolution", self.resolution)]
        return [("resolution", self.resolution)]

    def mask_argument(self, epoch: int) -> str:
        """The argument the mask ratio of ``epoch``'s stage comes from."""
        if self.constant_visible:
            return "constant_visible"
        if self.kind == "steps" and [s for s in self.steps if s[0] <= epoch][-1][2] is not None:
            return "steps"
        return "mask_ratio"

    def stage_epochs(self) -> list[int]:
        """The first epoch of every distinct stage (a ``linear`` ramp changes at most once per epoch)."""
        if self.kind == "steps":
            return [epoch for epoch, _, _ in self.steps]
        if self.kind == "linear":
            return list(range(self.start_epoch, max(self.start_epoch, self.end_epoch) + 1))
        return [0]

    def stage(self, epoch: int) -> Stage:
        """The stage of ``epoch`` (0-based)."""
        mask = self.mask_ratio
        if self.kind == "constant":
            res = self.resolution
        elif self.kind == "linear":
            res = linear_ramp(
                epoch, self.start_epoch, self.end_epoch, self.start_resolution, self.resolution, self.multiple
            )
        else:
            _, res, step_mask = [s for s in self.steps if s[0] <= epoch][-1]
            mask = self.mask_ratio if step_mask is None else step_mask
        if self.constant_visible:
            mask = constant_visible_mask_ratio(res, self.patch_size, self.resolution, self.mask_ratio)
        batch = (
            scaled_batch_size(self.batch_size, res, self.resolution) if self.scale_batch else self.batch_size
        )
        return Stage(resolution=res, mask_ratio=mask, batch_size=batch)

    def to_dict(self) -> dict:
        return asdict(self)
