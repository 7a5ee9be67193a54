"""Build a backbone from its registry line, and rebuild a trained one from its checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.backbones.base import Backbone, check_checkpoint, read_backbone_checkpoint
from pipeline.backbones.encoder import Encoder, load_encoder
from pipeline.backbones.registry import build_config, get_spec, load_backbone_class
from pipeline.core.config import EncoderConfig


def build_backbone(
    name: str,
    encoder: Encoder | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    section: Mapping[str, Any] | None,
    dim: int,
    seed: int = 0,
) -> Backbone:
    """A fresh backbone ``name`` with its config from ``section`` (defaults filled).

    Its new parameters are initialised from ``seed`` (the global RNG is left as it was).
    """
    cls = load_backbone_class(name)
    cfg = build_config(name, dict(section or {}))
    device = encoder.device if encoder is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = cls(encoder, classnames, templates, cfg, dim)
    return backbone.to(device).eval()


def load_trained_backbone(
    path: str | os.PathLike,
    device: torch.device,
    expect: Mapping[str, Any],
    encoder: Encoder | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> Backbone:
    """Rebuild the backbone saved at ``path`` (``save_backbone``), in eval mode on ``device``.

    Args:
        expect: values the checkpoint must hold (backbone, dataset, shot, seed, classnames, ...).
        encoder: the open_clip model to wrap; None loads the checkpoint's (model, pretrained), or
            none at all for a backbone that needs no encoder (it then needs ``use_texts``).
        classnames, templates: rebuild it for other classes (and prompts) than it trained on: the
            transfer protocols (docs/protocol.md). Every trained parameter must still fit: a
            parameter with one row per class would fail the shape check (named).

    Raises:
        InputError: an unreadable file, or one trained for another method, run or set of classes,
            or with other shapes; the one-line message names the file and what differs.
    """
    payload = read_backbone_checkpoint(path)
    check_checkpoint(path, payload, expect)
    name = str(payload["backbone"])
    spec = get_spec(name)
    if encoder is None and (spec.encodes_images or spec.changes in ("text", "both")):
        encoder = load_encoder(
            EncoderConfig(payload.get("model", ""), payload.get("pretrained") or None), device
        )
    backbone = build_backbone(
        name,
        encoder,
        payload["classnames"] if classnames is None else classnames,
        payload["templates"] if templates is None else templates,
        payload["config"],
        int(payload["dim"]),
    )
    if encoder is None and "logit_scale" in payload:  # no model to read it from: the one it trained with
        backbone.logit_scale = float(payload["logit_scale"])
    backbone.load_trained_state(payload["state"], str(path))
    return backbone.to(device).eval()


def load_for_classes(
    path: str | os.PathLike,
    device: torch.device,
    expect: Mapping[str, Any],
    classnames: Sequence[str],
    templates: Sequence[str],
    encoder: Encoder | None = None,
) -> Backbone:
    """A trained backbone rebuilt for another set of classes (a transfer target, docs/protocol.md).

    A prompt learner (registry ``changes == "text"``) keeps the prompts it learned, so it keeps the
    templates it trained with (its context replaces them); every other backbone prompts the new
    classes with ``templates``, the target dataset's, as zero-shot CLIP would.
    """
    payload_templates = None if get_spec(str(expect["backbone"])).changes == "text" else templates
    return load_trained_backbone(
        path, device, expect, encoder=encoder, classnames=classnames, templates=payload_templates
    )
