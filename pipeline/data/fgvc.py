"""Reader of FGVCAircraft in CoOp's layout: ``variants.txt`` and ``images_variant_<split>.txt``.

The dataset's own text splits (Maji et al. 2013), as CoOp reads them (Zhou et al., IJCV 2022): each
line of ``images_variant_{train,val,test}.txt`` is ``<image id> <variant name>`` (the name may hold
spaces), the image is ``images/<image id>.jpg``, and a variant's label is its line in
``variants.txt``. Names are kept as written (CoOp rewrites none).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.data.catalog import DatasetInfo
from pipeline.data.splits import SPLITS, DatasetSplits, Item


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_variants(path: Path) -> list[str]:
    """The variant names of ``variants.txt``, one per line, in label order.

    Raises:
        InputError: ``<path>:<line>: ...`` for a variant listed twice, or an empty file.
    """
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, name in _lines(path):
        if name in first_line:
            raise InputError(
                f"{path}:{lineno}: variant {name!r} is listed twice (first at line {first_line[name]})"
            )
        first_line[name] = lineno
        names.append(name)
    if not names:
        raise InputError(f"{path}: lists no variants")
    return names


def read_split_lines(path: Path, labels: dict[str, int], variants_path: Path) -> list[Item]:
    """Items of one ``images_variant_<split>.txt``: ``Item("<image id>.jpg", label, variant)``.

    Raises:
        InputError: a missing file, or ``<path>:<line>: ...`` for a line that is not
            ``<image id> <variant>`` or names a variant ``variants_path`` does not list.
    """
    if not path.is_file():
        raise InputError(f"split file {path} does not exist")
    items = []
    for lineno, line in _lines(path):
        image_id, _, variant = line.partition(" ")
        variant = variant.strip()
        if not variant or "/" in image_id or image_id in (".", ".."):
            raise InputError(f"{path}:{lineno}: expected '<image id> <variant name>', got {line!r}")
        if variant not in labels:
            raise InputError(f"{path}:{lineno}: variant {variant!r} is not in {variants_path}")
        items.append(Item(f"{image_id}.jpg", labels[variant], variant))
    return items


def read_fgvc(info: DatasetInfo, folder: Path) -> DatasetSplits:
    """FGVCAircraft (reader ``fgvc_text``): ``variants.txt`` (``info.split_file``), the three split
    files beside it and ``images/<id>.jpg``.

    Raises:
        InputError: a missing split file, a bad line (naming file:line), or an empty train split.
    """
    variants_path = folder / info.split_file
    classnames = read_variants(variants_path)
    labels = {name: label for label, name in enumerate(classnames)}
    split_files = {key: folder / f"images_variant_{key}.txt" for key in SPLITS}
    items = {key: read_split_lines(path, labels, variants_path) for key, path in split_files.items()}
    if not items["train"]:
        raise InputError(f"split file {split_files['train']}: the train split is empty")
    return DatasetSplits(
        name=info.name,
        image_root=folder / info.image_dir,
        classnames=classnames,
        train=items["train"],
        val=items["val"],
        test=items["test"],
        split_path=variants_path,
        folder=folder,
        split_files=split_files,
    )
