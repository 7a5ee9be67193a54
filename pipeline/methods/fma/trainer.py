"""Training loop of the FMA velocity net on few-shot features, cached or encoded online (SPEC 2)."""

from __future__ import annotations

import logging
import math
import sys
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.config import FMAConfig
from pipeline.core.device import autocast
from pipeline.core.errors import InputError
from pipeline.core.schedule import warmup_cosine_lr
from pipeline.features.cache import Features
from pipeline.methods.fma.path import FlowPath, couple
from pipeline.methods.fma.velocity import VelocityNet, load_velocity

log = logging.getLogger(__name__)

__all__ = ["CachedViews", "ViewSource", "compute_sigma2", "load_velocity", "train_velocity"]


def compute_sigma2(train_x: torch.Tensor) -> torch.Tensor:
    """Per-dimension variance sigma^2 (D,) of the training image features over all images and views."""
    return train_x.reshape(-1, train_x.shape[-1]).var(dim=0, unbiased=False)


class ViewSource(Protocol):
    """Where the trainer's x0 come from: one view of each of the N training images per epoch."""

    encode_seconds: float  # time spent encoding images during training (0 for cached views)

    def __len__(self) -> int:
        """N, the number of training images."""

    def sigma2(self) -> torch.Tensor:
        """(D,) per-dimension variance of the features x0 is drawn from (the paper's sigma^2)."""

    def start_epoch(self, epoch: int, gen: torch.Generator) -> None:
        """Fix this epoch's view of every image; random draws come from ``gen`` only."""

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) image indices -> (B, D) this epoch's views, on ``idx``'s device."""


class CachedViews:
    """Draw one cached view per image per epoch from the center and the first ``train_views`` views.

    Args:
        train_x: (N, V, D) cached features; view 0 is the center crop, views 1..K = V - 1 augmented.
        train_views: augmented views to draw from (``FMAConfig.train_views``): None = all K,
            0 = the center view only, k = the center and views 1..k.
        device: where the features live during training.

    Raises:
        InputError: ``train_views`` > K (names ``fma.train_views``).
    """

    encode_seconds = 0.0

    def __init__(
        self,
        train_x: np.ndarray | torch.Tensor,
        train_views: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(train_x, torch.Tensor):
            train_x = torch.as_tensor(np.asarray(train_x))
        train_x = train_x.float()
        assert train_x.ndim == 3, train_x.shape
        cached = train_x.shape[1] - 1
        if train_views is not None and not 0 <= train_views <= cached:
            raise InputError(
                f"config key 'fma.train_views': {train_views} views asked for, but the cache holds "
                f"{cached} augmented views per image"
            )
        self.n_views = cached + 1 if train_views is None else train_views + 1  # center included
        self.train_x = train_x[:, : self.n_views].to(device)  # (N, V', D)
        self._views: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.train_x.shape[0]

    def __repr__(self) -> str:
        return f"cached(center + {self.n_views - 1} views)"

    def sigma2(self) -> torch.Tensor:
        return compute_sigma2(self.train_x)

    def start_epoch(self, epoch: int, gen: torch.Generator) -> None:
        n = self.train_x.shape[0]
        self._views = torch.randint(0, self.n_views, (n,), generator=gen).to(self.train_x.device)  # (N,)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        assert self._views is not None, "start_epoch() first"
        idx_here = idx.to(self.train_x.device)
        return self.train_x[idx_here, self._views[idx_here]].to(idx.device)  # (B, D)


def train_velocity(
    features: Features,
    cfg: FMAConfig,
    seed: int,
    device: torch.device | str = "cpu",
    views: ViewSource | None = None,
) -> tuple[VelocityNet, list[float]]:
    """Fit u_theta by flow matching from the few-shot image features to their class texts.

    Each epoch shuffles the N training images and takes one view of each from ``views``: by default
    one of the cached views (``CachedViews``, limited by ``cfg.train_views``), or with
    ``pipeline.methods.fma.online.OnlineViews`` a freshly encoded augmentation (the official code's way; the
    encoding time counts as training time). Per sample t ~ U(0, 1), z from the coupling, (x_t, u_t) from the
    path (``FlowPath``), and the loss is E ||u_theta(x_t, t) - u_t||^2, summed over dimensions and
    averaged over the batch. AdamW with ``warmup_cosine_lr`` per step. On CUDA the forward pass runs under
    float16 autocast with a GradScaler; on CPU everything stays float32, so the same config, seed
    and device give the same numbers.

    Args:
        features: anything with ``train_x`` (N, V, D), ``train_y`` (N,) and ``text`` (C, D) arrays,
            e.g. ``pipeline.features.cache.Features``.
        cfg: the FMA config slice.
        seed: seeds the initialisation and every random draw (own generator; global RNG untouched).
        device: where to train.
        views: the source of x0; None builds ``CachedViews(features.train_x, cfg.train_views)``.
            Its ``encode_seconds`` afterwards holds the time spent encoding images.

    Returns:
        (trained net in eval mode, mean training loss per epoch).

    Raises:
        InputError: ``cfg.train_views`` exceeds the cached views.
        ValueError: ``cfg.online`` without a ``views`` source.
    """
    device = torch.device(device)
    if views is None:
        if cfg.online:
            raise ValueError("cfg.online needs an online view source: pass views=OnlineViews(...)")
        views = CachedViews(features.train_x, cfg.train_views, device)
    train_y = torch.as_tensor(np.asarray(features.train_y), dtype=torch.int64).to(device)  # (N,)
    text = torch.as_tensor(np.asarray(features.text), dtype=torch.float32).to(device)  # (C, D)
    n, dim = train_y.shape[0], text.shape[1]
    assert len(views) == n > 0, (len(views), n)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VelocityNet(dim, cfg.blocks)
    net = net.to(device).train()
    # All random draws come from one CPU generator, so CPU and CUDA runs draw the same data order.
    gen = torch.Generator().manual_seed(seed)

    path = FlowPath(
        noise=cfg.noise,
        gamma=cfg.noise_scale,
        sigma2=views.sigma2().to(device),
        min_one_minus_t=cfg.min_one_minus_t,
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    log.info(
        "training FMA velocity net: N=%d D=%d views=%s blocks=%d, %d epochs x %d steps, noise=%s coupling=%s",
        n, dim, views, cfg.blocks, cfg.epochs, steps_per_epoch, cfg.noise, cfg.coupling,
    )  # fmt: skip

    history: list[float] = []
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc="FMA epochs", disable=not sys.stderr.isatty()):
        perm = torch.randperm(n, generator=gen).to(device)  # (N,)
        views.start_epoch(epoch, gen)  # one view per image for this epoch
        total, count = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]  # (B,)
            x0 = views.take(idx)  # (B, D)
            z = couple(train_y[idx], text, cfg.coupling, gen)  # (B, D)
            t = torch.rand(idx.shape[0], generator=gen).to(device)  # (B,)
            xt, ut = path.sample(x0, z, t, gen)  # (B, D), (B, D)

            lr = warmup_cosine_lr(step, cfg.lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                pred = net(xt, t)  # (B, D)
            loss = (pred.float() - ut).pow(2).sum(dim=-1).mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            total += loss.item() * idx.shape[0]
            count += idx.shape[0]
            step += 1
        history.append(total / count)
        log.debug("epoch %d/%d: loss %.6f lr %.3g", epoch + 1, cfg.epochs, history[-1], lr)
    if history:
        log.info(
            "FMA training done: loss %.6f -> %.6f (%.1fs encoding images)",
            history[0], history[-1], views.encode_seconds,
        )  # fmt: skip
    return net.eval(), history
