"""Stage-1 backbones by name: what each one changes, whether it trains, which caches it reuses.

This module imports no torch, so the workflow reads it at parse time. The workflow derives every
per-backbone decision from these lines, with no per-backbone code:

* a ``fit_backbone`` job runs first when ``trains``;
* test features are extracted once per dataset when the image encoder is frozen (``changes`` is
  ``none`` or ``text``), else once per (dataset, shot, seed);
* with ``reuses`` set, the backbone starts from that backbone's caches and never runs the image
  encoder: it trains on the cached views and its extraction transforms cached features.

Adding a backbone is one module (a ``Backbone`` subclass exported as ``BACKBONE``), one line in
``_SPECS`` and, when it has hyperparameters, its config dataclass (``pipeline.backbones.recipes``).
See ``docs/backbones.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.backbones import recipes
from pipeline.core.errors import InputError
from pipeline.data.protocols import whole_name

CHANGES = ("none", "text", "image", "both")  # which side of the shared space a backbone changes


@dataclass(frozen=True)
class BackboneSpec:
    """One registry line.

    Attributes:
        name: registry name, used in the config, in paths and in result records.
        label: display name in tables.
        module: import path of the module whose ``BACKBONE`` attribute is the ``Backbone`` class.
        changes: ``none`` (zero-shot CLIP), ``text`` (prompt learning), ``image`` (adapters on the
            image feature, fine-tuned vision blocks) or ``both`` (LoRA in both encoders).
        trains: whether a ``fit_backbone`` job trains it on the few-shot images first.
        reuses: the backbone whose caches it starts from instead of running the image encoder
            (``None``: it encodes images itself).
        per_image_text: class texts depend on the image (CoCoOp): stage 2 computes them on the fly
            from the untransported image feature instead of reading one (C, D) matrix.
        config: the dataclass of its config section (``backbone_config.<name>``), or ``None``.
    """

    name: str
    label: str
    module: str
    changes: str
    trains: bool
    reuses: str | None = None
    per_image_text: bool = False
    config: type | None = None

    def __post_init__(self) -> None:
        assert self.changes in CHANGES, self.changes
        assert not (self.reuses and self.changes == "both"), "a backbone that changes both encoders encodes"

    @property
    def frozen_image_encoder(self) -> bool:
        """Its test image features equal its image source's for every shot and seed."""
        return self.changes in ("none", "text")

    @property
    def encodes_images(self) -> bool:
        """Its extraction runs the image encoder (else it transforms a reused cache)."""
        return self.reuses is None

    @property
    def fit_input(self) -> str:
        """What ``fit_backbone`` trains on: ``"features"`` (the reused cache's views) or ``"images"``."""
        return "features" if self.reuses else "images"


_SPECS = (
    BackboneSpec("zeroshot", "Zero-shot CLIP", "pipeline.backbones.zeroshot", "none", trains=False),
    BackboneSpec("coop", "CoOp", "pipeline.backbones.coop", "text", True, "zeroshot", config=recipes.CoOp),
    BackboneSpec(
        "cocoop", "CoCoOp", "pipeline.backbones.cocoop", "text", True, "zeroshot", True, recipes.CoCoOp
    ),
    BackboneSpec(
        "clip_adapter",
        "CLIP-Adapter",
        "pipeline.backbones.clip_adapter",
        "image",
        True,
        "zeroshot",
        config=recipes.CLIPAdapter,
    ),  # fmt: skip
    BackboneSpec(
        "clip_lora", "CLIP-LoRA", "pipeline.backbones.clip_lora", "both", True, config=recipes.CLIPLoRA
    ),
    BackboneSpec(
        "mps_tuning", "MPS-Tuning", "pipeline.backbones.mps_tuning", "image", True, config=recipes.MPSTuning
    ),
)
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def list_backbones() -> list[str]:
    """Every registered backbone name, in registry order."""
    return list(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    """The registry line of ``name``.

    Raises:
        InputError: an unknown name; the message lists the valid ones.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise InputError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})") from None


def image_source(name: str) -> str:
    """The backbone whose test cache ``name`` reads: itself, or the end of its ``reuses`` chain
    while the image encoder stays frozen (CoOp reads zero-shot CLIP's)."""
    spec = get_spec(name)
    while spec.frozen_image_encoder and spec.reuses is not None:
        spec = get_spec(spec.reuses)
    return spec.name


def build_config(name: str, section: dict[str, Any] | None) -> Any:
    """The frozen config of backbone ``name`` from its ``backbone_config`` section (defaults filled).

    Raises:
        InputError: keys for a backbone without a config, an unknown key or a wrong type (named).
    """
    spec = get_spec(name)
    if spec.config is None:
        if section:
            raise InputError(f"config key 'backbone_config.{name}': backbone '{name}' takes no settings")
        return None
    from pipeline.core.config import from_dict  # torch-free

    return from_dict(spec.config, section or {}, prefix=f"backbone_config.{name}.")


def resolved_recipe(name: str, section: dict[str, Any] | None, dataset: str, shot: int) -> dict[str, Any]:
    """The config slice one ``fit_backbone`` job depends on: the section with its schedule resolved
    to this (dataset, shot), so that a change for other datasets or shots reruns nothing here.
    ``<dataset>@base`` (base-to-new) takes ``<dataset>``'s per-dataset settings.

    The result is still a valid section: ``epochs_by_shots`` holds the one entry ``{shot: epochs}``
    and ``epochs_by_dataset`` is empty (with ``iterations_per_shot`` set, both are unused); other
    per-dataset fields (MPS-Tuning's lambda1 and temperature) are fixed by ``resolved_for``. It is
    idempotent: resolving a resolved section gives it back.
    """
    cfg = build_config(name, section)
    if cfg is None:
        return {}
    out = dataclasses.asdict(cfg)
    dataset = whole_name(dataset)  # a half of a dataset's classes trains with the dataset's recipe
    if isinstance(cfg, recipes.TrainRecipe):
        length = recipes.schedule_length(cfg, dataset, shot)
        out["epochs_by_dataset"] = {}
        out["epochs_by_shots"] = {str(shot): length["epochs"]} if "epochs" in length else {}
        out.update(cfg.resolved_for(dataset))
    return out


def load_backbone_class(name: str) -> type:
    """Import the module of backbone ``name`` and return its ``BACKBONE`` class (imports torch)."""
    import importlib

    spec = get_spec(name)
    module = importlib.import_module(spec.module)
    cls = getattr(module, "BACKBONE", None)
    if cls is None or getattr(cls, "name", None) != name:
        raise InputError(f"{spec.module}: expected a BACKBONE class named '{name}'")
    return cls
