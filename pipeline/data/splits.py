"""What every dataset reader returns: labelled image items in train, val and test splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Item:
    """One labelled image: ``path`` is relative to the dataset's image root."""

    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's three splits; ``classnames[label]`` is the (rewritten) name of class ``label``.

    ``val`` is empty for a dataset without a validation split (ImageNet), ``train`` and ``val`` for
    a test-only one (the ImageNet variants).

    Attributes:
        split_path: the file the splits were read from (CoOp's split JSON, ImageNet's
            classnames.txt, FGVCAircraft's variants.txt), for error messages.
        folder: the dataset's folder under the data root (CoOp keeps its few-shot pickles in
            ``folder/split_fewshot``); ``None`` for splits built in memory.
        split_files: per split, the file that lists it where that is not ``split_path``
            (FGVCAircraft's ``images_variant_<split>.txt``).
        parent_labels: for a test-only variant of another dataset, the label in that dataset of each
            class (ImageNet-A's class ``c`` is ImageNet's class ``parent_labels[c]``); for one half
            of a dataset's classes, the label of each class in the whole dataset; else ``None``.
    """

    name: str
    image_root: Path
    classnames: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    split_path: Path | None = None
    folder: Path | None = None
    split_files: dict[str, Path] = field(default_factory=dict)
    parent_labels: tuple[int, ...] | None = None
    # For one half of a dataset's classes (``<dataset>@base``, ``pipeline.data.protocols``): the whole
    # dataset, on which the few-shot images are drawn before they are restricted to the half.
    whole: DatasetSplits | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)
