"""Benchmark: FMA velocity-net training throughput through ``pipeline.methods.fma.trainer.train_velocity``.

Times the real trainer (VelocityNet, FlowPath with the paper's noise, class coupling, AdamW with the
warm-up/cosine schedule) on synthetic cached features, and compares its achieved GFLOP/s with a plain
torch matmul of the same shapes. Prints figures; it is not a test.

    python bench/fma_throughput.py                       # D=512 (ViT-B/16), batch 32
    python bench/fma_throughput.py --dim 128             # the demo's feature dim
    python bench/fma_throughput.py --sweep 32,256,1024   # how batch size moves the figures
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from machine import machine_rows  # bench/machine.py: where figures were measured
from tabulate import tabulate
from torch import nn

from pipeline.core.cli import guarded
from pipeline.core.config import FMAConfig
from pipeline.core.device import resolve_device, set_threads
from pipeline.features.cache import Features
from pipeline.methods.fma.trainer import train_velocity
from pipeline.methods.fma.velocity import VelocityNet

SEED = 0
PEAK_SIZE = 1024  # square matmul that shows the machine's best float32 rate


def synthetic_features(n: int, n_views: int, n_classes: int, dim: int, seed: int = SEED) -> Features:
    """L2-normalised random features shaped like a few-shot cache: train (N, V, D), text (C, D)."""
    rng = np.random.default_rng(seed)

    def unit(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    empty_x, empty_y = np.zeros((0, dim), np.float32), np.zeros((0,), np.int64)
    return Features(
        train_x=unit(n, n_views, dim),
        train_y=np.arange(n, dtype=np.int64) % n_classes,
        val_x=empty_x,
        val_y=empty_y,
        test_x=empty_x,
        test_y=empty_y,
        text=unit(n_classes, dim),
        classnames=[f"class {c}" for c in range(n_classes)],
    )


def linear_flops_per_sample(net: nn.Module) -> int:
    """Forward FLOPs of every Linear layer for one sample: sum of 2 * in * out (biases ignored)."""
    return sum(2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(features: Features, cfg: FMAConfig, device: torch.device, repeats: int) -> float:
    """Seconds of one ``train_velocity`` call (best of ``repeats``), after a short warm-up call.

    The best rather than the median: other processes can only slow a run down, never speed it up.

    The warm-up (one epoch on the first few batches' worth of images) pays the one-time costs
    (allocator, kernel selection, CUDA context) outside the timed calls.
    """
    n_warm = min(len(features.train_x), 4 * cfg.batch_size)
    warm_features = dataclasses.replace(
        features, train_x=features.train_x[:n_warm], train_y=features.train_y[:n_warm]
    )
    warm = dataclasses.replace(cfg, epochs=1, warmup_epochs=0)
    train_velocity(warm_features, warm, seed=SEED, device=device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        train_velocity(features, cfg, seed=SEED, device=device)
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(rows: int, dim: int, device: torch.device, seconds: float = 1.5) -> float:
    """GFLOP/s of a plain forward (rows x D) @ (D x D) matmul, repeated for ``seconds``.

    The time is cut into windows of ~0.1 s and the best window counts, so that a busy machine
    understates the rate less (the same best-of rule as the training calls).
    """
    gen = torch.Generator().manual_seed(SEED)
    a = torch.randn(rows, dim, generator=gen).to(device)  # (B, D)
    w = torch.randn(dim, dim, generator=gen).to(device)  # (D, D)
    for _ in range(3):  # warm-up
        a @ w
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        iters, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.1:
            for _ in range(5):
                a @ w
            iters += 5
            sync(device)
        best = max(best, iters / (time.perf_counter() - start))
    return 2.0 * rows * dim * dim * best / 1e9


def _batch_list(text: str) -> list[int]:
    """argparse type of --sweep: "32,256,1024" -> [32, 256, 1024]."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sizes


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512, help="feature dim D (512: ViT-B/16, 128: demo)")
    p.add_argument("--blocks", type=int, default=6, help="adaLN blocks of the velocity net")
    p.add_argument(
        "--noise",
        default="paper",
        choices=("none", "paper", "interpolant"),
        help="fma.noise of the timed runs",
    )
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (FMA default 32)")
    p.add_argument(
        "--sweep", type=_batch_list, help="comma-separated batch sizes to run instead, e.g. 32,256,1024"
    )
    p.add_argument("--n-train", type=int, default=1600, help="N training images (16 shots x 100 classes)")
    p.add_argument("--views", type=int, default=5, help="V cached views per image (center + 4)")
    p.add_argument("--classes", type=int, default=100, help="C classes")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed training call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (best counts)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = _parse(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    features = synthetic_features(args.n_train, args.views, args.classes, args.dim)
    flops_fwd = linear_flops_per_sample(VelocityNet(args.dim, args.blocks))
    flops_train = 3 * flops_fwd  # forward + backward (grad wrt inputs and weights) ~ 3x forward

    print(tabulate(machine_rows(device), tablefmt="plain"))
    print(
        f"\nFMA velocity net: D={args.dim}, blocks={args.blocks}, noise={args.noise}, N={args.n_train}, "
        f"V={args.views}, C={args.classes}, {args.epochs} epoch(s) per timed call, best of {args.repeats}"
    )
    print(
        f"Linear FLOPs per sample: forward {flops_fwd / 1e6:.2f} MFLOP, "
        f"training ~3x = {flops_train / 1e6:.2f} MFLOP"
    )
    peak = matmul_gflops(PEAK_SIZE, PEAK_SIZE, device)
    print(f"Machine reference: square {PEAK_SIZE} x {PEAK_SIZE} float32 matmul runs at {peak:.1f} GFLOP/s\n")
    rows = []
    for batch_size in args.sweep or [args.batch_size]:
        # All V cached views (train_views null), as a run with cached augmentations draws them.
        cfg = FMAConfig(
            blocks=args.blocks,
            noise=args.noise,
            batch_size=batch_size,
            epochs=args.epochs,
            warmup_epochs=1,
            train_views=None,
        )
        seconds = time_training(features, cfg, device, args.repeats)
        samples = args.n_train * args.epochs
        steps = args.epochs * math.ceil(args.n_train / batch_size)
        achieved = samples * flops_train / seconds / 1e9
        # The matmul runs at the largest batch the trainer uses: a full batch of B rows.
        reference = matmul_gflops(min(batch_size, args.n_train), args.dim, device)
        rows.append(
            (
                batch_size,
                f"{seconds:.2f}",
                f"{samples / seconds:,.0f}",
                f"{steps / seconds:.1f}",
                f"{achieved:.2f}",
                f"{reference:.2f}",
                f"{achieved / reference:.0%}",
            )
        )
    headers = ("batch", "seconds", "samples/s", "steps/s", "train GFLOP/s", "matmul GFLOP/s", "ratio")
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, stralign="right"))
    print(
        "\ntrain GFLOP/s = samples/s x 3 x forward Linear FLOPs; matmul GFLOP/s = forward "
        f"(batch x {args.dim}) @ ({args.dim} x {args.dim}) repeated on the same device (best 0.1 s window). "
        f"Load avg (1 min) at end: {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
