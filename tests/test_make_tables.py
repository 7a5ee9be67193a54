"""make_tables and make_ablations: records in, tables out; a broken record exits 2 naming it."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import fma_record, grid

from pipeline import make_ablations, make_tables
from pipeline.report.records import write_record


def test_make_tables_writes_every_file(tmp_path: Path, capsys) -> None:
    paths = [r["path"] for r in grid(tmp_path)]
    out = tmp_path / "tables"
    groups = json.dumps({"difficult": ["hard"], "easy": ["easy"]})
    assert make_tables.main(["--records", *paths, "--groups", groups, "--out-dir", str(out)]) == 0
    for name in ("fewshot.md", "fewshot.csv", "fewshot.tex", "plugplay.md", "plugplay.csv", "plugplay.tex"):
        assert (out / name).stat().st_size > 100, name
    assert (out / "curves.png").stat().st_size > 1000


def test_make_tables_broken_record_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert make_tables.main(["--records", str(bad), "--out-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0]
    assert not (tmp_path / "t").exists()
    assert make_tables.main(["--records", str(bad), "--groups", "[1]", "--out-dir", str(tmp_path)]) == 2


def test_make_ablations(tmp_path: Path, capsys) -> None:
    paths = []
    for seed in (1, 2):
        for variant in ("default", "six_blocks"):
            path = tmp_path / f"{variant}{seed}.json"
            write_record(path, fma_record("zeroshot", "hard", 16, seed, 40.0, 60.0, variant=variant))
            paths.append(str(path))
    labels = json.dumps({"default": "FMA", "six_blocks": "6 blocks"})
    assert make_ablations.main(["--records", *paths, "--labels", labels, "--out-dir", str(tmp_path)]) == 0
    assert "| 6 blocks |" in (tmp_path / "ablations.md").read_text()
    (tmp_path / "x.json").write_text("[]")
    assert make_ablations.main(["--records", str(tmp_path / "x.json"), "--out-dir", str(tmp_path)]) == 2
