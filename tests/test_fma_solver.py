"""Euler solver, cosine classification (shared and per-image texts), per-step metrics, choice of M."""

import numpy as np
import pytest
import torch

from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError
from pipeline.features.texts import StaticTexts
from pipeline.methods.fma.evaluate import step_curves
from pipeline.methods.fma.solver import (
    accuracy_per_step,
    classify,
    distance_per_step,
    euler_trajectory,
    own_text,
    select_m,
    select_m_with_margin,
)


def test_euler_constant_velocity_is_exact():
    x0 = torch.randn(5, 3)
    a = torch.tensor([2.0, -1.0, 0.5])
    traj = euler_trajectory(lambda x, t: a.expand_as(x), x0, step_size=0.25, max_steps=6)
    assert traj.shape == (7, 5, 3)
    for m in range(7):
        assert torch.allclose(traj[m], x0 + a * 0.25 * m, atol=1e-6)


def test_euler_linear_decay_and_time_passed():
    x0 = torch.randn(4, 2)
    seen = []

    def u(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return -x

    traj = euler_trajectory(u, x0, step_size=0.1, max_steps=10)
    for m in range(11):
        assert torch.allclose(traj[m], x0 * 0.9**m, atol=1e-6)
    assert len(seen) == 10
    assert torch.allclose(torch.stack([s[0] for s in seen]), torch.arange(10) * 0.1)


def test_euler_batches_agree_and_no_renormalisation():
    x0 = torch.nn.functional.normalize(torch.randn(9, 3), dim=-1)
    full = euler_trajectory(lambda x, t: x, x0, 0.5, 3)
    chunked = euler_trajectory(lambda x, t: x, x0, 0.5, 3, batch_size=4)
    assert torch.allclose(full, chunked)
    assert torch.allclose(full[3].norm(dim=-1), torch.full((9,), 1.5**3))


def test_classify_uses_cosine():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[10.0, 1.0], [0.1, 0.2], [-1.0, -0.5]])
    assert classify(x, text).tolist() == [0, 1, 1]


def test_classify_with_per_image_texts():
    x = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    per_image = torch.stack([text, text.flip(0)])  # (2, C, D): image 1 sees the classes swapped
    assert classify(x, per_image).tolist() == [0, 1]
    assert classify(x, text).tolist() == [0, 0]
    y = torch.tensor([1, 0])
    assert torch.equal(own_text(per_image, y), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(own_text(text, y), text[y])


def test_accuracy_and_distance_per_step():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x0 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 0])
    # velocity towards the correct class text (z - x0, constant)
    u = text[y] - x0
    traj = euler_trajectory(lambda x, t: u, x0, 0.25, 4)
    acc = accuracy_per_step(traj, y, text)
    assert acc[0] == 25.0 and acc[-1] == 100.0
    dist = distance_per_step(traj, y, text)
    expected = [(1 - 0.25 * m) * (3 * 2**0.5 + 0) / 4 for m in range(5)]
    assert all(abs(a - b) < 1e-6 for a, b in zip(dist, expected, strict=True))
    # the streamed evaluation gives the same numbers
    curves = step_curves(lambda x, t: u, x0, y, StaticTexts(text), 0.25, 4, ensemble_steps=(0,))
    assert curves.acc == acc
    assert all(abs(a - b) < 1e-6 for a, b in zip(curves.dist, dist, strict=True))


def test_select_m_ties_to_smaller_and_uses_val_only():
    assert select_m([50.0, 60.0, 60.0, 55.0]) == 1
    assert select_m([70.0, 70.0]) == 0
    assert select_m([10.0, 20.0, 30.0]) == 2
    val = [40.0, 45.0, 45.0, 44.0]
    test = [40.0, 41.0, 42.0, 50.0]  # best on test is M=3, but M is chosen on val
    assert select_m(val) == 1 != select_m(test)


def test_mean_pairwise_cosine_closed_forms() -> None:
    from pipeline.methods.fma.solver import mean_pairwise_cosine

    assert mean_pairwise_cosine(np.eye(4)) == pytest.approx(0.0)
    assert mean_pairwise_cosine(np.ones((3, 8))) == pytest.approx(1.0, abs=1e-6)
    # Two opposite unit vectors: cosine -1 off the diagonal.
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


def test_m_leaves_the_backbone_only_on_evidence() -> None:
    # 40 val images, 67.5 % at M = 0: se = 100 sqrt(0.675 x 0.325 / 40) = 7.41 points.
    curve = [67.5, 70.0, 72.5, 75.0, 72.5]
    assert select_m(curve) == 3
    assert select_m_with_margin(curve, 40, 1.0) == 3  # +7.5 >= 7.41
    assert select_m_with_margin(curve, 40, 1.1) == 0  # +7.5 < 8.15
    assert select_m_with_margin([67.5, 70.0], 40, 1.0) == 0  # one image better is noise
    assert select_m_with_margin(curve, 40, 0.0) == 3  # margin 0: the plain argmax
    assert select_m_with_margin([80.0, 80.0, 60.0], 40, 1.0) == 0  # ties go to M = 0
    # A perfect backbone on val: p is clipped to 1 - 1/n, so se stays > 0 and nothing beats it.
    assert select_m_with_margin([100.0, 100.0], 10, 1.0) == 0


def test_select_margin_must_be_a_finite_non_negative_number() -> None:
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(InputError, match="fma.select_margin"):
            FMAConfig(select_margin=bad)
