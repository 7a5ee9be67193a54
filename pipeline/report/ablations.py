"""The ablation table from result records with a variant: one row per variant, plus every other
reading of the default variant's runs (the backbone itself, other step choices, diagnostics).

Per (backbone, dataset, shot) cell: test accuracy mean ± std over seeds, mean training wall time
and the mean number of steps M where the result has one. No method is named here: rows come from
the records' results and the variants' labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import InputError
from pipeline.report.records import BASELINE
from pipeline.report.render import Cell, Table, html, latex, markdown, write_csv, write_text
from pipeline.report.summary import backbone_label, long_table, seed_summary

DEFAULT_VARIANT = "default"
ABLATION_COLUMNS = (
    "row",  # display label
    "row_order",  # position of the row in its backbone's table
    "role",  # baseline | primary | variant | diagnostic
    "variant",
    "method",
    "backbone",
    "dataset",
    "shot",
    "mean",  # mean test accuracy (%) over seeds
    "std",  # sample std (ddof=1) over seeds, 0.0 for one seed
    "n_seeds",
    "seeds",
    "train_seconds",  # mean training wall time (s), online image encoding included; NaN for baselines
    "m_mean",  # mean number of Euler steps M over seeds, NaN when the result has none
)


def check_labels(labels: Any) -> dict[str, str]:
    """Validate a ``{variant name: display label}`` mapping."""
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InputError("variant labels: expected a JSON object mapping variant name to a label string")
    return dict(labels)


def _rows_of(long: pd.DataFrame, labels: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """The table's rows in order: (variant, method, role, label)."""
    variants = list(
        dict.fromkeys([v for v in labels if v in set(long["variant"])] + sorted(set(long["variant"])))
    )
    default = long[long["variant"] == DEFAULT_VARIANT]
    rows = []
    base = default[default["method"] == BASELINE]
    if len(base):
        rows.append((DEFAULT_VARIANT, BASELINE, "baseline", ""))
    for variant in variants:
        sub = long[(long["variant"] == variant) & (long["role"] == "primary")]
        for method in dict.fromkeys(sub["method"]):
            rows.append((variant, method, "primary", labels.get(variant, variant)))
    for role in ("variant", "diagnostic"):
        sub = default[default["role"] == role]
        for method, label in dict.fromkeys(zip(sub["method"], sub["label"], strict=True)):
            rows.append((DEFAULT_VARIANT, method, role, label))
    return rows


def build_ablation(
    records: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The ablation table in long form: one row per (backbone, dataset, shot, table row).

    Raises:
        InputError: no records, a record without a variant, or two records for the same (backbone,
            dataset, shot, seed, variant).
    """
    labels = dict(labels or {})
    if not records:
        raise InputError("no ablation records given")
    for rec in records:
        if not rec.get("variant"):
            raise InputError(f"{rec.get('path', '<record>')}: an ablation record needs a 'variant'")
    long = long_table(records, variant=True)
    out = []
    for backbone in dict.fromkeys(long["backbone"]):
        mine = long[long["backbone"] == backbone]
        for order, (variant, method, role, label) in enumerate(_rows_of(mine, labels)):
            sel = mine[(mine["variant"] == variant) & (mine["method"] == method)]
            text = f"{backbone_label(backbone)} (the backbone itself)" if role == "baseline" else label
            for (dataset, shot), g in sel.groupby(["dataset", "shot"], sort=False):
                stats, _ = seed_summary(g)
                out.append(
                    {
                        "row": text,
                        "row_order": order,
                        "role": role,
                        "variant": variant,
                        "method": method,
                        "backbone": backbone,
                        "dataset": dataset,
                        "shot": int(shot),
                        **stats,
                        "train_seconds": math.nan if role == "baseline" else float(g["train_seconds"].mean()),
                    }
                )
    return pd.DataFrame(out, columns=list(ABLATION_COLUMNS))


def _number(x: float, digits: int = 1) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.0f}" if float(x).is_integer() and digits == 0 else f"{x:.{digits}f}"


def ablation_tables(table: pd.DataFrame) -> list[Table]:
    """One table per backbone: a row per variant or reading, three columns per (dataset, shot)."""
    most_seeds = int(table["n_seeds"].max()) if len(table) else 0
    tables = []
    for backbone in dict.fromkeys(table["backbone"]):
        sub = table[table["backbone"] == backbone]
        cells = list(dict.fromkeys(zip(sub["dataset"], sub["shot"], strict=True)))
        several_shots = len({s for _, s in cells}) > 1
        with_m = bool(sub["m_mean"].notna().any())  # no M column for results without one
        columns = ["Variant"]
        for dataset, shot in cells:
            title = f"{dataset} {shot}-shot" if several_shots else dataset
            columns += [f"{title} acc", f"{title} train s"] + ([f"{title} M"] if with_m else [])
        rows: list[list[Cell | str | None]] = []
        rule_before: set[int] = set()
        roles: list[str] = []
        for order in sorted(set(sub["row_order"])):
            sel = sub[sub["row_order"] == order]
            first = sel.iloc[0]
            if first["role"] == "diagnostic" and "diagnostic" not in roles:
                rule_before.add(len(rows))  # diagnostics after a rule
            roles.append(first["role"])
            by_cell = {(r["dataset"], r["shot"]): r for r in sel.to_dict("records")}
            row: list[Cell | str | None] = [str(first["row"])]
            for cell in cells:
                r = by_cell.get(cell)
                if r is None:
                    row += [None] * (3 if with_m else 2)
                    continue
                few = int(r["n_seeds"]) if r["n_seeds"] < most_seeds else None
                row.append(Cell(r["mean"], r["std"], False, few, r["role"] == "diagnostic"))
                row.append(_number(r["train_seconds"]))
                if with_m:
                    row.append(_number(r["m_mean"], 0 if r["m_mean"] % 1 == 0 else 1))
            rows.append(row)
        tables.append(Table(f"Backbone: {backbone_label(backbone)}", columns, rows, rule_before))
    return tables


def _caption(table: pd.DataFrame) -> str:
    counts = sorted(set(table["n_seeds"].astype(int)))
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    n += " seed" + ("s" if counts[-1] > 1 else "")
    if not table["m_mean"].notna().any():  # variants of a stage-1 backbone: its own prediction
        return (
            f"Ablations: test accuracy (%), mean ± std over {n} (sample std, ddof=1), of the fitted "
            "backbone's own prediction for each variant of its training recipe; train s: mean "
            "fine-tuning wall time in seconds."
        )
    return (
        f"Ablations: test accuracy (%), mean ± std over {n} (sample std, ddof=1). acc: test accuracy "
        "of the row's reading (for a variant: at the number of Euler steps M chosen on the few-shot "
        "validation split); train s: mean training wall time in seconds (online variants include the "
        "time spent encoding fresh image views); M: mean M over seeds. The rows after the variants "
        "are other readings of the default variant's runs; italic rows are diagnostics that look at "
        "the test split (an M picked on test), never valid results."
    )


def write_ablation_report(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    labels: Mapping[str, str] | None = None,
    stem: str = "ablations",
) -> dict[str, Path]:
    """Write <stem>.csv (long form), <stem>.md, <stem>.tex and <stem>.html into ``out_dir``."""
    table = build_ablation(records, check_labels(labels or {}))
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex", "html")}
    tables = ablation_tables(table)
    caption = _caption(table)
    write_csv(table, paths["csv"])
    write_text(paths["md"], markdown("Ablations", caption, tables))
    write_text(paths["tex"], latex(caption, tables, "pipeline.report.ablations"))
    write_text(paths["html"], html("Ablations", caption, tables, "pipeline.report.ablations"))
    return paths
