"""Class texts for stage 2: one (C, D) matrix, or per-image texts computed on the fly (CoCoOp).

Stage-2 methods classify a feature x by the cosine with the class texts. Most backbones have one
(C, D) matrix, read from the cache. A backbone whose texts depend on the image (``per_image_text``
in the registry) cannot store them: ImageNet's 50,000 test images x 1,000 classes x 512 floats
would be 100 GB. Its texts are computed in bounded chunks from the *untransported* image feature
x0 by the trained backbone and held fixed while FMA moves x (docs/backbones.md, CoCoOp).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class ClassTexts(Protocol):
    """x0 (B, D) -> class texts: (C, D) shared by every image, or (B, C, D) one set per image."""

    per_image: bool

    def __call__(self, x0: Tensor) -> Tensor: ...


class StaticTexts:
    """The same (C, D) class texts for every image."""

    per_image = False

    def __init__(self, text: np.ndarray | Tensor) -> None:
        self.text = F.normalize(torch.as_tensor(np.asarray(text), dtype=torch.float32), dim=-1)  # (C, D)

    def __call__(self, x0: Tensor) -> Tensor:
        return self.text.to(x0.device)


class ImageConditionedTexts:
    """Per-image class texts from a trained backbone's ``image_class_texts`` (CoCoOp).

    Args:
        backbone: a ``pipeline.backbones.base.Backbone`` in eval mode.
        chunk: images per text-encoder call (memory: chunk x C prompts at once).
    """

    per_image = True

    def __init__(self, backbone: torch.nn.Module, chunk: int = 8) -> None:
        self.backbone, self.chunk = backbone, max(1, chunk)

    @torch.no_grad()
    def __call__(self, x0: Tensor) -> Tensor:
        device = self.backbone.device
        parts = [
            self.backbone.image_class_texts(x.to(device)).float().to(x0.device)  # (b, C, D)
            for x in torch.split(x0, self.chunk)
        ]
        return F.normalize(torch.cat(parts), dim=-1)  # (B, C, D)


def cosine_logits(x: Tensor, text: Tensor) -> Tensor:
    """Cosine of (B, D) features with (C, D) or (B, C, D) class texts -> (B, C)."""
    x = F.normalize(x, dim=-1)
    text = F.normalize(text.to(x.dtype), dim=-1)
    if text.ndim == 2:
        return x @ text.T
    return torch.einsum("bd,bcd->bc", x, text)
