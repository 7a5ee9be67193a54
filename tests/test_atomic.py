"""Atomic writes: the target appears only complete, a failure leaves nothing behind, modes follow the
umask, a killed writer's temporary goes at the next write, storage errors name the target."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import atomic
from pipeline.core.atomic import atomic_path, remove_stale_temps, save_torch, storage_error, write_json


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


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "new" / "a.json", {})
        with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
            (tmp / "inner.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new" / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "folder" / "inner.txt").stat().st_mode) == file_mode


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_write_removes_only_stale_temporaries_of_its_target(tmp_path: Path) -> None:
    """A SIGKILLed writer's temporary goes at the next write of the same target; a live writer's,
    another target's and a fresh one from another host stay."""
    host = atomic._HOST
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        temps = {
            "dead": tmp_path / f".a.json.{host}-{_dead_pid()}.0123abcd.tmp",
            "dead_dir": tmp_path / f".a.json.{host}-{_dead_pid()}.4567abcd.tmp",
            "live": tmp_path / f".a.json.{host}-{live.pid}.89abcdef.tmp",
            "other_target": tmp_path / f".a.json.x.{host}-{_dead_pid()}.0123abcd.tmp",
            "foreign_fresh": tmp_path / ".a.json.node7-12.0123abcd.tmp",
            "foreign_old": tmp_path / ".a.json.node7-13.0123abcd.tmp",
            "legacy_old": tmp_path / ".a.json.k2j4h5g6.tmp",
        }
        for name, temp in temps.items():
            temp.mkdir() if name == "dead_dir" else temp.write_text("half")
        two_days_ago = time.time() - 2 * 24 * 3600
        for name in ("foreign_old", "legacy_old"):
            os.utime(temps[name], (two_days_ago, two_days_ago))
        write_json(tmp_path / "a.json", {"x": 1})
        left = {name for name, temp in temps.items() if temp.exists()}
        live.kill()
    assert left == {"live", "other_target", "foreign_fresh"}
    assert remove_stale_temps(tmp_path / "a.json") == [temps["live"]]  # its writer is gone now


def test_storage_errors_name_the_target(tmp_path: Path) -> None:
    hdf5 = OSError("Unable to synchronously create file (file write failed: ...,\n errno = 28, ...)")
    err = storage_error(hdf5, tmp_path / "x.h5")
    assert (err.errno, err.filename, err.strerror) == (
        errno.ENOSPC,
        str(tmp_path / "x.h5"),
        "No space left on device",
    )
    assert storage_error(OSError(errno.EROFS, "Read-only file system", "/a/b"), "/a").filename == "/a/b"
    assert (
        storage_error(ValueError("x"), "/a") is None
        and storage_error(OSError(errno.ENOENT, "x"), "/a") is None
    )


def test_torch_checkpoint_on_a_full_disk_is_an_enospc_oserror(full_disk: Path) -> None:
    """torch's own writer says 'unexpected pos'; saved from memory the error says what happened."""
    import torch

    weights = {"w": torch.zeros(50_000)}
    with pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save(weights, full_disk / "plain.pt")
    (full_disk / "plain.pt").unlink()
    with pytest.raises(OSError) as caught:
        save_torch(weights, full_disk / "a.pt")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(full_disk / "a.pt")
    assert [p.name for p in full_disk.iterdir()] == ["filler"]
