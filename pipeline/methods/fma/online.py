"""Online views for FMA training: every epoch, encode a fresh random augmentation of every training image."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.backbones.base import Backbone
from pipeline.data.images import load_image
from pipeline.methods.fma.trainer import compute_sigma2

log = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003  # the same stride as pipeline.extract.ViewDataset


def online_view_seed(seed: int, epoch: int, index: int) -> int:
    """The torch seed of image ``index``'s augmentation in ``epoch``: one per item, as ``ViewDataset``
    does, so the views depend on neither the batch size nor the number of workers."""
    return ((seed * _SEED_STRIDE + epoch) * _SEED_STRIDE + index) % 2**63


class _EpochImages(Dataset):
    """The training images of one epoch, each one augmentation, seeded per (seed, epoch, index)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor], seed: int) -> None:
        self.paths, self.transform, self.seed = list(paths), transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.paths[index])
        torch.manual_seed(online_view_seed(self.seed, self.epoch, index))
        return self.transform(image)  # (3, H, W)


class OnlineViews:
    """A ``ViewSource`` (see ``pipeline.methods.fma.trainer``) that encodes fresh augmentations each epoch.

    The official FMA code's way of training: at the start of every epoch each of the N training
    images is decoded, augmented once (``transform``, e.g. ``build_train_transform``) and encoded by
    the frozen ``backbone`` under ``torch.no_grad``. The time spent is summed in ``encode_seconds``.
    sigma^2 (noise augmentation) is the per-dimension variance of epoch 0's features.

    Args:
        paths: the N image files, in the order of the trainer's labels.
        backbone: the stage-1 backbone whose ``image_features`` gives x0 (its encoder's device).
        transform: PIL image -> (3, H, W) augmented, normalised tensor.
        seed: the run's seed; image ``i`` in epoch ``e`` uses ``online_view_seed(seed, e, i)``.
        batch_size: images per encoder batch (a runtime knob: results do not depend on it).
        workers: DataLoader workers for decoding (a runtime knob too).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        backbone: Backbone,
        transform: Callable[[Any], torch.Tensor],
        seed: int,
        batch_size: int = 256,
        workers: int = 0,
    ) -> None:
        assert len(paths) > 0 and batch_size > 0
        self.images = _EpochImages([Path(p) for p in paths], transform, seed)
        self.backbone, self.batch_size, self.workers = backbone, batch_size, workers
        self.encode_seconds = 0.0
        self._epoch: int | None = None
        self._x: torch.Tensor | None = None  # (N, D) features of epoch self._epoch

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"online({len(self)} images, batch {self.batch_size})"

    def encode_epoch(self, epoch: int) -> torch.Tensor:
        """(N, D) L2-normalised features of one augmentation per image for ``epoch`` (CPU float32).

        The global torch RNG is left as it was (the per-item seeding happens inside a fork).
        """
        self.images.epoch = epoch
        loader = DataLoader(self.images, batch_size=self.batch_size, num_workers=self.workers, shuffle=False)
        start = time.perf_counter()
        chunks = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for batch in tqdm(
                loader, desc=f"encode epoch {epoch}", leave=False, disable=not sys.stderr.isatty()
            ):
                chunks.append(self.backbone.image_features(batch).float().cpu())  # (B, D)
        seconds = time.perf_counter() - start
        self.encode_seconds += seconds
        log.debug("epoch %d: encoded %d images in %.2fs", epoch, len(self), seconds)
        return torch.cat(chunks)  # (N, D)

    def _ensure(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            self._x, self._epoch = self.encode_epoch(epoch), epoch
        assert self._x is not None
        return self._x

    def sigma2(self) -> torch.Tensor:
        return compute_sigma2(self._ensure(0)[:, None])  # (D,); epoch 0's features are reused

    def start_epoch(self, epoch: int, gen: torch.Generator) -> None:
        self._ensure(epoch)  # no draws from gen: the augmentation is seeded per item

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        assert self._x is not None, "start_epoch() first"
        return self._x[idx.cpu()].to(idx.device)  # (B, D)
