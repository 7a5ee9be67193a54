"""Stage 1 -> cache: one trained run's backbone rebuilt for a target dataset's classes (transfer).

The transfer protocols (docs/protocol.md) score a run trained on one dataset on another class set:
base-to-new's new half, cross-dataset, domain generalization. This stage writes the run's transfer
file for one target (``pipeline.features.cache``): the target's class texts under the trained
backbone (its prompts or LoRA text tower applied to the target's class names), and, when the
backbone changes the image side, its own features of the target's test images. A backbone whose
image encoder is frozen shares the target's per-dataset test file of its image source instead.
Per-image texts (CoCoOp) are computed in stage 2; the file then holds only the class names.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.backbones.encoder import load_encoder
from pipeline.backbones.loading import build_backbone, load_for_classes
from pipeline.backbones.registry import get_spec, image_source
from pipeline.core.cli import guarded, parse_json_object, setup_logging
from pipeline.core.config import EncoderConfig, RuntimeConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.data.coop import check_images, load_dataset
from pipeline.extract import add_encoding_arguments, config_templates
from pipeline.features.cache import load_test, write_transfer_cache
from pipeline.features.extraction import adapt_cached, encode_items

log = logging.getLogger("pipeline.extract_transfer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.extract_transfer", description=__doc__.splitlines()[0]
    )
    p.add_argument("--backbone", required=True, help="registry name (pipeline/backbones/registry.py)")
    p.add_argument("--source", required=True, help="the dataset the run trained on")
    p.add_argument("--shot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--target", required=True, help="the dataset to evaluate on")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--config", required=True, help="JSON: {encoder, templates (the target's)}")
    p.add_argument("--state", type=Path, help="fit_backbone checkpoint of the run (trained backbones)")
    p.add_argument("--reuse-test", type=Path, help="the reused backbone's test file of the target")
    add_encoding_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the transfer file (HDF5)")
    return p


def extract_transfer(args: argparse.Namespace, cfg: dict[str, Any], runtime: RuntimeConfig) -> dict[str, int]:
    """Write the transfer file of (backbone, source, shot, seed) on ``args.target``."""
    spec = get_spec(args.backbone)
    if args.target == args.source:
        raise InputError(f"argument --target: '{args.target}' is the run's own dataset")
    if spec.trains and args.state is None:
        raise InputError(f"backbone '{args.backbone}' is trained: pass its fit_backbone checkpoint (--state)")
    needs_reuse = not spec.frozen_image_encoder and not spec.encodes_images
    if needs_reuse and args.reuse_test is None:
        raise InputError(f"backbone '{args.backbone}' adapts '{spec.reuses}' features: pass --reuse-test")
    encoder_cfg = from_dict(EncoderConfig, cfg["encoder"], "encoder.")
    templates = config_templates(cfg)
    target = load_dataset(args.target, args.data_root)
    device = resolve_device(runtime.device)
    static_texts = not spec.per_image_text
    needs_encoder = static_texts or not spec.frozen_image_encoder
    encoder = load_encoder(encoder_cfg, device) if needs_encoder else None
    backbone = None
    if needs_encoder:
        assert encoder is not None
        if spec.trains:
            expect = {"backbone": args.backbone, "dataset": args.source, "shot": args.shot, "seed": args.seed}
            backbone = load_for_classes(args.state, device, expect, target.classnames, templates, encoder)
        else:
            backbone = build_backbone(args.backbone, encoder, target.classnames, templates, None, encoder.dim)
        templates = list(backbone.templates)

    test = None
    source_of_images = image_source(args.backbone)
    if not spec.frozen_image_encoder:
        assert backbone is not None
        source_of_images = args.backbone
        if spec.encodes_images:
            check_images(target, target.test)
            t = encode_items(backbone, target, target.test, runtime, f"{args.target} test")
            test = (t.x, t.y, t.paths)
        else:
            want = {
                "backbone": image_source(str(spec.reuses)), "dataset": args.target,
                "model": encoder_cfg.model, "pretrained": encoder_cfg.pretrained or "",
            }  # fmt: skip
            x, y, _ = load_test(args.reuse_test, want)
            if len(y) != len(target.test):
                raise InputError(
                    f"{args.reuse_test}: {len(y)} test images, {args.target} has {len(target.test)}"
                )
            test = (adapt_cached(backbone, x), y, [it.path for it in target.test])
    text = backbone.class_texts().float().cpu().numpy() if static_texts and backbone is not None else None
    forwards = dict(backbone.forwards) if backbone is not None else {}
    attrs = {
        "backbone": args.backbone,
        "image_source": source_of_images,
        "dataset": args.target,
        "source": args.source,
        "shot": args.shot,
        "seed": args.seed,
        "model": encoder_cfg.model,
        "pretrained": encoder_cfg.pretrained or "",
        "config": cfg,
        "templates": templates,
        "forwards": forwards,
        # a test-only variant's classes in its parent dataset (ImageNet-A's in ImageNet): the probe's map
        "parent_labels": list(target.parent_labels or []),
    }
    write_transfer_cache(
        args.out,
        text=None if text is None else np.asarray(text, dtype=np.float32),
        classnames=list(target.classnames),
        attrs=attrs,
        test=test,
    )
    return forwards


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    cfg = parse_json_object(args.config, "--config")
    if "encoder" not in cfg:
        raise InputError("argument --config: expected a JSON object with an 'encoder' key")
    runtime = RuntimeConfig(device=args.device, batch_size=args.batch_size, workers=args.workers)
    start = time.perf_counter()
    with torch.no_grad():
        forwards = extract_transfer(args, cfg, runtime)
    log.info(
        "wrote %s in %.1fs: %d images and %d prompts through the encoders",
        args.out, time.perf_counter() - start, forwards.get("image", 0), forwards.get("text", 0),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
