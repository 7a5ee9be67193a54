"""The backbone registry: torch-free, what each line implies, names and recipes checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.backbones import recipes, registry
from pipeline.core.errors import InputError


def test_registry_imports_no_torch() -> None:
    code = "import sys, pipeline.backbones.registry, pipeline.core.workflow_config\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_what_each_backbone_implies() -> None:
    rows = {
        name: (s.trains, s.frozen_image_encoder, s.encodes_images, s.fit_input, registry.image_source(name))
        for name, s in registry.BACKBONES.items()
    }
    assert rows["zeroshot"] == (False, True, True, "images", "zeroshot")  # fit_input unused: no fit
    assert rows["coop"] == (True, True, False, "features", "zeroshot")  # reuses zero-shot image features
    assert rows["cocoop"] == (True, True, False, "features", "zeroshot")
    assert rows["clip_adapter"] == (True, False, False, "features", "clip_adapter")  # per-run test cache
    assert rows["clip_lora"] == (True, False, True, "images", "clip_lora")
    assert registry.get_spec("cocoop").per_image_text and not registry.get_spec("coop").per_image_text


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(InputError, match="unknown backbone 'coopp' \\(choose from zeroshot, coop, cocoop"):
        registry.get_spec("coopp")


def test_recipes_are_the_published_ones() -> None:
    coop = registry.build_config("coop", {})
    assert (coop.n_ctx, coop.optimizer, coop.lr, coop.batch_size, coop.warmup_lr) == (
        16,
        "sgd",
        0.002,
        32,
        1e-5,
    )
    assert [recipes.schedule_length(coop, "dtd", k)["epochs"] for k in (1, 2, 4, 8, 16)] == [
        50,
        100,
        100,
        200,
        200,
    ]
    assert recipes.schedule_length(coop, "imagenet", 16) == {"epochs": 50}
    lora = registry.build_config("clip_lora", {})
    assert recipes.schedule_length(lora, "dtd", 4) == {"iterations": 2000}
    assert (lora.rank, lora.alpha, lora.dropout, lora.lr, lora.min_lr) == (2, 1.0, 0.25, 2e-4, 1e-6)
    cocoop = registry.build_config("cocoop", {})
    assert (cocoop.batch_size, recipes.schedule_length(cocoop, "dtd", 16)["epochs"]) == (1, 10)
    assert registry.build_config("zeroshot", None) is None


def test_load_backbone_class_checks_the_module() -> None:
    assert registry.load_backbone_class("zeroshot").name == "zeroshot"
