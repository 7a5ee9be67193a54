"""Device selection: CUDA when present, CPU otherwise; mixed precision only on CUDA."""

from __future__ import annotations

import contextlib
import logging

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
