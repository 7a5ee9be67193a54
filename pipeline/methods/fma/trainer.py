"""Training loop of the FMA velocity net on few-shot features, cached or online (docs/methods.md, F1-F9)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.core.config import FMAConfig
from pipeline.core.device import adamw, autocast
from pipeline.core.errors import InputError
from pipeline.core.progress import Progress
from pipeline.core.schedule import warmup_cosine_lr
from pipeline.methods.fma.path import FlowPath, couple, estimate_sigma2, log_noise_scale
from pipeline.methods.fma.velocity import VelocityNet

log = logging.getLogger(__name__)

__all__ = ["CachedViews", "FitResult", "ViewSource", "build_path", "train_velocity"]


class ViewSource(Protocol):
    """Where the trainer's x0 come from: one view of each of the N training images per epoch."""

    encode_seconds: float  # time spent encoding images during training (0 for cached views)

    def __len__(self) -> int:
        """N, the number of training images."""

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
        targets: optional (N, V, D) per-view class texts (per-image texts); ``take_target`` returns
            the target of the view ``take`` returned.

    Raises:
        InputError: ``train_views`` > K (names ``fma.train_views``).
    """

    encode_seconds = 0.0

    def __init__(
        self,
        train_x: np.ndarray | torch.Tensor,
        train_views: int | None = None,
        device: torch.device | str = "cpu",
        targets: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        train_x = torch.as_tensor(np.asarray(train_x) if not isinstance(train_x, torch.Tensor) else train_x)
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
        self.targets = None
        if targets is not None:
            targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
            assert targets.shape == train_x.shape, (targets.shape, train_x.shape)
            self.targets = targets[:, : self.n_views].to(device)  # (N, V', D)
        self._views: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.train_x.shape[0]

    def __repr__(self) -> str:
        return f"cached(center + {self.n_views - 1} views)"

    def start_epoch(self, epoch: int, gen: torch.Generator) -> None:
        n = self.train_x.shape[0]
        self._views = torch.randint(0, self.n_views, (n,), generator=gen).to(self.train_x.device)  # (N,)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        assert self._views is not None, "start_epoch() first"
        idx_here = idx.to(self.train_x.device)
        return self.train_x[idx_here, self._views[idx_here]].to(idx.device)  # (B, D)

    def take_target(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) image indices -> (B, D) per-image class texts of this epoch's views."""
        assert self._views is not None and self.targets is not None
        idx_here = idx.to(self.targets.device)
        return self.targets[idx_here, self._views[idx_here]].to(idx.device)  # (B, D)


@dataclass(frozen=True)
class FitResult:
    """A trained velocity net and what its training logged.

    Attributes:
        net: the trained ``VelocityNet`` in eval mode.
        history: mean training loss per epoch.
        info: noise summary (sigma^2 source, expected noise norms vs the image-text distance).
    """

    net: VelocityNet
    history: list[float]
    info: dict[str, Any] = field(default_factory=dict)


def _targets(features: Any) -> np.ndarray | None:
    targets = getattr(features, "train_targets", None)
    return None if targets is None else np.asarray(targets, dtype=np.float32)


def build_path(features: Any, cfg: FMAConfig) -> tuple[FlowPath, dict[str, Any]]:
    """The training path of ``cfg`` for these features, and a summary of its noise (logged).

    sigma^2 (paper noise) follows Eq. (F4); the summary holds, for t in 0.1, 0.3, ..., 0.9, the
    RMS norm of the added noise against the mean center-view distance ||z - x0|| to the own class text.

    Raises:
        InputError: paper noise without any sigma^2 estimate (names ``fma.noise``).
    """
    train_x = np.asarray(features.train_x, dtype=np.float32)  # (N, V, D)
    train_y = np.asarray(features.train_y, dtype=np.int64)  # (N,)
    targets = _targets(features)
    z = targets[:, 0] if targets is not None else np.asarray(features.text, dtype=np.float32)[train_y]
    mean_distance = float(np.linalg.norm(z - train_x[:, 0], axis=-1).mean())  # (N, D) -> scalar
    info: dict[str, Any] = {"noise": cfg.noise, "mean_image_text_distance": mean_distance}
    sigma2 = None
    if cfg.noise == "paper":
        sigma2, source = estimate_sigma2(train_x, train_y)
        log.info("paper noise: sigma^2 = %s (mean %.3g over %d dims)", source, sigma2.mean(), sigma2.numel())
        info.update(sigma2_source=source, sigma2_mean=float(sigma2.mean()))
    path = FlowPath.from_config(cfg, sigma2)
    rows = log_noise_scale(path, mean_distance, train_x.shape[-1])
    if rows:
        info["expected_noise_norm"] = {f"{t:.1f}": n for t, n in rows}
    return path, info


def train_velocity(
    features: Any,
    cfg: FMAConfig,
    seed: int,
    device: torch.device | str = "cpu",
    views: ViewSource | None = None,
) -> FitResult:
    """Fit u_theta by flow matching from the few-shot image features to their class texts, Eq. (F9).

    Each epoch shuffles the N training images and takes one view of each from ``views``: by default
    one of the cached views (``CachedViews``, limited by ``cfg.train_views``), or with
    ``pipeline.methods.fma.online.OnlineViews`` a freshly encoded augmentation (the official code's
    way; the encoding time counts as training time). Per sample t ~ U(0, 1), z from the coupling
    (Eq. (F2); with per-image texts, ``features.train_targets[i, view]``), (x_t, u_t) from the path
    (``FlowPath``), and the loss is ||u_theta(x_t, t) - u_t||^2 summed over dimensions and averaged
    over the batch. AdamW with ``warmup_cosine_lr`` per step. On CUDA the forward pass runs under
    float16 autocast with a GradScaler; on CPU everything stays float32, so the same config, seed and
    device give the same numbers.

    Args:
        features: anything with ``train_x`` (N, V, D), ``train_y`` (N,) and either ``text`` (C, D) or
            ``train_targets`` (N, V, D) arrays, e.g. ``pipeline.features.cache.Features``.
        cfg: the FMA config slice.
        seed: seeds the initialisation and every random draw (own generator; global RNG untouched).
        device: where to train.
        views: the source of x0; None builds ``CachedViews(features.train_x, cfg.train_views)``.
            Its ``encode_seconds`` afterwards holds the time spent encoding images.

    Returns:
        ``FitResult``: the net in eval mode, the mean loss per epoch and the noise summary.

    Raises:
        InputError: ``cfg.train_views`` exceeds the cached views; per-image targets with random
            coupling or online views; paper noise without a sigma^2 estimate.
        ValueError: ``cfg.online`` without a ``views`` source.
    """
    device = torch.device(device)
    targets = _targets(features)
    if targets is not None and cfg.coupling != "class":
        raise InputError(
            "config key 'fma.coupling': 'random' needs one (C, D) class-text matrix; this cache has "
            "per-image class texts"
        )
    if views is None:
        if cfg.online:
            raise ValueError("cfg.online needs an online view source: pass views=OnlineViews(...)")
        views = CachedViews(features.train_x, cfg.train_views, device, targets=targets)
    if targets is not None and not isinstance(views, CachedViews):
        raise InputError("config key 'fma.online': per-image class texts need cached views (online is false)")
    train_y = torch.as_tensor(np.asarray(features.train_y), dtype=torch.int64).to(device)  # (N,)
    text = None
    if targets is None:
        text = torch.as_tensor(np.asarray(features.text), dtype=torch.float32).to(device)  # (C, D)
    n, dim = train_y.shape[0], int(np.asarray(features.train_x).shape[-1])
    assert len(views) == n > 0, (len(views), n)

    path, info = build_path(features, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VelocityNet(dim, cfg.blocks, time_scale=cfg.time_scale)
    net = net.to(device).train()
    # All random draws come from one CPU generator, so CPU and CUDA runs draw the same data order.
    gen = torch.Generator().manual_seed(seed)
    if path.sigma2 is not None:
        path = FlowPath.from_config(cfg, path.sigma2.to(device))
    optimizer = adamw(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    log.info(
        "training FMA velocity net: N=%d D=%d views=%s blocks=%d time scale %g, %d epochs x %d steps, "
        "noise=%s coupling=%s",
        n, dim, views, cfg.blocks, cfg.time_scale, cfg.epochs, steps_per_epoch, cfg.noise, cfg.coupling,
    )  # fmt: skip

    history: list[float] = []
    step = 0
    progress = Progress(cfg.epochs, "FMA training", "epochs", log, every=15.0)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(device)  # (N,)
        views.start_epoch(epoch, gen)  # one view per image for this epoch
        total, count = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]  # (B,)
            x0 = views.take(idx)  # (B, D)
            if text is None:
                z = views.take_target(idx)  # (B, D): the own-class text of this view, Eq. (F2)
            else:
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
        steps_per_second = step / max(time.perf_counter() - progress.start, 1e-9)
        progress.update(1, f"loss {history[-1]:.4f}, {steps_per_second:.0f} optimiser steps/s")
        log.debug("epoch %d/%d: loss %.6f lr %.3g", epoch + 1, cfg.epochs, history[-1], lr)
    if history:
        log.info(
            "FMA training done: loss %.6f -> %.6f (%.1fs encoding images)",
            history[0], history[-1], views.encode_seconds,
        )  # fmt: skip
    return FitResult(net.eval(), history, info)
