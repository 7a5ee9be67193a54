"""The one entry point to every dataset (``load_dataset``), and the reader of CoOp's split JSON.

Under a data root each dataset has a folder laid out as in CoOp's ``DATASETS.md`` (Zhou et al., IJCV
2022); its ``DatasetInfo.reader`` says how to read it (docs/protocol.md, Datasets).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.data.catalog import DatasetInfo, get_dataset_info
from pipeline.data.fgvc import read_fgvc
from pipeline.data.imagenet import read_imagenet, read_index_folders, read_wnid_folders
from pipeline.data.protocols import split_name, subset_classes

# The types every reader returns, imported from here by the rest of the pipeline.
from pipeline.data.splits import SPLITS, DatasetSplits, Item

log = logging.getLogger(__name__)


def normalize_classname(raw: str, classname_map: Mapping[str, str]) -> str:
    """CoOp's class-name clean-up: underscores become spaces, then the dataset's rewrite applies."""
    name = raw.replace("_", " ")
    return classname_map.get(name, name)


def _parse_entry(entry: Any, where: str) -> tuple[str, int, str]:
    """Check one ``[relative_path, label, classname]`` entry."""
    ok = (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and entry[0] != ""
        and isinstance(entry[1], int)
        and not isinstance(entry[1], bool)
        and isinstance(entry[2], str)
    )
    if not ok:
        raise InputError(f"{where}: expected [relative_path, label, classname], got {json.dumps(entry)[:80]}")
    if entry[0].startswith("/"):
        raise InputError(f"{where}: image path {entry[0]!r} must be relative")
    return entry[0], entry[1], entry[2]


def parse_splits(
    data: Any, info: DatasetInfo, split_path: Path, image_root: Path, folder: Path | None = None
) -> DatasetSplits:
    """Validate the decoded JSON of a CoOp split file and build the splits.

    The class list comes from train (label -> name); labels must be exactly ``0..C-1``; every val
    and test entry must name a train class with the same name.

    Raises:
        InputError: wrong shape, non-contiguous train labels, an unknown class or a name that
            disagrees with its label; the message names ``split_path``.
    """
    if not isinstance(data, dict):
        raise InputError(f"split file {split_path}: expected a JSON object with keys {', '.join(SPLITS)}")
    for key in ("train", "test"):
        if key not in data:
            raise InputError(f"split file {split_path}: missing key '{key}'")
    raw: dict[str, list[tuple[str, int, str]]] = {}
    for key in SPLITS:
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise InputError(f"split file {split_path}: '{key}' must be a list")
        raw[key] = [_parse_entry(e, f"split file {split_path}, {key}[{i}]") for i, e in enumerate(entries)]
    if not raw["train"]:
        raise InputError(f"split file {split_path}: the train split is empty")

    # Classes come from train: the first name seen for each label must be the only one.
    names: dict[int, str] = {}
    for i, (_, label, classname) in enumerate(raw["train"]):
        name = normalize_classname(classname, info.classname_map)
        if names.setdefault(label, name) != name:
            raise InputError(
                f"split file {split_path}, train[{i}]: label {label} names an unknown class {classname!r} "
                f"(label {label} is {names[label]!r} elsewhere in train)"
            )
    num_classes = len(names)
    if sorted(names) != list(range(num_classes)):
        # C distinct labels that are not 0..C-1: at least one lies outside that range.
        bad = min(label for label in names if not 0 <= label < num_classes)
        raise InputError(
            f"split file {split_path}: train label {bad} is outside 0..{num_classes - 1} "
            f"(train has {num_classes} classes; labels must be contiguous)"
        )
    classnames = [names[c] for c in range(num_classes)]

    items: dict[str, list[Item]] = {}
    for key in SPLITS:
        out = []
        for i, (path, label, classname) in enumerate(raw[key]):
            name = normalize_classname(classname, info.classname_map)
            if not 0 <= label < num_classes:
                kind = "a class not in train" if key != "train" else "an unknown class"
                raise InputError(
                    f"split file {split_path}, {key}[{i}]: label {label} names {kind} "
                    f"(train has labels 0..{num_classes - 1})"
                )
            if name != classnames[label]:
                raise InputError(
                    f"split file {split_path}, {key}[{i}]: {classname!r} names an unknown class "
                    f"(label {label} is {classnames[label]!r} in train)"
                )
            out.append(Item(path, label, name))
        items[key] = out
    return DatasetSplits(
        name=info.name,
        image_root=image_root,
        classnames=classnames,
        train=items["train"],
        val=items["val"],
        test=items["test"],
        split_path=split_path,
        folder=folder,
    )


def read_coop_json(info: DatasetInfo, folder: Path) -> DatasetSplits:
    """Read CoOp's split JSON ``folder/info.split_file`` (reader ``coop_json``).

    Raises:
        InputError: invalid JSON or an invalid entry (see ``parse_splits``), naming the file.
    """
    split_path = folder / info.split_file
    try:
        data = json.loads(split_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"split file {split_path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(f"split file {split_path}: not UTF-8 text") from None
    image_root = folder / info.image_dir if info.image_dir else folder
    return parse_splits(data, info, split_path, image_root, folder)


# Reader kind (``DatasetInfo.reader``) -> function reading the dataset's folder.
_READERS: dict[str, Callable[[DatasetInfo, Path], DatasetSplits]] = {
    "coop_json": read_coop_json,
    "imagenet": read_imagenet,
    "fgvc_text": read_fgvc,
    "wnid_folders": read_wnid_folders,
    "index_folders": read_index_folders,
}


def load_dataset(name: str, data_root: Path) -> DatasetSplits:
    """Read a registered dataset's splits from ``data_root``, with the reader its catalog entry names.

    Only the files listing the splits (and, for datasets without a split file, the image folders)
    are read; images are checked by ``check_images`` on the items a caller will actually decode.

    Raises:
        InputError: unknown dataset; missing data root, dataset folder or split file; an invalid
            split file (one line naming it and the entry, line or folder at fault).
    """
    dataset, part = split_name(name)
    if part is not None:
        get_dataset_info(name)  # refuses a half of a test-only dataset
        return subset_classes(load_dataset(dataset, data_root), part)
    info = get_dataset_info(name)
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise InputError(f"data root {data_root} does not exist")
    folder = data_root / info.folder
    if not folder.is_dir():
        hint = (
            f" (build it with: python -m pipeline.build_demo --dataset {name} --data-root {data_root})"
            if info.source is not None
            else ""
        )
        raise InputError(f"dataset folder {folder} does not exist{hint}")
    split_path = folder / info.split_file
    if not split_path.is_file():
        raise InputError(f"split file {split_path} does not exist")
    splits = _READERS[info.reader](info, folder)
    log.info(
        "%s: %d classes, %d train / %d val / %d test images",
        name,
        splits.num_classes,
        len(splits.train),
        len(splits.val),
        len(splits.test),
    )
    return splits


def resolve_image(splits: DatasetSplits, item: Item) -> Path:
    """Absolute location of ``item``'s image file."""
    return splits.image_root / item.path


def check_images(splits: DatasetSplits, items: Iterable[Item]) -> None:
    """Stat each of ``items``' image files (pass only the items that will be read).

    Raises:
        InputError: "split file X names a missing image Y" for the first missing file, X being the
            file that lists the item's split.
    """
    for item in items:
        path = resolve_image(splits, item)
        if not path.is_file():
            raise InputError(f"split file {_listed_in(splits, item)} names a missing image {path}")


def _listed_in(splits: DatasetSplits, item: Item) -> Path | None:
    """The file listing ``item`` (searched only on the way to an error)."""
    for key, path in splits.split_files.items():
        if item in getattr(splits, key):
            return path
    return splits.split_path
