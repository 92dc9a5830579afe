"""The learning-rate schedule is a pure function of the step."""

import itertools
import math

import pytest

from mae_trainer.training.schedules import scaled_lr, warmup_cosine_lr


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # MAE-B: blr 1.5e-4, batch 4096


def test_warmup_then_half_cosine():
    peak, total, warmup = 1.0, 100, 10
    assert warmup_cosine_lr(0, total, warmup, peak) == 0.0
    assert warmup_cosine_lr(5, total, warmup, peak) == pytest.approx(0.5)
    assert warmup_cosine_lr(10, total, warmup, peak) == pytest.approx(1.0)
    assert warmup_cosine_lr(55, total, warmup, peak) == pytest.approx(0.5)
    assert warmup_cosine_lr(100, total, warmup, peak, min_lr=0.1) == pytest.approx(0.1)
    values = [warmup_cosine_lr(s, total, warmup, peak) for s in range(total + 1)]
    pairs = list(itertools.pairwise(values))
    assert all(a <= b for a, b in pairs[:warmup])
    assert all(a >= b for a, b in pairs[warmup:])
    mid = warmup_cosine_lr(32, total, warmup, peak)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_no_warmup():
    assert warmup_cosine_lr(0, 10, 0, 2.0) == pytest.approx(2.0)
