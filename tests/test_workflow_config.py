"""The workflow config: presets, defaults, one-line errors naming the key, and per-rule slices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.backbones import registry
from pipeline.core.errors import InputError
from pipeline.core.workflow_config import (
    extraction_slice,
    load_workflow_config,
    needed_backbones,
    recipe_slice,
    templates_for,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PRESETS = REPO / "workflow" / "presets"
BASE = {
    "results": "results",
    "data_root": "results/demo_data",
    "datasets": ["demo_digits"],
    "shots": [1, 4],
    "seeds": [1],
    "backbones": ["coop"],
    "encoder": {"model": "demo-vit-t-28", "pretrained": None},
}


def load(**changes) -> dict:
    return load_workflow_config({**copy.deepcopy(BASE), **changes}, SCHEMA, PRESETS)


def test_the_shipped_config_loads() -> None:
    config = load_workflow_config(yaml.safe_load((REPO / "config.yaml").read_text()), SCHEMA, PRESETS)
    assert set(config["backbones"]) <= set(registry.list_backbones())


def test_defaults_preset_and_user_precedence() -> None:
    config = load(preset="demo", backbone_config={"coop": {"n_ctx": 4}})
    preset = yaml.safe_load((PRESETS / "demo.yaml").read_text())
    coop = config["backbone_config"]["coop"]
    assert (
        coop["n_ctx"] == 4 and coop["epochs_by_shots"] == preset["backbone_config"]["coop"]["epochs_by_shots"]
    )
    assert config["extraction"]["views"] == 4 and config["runtime"]["device"] == "auto"  # schema defaults
    no_preset = load()
    assert no_preset["backbone_config"] == {}
    # The published recipe for CoOp at 4 shots, 50 epochs with the preset, and a user override wins.
    assert recipe_slice(no_preset, "coop", "demo_digits", 4)["epochs_by_shots"] == {"4": 100}
    assert recipe_slice(config, "coop", "demo_digits", 4)["epochs_by_shots"] == {"4": 50}


def test_needed_backbones_follow_reuse() -> None:
    assert needed_backbones(load(backbones=["clip_adapter"])) == ["zeroshot", "clip_adapter"]
    assert needed_backbones(load(backbones=["clip_lora"])) == ["clip_lora"]


def test_slices_resolve_per_dataset_and_backbone() -> None:
    config = load(extraction={"augment": {"demo_digits": {"crop_scale": [0.7, 1.0]}}})
    assert extraction_slice(config, "demo_digits") == {"views": 4, "crop_scale": [0.7, 1.0], "hflip": False}
    assert extraction_slice(config, "demo_fashion")["hflip"] is True  # the catalog's default
    assert templates_for(config, "clip_lora", "demo_digits") == ["a photo of a {}."]  # its recipe's
    assert templates_for(config, "coop", "demo_digits") == ["a photo of the digit {}."]  # the dataset's
    # A schedule change for another shot count leaves this run's slice alone.
    other = load(backbone_config={"coop": {"epochs_by_shots": {1: 50, 2: 100, 4: 100, 8: 7, 16: 7}}})
    assert recipe_slice(other, "coop", "demo_digits", 4) == recipe_slice(load(), "coop", "demo_digits", 4)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"backbones": ["coop", "cooop"]}, "unknown backbone 'cooop' (choose from zeroshot, coop,"),
        ({"backbone_config": {"coop": {"n_ctxx": 4}}}, "backbone_config.coop.n_ctxx"),
        ({"backbone_config": {"coop": {"lr": "fast"}}}, "backbone_config.coop.lr"),
        ({"backbone_config": {"clip_lora": {"encoders": "audio"}}}, "backbone_config.clip_lora.encoders"),
        ({"backbone_config": {"zeroshot": {"lr": 1.0}}}, "takes no settings"),
        ({"preset": "gpu-cluster"}, "unknown preset 'gpu-cluster' (available: demo, paper)"),
        ({"extraction": {"augment": {"demo_digits": {"crop_scale": [0.9, 0.5]}}}}, "crop_scale"),
        ({"extraction": {"augment": {"demo_digits": {"crop_scale": [0.0, 0.5]}}}}, "crop_scale"),
        ({"extraction": {"augment": {"imagenett": {"hflip": True}}}}, "extraction.augment.imagenett"),
        ({"datasets": ["no_such_set"]}, "no_such_set"),
        ({"datasets": ["demo_digits", "imagenet_r"]}, "key 'datasets': 'imagenet_r' is test-only"),
        ({"shots": ["four"]}, "shots.0"),
        ({"ablations": {"backbones": ["clip_lora"], "variants": {"a": {}}}}, "ablations.backbones"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(changes: dict, needle: str) -> None:
    with pytest.raises(InputError) as err:
        load(**changes)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_paper_preset_needs_only_a_data_root() -> None:
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    with pytest.raises(InputError) as err:
        load_workflow_config({**shipped, "preset": "paper"}, SCHEMA, PRESETS)
    assert str(err.value) == (
        "key 'data_root': not set; preset 'paper' needs the folder that holds the datasets "
        "(--config data_root=/path/to/data)"
    )


def test_ablations_default_to_the_runs_datasets_and_largest_shot() -> None:
    variants = {"ablations": {"variants": {"default": {}}}, "backbone_ablations": {"variants": {}}}
    config = load(datasets=["demo_digits", "demo_fashion"], **variants)
    assert config["ablations"]["datasets"] == ["demo_digits", "demo_fashion"]
    assert config["ablations"]["shots"] == [4] and config["backbone_ablations"]["shots"] == [4]
    demo = load(preset="demo", datasets=["demo_fashion"], **variants)
    assert demo["ablations"]["datasets"] == ["demo_fashion"] and demo["ablations"]["shots"] == [16]


def test_the_paper_preset_plans_the_papers_grid(tmp_path: Path) -> None:
    """preset: paper with only a data root (the 11 datasets in their layouts, tiny fixture images)."""
    from fixtures_datasets import make_root

    paper = yaml.safe_load((PRESETS / "paper.yaml").read_text())
    root = make_root(tmp_path / "data", paper["datasets"])
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    config = load_workflow_config({**shipped, "preset": "paper", "data_root": str(root)}, SCHEMA, PRESETS)
    assert len(config["datasets"]) == 11 and {"imagenet", "fgvc_aircraft"} <= set(config["datasets"])
    assert config["shots"] == [1, 2, 4, 8, 16] and config["seeds"] == [1, 2, 3]
    assert config["backbones"] == registry.list_backbones()  # every backbone the project has
    assert config["encoder"] == {"model": "ViT-B-16", "pretrained": "openai"}
    assert config["backbone_config"] == {}  # the published recipes
    assert recipe_slice(config, "coop", "dtd", 16)["epochs_by_shots"] == {"16": 200}
    groups = config["groups"]
    assert groups["difficult"] == ["fgvc_aircraft", "eurosat", "dtd", "sun397", "stanford_cars"]
    assert sorted(groups["difficult"] + groups["easy"]) == sorted(config["datasets"])
    assert config["ablations"]["shots"] == [16] and config["ablations"]["datasets"] == config["datasets"]
    protocols = config["protocols"]  # every transfer protocol, at 16 shots, with `snakemake` alone
    assert protocols["in_all"] is True
    assert protocols["base_to_new"] == {"datasets": config["datasets"], "shots": [16]}
    assert protocols["cross_dataset"] == {
        "source": "imagenet", "targets": [d for d in config["datasets"] if d != "imagenet"], "shots": [16]
    }  # fmt: skip
    assert protocols["domain_generalization"] == {
        "source": "imagenet", "targets": ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
        "shots": [16],
    }  # fmt: skip


def test_a_half_of_a_datasets_classes_is_a_dataset_name() -> None:
    config = load(datasets=["demo_digits@base"], groups={"difficult": ["demo_digits@base"]})
    assert config["datasets"] == ["demo_digits@base"]
    with pytest.raises(InputError) as err:
        load(datasets=["demo_digits@novel"])
    assert str(err.value) == (
        "key 'datasets': dataset 'demo_digits@novel': unknown part 'novel' (choose from base, new)"
    )
