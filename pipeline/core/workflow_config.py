"""The workflow's config: preset, schema defaults, validation, and the slices each rule depends on.

``workflow/rules/common.smk`` calls ``check_yaml_file`` and ``load_workflow_config`` at parse time;
every error is one line naming the file and line or the key. No torch here: Snakemake imports this
on every invocation.

Strict on purpose: an integer is an ``int`` (not ``2.0``, not ``true``), every number is finite,
lists hold no duplicates, quantities have their bounds (schema), and what a schema cannot say is
checked here: prompt templates, crop scales, cross-field FMA rules, folders, and shots against the
datasets' smallest class.

Order of precedence, lowest first: the schema's defaults (``workflow/schemas/config.schema.yaml``),
the backbones' recipes (``pipeline/backbones/recipes.py``), the preset named by ``preset``
(``workflow/presets/<name>.yaml``), then the user's ``config.yaml``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.backbones.registry import BACKBONES, build_config, get_spec, resolved_recipe
from pipeline.core.config import (
    ExtractionConfig,
    FMAConfig,
    check_crop_scale,
    check_template,
    from_dict,
)
from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info, list_datasets
from pipeline.data.fewshot import SAMPLERS
from pipeline.data.protocols import SEPARATOR, whole_name
from pipeline.data.sizes import smallest_train_class

# The protocols that score a run on another class set (docs/protocol.md), in table order.
TRANSFER_PROTOCOLS = ("base_to_new", "cross_dataset", "domain_generalization")


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (not "last wins")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float):
                continue  # an unhashable key is left to the config checks
            if (type(key), key) in seen:  # the type too: 1 and true are two keys
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add((type(key), key))
        return super().construct_mapping(node, deep)


def check_yaml_file(path: Path | str) -> None:
    """Parse a config file as Snakemake will, but name the line of a syntax error or duplicate key.

    Snakemake's own message ("Config file is not valid JSON or YAML") names neither. A missing
    file is left to Snakemake.

    Raises:
        InputError: ``<path>:<line>:<column>: invalid YAML (<problem>)``, or a top level that is
            not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        json.loads(text)
        return  # valid JSON, which Snakemake tries first
    except ValueError:
        pass
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(err.problem or err.context or "syntax error").split())
        if err.context and err.problem and err.context_mark and err.context_mark.line != mark.line:
            problem += f"; {' '.join(err.context.split())} that starts at line {err.context_mark.line + 1}"
        raise InputError(f"{where}: invalid YAML ({problem})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of config keys at the top level")


def _check_finite(value: Any, key: str) -> None:
    """Every float in the config is finite: NaN passes every JSON-schema bound (NaN <= 0 is False)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"key '{key}': must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}.{i}")


def _schema_errors(config: dict[str, Any], schema: Mapping[str, Any]) -> None:
    import jsonschema

    # JSON Schema calls 2.0 an integer; a shot count of 2.0 is a typo here, so "integer" means int
    # (bool is excluded by jsonschema already: true is not an integer or a number).
    base = jsonschema.Draft202012Validator
    strict_int = base.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    )
    validator = jsonschema.validators.extend(base, type_checker=strict_int)(schema)
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
            backbone or preset, a non-finite number, a crop scale outside (0, 1], a template
            without exactly one ``{}``, more shots than a dataset's smallest class has, ...).
    """
    try:
        return _load(copy.deepcopy(dict(config)), schema_path, presets_dir)  # never the caller's dicts
    except InputError as err:
        # The dataclasses say "config key 'k': ..."; the workflow's convention is "key 'k': ...".
        message = str(err)
        for old, new in (("config key '", "key '"), ("unknown config key '", "unknown key '")):
            if message.startswith(old):
                message = new + message[len(old) :]
        raise InputError(message) from None


def _load(config: Mapping[str, Any], schema_path: Path, presets_dir: Path) -> dict[str, Any]:
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = apply_preset(config, Path(presets_dir))
    if "data_root" not in config:
        preset = f"preset '{config['preset']}' " if config.get("preset") else ""
        raise InputError(
            f"key 'data_root': not set; {preset}needs the folder that holds the datasets "
            "(--config data_root=/path/to/data)"
        )
    _fill_defaults(config, schema)
    for key in ("ablations", "backbone_ablations"):  # by default the run's datasets, its largest shot
        if isinstance(config.get(key), dict):
            if "datasets" not in config[key] and isinstance(config.get("datasets"), list):
                config[key]["datasets"] = list(config["datasets"])
            if "shots" not in config[key] and isinstance(config.get("shots"), list) and config["shots"]:
                config[key]["shots"] = [max(config["shots"], key=lambda s: s if isinstance(s, int) else 0)]
    largest = max((x for x in config.get("shots", []) if isinstance(x, int)), default=None)
    for name in TRANSFER_PROTOCOLS:
        section = config.get("protocols", {}).get(name) if isinstance(config.get("protocols"), dict) else None
        if isinstance(section, dict) and "shots" not in section and largest is not None:
            section["shots"] = [largest]
    _check_finite(config, "")
    _schema_errors(config, schema)
    if config["sampler"] not in SAMPLERS:
        raise InputError(
            f"key 'sampler': unknown sampler {config['sampler']!r} (choose from {', '.join(SAMPLERS)})"
        )
    for key in ("results", "data_root"):
        if os.path.normpath(os.path.abspath(config[key])) == os.path.abspath(os.sep):
            raise InputError(f"key '{key}': {config[key]!r} is the filesystem root; name a folder")
    known = set(list_datasets())
    for name in config["datasets"]:
        if whole_name(name) not in known:
            raise InputError(f"key 'datasets': unknown dataset '{name}' (known: {', '.join(sorted(known))})")
        try:
            info = get_dataset_info(name)  # a half of a dataset's classes: '<dataset>@base' or '@new'
        except InputError as err:
            raise InputError(f"key 'datasets': {err}") from None
        if info.test_only:
            raise InputError(
                f"key 'datasets': '{name}' is test-only (no train split to sample few-shot runs from)"
            )
    for group, names in config["groups"].items():
        for name in names:
            if whole_name(name) not in known:
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
    _check_backbone_ablations(config)
    for name, templates in config.get("templates", {}).items():
        if name not in known:
            raise InputError(f"key 'templates.{name}': unknown dataset")
        for i, template in enumerate(templates):
            check_template(template, f"templates.{name}.{i}")
    for name, aug in config["extraction"].get("augment", {}).items():
        if name not in known:
            raise InputError(f"key 'extraction.augment.{name}': unknown dataset")
        if "crop_scale" in aug:
            check_crop_scale(tuple(aug["crop_scale"]), f"extraction.augment.{name}.crop_scale")
    if "crop_scale" in config["demo_backbone"]:
        check_crop_scale(tuple(config["demo_backbone"]["crop_scale"]), "demo_backbone.crop_scale")
    fma_sections = {"fma": config["fma"]}
    for name, variant in ablations.get("variants", {}).items():
        fma_sections[f"ablations.variants.{name}.fma"] = {**config["fma"], **variant.get("fma", {})}
    views = config["extraction"]["views"]
    for key, section in fma_sections.items():
        fma = from_dict(FMAConfig, section, f"{key}.")  # cross-field rules (ensemble steps, online, ...)
        if fma.train_views is not None and fma.train_views > views:
            raise InputError(
                f"key '{key}.train_views': {fma.train_views} is more than the {views} views "
                "that extraction.views caches"
            )
    _check_shots(config["shots"], config["datasets"], config["data_root"], "shots")
    _check_shots(
        ablations.get("shots", []), ablations.get("datasets", []), config["data_root"], "ablations.shots"
    )
    _check_protocols(config, known)
    return config


def _check_protocols(config: Mapping[str, Any], known: set[str]) -> None:
    """Every protocol's datasets known; sources have classes to train on; targets differ from them."""
    protocols = config.get("protocols", {})
    for name in protocols.get("base_to_new", {}).get("datasets", []):
        key = "protocols.base_to_new.datasets"
        if name not in known:
            raise InputError(f"key '{key}': unknown dataset '{name}' (name the whole dataset, e.g. 'dtd')")
        if get_dataset_info(name).test_only:
            raise InputError(f"key '{key}': '{name}' is test-only (it has no classes to train on)")
    for protocol in TRANSFER_PROTOCOLS[1:]:
        section = protocols.get(protocol)
        if not section:
            continue
        source = section["source"]
        for key, name in [("source", source), *(("targets", t) for t in section["targets"])]:
            try:
                info = get_dataset_info(name)
            except InputError as err:
                raise InputError(f"key 'protocols.{protocol}.{key}': {err}") from None
            if key == "source" and info.test_only:
                raise InputError(
                    f"key 'protocols.{protocol}.source': '{name}' is test-only (nothing to train on)"
                )
        if source in section["targets"]:
            raise InputError(f"key 'protocols.{protocol}.targets': '{source}' is the source itself")
    for protocol, section in protocols.items():
        if protocol in TRANSFER_PROTOCOLS and section:
            sources = [source for source, _ in protocol_transfers(config, protocol)]
            _check_shots(
                section["shots"], sorted(set(sources)), config["data_root"], f"protocols.{protocol}.shots"
            )


def protocol_transfers(config: Mapping[str, Any], protocol: str) -> list[tuple[str, str]]:
    """(source, target) dataset pairs of one configured protocol, in config order (none if absent).

    base_to_new: ``<d>@base`` -> ``<d>@new`` for each of its datasets; cross_dataset and
    domain_generalization: the source -> each target.
    """
    section = config.get("protocols", {}).get(protocol)
    if not section:
        return []
    if protocol == "base_to_new":
        return [(f"{d}{SEPARATOR}base", f"{d}{SEPARATOR}new") for d in section["datasets"]]
    return [(section["source"], target) for target in section["targets"]]


def _check_backbone_ablations(config: Mapping[str, Any]) -> None:
    """The backbone_ablations section: a backbone that fits on images, datasets of the run, and
    every variant's recipe (the backbone's section with the variant's overrides) valid."""
    section = config.get("backbone_ablations", {})
    if not section.get("variants"):
        return
    name = section["backbone"]
    specs = {b: get_spec(b) for b in BACKBONES}
    fits_on_images = [
        b for b, s in specs.items() if s.trains and s.fit_input == "images" and not s.per_image_text
    ]
    if name not in fits_on_images:
        raise InputError(
            f"key 'backbone_ablations.backbone': '{name}' is not a backbone that fits on images "
            f"(choose from {', '.join(fits_on_images)})"
        )
    if name not in config["backbones"]:
        raise InputError(f"key 'backbone_ablations.backbone': '{name}' is not in 'backbones'")
    for dataset in section.get("datasets", []):
        if dataset not in config["datasets"]:
            raise InputError(f"key 'backbone_ablations.datasets': '{dataset}' is not in 'datasets'")
    for variant, spec in section["variants"].items():
        overrides = spec.get("config", {})
        try:
            build_config(name, {**(config["backbone_config"].get(name) or {}), **overrides})
        except InputError as err:
            message = str(err).replace(
                f"config key 'backbone_config.{name}.",
                f"config key 'backbone_ablations.variants.{variant}.config.",
                1,
            )
            raise InputError(message) from None
    _check_shots(
        section.get("shots", []), section.get("datasets", []), config["data_root"], "backbone_ablations.shots"
    )


def variant_recipe_section(config: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """backbone_config.<backbone> of the ablated backbone with one variant's overrides."""
    section = config["backbone_ablations"]
    name = section["backbone"]
    return {**(config["backbone_config"].get(name) or {}), **section["variants"][variant].get("config", {})}


def _check_shots(shots: list[int], datasets: list[str], data_root: str, key: str) -> None:
    """Every shot at most the train images of each dataset's smallest class: a run with fewer
    images than its shot count would be labelled with the wrong number of shots."""
    for dataset in datasets:
        most = smallest_train_class(dataset, data_root, cap=max(shots, default=None))
        if most is not None and shots and max(shots) > most:
            raise InputError(
                f"key '{key}': {max(shots)} shots, but the smallest class of {dataset} has {most} train "
                f"images; use at most {most} shots (each class must give every shot)"
            )


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
    return list(config.get("templates", {}).get(whole_name(dataset)) or get_dataset_info(dataset).templates)


def extraction_slice(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The resolved augmentation of ``dataset`` (catalog default unless overridden) and K."""
    info = get_dataset_info(dataset)
    aug = config["extraction"].get("augment", {}).get(whole_name(dataset), {})  # a half: its dataset's
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
