"""Base-to-new generalization (CoCoOp, Zhou et al. 2022): a dataset's classes split in two halves.

A dataset name with a part, ``<dataset>@base`` or ``<dataset>@new``, names one half as a dataset of
its own: sort the label ids; the first ceil(n / 2) are the base classes, the rest the new ones;
labels are re-indexed from 0 within each half, and every split keeps only the items of its half.
The few-shot images of a run are drawn on the whole dataset first and then restricted to the half,
as CoCoOp subsamples the classes after CoOp's few-shot draw (``pipeline.data.fewshot``), so seed s
keeps the images of seed s. docs/protocol.md, "Base-to-new".

The reported numbers are B (accuracy on the base half's test split of a model trained on the base
half), N (the same model on the new half, with the new class names) and their harmonic mean
H = 2 B N / (B + N), computed from the seed-averaged B and N (``base_to_new_summary``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from pipeline.core.errors import InputError
from pipeline.data.splits import DatasetSplits, Item

PARTS = ("base", "new")
SEPARATOR = "@"


def split_name(name: str) -> tuple[str, str | None]:
    """``"dtd@base"`` -> ``("dtd", "base")``; ``"dtd"`` -> ``("dtd", None)``.

    Raises:
        InputError: a part other than base or new.
    """
    if SEPARATOR not in name:
        return name, None
    dataset, part = name.split(SEPARATOR, 1)
    if part not in PARTS:
        raise InputError(f"dataset {name!r}: unknown part {part!r} (choose from {', '.join(PARTS)})")
    return dataset, part


def whole_name(name: str) -> str:
    """The dataset a (possibly half-) dataset name belongs to: ``"dtd@base"`` -> ``"dtd"``."""
    return name.split(SEPARATOR, 1)[0]


def part_classes(num_classes: int, part: str) -> list[int]:
    """Label ids of one half, in order: base = the first ceil(n / 2), new = the rest."""
    cut = math.ceil(num_classes / 2)
    return list(range(cut)) if part == "base" else list(range(cut, num_classes))


def _restrict(items: Sequence[Item], relabel: dict[int, int]) -> list[Item]:
    return [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]


def subset_classes(whole: DatasetSplits, part: str) -> DatasetSplits:
    """The ``part`` half of ``whole``: its classes, re-indexed from 0, in every split.

    ``parent_labels[c]`` is the label in ``whole`` of the half's class ``c``; ``whole`` is kept so
    that the few-shot draw can happen on the whole dataset first.
    """
    labels = part_classes(whole.num_classes, part)
    relabel = {old: new for new, old in enumerate(labels)}
    return dataclasses.replace(
        whole,
        name=f"{whole.name}{SEPARATOR}{part}",
        classnames=[whole.classnames[c] for c in labels],
        train=_restrict(whole.train, relabel),
        val=_restrict(whole.val, relabel),
        test=_restrict(whole.test, relabel),
        parent_labels=tuple(labels),
        whole=whole,
    )


def restrict_items(items: Sequence[Item], half: DatasetSplits) -> list[Item]:
    """Items of the whole dataset kept by ``half`` (a ``subset_classes`` result), relabelled."""
    assert half.parent_labels is not None
    return _restrict(items, {old: new for new, old in enumerate(half.parent_labels)})


def harmonic_mean(base: float, new: float) -> float:
    """H = 2 B N / (B + N) (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def base_to_new_summary(base_by_seed: Sequence[float], new_by_seed: Sequence[float]) -> dict[str, float]:
    """B and N averaged over seeds, then H of those averages (not the mean of per-seed H)."""
    if not base_by_seed or len(base_by_seed) != len(new_by_seed):
        raise InputError("base-to-new: give one base and one new accuracy per seed")
    base = sum(base_by_seed) / len(base_by_seed)
    new = sum(new_by_seed) / len(new_by_seed)
    return {"base": base, "new": new, "h": harmonic_mean(base, new)}
