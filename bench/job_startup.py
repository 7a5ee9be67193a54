"""How long a stage job takes to start: a cold ``python`` process against a child of the fork server.

Runs ``python -m pipeline.run <stage> --help`` for each stage, as a rule's shell command would (the
stage module and what it imports at the top are loaded, then argparse exits), with and without a
server (``pipeline.core.forkserver``), and prints the best wall time of ``--repeats`` for each.
Stages also import some dependencies only when they need them (open_clip in extract and fit_backbone,
scikit-learn in train_probe); the server has those loaded too, a cold process pays for them later,
so the cold figures here are a lower bound of what a job saves.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from machine import machine_rows  # bench/machine.py: where figures were measured
from tabulate import tabulate

from pipeline.core import forkserver


def _best_wall(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="train_fma,train_probe,extract,fit_backbone,make_tables")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(tabulate(machine_rows(torch.device("cpu")), tablefmt="plain"))
    cold_env = {k: v for k, v in os.environ.items() if k != forkserver.ENV_VAR}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        server = forkserver.start_server(Path(tmp) / "server.log")
        if server is None:
            print("the fork server did not start", file=sys.stderr)
            return 1
        started = time.perf_counter() - start
        warm_env = {**cold_env, forkserver.ENV_VAR: server.socket}
        rows = []
        try:
            for stage in args.stages.split(","):
                cmd = [sys.executable, "-m", "pipeline.run", stage, "--help"]
                cold = _best_wall(cmd, cold_env, args.repeats)
                warm = _best_wall(cmd, warm_env, args.repeats)
                rows.append((stage, f"{cold:.2f}", f"{warm:.2f}", f"{cold - warm:.2f}"))
        finally:
            server.stop()
    print()
    print(tabulate(rows, headers=("stage", "cold s", "fork server s", "saved s"), tablefmt="github"))
    print(f"\nserver start-up (imports every stage once): {started:.1f} s; "
          f"load avg (1 min) at end: {os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
