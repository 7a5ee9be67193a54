"""Smoke tests for the ablation-table stage CLI."""

from __future__ import annotations

import json

from test_report import ABLATION_LABELS, write_ablation_runs  # tests/ is on sys.path under pytest

from pipeline.make_ablations import main


def test_main_writes_ablation_tables(tmp_path, capsys):
    paths, _ = write_ablation_runs(tmp_path)
    out = tmp_path / "tables"
    argv = ["--runs", *map(str, paths), "--labels", json.dumps(ABLATION_LABELS), "--out-dir", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ablations.csv", "ablations.md", "ablations.tex"]
    md = (out / "ablations.md").read_text()
    assert "| FMA (default) |" in md and "| no-noise |" in md and "(diagnostic)*" in md
    captured = capsys.readouterr()
    assert captured.out == "" and str(out / "ablations.md") in captured.err


def test_main_malformed_run_exits_2_naming_the_file(tmp_path, capsys):
    paths, _ = write_ablation_runs(tmp_path)
    bad = tmp_path / "bad_variant.json"
    bad.write_text('{"method": "fma"')
    out = tmp_path / "tables"
    assert main(["--runs", *map(str, paths), str(bad), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad_variant.json" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["--runs", str(paths[0]), "--labels", "[1]", "--out-dir", str(out)]) == 2
    assert "labels" in capsys.readouterr().err
