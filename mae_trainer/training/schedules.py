"""Schedules as pure functions of the optimizer step, so they are testable without a model and resume
needs only the step counter."""

from __future__ import annotations

import math


def scaled_lr(blr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = blr × effective batch / 256``."""
    return blr * effective_batch / 256


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0
) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then half-cycle cosine to ``min_lr``.

    Evaluated every iteration (MAE's ``adjust_learning_rate`` on the fractional epoch).
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_steps_before(epoch: float, batches_per_epoch: list[int], grad_accum: int) -> int:
    """Optimizer steps completed before the fractional ``epoch`` when epoch ``e`` has
    ``batches_per_epoch[e]`` micro-batches and accumulation runs on across epoch ends (so a stage whose
    batch differs, e.g. under batch scaling, counts its own steps). Warmup is measured with it."""
    whole = min(int(epoch), len(batches_per_epoch))
    micro = sum(batches_per_epoch[:whole])
    if whole < len(batches_per_epoch):
        micro += (epoch - whole) * batches_per_epoch[whole]
    return int(micro // grad_accum)
