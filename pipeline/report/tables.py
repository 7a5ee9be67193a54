"""The few-shot tables: the main table (every backbone, backbone + method, per dataset and shots)
and the plug-and-play table (per backbone: its group averages beside + each plug-and-play method).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import InputError
from pipeline.report import curves
from pipeline.report.records import BASELINE
from pipeline.report.render import Cell, Table, html, latex, markdown, write_csv, write_text
from pipeline.report.summary import (  # noqa: F401 (check_groups is re-exported)
    AVERAGE,
    backbone_label,
    check_groups,
    group_labels,
    long_table,
    shared_features_note,
    summarize,
)

MAIN_ROLES = ("baseline", "primary")


def _cell(r: Mapping[str, Any], most_seeds: int, most_datasets: int) -> Cell:
    few = int(r["n_seeds"]) if r["n_seeds"] < most_seeds and not math.isnan(r["std"]) else None
    note = f"M {r['m']}" if r["m"] else ""
    return Cell(r["mean"], r["std"], r["n_datasets"] < most_datasets, few, r["role"] == "diagnostic", note)


def _dataset_titles(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    tags = {}
    for name, members in groups.items():
        for d in members:
            tags.setdefault(d, name[:1].upper())
    names = dict.fromkeys(summary.loc[summary["kind"] == "dataset", "dataset"])
    return {d: f"{d} ({tags[d]})" if d in tags else d for d in names}


def main_tables(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> list[Table]:
    """One table per dataset, then per average (Average, D avg, ...): a row per backbone and per
    backbone + primary method, a column per number of shots."""
    main = summary[summary["role"].isin(MAIN_ROLES)]
    shots = sorted(main["shot"].unique().tolist())
    most_seeds = int(main["n_seeds"].max()) if len(main) else 0
    titles = _dataset_titles(main, groups)
    titles |= {label: label for label in [AVERAGE, *group_labels(groups).values()]}
    tables = []
    for dataset, title in titles.items():
        sub = main[main["dataset"] == dataset]
        if sub.empty:
            continue
        most_datasets = int(sub["n_datasets"].max())
        rows, rule_before, previous = [], set(), None
        for (backbone, _method), g in sub.groupby(["backbone", "method"], sort=False):
            if previous is not None and backbone != previous:
                rule_before.add(len(rows))
            previous = backbone
            by_shot = {int(r["shot"]): r for r in g.to_dict("records")}
            row: list[Cell | str | None] = [g["row"].iloc[0]]
            row += [_cell(by_shot[s], most_seeds, most_datasets) if s in by_shot else None for s in shots]
            rows.append(row)
        columns = ["Method", *(f"{s} shot" + ("s" if s > 1 else "") for s in shots)]
        tables.append(Table(title, columns, rows, rule_before, label=f"tab:fewshot-{dataset}"))
    return tables


def plugplay_frame(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Per backbone, shot and group average: the baseline and every plug-and-play result."""
    labels = list(group_labels(groups).values()) or [AVERAGE]
    avg = summary[(summary["kind"] == "average") & summary["dataset"].isin(labels)]
    keep = avg[(avg["method"] == BASELINE) | avg["plug_and_play"]]
    frame = keep[["backbone", "method", "row", "dataset", "shot", "mean", "std", "n_datasets"]].copy()
    frame = frame.rename(columns={"dataset": "group"})
    all_shots = (
        frame.groupby(["backbone", "method", "row", "group"], sort=False)
        .agg(mean=("mean", "mean"), n_datasets=("n_datasets", "min"), n_shots=("shot", "nunique"))
        .reset_index()
    )
    all_shots["shot"], all_shots["std"] = "all", math.nan
    frame["n_shots"] = 1
    return pd.concat([frame, all_shots[frame.columns]], ignore_index=True)


def plugplay_tables(frame: pd.DataFrame, backbone_order: Sequence[str]) -> list[Table]:
    """One table per number of shots (and one over all shots): a row per backbone, per group its
    own accuracy then "+<method>" for each plug-and-play method (the FMA paper's layout)."""
    if frame.empty:
        return []
    groups = list(dict.fromkeys(frame["group"]))
    labels = {}
    for r in frame[frame["method"] != BASELINE].to_dict("records"):
        labels.setdefault(r["method"], r["row"].split(" + ", 1)[-1])
    columns = ["Backbone"]
    for g in groups:
        columns += [g, *(f"+{label}" for label in labels.values())]
    shot_order = sorted(s for s in frame["shot"].unique() if s != "all") + ["all"]
    order = {b: i for i, b in enumerate(backbone_order)}
    backbones = sorted(frame["backbone"].unique(), key=lambda b: (order.get(b, len(order)), b))
    tables = []
    for shot in shot_order:
        sub = frame[frame["shot"] == shot]
        rows = []
        for backbone in backbones:
            cells = {
                (r["group"], r["method"]): r for r in sub[sub["backbone"] == backbone].to_dict("records")
            }
            row: list[Cell | str | None] = [backbone_label(backbone)]
            for g in groups:
                for method in [BASELINE, *labels]:
                    r = cells.get((g, method))
                    row.append(None if r is None else Cell(r["mean"], r["std"]))
            rows.append(row)
        title = "Averaged over all shots" if shot == "all" else f"{shot} shot" + ("s" if shot > 1 else "")
        tables.append(Table(title, columns, rows, label=f"tab:plugplay-{shot}"))
    return tables


def _caption(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> str:
    counts = sorted(set(summary.loc[summary["kind"] == "dataset", "n_seeds"].astype(int)))
    n = f"{counts[0]} seed" + ("s" if counts[0] > 1 else "") if len(counts) == 1 else "several seeds"
    labels = group_labels(groups)
    group_text = "; ".join(f"{labels[k]}: mean over {k} datasets ({', '.join(v)})" for k, v in groups.items())
    return (
        f"Test accuracy (%), mean ± std over {n} (sample std, ddof=1). A row names the stage-1 backbone, "
        "alone (the backbone's own prediction) or with the stage-2 method trained on its cached "
        "features. (M a/b/c) is the number of Euler steps chosen on the few-shot validation split, "
        "per seed. Averages are means of per-dataset means, with std over per-seed averages; † marks "
        "an average over fewer datasets than others in its table."
        + (f" {group_text}." if group_text else "")
        + (f" {note}" if (note := shared_features_note(summary)) else "")
    )


def write_fewshot_report(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    groups: Mapping[str, Sequence[str]] | None = None,
    backbone_order: Sequence[str] = (),
) -> dict[str, Path]:
    """Write fewshot.{md,csv,tex,html}, plugplay.{md,csv,tex,html} and curves.png into ``out_dir``."""
    groups = check_groups(groups or {})
    if not records:
        raise InputError("no result records given")
    out_dir = Path(out_dir)
    summary = summarize(long_table(records), groups, backbone_order)
    caption = _caption(summary, groups)
    paths = {
        f"{name}.{ext}": out_dir / f"{name}.{ext}"
        for name in ("fewshot", "plugplay")
        for ext in ("md", "csv", "tex", "html")
    }
    paths["curves.png"] = out_dir / "curves.png"
    tables = main_tables(summary, groups)
    write_csv(summary, paths["fewshot.csv"])
    heading, source = "Few-shot test accuracy", "pipeline.report.tables"
    write_text(paths["fewshot.md"], markdown(heading, caption, tables))
    write_text(paths["fewshot.tex"], latex(caption, tables, source))
    write_text(paths["fewshot.html"], html(heading, caption, tables, source))
    frame = plugplay_frame(summary, groups)
    pp_caption = (
        "Plug-and-play: each backbone's own test accuracy (%) averaged over a dataset group, beside the "
        "same backbone with each plug-and-play stage-2 method on its cached features (the FMA paper's "
        "plug-and-play table). Std over seeds where one number of shots is shown."
    )
    pp_tables = plugplay_tables(frame, backbone_order)
    write_csv(frame, paths["plugplay.csv"])
    write_text(paths["plugplay.md"], markdown("Plug-and-play", pp_caption, pp_tables))
    write_text(paths["plugplay.tex"], latex(pp_caption, pp_tables, source))
    write_text(paths["plugplay.html"], html("Plug-and-play", pp_caption, pp_tables, source))
    curves.plot_curves(curves.build_curves(records), paths["curves.png"])
    return paths
