"""Tests for the report: per-seed statistics, dataset averages, table writers and the figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import InputError
from pipeline.report.ablations import (
    ABLATION_COLUMNS,
    build_ablation,
    check_labels,
    format_ablation_latex,
    format_ablation_markdown,
    load_ablation_runs,
    write_ablation_report,
)
from pipeline.report.fewshot import (
    build_curves,
    build_long,
    format_latex,
    format_markdown,
    latex_escape,
    load_runs,
    summarize,
    write_report,
)

DATASETS = ("dtd", "caltech101")
SHOTS = (1, 4)
SEEDS = (1, 2, 3)
GROUPS = {"difficult": ["dtd", "eurosat"], "easy": ["caltech101", "oxford_pets"]}


def fma_record(dataset: str, shot: int, seed: int, rng: np.random.Generator, selected_m: int) -> dict:
    steps = list(range(6))
    test = (50 + 30 * rng.random(len(steps))).tolist()
    val = (50 + 30 * rng.random(len(steps))).tolist()
    oracle = int(np.argmax(test))
    return {
        "method": "fma",
        "backbone": "zeroshot",
        "dataset": dataset,
        "shot": shot,
        "seed": seed,
        "steps": steps,
        "val_acc": val,
        "test_acc": test,
        "test_dist": np.linspace(1.2, 0.3, len(steps)).tolist(),
        "selected_m": selected_m,
        "test_acc_at_m": test[selected_m],
        "zero_shot_test_acc": test[0],
        "oracle_m": oracle,
        "oracle_test_acc": test[oracle],
        "train_seconds": 1.0,
    }


def probe_record(dataset: str, shot: int, seed: int, rng: np.random.Generator) -> dict:
    return {
        "method": "linear_probe",
        "backbone": "zeroshot",
        "dataset": dataset,
        "shot": shot,
        "seed": seed,
        "C": 1.0,
        "val_acc": 60.0,
        "test_acc": float(40 + 50 * rng.random()),
    }


def write_runs(tmp_path) -> tuple[list, list, dict]:
    """Write 2 datasets x 2 shots x 3 seeds of FMA and probe JSONs; return paths and the records."""
    rng = np.random.default_rng(0)
    fma_paths, probe_paths, records = [], [], {}
    for dataset in DATASETS:
        for shot in SHOTS:
            for seed in SEEDS:
                # dtd/1-shot: seeds disagree on M (2/3/3); everything else picks M = 3.
                m = 2 if (dataset, shot, seed) == ("dtd", 1, 1) else 3
                fma = fma_record(dataset, shot, seed, rng, m)
                lp = probe_record(dataset, shot, seed, rng)
                records[(dataset, shot, seed)] = (fma, lp)
                f = tmp_path / "fma" / f"{dataset}_{shot}_{seed}.json"
                p = tmp_path / "probe" / f"{dataset}_{shot}_{seed}.json"
                for path, rec in ((f, fma), (p, lp)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(rec))
                fma_paths.append(f)
                probe_paths.append(p)
    return fma_paths, probe_paths, records


def _row(summary: pd.DataFrame, dataset: str, shot: int, method: str) -> pd.Series:
    sel = summary[(summary["dataset"] == dataset) & (summary["shot"] == shot) & (summary["method"] == method)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summary_mean_and_std_match_numpy(tmp_path):
    fma_paths, probe_paths, records = write_runs(tmp_path)
    summary = summarize(build_long(load_runs(fma_paths, probe_paths)), GROUPS)
    for dataset in DATASETS:
        for shot in SHOTS:
            fma = [records[(dataset, shot, s)][0] for s in SEEDS]
            lp = [records[(dataset, shot, s)][1] for s in SEEDS]
            expected = {
                "zero-shot": [r["zero_shot_test_acc"] for r in fma],
                "FMA": [r["test_acc_at_m"] for r in fma],
                "linear probe": [r["test_acc"] for r in lp],
            }
            for method, values in expected.items():
                row = _row(summary, dataset, shot, method)
                assert abs(row["mean"] - np.mean(values)) < 1e-9
                assert abs(row["std"] - np.std(values, ddof=1)) < 1e-9
                assert row["n_seeds"] == 3 and row["seeds"] == "1/2/3"
            oracle = _row(summary, dataset, shot, "FMA")["fma_oracle_test_acc"]
            assert abs(oracle - np.mean([r["oracle_test_acc"] for r in fma])) < 1e-9
    assert _row(summary, "dtd", 1, "FMA")["selected_m"] == "2/3/3"
    assert abs(_row(summary, "dtd", 1, "FMA")["selected_m_mean"] - 8 / 3) < 1e-9
    assert _row(summary, "dtd", 4, "FMA")["selected_m"] == "3"


def test_dataset_averages_and_groups(tmp_path):
    fma_paths, probe_paths, records = write_runs(tmp_path)
    summary = summarize(build_long(load_runs(fma_paths, probe_paths)), GROUPS)
    for shot in SHOTS:
        acc = {d: [records[(d, shot, s)][1]["test_acc"] for s in SEEDS] for d in DATASETS}
        avg = _row(summary, "Average", shot, "linear probe")
        assert abs(avg["mean"] - np.mean([np.mean(v) for v in acc.values()])) < 1e-9
        per_seed = np.mean([acc[d] for d in DATASETS], axis=0)  # (seeds,)
        assert abs(avg["std"] - np.std(per_seed, ddof=1)) < 1e-9
        assert avg["n_datasets"] == 2
        d_avg = _row(summary, "D avg", shot, "linear probe")
        e_avg = _row(summary, "E avg", shot, "linear probe")
        assert abs(d_avg["mean"] - np.mean(acc["dtd"])) < 1e-9 and d_avg["datasets"] == "dtd"
        assert abs(e_avg["mean"] - np.mean(acc["caltech101"])) < 1e-9
    # A group with no dataset present gives no row.
    summary = summarize(build_long(load_runs(fma_paths, probe_paths)), {**GROUPS, "other": ["sun397"]})
    assert not (summary["dataset"] == "O avg").any()


def test_markdown_and_latex_tables(tmp_path):
    fma_paths, probe_paths, _ = write_runs(tmp_path)
    summary = summarize(build_long(load_runs(fma_paths, probe_paths)), GROUPS)
    md = format_markdown(summary, GROUPS)
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Dataset",
        "Shots",
        "Zero-shot",
        "Linear probe",
        "FMA",
        "FMA M",
    ]
    assert "oracle" not in md.lower()
    assert "3 seeds" in md and "validation" in md
    dtd1 = next(line for line in md.splitlines() if line.startswith("| dtd | 1 |"))
    fma = _row(summary, "dtd", 1, "FMA")
    assert f"{fma['mean']:.1f} ± {fma['std']:.1f}" in dtd1 and "2/3/3" in dtd1
    lines = md.splitlines()
    assert lines.index(dtd1) < next(i for i, line in enumerate(lines) if line.startswith("| **Average**"))
    assert any(line.startswith("| **D avg** | 4 |") for line in lines)

    tex = format_latex(summary, GROUPS)
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"$\pm$" in tex and "±" not in tex
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert latex_escape("oxford_pets & 5%") == r"oxford\_pets \& 5\%"


def test_write_report_outputs_and_curves(tmp_path):
    fma_paths, probe_paths, records = write_runs(tmp_path)
    runs = load_runs(fma_paths, probe_paths)
    paths = write_report(runs, tmp_path / "out", GROUPS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "curves.png",
        "fewshot.csv",
        "fewshot.md",
        "fewshot.tex",
    ]
    png = paths["figure"].read_bytes()
    assert len(png) > 1000 and png[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(paths["csv"])
    assert {"fma_oracle_m", "fma_oracle_test_acc"} <= set(csv.columns)
    assert len(csv[csv["kind"] == "dataset"]) == len(DATASETS) * len(SHOTS) * 3

    curves = build_curves(runs)
    sel = curves[(curves["dataset"] == "dtd") & (curves["shot"] == 1)]
    val = np.mean([records[("dtd", 1, s)][0]["val_acc"] for s in SEEDS], axis=0)
    np.testing.assert_allclose(sel["val_acc"].to_numpy(), val, atol=1e-9)
    assert (sel["selected_m"] == 3).all()  # the most frequent M over seeds 2/3/3


def test_broken_or_wrong_json_names_the_file(tmp_path):
    fma_paths, probe_paths, _ = write_runs(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"method": "fma", ')
    with pytest.raises(InputError, match="broken.json"):
        load_runs([*fma_paths, broken], probe_paths)
    with pytest.raises(InputError, match="missing.json"):
        load_runs([tmp_path / "missing.json"], [])
    # A probe result passed as an FMA result.
    with pytest.raises(InputError, match=str(probe_paths[0].name)):
        load_runs([probe_paths[0]], [])
    # The same run twice.
    with pytest.raises(InputError, match="duplicates"):
        build_long(load_runs(fma_paths, [*probe_paths, probe_paths[0]]))


# ---------------------------------------------------------------------------------------------- ablations

VARIANTS = ("default", "no-noise", "online")
ABLATION_LABELS = {"default": "FMA (default)", "online": "online views"}  # "no-noise" keeps its name


def write_ablation_runs(tmp_path, datasets=DATASETS, shot: int = 4) -> tuple[list, dict]:
    """Per dataset x seed x variant an FMA JSON with a "variant" key; return paths and records."""
    rng = np.random.default_rng(1)
    paths, records = [], {}
    for dataset in datasets:
        for seed in SEEDS:
            for i, variant in enumerate(VARIANTS):
                rec = fma_record(dataset, shot, seed, rng, selected_m=1 + i + (seed == 3))
                rec["variant"] = variant
                rec["train_seconds"] = 10.0 * (i + 1) + seed
                records[(dataset, seed, variant)] = rec
                path = tmp_path / "ablations" / dataset / f"seed{seed}" / f"{variant}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec))
                paths.append(path)
    return paths, records


def test_ablation_rows_and_values(tmp_path):
    paths, records = write_ablation_runs(tmp_path)
    table = build_ablation(load_ablation_runs(paths), ABLATION_LABELS)
    assert set(table.columns) == set(ABLATION_COLUMNS)
    for dataset in DATASETS:
        sub = table[table["dataset"] == dataset]
        assert sub["row"].tolist() == [
            "zero-shot (M = 0)",
            "FMA (default)",
            "online views",
            "no-noise",
            "default, full trajectory (M = max_steps)",
            "default, oracle M picked on test (diagnostic)",
        ]
        assert sub["diagnostic"].tolist() == [False] * 5 + [True]
        rows = {r["row"]: r for r in sub.to_dict("records")}
        default = [records[(dataset, s, "default")] for s in SEEDS]
        online = [records[(dataset, s, "online")] for s in SEEDS]
        expected = {
            "zero-shot (M = 0)": [r["test_acc"][0] for r in default],
            "FMA (default)": [r["test_acc_at_m"] for r in default],
            "online views": [r["test_acc_at_m"] for r in online],
            "default, full trajectory (M = max_steps)": [r["test_acc"][-1] for r in default],
            "default, oracle M picked on test (diagnostic)": [r["oracle_test_acc"] for r in default],
        }
        for label, values in expected.items():
            assert abs(rows[label]["mean"] - np.mean(values)) < 1e-9, label
            assert abs(rows[label]["std"] - np.std(values, ddof=1)) < 1e-9, label
        assert abs(rows["online views"]["train_seconds"] - 32.0) < 1e-9  # 30 + mean seed 2
        assert abs(rows["online views"]["m_mean"] - (3 + 3 + 4) / 3) < 1e-9
        assert (
            np.isnan(rows["zero-shot (M = 0)"]["train_seconds"]) and rows["zero-shot (M = 0)"]["m_mean"] == 0
        )
        assert rows["default, full trajectory (M = max_steps)"]["m_mean"] == 5
        oracle_m = np.mean([r["oracle_m"] for r in default])
        assert abs(rows["default, oracle M picked on test (diagnostic)"]["m_mean"] - oracle_m) < 1e-9


def test_ablation_markdown_and_latex(tmp_path):
    paths, records = write_ablation_runs(tmp_path)
    table = build_ablation(load_ablation_runs(paths), ABLATION_LABELS)
    md = format_ablation_markdown(table)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Variant"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:4] == ["Variant", "caltech101 acc", "caltech101 train s", "caltech101 M"]
    assert len(cols) == 1 + 3 * len(DATASETS)
    oracle = next(line for line in lines if "oracle" in line and line.startswith("|"))
    assert oracle.startswith("| *default, oracle M picked on test (diagnostic)* |")
    assert lines.index(oracle) == len(lines) - 1  # the last row
    assert "DIAGNOSTIC" in md and "validation" in md
    online = next(line for line in lines if line.startswith("| online views |"))
    row = table[(table["dataset"] == "caltech101") & (table["row"] == "online views")].iloc[0]
    assert online.split("|")[2].strip() == f"{row['mean']:.1f} ± {row['std']:.1f}"
    assert online.split("|")[3].strip() == "32.0" and online.split("|")[4].strip() == "3.3"
    zero = next(line for line in lines if line.startswith("| zero-shot (M = 0) |"))
    assert zero.split("|")[3].strip() == "–" and zero.split("|")[4].strip() == "0"
    tex = format_ablation_latex(table)
    assert r"\textit{default, oracle M picked on test (diagnostic)}" in tex
    assert r"\multicolumn{3}{c}{caltech101}" in tex and "±" not in tex


def test_ablation_several_shots_missing_default_and_errors(tmp_path, caplog):
    paths, _ = write_ablation_runs(tmp_path, datasets=("dtd",), shot=1)
    paths4, _ = write_ablation_runs(tmp_path / "four", datasets=("dtd",), shot=4)
    no_default = [p for p in paths4 if p.name != "default.json"]
    table = build_ablation(load_ablation_runs([*paths, *no_default]))
    four = table[table["shot"] == 4]
    assert four["row"].tolist() == ["no-noise", "online"]  # no derived rows without a default run
    assert len(table[table["shot"] == 1]) == 6 and "no 'default' variant" in caplog.text
    md = format_ablation_markdown(table)
    assert "dtd 1-shot acc" in md and "dtd 4-shot acc" in md
    # Runs without a variant, or the same run twice, name the file.
    fewshot_run = tmp_path / "plain.json"
    plain = json.loads(paths[0].read_text())
    del plain["variant"]
    fewshot_run.write_text(json.dumps(plain))
    with pytest.raises(InputError, match="plain.json.*variant"):
        load_ablation_runs([fewshot_run])
    with pytest.raises(InputError, match="duplicates"):
        build_ablation(load_ablation_runs([*paths, paths[0]]))
    with pytest.raises(InputError, match="labels"):
        check_labels({"default": 3})


def test_write_ablation_report(tmp_path):
    paths, _ = write_ablation_runs(tmp_path)
    out = write_ablation_report(load_ablation_runs(paths), tmp_path / "out", ABLATION_LABELS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ablations.csv",
        "ablations.md",
        "ablations.tex",
    ]
    csv = pd.read_csv(out["csv"])
    assert len(csv) == 6 * len(DATASETS) and csv["diagnostic"].sum() == len(DATASETS)
    assert "| online views |" in out["markdown"].read_text()
