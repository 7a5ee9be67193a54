"""FMA probability path and coupling: turn an image feature and a class text into (xt, ut) (SPEC 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.core.errors import InputError

NOISE_MODES = ("none", "paper", "interpolant")
COUPLINGS = ("class", "random")


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator works for CUDA data)."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)


def couple(labels: Tensor, text: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Pick the target text z for every image.

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


@dataclass(frozen=True, eq=False)
class FlowPath:
    """Linear path from x0 (t = 0) to z (t = 1), optionally noised; holds no weights.

    Mean path: x_t = (1 - t) x0 + t z, with velocity u_t = z - x0. Noise modes:

    * ``"none"``: (x_t, z - x0).
    * ``"paper"`` (FMA paper): x̂_t ~ N(x_t, t (1 - t) gamma sigma^2) per dimension, target
      u_t = (z - x̂_t) / max(1 - t, min_one_minus_t).
    * ``"interpolant"`` (official code, stochastic interpolant): x̂_t = x_t + gamma sqrt(t (1 - t)) eps,
      target u_t = z - x0 + gamma (1 - 2t) / (2 sqrt(max(t (1 - t), min_one_minus_t))) eps, the time
      derivative of the noisy path; the clamp keeps the target finite at t = 0 and t = 1.

    Attributes:
        noise: one of ``NOISE_MODES``.
        gamma: noise scale (multiplies sigma^2 in "paper", the standard deviation in "interpolant").
        sigma2: (D,) per-dimension variance for "paper" (required there, ignored otherwise).
        min_one_minus_t: clamp of the denominators, away from 0.
    """

    noise: str = "none"
    gamma: float = 0.0
    sigma2: Tensor | None = None
    min_one_minus_t: float = 0.01

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise InputError(f"unknown noise mode {self.noise!r} (choose from {', '.join(NOISE_MODES)})")
        if self.noise == "paper" and self.sigma2 is None:
            raise InputError("noise mode 'paper' needs the per-dimension variance sigma2")

    def sample(
        self, x0: Tensor, z: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample a point on the path and its target velocity.

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
            std = torch.sqrt(tt * (1 - tt) * self.gamma * sigma2)  # (B, D)
            x_hat = xt + std * eps  # (B, D)
            ut = (z - x_hat) / torch.clamp(1 - tt, min=self.min_one_minus_t)
            return x_hat, ut
        # interpolant
        var = tt * (1 - tt)  # (B, 1)
        x_hat = xt + self.gamma * torch.sqrt(var) * eps
        d_std = self.gamma * (1 - 2 * tt) / (2 * torch.sqrt(torch.clamp(var, min=self.min_one_minus_t)))
        return x_hat, z - x0 + d_std * eps
