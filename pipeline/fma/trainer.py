"""Training loop of the FMA velocity net on cached few-shot features (SPEC 2, "Training")."""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import FMAConfig
from pipeline.device import autocast
from pipeline.feature_cache import Features
from pipeline.fma.path import FlowPath, couple
from pipeline.fma.velocity import VelocityNet, load_velocity

log = logging.getLogger(__name__)

__all__ = ["compute_sigma2", "get_lr", "load_velocity", "train_velocity"]


def get_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based).

    Linear warm-up lr (step + 1) / W for the first W steps, then cosine decay
    lr (1 + cos(pi (step - W) / (T - W))) / 2, which reaches 0 at step T.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def compute_sigma2(train_x: torch.Tensor) -> torch.Tensor:
    """Per-dimension variance sigma^2 (D,) of the training image features over all images and views."""
    return train_x.reshape(-1, train_x.shape[-1]).var(dim=0, unbiased=False)


def train_velocity(
    features: Features,
    cfg: FMAConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[VelocityNet, list[float]]:
    """Fit u_theta by flow matching from the few-shot image features to their class texts.

    Each epoch shuffles the N training images and draws one of the V cached views of each
    (V = 1: center view only). Per sample t ~ U(0, 1), z from the coupling, (x_t, u_t) from the
    path (``FlowPath``), and the loss is E ||u_theta(x_t, t) - u_t||^2, summed over dimensions and
    averaged over the batch. AdamW with ``get_lr`` per step. On CUDA the forward pass runs under
    float16 autocast with a GradScaler; on CPU everything stays float32, so the same config, seed
    and device give the same numbers.

    Args:
        features: anything with ``train_x`` (N, V, D), ``train_y`` (N,) and ``text`` (C, D) arrays,
            e.g. ``pipeline.feature_cache.Features``.
        cfg: the FMA config slice.
        seed: seeds the initialisation and every random draw (own generator; global RNG untouched).
        device: where to train.

    Returns:
        (trained net in eval mode, mean training loss per epoch).
    """
    device = torch.device(device)
    train_x = torch.as_tensor(np.asarray(features.train_x), dtype=torch.float32).to(device)  # (N, V, D)
    train_y = torch.as_tensor(np.asarray(features.train_y), dtype=torch.int64).to(device)  # (N,)
    text = torch.as_tensor(np.asarray(features.text), dtype=torch.float32).to(device)  # (C, D)
    assert train_x.ndim == 3 and train_x.shape[0] == train_y.shape[0] > 0
    n, n_views, dim = train_x.shape

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VelocityNet(dim, cfg.blocks)
    net = net.to(device).train()
    # All random draws come from one CPU generator, so CPU and CUDA runs draw the same data order.
    gen = torch.Generator().manual_seed(seed)

    path = FlowPath(
        noise=cfg.noise,
        gamma=cfg.noise_scale,
        sigma2=compute_sigma2(train_x),
        min_one_minus_t=cfg.min_one_minus_t,
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    log.info(
        "training FMA velocity net: N=%d V=%d D=%d blocks=%d, %d epochs x %d steps, noise=%s coupling=%s",
        n, n_views, dim, cfg.blocks, cfg.epochs, steps_per_epoch, cfg.noise, cfg.coupling,
    )  # fmt: skip

    history: list[float] = []
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc="FMA epochs", disable=not sys.stderr.isatty()):
        perm = torch.randperm(n, generator=gen).to(device)  # (N,)
        views = torch.randint(0, n_views, (n,), generator=gen).to(device)  # (N,) one view per image
        total, count = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]  # (B,)
            x0 = train_x[idx, views[idx]]  # (B, D)
            z = couple(train_y[idx], text, cfg.coupling, gen)  # (B, D)
            t = torch.rand(idx.shape[0], generator=gen).to(device)  # (B,)
            xt, ut = path.sample(x0, z, t, gen)  # (B, D), (B, D)

            lr = get_lr(step, cfg.lr, warmup_steps, total_steps)
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
        log.info("FMA training done: loss %.6f -> %.6f", history[0], history[-1])
    return net.eval(), history
