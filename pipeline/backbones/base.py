"""The contract every stage-1 backbone implements, and its checkpoint (trained parameters only).

A backbone maps images and class names into the shared space where FMA and the probes work. It
wraps a frozen open_clip model (``Encoder``) plus whatever the method learns; the registry line
(``pipeline.backbones.registry``) says which side it changes and whether it trains. Models never
train themselves: ``pipeline.backbones.training.fit`` optimises the parameters that require
gradients against ``loss``. docs/backbones.md describes each method.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbones.encoder import Encoder, encode_texts
from pipeline.core.atomic import save_torch
from pipeline.core.errors import InputError

LOGIT_SCALE = 100.0  # OpenAI CLIP's learned temperature; the default when no encoder tells its own
CHECKPOINT_FORMAT = 1


def logit_scale_of_model(model: nn.Module) -> float:
    """exp of an open_clip model's learned ``logit_scale``, or ``LOGIT_SCALE`` if it has none."""
    value = getattr(model, "logit_scale", None)
    return float(value.detach().exp()) if isinstance(value, Tensor) else LOGIT_SCALE


class Backbone(nn.Module):
    """A stage-1 method: (B, 3, H, W) images or (B, D) frozen features -> (B, D) features x0, and
    class names -> class text features z, all L2-normalised.

    Subclasses set ``name`` to their registry name. The defaults implement zero-shot CLIP; a method
    overrides what it changes:

    * ``encode_images``: runs the image encoder (a backbone that changes the vision tower);
    * ``adapt_features``: maps frozen image features to its own (CLIP-Adapter), identity otherwise;
    * ``class_texts``: (C, D) class texts (prompt learning, LoRA on the text tower);
    * ``image_class_texts`` / ``target_texts``: per-image class texts (CoCoOp).

    Every parameter a method adds requires gradients; the CLIP weights never do. ``forwards``
    counts the images and prompts that went through the encoders.

    Args:
        encoder: the frozen open_clip model, or None for a backbone that works on cached features
            and cached texts only (see ``use_texts``).
        classnames: the C class names, in label order.
        templates: prompt templates (several: the mean of normalised embeddings).
        cfg: the backbone's config dataclass (``registry.BackboneSpec.config``), or None.
        dim: D, the shared space's dimension.
    """

    name: ClassVar[str]

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: Any,
        dim: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        if encoder is not None:
            self.clip = encoder.model  # registered, so .to() reaches it (see train); frozen by load_encoder
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.cfg = cfg
        self.dim = int(dim)
        self.forwards: Counter[str] = Counter()  # "image": images encoded, "text": prompts encoded
        self._frozen_texts: Tensor | None = None
        # The CLIP model's own learned temperature, as the official CoOp, CoCoOp, CLIP-Adapter and
        # CLIP-LoRA code use it (exactly 100 for OpenAI's weights; 14.3 for the demo backbone). A
        # backbone built without an encoder gets it from ``encoder.logit_scale_of`` or its checkpoint.
        self.logit_scale = logit_scale_of_model(encoder.model) if encoder is not None else LOGIT_SCALE

    # ------------------------------------------------------------------------------------------ space

    @property
    def device(self) -> torch.device:
        if self.encoder is not None:
            return self.encoder.device
        params = list(self.parameters())
        return params[0].device if params else torch.device("cpu")

    def need_encoder(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError(f"backbone '{self.name}' was built without an encoder")
        return self.encoder

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised image features x0."""
        encoder = self.need_encoder()
        self.forwards["image"] += images.shape[0]
        feats = encoder.model.encode_image(images.to(encoder.device, non_blocking=True))
        return F.normalize(feats.float(), dim=-1)

    def adapt_features(self, x: Tensor) -> Tensor:
        """(B, D) frozen zero-shot image features -> (B, D) this backbone's features (identity here)."""
        return F.normalize(x.float(), dim=-1)

    def use_texts(self, text: Tensor) -> None:
        """Use these (C, D) frozen class texts (read from a cache) instead of running the text encoder."""
        assert text.shape == (len(self.classnames), self.dim), text.shape
        self._frozen_texts = F.normalize(text.float(), dim=-1).to(self.device)

    def class_texts(self) -> Tensor:
        """(C, D) L2-normalised class text features z (zero-shot CLIP: the templated class names)."""
        if self._frozen_texts is None:
            encoder = self.need_encoder()
            self.forwards["text"] += len(self.classnames) * len(self.templates)
            self._frozen_texts = encode_texts(encoder, self.classnames, self.templates).to(encoder.device)
        return self._frozen_texts

    def image_class_texts(self, x: Tensor) -> Tensor:
        """(B, D) image features -> (B, C, D) class texts for each image (the same for every image here)."""
        text = self.class_texts()
        return text.unsqueeze(0).expand(x.shape[0], *text.shape)

    def target_texts(self, x: Tensor, labels: Tensor) -> Tensor:
        """(B, D) image features and (B,) labels -> (B, D) each image's own class text."""
        return self.class_texts()[labels.to(self.class_texts().device)]

    def logits(self, x: Tensor) -> Tensor:
        """(B, D) image features -> (B, C) logits, ``logit_scale`` x cosine with the class texts."""
        x = F.normalize(x, dim=-1)
        text = self.class_texts()
        if text.ndim == 2:
            return self.logit_scale * x @ text.T.to(x.dtype)
        return self.logit_scale * torch.einsum("bd,bcd->bc", x, text.to(x.dtype))

    # ------------------------------------------------------------------------------------------ training

    def loss(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the backbone's logits on a batch of images (B, 3, H, W) or frozen
        features (B, D); the training objective of every method here except those that override it."""
        x = self.encode_images(inputs) if inputs.ndim == 4 else self.adapt_features(inputs)
        return F.cross_entropy(self.logits(x), labels.to(x.device))

    def start_step(self, step: int, total: int) -> None:
        """Called by ``training.fit`` before each of the ``total`` steps; a method whose loss follows
        the run's progress (MPS-Tuning's temperature schedule) reads it here. Nothing by default."""

    def train(self, mode: bool = True) -> Backbone:
        """Put the method's own modules in training mode; the frozen CLIP stays in eval mode.

        Only the modules inside the CLIP model that hold trained parameters (CLIP-LoRA's low-rank
        updates) follow ``mode``, so their dropout acts. Everything else in CLIP keeps eval
        behaviour, as the official CoOp code does (it sets only the prompt learner to train): a
        ResNet encoder's frozen BatchNorm statistics never update and no CLIP dropout switches on.
        """
        super().train(mode)
        if self.encoder is not None:
            self.clip.eval()
            for module in self.clip.modules():
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    module.train(mode)
        return self

    def trainable_names(self) -> list[str]:
        """Names of the parameters the method trains (those that require gradients), sorted."""
        return sorted(name for name, p in self.named_parameters() if p.requires_grad)

    def trained_state(self) -> dict[str, Tensor]:
        """The trained parameters only, detached on the CPU."""
        params = dict(self.named_parameters())
        return {name: params[name].detach().cpu().clone() for name in self.trainable_names()}

    def load_trained_state(self, state: Mapping[str, Tensor], source: str) -> None:
        """Copy trained parameters in, checking that names and shapes match this model.

        Raises:
            InputError: names or shapes differ; the message names ``source`` and the first difference.
        """
        params = dict(self.named_parameters())
        want = set(self.trainable_names())
        missing, extra = sorted(want - set(state)), sorted(set(state) - want)
        if missing or extra:
            what = f"lacks '{missing[0]}'" if missing else f"has unexpected '{extra[0]}'"
            raise InputError(f"{source}: checkpoint {what} (is it another method's checkpoint?)")
        for name in sorted(want):
            if tuple(state[name].shape) != tuple(params[name].shape):
                raise InputError(
                    f"{source}: parameter '{name}' has shape {tuple(state[name].shape)}, "
                    f"this model has {tuple(params[name].shape)}"
                )
        with torch.no_grad():
            for name in want:
                params[name].copy_(state[name].to(params[name].device, params[name].dtype))


# ---------------------------------------------------------------------------------------------- checkpoint


def save_backbone(path: str | os.PathLike, backbone: Backbone, extra: Mapping[str, Any]) -> None:
    """Write the trained parameters and their config atomically (``torch.load(weights_only=True)``).

    Layout: ``{"format", "backbone", "config", "classnames", "templates", "dim", "state", **extra}``;
    ``extra`` holds what the checkpoint must match when loaded (model, pretrained, dataset, ...).
    """
    cfg = dataclasses.asdict(backbone.cfg) if dataclasses.is_dataclass(backbone.cfg) else {}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": backbone.name,
        "config": cfg,
        "classnames": list(backbone.classnames),
        "templates": list(backbone.templates),
        "dim": backbone.dim,
        "logit_scale": float(backbone.logit_scale),
        "state": backbone.trained_state(),
        **dict(extra),
    }
    save_torch(payload, path)


def read_backbone_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``save_backbone`` file with ``weights_only=True``.

    Raises:
        InputError: the file is missing, unreadable, or not a backbone checkpoint (named).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: backbone checkpoint not found") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable backbone checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "state" not in payload:
        raise InputError(f"{path}: not a backbone checkpoint written by this pipeline")
    return payload


def check_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """Raise ``InputError`` naming ``path`` and the first of ``expect``'s keys whose value differs."""
    for key, want in expect.items():
        have = payload.get(key)
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            if key == "classnames" and isinstance(have, list) and isinstance(want, list):
                detail = f"{len(have)} classes, the dataset has {len(want)}"
                if len(have) == len(want):
                    i = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
                    detail = f"class {i} is {have[i]!r}, the dataset's is {want[i]!r}"
                raise InputError(f"{path}: checkpoint was trained on other classes ({detail})")
            raise InputError(f"{path}: checkpoint '{key}' is {have!r}, expected {want!r}")
