"""Stage CLIs end in one line on a full disk, a read-only file system or SIGTERM/SIGINT, and leave no
temporary file (``pipeline.core.cli.guarded``, ``pipeline.core.atomic``)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import mounted_tmpfs
from test_train_fma import _argv, _write_caches

from pipeline.core import atomic
from pipeline.train_fma import main as train_fma_main

REPO = Path(__file__).resolve().parents[1]


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_injected_enospc_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, capsys) -> None:
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "out"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    assert train_fma_main(_argv(fewshot, test, out)) == 1
    assert _error_lines(capsys.readouterr().err) == [f"error: {out / 'fma.pt'}: No space left on device"]
    assert list(out.iterdir()) == []


def test_full_disk_is_one_line_naming_the_file(tmp_path: Path, full_disk: Path, capsys) -> None:
    """A real full file system (a filled 64 KiB tmpfs) under torch.save of the FMA checkpoint."""
    fewshot, test = _write_caches(tmp_path)
    assert train_fma_main(_argv(fewshot, test, full_disk)) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {full_disk / 'fma.pt'}: No space left on device"
    ]
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


def test_read_only_file_system_is_one_line(tmp_path: Path, capsys) -> None:
    fewshot, test = _write_caches(tmp_path)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        assert train_fma_main(_argv(fewshot, test, mount / "out")) == 1
    assert _error_lines(capsys.readouterr().err) == [f"error: {mount / 'out'}: Read-only file system"]


# build_demo writes ~1,800 PNGs into a temporary folder; each save is slowed down so that the signal
# surely lands while the stage writes.
SLOW_BUILD = textwrap.dedent(
    """
    import signal, sys, time
    import pipeline.demo.datasets as datasets

    # A job started in the background (nohup, `&` in a script) inherits SIGINT ignored; take it
    # back, as a job started from a terminal has it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pipeline.build_demo import main

    real = datasets.save_png
    def slow_save(image, path):
        real(image, path)
        if not getattr(slow_save, "told", False):
            slow_save.told = True
            print("writing", path, flush=True)
        time.sleep(0.01)

    datasets.save_png = slow_save
    raise SystemExit(main(["--dataset", "demo_digits", "--data-root", sys.argv[1]]))
    """
)


def _start_writing(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("writing"), (line, proc.stderr.read() if proc.poll() is not None else "")
    temp = Path(line.split()[1]).relative_to(root).parts[0]
    assert temp.startswith(".demo_digits.") and temp.endswith(".tmp"), temp
    return proc


def _temps(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*.tmp")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_leaves_no_temporary(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start_writing(tmp_path)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert _error_lines(stderr) == [f"error: stopped by {sig.name}; no partial output was left"]
    assert _temps(tmp_path) == [] and not (tmp_path / "demo_digits").exists()


def test_a_killed_writers_temporary_goes_at_the_next_write(tmp_path: Path) -> None:
    proc = _start_writing(tmp_path)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert len(_temps(tmp_path)) == 1
    with atomic.atomic_path(tmp_path / "demo_digits", is_dir=True) as tmp:
        (tmp / "a").write_text("x")
    assert _temps(tmp_path) == [] and (tmp_path / "demo_digits" / "a").is_file()


# An extraction with two DataLoader workers, each image load slowed down; each worker's first load
# says so. (torch's own SIGTERM handler, set when a worker starts, kills it until its worker_init_fn
# runs: a signal in that first instant still shows torch's traceback.)
SLOW_EXTRACT = textwrap.dedent(
    """
    import os, sys, time
    import pipeline.features.views as views
    from pipeline.extract import main

    real = views.load_image
    def slow_load(path):
        if not getattr(slow_load, "told", False):
            slow_load.told = True
            print("loading", os.getpid(), flush=True)
        time.sleep(0.05)
        return real(path)

    views.load_image = slow_load
    raise SystemExit(main(sys.argv[1:]))
    """
)


def test_sigterm_to_a_job_with_dataloader_workers_is_one_line(tmp_path: Path) -> None:
    """Slurm signals every process of a job: the workers ignore it, the main process stops them and
    reports one line (no 'DataLoader worker is killed by signal' traceback)."""
    from pipeline.demo.datasets import build_demo_dataset

    build_demo_dataset("demo_digits", tmp_path / "data" / "demo_digits")
    config = '{"encoder": {"model": "demo-vit-t-28", "pretrained": null}}'
    argv = [
        "--backbone", "zeroshot", "--dataset", "demo_digits", "--data-root", str(tmp_path / "data"),
        "--config", config, "--device", "cpu", "--batch-size", "4", "--workers", "2", "--threads", "1",
        "--out", str(tmp_path / "out" / "test.h5"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXTRACT, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    workers = {proc.stdout.readline().split()[-1] for _ in range(2)}
    assert len(workers) == 2  # both workers are loading images
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as a scheduler does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert _error_lines(stderr) == ["error: stopped by SIGTERM; no partial output was left"]
    assert "Exception ignored" not in stderr and "killed by signal" not in stderr, stderr[-3000:]
    assert not (tmp_path / "out").exists() or _temps(tmp_path / "out") == []
