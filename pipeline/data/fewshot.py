"""Few-shot sampling (CoOp protocol, Zhou et al. IJCV 2022) and the JSON file recording one sampled subset."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import write_json
from pipeline.core.errors import InputError
from pipeline.core.versions import SAMPLING_VERSION  # bump it when the sampling below changes its draws
from pipeline.data.coop import DatasetSplits, Item
from pipeline.data.coop_pickle import check_coop_pickle, coop_pickle_path
from pipeline.data.protocols import restrict_items

log = logging.getLogger(__name__)

# Few-shot validation images per class: min(shot, MAX_VAL_SHOTS) (CoOp / lpclip protocol).
MAX_VAL_SHOTS = 4
# How a (shot, seed) picks its images (config key `sampler`, docs/protocol.md):
#   numpy: this project's draw, one numpy.random.default_rng(seed) stream, classes in label order;
#   dassl: CoOp's own draw (Dassl's generate_fewshot_dataset after random.seed(seed)), so seed s
#          gives the same images as seed s of the published CoOp, CoCoOp and CLIP-LoRA runs; where
#          CoOp's pickle of that draw is in the dataset folder, the draw is checked against it.
SAMPLERS = ("numpy", "dassl")


@dataclass(frozen=True)
class FewShotSplit:
    """One sampled few-shot subset: ``train`` and ``val`` items, grouped by class (in label order
    for ``numpy``, in order of first appearance for ``dassl``).

    ``checked_against`` is the CoOp few-shot pickle the draw was found equal to, if any (not part
    of the subset's identity: it does not take part in comparisons).
    """

    train: list[Item]
    val: list[Item]
    checked_against: Path | None = field(default=None, compare=False)


def val_shots(shot: int) -> int:
    """Validation images per class for ``shot`` training images per class: min(shot, 4)."""
    return min(shot, MAX_VAL_SHOTS)


def _by_class(items: list[Item], num_classes: int) -> list[list[Item]]:
    """Group ``items`` by label, keeping split-file order within each class."""
    groups: list[list[Item]] = [[] for _ in range(num_classes)]
    for item in items:
        groups[item.label].append(item)
    return groups


def _draw(rng: np.random.Generator, pool: list[Item], k: int) -> list[Item]:
    """``k`` distinct items of ``pool`` (all of them if it has at most ``k``), in pool order."""
    if len(pool) <= k:
        return list(pool)
    chosen = np.sort(rng.choice(len(pool), size=k, replace=False))
    return [pool[i] for i in chosen]


def _dassl_draw(rng: random.Random, items: list[Item], k: int) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset`` for one split: per label in order of first appearance,
    ``rng.sample`` of ``k`` items (in the order drawn), or every item of a label with fewer."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return [i for group in groups.values() for i in (rng.sample(group, k) if len(group) >= k else group)]


def sample_fewshot(splits: DatasetSplits, shot: int, seed: int, sampler: str = "dassl") -> FewShotSplit:
    """Sample ``shot`` train and ``min(shot, 4)`` val images per class, without repetition.

    ``numpy``: all train classes are drawn first (in label order, items in split-file order), then
    all val classes, from one ``numpy.random.default_rng(seed)`` stream. ``dassl``: CoOp's draw,
    ``random.Random(seed)`` and ``_dassl_draw`` on train, then on val continuing the same stream,
    checked against CoOp's pickle of the same draw where the dataset folder holds one
    (``<folder>/split_fewshot/shot_{shot}-seed_{seed}.pkl``, ``pipeline.data.coop_pickle``).
    Either way the result depends only on (split file, shot, seed, sampler). A class with fewer
    images than asked keeps all it has. Without a val split, val is drawn from the train images of
    the class not already chosen for train.

    Raises:
        InputError: ``shot`` < 1, ``seed`` < 0 or an unknown sampler; with ``dassl``, a CoOp pickle
            that cannot be read safely or holds other images (one line naming it and the item).
    """
    if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
        raise InputError(f"shot must be a positive integer, got {shot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if splits.whole is not None:  # one half of the classes: CoCoOp draws on the whole dataset first
        drawn = sample_fewshot(splits.whole, shot, seed, sampler)
        half = FewShotSplit(
            restrict_items(drawn.train, splits), restrict_items(drawn.val, splits), drawn.checked_against
        )
        return _logged(splits, shot, seed, half)
    if sampler == "dassl":
        return _sample_dassl(splits, shot, seed)
    rng = np.random.default_rng(seed)
    num_classes = len(splits.classnames)
    train_groups = _by_class(splits.train, num_classes)
    train = [_draw(rng, group, shot) for group in train_groups]

    if splits.val:
        val_pools = _by_class(splits.val, num_classes)
    else:
        val_pools = []
        for group, taken in zip(train_groups, train, strict=True):
            used = set(taken)
            val_pools.append([item for item in group if item not in used])
    val = [_draw(rng, pool, val_shots(shot)) for pool in val_pools]

    fewshot = FewShotSplit([i for g in train for i in g], [i for g in val for i in g])
    return _logged(splits, shot, seed, fewshot)


def _sample_dassl(splits: DatasetSplits, shot: int, seed: int) -> FewShotSplit:
    rng = random.Random(seed)
    train = _dassl_draw(rng, splits.train, shot)
    if splits.val:
        val_source = splits.val
    else:
        taken = set(train)
        val_source = [item for item in splits.train if item not in taken]
    val = _dassl_draw(rng, val_source, val_shots(shot))  # the same stream, as CoOp draws val after train
    pickled = coop_pickle_path(splits, shot, seed)
    if pickled is not None:
        check_coop_pickle(pickled, {"train": train, "val": val})
        log.info("%s shot %d seed %d: the same images as CoOp's %s", splits.name, shot, seed, pickled)
    return _logged(splits, shot, seed, FewShotSplit(train, val, checked_against=pickled))


def _logged(splits: DatasetSplits, shot: int, seed: int, fewshot: FewShotSplit) -> FewShotSplit:
    counts: dict[int, int] = {}
    for item in fewshot.train:
        counts[item.label] = counts.get(item.label, 0) + 1
    short = [splits.classnames[c] for c in range(len(splits.classnames)) if counts.get(c, 0) < shot]
    if short:
        log.warning(
            "%s: %d classes have fewer than %d train images (kept all)", splits.name, len(short), shot
        )
    log.info(
        "%s shot %d seed %d: %d train, %d val images",
        splits.name,
        shot,
        seed,
        len(fewshot.train),
        len(fewshot.val),
    )
    return fewshot


def write_split_file(
    path: Path, dataset: str, shot: int, seed: int, fewshot: FewShotSplit, sampler: str = "numpy"
) -> None:
    """Record a sampled subset as JSON (atomically); entries are ``[path, label, classname]``.

    A draw checked against CoOp's pickle records it: ``"checked_against": "<path of the pkl>"``.
    """
    record: dict[str, Any] = {
        "dataset": dataset,
        "shot": shot,
        "seed": seed,
        "sampler": sampler,
        "sampling_version": SAMPLING_VERSION,
        "train": [[i.path, i.label, i.classname] for i in fewshot.train],
        "val": [[i.path, i.label, i.classname] for i in fewshot.val],
    }
    if fewshot.checked_against is not None:
        record["checked_against"] = str(fewshot.checked_against)
    write_json(path, record)


def _read_entries(
    data: dict[str, Any], key: str, path: Path, splits: DatasetSplits, known: set
) -> list[Item]:
    entries = data.get(key)
    if not isinstance(entries, list):
        raise InputError(f"few-shot split file {path}: '{key}' must be a list")
    items = []
    for i, entry in enumerate(entries):
        where = f"few-shot split file {path}, {key}[{i}]"
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and isinstance(entry[2], str)
        ):
            raise InputError(f"{where}: expected [path, label, classname], got {json.dumps(entry)[:80]}")
        rel, label, classname = entry
        if not 0 <= label < len(splits.classnames) or splits.classnames[label] != classname:
            raise InputError(
                f"{where}: {classname!r} (label {label}) names an unknown class of {splits.name}"
            )
        item = Item(rel, label, classname)
        if item not in known:
            raise InputError(f"{where}: image {rel!r} is not in the train or val split of {splits.name}")
        items.append(item)
    return items


def read_split_file(
    path: Path, splits: DatasetSplits, *, shot: int | None = None, seed: int | None = None
) -> FewShotSplit:
    """Read a few-shot split file and check it against the dataset it was sampled from.

    Args:
        path: file written by ``write_split_file``.
        splits: the dataset (from ``load_dataset``) the file must belong to.
        shot, seed: when given, the file's header must match them.

    Raises:
        InputError: missing or invalid file, another dataset, shot, seed or sampling version, an
            unknown class, an entry not in the dataset's train/val splits, or a repeated entry;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"few-shot split file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(
            f"few-shot split file {path}: invalid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"few-shot split file {path}: expected a JSON object")
    expected = {"dataset": splits.name, "sampling_version": SAMPLING_VERSION, "shot": shot, "seed": seed}
    for key, want in expected.items():
        if key not in data:
            raise InputError(f"few-shot split file {path}: missing key '{key}'")
        if want is not None and data[key] != want:
            raise InputError(f"few-shot split file {path}: {key} is {data[key]!r}, expected {want!r}")
    known = set(splits.train) | set(splits.val)
    fewshot = FewShotSplit(
        train=_read_entries(data, "train", path, splits, known),
        val=_read_entries(data, "val", path, splits, known),
    )
    seen: set[Item] = set()
    for item in fewshot.train + fewshot.val:
        if item in seen:
            raise InputError(f"few-shot split file {path}: image {item.path!r} is listed twice")
        seen.add(item)
    return fewshot
