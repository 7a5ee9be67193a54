"""The one learning-rate schedule every trainer here uses: warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    *,
    min_lr: float = 0.0,
    warmup: str = "linear",
    warmup_lr: float = 0.0,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based).

    For the first W = ``warmup_steps`` steps: ``linear`` ramps base_lr (step + 1) / W; ``constant``
    holds ``warmup_lr`` (CoOp's warm-up at 1e-5). Then cosine decay
    min_lr + (base_lr - min_lr) (1 + cos(pi (step - W) / (T - W))) / 2, which reaches ``min_lr``
    at step T = ``total_steps`` and stays there.
    """
    if step < warmup_steps:
        return warmup_lr if warmup == "constant" else base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
