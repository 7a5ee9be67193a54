"""Result records -> one row per reported number -> means over seeds and dataset-group averages.

Nothing here knows a method: rows are identified by (backbone, method) and labelled from the
records (``pipeline.report.records``) and the backbone registry's display names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.backbones.registry import BACKBONES, image_source
from pipeline.core.errors import InputError
from pipeline.report.records import BASELINE, ROLES

AVERAGE = "Average"
KEY = ["backbone", "method", "dataset", "shot"]
LONG_COLUMNS = [
    "backbone", "variant", "stage", "method", "label", "role", "plug_and_play", "dataset", "shot", "seed",
    "test_acc", "val_acc", "m", "train_seconds", "path",
]  # fmt: skip
SUMMARY_COLUMNS = (
    "kind",  # "dataset" or "average"
    "backbone",
    "method",
    "row",  # display label: "<backbone label>[ + <result label>]"
    "role",
    "plug_and_play",
    "dataset",  # dataset name, "Average" or a group label such as "D avg"
    "shot",
    "mean",  # mean test accuracy (%) over seeds; for averages, the mean of per-dataset means
    "std",  # sample std (ddof=1) over seeds, 0.0 for one seed; NaN for an average with mixed seeds
    "n_seeds",
    "seeds",  # "1/2/3" ("mixed" for an average over datasets run with different seeds)
    "n_datasets",
    "datasets",
    "val_mean",  # mean validation accuracy (%), NaN when the result has none
    "m",  # for results read at a step of the record's curves (info.m): per seed "6/7/6", else ""
    "m_mean",
    "train_seconds",  # mean training wall time of the runs (s), NaN when not recorded
)


def backbone_label(name: str) -> str:
    """The registry's display name of a backbone (its name for one that is not registered)."""
    spec = BACKBONES.get(name)
    return spec.label if spec is not None else name


def row_label(backbone: str, label: str) -> str:
    """ "CoOp + FMA" for a result labelled "FMA"; the backbone alone for an empty label."""
    return f"{backbone_label(backbone)} + {label}" if label else backbone_label(backbone)


def shared_features_note(frame: pd.DataFrame, method: str = "linear_probe") -> str:
    """A caption sentence for the backbones without a row of ``method``, a method that sees image
    features only (the linear probe), because it ran on the backbone whose image features they keep
    (registry.image_source: CoOp's are zero-shot CLIP's). "" when no backbone is in that case.

    ``frame`` has one row per result with columns ``backbone`` and ``method``.
    """
    have = set(frame.loc[frame["method"] == method, "backbone"])
    shared: dict[str, list[str]] = {}
    for name in dict.fromkeys(frame["backbone"]):
        if name in have or name not in BACKBONES:
            continue
        source = image_source(name)
        if source != name and source in have:
            shared.setdefault(source, []).append(backbone_label(name))
    label = frame.loc[frame["method"] == method, "row"].iloc[0].split(" + ", 1)[-1] if have else method
    sentences = []
    for source, names in shared.items():
        who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        keep = "keeps" if len(names) == 1 else "keep"
        their = "its" if len(names) == 1 else "their"
        sentences.append(
            f"{who} {keep} {backbone_label(source)}'s image features, so {their} {label} is the "
            f"{backbone_label(source)} + {label} row."
        )
    return " ".join(sentences)


def long_table(records: Iterable[Mapping[str, Any]], variant: bool = False) -> pd.DataFrame:
    """One row per (record, result).

    Args:
        variant: keep the records' variant in the identity (ablations); otherwise records with a
            variant are an error (they belong to the ablation table).

    Raises:
        InputError: two records reporting the same (backbone, dataset, shot, seed, [variant],
            method), naming both files.
    """
    rows = []
    for rec in records:
        if rec.get("variant") is not None and not variant:
            raise InputError(
                f"{rec['path']}: an ablation record (variant {rec['variant']!r}) in the main tables"
            )
        for r in rec["results"]:
            info = r.get("info") or {}
            m = info.get("m")
            rows.append(
                {
                    "backbone": rec["backbone"],
                    "variant": rec.get("variant") or "",
                    "stage": rec["stage"],
                    "method": r["method"],
                    "label": r["label"],
                    "role": r["role"],
                    "plug_and_play": bool(r.get("plug_and_play")),
                    "dataset": rec["dataset"],
                    "shot": int(rec["shot"]),
                    "seed": int(rec["seed"]),
                    "test_acc": float(r["test_acc"]),
                    "val_acc": math.nan if r.get("val_acc") is None else float(r["val_acc"]),
                    "m": int(m) if isinstance(m, int) and not isinstance(m, bool) else pd.NA,
                    "train_seconds": float(rec.get("timing", {}).get("train_seconds", math.nan)),
                    "path": rec.get("path", ""),
                }
            )
    long = pd.DataFrame(rows, columns=LONG_COLUMNS)
    long["m"] = long["m"].astype("Int64")
    key = ["backbone", "variant", "dataset", "shot", "seed", "method"]
    dup = long[long.duplicated(key, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        paths = dup[(dup[key] == first[key]).all(axis=1)]["path"].tolist()
        raise InputError(f"{paths[-1]}: duplicates the result '{first['method']}' in {paths[0]}")
    return long


def seed_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1) over seeds; 0.0 for a single seed."""
    return float(np.std(np.asarray(values, dtype=float), ddof=1)) if len(values) > 1 else 0.0


def join_values(values: Iterable[Any]) -> str:
    return "/".join(str(v) for v in values)


def seed_summary(g: pd.DataFrame) -> tuple[dict[str, Any], list[int]]:
    """Over one cell's runs (one row per seed): mean and sample std of ``test_acc``, the seeds, and
    the mean of the chosen M; also the Ms in seed order (runs without an M left out)."""
    g = g.sort_values("seed")
    acc = g["test_acc"].to_numpy(dtype=float)
    ms = [int(m) for m in g["m"] if not pd.isna(m)]
    stats = {
        "mean": float(acc.mean()),
        "std": seed_std(acc),
        "n_seeds": len(acc),
        "seeds": join_values(g["seed"]),
        "m_mean": float(np.mean(ms)) if ms else math.nan,
    }
    return stats, ms


def _m_text(ms: Sequence[int]) -> str:
    """'3' when every seed agrees, else the per-seed values in seed order ('2/3/3')."""
    return str(ms[0]) if len(set(ms)) == 1 else join_values(ms)


def group_labels(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Row label per group: its initial ("difficult" -> "D avg"), or the full name if initials clash."""
    initials = [name[:1].upper() for name in groups]
    if len(set(initials)) == len(initials):
        return {name: f"{initial} avg" for name, initial in zip(groups, initials, strict=True)}
    return {name: f"{name} avg" for name in groups}


def check_groups(groups: Any) -> dict[str, list[str]]:
    """Validate a dataset-group mapping such as ``{"difficult": [...], "easy": [...]}``."""
    if not isinstance(groups, Mapping):
        raise InputError("dataset groups: expected a JSON object mapping group name to a list of datasets")
    for name, members in groups.items():
        if not isinstance(members, list) or not all(isinstance(d, str) for d in members):
            raise InputError(f"dataset group '{name}': expected a list of dataset names")
    return {str(k): list(v) for k, v in groups.items()}


def _dataset_rows(long: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (backbone, method, dataset, shot), g in long.groupby(KEY, sort=False):
        g = g.sort_values("seed")
        stats, ms = seed_summary(g)
        first = g.iloc[0]
        rows.append(
            {
                "kind": "dataset",
                "backbone": backbone,
                "method": method,
                "row": row_label(backbone, first["label"]),
                "role": first["role"],
                "plug_and_play": bool(first["plug_and_play"]),
                "dataset": dataset,
                "shot": int(shot),
                **stats,
                "n_datasets": 1,
                "datasets": dataset,
                "val_mean": float(g["val_acc"].mean()) if g["val_acc"].notna().any() else math.nan,
                "m": _m_text(ms) if ms else "",
                "train_seconds": float(g["train_seconds"].mean()),
                "_per_seed": dict(zip(g["seed"].tolist(), g["test_acc"].astype(float).tolist(), strict=True)),
            }
        )
    return rows


def _average_row(label: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of per-dataset means; std over per-seed dataset averages when the seeds line up."""
    first = members[0]
    seed_sets = {tuple(m["_per_seed"]) for m in members}
    if len(seed_sets) == 1:
        seeds = list(next(iter(seed_sets)))
        per_seed = [float(np.mean([m["_per_seed"][s] for m in members])) for s in seeds]
        std, n_seeds, seeds_text = seed_std(per_seed), len(seeds), join_values(seeds)
    else:
        std, n_seeds, seeds_text = math.nan, min(m["n_seeds"] for m in members), "mixed"
    return {
        **{k: first[k] for k in ("backbone", "method", "row", "role", "plug_and_play", "shot")},
        "kind": "average",
        "dataset": label,
        "mean": float(np.mean([m["mean"] for m in members])),
        "std": std,
        "n_seeds": n_seeds,
        "seeds": seeds_text,
        "n_datasets": len(members),
        "datasets": join_values(m["dataset"] for m in members),
        "val_mean": float(np.mean([m["val_mean"] for m in members])),
        "m": "",
        "m_mean": float(np.mean([m["m_mean"] for m in members])),
        "train_seconds": float(np.mean([m["train_seconds"] for m in members])),
    }


def summarize(
    long: pd.DataFrame,
    groups: Mapping[str, Sequence[str]] | None = None,
    backbone_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean and std over seeds per (backbone, method, dataset, shot), then dataset averages.

    Average rows per (backbone, method, shot): "Average" over every dataset present, and one row
    per group (labelled by ``group_labels``) over the group's datasets that are present.

    Returns:
        DataFrame with ``SUMMARY_COLUMNS``, rows ordered by backbone (``backbone_order``, then by
        name), role (baseline, primary, variant, diagnostic), then dataset rows before averages.
    """
    groups = dict(groups or {})
    labels = group_labels(groups)
    rows = _dataset_rows(long)
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["backbone"], row["method"], row["shot"]), []).append(row)
    averages = []
    for members in cells.values():
        averages.append(_average_row(AVERAGE, members))
        for name, datasets in groups.items():
            present = [m for m in members if m["dataset"] in datasets]
            if present:
                averages.append(_average_row(labels[name], present))
    order = {b: i for i, b in enumerate(backbone_order or [])}
    role = {r: i for i, r in enumerate(ROLES)}
    method_first = {}
    for row in rows:
        method_first.setdefault(row["method"], len(method_first))
    dataset_order = {d: i for i, d in enumerate(dict.fromkeys(r["dataset"] for r in rows))}
    dataset_order.update(
        {label: len(dataset_order) + i for i, label in enumerate([AVERAGE, *labels.values()])}
    )

    def sort_key(r: dict[str, Any]) -> tuple:
        method_rank = -1 if r["method"] == BASELINE else method_first[r["method"]]
        return (
            order.get(r["backbone"], len(order)), r["backbone"], role[r["role"]], method_rank,
            r["kind"] != "dataset", dataset_order[r["dataset"]], r["shot"],
        )  # fmt: skip

    ordered = sorted(rows + averages, key=sort_key)
    return pd.DataFrame([{k: r[k] for k in SUMMARY_COLUMNS} for r in ordered], columns=list(SUMMARY_COLUMNS))
