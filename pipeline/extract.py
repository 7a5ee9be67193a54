"""Stage 1 -> cache: encode a dataset's test split, or one few-shot split, and write the HDF5 file.

Two kinds of job (see ``pipeline.features.cache`` for the layout):

* ``--kind test``: the full test split, once per backbone and dataset when the image encoder is frozen;
* ``--kind fewshot``: the sampled train images (center view + K augmented views), the few-shot val
  images and the class text features, once per backbone, dataset, shot and seed.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.backbones.encoder import build_train_transform, load_encoder
from pipeline.backbones.registry import load_backbone_class
from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.core.config import EncoderConfig, ExtractionConfig, RuntimeConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.data.coop import check_images, load_dataset, resolve_image
from pipeline.data.fewshot import read_split_file
from pipeline.features.cache import write_fewshot_cache, write_test_cache
from pipeline.features.views import ViewDataset, encode_views

log = logging.getLogger(__name__)


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
    backbone_cls = load_backbone_class(args.backbone)
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
        encoder = load_encoder(encoder_cfg, device)
        backbone = backbone_cls(encoder, splits.classnames, [], None, dim=encoder.dim)
        data = ViewDataset([resolve_image(splits, it) for it in splits.test], encoder.preprocess)
        feats = encode_views(backbone.encode_images, data, runtime.batch_size, runtime.workers, "test")[:, 0]
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
        encoder = load_encoder(encoder_cfg, device)
        backbone = backbone_cls(encoder, splits.classnames, templates, None, dim=encoder.dim)
        augment = build_train_transform(encoder, extraction.crop_scale, extraction.hflip)
        center = encoder.preprocess
        train_paths = [resolve_image(splits, it) for it in fewshot.train]
        train = ViewDataset(train_paths, center, augment, extraction.views, args.seed)
        bs, workers = runtime.batch_size, runtime.workers
        train_x = encode_views(backbone.encode_images, train, bs, workers, "train views")  # (N, V, D)
        val_data = ViewDataset([resolve_image(splits, it) for it in fewshot.val], center)
        val_x = encode_views(backbone.encode_images, val_data, bs, workers, "val")[:, 0]
        text = backbone.class_texts().cpu().numpy()  # (C, D)
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
