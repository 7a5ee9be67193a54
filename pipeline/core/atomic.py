"""Write outputs under a temporary name and rename them into place, so no half-written file is left.

The temporary sibling of ``<dir>/<name>`` is ``<dir>/.<name>.<host>-<pid>.<random>.tmp``, made with
the mode a plain ``open``/``mkdir`` would give it (0666/0777 less the umask; ``tempfile`` would make
0600/0700 whatever the umask). It is removed when the block fails, including on SIGINT and on SIGTERM
(what Slurm sends at a time limit; ``pipeline.core.cli.guarded`` turns it into an exception). A
process killed outright (SIGKILL, a lost node) leaves its temporary behind: the next write of the
same target removes it once its writer is gone (same host, process not alive) or, written on another
host, once it is a day old. Temporaries of other targets are never touched, so concurrent jobs
writing side by side in one folder are safe.

A full disk, a read-only file system or a missing permission surfaces as an ``OSError`` carrying the
errno and the target path (``storage_error``), which the stage CLIs print as one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Errors of the storage rather than of the program: the CLIs print them as one line.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)
# A temporary written on another host is stale after this long: a live write takes seconds to
# minutes (the payload is computed before ``atomic_path`` is entered), never a day.
FOREIGN_STALE_SECONDS = 24 * 3600

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_RANDOM_HEX = 8


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporaries of ``name`` only: the host has no dot, so ``a.json.x``'s never match ``a.json``."""
    ours = rf"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{{{_RANDOM_HEX}}}"
    legacy = r"[a-z0-9_]{8}"  # tempfile.mkstemp's names, before the owner was recorded
    return re.compile(rf"^\.{re.escape(name)}\.(?:{ours}|{legacy})\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by writers that are gone; return what was removed.

    Same host: the writer's process no longer exists. Another host (or an old unnamed temporary):
    it has not changed for ``FOREIGN_STALE_SECONDS``.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match is None:
            continue
        if match["host"] == _HOST:
            stale = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
        else:
            try:
                stale = time.time() - sibling.lstat().st_mtime > FOREIGN_STALE_SECONDS
            except FileNotFoundError:
                continue
        if stale:
            _remove(sibling)
            removed.append(sibling)
    return removed


def _create_temp(path: Path, is_dir: bool) -> Path:
    """A new temporary sibling of ``path``, with the umask's mode (O_EXCL: never someone else's)."""
    while True:
        tmp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(_RANDOM_HEX // 2)}.tmp"
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    """Flush a written file: on network file systems a full disk or quota shows only here."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """``err`` as ``OSError(errno, strerror, path)`` if it is a storage failure, else None.

    h5py's OSError carries a many-line HDF5 message; the errno is all that matters to a user.
    """
    if not isinstance(err, OSError):
        return None
    code = err.errno
    if code is None:
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code not in STORAGE_ERRNOS:
        return None
    return OSError(code, os.strerror(code), str(err.filename or path))


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while cleaning up, so a second signal cannot cut the cleanup short."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    The temporary lives in the same directory (same file system), so the final rename is atomic.
    On any exception (SIGINT and SIGTERM included) the temporary is removed and ``path`` is left
    untouched; a storage failure is raised as ``storage_error`` describes.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = _create_temp(path, is_dir)
        yield tmp
        if not is_dir:
            _fsync(tmp)
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with _signals_blocked():
                _remove(tmp)
        translated = storage_error(err, path)
        if translated is not None:
            raise translated from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically, serialised in memory first.

    torch's zip writer reports a full disk as ``RuntimeError: ... unexpected pos``; written from
    memory by Python, the same failure is an ``OSError`` with ENOSPC. Checkpoints here are the
    trained parameters only (MBs), so the in-memory copy is cheap.
    """
    import torch  # only the stages that save checkpoints need it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
