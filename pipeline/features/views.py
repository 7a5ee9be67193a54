"""Image views for encoders: the cached center + K augmented views, and one fresh view per epoch.

Every item reseeds torch's RNG from (seed, epoch, index) (``item_seed``), so the views depend on
neither the batch size nor the number of DataLoader workers: runtime knobs never change results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.core.device import init_loader_worker
from pipeline.core.errors import InputError
from pipeline.core.progress import Progress
from pipeline.data.images import load_image

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # a prime larger than any split: (seed, epoch, index) never collide


def item_seed(seed: int, index: int, epoch: int = 0) -> int:
    """The torch seed of image ``index``'s augmentation(s) in ``epoch`` of a run seeded ``seed``."""
    return ((seed * SEED_STRIDE + epoch) * SEED_STRIDE + index) % 2**63


class ViewDataset(Dataset):
    """Images returned as (V, 3, H, W): the center view, then ``n_views`` augmented views.

    Args:
        paths: image files.
        center: PIL image -> (3, H, W), the eval transform (resize, center crop, normalise).
        augment: PIL image -> (3, H, W), the random train transform (needed when n_views > 0).
        n_views: K augmented views per image.
        seed: the run's seed (``item_seed``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        center: Callable[[Any], torch.Tensor],
        augment: Callable[[Any], torch.Tensor] | None = None,
        n_views: int = 0,
        seed: int = 0,
    ) -> None:
        assert n_views == 0 or augment is not None
        self.paths = [Path(p) for p in paths]
        self.center, self.augment, self.n_views, self.seed = center, augment, n_views, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.paths[index])
        views = [self.center(image)]
        if self.n_views:
            assert self.augment is not None
            torch.manual_seed(item_seed(self.seed, index))
            views += [self.augment(image) for _ in range(self.n_views)]
        return torch.stack(views)  # (V, 3, H, W)


class EpochImages(Dataset):
    """Fresh augmented view(s) of every image per epoch, seeded per (seed, epoch, index); set
    ``epoch`` before iterating. Items are (image (3, H, W), label), or with ``views`` = V > 1
    (images (V, 3, H, W), label): V different draws of the augmentation of the same image (the
    two-view loader MPS-Tuning's sculpting loss needs, which its official release lacks)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int],
        transform: Callable[[Any], torch.Tensor],
        seed: int,
        views: int = 1,
    ) -> None:
        assert len(paths) == len(labels) and views >= 1
        self.paths, self.labels = [Path(p) for p in paths], [int(y) for y in labels]
        self.transform, self.seed, self.views = transform, seed, views
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index])
        torch.manual_seed(item_seed(self.seed, index, self.epoch + 1))  # epoch 0 = the cached views' seed
        if self.views == 1:
            return self.transform(image), self.labels[index]
        return torch.stack([self.transform(image) for _ in range(self.views)]), self.labels[index]


@torch.no_grad()
def encode_views(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: ViewDataset,
    batch_size: int,
    workers: int,
    desc: str,
) -> np.ndarray:
    """Encode every view of every image: (N, V, D) float32.

    Args:
        encode: (B, 3, H, W) -> (B, D) features, e.g. ``Backbone.encode_images``.
        batch_size: views per encoder batch (a runtime knob; images per batch = batch_size // V).
        workers: DataLoader workers for decoding.

    Raises:
        InputError: the dataset is empty (``desc`` names it).
    """
    views = 1 + dataset.n_views
    loader = DataLoader(
        dataset,
        batch_size=max(1, batch_size // views),
        num_workers=workers,
        shuffle=False,
        worker_init_fn=init_loader_worker,
    )
    progress = Progress(len(dataset) * views, desc, "views", log)
    chunks = []
    for batch in loader:
        b, v = batch.shape[:2]
        feats = encode(batch.flatten(0, 1))  # (B * V, D)
        chunks.append(feats.float().cpu().reshape(b, v, -1).numpy())
        progress.update(b * v)
    if not chunks:
        raise InputError(f"{desc}: no images to encode")
    return np.concatenate(chunks).astype(np.float32)
