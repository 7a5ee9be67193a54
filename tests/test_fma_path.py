"""FMA path: the mean path, both noise forms against their stated variances, sigma^2 estimates, coupling."""

import numpy as np
import pytest
import torch

from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError
from pipeline.methods.fma.path import (
    FlowPath,
    couple,
    estimate_sigma2,
    log_noise_scale,
    pooled_within_class_variance,
    view_variance,
)


def _batch(b: int = 5, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.rand(b, generator=g)


def test_none_is_the_linear_path():
    x0, z, t = _batch()
    xt, ut = FlowPath(noise="none").sample(x0, z, t)
    for i in range(len(t)):
        assert torch.allclose(xt[i], (1 - t[i]) * x0[i] + t[i] * z[i])
        assert torch.allclose(ut[i], z[i] - x0[i])
    xt, _ = FlowPath().sample(x0, z, torch.zeros(5))
    assert torch.equal(xt, x0)
    xt, _ = FlowPath().sample(x0, z, torch.ones(5))
    assert torch.allclose(xt, z)


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.8])
def test_paper_noise_has_variance_t_one_minus_t_gamma_sigma2(t: float):
    """docs/methods.md Eq. (F3): Var[x̂_t] = t (1 - t) gamma sigma^2 per dim, Var[u_t] = that / (1 - t)^2."""
    n, d = 200_000, 3
    x0, z = torch.zeros(n, d), torch.ones(n, d)
    sigma2 = torch.tensor([0.5, 2.0, 0.01])
    gamma = 0.7
    path = FlowPath(noise="paper", paper_noise_scale=gamma, sigma2=sigma2)
    x_hat, ut = path.sample(x0, z, torch.full((n,), t), torch.Generator().manual_seed(1))
    expected = t * (1 - t) * gamma * sigma2
    assert torch.allclose(path.noise_variance(t), expected)
    assert torch.allclose(x_hat.mean(0), torch.full((d,), t), atol=4 * (expected.max() / n) ** 0.5)
    assert torch.allclose(x_hat.var(0), expected, rtol=0.02)
    assert torch.allclose(ut.var(0), expected / (1 - t) ** 2, rtol=0.02)
    assert torch.allclose(ut, (z - x_hat) / (1 - t), atol=1e-5)
    assert path.expected_noise_norm(t, d) == pytest.approx(float(expected.sum()) ** 0.5)


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.8])
def test_interpolant_noise_has_variance_s2_t_one_minus_t(t: float):
    """docs/methods.md Eq. (F5): Var[x̂_t] = s^2 t (1 - t); Var[u_t] = s^2 (1 - 2t)^2 / (4 t (1 - t))."""
    n, d, s = 200_000, 3, 0.3
    x0, z = torch.zeros(n, d), torch.ones(n, d)
    path = FlowPath(noise="interpolant", interpolant_noise_std=s)
    x_hat, ut = path.sample(x0, z, torch.full((n,), t), torch.Generator().manual_seed(2))
    var = s**2 * t * (1 - t)
    assert path.noise_variance(t) == pytest.approx(var)
    assert torch.allclose(x_hat.var(0), torch.full((d,), var), rtol=0.02)
    target_var = s**2 * (1 - 2 * t) ** 2 / (4 * t * (1 - t))
    if target_var > 0:
        assert torch.allclose(ut.var(0), torch.full((d,), target_var), rtol=0.02)
    assert torch.allclose(ut.mean(0), torch.ones(d), atol=4 * (target_var / n) ** 0.5 + 1e-6)
    assert path.expected_noise_norm(t, d) == pytest.approx((var * d) ** 0.5)


def test_paper_target_clamps_one_minus_t():
    x0, z, _ = _batch()
    path = FlowPath(noise="paper", sigma2=torch.ones(4), min_one_minus_t=0.05)
    x_hat, ut = path.sample(x0, z, torch.ones(5), torch.Generator().manual_seed(0))
    assert torch.allclose(x_hat, z)  # t (1 - t) = 0: no noise at t = 1
    assert torch.isfinite(ut).all()
    assert torch.allclose(ut, (z - x_hat) / 0.05)


def test_noise_is_reproducible_with_a_generator():
    x0, z, t = _batch()
    path = FlowPath(noise="paper", sigma2=torch.ones(4))
    a = path.sample(x0, z, t, torch.Generator().manual_seed(3))
    b = path.sample(x0, z, t, torch.Generator().manual_seed(3))
    c = path.sample(x0, z, t, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_interpolant_formula_with_the_same_draw():
    x0, z, t = _batch(b=6)
    t[0] = 0.0  # the clamp keeps the target finite at the ends
    s, clamp = 0.5, 0.01
    path = FlowPath(noise="interpolant", interpolant_noise_std=s, min_one_minus_t=clamp)
    x_hat, ut = path.sample(x0, z, t, torch.Generator().manual_seed(7))
    eps = torch.randn(6, 4, generator=torch.Generator().manual_seed(7))  # same draw as the path
    tt = t[:, None]
    var = tt * (1 - tt)
    assert torch.allclose(x_hat, (1 - tt) * x0 + tt * z + s * var.sqrt() * eps, atol=1e-6)
    target = z - x0 + s * (1 - 2 * tt) / (2 * var.clamp(min=clamp).sqrt()) * eps
    assert torch.allclose(ut, target, atol=1e-5)
    assert torch.allclose(x_hat[0], x0[0])
    assert torch.isfinite(ut).all()


def test_from_config_reads_the_named_scales():
    cfg = FMAConfig(noise="interpolant", interpolant_noise_std=0.2, paper_noise_scale=3.0)
    path = FlowPath.from_config(cfg, torch.ones(2))
    assert path.interpolant_noise_std == 0.2 and path.sigma2 is None  # sigma^2 only for paper noise
    path = FlowPath.from_config(FMAConfig(noise="paper", paper_noise_scale=3.0), torch.ones(2))
    assert path.paper_noise_scale == 3.0 and torch.equal(path.sigma2, torch.ones(2))


def test_unknown_noise_mode_missing_sigma2_and_bad_scales():
    with pytest.raises(InputError, match="choose from"):
        FlowPath(noise="gaussian")
    with pytest.raises(InputError, match="sigma2"):
        FlowPath(noise="paper")
    for key, value in (("paper_noise_scale", -1.0), ("interpolant_noise_std", float("nan"))):
        with pytest.raises(InputError, match=f"fma.{key}") as err:
            FlowPath(noise="interpolant", **{key: value})
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- sigma^2


def test_pooled_within_class_variance_by_hand():
    # class 0: values 0, 2 (mean 1, squared deviations 1 + 1); class 1: 4, 6, 8 (mean 6, 4 + 0 + 4);
    # class 2: a single image (no deviation, no degree of freedom). N - C = 6 - 3 = 3.
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 5.0], [6.0, 5.0], [8.0, 5.0], [100.0, -7.0]])
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    sigma2 = pooled_within_class_variance(x, y)
    assert torch.allclose(sigma2, torch.tensor([(2.0 + 8.0) / 3, 0.0]))
    # Between-class spread does not enter: moving a whole class leaves sigma^2 unchanged.
    shifted = x.clone()
    shifted[y == 1] += 50.0
    assert torch.allclose(pooled_within_class_variance(shifted, y), sigma2)
    assert pooled_within_class_variance(x[[0, 2, 5]], y[[0, 2, 5]]) is None  # one image per class


def test_view_variance_is_around_each_images_center():
    x = torch.zeros(2, 3, 2)  # (N, V, D)
    x[0, :, 0] = torch.tensor([10.0, 11.0, 9.0])  # deviations +1, -1 around the center 10
    x[1, :, 0] = torch.tensor([-5.0, -5.0, -3.0])  # deviations 0, +2
    assert torch.allclose(view_variance(x), torch.tensor([(1 + 1 + 0 + 4) / 4, 0.0]))
    assert view_variance(x[:, :1]) is None


def test_estimate_sigma2_pooled_then_one_shot_fallback_then_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 4)).astype(np.float32)  # (N, V, D)
    y = np.array([0, 0, 1, 1, 2, 2])
    sigma2, source = estimate_sigma2(x, y)
    assert "within-class" in source
    assert torch.allclose(sigma2, pooled_within_class_variance(x[:, 0], y))
    one_shot = np.array([0, 1, 2, 3, 4, 5])
    sigma2, source = estimate_sigma2(x, one_shot)
    assert "augmented views" in source
    assert torch.allclose(sigma2, view_variance(x))
    with pytest.raises(InputError, match=r"^config key 'fma.noise'") as err:
        estimate_sigma2(x[:, :1], one_shot)
    assert "\n" not in str(err.value)


def test_noise_scale_is_logged_against_the_distance(caplog):
    path = FlowPath(noise="interpolant", interpolant_noise_std=0.1)
    with caplog.at_level("INFO", logger="pipeline.methods.fma.path"):
        rows = log_noise_scale(path, mean_distance=1.2, dim=100)
    assert [t for t, _ in rows] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert rows[2][1] == pytest.approx(0.1 * (0.25 * 100) ** 0.5)
    assert "||z - x0|| = 1.2000" in caplog.text
    assert log_noise_scale(FlowPath(), 1.0, 4) == []


# --------------------------------------------------------------------------------------------- coupling


def test_class_coupling_returns_own_text():
    text = torch.randn(5, 3)
    labels = torch.tensor([4, 0, 0, 2, 1, 3])
    assert torch.equal(couple(labels, text, "class"), text[labels])


def test_random_coupling_ignores_labels():
    text = torch.eye(4)
    labels = torch.zeros(4000, dtype=torch.int64)
    z = couple(labels, text, "random", torch.Generator().manual_seed(0))
    picked = z.argmax(dim=1)
    counts = torch.bincount(picked, minlength=4).float() / len(labels)
    assert (picked != 0).float().mean() > 0.6
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.04)
    with pytest.raises(InputError, match="choose from"):
        couple(labels, text, "nearest")
