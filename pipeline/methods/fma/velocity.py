"""The FMA velocity net u(x, t): a DiT-style adaLN residual MLP conditioned on t (docs/methods.md, F7-F8)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

FREQ_DIM = 256  # width of the sinusoidal time embedding
OFFICIAL_TIME_SCALE = 1.0  # the official FMA code embeds t in [0, 1] as is
DIT_TIME_SCALE = 1000.0  # DiT (and this pipeline before FMA_VERSION 2) embeds 1000 t
MAX_PERIOD = 10000.0
LN_EPS = 1e-6


def timestep_embedding(t: Tensor, dim: int = FREQ_DIM, max_period: float = MAX_PERIOD) -> Tensor:
    """Sinusoidal embedding of (already scaled) times, cosine half first then sine half, Eq. (F8).

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
    """t -> Linear(256, D), SiLU, Linear(D, D) of the sinusoidal embedding of ``time_scale`` t, Eq. (F8)."""

    def __init__(self, dim: int, time_scale: float = OFFICIAL_TIME_SCALE, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = float(time_scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t * self.time_scale, self.freq_dim))  # (B, D)


class AdaLNBlock(nn.Module):
    """Residual MLP block, Eq. (F7): x + gate MLP(modulate(LN(x), shift, scale)), (shift, scale, gate) from c.

    The LayerNorm has affine weight and bias (eps 1e-6), as the official code's ``ResBlock.in_ln``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=True, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # 3 x (B, D)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class FinalLayer(nn.Module):
    """LN without affine, time-conditioned shift and scale, then Linear(D, D) to the velocity, Eq. (F7)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))


class VelocityNet(nn.Module):
    """u_theta(x_t, t): (B, D) features and (B,) times in [0, 1] -> (B, D) velocities, Eq. (F7).

    Width equals the feature dim D (512 for ViT-B/16); ``blocks`` residual blocks (official code 12,
    paper 6); no dropout. A fresh net returns exactly zero (see ``initialize_weights``). The layout is
    the official ``DeepFlowMatchingNet`` under other parameter names (``checkpoint.OFFICIAL_NAMES``).

    Args:
        dim: feature dim D.
        blocks: residual blocks.
        time_scale: t is embedded as ``time_scale`` t (1.0: official code; 1000: DiT).
    """

    def __init__(self, dim: int, blocks: int = 12, time_scale: float = OFFICIAL_TIME_SCALE) -> None:
        super().__init__()
        self.dim = dim
        self.n_blocks = blocks
        self.time_scale = float(time_scale)
        self.input = nn.Linear(dim, dim)
        self.time = TimeEmbedder(dim, time_scale)
        self.blocks = nn.ModuleList(AdaLNBlock(dim) for _ in range(blocks))
        self.final = FinalLayer(dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform weights and zero biases; time MLP N(0, 0.02); modulations and output zeroed.

        Zero gates make every block the identity and the zeroed output layer makes u = 0, so training
        starts from the identity transport (the solver at any M is then the backbone itself). Block
        LayerNorms start at weight 1, bias 0 (torch's default).
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
