"""The FMA velocity network u(x, t): a DiT-style adaLN residual MLP conditioned only on time (SPEC 2)."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle

import torch
from torch import Tensor, nn

from pipeline.core.atomic import atomic_path
from pipeline.core.config import FMAConfig, from_dict
from pipeline.core.errors import InputError

FREQ_DIM = 256  # width of the sinusoidal time embedding
TIME_SCALE = 1000.0  # t in [0, 1] is scaled to [0, 1000] before the sinusoids, as in DiT
MAX_PERIOD = 10000.0


def timestep_embedding(t: Tensor, dim: int = FREQ_DIM, max_period: float = MAX_PERIOD) -> Tensor:
    """Sinusoidal embedding of (already scaled) times, cosine half first then sine half.

    emb_i = cos(t w_i) for i < dim/2, sin(t w_{i - dim/2}) after, with w_i = max_period^(-i / (dim/2)).

    Args:
        t: (B,) times.

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x (1 + scale) + shift, all (B, D)."""
    return x * (1 + scale) + shift


class TimeEmbedder(nn.Module):
    """t -> Linear(256, D), SiLU, Linear(D, D) of the sinusoidal embedding of 1000 t."""

    def __init__(self, dim: int, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t * TIME_SCALE, self.freq_dim))  # (B, D)


class AdaLNBlock(nn.Module):
    """Residual MLP block: x + gate * MLP(modulate(LN(x), shift, scale)), (shift, scale, gate) from c."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # No affine parameters: the time-conditioned shift and scale take their place.
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # 3 x (B, D)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class FinalLayer(nn.Module):
    """LN without affine, time-conditioned shift and scale, then Linear(D, D) to the velocity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))


class VelocityNet(nn.Module):
    """u_theta(x_t, t): (B, D) features and (B,) times in [0, 1] -> (B, D) velocities.

    Width equals the feature dim D (512 for ViT-B/16); ``blocks`` residual blocks (paper 6, code 12);
    no dropout. A fresh net returns exactly zero (see ``initialize_weights``).
    """

    def __init__(self, dim: int, blocks: int = 6) -> None:
        super().__init__()
        self.dim = dim
        self.n_blocks = blocks
        self.input = nn.Linear(dim, dim)
        self.time = TimeEmbedder(dim)
        self.blocks = nn.ModuleList(AdaLNBlock(dim) for _ in range(blocks))
        self.final = FinalLayer(dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform weights and zero biases; time MLP N(0, 0.02); modulations and output zeroed.

        Zero gates make every block the identity and the zeroed output layer makes u = 0, so training
        starts from the identity transport (ESS at any M is then the backbone itself).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time.mlp[0], self.time.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Args: x (B, D) points x_t; t (B,) times. Returns (B, D) velocities."""
        c = self.time(t)  # (B, D)
        h = self.input(x)  # (B, D)
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)  # (B, D)


def save_velocity(path: str | os.PathLike, net: VelocityNet, cfg: FMAConfig, selected_m: int) -> None:
    """Write a checkpoint atomically; it loads with ``torch.load(path, weights_only=True)``.

    Layout: {"state_dict", "config": asdict(cfg), "dim", "blocks", "selected_m", "step_size"}.
    """
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": dataclasses.asdict(cfg),
        "dim": int(net.dim),
        "blocks": int(net.n_blocks),
        "selected_m": int(selected_m),
        "step_size": float(cfg.step_size),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_velocity(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VelocityNet, FMAConfig]:
    """Read a checkpoint written by ``save_velocity``: (net in eval mode on ``device``, its FMAConfig).

    Raises:
        InputError: the file is missing or is not such a checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = VelocityNet(int(state["dim"]), int(state["blocks"]))
        net.load_state_dict(state["state_dict"])
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except (KeyError, RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(f"{path}: not an FMA velocity checkpoint ({err})") from None
    cfg = from_dict(FMAConfig, state["config"])
    return net.to(device).eval(), cfg
