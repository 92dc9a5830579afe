"""Progressive-resolution schedules are pure functions of the epoch (no data, no model)."""

from __future__ import annotations

import pytest

from mae_trainer.data.resolution import (
    ResolutionSchedule,
    ScheduleError,
    Stage,
    check_side,
    constant_visible_mask_ratio,
    linear_ramp,
    parse_steps,
    scaled_batch_size,
)
from mae_trainer.errors import InputError


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
    with pytest.raises(InputError, match="not a multiple of the patch size 16"):
        ResolutionSchedule(kind="steps", steps=parse_steps("0:100,5:224"))
    with pytest.raises(InputError, match="epochs must start at 0 and increase"):
        parse_steps("5:160,2:224")
    with pytest.raises(InputError, match="EPOCH:RES"):
        parse_steps("0-160")
    with pytest.raises(InputError, match="24: not a multiple of the patch size 16"):
        ResolutionSchedule(kind="linear", multiple=24)


def test_check_side_and_the_argument_at_fault():
    assert check_side(224, 16) == 224 and check_side(28, 14) == 28
    for side, needle in ((100, "100: not a multiple of the patch size 16"), (0, "0: not positive")):
        with pytest.raises(InputError, match=needle):
            check_side(side, 16)
    cases = [
        (dict(kind="linear", multiple=24), "multiple"),
        (dict(kind="linear", start_resolution=100), "start_resolution"),
        (dict(resolution=200), "resolution"),
        (dict(kind="steps", steps=parse_steps("0:96,5:100")), "steps"),
        (dict(kind="steps"), "steps"),
        (dict(kind="cubic"), "kind"),
        (dict(kind="steps", steps=parse_steps("0:96:1.5,5:224")), "steps"),
        (dict(kind="steps", steps=parse_steps("0:96,10:224"), constant_visible=True), "constant_visible"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(ScheduleError) as err:
            ResolutionSchedule(**kwargs)
        assert err.value.argument == argument and "--" not in str(err.value), (kwargs, err.value)
    with pytest.raises(ScheduleError) as err:
        parse_steps("0:96,x")
    assert err.value.argument == "steps" and str(err.value).startswith("'0:96,x': ")


def test_every_stage_is_validated_when_the_schedule_is_built():
    with pytest.raises(InputError, match=r"stage from epoch 30 \(192 px\) has mask ratio 1.2"):
        ResolutionSchedule(kind="steps", resolution=224, steps=parse_steps("0:160:0.5,30:192:1.2,60:224"))
    with pytest.raises(InputError, match=r"mask ratio 0\.0"):
        # 49 visible tokens cannot be kept at 96 px (36 tokens): the coupled ratio would be 0
        ResolutionSchedule(
            kind="steps", resolution=224, steps=parse_steps("0:96,10:224"), constant_visible=True
        )
    ResolutionSchedule(kind="steps", resolution=224, steps=parse_steps("0:160:0.5,200:192:0.66,400:224:0.75"))


def test_optimizer_steps_count_real_steps_across_stages():
    from mae_trainer.training.schedules import optimizer_steps_before

    batches = [2, 10, 10]  # e.g. a scaled batch at a lower resolution: fewer batches in epoch 0
    assert optimizer_steps_before(1, batches, 1) == 2
    assert optimizer_steps_before(1.5, batches, 1) == 7
    assert optimizer_steps_before(2.5, [9, 9, 9], 2) == 11  # accumulation runs across epoch ends
    assert optimizer_steps_before(0, batches, 1) == 0
    assert optimizer_steps_before(5, batches, 2) == 11  # past the end: every step


def test_batch_scaling_keeps_the_linear_lr_rule(tmp_path):
    """A real run whose 32-px stage has 4x the batch: its lr is 4x, and warmup counts the steps taken."""
    import json
    import math

    from .conftest import run_main, small_embedded_beton

    data = small_embedded_beton(tmp_path, limit=160, max_resolution=64)
    out = tmp_path / "run"
    run_main(
        "pretrain", "--data", str(data), "--output-dir", str(out), "--model", "tiny", "--resolution", "64",
        "--progressive", "steps", "--resolution-steps", "0:32,1:64", "--scale-batch-with-resolution",
        "--batch-size", "16", "--epochs", "3", "--warmup-epochs", "1.5", "--blr", "1e-3", "--log-every", "1",
        "--recon-images", "0", "--num-workers", "1", check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # epoch 0: 160 // 64 = 2 steps at batch 64; epochs 1-2: 10 steps each at batch 16
    assert [(r["epoch"], r["batch_size"]) for r in records] == [(0, 64)] * 2 + [(1, 16)] * 10 + [(2, 16)] * 10
    warmup, total = 2 + 5, 22  # 1.5 epochs = all of epoch 0 and half of epoch 1, in optimizer steps
    for record in records:
        peak = 1e-3 * record["batch_size"] / 256  # lr = blr x effective batch / 256, per stage
        step = record["step"] - 1  # the lr logged is the one the step used
        if step < warmup:
            expected = peak * step / warmup
        else:
            expected = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert record["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), record


def test_constant_visible_stages_keep_the_reference_token_count():
    """The model keeps the visible-token count a constant-visible stage stands for (at 48 px of a 64 px / 0.75
    reference: 4 of 9 patches; a ratio rounded to 0.5556 would keep int(9 × 0.4444) = 3)."""
    from mae_trainer.data.resolution import constant_visible_mask_ratio
    from mae_trainer.modeling.modeling_mae import kept_patches

    for side, reference, ratio, visible in [(48, 64, 0.75, 4), (160, 224, 0.75, 49), (192, 224, 0.75, 49)]:
        schedule = ResolutionSchedule(
            kind="steps", resolution=reference, mask_ratio=ratio, batch_size=8, patch_size=16,
            steps=[(0, side, None), (1, reference, None)], constant_visible=True,
        )  # fmt: skip
        stage = schedule.stage(0)
        assert stage.mask_ratio == constant_visible_mask_ratio(side, 16, reference, ratio)
        assert kept_patches((side // 16) ** 2, stage.mask_ratio) == visible
        assert kept_patches((reference // 16) ** 2, schedule.stage(1).mask_ratio) == visible
