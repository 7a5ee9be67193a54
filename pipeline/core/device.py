"""Device selection: CUDA when present, CPU otherwise; mixed precision only on CUDA."""

from __future__ import annotations

import contextlib
import logging
import signal

import torch

from pipeline.core.errors import InputError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a ``torch.device``.

    Raises:
        InputError: CUDA was asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"runtime.device is '{name}' but CUDA is not available on this machine")
    return device


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
