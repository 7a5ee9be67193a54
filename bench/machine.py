"""Where a benchmark ran: CPU model, usable cores, torch threads, device and load (for the printed table)."""

from __future__ import annotations

import os
import platform
import time

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_rows(device: torch.device) -> list[tuple[str, str]]:
    """(label, value) rows describing where the figures were measured."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [
        ("cpu", f"{cpu_model()} ({cores} usable cores)"),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} threads"),
        ("device", str(device)),
    ]
    if device.type == "cuda":
        rows.append(("gpu", torch.cuda.get_device_name(device)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows.append(("load avg (1 min) at start", f"{load:.2f}"))
    return rows


def best_of(repeats: int, fn) -> float:
    """The shortest wall time, in seconds, of ``repeats`` calls of ``fn()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
