"""Encoder work of a config's grid, computed without running it: images and prompts per job.

Every stage-1 job records the images and prompts it ran through the encoders (``Backbone.forwards``,
stored in fit metrics and cache attributes); this module predicts the same numbers from the
registry line and the recipe, so a grid can be costed before it runs (``bench/forward_counts.py``)
and the official FMA approach's cost can be set beside it. No torch here.

Counts are per job kind:

* ``fit``: a trained backbone's training. Feature-trained backbones run no image encoder; the
  text side runs every step (C prompts; B x C for per-image texts); image-trained ones encode
  ``min(batch, N)`` images per step.
* ``extract``: a run's caches: N (1 + K) train views + N_val val images (+ N_test test images when
  the image side changes) for a backbone that encodes images; C x T prompts for its class texts,
  or N (1 + K) prompts for per-image texts (each view's own class).
* ``test``: the per-dataset test cache of a frozen image encoder that encodes images.
* ``stage2``: per-image class texts computed on the fly by FMA (N_val + N_test) x C prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.backbones.recipes import TrainRecipe, schedule_length
from pipeline.backbones.registry import BackboneSpec


@dataclass(frozen=True)
class RunSize:
    """One run's sizes: C classes, N train, N_val, N_test images, K views, and T, the prompts per
    class of the backbone's class texts (its templates; 1 for a learned prompt)."""

    classes: int
    n_train: int
    n_val: int
    n_test: int
    views: int
    templates: int


def fit_forwards(
    spec: BackboneSpec, recipe: TrainRecipe, dataset: str, shot: int, size: RunSize
) -> dict[str, int]:
    """Images and prompts one ``fit_backbone`` job runs through the encoders."""
    if not spec.trains:
        return {"image": 0, "text": 0}
    length = schedule_length(recipe, dataset, shot)
    per_epoch = math.ceil(size.n_train / recipe.batch_size)
    steps = length.get("iterations", length.get("epochs", 0) * per_epoch)
    batch = min(recipe.batch_size, size.n_train)
    image = steps * batch * recipe.views_per_image() if spec.fit_input == "images" else 0
    text = 0
    if spec.changes in ("text", "both"):
        text = steps * (batch * size.classes if spec.per_image_text else size.classes * size.templates)
    return {"image": image, "text": text}


def extract_forwards(spec: BackboneSpec, size: RunSize) -> dict[str, int]:
    """Images and prompts one run's extraction job runs through the encoders."""
    image = 0
    if spec.encodes_images:
        image = size.n_train * (1 + size.views) + size.n_val
        if not spec.frozen_image_encoder:
            image += size.n_test
    if spec.per_image_text:
        text = size.n_train * (1 + size.views)
    elif spec.reuses and spec.changes == "image":
        text = 0  # the reused cache's texts
    else:
        text = size.classes * size.templates
    return {"image": image, "text": text}


def test_forwards(spec: BackboneSpec, size: RunSize) -> dict[str, int]:
    """Images of the per-dataset test cache (frozen image encoders that encode images only)."""
    own = spec.encodes_images and spec.frozen_image_encoder and not spec.trains
    return {"image": size.n_test if own else 0, "text": 0}


def stage2_forwards(spec: BackboneSpec, size: RunSize) -> dict[str, int]:
    """Prompts FMA runs through the text encoder for per-image class texts (val and test)."""
    return {"image": 0, "text": (size.n_val + size.n_test) * size.classes if spec.per_image_text else 0}


def official_fma_forwards(size: RunSize, fma_epochs: int) -> dict[str, int]:
    """The official FMA code's image-encoder work for one run: a fresh augmented view of every
    training image in every epoch (online features), plus encoding the test split for that run."""
    return {"image": fma_epochs * size.n_train + size.n_test, "text": size.classes}
