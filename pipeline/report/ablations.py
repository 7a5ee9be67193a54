"""The FMA ablation table: one row per variant, test accuracy and training wall time per dataset."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import InputError
from pipeline.report.fewshot import (
    Cell,
    format_cell,
    is_number,
    join_values,
    latex_escape,
    read_run,
    seed_std,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- ablations

# An ablation run is an FMA result JSON with an extra "variant" key (train_fma --variant NAME).
DEFAULT_VARIANT = "default"
# Row kinds of the ablation table, in row order; the derived rows come from the default variant's runs.
ZERO_SHOT_ROW, VARIANT_ROW, FULL_ROW, ORACLE_ROW = "zero_shot", "variant", "full_trajectory", "oracle"
ABLATION_ROW_LABELS = {
    ZERO_SHOT_ROW: "zero-shot (M = 0)",
    FULL_ROW: "default, full trajectory (M = max_steps)",
    ORACLE_ROW: "default, oracle M picked on test (diagnostic)",
}
ABLATION_COLUMNS = (
    "row",  # display label
    "row_order",  # position of the row in the table (the same for a row in every dataset and shot)
    "kind",  # zero_shot | variant | full_trajectory | oracle
    "variant",  # the variant the numbers come from ("default" for the derived rows)
    "backbone",
    "dataset",
    "shot",
    "mean",  # mean test accuracy (%) over seeds
    "std",  # sample std (ddof=1) over seeds, 0.0 for one seed
    "n_seeds",
    "seeds",
    "train_seconds",  # mean training wall time (s), online image encoding included; NaN for zero-shot
    "m_mean",  # mean number of Euler steps M over seeds
    "diagnostic",  # True for the oracle row: M picked on the test split, not a valid result
)


def read_ablation_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ablation run: an FMA result JSON (``read_run``) with a ``"variant"`` name and
    ``"train_seconds"``.

    Raises:
        InputError: as ``read_run``, or a missing/invalid variant or train_seconds, naming the file.
    """
    run = read_run(path, "fma")
    variant = run.get("variant")
    if not isinstance(variant, str) or not variant:
        raise InputError(f"{path}: key 'variant' must be a non-empty string, got {variant!r}")
    if not is_number(run.get("train_seconds")):
        raise InputError(
            f"{path}: key 'train_seconds' must be a finite number, got {run.get('train_seconds')!r}"
        )
    return run


def load_ablation_runs(paths: Iterable[str | os.PathLike]) -> tuple[dict[str, Any], ...]:
    """Read every ablation run JSON (see ``read_ablation_run``)."""
    return tuple(read_ablation_run(p) for p in paths)


def check_labels(labels: Any) -> dict[str, str]:
    """Validate a ``{variant name: display label}`` mapping."""
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InputError("variant labels: expected a JSON object mapping variant name to a label string")
    return dict(labels)


def _variant_order(variants: Iterable[str], labels: Mapping[str, str]) -> list[str]:
    """The caller's label order first, then the rest: the default, then by name."""
    present = set(variants)
    listed = [v for v in labels if v in present]
    rest = sorted(present - set(listed), key=lambda v: (v != DEFAULT_VARIANT, v))
    return listed + rest


def _ablation_row(
    kind: str,
    label: str,
    order: int,
    variant: str,
    group: list[Mapping[str, Any]],
    acc: list[float],
    ms: list[float],
) -> dict[str, Any]:
    """One (backbone, dataset, shot) cell of a table row from the seeds' runs of ``variant``."""
    first = group[0]
    seconds = [r["train_seconds"] for r in group]
    return {
        "row": label,
        "row_order": order,
        "kind": kind,
        "variant": variant,
        "backbone": first["backbone"],
        "dataset": first["dataset"],
        "shot": int(first["shot"]),
        "mean": float(np.mean(acc)),
        "std": seed_std(acc),
        "n_seeds": len(group),
        "seeds": join_values(r["seed"] for r in group),
        "train_seconds": math.nan if kind == ZERO_SHOT_ROW else float(np.mean(seconds)),
        "m_mean": float(np.mean(ms)),
        "diagnostic": kind == ORACLE_ROW,
    }


def build_ablation(
    runs: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The ablation table in long form: one row per (backbone, dataset, shot, table row).

    Rows per (backbone, dataset, shot), in this order: "zero-shot (M = 0)" (the default variant's
    test_acc[0]); one row per variant (test accuracy at the M chosen on val); the default variant's
    full trajectory (test_acc[-1], M = max_steps); and the default variant's oracle (M picked on
    test: a diagnostic only). The derived rows are left out where no "default" run is present.

    Args:
        runs: records from ``load_ablation_runs``.
        labels: display label per variant name (the name itself when missing); its order sets the
            order of the variant rows (unlisted variants follow: the default, then by name).

    Returns:
        DataFrame with ``ABLATION_COLUMNS``, sorted by backbone, dataset, shot, then ``row_order``.

    Raises:
        InputError: no runs, or two files for the same (backbone, dataset, shot, seed, variant).
    """
    labels = dict(labels or {})
    if not runs:
        raise InputError("no ablation result JSONs given")
    cells: dict[tuple[str, str, int], dict[str, dict[int, Mapping[str, Any]]]] = {}
    for run in runs:
        cell = cells.setdefault((run["backbone"], run["dataset"], run["shot"]), {})
        by_seed = cell.setdefault(run["variant"], {})
        if run["seed"] in by_seed:
            raise InputError(f"{run['path']}: duplicates the result in {by_seed[run['seed']]['path']}")
        by_seed[run["seed"]] = run
    order = _variant_order((v for cell in cells.values() for v in cell), labels)
    full_order, oracle_order = len(order) + 1, len(order) + 2
    rows = []
    for key in sorted(cells):
        groups = {v: [by_seed[s] for s in sorted(by_seed)] for v, by_seed in cells[key].items()}
        default = groups.get(DEFAULT_VARIANT)
        if default is None:
            log.warning("%s/%s/%d-shot: no 'default' variant, so no zero-shot, full or oracle rows", *key)
        else:
            acc, ms = [r["test_acc"][0] for r in default], [r["steps"][0] for r in default]
            label = ABLATION_ROW_LABELS[ZERO_SHOT_ROW]
            rows.append(_ablation_row(ZERO_SHOT_ROW, label, 0, DEFAULT_VARIANT, default, acc, ms))
        for i, variant in enumerate(order, start=1):
            if variant in groups:
                group = groups[variant]
                acc, ms = [r["test_acc_at_m"] for r in group], [r["selected_m"] for r in group]
                label = labels.get(variant, variant)
                rows.append(_ablation_row(VARIANT_ROW, label, i, variant, group, acc, ms))
        if default is not None:
            acc, ms = [r["test_acc"][-1] for r in default], [r["steps"][-1] for r in default]
            label = ABLATION_ROW_LABELS[FULL_ROW]
            rows.append(_ablation_row(FULL_ROW, label, full_order, DEFAULT_VARIANT, default, acc, ms))
            acc, ms = [r["oracle_test_acc"] for r in default], [r["oracle_m"] for r in default]
            label = ABLATION_ROW_LABELS[ORACLE_ROW]
            rows.append(_ablation_row(ORACLE_ROW, label, oracle_order, DEFAULT_VARIANT, default, acc, ms))
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))


def _ablation_layout(table: pd.DataFrame) -> list[tuple[str, list[tuple[str, int]], list[int]]]:
    """Per backbone: its (dataset, shot) column cells and its row positions (``row_order``), in order."""
    out = []
    for backbone in dict.fromkeys(table["backbone"]):
        sub = table[table["backbone"] == backbone]
        cells = list(dict.fromkeys(zip(sub["dataset"], sub["shot"], strict=True)))
        out.append((backbone, cells, sorted(set(sub["row_order"].astype(int)))))
    return out


def _ablation_cell_title(dataset: str, shot: int, several_shots: bool) -> str:
    return f"{dataset} {shot}-shot" if several_shots else dataset


def _fmt_m(m: float) -> str:
    return "–" if math.isnan(m) else (f"{m:.0f}" if float(m).is_integer() else f"{m:.1f}")


def _fmt_seconds(s: float) -> str:
    return "–" if math.isnan(s) else f"{s:.1f}"


def _ablation_cells(
    table: pd.DataFrame, backbone: str, cells: list[tuple[str, int]], row: int, pm: str
) -> tuple[str, str, list[str]]:
    """(row kind, row label, [acc, train s, M] per cell) of the table row at position ``row``."""
    most_seeds = int(table["n_seeds"].max())
    sel = table[(table["backbone"] == backbone) & (table["row_order"] == row)]
    by_cell = {(r["dataset"], r["shot"]): r for r in sel.to_dict("records")}
    kind, label = sel["kind"].iloc[0], sel["row"].iloc[0]
    out = []
    for cell in cells:
        r = by_cell.get(cell)
        if r is None:
            out += ["–", "–", "–"]
            continue
        few = int(r["n_seeds"]) if r["n_seeds"] < most_seeds else None
        out.append(format_cell(Cell(r["mean"], r["std"], False, few), pm, ""))
        out += [_fmt_seconds(r["train_seconds"]), _fmt_m(r["m_mean"])]
    return kind, label, out


def _ablation_caption(table: pd.DataFrame) -> str:
    counts = sorted(set(table["n_seeds"].astype(int)))
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    n += " seed" + ("s" if counts[-1] > 1 else "")
    few_note = "; (n=k) marks a cell over fewer seeds" if len(counts) > 1 else ""
    return (
        f"FMA ablations: test accuracy (%), mean ± std over {n} (sample std, ddof=1; 0.0 for a single "
        f"seed{few_note}). acc: test accuracy at the number of Euler steps M chosen on the few-shot "
        "validation split; train s: mean training wall time in seconds (online variants include the time "
        "spent encoding fresh image views); M: mean M over seeds. Zero-shot is the backbone itself "
        "(M = 0); the full trajectory integrates the default net for max_steps steps. The oracle row "
        "picks M on the test split (the official code's protocol): a DIAGNOSTIC upper bound, not a valid "
        "result."
    )


def format_ablation_markdown(table: pd.DataFrame) -> str:
    """The ablation table as Markdown: one section per backbone, rows = variants, 3 columns per cell."""
    lines = ["# FMA ablations", "", _ablation_caption(table)]
    for backbone, cells, rows in _ablation_layout(table):
        several_shots = len({shot for _, shot in cells}) > 1
        header = ["Variant"]
        for dataset, shot in cells:
            title = _ablation_cell_title(dataset, shot, several_shots)
            header += [f"{title} acc", f"{title} train s", f"{title} M"]
        lines += ["", f"## Backbone: {backbone}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
        for row in rows:
            kind, label, values = _ablation_cells(table, backbone, cells, row, " ± ")
            if kind == ORACLE_ROW:
                label = f"*{label}*"
            lines.append("| " + " | ".join([label, *values]) + " |")
    return "\n".join(lines) + "\n"


def format_ablation_latex(table: pd.DataFrame) -> str:
    """The ablation table as LaTeX (booktabs): one ``table`` per backbone, the oracle row after a rule."""
    caption = latex_escape(_ablation_caption(table)).replace("±", r"$\pm$").replace("–", "--")
    out = ["% Generated by pipeline.report.fewshot; needs \\usepackage{booktabs}."]
    for backbone, cells, rows in _ablation_layout(table):
        several_shots = len({shot for _, shot in cells}) > 1
        top = ["Variant"]
        rules = []
        for i, (dataset, shot) in enumerate(cells):
            title = latex_escape(_ablation_cell_title(dataset, shot, several_shots))
            top.append(rf"\multicolumn{{3}}{{c}}{{{title}}}")
            rules.append(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}")
        out += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{Backbone {latex_escape(backbone)}. {caption}}}",
            rf"\label{{tab:ablations-{latex_escape(backbone)}}}",
            r"\begin{tabular}{l" + "rrr" * len(cells) + "}",
            r"\toprule",
            " & ".join(top) + r" \\",
            " ".join(rules),
            " & ".join(["", *(["acc", "train s", "$M$"] * len(cells))]) + r" \\",
            r"\midrule",
        ]
        for row in rows:
            kind, label, values = _ablation_cells(table, backbone, cells, row, r" $\pm$ ")
            label = latex_escape(label)
            if kind == ORACLE_ROW:
                out.append(r"\midrule")
                label = rf"\textit{{{label}}}"
            values = [v.replace("–", "--") for v in values]
            out.append(" & ".join([label, *values]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def write_ablation_report(
    runs: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, labels: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Write ablations.csv (long form), ablations.md and ablations.tex into ``out_dir``; return the paths."""
    table = build_ablation(runs, check_labels(labels or {}))
    out_dir = Path(out_dir)
    paths = {
        "csv": out_dir / "ablations.csv",
        "markdown": out_dir / "ablations.md",
        "latex": out_dir / "ablations.tex",
    }
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(format_ablation_markdown(table), encoding="utf-8")
    with atomic_path(paths["latex"]) as tmp:
        tmp.write_text(format_ablation_latex(table), encoding="utf-8")
    return paths
