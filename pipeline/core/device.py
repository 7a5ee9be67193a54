"""Device selection: CUDA when present, CPU otherwise; mixed precision only on CUDA; one GPU per
concurrent local job."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import IO

import torch

from pipeline.core.errors import InputError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a ``torch.device``.

    Raises:
        InputError: CUDA was asked for on a machine without it.
    """
    if name == "auto":
        return claim_gpu() if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"runtime.device is '{name}' but CUDA is not available on this machine")
    return claim_gpu() if device.type == "cuda" and device.index is None else device


_CLAIMED: list[IO] = []  # lock files held open until this process (one job) exits


def claim_gpu(lock_dir: Path | None = None) -> torch.device:
    """The first visible GPU that no other process on this machine has claimed.

    Snakemake 9 hands out a count of the ``gpu`` resource, not devices: ``--resources gpu=N`` lets N
    jobs run at once, and without this each would use GPU 0. A job claims a GPU by holding an
    exclusive ``flock`` on ``fewshot-flows-gpu-<id>.lock`` (in ``$FEWSHOT_GPU_LOCK_DIR`` or the
    temporary folder) until it exits, so the lock is freed even when the job is killed. With one
    visible GPU (Slurm gives a job its own through ``CUDA_VISIBLE_DEVICES``) nothing is locked.
    When every GPU is claimed (N above the GPU count), the job shares GPU 0 and says so.
    """
    count = torch.cuda.device_count()
    if count <= 1:
        return torch.device("cuda")
    lock_dir = Path(lock_dir or os.environ.get("FEWSHOT_GPU_LOCK_DIR") or tempfile.gettempdir())
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    for index in range(count):
        gpu_id = visible[index] if index < len(visible) else str(index)  # the physical GPU
        handle = open(lock_dir / f"fewshot-flows-gpu-{gpu_id}.lock", "a")  # kept open: the lock lasts as long
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIMED.append(handle)
        log.info("using GPU %d of %d (id %s)", index, count, gpu_id)
        return torch.device(f"cuda:{index}")
    log.warning(
        "all %d GPUs are claimed by other jobs: sharing GPU 0 (run at most %d GPU jobs)", count, count
    )
    return torch.device("cuda:0")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Float16 autocast on CUDA, a no-op elsewhere (CPU runs in float32 for exact reruns)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def set_threads(threads: int | None) -> None:
    """Give torch the number of CPU threads Snakemake granted this job."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused kernel where this torch has one for the parameters' device.

    The fused update is the same algorithm in one kernel: on the CPU it cuts the step of the
    12-block FMA net from 4.6 to 1.3 ms (bench/fma_throughput.py). Torch builds without it (before
    2.4 on the CPU) get the per-parameter loop.
    """
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def init_loader_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT and SIGTERM.

    A scheduler signals every process of a job (Slurm at a time limit). The main process then shuts
    its workers down and reports one line (``pipeline.core.cli.guarded``); a worker killed by the
    signal itself would make torch print the loss of a worker as a traceback. A worker whose main
    process is gone exits on its own (torch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
