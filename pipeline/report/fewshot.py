"""Merge per-run result JSONs (FMA, linear probe) into few-shot tables (CSV, Markdown, LaTeX) and Figure 5."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

# Method labels of the long table, in column order.
ZERO_SHOT, PROBE, FMA = "zero-shot", "linear probe", "FMA"
METHODS = (ZERO_SHOT, PROBE, FMA)
COLUMN_TITLES = {ZERO_SHOT: "Zero-shot", PROBE: "Linear probe", FMA: "FMA"}
AVERAGE = "Average"

FMA_KEYS = (
    "backbone",
    "dataset",
    "shot",
    "seed",
    "steps",
    "val_acc",
    "test_acc",
    "test_dist",
    "selected_m",
    "test_acc_at_m",
    "zero_shot_test_acc",
    "oracle_m",
    "oracle_test_acc",
)
PROBE_KEYS = ("backbone", "dataset", "shot", "seed", "test_acc")

SUMMARY_COLUMNS = (
    "kind",  # "dataset" or "average"
    "backbone",
    "dataset",  # dataset name, "Average" or a group label such as "D avg"
    "shot",
    "method",
    "mean",  # mean test accuracy (%) over seeds; for averages, the mean of per-dataset means
    "std",  # sample std (ddof=1) over seeds, 0.0 for one seed; NaN for an average with mixed seeds
    "n_seeds",
    "seeds",  # "1/2/3" ("mixed" for an average over datasets run with different seeds)
    "n_datasets",
    "datasets",
    "selected_m",  # FMA: M chosen on val, "3" if every seed agrees else per seed in seed order
    "selected_m_mean",
    "fma_oracle_m",  # DIAGNOSTIC ONLY: M picked by test accuracy (the official code's oracle)
    "fma_oracle_test_acc",  # DIAGNOSTIC ONLY: mean test accuracy at the oracle M
)


@dataclass(frozen=True)
class Runs:
    """Validated result records; each dict keeps its source file under ``"path"``."""

    fma: tuple[dict[str, Any], ...]
    probe: tuple[dict[str, Any], ...]


# ---------------------------------------------------------------------------------------------- reading


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_run(path: str | os.PathLike, method: str) -> dict[str, Any]:
    """Read and check one result JSON written by the FMA (``"fma"``) or probe (``"linear_probe"``) stage.

    Raises:
        InputError: a missing or unparsable file, a wrong ``method``, a missing key or a value of the
            wrong type; the one-line message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: result JSON not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    if data.get("method") != method:
        raise InputError(f"{path}: method is {data.get('method')!r}, expected {method!r}")
    keys = FMA_KEYS if method == "fma" else PROBE_KEYS
    missing = [k for k in keys if k not in data]
    if missing:
        raise InputError(f"{path}: missing key '{missing[0]}'")
    for key in ("backbone", "dataset"):
        if not isinstance(data[key], str) or not data[key]:
            raise InputError(f"{path}: key '{key}' must be a non-empty string")
    for key in ("shot", "seed"):
        if not _is_int(data[key]):
            raise InputError(f"{path}: key '{key}' must be an integer, got {data[key]!r}")
    scalars = ("test_acc",) if method != "fma" else ("test_acc_at_m", "zero_shot_test_acc", "oracle_test_acc")
    for key in scalars:
        if not is_number(data[key]):
            raise InputError(f"{path}: key '{key}' must be a finite number, got {data[key]!r}")
    if method == "fma":
        _check_fma_curves(path, data)
    return {**data, "path": str(path)}


def _check_fma_curves(path: Path, data: dict[str, Any]) -> None:
    steps = data["steps"]
    if not isinstance(steps, list) or not steps or not all(_is_int(s) for s in steps):
        raise InputError(f"{path}: key 'steps' must be a non-empty list of integers")
    for key in ("val_acc", "test_acc", "test_dist"):
        values = data[key]
        if not isinstance(values, list) or len(values) != len(steps) or not all(is_number(v) for v in values):
            raise InputError(f"{path}: key '{key}' must be a list of {len(steps)} finite numbers")
    for key in ("selected_m", "oracle_m"):
        if not _is_int(data[key]) or data[key] not in steps:
            raise InputError(f"{path}: key '{key}' ({data[key]!r}) is not one of the steps")
    at_m = data["test_acc"][steps.index(data["selected_m"])]
    if abs(at_m - data["test_acc_at_m"]) > 1e-6:
        log.warning("%s: test_acc_at_m %.4f differs from test_acc[M] %.4f", path, data["test_acc_at_m"], at_m)


def load_runs(fma_paths: Iterable[str | os.PathLike], probe_paths: Iterable[str | os.PathLike]) -> Runs:
    """Read every FMA and probe result JSON (see ``read_run``)."""
    fma = tuple(read_run(p, "fma") for p in fma_paths)
    probe = tuple(read_run(p, "linear_probe") for p in probe_paths)
    return Runs(fma=fma, probe=probe)


def check_groups(groups: Any) -> dict[str, list[str]]:
    """Validate a dataset-group mapping such as ``{"difficult": [...], "easy": [...]}``."""
    if not isinstance(groups, Mapping):
        raise InputError("dataset groups: expected a JSON object mapping group name to a list of datasets")
    for name, members in groups.items():
        if not isinstance(members, list) or not all(isinstance(d, str) for d in members):
            raise InputError(f"dataset group '{name}': expected a list of dataset names")
    return {str(k): list(v) for k, v in groups.items()}


def group_labels(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Row label per group: its initial ("difficult" -> "D avg"), or the full name if initials clash."""
    initials = [name[:1].upper() for name in groups]
    if len(set(initials)) == len(initials):
        return {name: f"{initial} avg" for name, initial in zip(groups, initials, strict=True)}
    return {name: f"{name} avg" for name in groups}


# ---------------------------------------------------------------------------------------------- tables


def build_long(runs: Runs) -> pd.DataFrame:
    """One row per (backbone, dataset, shot, seed, method) with its test accuracy (%).

    Zero-shot rows come from the FMA runs (their accuracy at M = 0, the backbone itself).

    Raises:
        InputError: two files giving the same (backbone, dataset, shot, seed, method), naming both.
    """
    rows = []
    for run in runs.fma:
        base = {k: run[k] for k in ("backbone", "dataset", "shot", "seed")}
        rows.append(
            {**base, "method": ZERO_SHOT, "test_acc": float(run["zero_shot_test_acc"]), "path": run["path"]}
        )
        rows.append(
            {
                **base,
                "method": FMA,
                "test_acc": float(run["test_acc_at_m"]),
                "selected_m": run["selected_m"],
                "oracle_m": run["oracle_m"],
                "oracle_test_acc": float(run["oracle_test_acc"]),
                "path": run["path"],
            }
        )
    for run in runs.probe:
        base = {k: run[k] for k in ("backbone", "dataset", "shot", "seed")}
        rows.append({**base, "method": PROBE, "test_acc": float(run["test_acc"]), "path": run["path"]})
    columns = ["backbone", "dataset", "shot", "seed", "method", "test_acc", "selected_m", "oracle_m"]
    columns += ["oracle_test_acc", "path"]
    long = pd.DataFrame(rows, columns=columns)
    for col in ("selected_m", "oracle_m"):
        long[col] = long[col].astype("Int64")
    key = ["backbone", "dataset", "shot", "seed", "method"]
    dup = long[long.duplicated(key, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        paths = dup[(dup[key] == first[key]).all(axis=1)]["path"].tolist()
        raise InputError(f"{paths[1]}: duplicates the result in {paths[0]}")
    long["_order"] = long["method"].map({m: i for i, m in enumerate(METHODS)})
    long = long.sort_values(["backbone", "dataset", "shot", "_order", "seed"], kind="stable")
    return long.drop(columns="_order").reset_index(drop=True)


def seed_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1) over seeds; 0.0 for a single seed."""
    return float(np.std(np.asarray(values, dtype=float), ddof=1)) if len(values) > 1 else 0.0


def join_values(values: Iterable[Any]) -> str:
    return "/".join(str(v) for v in values)


def _m_summary(ms: Sequence[int]) -> str:
    """'3' when every seed agrees, else the per-seed values in seed order ('2/3/3')."""
    return str(ms[0]) if len(set(ms)) == 1 else join_values(ms)


def _dataset_rows(long: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (backbone, dataset, shot, method), g in long.groupby(
        ["backbone", "dataset", "shot", "method"], sort=False
    ):
        g = g.sort_values("seed")
        acc = g["test_acc"].to_numpy(dtype=float)
        row = {
            "kind": "dataset",
            "backbone": backbone,
            "dataset": dataset,
            "shot": int(shot),
            "method": method,
            "mean": float(acc.mean()),
            "std": seed_std(acc),
            "n_seeds": len(acc),
            "seeds": join_values(g["seed"]),
            "n_datasets": 1,
            "datasets": dataset,
            "selected_m": "",
            "selected_m_mean": math.nan,
            "fma_oracle_m": "",
            "fma_oracle_test_acc": math.nan,
            "_per_seed": dict(zip(g["seed"].tolist(), acc.tolist(), strict=True)),
        }
        if method == FMA:
            ms = [int(m) for m in g["selected_m"]]
            row["selected_m"] = _m_summary(ms)
            row["selected_m_mean"] = float(np.mean(ms))
            row["fma_oracle_m"] = _m_summary([int(m) for m in g["oracle_m"]])
            row["fma_oracle_test_acc"] = float(g["oracle_test_acc"].mean())
        rows.append(row)
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
        "kind": "average",
        "backbone": first["backbone"],
        "dataset": label,
        "shot": first["shot"],
        "method": first["method"],
        "mean": float(np.mean([m["mean"] for m in members])),
        "std": std,
        "n_seeds": n_seeds,
        "seeds": seeds_text,
        "n_datasets": len(members),
        "datasets": join_values(m["dataset"] for m in members),
        "selected_m": "",
        "selected_m_mean": float(np.mean([m["selected_m_mean"] for m in members])),
        "fma_oracle_m": "",
        "fma_oracle_test_acc": float(np.mean([m["fma_oracle_test_acc"] for m in members])),
    }


def summarize(long: pd.DataFrame, groups: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Mean and std over seeds per (backbone, dataset, shot, method), then dataset averages.

    Average rows per (backbone, shot, method): "Average" over every dataset present, and one row per
    group (labelled by ``group_labels``) over the group's datasets that are present; a group with
    none present is skipped.

    Returns:
        DataFrame with ``SUMMARY_COLUMNS``; dataset rows first (sorted by backbone, dataset, shot,
        method), then average rows ("Average", then groups in mapping order).
    """
    groups = dict(groups or {})
    labels = group_labels(groups)
    rows = _dataset_rows(long)
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["backbone"], row["shot"], row["method"]), []).append(row)
    averages = []
    for (_backbone, _shot, _method), members in cells.items():
        averages.append(_average_row(AVERAGE, members))
        for name, datasets in groups.items():
            present = [m for m in members if m["dataset"] in datasets]
            if present:
                averages.append(_average_row(labels[name], present))
    label_order = {label: i for i, label in enumerate([AVERAGE, *labels.values()])}
    method_order = {m: i for i, m in enumerate(METHODS)}
    averages.sort(
        key=lambda r: (r["backbone"], label_order[r["dataset"]], r["shot"], method_order[r["method"]])
    )
    summary = pd.DataFrame([{k: r[k] for k in SUMMARY_COLUMNS} for r in rows + averages])
    return summary.reindex(columns=list(SUMMARY_COLUMNS))


# ---------------------------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    partial: bool  # an average over fewer datasets than another method's in the same row
    few_seeds: int | None  # its number of seeds when fewer than the table's most, else None


def _wide_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of the wide table: backbone, kind, dataset, shot, one ``Cell`` (or None) per method, M."""
    out = []
    most_seeds = int(summary["n_seeds"].max()) if len(summary) else 0
    for (backbone, kind, dataset, shot), g in summary.groupby(
        ["backbone", "kind", "dataset", "shot"], sort=False
    ):
        by_method = {r["method"]: r for r in g.to_dict("records")}
        most = max(r["n_datasets"] for r in by_method.values())
        row: dict[str, Any] = {"backbone": backbone, "kind": kind, "dataset": dataset, "shot": int(shot)}
        for method in METHODS:
            r = by_method.get(method)
            if r is None:
                row[method] = None
                continue
            few = int(r["n_seeds"]) if r["n_seeds"] < most_seeds and not math.isnan(r["std"]) else None
            row[method] = Cell(r["mean"], r["std"], r["n_datasets"] < most, few)
        fma = by_method.get(FMA)
        row["m"] = ""
        if fma is not None and kind == "dataset":
            m = fma["selected_m"]
            row["m"] = m if "/" not in m else f"{m} ({fma['selected_m_mean']:.1f})"
        out.append(row)
    return out


def _caption(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> str:
    counts = sorted(set(summary.loc[summary["kind"] == "dataset", "n_seeds"].astype(int)))
    if not counts:
        n = "0 seeds"
    elif len(counts) == 1:
        n = f"{counts[0]} seed" + ("s" if counts[0] > 1 else "")
    else:
        n = f"{counts[0]}–{counts[-1]} seeds"
    few_note = "; (n=k) marks a cell over fewer seeds" if len(counts) > 1 else ""
    labels = group_labels(groups)
    group_text = "; ".join(f"{labels[k]}: {k} datasets ({', '.join(v)})" for k, v in groups.items())
    return (
        f"Test accuracy (%), mean ± std over {n} (sample std, ddof=1; 0.0 for a single seed{few_note}). "
        "Zero-shot is the backbone itself (FMA at M = 0). FMA's number of Euler steps M is chosen on the "
        "few-shot validation split; FMA M lists it per seed in seed order when seeds disagree (mean in "
        "brackets). Averages are means of per-dataset means over the datasets present, with std over "
        "per-seed averages (omitted when datasets have different seeds); † marks an average over fewer "
        "datasets than another method's in the same row." + (f" {group_text}." if group_text else "")
    )


def format_cell(cell: Cell | None, pm: str, dagger: str) -> str:
    if cell is None:
        return "–"
    text = f"{cell.mean:.1f}" if math.isnan(cell.std) else f"{cell.mean:.1f}{pm}{cell.std:.1f}"
    if cell.few_seeds is not None:
        text += f" (n={cell.few_seeds})"
    return text + (dagger if cell.partial else "")


def write_csv(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the long summary (one row per backbone, dataset, shot, method) atomically."""
    with atomic_path(path) as tmp:
        summary.to_csv(tmp, index=False)


def format_markdown(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """The wide table as Markdown: one section per backbone, rows (dataset, shots), averages last."""
    groups = dict(groups or {})
    header = ["Dataset", "Shots", *(COLUMN_TITLES[m] for m in METHODS), "FMA M"]
    lines = ["# Few-shot test accuracy", "", _caption(summary, groups)]
    rows = _wide_rows(summary)
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        lines += ["", f"## Backbone: {backbone}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---", "--:"] + ["--:"] * (len(header) - 2)) + "|")
        for r in rows:
            if r["backbone"] != backbone:
                continue
            name = r["dataset"] if r["kind"] == "dataset" else f"**{r['dataset']}**"
            cells = [format_cell(r[m], " ± ", "†") for m in METHODS]
            lines.append("| " + " | ".join([name, str(r["shot"]), *cells, r["m"] or "–"]) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(
    summary: pd.DataFrame, path: str | os.PathLike, groups: Mapping[str, Sequence[str]] | None = None
) -> None:
    """Write ``format_markdown`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(format_markdown(summary, groups), encoding="utf-8")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def format_latex(summary: pd.DataFrame, groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """The wide table as LaTeX (booktabs): one ``table`` per backbone, averages after a midrule."""
    groups = dict(groups or {})
    caption = latex_escape(_caption(summary, groups))
    caption = caption.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("–", "--")
    header = ["Dataset", "Shots", *(COLUMN_TITLES[m] for m in METHODS), "FMA $M$"]
    out = ["% Generated by pipeline.report.fewshot; needs \\usepackage{booktabs}."]
    rows = _wide_rows(summary)
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        out += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{Backbone {latex_escape(backbone)}. {caption}}}",
            rf"\label{{tab:fewshot-{latex_escape(backbone)}}}",
            r"\begin{tabular}{lrrrrl}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
        ]
        previous_kind = "dataset"
        for r in rows:
            if r["backbone"] != backbone:
                continue
            if r["kind"] != previous_kind:
                out.append(r"\midrule")
                previous_kind = r["kind"]
            cells = [format_cell(r[m], r" $\pm$ ", r"$^\dagger$").replace("–", "--") for m in METHODS]
            m = latex_escape(r["m"]) or "--"
            out.append(" & ".join([latex_escape(r["dataset"]), str(r["shot"]), *cells, m]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def write_latex(
    summary: pd.DataFrame, path: str | os.PathLike, groups: Mapping[str, Sequence[str]] | None = None
) -> None:
    """Write ``format_latex`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(format_latex(summary, groups), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- figure


def build_curves(runs: Runs) -> pd.DataFrame:
    """Figure 5 data: per (backbone, dataset, shot, step), val/test accuracy and test distance averaged
    over seeds, with ``selected_m`` = the M chosen most often over seeds (ties to the smaller M).

    Raises:
        InputError: seeds of one (backbone, dataset, shot) reporting different step lists.
    """
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs.fma:
        grouped.setdefault((run["backbone"], run["dataset"], run["shot"]), []).append(run)
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
        ax.set_title(f"{dataset} ({backbone})" if several_backbones else dataset)
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


def write_report(
    runs: Runs, out_dir: str | os.PathLike, groups: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Path]:
    """Write fewshot.csv, fewshot.md, fewshot.tex and curves.png into ``out_dir``; return their paths."""
    groups = check_groups(groups or {})
    out_dir = Path(out_dir)
    if not runs.fma and not runs.probe:
        raise InputError("no result JSONs given")
    summary = summarize(build_long(runs), groups)
    paths = {
        "csv": out_dir / "fewshot.csv",
        "markdown": out_dir / "fewshot.md",
        "latex": out_dir / "fewshot.tex",
        "figure": out_dir / "curves.png",
    }
    write_csv(summary, paths["csv"])
    write_markdown(summary, paths["markdown"], groups)
    write_latex(summary, paths["latex"], groups)
    plot_curves(build_curves(runs), paths["figure"])
    return paths
