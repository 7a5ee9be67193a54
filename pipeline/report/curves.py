"""Figure 5 of the FMA paper from result records: accuracy and distance to the class text per Euler step."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import InputError
from pipeline.report.summary import backbone_label


def _selected_m(record: Mapping[str, Any]) -> int | None:
    """The step its primary result is read at (``info.m``), if any."""
    for r in record["results"]:
        if r["role"] == "primary" and isinstance((r.get("info") or {}).get("m"), int):
            return int(r["info"]["m"])
    return None


def build_curves(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Figure 5 data from every record with step curves (``curves.x == "step"`` with val_acc,
    test_acc, test_dist): per (backbone, dataset, shot, step), the curves averaged over seeds, with
    ``selected_m`` = the step chosen most often over seeds (ties to the smaller).

    Raises:
        InputError: seeds of one (backbone, dataset, shot) reporting different step lists.
    """
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for rec in records:
        c = rec.get("curves") or {}
        if c.get("x") != "step" or not all(k in c for k in ("val_acc", "test_acc", "test_dist")):
            continue
        run = {"path": rec.get("path", ""), "steps": c["step"], "selected_m": _selected_m(rec) or 0}
        run |= {k: c[k] for k in ("val_acc", "test_acc", "test_dist")}
        grouped.setdefault((rec["backbone"], rec["dataset"], rec["shot"]), []).append(run)
    rows = []
    for (backbone, dataset, shot), group in sorted(grouped.items()):
        steps = group[0]["steps"]
        for run in group[1:]:
            if run["steps"] != steps:
                raise InputError(f"{run['path']}: steps differ from those in {group[0]['path']}")
        counts = Counter(run["selected_m"] for run in group)
        top = max(counts.values())
        selected = min(m for m, c in counts.items() if c == top)
        means = {k: np.mean([run[k] for run in group], axis=0) for k in ("val_acc", "test_acc", "test_dist")}
        for i, step in enumerate(steps):
            rows.append(
                {
                    "backbone": backbone,
                    "dataset": dataset,
                    "shot": shot,
                    "step": step,
                    "val_acc": float(means["val_acc"][i]),
                    "test_acc": float(means["test_acc"][i]),
                    "test_dist": float(means["test_dist"][i]),
                    "n_seeds": len(group),
                    "selected_m": selected,
                }
            )
    columns = ["backbone", "dataset", "shot", "step", "val_acc", "test_acc", "test_dist", "n_seeds"]
    return pd.DataFrame(rows, columns=[*columns, "selected_m"])


def plot_curves(curves: pd.DataFrame, path: str | os.PathLike) -> None:
    """Figure 5: accuracy (val dotted, test solid) and test distance to class text (dashed, right axis)
    against the Euler step M, one panel per (backbone, dataset), one colour per shot; a star marks the
    selected M on the test curve. Written as PNG atomically."""
    panels = list(dict.fromkeys(zip(curves["backbone"], curves["dataset"], strict=True)))
    shots = sorted(curves["shot"].unique().tolist())
    colours = {s: f"C{i % 10}" for i, s in enumerate(shots)}
    several_backbones = len({b for b, _ in panels}) > 1
    ncols = max(1, min(4, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(max(7.0, 4.2 * ncols), 3.2 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if not panels:
        axes[0].text(0.5, 0.5, "no FMA runs", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for i, (backbone, dataset) in enumerate(panels):
        ax = axes[i]
        twin = ax.twinx()
        sub = curves[(curves["backbone"] == backbone) & (curves["dataset"] == dataset)]
        for shot, g in sub.groupby("shot"):
            c = colours[shot]
            ax.plot(g["step"], g["test_acc"], "-o", color=c, ms=3)
            ax.plot(g["step"], g["val_acc"], ":s", color=c, ms=3)
            twin.plot(g["step"], g["test_dist"], "--", color=c, alpha=0.6)
            m = int(g["selected_m"].iloc[0])
            at = g[g["step"] == m]
            ax.plot(at["step"], at["test_acc"], "*", color=c, ms=13, mec="k", zorder=5)
        ax.set_title(f"{dataset}, {backbone_label(backbone)}" if several_backbones else dataset)
        ax.set_xlabel("Euler step M")
        if i % ncols == 0:
            ax.set_ylabel("accuracy (%)")
        if i % ncols == ncols - 1 or i == len(panels) - 1:
            twin.set_ylabel("distance to class text")
    for ax in axes[max(1, len(panels)) :]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=colours[s], label=f"{s}-shot") for s in shots]
    handles += [
        Line2D([], [], color="k", ls="-", marker="o", ms=3, label="test acc"),
        Line2D([], [], color="k", ls=":", marker="s", ms=3, label="val acc"),
        Line2D([], [], color="k", ls="--", alpha=0.6, label="test distance (right)"),
        Line2D([], [], color="w", marker="*", mfc="grey", mec="k", ms=13, label="selected M (on val)"),
    ]
    if panels:
        # One legend row under wide figures, two under narrow ones.
        ncol = len(handles) if ncols >= 3 else math.ceil(len(handles) / 2)
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# ---------------------------------------------------------------------------------------------- all
