"""Class and split sizes of the benchmark datasets, for planning work and checking shot counts.

The real datasets' numbers are those of CoOp's split files (Zhou et al., IJCV 2022, Table 5;
ImageNet's test split is its 50,000-image validation set). The demo sets' are what
``pipeline.demo.datasets`` builds. A few-shot run holds ``shot x classes`` training images and
``min(shot, 4) x classes`` validation images (docs/protocol.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

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
    "demo_digits": (10, 540),
    "demo_fashion": (10, 2000),
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


def smallest_train_class(dataset: str, data_root: Path | str) -> int | None:
    """Train images of ``dataset``'s smallest class: the most shots every class can give a run.

    Demo sets: their known size (the workflow builds them later); real ones: counted in the split
    file under ``data_root``, or None while that file is not there.

    Raises:
        InputError: the split file exists but is not a valid CoOp split file (names it).
    """
    if dataset in DEMO_SMALLEST_TRAIN_CLASS:
        return DEMO_SMALLEST_TRAIN_CLASS[dataset]
    from pipeline.data.catalog import get_dataset_info
    from pipeline.data.coop import load_dataset

    info = get_dataset_info(dataset)
    if not (Path(data_root) / info.folder / info.split_file).is_file():
        return None
    splits = load_dataset(dataset, Path(data_root))
    return min(Counter(item.label for item in splits.train).values())
