import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.methods.fma.path import FlowPath, couple


def _batch(b: int = 5, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.rand(b, generator=g)


def test_none_is_the_linear_path():
    x0, z, t = _batch()
    xt, ut = FlowPath(noise="none").sample(x0, z, t)
    for i in range(len(t)):
        assert torch.allclose(xt[i], (1 - t[i]) * x0[i] + t[i] * z[i])
        assert torch.allclose(ut[i], z[i] - x0[i])
    # endpoints
    xt, _ = FlowPath().sample(x0, z, torch.zeros(5))
    assert torch.equal(xt, x0)
    xt, _ = FlowPath().sample(x0, z, torch.ones(5))
    assert torch.allclose(xt, z)


def test_paper_noise_variance_matches_t_one_minus_t_gamma_sigma2():
    n, d = 200_000, 3
    x0 = torch.zeros(n, d)
    z = torch.ones(n, d)
    t = torch.full((n,), 0.3)
    sigma2 = torch.tensor([0.5, 2.0, 0.01])
    gamma = 0.7
    path = FlowPath(noise="paper", gamma=gamma, sigma2=sigma2)
    x_hat, ut = path.sample(x0, z, t, torch.Generator().manual_seed(1))
    mean = 0.3 * torch.ones(d)
    expected = 0.3 * 0.7 * gamma * sigma2
    assert torch.allclose((x_hat - mean).mean(0), torch.zeros(d), atol=3e-3)
    assert torch.allclose((x_hat - mean).var(0), expected, rtol=0.02)
    # target points from the noisy sample to z over the remaining time
    assert torch.allclose(ut, (z - x_hat) / 0.7, atol=1e-6)


def test_paper_target_clamps_one_minus_t():
    x0, z, _ = _batch()
    path = FlowPath(noise="paper", gamma=1.0, sigma2=torch.ones(4), min_one_minus_t=0.05)
    x_hat, ut = path.sample(x0, z, torch.ones(5), torch.Generator().manual_seed(0))
    assert torch.allclose(x_hat, z)  # t (1 - t) = 0: no noise at t = 1
    assert torch.isfinite(ut).all()
    assert torch.allclose(ut, (z - x_hat) / 0.05)


def test_paper_noise_is_reproducible_with_a_generator():
    x0, z, t = _batch()
    path = FlowPath(noise="paper", gamma=1.0, sigma2=torch.ones(4))
    a = path.sample(x0, z, t, torch.Generator().manual_seed(3))
    b = path.sample(x0, z, t, torch.Generator().manual_seed(3))
    c = path.sample(x0, z, t, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_interpolant_formula():
    x0, z, t = _batch(b=6)
    t[0] = 0.0  # clamp keeps the target finite at the ends
    gamma, clamp = 0.5, 0.01
    path = FlowPath(noise="interpolant", gamma=gamma, min_one_minus_t=clamp)
    x_hat, ut = path.sample(x0, z, t, torch.Generator().manual_seed(7))
    eps = torch.randn(6, 4, generator=torch.Generator().manual_seed(7))  # same draw as the path
    tt = t[:, None]
    var = tt * (1 - tt)
    assert torch.allclose(x_hat, (1 - tt) * x0 + tt * z + gamma * var.sqrt() * eps, atol=1e-6)
    target = z - x0 + gamma * (1 - 2 * tt) / (2 * var.clamp(min=clamp).sqrt()) * eps
    assert torch.allclose(ut, target, atol=1e-5)
    assert torch.allclose(x_hat[0], x0[0])
    assert torch.isfinite(ut).all()


def test_unknown_noise_mode_and_missing_sigma2():
    with pytest.raises(InputError, match="choose from"):
        FlowPath(noise="gaussian")
    with pytest.raises(InputError, match="sigma2"):
        FlowPath(noise="paper", gamma=1.0)


def test_class_coupling_returns_own_text():
    text = torch.randn(5, 3)
    labels = torch.tensor([4, 0, 0, 2, 1, 3])
    z = couple(labels, text, "class")
    assert torch.equal(z, text[labels])


def test_random_coupling_ignores_labels():
    text = torch.eye(4)
    labels = torch.zeros(4000, dtype=torch.int64)
    z = couple(labels, text, "random", torch.Generator().manual_seed(0))
    picked = z.argmax(dim=1)
    counts = torch.bincount(picked, minlength=4).float() / len(labels)
    assert (picked != 0).float().mean() > 0.6  # most pairs are with other classes' texts
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.04)  # uniform over classes
    with pytest.raises(InputError, match="choose from"):
        couple(labels, text, "nearest")
