"""Class and split sizes of the benchmark datasets, for planning work and checking shot counts.

The real datasets' numbers are those of CoOp's split files (Zhou et al., IJCV 2022, Table 5;
ImageNet's test split is its 50,000-image validation set); ImageNet's test-only variants' are their
released test sets (ImageNet-V2 matched-frequency 10,000 images, -Sketch 50,889, -A 7,500 and -R
30,000, the last two on 200 of ImageNet's classes). The demo sets' are what
``pipeline.demo.datasets`` builds. A few-shot run holds ``shot x classes`` training images and
``min(shot, 4) x classes`` validation images (docs/protocol.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.data.protocols import whole_name

# name: (classes, test images)
SIZES: dict[str, tuple[int, int]] = {
    "imagenet": (1000, 50000),
    "caltech101": (100, 2465),
    "oxford_pets": (37, 3669),
    "stanford_cars": (196, 8041),
    "flowers102": (102, 2463),
    "food101": (101, 30300),
    "fgvc_aircraft": (100, 3333),
    "sun397": (397, 19850),
    "dtd": (47, 1692),
    "eurosat": (10, 8100),
    "ucf101": (101, 3783),
    "imagenet_v2": (1000, 10000),
    "imagenet_sketch": (1000, 50889),
    "imagenet_a": (200, 7500),
    "imagenet_r": (200, 30000),
    "demo_digits": (10, 540),
    "demo_fashion": (10, 2000),
    "demo_fashion_v2": (10, 2000),
}
# Train images of the smallest class, as pipeline.demo.datasets builds the demo sets: digits split
# 50 / 20 / 30 per class (its smallest class, 174 images, keeps 87); fashion 200 per class.
# tests/test_demo.py checks both against the built split files.
DEMO_SMALLEST_TRAIN_CLASS: dict[str, int] = {"demo_digits": 87, "demo_fashion": 200}
PAPER_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip


def run_sizes(dataset: str, shot: int) -> tuple[int, int, int, int]:
    """(classes, few-shot train images, few-shot val images, test images) of one run."""
    classes, test = SIZES[dataset]
    return classes, shot * classes, min(shot, 4) * classes, test


def smallest_train_class(dataset: str, data_root: Path | str, cap: int | None = None) -> int | None:
    """Train images of ``dataset``'s smallest class: the most shots every class can give a run.

    Demo sets: their known size (the workflow builds them later); test-only sets: 0; real ones:
    counted in the split files under ``data_root``, or None while the dataset's split file (its
    ``DatasetInfo.split_file``) is not there. With ``cap``, the count stops at ``cap``: the result
    is exact below ``cap`` and means "at least" at ``cap`` (ImageNet then lists at most ``cap``
    images per class folder instead of its 1.28 M files).

    Raises:
        InputError: the dataset's files exist but are invalid (the message names the file).
    """
    whole = whole_name(dataset)  # a half of the classes: its smallest class is at least the whole's
    if whole in DEMO_SMALLEST_TRAIN_CLASS:
        smallest = DEMO_SMALLEST_TRAIN_CLASS[whole]
        return smallest if cap is None else min(smallest, cap)
    from pipeline.data.catalog import get_dataset_info
    from pipeline.data.coop import load_dataset
    from pipeline.data.imagenet import smallest_imagenet_class

    info = get_dataset_info(dataset)
    if info.test_only:
        return 0
    folder = Path(data_root) / info.folder
    if not (folder / info.split_file).is_file():
        return None
    if info.reader == "imagenet":  # counting needs no full listing of its image folders
        return smallest_imagenet_class(info, folder, cap)
    splits = load_dataset(dataset, Path(data_root))
    counts = Counter(item.label for item in splits.train)
    smallest = min(counts.get(label, 0) for label in range(splits.num_classes))
    return smallest if cap is None else min(smallest, cap)
