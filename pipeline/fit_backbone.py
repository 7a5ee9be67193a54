"""Stage 1, training: fit one trained backbone (CoOp, CoCoOp, CLIP-Adapter, CLIP-LoRA, ...) on one run.

A backbone that reuses another's caches trains on that cache's views (``--fewshot``) and never runs
the image encoder; one that changes the image encoder trains on the images (``--data-root`` and
``--split-file``), augmented afresh every epoch. The output is the trained parameters only, with
their config (``torch.load(..., weights_only=True)``), and a JSON of the loss per epoch and the
images and prompts that went through the encoders. A non-finite loss stops the job with one line
and writes nothing.

With ``--record`` (the backbone ablations, ``snakemake backbone_ablations``) the job also scores the
fitted backbone's own prediction on the test split, argmax_c <x, z_c> of its image features and class
texts, and writes a result record (``pipeline.report.records``) with the fine-tuning time. That
needs a backbone that fits on images.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.backbones.base import Backbone, save_backbone
from pipeline.backbones.encoder import build_train_transform, load_encoder, logit_scale_of
from pipeline.backbones.loading import build_backbone
from pipeline.backbones.recipes import schedule_length
from pipeline.backbones.registry import build_config, get_spec, resolved_recipe
from pipeline.backbones.training import FeatureBatches, ImageBatches, fit
from pipeline.core.atomic import write_json
from pipeline.core.cli import guarded, parse_json_object, setup_logging
from pipeline.core.config import EncoderConfig, ExtractionConfig, RuntimeConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.core.versions import FIT_VERSION
from pipeline.data.coop import DatasetSplits, check_images, load_dataset, resolve_image
from pipeline.data.fewshot import read_split_file
from pipeline.features.cache import load_fewshot
from pipeline.features.extraction import encode_items
from pipeline.features.views import EpochImages
from pipeline.report.records import Result, build_record, write_record

log = logging.getLogger("pipeline.fit_backbone")

OWN_PREDICTION = "fitted"  # method name of the fitted backbone's own test accuracy in a record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.fit_backbone", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", required=True, help="registry name of a trained backbone")
    p.add_argument("--dataset", required=True)
    p.add_argument("--shot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument(
        "--config",
        required=True,
        help="JSON: {encoder, recipe (the backbone's section), templates, [extraction]}",
    )
    p.add_argument("--fewshot", type=Path, help="the reused backbone's few-shot cache (feature-trained)")
    p.add_argument("--data-root", type=Path, help="dataset images (image-trained)")
    p.add_argument("--split-file", type=Path, help="few-shot split JSON of the run (image-trained)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint (.pt)")
    p.add_argument("--metrics", type=Path, required=True, help="loss per epoch and forward counts (.json)")
    ablation = p.add_argument_group("backbone ablations")
    ablation.add_argument("--record", type=Path, help="also score the test split; write a result record")
    ablation.add_argument("--variant", help="ablation variant name stored in the record")
    ablation.add_argument("--batch-size", type=int, default=256, help="test images per encoder batch")
    return p


def score_test(
    backbone: Backbone, splits: DatasetSplits, batch_size: int, workers: int, what: str
) -> tuple[float, int, float]:
    """(test accuracy in %, test images, seconds) of the backbone's own prediction on the test split:
    argmax_c <x_i, z_c> of its (N, D) image features and (C, D) class texts."""
    start = time.perf_counter()
    check_images(splits, splits.test)
    runtime = RuntimeConfig(batch_size=batch_size, workers=workers)
    test = encode_items(backbone, splits, splits.test, runtime, f"{what}: test")
    texts = backbone.class_texts().float().cpu().numpy()  # (C, D)
    pred = (np.asarray(test.x, dtype=np.float32) @ texts.T).argmax(axis=1)  # (N,)
    accuracy = float((pred == test.y).mean() * 100.0)
    return accuracy, len(test.y), time.perf_counter() - start


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    spec = get_spec(args.backbone)
    if not spec.trains:
        raise InputError(f"backbone '{args.backbone}' does not train: it has no fit_backbone job")
    if args.record is not None and (spec.fit_input != "images" or spec.per_image_text):
        raise InputError(
            f"backbone '{args.backbone}': --record scores backbones that fit on images with one text "
            "per class (backbone ablations)"
        )
    cfg_json = parse_json_object(args.config, "--config")
    encoder_cfg = from_dict(EncoderConfig, cfg_json.get("encoder"), "encoder.")
    recipe = build_config(args.backbone, cfg_json.get("recipe") or {})
    templates = list(cfg_json.get("templates") or [])
    length = schedule_length(recipe, args.dataset, args.shot)
    device = resolve_device(args.device)
    run = {"dataset": args.dataset, "shot": args.shot, "seed": args.seed}
    needs_encoder = spec.encodes_images or spec.changes in ("text", "both")
    encoder = load_encoder(encoder_cfg, device) if needs_encoder else None

    if spec.fit_input == "features":
        if args.fewshot is None:
            raise InputError(f"backbone '{args.backbone}' trains on '{spec.reuses}' features: pass --fewshot")
        expect = {**run, "backbone": spec.reuses, "model": encoder_cfg.model}
        base = load_fewshot(args.fewshot, expect={**expect, "pretrained": encoder_cfg.pretrained or ""})
        classnames, dim = base.classnames, int(base.train_x.shape[-1])
        batches = FeatureBatches(base.train_x, base.train_y, recipe.batch_size)
    else:
        if args.data_root is None or args.split_file is None:
            raise InputError(
                f"backbone '{args.backbone}' trains on images: pass --data-root and --split-file"
            )
        splits = load_dataset(args.dataset, args.data_root)
        fewshot = read_split_file(args.split_file, splits, shot=args.shot, seed=args.seed)
        check_images(splits, fewshot.train)
        assert encoder is not None
        extraction = from_dict(ExtractionConfig, cfg_json.get("extraction"), "extraction.")
        crop_scale = recipe.train_crop_scale(extraction.crop_scale)
        transform = build_train_transform(encoder, crop_scale, extraction.hflip)
        paths = [resolve_image(splits, it) for it in fewshot.train]
        labels = [it.label for it in fewshot.train]
        images = EpochImages(paths, labels, transform, args.seed, views=recipe.views_per_image())
        batches = ImageBatches(images, recipe.batch_size, args.workers)
        classnames, dim = splits.classnames, encoder.dim

    # Per-dataset values (MPS-Tuning's lambda1, temperature) fixed, so the checkpoint holds them.
    section = resolved_recipe(args.backbone, cfg_json.get("recipe") or {}, args.dataset, args.shot)
    backbone = build_backbone(args.backbone, encoder, classnames, templates, section, dim, seed=args.seed)
    backbone.to(device)
    if encoder is None:
        assert base.text is not None
        backbone.use_texts(torch.as_tensor(base.text))
        backbone.logit_scale = logit_scale_of(encoder_cfg)
    what = f"fit {args.backbone} {args.dataset} {args.shot}-shot seed {args.seed}"
    result = fit(backbone, batches, recipe, length, args.seed, what)
    info = {
        "model": encoder_cfg.model,
        "pretrained": encoder_cfg.pretrained or "",
        **run,
        "version": FIT_VERSION,
    }
    if args.record is not None:
        accuracy, n_test, test_seconds = score_test(backbone, splits, args.batch_size, args.workers, what)
        log.info("%s: test accuracy %.2f%% on %d images", what, accuracy, n_test)
        record = build_record(
            stage="fit_backbone",
            run={"backbone": args.backbone, **run},
            results=[Result(OWN_PREDICTION, "", "primary", accuracy)],
            config=section,
            timing={"train_seconds": result.seconds, "test_seconds": test_seconds},
            info={"n_test": n_test, "steps": result.steps, "loss_per_epoch": result.loss_per_epoch},
            variant=args.variant,
        )
    save_backbone(args.out, backbone, info)
    write_json(
        args.metrics,
        {
            "backbone": args.backbone,
            **run,
            "loss_per_epoch": result.loss_per_epoch,
            "epochs": result.epochs,
            "steps": result.steps,
            "train_seconds": result.seconds,
            "forwards": result.forwards,
            "n_train": batches.n_items,
            "trainable_parameters": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
            "config": cfg_json,
            "device": str(device),
        },
    )
    if args.record is not None:
        write_record(args.record, record)
    log.info(
        "%s: loss %.4f -> %.4f in %.1fs; %d images and %d prompts through the encoders; wrote %s",
        what, result.loss_per_epoch[0], result.loss_per_epoch[-1], result.seconds,
        result.forwards.get("image", 0), result.forwards.get("text", 0), args.out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
