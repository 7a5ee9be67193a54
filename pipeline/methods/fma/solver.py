"""Early-stopping solver: Euler steps of the flow, accuracy per step, choice of M (docs/methods.md, F10)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.features.texts import cosine_logits

VelocityField = Callable[[Tensor, Tensor], Tensor]  # (x (B, D), t (B,)) -> (B, D)


@torch.no_grad()
def euler_trajectory(
    velocity: VelocityField,
    x0: Tensor,
    step_size: float,
    max_steps: int,
    batch_size: int | None = None,
) -> Tensor:
    """Integrate dx/dt = u(x, t) from t = 0 with explicit Euler, keeping every step, Eq. (F10).

    x_{m+1} = x_m + h u(x_m, t_m), t_{m+1} = t_m + h; no renormalisation between steps (the
    classifier normalises at the end).

    Args:
        velocity: u(x, t), e.g. a ``VelocityNet`` in eval mode.
        x0: (N, D) starting features (the backbone's image features).
        step_size: h.
        max_steps: last M; the trajectory holds M = 0..max_steps.
        batch_size: rows integrated at once (None: all N together).

    Returns:
        (max_steps + 1, N, D) trajectory; index 0 is x0.
    """
    chunks = [x0] if batch_size is None else list(torch.split(x0, batch_size))
    out = []
    for x in chunks:
        t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)  # (B,)
        steps = [x]
        for _ in range(max_steps):
            x = x + step_size * velocity(x, t).to(x.dtype)  # (B, D)
            t = t + step_size
            steps.append(x)
        out.append(torch.stack(steps))  # (M + 1, B, D)
    return torch.cat(out, dim=1)


def classify(x: Tensor, text: Tensor) -> Tensor:
    """Argmax cosine of (N, D) features with (C, D) or per-image (N, C, D) texts -> (N,) ids, Eq. (F10)."""
    return cosine_logits(x, text).argmax(dim=-1)


def own_text(text: Tensor, labels: Tensor) -> Tensor:
    """Each image's own class text z_y: (C, D) or (N, C, D) texts and (N,) labels -> (N, D)."""
    labels = labels.to(text.device)
    if text.ndim == 2:
        return text[labels]
    return text[torch.arange(labels.shape[0], device=text.device), labels]


def accuracy_per_step(trajectory: Tensor, labels: Tensor, text: Tensor) -> list[float]:
    """Accuracy (%) of ``classify`` at every step of a (M + 1, N, D) trajectory; labels (N,)."""
    labels = labels.to(trajectory.device)
    n = labels.shape[0]
    return [100.0 * (classify(x, text) == labels).sum().item() / n for x in trajectory]


def distance_per_step(trajectory: Tensor, labels: Tensor, text: Tensor) -> list[float]:
    """Mean Euclidean distance ||x_m - z_y|| of the unnormalised feature to its class text, per step."""
    z = own_text(text, labels).to(trajectory.device)  # (N, D)
    return [torch.linalg.vector_norm(x - z, dim=-1).mean().item() for x in trajectory]


def select_m(val_acc: list[float]) -> int:
    """M with the best accuracy, ties to the smaller M (fewer steps, closer to the backbone), Eq. (F11)."""
    assert len(val_acc) > 0
    best = max(val_acc)
    return next(m for m, acc in enumerate(val_acc) if acc == best)


def select_m_with_margin(val_acc: list[float], n_val: int, margin: float) -> int:
    """M chosen on val that leaves the backbone only on evidence, Eq. (F11).

    The val accuracy at M = 0 (the backbone) has binomial standard error
    se = 100 sqrt(p (1 - p) / n_val), p = val_acc[0] / 100 (clipped to [1 / n_val, 1 - 1 / n_val]).
    The argmax M (ties to the smaller) is kept when it beats M = 0 by at least ``margin`` se;
    otherwise M = 0. ``margin`` 0 is the plain argmax.
    """
    best = select_m(val_acc)
    if margin <= 0 or best == 0:
        return best
    n = max(1, int(n_val))
    p = min(max(val_acc[0] / 100.0, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
    se = 100.0 * math.sqrt(p * (1.0 - p) / n)
    return best if val_acc[best] - val_acc[0] >= margin * se else 0


def mean_pairwise_cosine(text: np.ndarray | Tensor) -> float:
    """Mean cosine between distinct class text features (C, D): near 1 means the classes collapse."""
    z = F.normalize(torch.as_tensor(np.asarray(text), dtype=torch.float32), dim=-1)  # (C, D)
    c = z.shape[0]
    if c < 2:
        return float("nan")
    sims = z @ z.T  # (C, C)
    return float((sims.sum() - sims.diagonal().sum()) / (c * (c - 1)))
