"""The workflow's config: preset, schema defaults, validation, and the slices each rule depends on.

``workflow/rules/common.smk`` calls ``load_workflow_config`` at parse time; every error is one
line naming the key. No torch here: Snakemake imports this on every invocation.

Order of precedence, lowest first: the schema's defaults (``workflow/schemas/config.schema.yaml``),
the backbones' recipes (``pipeline/backbones/recipes.py``), the preset named by ``preset``
(``workflow/presets/<name>.yaml``), then the user's ``config.yaml``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.backbones.registry import BACKBONES, build_config, get_spec, resolved_recipe
from pipeline.core.config import ExtractionConfig, check_crop_scale, from_dict
from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info, list_datasets


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for mappings (lists and scalars are replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fill_defaults(instance: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Fill omitted keys from the schema's defaults, so an omitted key and its default are one slice."""
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = json.loads(json.dumps(sub["default"]))
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _key_path(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _schema_errors(config: dict[str, Any], schema: Mapping[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = _key_path(error)
        raise InputError(f"unknown key '{extra[0] if where == '<top level>' else where + '.' + extra[0]}'")
    raise InputError(f"key '{_key_path(error)}': {error.message}")


def apply_preset(config: Mapping[str, Any], presets_dir: Path) -> dict[str, Any]:
    """The user's config over the preset it names (``preset: <name>``), if any."""
    name = config.get("preset")
    if name is None:
        return dict(config)
    if not isinstance(name, str):
        raise InputError(f"key 'preset': expected a preset name, got {name!r}")
    available = sorted(p.stem for p in presets_dir.glob("*.yaml"))
    path = presets_dir / f"{name}.yaml"
    if name not in available:
        raise InputError(f"key 'preset': unknown preset '{name}' (available: {', '.join(available)})")
    preset = yaml.safe_load(path.read_text()) or {}
    if not isinstance(preset, dict) or "preset" in preset:
        raise InputError(f"{path}: a preset is a mapping of config keys (without 'preset')")
    return deep_merge(preset, config)


def load_workflow_config(config: Mapping[str, Any], schema_path: Path, presets_dir: Path) -> dict[str, Any]:
    """Validate the workflow config and fill every default; returns a new mapping.

    Raises:
        InputError: one line naming the offending key (a wrong type, an unknown key, dataset,
            backbone or preset, a crop scale outside (0, 1], an ablation dataset not run, ...).
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = apply_preset(config, Path(presets_dir))
    _fill_defaults(config, schema)
    _schema_errors(config, schema)
    known = set(list_datasets())
    for name in config["datasets"]:
        if name not in known:
            raise InputError(f"key 'datasets': unknown dataset '{name}' (known: {', '.join(sorted(known))})")
    for group, names in config["groups"].items():
        for name in names:
            if name not in known:
                raise InputError(f"key 'groups.{group}': unknown dataset '{name}'")
    valid = ", ".join(BACKBONES)
    for name in config["backbones"]:
        if name not in BACKBONES:
            raise InputError(f"key 'backbones': unknown backbone '{name}' (choose from {valid})")
    for name, section in config["backbone_config"].items():
        if name not in BACKBONES:
            raise InputError(f"key 'backbone_config.{name}': unknown backbone (choose from {valid})")
        if not isinstance(section, dict):
            raise InputError(f"key 'backbone_config.{name}': expected a mapping")
        build_config(name, section)
    ablations = config.get("ablations", {})
    for name in ablations.get("datasets", []):
        if name not in config["datasets"]:
            raise InputError(f"key 'ablations.datasets': '{name}' is not in 'datasets'")
    for name in ablations.get("backbones", []) if ablations.get("variants") else []:
        if name not in needed_backbones(config):
            raise InputError(f"key 'ablations.backbones': '{name}' is not in 'backbones'")
    for name in config.get("templates", {}):
        if name not in known:
            raise InputError(f"key 'templates.{name}': unknown dataset")
    for name, aug in config["extraction"].get("augment", {}).items():
        if name not in known:
            raise InputError(f"key 'extraction.augment.{name}': unknown dataset")
        if "crop_scale" in aug:
            check_crop_scale(tuple(aug["crop_scale"]), f"extraction.augment.{name}.crop_scale")
    return config


# ---------------------------------------------------------------------------------------------- slices


def needed_backbones(config: Mapping[str, Any]) -> list[str]:
    """The configured backbones and every backbone whose caches they reuse, in registry order."""
    needed: set[str] = set()
    for name in config["backbones"]:
        while name is not None and name not in needed:
            needed.add(name)
            name = get_spec(name).reuses
    return [name for name in BACKBONES if name in needed]


def templates_for(config: Mapping[str, Any], backbone: str, dataset: str) -> list[str]:
    """Prompt templates of ``backbone`` on ``dataset``: its recipe's, else the config's, else the
    dataset's (CoOp's per-dataset templates)."""
    cfg = build_config(backbone, config["backbone_config"].get(backbone))
    own = getattr(cfg, "templates", None)
    if own:
        return list(own)
    return list(config.get("templates", {}).get(dataset) or get_dataset_info(dataset).templates)


def extraction_slice(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The resolved augmentation of ``dataset`` (catalog default unless overridden) and K."""
    info = get_dataset_info(dataset)
    aug = config["extraction"].get("augment", {}).get(dataset, {})
    cfg = from_dict(
        ExtractionConfig,
        {
            "views": config["extraction"]["views"],
            "crop_scale": aug.get("crop_scale", list(info.crop_scale)),
            "hflip": aug.get("hflip", info.hflip),
        },
        f"extraction.augment.{dataset}.",
    )
    return {"views": cfg.views, "crop_scale": list(cfg.crop_scale), "hflip": cfg.hflip}


def recipe_slice(config: Mapping[str, Any], backbone: str, dataset: str, shot: int) -> dict[str, Any]:
    """The backbone's recipe for one (dataset, shot), schedule resolved (``resolved_recipe``)."""
    return resolved_recipe(backbone, config["backbone_config"].get(backbone), dataset, int(shot))
