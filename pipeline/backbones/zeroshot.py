"""Zero-shot CLIP: the pretrained encoders as they are, classes described by prompt templates."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import encode_images, encode_texts


class ZeroShotCLIP(Backbone):
    """Frozen CLIP; its prediction is argmax cos(x0, z) over the templated class texts."""

    name = "zeroshot"
    frozen_image_encoder = True

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.encoder, images)

    def text_features(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.encoder, classnames, templates)
