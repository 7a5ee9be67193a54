"""Stage 2, FMA: train a velocity net on one few-shot cache, choose M, write its record and checkpoint."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from pipeline.core.cli import add_cache_arguments, guarded, load_cached_run, parse_json_object, setup_logging
from pipeline.core.config import EncoderConfig, ExtractionConfig, FMAConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.features.cache import Features
from pipeline.features.texts import ClassTexts, ImageConditionedTexts, StaticTexts
from pipeline.methods.fma.checkpoint import save_velocity
from pipeline.methods.fma.evaluate import cv_select_m, evaluate_fma, fma_record
from pipeline.methods.fma.solver import mean_pairwise_cosine
from pipeline.methods.fma.trainer import CachedViews, ViewSource, train_velocity
from pipeline.report.records import write_record

log = logging.getLogger("pipeline.train_fma")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train_fma", description=__doc__)
    add_cache_arguments(parser)
    parser.add_argument("--config", default="{}", help="JSON of the fma config slice (FMAConfig)")
    parser.add_argument(
        "--backbone-state",
        type=Path,
        default=None,
        help="the trained backbone (fit_backbone's .pt): required when the cache holds per-image texts",
    )
    parser.add_argument(
        "--variant", default=None, help="ablation variant name, recorded as the record's 'variant'"
    )
    online = parser.add_argument_group("online views (fma.online = true)")
    online.add_argument("--data-root", type=Path, default=None, help="folder holding the dataset's images")
    online.add_argument(
        "--online-config",
        default=None,
        help='JSON {"encoder": {...}, "extraction": {...}}: the slice the extraction rule gets',
    )
    online.add_argument("--online-batch-size", type=int, default=256, help="images per encoder batch")
    online.add_argument("--workers", type=int, default=0, help="DataLoader workers for image decoding")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--metrics", required=True, help="output result record JSON (pipeline.report.records)"
    )
    parser.add_argument("--checkpoint", required=True, help="output velocity-net checkpoint (.pt)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def build_online_views(args: argparse.Namespace, features: Features, device: torch.device) -> ViewSource:
    """``OnlineViews`` over the cache's training images, encoded by the cache's own encoder on ``device``.

    Raises:
        InputError: a missing ``--data-root``/``--online-config``, an online encoder other than the
            cache's, a backbone whose image encoder is not frozen, or a missing image.
    """
    # Imported here: only online training needs open_clip, images and the backbones.
    from pipeline.backbones.encoder import build_train_transform, load_encoder
    from pipeline.backbones.registry import get_spec, load_backbone_class
    from pipeline.data.coop import Item, check_images, load_dataset, resolve_image
    from pipeline.features.views import EpochImages
    from pipeline.methods.fma.online import OnlineViews

    if args.data_root is None or args.online_config is None:
        raise InputError("config key 'fma.online' is true: pass --data-root and --online-config")
    online_cfg = parse_json_object(args.online_config, "--online-config")
    if "encoder" not in online_cfg:
        raise InputError("argument --online-config: expected a JSON object with an 'encoder' key")
    unknown = sorted(set(online_cfg) - {"encoder", "extraction"})
    if unknown:
        raise InputError(f"argument --online-config: unknown key '{unknown[0]}' (valid: encoder, extraction)")
    encoder_cfg = from_dict(EncoderConfig, online_cfg["encoder"], "encoder.")
    extraction = from_dict(ExtractionConfig, online_cfg.get("extraction"), "extraction.")
    for key, want in (("model", encoder_cfg.model), ("pretrained", encoder_cfg.pretrained or "")):
        if features.attrs.get(key) != want:
            raise InputError(
                f"{args.fewshot}: cache attribute '{key}' is {features.attrs.get(key)!r} but "
                f"--online-config encoder.{key} is {want!r}: online views must come from the cache's encoder"
            )
    if not get_spec(args.backbone).frozen_image_encoder:
        raise InputError(f"config key 'fma.online': backbone '{args.backbone}' has a trained image encoder")
    splits = load_dataset(args.dataset, args.data_root)
    items = [
        Item(path, int(y), features.classnames[int(y)])
        for path, y in zip(features.train_paths, features.train_y, strict=True)
    ]
    check_images(splits, items)
    encoder = load_encoder(encoder_cfg, device)
    backbone = load_backbone_class("zeroshot")(encoder, features.classnames, [], None, dim=features.dim)
    transform = build_train_transform(encoder, extraction.crop_scale, extraction.hflip)
    images = EpochImages(
        [resolve_image(splits, item) for item in items], features.train_y, transform, args.seed
    )
    return OnlineViews(
        images, backbone.encode_images, batch_size=args.online_batch_size, workers=args.workers
    )


def class_texts_for(args: argparse.Namespace, features: Features, device: torch.device) -> ClassTexts:
    """The class-text provider FMA classifies with (docs/methods.md, Eq. (F10)).

    A static cache gives its (C, D) class texts. A per-image-text cache (CoCoOp) stores only each
    training view's own-class text; every other image's texts are computed on the fly from its
    untransported feature x0 by the trained backbone in ``--backbone-state`` (docs/backbones.md).

    Raises:
        InputError: a per-image-text cache without ``--backbone-state``, or a state trained for
            another run or set of classes.
    """
    if features.text is not None:
        return StaticTexts(features.text)
    if args.backbone_state is None:
        raise InputError(f"{args.fewshot}: the cache holds per-image class texts: pass --backbone-state")
    from pipeline.backbones.loading import load_trained_backbone  # open_clip only for this case

    expect = {
        "backbone": args.backbone, "dataset": args.dataset, "shot": args.shot, "seed": args.seed,
        "classnames": list(features.classnames),
    }  # fmt: skip
    return ImageConditionedTexts(load_trained_backbone(args.backbone_state, device, expect))


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    cfg = from_dict(FMAConfig, parse_json_object(args.config, "--config"), prefix="fma.")
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"argument --device: {err}") from None

    features = load_cached_run(args)
    for name, y in (("train", features.train_y), ("val", features.val_y), ("test", features.test_y)):
        if len(y) == 0:
            path = args.test if name == "test" else args.fewshot
            raise InputError(f"{path}: the '{name}' split is empty")
    texts = class_texts_for(args, features, device)

    if cfg.online:
        views = build_online_views(args, features, device)
        train_views = None
    else:
        cached = features.train_x.shape[1] - 1
        if cfg.train_views is not None and cfg.train_views > cached:
            raise InputError(
                f"config key 'fma.train_views': {cfg.train_views} views asked for, but {args.fewshot} "
                f"holds {cached} augmented views per image"
            )
        views = CachedViews(
            features.train_x, cfg.train_views, device, targets=getattr(features, "train_targets", None)
        )
        train_views = views.n_views - 1
    start = time.perf_counter()  # includes online encoding: the ablation compares wall times
    fit = train_velocity(features, cfg, seed=args.seed, device=device, views=views)
    timing = {"train_seconds": time.perf_counter() - start, "online_encode_seconds": views.encode_seconds}
    if cfg.online:
        log.info("online views: %.1fs of %.1fs training spent encoding", *timing.values())

    cv = cv_select_m(features, cfg, args.seed, texts, device) if cfg.cv_folds else None
    if cv is not None:
        timing["cv_seconds"] = cv.seconds
    start = time.perf_counter()
    evaluation = evaluate_fma(fit.net, features, cfg, texts, device, cv=cv)
    timing["eval_seconds"] = time.perf_counter() - start

    info = {
        **fit.info,
        "n_train": len(features.train_y),
        "n_val": len(features.val_y),
        "n_test": len(features.test_y),
        "n_views": int(features.attrs.get("n_views", features.train_x.shape[1] - 1)),
        "train_views": train_views,  # augmented cached views drawn from; null when online
        "online": cfg.online,
        "text_mean_cosine": None if features.text is None else mean_pairwise_cosine(features.text),
        "device": str(device),
    }
    run = {"backbone": args.backbone, "dataset": args.dataset, "shot": args.shot, "seed": args.seed}
    record = fma_record(
        run=run, cfg=cfg, evaluation=evaluation, history=fit.history, timing=timing, info=info,
        variant=args.variant,
    )  # fmt: skip
    # Checkpoint first: the record is the rule's completion marker.
    save_velocity(args.checkpoint, fit.net, cfg, evaluation.m)
    write_record(args.metrics, record)
    log.info("wrote %s and %s", args.metrics, args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
