"""Stage 1 -> cache: encode a dataset's test split, or one few-shot split, and write the HDF5 file.

Two kinds of job (see ``pipeline.features.cache`` for the layout):

* ``--kind test``: the full test split, once per backbone and dataset when the image encoder is frozen;
* ``--kind fewshot``: the sampled train images (center view + K augmented views), the few-shot val
  images and the class text features, once per backbone, dataset, shot and seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.backbones import Backbone, get_backbone
from pipeline.backbones.encoder import build_train_transform, load_encoder
from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.core.config import EncoderConfig, ExtractionConfig, RuntimeConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.data.coop import DatasetSplits, Item, check_images, load_dataset, resolve_image
from pipeline.data.fewshot import read_split_file
from pipeline.data.images import load_image
from pipeline.features.cache import write_fewshot_cache, write_test_cache

log = logging.getLogger(__name__)


class ViewDataset(Dataset):
    """Images of one split, each returned as (V, 3, H, W): the center view, then K augmented views.

    Every item reseeds torch's RNG from (seed, index), so the augmented views do not depend on the
    batch size or the number of DataLoader workers (runtime knobs must never change results).
    """

    def __init__(
        self,
        splits: DatasetSplits,
        items: Sequence[Item],
        center: Any,
        augment: Any | None = None,
        n_views: int = 0,
        seed: int = 0,
    ) -> None:
        self.paths = [resolve_image(splits, item) for item in items]
        self.center, self.augment, self.n_views, self.seed = center, augment, n_views, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.paths[index])
        views = [self.center(image)]
        if self.n_views:
            torch.manual_seed(self.seed * 1_000_003 + index)
            views += [self.augment(image) for _ in range(self.n_views)]
        return torch.stack(views)  # (V, 3, H, W)


def encode_views(backbone: Backbone, dataset: ViewDataset, runtime: RuntimeConfig, desc: str) -> np.ndarray:
    """Encode every view of every image: (N, V, D) float32."""
    loader = DataLoader(
        dataset,
        batch_size=max(1, runtime.batch_size // (1 + dataset.n_views)),
        num_workers=runtime.workers,
        shuffle=False,
    )
    chunks = []
    for batch in tqdm(loader, desc=desc, disable=not sys.stderr.isatty()):
        b, v = batch.shape[:2]
        feats = backbone.image_features(batch.flatten(0, 1))  # (B * V, D)
        chunks.append(feats.reshape(b, v, -1).numpy())
    if not chunks:
        raise InputError(f"{desc}: no images to encode")
    return np.concatenate(chunks).astype(np.float32)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.extract", description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("test", "fewshot"), required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--split-file", type=Path, help="few-shot split JSON (kind fewshot)")
    p.add_argument("--shot", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--config", required=True, help="JSON: {encoder, [extraction, templates]}")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.kind == "fewshot" and (args.split_file is None or args.shot is None or args.seed is None):
        p.error("--kind fewshot needs --split-file, --shot and --seed")
    return args


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = _parse(argv)
    set_threads(args.threads)
    cfg = parse_json_arg(args.config, "--config")
    if not isinstance(cfg, dict) or "encoder" not in cfg:
        raise InputError("argument --config: expected a JSON object with an 'encoder' key")
    encoder_cfg = from_dict(EncoderConfig, cfg["encoder"], "encoder.")
    runtime = RuntimeConfig(device=args.device, batch_size=args.batch_size, workers=args.workers)
    device = resolve_device(runtime.device)

    splits = load_dataset(args.dataset, args.data_root)
    backbone_cls = get_backbone(args.backbone)
    attrs = {
        "backbone": args.backbone,
        "dataset": args.dataset,
        "model": encoder_cfg.model,
        "pretrained": encoder_cfg.pretrained or "",
        "config": cfg,
    }
    start = time.perf_counter()
    if args.kind == "test":
        check_images(splits, splits.test)
        backbone = backbone_cls(load_encoder(encoder_cfg, device))
        data = ViewDataset(splits, splits.test, backbone.encoder.preprocess)
        feats = encode_views(backbone, data, runtime, f"{args.dataset} test")[:, 0]  # (Nt, D)
        write_test_cache(
            args.out,
            features=feats,
            labels=np.array([it.label for it in splits.test]),
            paths=[it.path for it in splits.test],
            attrs=attrs,
        )
        n = len(feats)
    else:
        extraction = from_dict(ExtractionConfig, cfg.get("extraction"), "extraction.")
        templates = cfg.get("templates")
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise InputError("config key 'templates': expected a list of strings")
        fewshot = read_split_file(args.split_file, splits)
        check_images(splits, [*fewshot.train, *fewshot.val])
        backbone = backbone_cls(load_encoder(encoder_cfg, device))
        augment = build_train_transform(backbone.encoder, extraction.crop_scale, extraction.hflip)
        center = backbone.encoder.preprocess
        train = ViewDataset(splits, fewshot.train, center, augment, extraction.views, args.seed)
        train_x = encode_views(backbone, train, runtime, f"{args.dataset} train views")  # (N, V, D)
        val_x = encode_views(backbone, ViewDataset(splits, fewshot.val, center), runtime, "val")[:, 0]
        text = backbone.text_features(splits.classnames, templates).numpy()  # (C, D)
        write_fewshot_cache(
            args.out,
            train_x=train_x,
            train_y=np.array([it.label for it in fewshot.train]),
            train_paths=[it.path for it in fewshot.train],
            val_x=val_x,
            val_y=np.array([it.label for it in fewshot.val], dtype=np.int64),
            val_paths=[it.path for it in fewshot.val],
            text=text,
            classnames=list(splits.classnames),
            attrs={**attrs, "shot": args.shot, "seed": args.seed, "templates": templates},
        )
        n = len(train_x) * train_x.shape[1] + len(val_x)
    seconds = time.perf_counter() - start
    log.info(
        "wrote %s: %d images encoded in %.1fs (%.1f images/s) on %s; runtime %s",
        args.out,
        n,
        seconds,
        n / max(seconds, 1e-9),
        device,
        asdict(runtime),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
