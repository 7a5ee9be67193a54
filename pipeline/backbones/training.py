"""The one training loop of the stage-1 backbones: a recipe, a source of batches, a loss.

``fit`` optimises the parameters of a ``Backbone`` that require gradients against its ``loss``,
with the recipe's optimizer and warm-up + cosine schedule (``pipeline.core.schedule``), float16
autocast on CUDA only, and one loss value per epoch. Batches come from cached features
(``FeatureBatches``: CoOp, CoCoOp, CLIP-Adapter train on the zero-shot cache's views) or from
images augmented afresh each epoch (``ImageBatches``: CLIP-LoRA).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pipeline.backbones.base import Backbone
from pipeline.backbones.recipes import TrainRecipe
from pipeline.core.device import adamw, autocast, init_loader_worker
from pipeline.core.errors import InputError
from pipeline.core.progress import Progress
from pipeline.core.schedule import warmup_cosine_lr
from pipeline.features.views import EpochImages, item_seed

log = logging.getLogger(__name__)


class Batches(Protocol):
    """One epoch of (inputs, labels) batches; random draws only from ``gen`` (or per-item seeds)."""

    n_items: int

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]: ...


class FeatureBatches:
    """Shuffled batches of cached image features, one view of each image per epoch.

    Args:
        train_x: (N, V, D) cached features; view 0 is the center crop.
        train_y: (N,) labels.
        batch_size: images per batch.
        views: views to draw from: None = all V, 1 = the center view only.
    """

    def __init__(
        self,
        train_x: np.ndarray | Tensor,
        train_y: np.ndarray | Tensor,
        batch_size: int,
        views: int | None = None,
    ) -> None:
        self.x = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)  # (N, V, D)
        self.y = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)  # (N,)
        assert self.x.ndim == 3 and len(self.x) == len(self.y) > 0
        self.views = self.x.shape[1] if views is None else max(1, min(views, self.x.shape[1]))
        self.batch_size = batch_size
        self.n_items = len(self.y)

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(self.n_items, generator=gen)  # (N,)
        view = torch.randint(0, self.views, (self.n_items,), generator=gen)  # (N,)
        for start in range(0, self.n_items, self.batch_size):
            idx = perm[start : start + self.batch_size]
            yield self.x[idx, view[idx]], self.y[idx]  # (B, D), (B,)


class ImageBatches:
    """Shuffled batches of images, each augmented afresh every epoch (seeded per epoch and image)."""

    def __init__(self, images: EpochImages, batch_size: int, workers: int = 0) -> None:
        self.images, self.batch_size, self.workers = images, batch_size, workers
        self.n_items = len(images)

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        self.images.epoch = epoch
        perm = torch.randperm(self.n_items, generator=gen).tolist()
        loader = DataLoader(
            torch.utils.data.Subset(self.images, perm),
            batch_size=self.batch_size,
            num_workers=self.workers,
            shuffle=False,
            worker_init_fn=init_loader_worker,
        )
        yield from loader


@dataclass
class FitResult:
    """What a fit leaves besides the trained parameters."""

    loss_per_epoch: list[float]
    steps: int
    epochs: int
    seconds: float
    forwards: dict[str, int] = field(default_factory=dict)  # images / prompts through the encoders


def _optimizer(params: list[torch.nn.Parameter], recipe: TrainRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    return adamw(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


def fit(
    backbone: Backbone,
    batches: Batches,
    recipe: TrainRecipe,
    length: dict[str, int],
    seed: int,
    what: str = "fit",
) -> FitResult:
    """Train ``backbone``'s trainable parameters with ``recipe`` for ``length`` ({"epochs": E} or
    {"iterations": I}, see ``recipes.schedule_length``).

    Every step: lr from ``warmup_cosine_lr`` (warm-up counted in epochs of ``ceil(N / batch)``
    steps), ``backbone.loss`` under autocast on CUDA, a GradScaler step. The global RNG is left as
    it was: data order comes from a generator seeded with ``seed``.

    Raises:
        InputError: the backbone has nothing to train, or the loss is not finite (``what`` names the
            job); the caller then writes nothing.
    """
    params = [p for p in backbone.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{what}: backbone '{backbone.name}' has no trainable parameters")
    per_epoch = math.ceil(batches.n_items / recipe.batch_size)
    total = length["iterations"] if "iterations" in length else length["epochs"] * per_epoch
    epochs = math.ceil(total / per_epoch)
    warmup_steps = recipe.warmup_epochs * per_epoch
    device = backbone.device
    optimizer = _optimizer(params, recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    gen = torch.Generator().manual_seed(seed)
    log.info(
        "%s: %s, %d trainable parameters, %d images, %d steps (%d epochs of %d), %s lr %.3g",
        what, backbone.name, sum(p.numel() for p in params), batches.n_items, total, epochs, per_epoch,
        recipe.optimizer, recipe.lr,
    )  # fmt: skip
    progress = Progress(epochs, what, "epochs", log, every=15.0)
    backbone.train()
    history: list[float] = []
    step, start = 0, time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            total_loss, count = 0.0, 0
            for inputs, labels in batches.epoch(epoch, gen):
                if step >= total:
                    break
                lr = warmup_cosine_lr(
                    step, recipe.lr, warmup_steps, total, min_lr=recipe.min_lr,
                    warmup=recipe.warmup, warmup_lr=recipe.warmup_lr,
                )  # fmt: skip
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # Dropout (CLIP-LoRA) draws from the global RNG: reseed it per step (apart from the
                # image seeds), so data loading never changes it (EpochImages reseeds per image in
                # the main process with workers=0; worker processes draw their base seed from it).
                torch.manual_seed(item_seed(seed, step, epochs + 1))
                backbone.start_step(step, total)
                with autocast(device):
                    loss = backbone.loss(inputs.to(device), labels.to(device))
                if not torch.isfinite(loss):
                    raise InputError(
                        f"{what}: the loss became {loss.item()} at step {step} (epoch {epoch}); "
                        "lower the learning rate in backbone_config"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += loss.item() * len(labels)
                count += len(labels)
                step += 1
            history.append(total_loss / max(count, 1))
            progress.update(1, f"loss {history[-1]:.4f}, lr {lr:.3g}")
    backbone.eval()
    return FitResult(history, step, epochs, time.perf_counter() - start, dict(backbone.forwards))
