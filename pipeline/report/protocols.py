"""Transfer-protocol tables (docs/protocol.md): base-to-new (B, N, H), cross-dataset and domain
generalization, from the source runs' result records and their transfer records.

A source run (backbone, source dataset, shot, seed) reports its own test accuracy in its ``fma``
and ``linear_probe`` records; its ``transfer`` record reports the same backbone and velocity field
on a target (M chosen on the source's validation split). Rows are methods (a backbone alone, with
FMA, with the linear probe); a method a protocol cannot apply to (a probe on classes it never saw)
has an empty cell. Means are over seeds; B and N are seed-averaged before H is taken.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError
from pipeline.data.protocols import base_to_new_summary, harmonic_mean
from pipeline.report.records import BASELINE
from pipeline.report.render import Cell, Table, html, latex, markdown, write_csv, write_text
from pipeline.report.summary import backbone_label, group_labels, long_table, shared_features_note, summarize

PROTOCOLS = ("base_to_new", "cross_dataset", "domain_generalization")
HEADINGS = {
    "base_to_new": "Base-to-new generalization",
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalization",
}
SHOWN_ROLES = ("baseline", "primary")
FRAME_COLUMNS = [
    "protocol", "backbone", "method", "row", "role", "plug_and_play", "source", "dataset", "part",
    "shot", "mean", "std", "n_seeds", "seeds",
]  # fmt: skip


TRANSFER_STAGES = ("transfer", "transfer_probe")  # records of a run scored on a target


def _pairs_of(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    pairs = {}
    for rec in records:
        if rec["stage"] in TRANSFER_STAGES:
            source = (rec.get("info") or {}).get("source")
            if not isinstance(source, str):
                raise InputError(f"{rec.get('path', '<record>')}: a transfer record without info.source")
            pairs[(source, rec["dataset"])] = None
    return list(pairs)


def protocol_frame(
    protocol: str, records: Sequence[Mapping[str, Any]], backbone_order: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per (method, dataset, shot): mean and std over seeds, ``part`` = source or target
    (base or new for base-to-new). Only baselines and primary results are kept.

    Raises:
        InputError: an unknown protocol, no transfer record, or a transfer whose source run has no
            record (named).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    transfers = [r for r in records if r["stage"] in TRANSFER_STAGES]
    if not transfers:
        raise InputError(f"protocol {protocol}: no transfer record given")
    long = long_table(records)
    long = long[long["role"].isin(SHOWN_ROLES)]
    summary = summarize(long, None, backbone_order)
    summary = summary[summary["kind"] == "dataset"]
    pairs = _pairs_of(records)
    sources = list(dict.fromkeys(s for s, _ in pairs))
    targets = list(dict.fromkeys(t for _, t in pairs))
    have = set(zip(long["backbone"], long["dataset"], long["shot"], long["seed"], strict=True))
    for rec in transfers:
        key = (rec["backbone"], rec["info"]["source"], int(rec["shot"]), int(rec["seed"]))
        if key not in have:
            raise InputError(f"{rec.get('path', '<record>')}: no record of its source run {key}")
    source_of = {t: s for s, t in pairs}
    rows = []
    for r in summary.to_dict("records"):
        dataset = r["dataset"]
        if dataset in targets:
            part, source = ("new" if protocol == "base_to_new" else "target"), source_of[dataset]
        elif dataset in sources:
            part, source = ("base" if protocol == "base_to_new" else "source"), dataset
        else:
            continue
        rows.append({"protocol": protocol, **{k: r[k] for k in FRAME_COLUMNS if k in r}, "part": part,
                     "source": source, "dataset": dataset})  # fmt: skip
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def _row_keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(backbone, method, row label) in the frame's order (backbone, then baseline first)."""
    return list(dict.fromkeys(zip(frame["backbone"], frame["method"], frame["row"], strict=True)))


def _cell(r: Mapping[str, Any] | None, most_seeds: int) -> Cell | None:
    if r is None:
        return None
    few = int(r["n_seeds"]) if r["n_seeds"] < most_seeds else None
    return Cell(float(r["mean"]), float(r["std"]), False, few)


def base_to_new_tables(frame: pd.DataFrame) -> list[Table]:
    """Per shot: one table per dataset and one averaged over datasets; rows methods, columns B, N, H."""
    tables = []
    most = int(frame["n_seeds"].max()) if len(frame) else 0
    for shot in sorted(set(frame["shot"])):
        sub = frame[frame["shot"] == shot]
        keys = _row_keys(sub)
        datasets = list(dict.fromkeys(sub.loc[sub["part"] == "base", "dataset"]))
        by = {(r["backbone"], r["method"], r["dataset"]): r for r in sub.to_dict("records")}
        bases: dict[tuple[str, str], list[float]] = {}
        news: dict[tuple[str, str], list[float]] = {}
        for base in datasets:
            new = base.replace("@base", "@new")
            rows = []
            for backbone, method, label in keys:
                b, n = by.get((backbone, method, base)), by.get((backbone, method, new))
                h = None if b is None or n is None else Cell(harmonic_mean(b["mean"], n["mean"]))
                rows.append([label, _cell(b, most), _cell(n, most), h])
                for values, r in ((bases, b), (news, n)):
                    if r is not None:
                        values.setdefault((backbone, method), []).append(float(r["mean"]))
            title = f"{base.split('@')[0]}, {shot} shot" + ("s" if shot > 1 else "")
            tables.append(Table(title, ["Method", "Base", "New", "H"], rows, label=f"tab:b2n-{base}-{shot}"))
        if len(datasets) > 1:
            rows = []
            for backbone, method, label in keys:
                b = bases.get((backbone, method), [])
                n = news.get((backbone, method), [])
                if len(b) == len(n) == len(datasets):
                    s = base_to_new_summary(b, n)  # mean B and mean N over datasets, then H
                    rows.append([label, Cell(s["base"]), Cell(s["new"]), Cell(s["h"])])
                    continue
                # a method without New (the probe) or a dataset short: only complete averages
                mean_b = Cell(float(np.mean(b))) if len(b) == len(datasets) else None
                rows.append([label, mean_b, None, None])
            title = f"Average over {len(datasets)} datasets, {shot} shot" + ("s" if shot > 1 else "")
            tables.append(Table(title, ["Method", "Base", "New", "H"], rows, label=f"tab:b2n-average-{shot}"))
    return tables


def harmonic_plugplay_tables(frame: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> list[Table]:
    """The FMA paper's "Harmonic" columns: per backbone and dataset group, H of the group's mean
    Base and mean New, for the backbone and with each plug-and-play method ("+FMA"); per shot."""
    labels = group_labels(groups) if groups else {}
    tables = []
    for shot in sorted(set(frame["shot"])):
        sub = frame[(frame["shot"] == shot) & ((frame["method"] == BASELINE) | frame["plug_and_play"])]
        bases = list(dict.fromkeys(sub.loc[sub["part"] == "base", "dataset"]))
        members = {
            labels[name]: [d for d in bases if d.split("@")[0] in datasets]
            for name, datasets in groups.items()
        }
        members = {label: ds for label, ds in members.items() if ds} or {"Average": bases}
        methods = {}
        for r in sub[sub["method"] != BASELINE].to_dict("records"):
            methods.setdefault(r["method"], r["row"].split(" + ", 1)[-1])
        by = {(r["backbone"], r["method"], r["dataset"]): r["mean"] for r in sub.to_dict("records")}
        columns = ["Backbone"]
        for label in members:
            columns += [f"{label.replace(' avg', '')} H", *(f"+{m}" for m in methods.values())]
        rows = []
        for backbone in dict.fromkeys(sub["backbone"]):
            row: list[Cell | str | None] = [backbone_label(backbone)]
            for datasets in members.values():
                for method in [BASELINE, *methods]:
                    b = [by.get((backbone, method, d)) for d in datasets]
                    n = [by.get((backbone, method, d.replace("@base", "@new"))) for d in datasets]
                    if any(v is None for v in b + n):
                        row.append(None)
                        continue
                    row.append(Cell(base_to_new_summary(b, n)["h"]))
            rows.append(row)
        title = f"Plug-and-play, harmonic mean by dataset group, {shot} shot" + ("s" if shot > 1 else "")
        tables.append(Table(title, columns, rows, label=f"tab:b2n-plugplay-{shot}"))
    return tables


def transfer_tables(frame: pd.DataFrame) -> list[Table]:
    """Per (source, shot): rows methods, columns the source, every target, and the targets' average."""
    tables = []
    most = int(frame["n_seeds"].max()) if len(frame) else 0
    for (source, shot), sub in frame.groupby(["source", "shot"], sort=False):
        keys = _row_keys(sub)
        targets = list(dict.fromkeys(sub.loc[sub["part"] == "target", "dataset"]))
        by = {(r["backbone"], r["method"], r["dataset"]): r for r in sub.to_dict("records")}
        columns = ["Method", f"Source: {source}", *targets, "Average"]
        rows = []
        for backbone, method, label in keys:
            row: list[Cell | str | None] = [label, _cell(by.get((backbone, method, source)), most)]
            means = []
            for target in targets:
                r = by.get((backbone, method, target))
                row.append(_cell(r, most))
                means.append(math.nan if r is None else float(r["mean"]))
            row.append(Cell(float(np.mean(means))) if means and not any(map(math.isnan, means)) else None)
            rows.append(row)
        title = f"Trained on {source}, {shot} shot" + ("s" if shot > 1 else "")
        tables.append(Table(title, columns, rows, label=f"tab:transfer-{source}-{shot}"))
    return tables


def _caption(protocol: str, frame: pd.DataFrame) -> str:
    counts = sorted(set(frame["n_seeds"].astype(int)))
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    n += " seed" + ("s" if counts[-1] > 1 else "")
    common = (
        "FMA transports the target's test features with the velocity field trained on the source run, "
        "for the M chosen on the source's validation split. An empty cell: the method does not apply "
        "(a linear probe has no weights for classes it never saw)."
    ) + (f" {note}" if (note := shared_features_note(frame)) else "")
    if protocol == "base_to_new":
        return (
            f"Base-to-new generalization: test accuracy (%), mean ± std over {n} (sample std, ddof=1), "
            "of runs trained on the base half of each dataset's classes (Base) and of the same backbone "
            "and velocity field on the new half with the new class names (New); H is the harmonic mean "
            "of the seed-averaged Base and New. The average table averages Base and New over datasets, "
            "then takes H; the plug-and-play table does the same per dataset group (the FMA paper's "
            f"D(Harmonic) column), for each backbone alone and with each plug-and-play method. {common}"
        )
    what = "the other datasets" if protocol == "cross_dataset" else "the source's test-only variants"
    return (
        f"{HEADINGS[protocol]}: test accuracy (%), mean ± std over {n} (sample std, ddof=1), of runs "
        f"trained on the source dataset, on its own test split (Source) and on {what}; Average is the "
        f"mean over the targets. {common}"
    )


def write_protocol_report(
    protocol: str,
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    backbone_order: Sequence[str] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Write <protocol>.{csv,md,tex,html} into ``out_dir``; base-to-new also gets the plug-and-play
    table of H per dataset group (``groups``: name -> whole dataset names; none: one average)."""
    frame = protocol_frame(protocol, records, backbone_order)
    if protocol == "base_to_new":
        tables = base_to_new_tables(frame) + harmonic_plugplay_tables(frame, dict(groups or {}))
    else:
        tables = transfer_tables(frame)
    caption = _caption(protocol, frame)
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{protocol}.{ext}" for ext in ("csv", "md", "tex", "html")}
    source = "pipeline.report.protocols"
    write_csv(frame, paths["csv"])
    write_text(paths["md"], markdown(HEADINGS[protocol], caption, tables))
    write_text(paths["tex"], latex(caption, tables, source))
    write_text(paths["html"], html(HEADINGS[protocol], caption, tables, source))
    return paths
