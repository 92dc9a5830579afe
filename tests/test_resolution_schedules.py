"""Progressive-resolution schedules are pure functions of the epoch (no data, no model)."""

from __future__ import annotations

import pytest

from mae_trainer.data.schedules import (
    ResolutionSchedule,
    Stage,
    constant_visible_mask_ratio,
    linear_ramp,
    parse_steps,
    scaled_batch_size,
)
from mae_trainer.errors import UsageError


def test_linear_ramp_rounds_to_the_multiple():
    # FFCV-ImageNet style: 160 until epoch 10, 224 from epoch 20, multiples of 32 in between
    values = [linear_ramp(e, 10, 20, 160, 224, 32) for e in range(25)]
    assert values[:11] == [160] * 11 and values[20:] == [224] * 5
    assert all(v % 32 == 0 for v in values)
    assert values == sorted(values) and set(values) == {160, 192, 224}
    assert linear_ramp(15, 10, 20, 160, 224, 16) == 192


def test_constant_visible_tokens_gives_the_dailymae_ratios():
    # 49 visible tokens: 224/0.75 -> 160/~0.50 and 192/~0.66, the paper's coupling
    assert constant_visible_mask_ratio(224, 16, 224, 0.75) == pytest.approx(0.75)
    assert constant_visible_mask_ratio(160, 16, 224, 0.75) == pytest.approx(0.51)
    assert constant_visible_mask_ratio(192, 16, 224, 0.75) == pytest.approx(1 - 49 / 144)
    for res in (160, 192, 224):
        ratio = constant_visible_mask_ratio(res, 16, 224, 0.75)
        tokens = (res // 16) ** 2
        assert int(tokens * (1 - ratio) + 1e-9) == 49


def test_batch_scaling_keeps_patches_per_step():
    assert scaled_batch_size(128, 224, 224) == 128
    assert scaled_batch_size(128, 160, 224) == 248  # 128 * 1.96 = 250.9, rounded down to a multiple of 8
    assert scaled_batch_size(128, 160, 224) * 100 <= 128 * 196
    assert scaled_batch_size(4, 448, 224) == 8  # never below the multiple


def test_step_schedule_with_mask_coupling():
    schedule = ResolutionSchedule(
        kind="steps",
        resolution=224,
        mask_ratio=0.75,
        batch_size=64,
        steps=parse_steps("0:160:0.5,30:192:0.66,60:224"),
    )
    assert schedule.stage(0) == Stage(160, 0.5, 64)
    assert schedule.stage(29) == Stage(160, 0.5, 64)
    assert schedule.stage(30) == Stage(192, 0.66, 64)
    assert schedule.stage(99) == Stage(224, 0.75, 64)


def test_constant_visible_and_batch_scaling_combined():
    schedule = ResolutionSchedule(
        kind="linear",
        resolution=224,
        start_resolution=160,
        start_epoch=0,
        end_epoch=10,
        mask_ratio=0.75,
        batch_size=64,
        constant_visible=True,
        scale_batch=True,
    )
    first, last = schedule.stage(0), schedule.stage(10)
    assert (first.resolution, first.mask_ratio, first.batch_size) == (160, 0.51, 120)
    assert last == Stage(224, 0.75, 64)


def test_invalid_schedules_are_rejected():
    with pytest.raises(UsageError, match="not a multiple of the patch size 16"):
        ResolutionSchedule(kind="steps", steps=parse_steps("0:100,5:224"))
    with pytest.raises(UsageError, match="epochs must start at 0 and increase"):
        parse_steps("5:160,2:224")
    with pytest.raises(UsageError, match="EPOCH:RES"):
        parse_steps("0-160")
    with pytest.raises(UsageError, match="--resolution-multiple 24"):
        ResolutionSchedule(kind="linear", multiple=24)
