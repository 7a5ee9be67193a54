"""Tests for the dataset registry."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.core.errors import InputError
from pipeline.data import coop
from pipeline.data.catalog import (
    READERS,
    TEST_ONLY_READERS,
    get_dataset_info,
    list_datasets,
    list_demo_datasets,
)

# The 11 datasets of CoOp's few-shot benchmark and ImageNet's four test-only variants.
COOP_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "flowers102",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
IMAGENET_VARIANTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def test_registry_holds_the_coop_and_demo_datasets():
    names = list_datasets()
    assert names == sorted(names)
    assert set(names) == set(COOP_DATASETS) | set(IMAGENET_VARIANTS) | {
        "demo_digits",
        "demo_fashion",
        "demo_fashion_v2",
    }
    assert list_demo_datasets() == ["demo_digits", "demo_fashion", "demo_fashion_v2"]
    for name in COOP_DATASETS + IMAGENET_VARIANTS:
        assert get_dataset_info(name).source is None
    assert [name for name in names if get_dataset_info(name).test_only] == sorted(
        ["demo_fashion_v2", *IMAGENET_VARIANTS]
    )


def test_every_reader_kind_has_a_reader():
    assert set(coop._READERS) == set(READERS)
    assert set(TEST_ONLY_READERS) <= set(READERS)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(InputError, match="unknown dataset 'imagenet1k'.*caltech101.*ucf101"):
        get_dataset_info("imagenet1k")


@pytest.mark.parametrize(
    ("name", "folder", "image_dir", "split_file", "template"),
    [
        ("imagenet", "imagenet", "images", "classnames.txt", "a photo of a {}."),
        (
            "imagenet_v2",
            "imagenetv2",
            "imagenetv2-matched-frequency-format-val",
            "classnames.txt",
            "a photo of a {}.",
        ),
        ("imagenet_sketch", "imagenet-sketch", "images", "classnames.txt", "a photo of a {}."),
        ("imagenet_a", "imagenet-adversarial", "imagenet-a", "classnames.txt", "a photo of a {}."),
        ("imagenet_r", "imagenet-rendition", "imagenet-r", "classnames.txt", "a photo of a {}."),
        (
            "caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "split_zhou_Caltech101.json",
            "a photo of a {}.",
        ),
        (
            "oxford_pets",
            "oxford_pets",
            "images",
            "split_zhou_OxfordPets.json",
            "a photo of a {}, a type of pet.",
        ),
        ("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
        (
            "flowers102",
            "oxford_flowers",
            "jpg",
            "split_zhou_OxfordFlowers.json",
            "a photo of a {}, a type of flower.",
        ),
        ("food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
        (
            "fgvc_aircraft",
            "fgvc_aircraft",
            "images",
            "variants.txt",
            "a photo of a {}, a type of aircraft.",
        ),
        ("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
        ("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
        ("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
        ("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
        ("demo_digits", "demo_digits", "images", "split_zhou_DemoDigits.json", "a photo of the digit {}."),
        (
            "demo_fashion",
            "demo_fashion",
            "images",
            "split_zhou_DemoFashion.json",
            "a photo of a {}, a type of clothing.",
        ),
    ],
)
def test_layout_and_template_follow_spec(name, folder, image_dir, split_file, template):
    info = get_dataset_info(name)
    assert (info.name, info.folder, info.image_dir, info.split_file) == (name, folder, image_dir, split_file)
    assert info.templates == (template,)
    assert template.count("{}") == 1


def test_eurosat_rewrites_class_names():
    cmap = get_dataset_info("eurosat").classname_map
    assert len(cmap) == 10
    assert cmap["AnnualCrop"] == "Annual Crop Land"
    assert cmap["SeaLake"] == "Sea or Lake"
    assert cmap["Highway"] == "Highway or Road"
    assert dict(get_dataset_info("dtd").classname_map) == {}


def test_info_is_immutable():
    info = get_dataset_info("eurosat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.folder = "elsewhere"
    with pytest.raises(TypeError):
        info.classname_map["Forest"] = "Woods"
