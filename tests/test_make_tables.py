"""Smoke tests for the tables stage CLI."""

from __future__ import annotations

import json

from test_report import GROUPS, write_runs  # tests/ is on sys.path under pytest's default import mode

from pipeline.make_tables import main


def test_main_writes_tables_and_figure(tmp_path, capsys):
    fma_paths, probe_paths, _ = write_runs(tmp_path)
    out = tmp_path / "tables"
    argv = ["--fma", *map(str, fma_paths), "--probe", *map(str, probe_paths)]
    argv += ["--groups", json.dumps(GROUPS), "--out-dir", str(out)]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["curves.png", "fewshot.csv", "fewshot.md", "fewshot.tex"]
    md = (out / "fewshot.md").read_text()
    assert "| **D avg** |" in md and "| **E avg** |" in md and "FMA M" in md
    captured = capsys.readouterr()
    assert captured.out == ""  # logs only, on stderr
    assert str(out / "fewshot.md") in captured.err and str(out / "curves.png") in captured.err


def test_main_broken_json_exits_2_naming_the_file(tmp_path, capsys):
    fma_paths, probe_paths, _ = write_runs(tmp_path)
    bad = tmp_path / "bad_probe.json"
    bad.write_text("not json")
    out = tmp_path / "tables"
    argv = ["--fma", *map(str, fma_paths), "--probe", str(bad), "--out-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bad_probe.json" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_main_bad_groups_exits_2(tmp_path, capsys):
    fma_paths, _, _ = write_runs(tmp_path)
    argv = ["--fma", str(fma_paths[0]), "--groups", '{"difficult": "dtd"}', "--out-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "difficult" in capsys.readouterr().err
