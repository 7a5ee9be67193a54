"""FMA path, coupling and noise: an image feature and its text -> (x_t, u_t) (docs/methods.md, F1-F6)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

NOISE_MODES = ("none", "paper", "interpolant")
COUPLINGS = ("class", "random")
NOISE_REPORT_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator works for CUDA data)."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)


def couple(labels: Tensor, text: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Pick the target text z for every image, Eq. (F2).

    Args:
        labels: (B,) class ids of the images x0.
        text: (C, D) class text features.
        mode: "class" pairs each image with its own class text z_c (coupling enforcement, the FMA
            default); "random" draws a class uniformly, independent of the label (standard FM).
        generator: random source for "random".

    Returns:
        z: (B, D).
    """
    if mode == "class":
        return text[labels.to(text.device)]  # (B, D)
    if mode == "random":
        device = generator.device if generator is not None else text.device
        idx = torch.randint(0, text.shape[0], (labels.shape[0],), generator=generator, device=device)
        return text[idx.to(text.device)]  # (B, D)
    raise InputError(f"unknown coupling {mode!r} (choose from {', '.join(COUPLINGS)})")


def pooled_within_class_variance(x: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> Tensor | None:
    """Pooled within-class per-dimension variance, Eq. (F4a); None when no class has 2+ images.

    sigma^2_d = sum_c sum_{i: y_i = c} (x_id - mean_c,d)^2 / (N - C), C the classes present.

    Args:
        x: (N, D) center-view features.
        labels: (N,) class ids.

    Returns:
        (D,) float32, or None when N - C = 0.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)  # (N, D)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)  # (N,)
    classes = torch.unique(y)
    dof = x.shape[0] - classes.numel()
    if dof <= 0:
        return None
    sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for c in classes:
        xc = x[y == c]  # (n_c, D)
        sq += (xc - xc.mean(dim=0)).pow(2).sum(dim=0)
    return (sq / dof).float()


def view_variance(train_x: np.ndarray | Tensor) -> Tensor | None:
    """Per-dimension variance of the augmented views around their own image's center view, Eq. (F4b).

    sigma^2_d = sum_i sum_{v = 1..K} (x_ivd - x_i0d)^2 / (N K); None when the cache has no augmented view.

    Args:
        train_x: (N, V, D) cached views, view 0 the center.
    """
    x = torch.as_tensor(np.asarray(train_x), dtype=torch.float64)  # (N, V, D)
    if x.ndim != 3 or x.shape[1] < 2:
        return None
    dev = x[:, 1:] - x[:, :1]  # (N, K, D)
    return dev.pow(2).mean(dim=(0, 1)).float()


def estimate_sigma2(train_x: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> tuple[Tensor, str]:
    """sigma^2 of the paper's noise, Eq. (F4): pooled within-class variance of the center views, else
    (no class with 2+ images, e.g. 1 shot) the variance of the augmented views around their center.

    Args:
        train_x: (N, V, D) cached training views, view 0 the center.
        labels: (N,) class ids.

    Returns:
        ((D,) sigma^2, a short description of the estimate for logs and records).

    Raises:
        InputError: neither estimate exists (names ``fma.noise``).
    """
    x = torch.as_tensor(np.asarray(train_x))
    sigma2 = pooled_within_class_variance(x[:, 0], labels)
    if sigma2 is not None:
        return sigma2, "pooled within-class variance of the center views"
    sigma2 = view_variance(x)
    if sigma2 is not None:
        log.info("no class has two training images: paper noise uses the variance of the augmented views")
        return sigma2, "variance of the augmented views around their center view (no class has 2+ images)"
    raise InputError(
        "config key 'fma.noise': 'paper' needs sigma^2, but no class has two training images and the "
        "cache holds no augmented views; use noise 'none' or 'interpolant', or cache views"
    )


@dataclass(frozen=True, eq=False)
class FlowPath:
    """Linear path from x0 (t = 0) to z (t = 1), optionally noised; holds no weights.

    Mean path, Eq. (F1): x_t = (1 - t) x0 + t z, with velocity u_t = z - x0. Noise modes:

    * ``"none"``: (x_t, z - x0).
    * ``"paper"``, Eq. (F3) (FMA paper, Noise Augmentation): x̂_t ~ N(x_t, t (1 - t) gamma sigma^2)
      per dimension, target u_t = (z - x̂_t) / max(1 - t, min_one_minus_t); gamma is
      ``paper_noise_scale``, a variance multiplier.
    * ``"interpolant"``, Eq. (F5) (official code, stochastic interpolant): x̂_t = x_t + s sqrt(t (1 - t)) eps,
      target u_t = z - x0 + s (1 - 2t) / (2 sqrt(max(t (1 - t), min_one_minus_t))) eps, the time
      derivative of the noisy path; s is ``interpolant_noise_std``, a standard deviation. The clamp
      keeps the target finite at t = 0 and t = 1.

    Attributes:
        noise: one of ``NOISE_MODES``.
        paper_noise_scale: gamma of "paper" (multiplies sigma^2).
        interpolant_noise_std: s of "interpolant".
        sigma2: (D,) per-dimension variance for "paper" (required there, ignored otherwise), Eq. (F4).
        min_one_minus_t: clamp of the denominators, away from 0.
    """

    noise: str = "none"
    paper_noise_scale: float = 1.0
    interpolant_noise_std: float = 0.0
    sigma2: Tensor | None = None
    min_one_minus_t: float = 0.01

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise InputError(f"unknown noise mode {self.noise!r} (choose from {', '.join(NOISE_MODES)})")
        for key in ("paper_noise_scale", "interpolant_noise_std"):
            value = getattr(self, key)
            if not 0.0 <= value < float("inf"):
                raise InputError(f"config key 'fma.{key}': must be a finite number >= 0, got {value}")
        if self.noise == "paper" and self.sigma2 is None:
            raise InputError("noise mode 'paper' needs the per-dimension variance sigma2")

    @classmethod
    def from_config(cls, cfg: FMAConfig, sigma2: Tensor | None = None) -> FlowPath:
        """The path of an FMA config; ``sigma2`` (D,) is needed for ``noise: paper``."""
        return cls(
            noise=cfg.noise,
            paper_noise_scale=cfg.paper_noise_scale,
            interpolant_noise_std=cfg.interpolant_noise_std,
            sigma2=sigma2 if cfg.noise == "paper" else None,
            min_one_minus_t=cfg.min_one_minus_t,
        )

    def noise_variance(self, t: float) -> Tensor | float:
        """Per-dimension variance of x̂_t around x_t at time t: (D,) for "paper", a float otherwise."""
        if self.noise == "paper":
            assert self.sigma2 is not None
            return t * (1 - t) * self.paper_noise_scale * self.sigma2
        if self.noise == "interpolant":
            return self.interpolant_noise_std**2 * t * (1 - t)
        return 0.0

    def expected_noise_norm(self, t: float, dim: int) -> float:
        """sqrt(E ||x̂_t - x_t||^2) at time t (the RMS norm of the added noise) for D = ``dim``."""
        var = self.noise_variance(t)
        total = float(var.sum()) if isinstance(var, Tensor) else var * dim
        return total**0.5

    def sample(
        self, x0: Tensor, z: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample a point on the path and its target velocity, Eqs. (F1), (F3), (F5).

        Args:
            x0: (B, D) image features (t = 0).
            z: (B, D) paired text features (t = 1).
            t: (B,) times in [0, 1].
            generator: random source of the noise eps.

        Returns:
            xt: (B, D) network input; ut: (B, D) regression target.
        """
        tt = t.to(x0.dtype)[:, None]  # (B, 1)
        xt = (1 - tt) * x0 + tt * z  # (B, D)
        if self.noise == "none":
            return xt, z - x0
        eps = _randn(tuple(x0.shape), x0, generator)  # (B, D)
        if self.noise == "paper":
            assert self.sigma2 is not None
            sigma2 = self.sigma2.to(device=x0.device, dtype=x0.dtype)[None, :]  # (1, D)
            std = torch.sqrt(tt * (1 - tt) * self.paper_noise_scale * sigma2)  # (B, D)
            x_hat = xt + std * eps  # (B, D)
            ut = (z - x_hat) / torch.clamp(1 - tt, min=self.min_one_minus_t)
            return x_hat, ut
        # interpolant
        s = self.interpolant_noise_std
        var = tt * (1 - tt)  # (B, 1)
        x_hat = xt + s * torch.sqrt(var) * eps
        d_std = s * (1 - 2 * tt) / (2 * torch.sqrt(torch.clamp(var, min=self.min_one_minus_t)))
        return x_hat, z - x0 + d_std * eps


def log_noise_scale(path: FlowPath, mean_distance: float, dim: int) -> list[tuple[float, float]]:
    """Log the expected noise norm against the mean image-text distance ||z - x0|| at a few times.

    Returns:
        [(t, sqrt(E ||x̂_t - x_t||^2)) for t in ``NOISE_REPORT_TIMES``] (empty for ``noise: none``).
    """
    if path.noise == "none":
        log.info("no noise; mean ||z - x0|| = %.4f", mean_distance)
        return []
    rows = [(t, path.expected_noise_norm(t, dim)) for t in NOISE_REPORT_TIMES]
    table = ", ".join(f"t={t:.1f}: {n:.4f}" for t, n in rows)
    log.info(
        "%s noise: expected noise norm %s; mean ||z - x0|| = %.4f (noise/distance at t=0.5: %.2f)",
        path.noise, table, mean_distance, rows[2][1] / max(mean_distance, 1e-12),
    )  # fmt: skip
    return rows
