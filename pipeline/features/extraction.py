"""Stage 1 -> arrays: encode a dataset's images with a backbone, or transform a reused cache.

The registry line decides the path (``pipeline.backbones.registry``):

* a backbone that encodes images (zero-shot CLIP, CLIP-LoRA) runs its image encoder on the few-shot
  train images (center + K augmented views), the few-shot val images and, per dataset or per run,
  the test images;
* a backbone that ``reuses`` another's caches (CoOp, CoCoOp, CLIP-Adapter) never runs the image
  encoder: its image features are ``adapt_features`` of the reused ones (the identity for prompt
  learners, so CoOp's image features *are* zero-shot CLIP's);
* class texts come from the backbone (``class_texts``), from the reused cache when the backbone
  leaves the text side alone (CLIP-Adapter), or, for per-image texts (CoCoOp), as each cached
  view's own-class text (``target_texts``), the rest being computed on the fly in stage 2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import build_train_transform
from pipeline.backbones.registry import BackboneSpec
from pipeline.core.config import ExtractionConfig, RuntimeConfig
from pipeline.core.progress import Progress
from pipeline.data.coop import DatasetSplits, Item, resolve_image
from pipeline.features.views import ViewDataset, encode_views

log = logging.getLogger(__name__)


@dataclass
class SplitArrays:
    """Features, labels and relative paths of one split: x is (N, V, D) or (N, D)."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]


def _labels(items: Sequence[Item]) -> np.ndarray:
    return np.array([it.label for it in items], dtype=np.int64)


def encode_items(
    backbone: Backbone,
    splits: DatasetSplits,
    items: Sequence[Item],
    runtime: RuntimeConfig,
    desc: str,
    extraction: ExtractionConfig | None = None,
    seed: int = 0,
) -> SplitArrays:
    """Encode ``items`` with the backbone's image encoder in eval mode.

    Without ``extraction``: the center view only, x is (N, D). With it: the center view and
    ``extraction.views`` augmented views (random resized crop at ``crop_scale``, optional flip),
    seeded per image from ``seed``, x is (N, 1 + K, D).
    """
    encoder = backbone.need_encoder()
    paths = [resolve_image(splits, it) for it in items]
    if extraction is None:
        data = ViewDataset(paths, encoder.preprocess)
    else:
        augment = build_train_transform(encoder, extraction.crop_scale, extraction.hflip)
        data = ViewDataset(paths, encoder.preprocess, augment, extraction.views, seed)
    with torch.no_grad():
        x = encode_views(backbone.encode_images, data, runtime.batch_size, runtime.workers, desc)
    return SplitArrays(x if extraction is not None else x[:, 0], _labels(items), [it.path for it in items])


@torch.no_grad()
def adapt_cached(backbone: Backbone, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """``backbone.adapt_features`` of cached features of any leading shape (..., D), in chunks."""
    flat = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1, x.shape[-1])  # (M, D)
    device = backbone.device
    out = [backbone.adapt_features(chunk.to(device)).float().cpu() for chunk in torch.split(flat, batch_size)]
    return torch.cat(out).reshape(x.shape).numpy() if out else np.asarray(x, dtype=np.float32)


@torch.no_grad()
def per_view_targets(
    backbone: Backbone, train_x: np.ndarray, train_y: np.ndarray, chunk: int = 256
) -> np.ndarray:
    """(N, V, D) own-class text of every cached view (per-image texts, CoCoOp): ``target_texts``."""
    n, v, d = train_x.shape
    flat = torch.as_tensor(train_x).reshape(n * v, d)  # (N V, D)
    labels = torch.as_tensor(train_y).repeat_interleave(v)  # (N V,)
    progress = Progress(n * v, "per-view class texts", "views", log)
    out = []
    for start in range(0, n * v, chunk):
        x, y = flat[start : start + chunk], labels[start : start + chunk]
        out.append(backbone.target_texts(x.to(backbone.device), y.to(backbone.device)).float().cpu())
        progress.update(len(y))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).reshape(n, v, d).numpy()


@torch.no_grad()
def class_text_arrays(
    backbone: Backbone,
    spec: BackboneSpec,
    train_x: np.ndarray,
    train_y: np.ndarray,
    reused_text: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(text (C, D) or None, per-view targets (N, V, D) or None) for a few-shot cache."""
    if spec.per_image_text:
        return None, per_view_targets(backbone, train_x, train_y)
    if reused_text is not None and spec.changes not in ("text", "both"):
        return np.asarray(reused_text, dtype=np.float32), None
    return backbone.class_texts().float().cpu().numpy(), None
