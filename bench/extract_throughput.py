"""Benchmark: feature-extraction throughput (images/s) of an open_clip image encoder, random init.

Two figures: (a) the encoder forward alone (``pipeline.backbones.encoder.encode_images``) on random
preprocessed tensors, and (b) end to end from PNG files through ``pipeline.features.views``' ViewDataset and
encode_views (decode, center crop + K augmented views, DataLoader, encode) on the demo digits
dataset, which is built in a temporary folder from scikit-learn's bundled images.
Prints figures; it is not a test.

    python bench/extract_throughput.py                                   # demo-vit-t-28
    python bench/extract_throughput.py --model ViT-B-16 --batch-size 32 --n-images 64
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from machine import machine_rows  # bench/machine.py: where figures were measured
from tabulate import tabulate

from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import Encoder, build_train_transform, encode_images, load_encoder
from pipeline.backbones.zeroshot import ZeroShotCLIP
from pipeline.core.cli import guarded
from pipeline.core.config import EncoderConfig, ExtractionConfig, RuntimeConfig
from pipeline.core.device import resolve_device, set_threads
from pipeline.data.coop import load_dataset, resolve_image
from pipeline.demo.datasets import build_demo_dataset
from pipeline.features.views import ViewDataset, encode_views

DATASET = "demo_digits"
SEED = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(encoder: Encoder, batch_size: int, seconds: float) -> float:
    """Images/s of ``encode_images`` on random (B, 3, H, W) batches, best batch over ``seconds``.

    The best batch rather than the mean: other processes can only slow a batch down.
    """
    size = encoder.image_size
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(SEED))
    encode_images(encoder, images)  # warm-up
    sync(encoder.device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        encode_images(encoder, images)  # returns on the CPU, so the device has finished
        best = max(best, batch_size / (time.perf_counter() - start))
    return best


def time_views(backbone: Backbone, dataset: ViewDataset, runtime: RuntimeConfig, repeats: int) -> float:
    """Seconds of one ``encode_views`` pass over ``dataset`` (best of ``repeats``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode_views(backbone.encode_images, dataset, runtime.batch_size, runtime.workers, "bench")
        times.append(time.perf_counter() - start)
    return min(times)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=EncoderConfig().model, help="open_clip architecture (random init)")
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size, in views")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--views", type=int, default=ExtractionConfig().views, help="K augmented views")
    p.add_argument("--n-images", type=int, default=0, help="images read from disk (0: all 1797)")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of the forward-only run")
    p.add_argument("--repeats", type=int, default=2, help="passes over the PNGs per run (best counts)")
    return p.parse_args(argv)


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)  # hide the expected "no pretrained weights" warning
    args = _parse(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    runtime = RuntimeConfig(device=str(device), batch_size=args.batch_size, workers=args.workers)

    start = time.perf_counter()
    encoder = load_encoder(EncoderConfig(model=args.model, pretrained=None), device)
    build_seconds = time.perf_counter() - start
    backbone = ZeroShotCLIP(encoder, [], [], None, dim=encoder.dim)
    n_params = sum(p.numel() for p in encoder.model.visual.parameters())

    print(tabulate(machine_rows(device), tablefmt="plain"))
    print(
        f"\nmodel {args.model} (random init): image tower {n_params / 1e6:.2f} M parameters, "
        f"input {encoder.image_size}px, built in {build_seconds:.1f}s; batch {args.batch_size} views, "
        f"{args.workers} workers\n"
    )

    forward_rate = time_forward(encoder, args.batch_size, args.seconds)
    rows = [("(a) encoder forward only", "-", "-", f"{forward_rate:,.1f}", "-")]

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        data_root = Path(tmp)
        start = time.perf_counter()
        build_demo_dataset(DATASET, data_root / DATASET)
        splits = load_dataset(DATASET, data_root)
        items = [*splits.train, *splits.val, *splits.test]
        if args.n_images > 0:
            items = items[: args.n_images]
        print(f"built {DATASET} ({len(items)} PNG images used) in {time.perf_counter() - start:.1f}s\n")

        center = encoder.preprocess
        augment = build_train_transform(encoder, ExtractionConfig().crop_scale, ExtractionConfig().hflip)
        # The test path encodes the center view only; the few-shot path adds K augmented views.
        runs = [("(b) from PNG, center view", 0)]
        if args.views > 0:
            runs.append((f"(b) from PNG, center + {args.views} views", args.views))
        for label, n_views in runs:
            dataset = ViewDataset([resolve_image(splits, it) for it in items], center, augment, n_views, SEED)
            seconds = time_views(backbone, dataset, runtime, args.repeats)
            n_encoded = len(items) * (1 + n_views)
            rows.append(
                (
                    label,
                    n_encoded,
                    f"{seconds:.2f}",
                    f"{n_encoded / seconds:,.1f}",
                    f"{len(items) / seconds:,.1f}",
                )
            )

    headers = ("run", "views per pass", "best pass s", "views/s", "source images/s")
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, stralign="right"))
    print(
        "\nviews/s counts every encoded view (the 'images/s' of the extract log); source images/s "
        f"counts PNG files read; (a) is the best batch over {args.seconds:g}s, (b) the best of "
        f"{args.repeats} passes. Load avg (1 min) at end: {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
