"""Schedules as pure functions of the optimizer step, so they are testable without a model and resume
needs only the step counter."""

from __future__ import annotations

import math


def scaled_lr(blr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = blr × effective batch / 256``."""
    return blr * effective_batch / 256


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak_lr: float,
    min_lr: float = 0.0,
    anchor: tuple[int, float] | None = None,
) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then half-cycle cosine to ``min_lr``.

    Evaluated every iteration (MAE's ``adjust_learning_rate`` on the fractional epoch). ``anchor``
    ``(step, progress)``: a run whose length was re-planned at ``step`` (``--replan``) stood at that
    ``progress`` (0–1) along its cosine; from there the rest of the cosine is spread over the new length.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = cosine_progress(step, total_steps, warmup_steps, anchor)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_progress(
    step: int, total_steps: int, warmup_steps: int, anchor: tuple[int, float] | None = None
) -> float:
    """How far along the cosine (0 at the end of warmup, 1 at ``total_steps``) ``step`` is."""
    start, done = (warmup_steps, 0.0) if anchor is None or anchor[0] < warmup_steps else anchor
    if step <= start:
        return done
    return min(1.0, done + (1.0 - done) * (step - start) / max(1, total_steps - start))


def optimizer_steps_before(epoch: float, batches_per_epoch: list[int], grad_accum: int) -> int:
    """Optimizer steps completed before the fractional ``epoch`` when epoch ``e`` has
    ``batches_per_epoch[e]`` micro-batches and accumulation runs on across epoch ends (so a stage whose
    batch differs, e.g. under batch scaling, counts its own steps). Warmup is measured with it."""
    whole = min(int(epoch), len(batches_per_epoch))
    micro = sum(batches_per_epoch[:whole])
    if whole < len(batches_per_epoch):
        micro += (epoch - whole) * batches_per_epoch[whole]
    return int(micro // grad_accum)
