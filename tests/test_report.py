"""Result records -> tables: record checks, seed statistics, main and plug-and-play tables, curves,
ablations; a new stage-2 method shows up without any change to the report code."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import InputError
from pipeline.report.ablations import build_ablation, write_ablation_report
from pipeline.report.records import Result, baseline_result, build_record, read_record, write_record
from pipeline.report.render import Cell, Table, format_cell, html
from pipeline.report.summary import long_table, shared_features_note, summarize
from pipeline.report.tables import main_tables, plugplay_frame, write_fewshot_report

GROUPS = {"difficult": ["hard"], "easy": ["easy"]}


def fma_record(backbone, dataset, shot, seed, base, fma, m=3, variant=None, steps=5):
    curve = list(np.linspace(base, fma, steps))
    return build_record(
        stage="fma",
        run={"backbone": backbone, "dataset": dataset, "shot": shot, "seed": seed},
        results=[
            baseline_result(base, base + 1),
            Result("fma", "FMA", "primary", fma, fma + 1, True, {"m": m}),
            Result("fma_oracle", "FMA, oracle M", "diagnostic", fma + 2, None, info={"m": 4}),
        ],
        config={},
        curves={
            "x": "step",
            "step": list(range(steps)),
            "val_acc": curve,
            "test_acc": curve,
            "test_dist": list(np.linspace(1.0, 0.5, steps)),
        },
        timing={"train_seconds": 2.0},
        variant=variant,
    )


def probe_record(backbone, dataset, shot, seed, acc):
    run = {"backbone": backbone, "dataset": dataset, "shot": shot, "seed": seed}
    result = Result("linear_probe", "linear probe", "primary", acc, acc)
    return build_record(stage="linear_probe", run=run, results=[result], config={})


def grid(tmp_path: Path) -> list[dict]:
    """zeroshot and coop on two datasets, shots 1 and 4, seeds 1-3; numbers chosen to check means."""
    records = []
    for b, lift in (("zeroshot", 0.0), ("coop", 10.0)):
        for d, base in (("hard", 30.0), ("easy", 70.0)):
            for shot in (1, 4):
                for seed in (1, 2, 3):
                    acc = base + lift + shot + seed
                    records.append(fma_record(b, d, shot, seed, acc, acc + 5, m=seed))
                    records.append(probe_record(b, d, shot, seed, acc + 1))
    paths = []
    for i, rec in enumerate(records):
        path = tmp_path / f"r{i}.json"
        write_record(path, rec)
        paths.append(path)
    return [read_record(p) for p in paths]


def test_summary_means_std_groups_and_order(tmp_path: Path) -> None:
    summary = summarize(long_table(grid(tmp_path)), GROUPS, ["zeroshot", "coop"])
    row = summary[(summary.backbone == "coop") & (summary.method == "fma") & (summary.dataset == "hard")]
    row = row[row["shot"] == 4].iloc[0]
    accs = [30 + 10 + 4 + s + 5 for s in (1, 2, 3)]
    assert row["mean"] == pytest.approx(np.mean(accs)) and row["std"] == pytest.approx(np.std(accs, ddof=1))
    assert row["row"] == "CoOp + FMA" and row["m"] == "1/2/3" and row["m_mean"] == pytest.approx(2.0)
    avg = summary[(summary.backbone == "zeroshot") & (summary.method == "backbone") & (summary.shot == 1)]
    by_label = avg.set_index("dataset")["mean"]
    assert by_label["Average"] == pytest.approx((33 + 73) / 2)  # means of 32..34 and 72..74
    assert by_label["D avg"] == pytest.approx(33.0) and by_label["E avg"] == pytest.approx(73.0)
    assert summary["backbone"].tolist().index("coop") > summary["backbone"].tolist().index("zeroshot")
    first = summary[summary.backbone == "zeroshot"].iloc[0]
    assert first["method"] == "backbone" and first["row"] == "Zero-shot CLIP"


def test_main_and_plugplay_tables(tmp_path: Path) -> None:
    records = grid(tmp_path)
    summary = summarize(long_table(records), GROUPS, ["zeroshot", "coop"])
    tables = main_tables(summary, GROUPS)
    assert [t.title for t in tables] == ["hard (D)", "easy (E)", "Average", "D avg", "E avg"]
    labels = [row[0] for row in tables[0].rows]
    assert labels == [
        "Zero-shot CLIP", "Zero-shot CLIP + FMA", "Zero-shot CLIP + linear probe",
        "CoOp", "CoOp + FMA", "CoOp + linear probe",
    ]  # fmt: skip
    assert "FMA, oracle M" not in " ".join(labels)  # diagnostics stay out of the main table
    assert tables[0].columns == ["Method", "1 shot", "4 shots"] and tables[0].rule_before == {3}
    frame = plugplay_frame(summary, GROUPS)
    coop_d = frame[(frame.backbone == "coop") & (frame.group == "D avg") & (frame.shot == 4)]
    assert set(coop_d["method"]) == {"backbone", "fma"}  # only plug-and-play results beside the baseline
    fma = coop_d[coop_d.method == "fma"]["mean"].iloc[0]
    assert fma == pytest.approx(np.mean([49 + s for s in (1, 2, 3)]))
    everything = frame[(frame.backbone == "coop") & (frame.shot == "all") & (frame.group == "D avg")]
    assert everything[everything.method == "fma"]["mean"].iloc[0] == pytest.approx(np.mean([48, 51]))


def test_the_caption_names_backbones_whose_probe_is_another_ones() -> None:
    """CoOp and CoCoOp keep zero-shot CLIP's image features: with zero-shot CLIP's probe row and none
    of their own, the caption says whose row is theirs; a backbone with its own image features and no
    probe row (CLIP-LoRA here), or no probe at all, gets no sentence."""
    rows = [("zeroshot", "linear_probe", "Zero-shot CLIP + linear probe")]
    rows += [(b, "backbone", b) for b in ("zeroshot", "coop", "cocoop", "clip_lora")]
    frame = pd.DataFrame(rows, columns=["backbone", "method", "row"])
    assert shared_features_note(frame) == (
        "CoOp and CoCoOp keep Zero-shot CLIP's image features, so their linear probe is the "
        "Zero-shot CLIP + linear probe row."
    )
    only_coop = frame[frame.backbone.isin(["zeroshot", "coop"])]
    assert shared_features_note(only_coop).startswith(
        "CoOp keeps Zero-shot CLIP's"
    ) and "so its linear probe" in (shared_features_note(only_coop))
    assert shared_features_note(frame[frame.method == "backbone"]) == ""  # no probe row at all
    with_own = pd.concat(
        [frame, pd.DataFrame([("coop", "linear_probe", "CoOp + linear probe")], columns=frame.columns)]
    )
    assert shared_features_note(with_own).startswith("CoCoOp keeps")  # CoOp has its own row


def test_report_files(tmp_path: Path) -> None:
    paths = write_fewshot_report(grid(tmp_path), tmp_path / "out", GROUPS, ["zeroshot", "coop"])
    md = paths["fewshot.md"].read_text()
    assert "## hard (D)" in md and "| CoOp + FMA |" in md and "(M 1/2/3)" in md
    pp = paths["plugplay.md"].read_text()
    assert "| Backbone | D avg | +FMA | E avg | +FMA |" in pp and "Averaged over all shots" in pp
    tex = paths["fewshot.tex"].read_text()
    assert "\\begin{tabular}{lrr}" in tex and "$\\pm$" in tex
    csv = pd.read_csv(paths["fewshot.csv"])
    assert {"row", "mean", "std", "m"} <= set(csv.columns)
    assert paths["curves.png"].stat().st_size > 1000


class _Rows(HTMLParser):
    """The text of every table row of an HTML page, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_rows(page: str) -> list[list[str]]:
    parser = _Rows()
    parser.feed(page)
    return parser.rows


def markdown_rows(md: str) -> list[list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    return [[c.strip().strip("*") for c in row] for row in rows]


def test_html_pages_hold_the_markdown_tables(tmp_path: Path) -> None:
    """Cell for cell the same text as the Markdown, on a page that loads nothing from elsewhere."""
    paths = write_fewshot_report(grid(tmp_path), tmp_path / "out", GROUPS, ["zeroshot", "coop"])
    for name in ("fewshot", "plugplay"):
        page = paths[f"{name}.html"].read_text()
        assert html_rows(page) == markdown_rows(paths[f"{name}.md"].read_text()), name
        assert not any(s in page for s in ("<script", "<link", "src=", "http")), name
    page = paths["fewshot.html"].read_text()
    assert "<h2>hard (D)</h2>" in page and "(M 1/2/3)" in page and 'class="block"' in page
    assert "mean ± std over 3 seeds" in page  # the caption


def test_html_cells_are_escaped_and_marked() -> None:
    table = Table("a <b> & c", ["Method", "1 shot"], [["x < y", Cell(50.0, 1.0, italic=True)], ["z", None]])
    page = html("H & H", "cap <i>", [table], "test")
    assert "<h2>a &lt;b&gt; &amp; c</h2>" in page and "<title>H &amp; H</title>" in page
    assert '<th scope="row">x &lt; y</th><td><em>50.0 ± 1.0</em></td>' in page.replace("\n", "")
    assert '<td class="empty">–</td>' in page and "cap &lt;i&gt;" in page
    with pytest.raises(ValueError, match="choose from md, tex, html"):
        format_cell(None, "rst")


def test_a_new_method_needs_no_report_change(tmp_path: Path) -> None:
    """A stage-2 method the report has never heard of gets its rows, and its plug-and-play column."""
    records = grid(tmp_path)
    for seed in (1, 2, 3):
        run = {"backbone": "coop", "dataset": "hard", "shot": 4, "seed": seed}
        new = Result("tip_adapter", "Tip-Adapter", "primary", 60.0 + seed, None, True)
        records.append(build_record(stage="tip_adapter", run=run, results=[new], config={}))
    summary = summarize(long_table(records), GROUPS, ["zeroshot", "coop"])
    rows = [r[0] for r in main_tables(summary, GROUPS)[0].rows]
    assert "CoOp + Tip-Adapter" in rows
    frame = plugplay_frame(summary, GROUPS)
    assert frame[(frame.method == "tip_adapter") & (frame.shot == 4)]["mean"].iloc[0] == pytest.approx(62.0)


def test_duplicates_and_bad_records_name_the_file(tmp_path: Path) -> None:
    records = grid(tmp_path)
    with pytest.raises(InputError, match="duplicates the result 'backbone'"):
        long_table([*records, records[0]])
    bad = tmp_path / "bad.json"
    for content, needle in (
        ("{not json", "not valid JSON"),
        (json.dumps({**records[0], "schema": 9}), "schema"),
        (json.dumps({**records[0], "shot": "four"}), "'shot'"),
        (json.dumps({**records[0], "results": []}), "'results'"),
    ):
        bad.write_text(content)
        with pytest.raises(InputError, match=needle) as err:
            read_record(bad)
        assert "bad.json" in str(err.value)
    rec = json.loads(json.dumps(records[0]))
    rec["results"][1]["test_acc"] = math.inf
    bad.write_text(json.dumps(rec).replace("Infinity", "1e999"))
    with pytest.raises(InputError, match="test_acc"):
        read_record(bad)
    rec = json.loads(json.dumps(records[0]))
    rec["curves"]["test_acc"] = [1.0]
    bad.write_text(json.dumps(rec))
    with pytest.raises(InputError, match="curve 'test_acc'"):
        read_record(bad)


def test_ablation_rows(tmp_path: Path) -> None:
    records = []
    for seed in (1, 2, 3):
        records.append(fma_record("zeroshot", "hard", 16, seed, 40.0, 60.0 + seed, m=6, variant="default"))
        records.append(fma_record("zeroshot", "hard", 16, seed, 40.0, 50.0, m=2, variant="noise"))
    table = build_ablation(records, {"default": "FMA (defaults)", "noise": "paper noise"})
    assert table["row"].tolist() == [
        "Zero-shot CLIP (the backbone itself)", "FMA (defaults)", "paper noise", "FMA, oracle M",
    ]  # fmt: skip
    default = table[table.row == "FMA (defaults)"].iloc[0]
    assert (
        default["mean"] == pytest.approx(62.0) and default["m_mean"] == 6 and default["train_seconds"] == 2.0
    )
    assert table[table.role == "diagnostic"]["mean"].iloc[0] == pytest.approx(64.0)
    paths = write_ablation_report(records, tmp_path, {"default": "FMA (defaults)", "noise": "paper noise"})
    md = paths["md"].read_text()
    assert "| paper noise |" in md and "*64.0 ± 1.0*" in md
    assert html_rows(paths["html"].read_text()) == markdown_rows(md)
    assert "<em>64.0 ± 1.0</em>" in paths["html"].read_text()
    with pytest.raises(InputError, match="variant"):
        build_ablation([fma_record("zeroshot", "hard", 16, 1, 40.0, 60.0)])
