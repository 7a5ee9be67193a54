"""A warm fork server for local runs: stage jobs start from a process that has imported torch already.

Every stage job is a fresh ``python`` process, and importing torch, open_clip and their dependencies
takes 2-4 s on a CPU, longer than most demo jobs compute. On a local run the Snakefile's ``onstart``
starts one server (``start_server``) that imports every stage once. Each job's
``python -m pipeline.run <stage> ...`` connects to it over a Unix socket and hands over its argv,
working directory, umask, environment and its stdin/stdout/stderr; the server forks a child that
runs the stage's ``main(argv)`` and reports its exit status. The client relays SIGTERM, SIGINT and
SIGHUP to that child and exits with its status, so to Snakemake a job behaves like the process it
replaces.

Without a reachable server (a cluster job on another node, a job in another Python environment,
``runtime.fork_server: false``) the client runs the stage in its own process: same code, same numbers.
The socket lives in a fresh mode-0700 folder, so other users cannot connect to it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ENV_VAR = "PIPELINE_FORK_SERVER"  # path of the server's socket, set for the jobs of a local run
SOCKET_NAME = "server.sock"
_HEADER = struct.Struct("!Q")  # length of the JSON request that follows the file descriptors
_RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Imported by the server before it forks: what the stages import lazily, besides the stages.
PRELOAD = ("open_clip", "sklearn.linear_model", "pipeline.backbones.loading")


def list_stages() -> list[str]:
    """The stage modules: every plain module at the top of ``pipeline/`` except this launcher's."""
    import pipeline

    return sorted(m.name for m in pkgutil.iter_modules(pipeline.__path__) if not m.ispkg and m.name != "run")


def run_stage(stage: str, argv: Sequence[str]) -> int:
    """Run ``pipeline.<stage>.main(argv)`` in this process and return its exit status."""
    if stage not in list_stages():
        raise ValueError(f"unknown stage '{stage}' (valid: {', '.join(list_stages())})")
    module = importlib.import_module(f"pipeline.{stage}")
    try:
        code = module.main(list(argv))
    except SystemExit as done:  # argparse errors and --help exit this way
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    return int(code or 0)


def _identity() -> dict[str, str]:
    """What client and server must share for the server to run a client's stage: interpreter and code."""
    import pipeline

    return {"executable": sys.executable, "pipeline": str(Path(pipeline.__file__).resolve())}


# ---------------------------------------------------------------- client


def _read_message(stream) -> dict | None:
    line = stream.readline()
    return json.loads(line) if line else None


def run_via_server(path: str, stage: str, argv: Sequence[str]) -> int | None:
    """Run the stage in a child of the server at ``path``; None when no server will run it here.

    The server may be absent (None, the caller then runs the stage itself) or decline (another
    interpreter or checkout). Once the child has started, its exit status is returned; a child that
    died without one (killed) gives 128 + the relayed signal, or 1.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.connect(path)
        umask = os.umask(0o022)
        os.umask(umask)
        request = json.dumps({**_identity(), "stage": stage, "argv": list(argv), "cwd": os.getcwd(),
                              "env": dict(os.environ), "umask": umask}).encode()  # fmt: skip
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
        sock.settimeout(None)
        stream = sock.makefile("r", encoding="utf-8")
        first = _read_message(stream)
    except OSError:
        return None
    if first is None or "pid" not in first:
        return None  # declined: another interpreter or checkout; run here instead
    child = int(first["pid"])
    relayed: list[int] = []

    def relay(signum: int, _frame) -> None:
        relayed.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {sig: signal.signal(sig, relay) for sig in _RELAYED}
    try:
        while True:
            try:
                message = _read_message(stream)
                break
            except InterruptedError:  # a relayed signal interrupted the read: keep waiting
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if message is not None and "exit" in message:
        return int(message["exit"])
    if relayed:
        return 128 + relayed[-1]
    print(f"error: the stage process {child} ended without an exit status (killed?)", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- server


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    if not data:
        raise EOFError  # a readiness probe: connected and left
    (length,) = _HEADER.unpack(data)
    payload = bytearray()
    while len(payload) < length:
        chunk = conn.recv(min(1 << 20, length - len(payload)))
        if not chunk:
            raise ConnectionError("client closed the connection mid-request")
        payload += chunk
    return json.loads(payload), fds


def _limit_threads(env: os._Environ) -> None:
    """Apply the job's thread count to the BLAS/OpenMP pools the server started with its defaults.

    A fresh process reads ``OMP_NUM_THREADS`` (which Snakemake sets to the job's threads) when those
    libraries load; in the child they are loaded already, so set them as that process would have.
    """
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(threads))
        import torch

        torch.set_num_threads(int(threads))


def _watch_client(conn: socket.socket) -> None:
    """In the child: if the client goes away (killed), stop the stage as Slurm or Ctrl-C would."""
    try:
        while conn.recv(1024):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    os.kill(os.getpid(), signal.SIGKILL)


def _serve_one(conn: socket.socket) -> NoReturn:
    """In a freshly forked child: take over the client's request and run its stage. Never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            request, fds = _receive_request(conn)
        except EOFError:
            os._exit(0)
        if {k: request.get(k) for k in _identity()} != _identity() or len(fds) != 3:
            conn.sendall(b'{"decline": "another interpreter or checkout"}\n')
            os._exit(0)
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        _limit_threads(os.environ)
        sys.argv = [f"pipeline.{request['stage']}", *request["argv"]]
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        try:
            code = run_stage(request["stage"], request["argv"])
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 - the job's log gets the traceback, as a fresh process would
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    except BaseException:  # noqa: BLE001 - never let a child return into the server's loop
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def serve(path: str, parent: int | None = None) -> NoReturn:
    """Import every stage, listen on ``path`` and fork a child per connection; never returns.

    Stops on SIGTERM, or within a second of ``parent`` (the Snakemake process) exiting, and then
    exits at once (``os._exit``: tearing down torch's modules would take seconds).
    """
    for name in (*PRELOAD, *(f"pipeline.{stage}" for stage in list_stages())):
        importlib.import_module(name)
    import torch

    if torch.cuda.is_initialized():  # a forked child could not use CUDA then
        raise RuntimeError("CUDA was initialised while importing the stages: the server cannot fork")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)

    def stop(_signum=None, _frame=None) -> NoReturn:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while parent is None or os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 1.0)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not ready:
            continue
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _serve_one(conn)
        conn.close()
    stop()


# ---------------------------------------------------------------- lifecycle (the Snakefile's hooks)


@dataclass
class Server:
    """A running fork server: its process, its socket and the folder holding it."""

    process: subprocess.Popen
    folder: Path

    @property
    def socket(self) -> str:
        return str(self.folder / SOCKET_NAME)

    def stop(self) -> None:
        """Stop the server (running children finish on their own) and remove its folder."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)
        if os.environ.get(ENV_VAR) == self.socket:
            del os.environ[ENV_VAR]


def start_server(log_file: str | os.PathLike, timeout: float = 120.0) -> Server | None:
    """Start a server for this process's jobs and point them at it (``ENV_VAR``); None if it fails.

    Waits until the server accepts connections, so the first jobs find it warm. Its own output
    (import warnings, a crash) goes to ``log_file``.
    """
    folder = Path(tempfile.mkdtemp(prefix="pipeline-"))  # mode 0700: this user's jobs only
    path = folder / SOCKET_NAME
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    # An NVML device count cannot initialise CUDA in the server, which would break it in the children.
    env = {**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    # The server runs this very package (the workflow's checkout), whatever else PYTHONPATH names.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", "--serve", str(path), "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
        )  # fmt: skip
    server = Server(process, folder)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))
            os.environ[ENV_VAR] = str(path)
            return server
        time.sleep(0.05)
    server.stop()
    return None
