"""Zero-shot CLIP: the pretrained encoders as they are, classes described by prompt templates."""

from __future__ import annotations

from pipeline.backbones.base import Backbone


class ZeroShotCLIP(Backbone):
    """Frozen CLIP; its prediction is argmax cos(x0, z) over the templated class texts.

    Every default of ``Backbone`` is zero-shot CLIP, so this class only names it.
    """

    name = "zeroshot"


BACKBONE = ZeroShotCLIP
