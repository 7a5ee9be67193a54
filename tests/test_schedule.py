"""The shared learning-rate schedule: warm-up (linear or constant), then cosine to a floor."""

from __future__ import annotations

import math

from pipeline.core.schedule import warmup_cosine_lr


def test_linear_warmup_then_cosine_to_zero():
    base, warmup, total = 1e-3, 10, 100
    lrs = [warmup_cosine_lr(s, base, warmup, total) for s in range(total)]
    assert lrs[0] == base / warmup
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup], strict=False))  # rises
    assert math.isclose(lrs[warmup - 1], base) and math.isclose(lrs[warmup], base)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))  # falls
    assert math.isclose(lrs[warmup + 45], base / 2)  # half way through the decay
    assert lrs[-1] < 1e-3 * base
    assert warmup_cosine_lr(total, base, warmup, total) == 0.0
    assert warmup_cosine_lr(0, base, 0, total) == base  # no warm-up


def test_constant_warmup_and_floor():
    """CoOp's recipe: warm-up epochs at a constant 1e-5; CLIP-LoRA's: cosine down to 1e-6."""
    kwargs = {"warmup": "constant", "warmup_lr": 1e-5, "min_lr": 1e-6}
    assert warmup_cosine_lr(0, 2e-3, 5, 50, **kwargs) == 1e-5
    assert warmup_cosine_lr(4, 2e-3, 5, 50, **kwargs) == 1e-5
    assert warmup_cosine_lr(5, 2e-3, 5, 50, **kwargs) == 2e-3
    assert math.isclose(warmup_cosine_lr(50, 2e-3, 5, 50, **kwargs), 1e-6)
    assert math.isclose(warmup_cosine_lr(500, 2e-3, 5, 50, **kwargs), 1e-6)
