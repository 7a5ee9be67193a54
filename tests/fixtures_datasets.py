"""Tiny fixture datasets in the exact folder layout of the benchmark (CoOp's DATASETS.md).

One ``write_<name>(root, counts)`` per dataset writes ``root/<folder>/...`` with 8 x 8 JPEGs of
random pixels and the dataset's own split files, and returns what a reader must find (class names
after CoOp's rewrites, split sizes). ``make_root(tmp, names)`` lays out several under one data root,
e.g. to dry-run a config of the real benchmark without the real data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Counts:
    """Images per class in each split (test-only datasets use ``test`` only).

    The default 16 train images per class let every shot count of the paper (1..16) pass the
    workflow's smallest-class check.
    """

    train: int = 16
    val: int = 4
    test: int = 3


@dataclass(frozen=True)
class Expected:
    """What reading a fixture dataset must give: class names (label order) and split sizes."""

    classnames: list[str]
    train: int
    val: int
    test: int
    parent_labels: tuple[int, ...] | None = None


def write_image(path: Path, seed: int) -> None:
    """An 8 x 8 RGB image of random pixels (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # (H, W, 3)
    Image.fromarray(pixels).save(path)


def _write_coop_json(
    folder: Path,
    image_dir: str,
    split_file: str,
    classes: list[tuple[str, str]],
    image_path: Callable[[str, str, int], str],
    counts: Counts,
) -> None:
    """Images and CoOp's split JSON: ``{"train"|"val"|"test": [[path, label, classname], ...]}``.

    ``classes`` is ``(folder key, class name as the JSON stores it)`` in label order;
    ``image_path(key, split, i)`` is an image's path relative to ``folder/image_dir``.
    """
    image_root = folder / image_dir if image_dir else folder
    split: dict[str, list] = {}
    seed = 0
    for key, n in (("train", counts.train), ("val", counts.val), ("test", counts.test)):
        split[key] = []
        for label, (class_key, classname) in enumerate(classes):
            for i in range(n):
                rel = image_path(class_key, key, i)
                write_image(image_root / rel, seed)
                seed += 1
                split[key].append([rel, label, classname])
    (folder / split_file).write_text(json.dumps(split))


def _expected(classnames: list[str], counts: Counts) -> Expected:
    c = len(classnames)
    return Expected(classnames, counts.train * c, counts.val * c, counts.test * c)


def write_caltech101(root: Path, counts: Counts = Counts()) -> Expected:
    """caltech-101/101_ObjectCategories/<folder>/image_NNNN.jpg; CoOp's file holds its renamed classes."""
    classes = [("accordion", "accordion"), ("airplanes", "airplane"), ("Faces", "face")]
    _write_coop_json(
        root / "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        classes,
        lambda k, s, i: f"{k}/image_{s}{i:04d}.jpg",
        counts,
    )
    # Folders CoOp leaves out of the splits: present on disk, never read.
    write_image(root / "caltech-101" / "101_ObjectCategories" / "BACKGROUND_Google" / "image_0001.jpg", 99)
    return _expected(["accordion", "airplane", "face"], counts)


def write_oxford_pets(root: Path, counts: Counts = Counts()) -> Expected:
    """oxford_pets/images/<Breed>_<n>.jpg; lower-case breeds with underscores in the JSON."""
    classes = [("Abyssinian", "abyssinian"), ("american_bulldog", "american_bulldog")]
    _write_coop_json(
        root / "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        classes,
        lambda k, s, i: f"{k}_{s}{i}.jpg",
        counts,
    )
    return _expected(["abyssinian", "american bulldog"], counts)


def write_stanford_cars(root: Path, counts: Counts = Counts()) -> Expected:
    """stanford_cars/cars_{train,test}/NNNNN.jpg, paths relative to the dataset folder itself."""
    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    classes = [(str(c), name) for c, name in enumerate(names)]
    _write_coop_json(
        root / "stanford_cars",
        "",
        "split_zhou_StanfordCars.json",
        classes,
        # CoOp's val comes out of cars_train; test is cars_test.
        lambda k, s, i: f"cars_{'test' if s == 'test' else 'train'}/{s}{k}{i:04d}.jpg",
        counts,
    )
    return _expected(names, counts)


def write_flowers102(root: Path, counts: Counts = Counts()) -> Expected:
    """oxford_flowers/jpg/image_NNNNN.jpg, the split JSON and cat_to_name.json."""
    names = ["pink primrose", "hard-leaved pocket orchid"]
    classes = [(str(c + 1), name) for c, name in enumerate(names)]
    folder = root / "oxford_flowers"
    _write_coop_json(
        folder,
        "jpg",
        "split_zhou_OxfordFlowers.json",
        classes,
        lambda k, s, i: f"image_{s}{k}{i:04d}.jpg",
        counts,
    )
    (folder / "cat_to_name.json").write_text(json.dumps({k: name for k, name in classes}))
    return _expected(names, counts)


def write_food101(root: Path, counts: Counts = Counts()) -> Expected:
    """food-101/images/<class>/<id>.jpg."""
    classes = [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs")]
    _write_coop_json(
        root / "food-101",
        "images",
        "split_zhou_Food101.json",
        classes,
        lambda k, s, i: f"{k}/{s}{i}.jpg",
        counts,
    )
    return _expected(["apple pie", "baby back ribs"], counts)


def write_sun397(root: Path, counts: Counts = Counts()) -> Expected:
    """sun397/SUN397/<letter>/<category path>/sun_<id>.jpg; CoOp names "/b/bakery/shop" "shop bakery"."""
    classes = [("a/abbey", "abbey"), ("b/bakery/shop", "shop bakery"), ("a/airplane_cabin", "airplane_cabin")]
    _write_coop_json(
        root / "sun397",
        "SUN397",
        "split_zhou_SUN397.json",
        classes,
        lambda k, s, i: f"{k}/sun_{s}{i}.jpg",
        counts,
    )
    return _expected(["abbey", "shop bakery", "airplane cabin"], counts)


def write_dtd(root: Path, counts: Counts = Counts()) -> Expected:
    """dtd/images/<texture>/<texture>_NNNN.jpg."""
    classes = [("banded", "banded"), ("zigzagged", "zigzagged")]
    _write_coop_json(
        root / "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        classes,
        lambda k, s, i: f"{k}/{k}_{s}{i:04d}.jpg",
        counts,
    )
    return _expected(["banded", "zigzagged"], counts)


def write_eurosat(root: Path, counts: Counts = Counts()) -> Expected:
    """eurosat/2750/<Folder>/<Folder>_<n>.jpg; the JSON's folder names become CoOp's phrases."""
    classes = [("AnnualCrop", "AnnualCrop"), ("SeaLake", "SeaLake"), ("Forest", "Forest")]
    _write_coop_json(
        root / "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        classes,
        lambda k, s, i: f"{k}/{k}_{s}{i}.jpg",
        counts,
    )
    return _expected(["Annual Crop Land", "Sea or Lake", "Forest"], counts)


def write_ucf101(root: Path, counts: Counts = Counts()) -> Expected:
    """ucf101/UCF-101-midframes/<Action>/v_<Action>_gNN_cNN.jpg."""
    classes = [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Baby_Crawling", "Baby_Crawling")]
    _write_coop_json(
        root / "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        classes,
        lambda k, s, i: f"{k}/v_{k.replace('_', '')}_{s}_g{i:02d}_c01.jpg",
        counts,
    )
    return _expected(["Apply Eye Makeup", "Baby Crawling"], counts)


FGVC_VARIANTS = ["707-320", "Cessna 172", "F/A-18"]


def write_fgvc_aircraft(root: Path, counts: Counts = Counts()) -> Expected:
    """fgvc_aircraft/variants.txt, images_variant_{train,val,test}.txt ("<image id> <variant>" per
    line) and images/<image id>.jpg."""
    folder = root / "fgvc_aircraft"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{name}\n" for name in FGVC_VARIANTS))
    image_id = 1000000
    for key, n in (("train", counts.train), ("val", counts.val), ("test", counts.test)):
        lines = []
        for name in FGVC_VARIANTS:
            for _ in range(n):
                write_image(folder / "images" / f"{image_id}.jpg", image_id)
                lines.append(f"{image_id} {name}\n")
                image_id += 1
        (folder / f"images_variant_{key}.txt").write_text("".join(lines))
    return _expected(list(FGVC_VARIANTS), counts)


# A 4-class ImageNet: (wnid, class name) in sorted wnid order, as CoOp's classnames.txt (CLIP's names).
IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
]


def write_classnames(path: Path, classes: list[tuple[str, str]] = IMAGENET_CLASSES) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in classes))


def write_imagenet(root: Path, counts: Counts = Counts()) -> Expected:
    """imagenet/classnames.txt, images/train/<wnid>/<wnid>_<n>.JPEG and images/val/<wnid>/*.JPEG
    (test = the official val set, no val split)."""
    folder = root / "imagenet"
    write_classnames(folder / "classnames.txt")
    seed = 1000
    for wnid, _ in IMAGENET_CLASSES:
        for i in range(counts.train):
            write_image(folder / "images" / "train" / wnid / f"{wnid}_{i}.JPEG", seed)
            seed += 1
        for _ in range(counts.test):
            write_image(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{seed:08d}.JPEG", seed)
            seed += 1
    # Hidden files are not images (macOS leaves these behind).
    (folder / "images" / "train" / IMAGENET_CLASSES[0][0] / ".DS_Store").write_bytes(b"\0")
    c = len(IMAGENET_CLASSES)
    return Expected([name for _, name in IMAGENET_CLASSES], counts.train * c, 0, counts.test * c)


def _write_variant(folder: Path, image_dir: str, class_folders: list[str], counts: Counts, seed: int) -> None:
    """A test-only variant: classnames.txt (CoOp's layout: a copy of ImageNet's) and images."""
    write_classnames(folder / "classnames.txt")
    for name in class_folders:
        for _ in range(counts.test):
            write_image(folder / image_dir / name / f"{seed}.jpeg", seed)
            seed += 1


def write_imagenet_v2(root: Path, counts: Counts = Counts()) -> Expected:
    """imagenetv2/imagenetv2-matched-frequency-format-val/<label 0..C-1>/*.jpeg."""
    c = len(IMAGENET_CLASSES)
    folder = root / "imagenetv2"
    _write_variant(
        folder, "imagenetv2-matched-frequency-format-val", [str(i) for i in range(c)], counts, 2000
    )
    return Expected([name for _, name in IMAGENET_CLASSES], 0, 0, counts.test * c, tuple(range(c)))


def write_imagenet_sketch(root: Path, counts: Counts = Counts()) -> Expected:
    """imagenet-sketch/images/<wnid>/*: every ImageNet class."""
    c = len(IMAGENET_CLASSES)
    _write_variant(root / "imagenet-sketch", "images", [w for w, _ in IMAGENET_CLASSES], counts, 3000)
    return Expected([name for _, name in IMAGENET_CLASSES], 0, 0, counts.test * c, tuple(range(c)))


def _write_subset_variant(
    root: Path, folder: str, image_dir: str, parent: tuple[int, ...], counts: Counts, seed: int
) -> Expected:
    """A variant holding a subset of ImageNet's classes (``parent``: their ImageNet labels)."""
    _write_variant(root / folder, image_dir, [IMAGENET_CLASSES[i][0] for i in parent], counts, seed)
    (root / folder / image_dir / "README.txt").write_text("not a class\n")  # as ImageNet-A ships
    names = [IMAGENET_CLASSES[i][1] for i in parent]
    return Expected(names, 0, 0, counts.test * len(parent), parent)


def write_imagenet_a(root: Path, counts: Counts = Counts()) -> Expected:
    """imagenet-adversarial/imagenet-a/<wnid>/*: a subset of the classes (200 of 1000 in the real one)."""
    return _write_subset_variant(root, "imagenet-adversarial", "imagenet-a", (1, 3), counts, 4000)


def write_imagenet_r(root: Path, counts: Counts = Counts()) -> Expected:
    """imagenet-rendition/imagenet-r/<wnid>/*: a subset of the classes (200 of 1000 in the real one)."""
    return _write_subset_variant(root, "imagenet-rendition", "imagenet-r", (0, 2, 3), counts, 5000)


WRITERS: dict[str, Callable[[Path, Counts], Expected]] = {
    "imagenet": write_imagenet,
    "caltech101": write_caltech101,
    "oxford_pets": write_oxford_pets,
    "stanford_cars": write_stanford_cars,
    "flowers102": write_flowers102,
    "food101": write_food101,
    "fgvc_aircraft": write_fgvc_aircraft,
    "sun397": write_sun397,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "ucf101": write_ucf101,
    "imagenet_v2": write_imagenet_v2,
    "imagenet_sketch": write_imagenet_sketch,
    "imagenet_a": write_imagenet_a,
    "imagenet_r": write_imagenet_r,
}


def make_root(tmp: Path, names: Iterable[str] | None = None, counts: Counts = Counts()) -> Path:
    """A data root ``tmp`` holding the fixture datasets ``names`` (default: all); returns ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in WRITERS if names is None else names:
        WRITERS[name](tmp, counts)
    return tmp
