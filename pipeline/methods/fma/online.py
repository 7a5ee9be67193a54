"""Online views for FMA training: every epoch, encode a fresh random augmentation of every training image."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from pipeline.core.device import init_loader_worker
from pipeline.features.views import EpochImages

log = logging.getLogger(__name__)


class OnlineViews:
    """A ``ViewSource`` (see ``pipeline.methods.fma.trainer``) that encodes fresh augmentations each epoch.

    The official FMA code's way of training: at the start of every epoch each of the N training
    images is decoded, augmented once (``images``, seeded per epoch and image) and encoded by the
    frozen backbone under ``torch.no_grad``. The time spent is summed in ``encode_seconds``.
    sigma^2 of the paper's noise comes from the cache's center views as with cached views
    (docs/methods.md, Eq. (F4)), not from the online features.

    Args:
        images: the N training images in the order of the trainer's labels, one view per epoch.
        encode: (B, 3, H, W) -> (B, D) L2-normalised features, e.g. ``Backbone.encode_images``.
        batch_size: images per encoder batch (a runtime knob: results do not depend on it).
        workers: DataLoader workers for decoding (a runtime knob too).
    """

    def __init__(
        self,
        images: EpochImages,
        encode: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 256,
        workers: int = 0,
    ) -> None:
        assert len(images) > 0 and batch_size > 0
        self.images, self.encode = images, encode
        self.batch_size, self.workers = batch_size, workers
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
        loader = DataLoader(
            self.images,
            batch_size=self.batch_size,
            num_workers=self.workers,
            shuffle=False,
            worker_init_fn=init_loader_worker,
        )
        start = time.perf_counter()
        chunks = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for batch, _ in loader:
                chunks.append(self.encode(batch).float().cpu())  # (B, D)
        seconds = time.perf_counter() - start
        self.encode_seconds += seconds
        log.debug("epoch %d: encoded %d images in %.2fs", epoch, len(self), seconds)
        return torch.cat(chunks)  # (N, D)

    def _ensure(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            self._x, self._epoch = self.encode_epoch(epoch), epoch
        assert self._x is not None
        return self._x

    def start_epoch(self, epoch: int, gen: torch.Generator) -> None:
        self._ensure(epoch)  # no draws from gen: the augmentation is seeded per item

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        assert self._x is not None, "start_epoch() first"
        return self._x[idx.cpu()].to(idx.device)  # (B, D)
