"""Benchmark: what reading a feature cache costs with its SHA-256 digests checked.

Writes a test cache of random (N, D) float32 features in a temporary folder, then times (a) plain
h5py reading every dataset and (b) ``pipeline.features.cache.load_test``, which also checks the
digests, the attributes and finiteness. The file is in the page cache, so (a) is memory speed and
the difference is the price of verification. Prints figures; it is not a test.

    python bench/cache_read.py                 # 64 and 512 MB
    python bench/cache_read.py --sizes-mb 2048
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from machine import best_of, machine_rows  # bench/machine.py: where figures were measured, timing
from tabulate import tabulate

from pipeline.features.cache import load_test, write_test_cache

ATTRS = {"backbone": "zeroshot", "dataset": "bench", "model": "m", "pretrained": "", "config": {}}


def plain_read(path: Path) -> None:
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", default="64,512", help="comma-separated feature sizes in MB")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(tabulate(machine_rows(torch.device("cpu")), tablefmt="plain"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes_mb.split(",")):
            n = size * 2**20 // (4 * args.dim)
            x = np.random.default_rng(0).standard_normal((n, args.dim), dtype=np.float32)
            path = Path(tmp) / f"{size}.h5"
            write_test_cache(path, features=x, labels=np.zeros(n, np.int64), paths=[""] * n, attrs=ATTRS)
            del x
            plain = best_of(args.repeats, lambda path=path: plain_read(path))
            checked = best_of(args.repeats, lambda path=path: load_test(path, {}))
            mb = path.stat().st_size / 2**20
            rows.append((f"{mb:.0f}", n, f"{plain:.3f}", f"{checked:.3f}", f"{mb / checked:.0f}"))
            path.unlink()
    print(tabulate(rows, headers=["file MB", "N", "h5py s", "load_test s", "load_test MB/s"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
