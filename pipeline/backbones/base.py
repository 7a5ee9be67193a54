"""The interface every stage-1 backbone (zero-shot CLIP, CoOp, CLIP-LoRA, ...) implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch

from pipeline.backbones.encoder import Encoder


class Backbone(abc.ABC):
    """Maps images and class names into the shared space where FMA and the probes work.

    A backbone wraps a frozen open_clip ``Encoder`` plus whatever it learned in stage 1. Models never
    train themselves: a PEFT trainer fits them and saves a checkpoint that ``load_state`` restores.
    """

    name: ClassVar[str]
    # True when the image tower is the pretrained one untouched: test image features are then the same
    # for every shot and seed, and are extracted once per dataset.
    frozen_image_encoder: ClassVar[bool]

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    @abc.abstractmethod
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised features x0."""

    @abc.abstractmethod
    def text_features(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Class names -> (C, D) L2-normalised class text features z."""
