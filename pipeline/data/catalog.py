"""Registry of datasets by name: folder layout, how to read it, prompt templates and class-name rewrites."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pipeline.core.errors import InputError
from pipeline.data.protocols import SEPARATOR, split_name

# How a dataset's splits are read (``pipeline.data.coop.load_dataset`` dispatches on it):
#   coop_json: CoOp's split JSON listing [relative path, label, class name] per split;
#   imagenet: classnames.txt and images/{train,val}/<wnid>/ (test = the official val set);
#   fgvc_text: FGVCAircraft's variants.txt and images_variant_{train,val,test}.txt;
#   wnid_folders: test only, classnames.txt and <image_dir>/<wnid>/ (ImageNet-Sketch, -A, -R);
#   index_folders: test only, classnames.txt and <image_dir>/<label>/ (ImageNet-V2).
READERS = ("coop_json", "imagenet", "fgvc_text", "wnid_folders", "index_folders")
# Readers of datasets that only have a test split: evaluation targets, never few-shot runs.
TEST_ONLY_READERS = ("wnid_folders", "index_folders")


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives under the data root and how its classes are prompted (CoOp, Zhou et al. 2022).

    Attributes:
        name: registry name (lowercase), e.g. ``"eurosat"``.
        folder: the dataset's folder under the data root.
        image_dir: folder, relative to ``folder``, that split-file image paths are relative to
            (``""`` means ``folder`` itself).
        split_file: the file inside ``folder`` that defines the classes and splits (CoOp's split
            JSON); the workflow checks that it exists and reruns the dataset's jobs when it changes.
        templates: prompt templates, each with one ``{}`` for the class name.
        classname_map: rewrites applied after underscores become spaces (read-only mapping).
        source: for demo datasets, the key ``pipeline.demo.datasets`` builds it from; ``None`` for
            datasets that must be downloaded.
        reader: how the splits are read, one of ``READERS``.
    """

    name: str
    folder: str
    image_dir: str
    split_file: str
    templates: tuple[str, ...]
    classname_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str | None = None
    # CoOp's augmentation for the real datasets; the demo sets set their own (below).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    reader: str = "coop_json"

    def __post_init__(self) -> None:
        assert self.reader in READERS, f"{self.name}: unknown reader {self.reader!r}"

    @property
    def test_only(self) -> bool:
        """Whether the dataset has only a test split (nothing to sample few-shot runs from)."""
        return self.reader in TEST_ONLY_READERS


# CoOp's rewrite of EuroSAT's folder names into phrases CLIP reads well.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

_DATASETS = (
    # ImageNet: no split file, its classes are classnames.txt and its images are listed.
    DatasetInfo("imagenet", "imagenet", "images", "classnames.txt", ("a photo of a {}.",), reader="imagenet"),
    DatasetInfo(
        "caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        ("a photo of a {}.",),
    ),
    DatasetInfo(
        "oxford_pets",
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        ("a photo of a {}, a type of pet.",),
    ),
    DatasetInfo("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", ("a photo of a {}.",)),
    DatasetInfo(
        "flowers102",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        ("a photo of a {}, a type of flower.",),
    ),
    DatasetInfo(
        "food101", "food-101", "images", "split_zhou_Food101.json", ("a photo of {}, a type of food.",)
    ),
    DatasetInfo(
        "fgvc_aircraft",
        "fgvc_aircraft",
        "images",
        "variants.txt",  # and images_variant_{train,val,test}.txt beside it
        ("a photo of a {}, a type of aircraft.",),
        reader="fgvc_text",
    ),
    DatasetInfo("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", ("a photo of a {}.",)),
    DatasetInfo("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", ("{} texture.",)),
    DatasetInfo(
        "eurosat",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        ("a centered satellite photo of {}.",),
        classname_map=MappingProxyType(EUROSAT_CLASSNAMES),
    ),
    DatasetInfo(
        "ucf101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        ("a photo of a person doing {}.",),
    ),
    # ImageNet's test-only variants (domain generalization), each with a copy of ImageNet's
    # classnames.txt beside its images (CoOp's DATASETS.md); CoOp prompts them like ImageNet.
    DatasetInfo(
        "imagenet_v2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        "classnames.txt",
        ("a photo of a {}.",),
        reader="index_folders",
    ),
    DatasetInfo(
        "imagenet_sketch",
        "imagenet-sketch",
        "images",
        "classnames.txt",
        ("a photo of a {}.",),
        reader="wnid_folders",
    ),
    DatasetInfo(
        "imagenet_a",
        "imagenet-adversarial",
        "imagenet-a",
        "classnames.txt",
        ("a photo of a {}.",),
        reader="wnid_folders",
    ),
    DatasetInfo(
        "imagenet_r",
        "imagenet-rendition",
        "imagenet-r",
        "classnames.txt",
        ("a photo of a {}.",),
        reader="wnid_folders",
    ),
    # Demo datasets: real images shipped with installed packages, built by pipeline.build_demo.
    DatasetInfo(
        "demo_digits",
        "demo_digits",
        "images",
        "split_zhou_DemoDigits.json",
        ("a photo of the digit {}.",),
        source="sklearn-digits",
        # 8 x 8 digits: a crop below half the area keeps a scrap of a stroke; a mirrored digit is
        # another glyph (or none).
        crop_scale=(0.5, 1.0),
        hflip=False,
    ),
    DatasetInfo(
        "demo_fashion",
        "demo_fashion",
        "images",
        "split_zhou_DemoFashion.json",
        ("a photo of a {}, a type of clothing.",),
        source="fashion-mnist-t10k",
        # 28 x 28 garments: mirrored clothes are still the same class; small crops lose the shape.
        crop_scale=(0.5, 1.0),
        hflip=True,
    ),
    # demo_fashion's new test set, in ImageNet-V2's layout: 200 more t10k images per class that
    # demo_fashion's splits do not use (the demo's domain-generalization target; test only).
    DatasetInfo(
        "demo_fashion_v2",
        "demo_fashion_v2",
        "images",
        "classnames.txt",
        ("a photo of a {}, a type of clothing.",),
        source="fashion-mnist-t10k-v2",
        reader="index_folders",
    ),
)

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({info.name: info for info in _DATASETS})


def list_datasets() -> list[str]:
    """Registry names of every dataset, sorted."""
    return sorted(DATASETS)


def list_demo_datasets() -> list[str]:
    """Registry names of the datasets ``pipeline.build_demo`` can build locally, sorted."""
    return sorted(name for name, info in DATASETS.items() if info.source is not None)


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by registry name.

    ``<dataset>@base`` and ``<dataset>@new`` name the two halves of its classes (base-to-new,
    ``pipeline.data.protocols``): the same entry under that name.

    Raises:
        InputError: unknown name (the message lists the valid names) or part.
    """
    dataset, part = split_name(name)
    try:
        info = DATASETS[dataset]
    except KeyError:
        raise InputError(f"unknown dataset {name!r} (valid: {', '.join(list_datasets())})") from None
    if part is None:
        return info
    if info.test_only:
        raise InputError(f"dataset {name!r}: {dataset} is test-only, it has no classes to train on")
    return dataclasses.replace(info, name=f"{dataset}{SEPARATOR}{part}")
