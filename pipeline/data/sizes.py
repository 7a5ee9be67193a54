"""Class and test-split sizes of the benchmark datasets, for planning work without the data.

The real datasets' numbers are those of CoOp's split files (Zhou et al., IJCV 2022, Table 5;
ImageNet's test split is its 50,000-image validation set). The demo sets' are what
``pipeline.demo.datasets`` builds. A few-shot run holds ``shot x classes`` training images and
``min(shot, 4) x classes`` validation images (docs/protocol.md).
"""

from __future__ import annotations

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
PAPER_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip


def run_sizes(dataset: str, shot: int) -> tuple[int, int, int, int]:
    """(classes, few-shot train images, few-shot val images, test images) of one run."""
    classes, test = SIZES[dataset]
    return classes, shot * classes, min(shot, 4) * classes, test
