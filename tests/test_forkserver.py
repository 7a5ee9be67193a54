"""The warm fork server: a stage run through it writes what it writes alone, exits as it would, and
stops when its client or its parent goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_fma import _argv, _write_caches

from pipeline.core import forkserver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    started = forkserver.start_server(log)
    assert started is not None, log.read_text()
    yield started
    started.stop()
    assert not Path(started.socket).exists()


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if int(fields.get("PPid", "0")) == pid and not fields.get("State", "").startswith("Z"):
                out.append(int(entry))
    return out


def _client(argv: list[str], env_socket: str | None, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != forkserver.ENV_VAR}
    if env_socket:
        env[forkserver.ENV_VAR] = env_socket
    return subprocess.Popen([sys.executable, "-m", "pipeline.run", *argv], env=env, **kwargs)


def test_a_stage_through_the_server_writes_exactly_what_it_writes_alone(server, tmp_path):
    fewshot, test = _write_caches(tmp_path)
    outputs = {}
    for mode, socket_path in (("server", server.socket), ("alone", None)):
        out = tmp_path / mode
        proc = _client(
            ["train_fma", *_argv(fewshot, test, out)], socket_path, stderr=subprocess.PIPE, text=True
        )
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "wrote" in stderr  # the job's own stderr (its log file in a rule) gets the stage's log
        record = json.loads((out / "metrics.json").read_text())
        record.pop("timing")
        outputs[mode] = (record, torch.load(out / "fma.pt", weights_only=True))
    assert outputs["server"][0] == outputs["alone"][0]
    state_server, state_alone = outputs["server"][1]["state_dict"], outputs["alone"][1]["state_dict"]
    assert all(torch.equal(state_server[k], state_alone[k]) for k in state_alone)


def test_the_server_runs_the_stage_in_its_child_and_returns_the_exit_status(server, tmp_path, capfd):
    fewshot, test = _write_caches(tmp_path)
    argv = _argv(fewshot, test, tmp_path / "out")
    assert forkserver.run_via_server(server.socket, "train_fma", argv) == 0
    bad = forkserver.run_via_server(server.socket, "train_fma", [*argv, "--config", '{"epochs": "x"}'])
    assert bad == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "fma.epochs" in err[-1]  # one line, from the child


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_the_stage_runs_under_the_jobs_umask(server, tmp_path, umask, mode):
    fewshot, test = _write_caches(tmp_path)
    proc = _client(
        ["train_fma", *_argv(fewshot, test, tmp_path / "out")], server.socket,
        stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(umask),
    )  # fmt: skip
    assert proc.wait(timeout=120) == 0
    assert (tmp_path / "out" / "metrics.json").stat().st_mode & 0o777 == mode


def test_no_server_or_another_interpreter_means_the_client_runs_the_stage_itself(
    server, tmp_path, monkeypatch
):
    assert forkserver.run_via_server(str(tmp_path / "missing.sock"), "train_fma", []) is None
    monkeypatch.setattr(forkserver, "_identity", lambda: {"executable": "/other/python", "pipeline": "x"})
    assert forkserver.run_via_server(server.socket, "train_fma", []) is None


def test_sigterm_to_the_job_reaches_the_stage(server, tmp_path):
    fewshot, test = _write_caches(tmp_path)
    argv = _argv(fewshot, test, tmp_path / "out")
    argv[argv.index("--config") + 1] = json.dumps({"epochs": 100000, "blocks": 1, "batch_size": 4})
    log = tmp_path / "job.log"
    with open(log, "w") as stream:
        proc = _client(["train_fma", *argv], server.socket, stdout=stream, stderr=stream)
        deadline = time.monotonic() + 60
        while "training FMA velocity net" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_children(server.process.pid)) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    _wait_until(lambda: not _children(server.process.pid))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_killed_client_takes_its_stage_down(server, tmp_path):
    fewshot, test = _write_caches(tmp_path)
    argv = _argv(fewshot, test, tmp_path / "out")
    argv[argv.index("--config") + 1] = json.dumps({"epochs": 100000, "blocks": 1, "batch_size": 4})
    proc = _client(["train_fma", *argv], server.socket, stderr=subprocess.DEVNULL)
    _wait_until(lambda: len(_children(server.process.pid)) == 1)
    proc.kill()
    proc.wait()
    _wait_until(lambda: not _children(server.process.pid))


def test_the_server_stops_when_its_parent_is_gone(tmp_path):
    code = (
        "import sys; from pipeline.core import forkserver; "
        f"s = forkserver.start_server({str(tmp_path / 'log')!r}); print(s.socket, s.process.pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    socket_path, pid = out.stdout.split()
    _wait_until(lambda: not Path(socket_path).exists())
    _wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_unknown_stage_is_one_line_listing_the_stages():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "train_fmaa"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown stage 'train_fmaa'" in proc.stderr
    assert "train_fma" in proc.stderr and "extract" in proc.stderr


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
