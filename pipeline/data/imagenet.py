"""Readers of ImageNet in CoOp's layout and of its test-only variants (ImageNet-V2, -Sketch, -A, -R).

Each folder holds a copy of ImageNet's ``classnames.txt`` (``<wnid> <class name>`` per line, in
sorted wnid order), as CoOp's DATASETS.md lays them out; there are no split files, so the image
folders are listed. Listing uses ``os.scandir`` and tells files from folders by the directory entry's
type, without a ``stat`` per image (ImageNet's train split has 1.28 M files). Images within a class
are sorted by name, so a dataset reads the same on every filesystem (CoOp keeps ``os.listdir``'s
order, which differs between filesystems; see docs/protocol.md on its few-shot pickles).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.data.catalog import DatasetInfo
from pipeline.data.splits import DatasetSplits, Item


def read_classnames(path: Path) -> list[tuple[str, str]]:
    """``(wnid, class name)`` per non-blank line of a ``classnames.txt``, in file order.

    The wnids must be in sorted order, as in CoOp's file: CoOp labels ImageNet's classes by sorted
    folder name, and ImageNet-V2's folder ``i`` is line ``i``, so the file's order is the labels'.

    Raises:
        InputError: ``<path>:<line>: ...`` for a line without a class name or a wnid listed twice
            or out of sorted order.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    classes: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        name = name.strip()
        if not name:
            raise InputError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line.strip()!r}")
        if classes and wnid <= classes[-1][0]:
            problem = "is listed twice" if wnid == classes[-1][0] else "is out of sorted order"
            raise InputError(f"{path}:{lineno}: {wnid} {problem} (after {classes[-1][0]})")
        classes.append((wnid, name))
    if not classes:
        raise InputError(f"{path}: lists no classes")
    return classes


def list_class_folders(directory: Path) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``directory``.

    Raises:
        InputError: ``directory`` does not exist.
    """
    if not directory.is_dir():
        raise InputError(f"image folder {directory} does not exist")
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def list_images(directory: Path, limit: int | None = None) -> list[str]:
    """Sorted names of the (non-hidden) files in ``directory``; with ``limit``, the first ``limit``
    found (in directory order, unsorted): enough to count up to ``limit``."""
    names = []
    with os.scandir(directory) as entries:
        for entry in entries:
            # is_dir without following links reads the entry's type: no stat per image.
            if entry.name.startswith(".") or entry.is_dir(follow_symlinks=False):
                continue
            names.append(entry.name)
            if limit is not None and len(names) >= limit:
                return names
    names.sort()
    return names


def _check_folders_match(classnames_path: Path, wnids: list[str], split_dir: Path) -> None:
    """The class folders of ``split_dir`` must be exactly ``wnids`` (both sorted).

    Raises:
        InputError: naming ``classnames_path`` and the first wnid that differs: listed without a
            folder, or a folder that is not listed.
    """
    folders = list_class_folders(split_dir)
    for i in range(max(len(wnids), len(folders))):
        wnid = wnids[i] if i < len(wnids) else None
        folder = folders[i] if i < len(folders) else None
        if wnid == folder:
            continue
        # Both lists are sorted: the smaller of the two is the one missing from the other.
        if folder is None or (wnid is not None and wnid < folder):
            raise InputError(f"{classnames_path}: {wnid} (class {i}) has no folder in {split_dir}")
        raise InputError(f"{classnames_path} does not list {folder}, a class folder in {split_dir}")


def _read_split(image_root: Path, split_dir: str, classes: list[tuple[str, str]]) -> list[Item]:
    """Items of ``image_root/split_dir/<wnid>/*``, label = the wnid's index in ``classes``."""
    items = []
    for label, (wnid, name) in enumerate(classes):
        prefix = f"{split_dir}/{wnid}/"
        items.extend(
            Item(prefix + image, label, name) for image in list_images(image_root / split_dir / wnid)
        )
    return items


def read_imagenet(info: DatasetInfo, folder: Path) -> DatasetSplits:
    """ImageNet (reader ``imagenet``): ``classnames.txt`` and ``images/{train,val}/<wnid>/*``.

    CoOp's protocol (Zhou et al., IJCV 2022): train is ``images/train``, test the official validation
    set ``images/val``, and there is no val split (the few-shot val is drawn from train).

    Raises:
        InputError: a bad line in classnames.txt, a missing image folder, or class folders that
            differ from classnames.txt (naming the file and the first wnid that differs).
    """
    classnames_path = folder / info.split_file
    classes = read_classnames(classnames_path)
    wnids = [wnid for wnid, _ in classes]
    image_root = folder / info.image_dir
    for split_dir in ("train", "val"):
        _check_folders_match(classnames_path, wnids, image_root / split_dir)
    return DatasetSplits(
        name=info.name,
        image_root=image_root,
        classnames=[name for _, name in classes],
        train=_read_split(image_root, "train", classes),
        val=[],
        test=_read_split(image_root, "val", classes),
        split_path=classnames_path,
        folder=folder,
    )


def smallest_imagenet_class(info: DatasetInfo, folder: Path, cap: int | None = None) -> int:
    """Train images of ImageNet's smallest class, counting at most ``cap`` per class folder (so a
    shot check reads a few entries per folder instead of listing 1.28 M files).

    Raises:
        InputError: ``images/train`` does not exist or has no class folders.
    """
    train_dir = folder / info.image_dir / "train"
    folders = list_class_folders(train_dir)
    if not folders:
        raise InputError(f"image folder {train_dir} has no class folders")
    return min(len(list_images(train_dir / wnid, limit=cap)) for wnid in folders)


def read_wnid_folders(info: DatasetInfo, folder: Path) -> DatasetSplits:
    """A test-only ImageNet variant with one folder per wnid (reader ``wnid_folders``: -Sketch, -A, -R).

    As in CoOp: labels follow the sorted folder names (0..199 for the 200 classes of ImageNet-A and
    -R), names come from classnames.txt; other files beside the folders (ImageNet-A's README.txt)
    are ignored. ``parent_labels`` maps each class to its ImageNet label.

    Raises:
        InputError: a bad classnames.txt line, a missing image folder, or a class folder that
            classnames.txt does not list.
    """
    classnames_path = folder / info.split_file
    classes = read_classnames(classnames_path)
    index = {wnid: label for label, (wnid, _) in enumerate(classes)}
    image_root = folder / info.image_dir
    folders = list_class_folders(image_root)
    if not folders:
        raise InputError(f"image folder {image_root} has no class folders")
    for wnid in folders:
        if wnid not in index:
            raise InputError(f"{classnames_path} does not list {wnid}, a class folder in {image_root}")
    test = []
    for label, wnid in enumerate(folders):
        name = classes[index[wnid]][1]
        test.extend(Item(f"{wnid}/{image}", label, name) for image in list_images(image_root / wnid))
    return DatasetSplits(
        name=info.name,
        image_root=image_root,
        classnames=[classes[index[wnid]][1] for wnid in folders],
        train=[],
        val=[],
        test=test,
        split_path=classnames_path,
        folder=folder,
        parent_labels=tuple(index[wnid] for wnid in folders),
    )


def read_index_folders(info: DatasetInfo, folder: Path) -> DatasetSplits:
    """A test-only ImageNet variant with one folder per label index (reader ``index_folders``:
    ImageNet-V2, folders ``0``..``999``); folder ``i`` holds class ``i`` of classnames.txt.

    Raises:
        InputError: a bad classnames.txt line, a missing image folder, or folders other than
            ``0..C-1`` for the C classes of classnames.txt (naming the first that differs).
    """
    classnames_path = folder / info.split_file
    classes = read_classnames(classnames_path)
    image_root = folder / info.image_dir
    folders = set(list_class_folders(image_root))
    expected = [str(label) for label in range(len(classes))]
    for label, name in enumerate(expected):
        if name not in folders:
            raise InputError(
                f"{classnames_path}: class {label} ({classes[label][0]}) has no folder {image_root / name}"
            )
    extra = sorted(folders - set(expected))
    if extra:
        raise InputError(
            f"{classnames_path}: lists {len(classes)} classes, but {image_root} has a folder {extra[0]}"
        )
    test = []
    for label, (_, name) in enumerate(classes):
        test.extend(Item(f"{label}/{image}", label, name) for image in list_images(image_root / str(label)))
    return DatasetSplits(
        name=info.name,
        image_root=image_root,
        classnames=[name for _, name in classes],
        train=[],
        val=[],
        test=test,
        split_path=classnames_path,
        folder=folder,
        parent_labels=tuple(range(len(classes))),
    )
