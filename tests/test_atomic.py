"""Atomic writes: the target appears only complete, and a failure leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.atomic import atomic_path, write_json


def test_success_renames_into_place(tmp_path: Path) -> None:
    write_json(tmp_path / "sub" / "a.json", {"x": 1})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]


@pytest.mark.parametrize("is_dir", [False, True])
def test_failure_leaves_nothing_and_keeps_old_target(tmp_path: Path, is_dir: bool) -> None:
    target = tmp_path / "out"
    if is_dir:
        target.mkdir()
        (target / "old").write_text("old")
    else:
        target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=is_dir) as tmp:
        (tmp / "new" if is_dir else tmp).write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old" if is_dir else target).read_text() == "old"
