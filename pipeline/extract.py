"""Stage 1 -> cache: write one backbone's HDF5 features for a dataset's test split or for one run.

Two kinds of job (``pipeline.features.cache`` has the layout):

* without ``--split-file``: the test split, once per dataset, for a backbone whose image encoder
  is frozen and that encodes images itself (zero-shot CLIP);
* with ``--split-file/--shot/--seed``: one (shot, seed) run: the few-shot cache (train views, val,
  class texts) and, for a backbone that changes the image side, the run's own test cache
  (``--test-out``). A trained backbone loads its ``fit_backbone`` checkpoint (``--state``); a
  backbone that reuses another's caches reads them (``--reuse-fewshot``, ``--reuse-test``) and
  never runs the image encoder.
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
from pipeline.backbones.loading import build_backbone, load_trained_backbone
from pipeline.backbones.registry import get_spec
from pipeline.core.cli import guarded, parse_json_object, setup_logging
from pipeline.core.config import EncoderConfig, ExtractionConfig, RuntimeConfig, from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.data.coop import check_images, load_dataset
from pipeline.data.fewshot import read_split_file
from pipeline.features.cache import load_fewshot, load_test, write_fewshot_cache, write_test_cache
from pipeline.features.extraction import adapt_cached, class_text_arrays, encode_items

log = logging.getLogger("pipeline.extract")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.extract", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", required=True, help="registry name (pipeline/backbones/registry.py)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--config", required=True, help="JSON: {encoder, [extraction, templates]}")
    run = p.add_argument_group("one run (few-shot cache)")
    run.add_argument("--split-file", type=Path, help="few-shot split JSON of the run")
    run.add_argument("--shot", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--state", type=Path, help="fit_backbone checkpoint of a trained backbone")
    run.add_argument("--reuse-fewshot", type=Path, help="few-shot cache of the backbone this one reuses")
    run.add_argument("--reuse-test", type=Path, help="test cache of the backbone this one reuses")
    run.add_argument("--test-out", type=Path, help="the run's own test cache (image side changed)")
    add_encoding_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the test cache, or the run's few-shot cache")
    return p


def add_encoding_arguments(p: argparse.ArgumentParser) -> None:
    """The runtime arguments of a stage that runs the encoders (speed only, never the results)."""
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256, help="views per encoder batch")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.split_file is not None and (args.shot is None or args.seed is None):
        p.error("--split-file needs --shot and --seed")
    return args


def config_templates(cfg: dict[str, Any]) -> list[str]:
    """The config slice's prompt templates (a list of strings)."""
    templates = cfg.get("templates", [])
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise InputError("config key 'templates': expected a list of strings")
    return templates


def extract_test(args: argparse.Namespace, cfg: dict[str, Any], runtime: RuntimeConfig) -> dict[str, int]:
    """The per-dataset test cache of a backbone that encodes images with a frozen image encoder."""
    spec = get_spec(args.backbone)
    if spec.trains or not spec.encodes_images or not spec.frozen_image_encoder:
        raise InputError(
            f"backbone '{args.backbone}' has no per-dataset test cache: its test features come from "
            "each run (--split-file) or from the backbone it reuses"
        )
    encoder_cfg = from_dict(EncoderConfig, cfg["encoder"], "encoder.")
    splits = load_dataset(args.dataset, args.data_root)
    check_images(splits, splits.test)
    encoder = load_encoder(encoder_cfg, resolve_device(runtime.device))
    backbone = build_backbone(args.backbone, encoder, splits.classnames, [], None, encoder.dim)
    test = encode_items(backbone, splits, splits.test, runtime, f"{args.dataset} test")
    attrs = _attrs(args, encoder_cfg, cfg, image_source=args.backbone)
    write_test_cache(args.out, features=test.x, labels=test.y, paths=test.paths, attrs=attrs)
    return dict(backbone.forwards)


def _attrs(
    args: argparse.Namespace, encoder_cfg: EncoderConfig, cfg: dict, image_source: str
) -> dict[str, Any]:
    return {
        "backbone": args.backbone,
        "image_source": image_source,
        "dataset": args.dataset,
        "model": encoder_cfg.model,
        "pretrained": encoder_cfg.pretrained or "",
        "config": cfg,
    }


def extract_run(args: argparse.Namespace, cfg: dict[str, Any], runtime: RuntimeConfig) -> dict[str, int]:
    """The few-shot cache of one (shot, seed) run, and its test cache when the image side changes."""
    spec = get_spec(args.backbone)
    device = resolve_device(runtime.device)
    encoder_cfg = from_dict(EncoderConfig, cfg["encoder"], "encoder.")
    templates = config_templates(cfg)
    splits = load_dataset(args.dataset, args.data_root)
    fewshot = read_split_file(args.split_file, splits, shot=args.shot, seed=args.seed)
    run = {"dataset": args.dataset, "shot": args.shot, "seed": args.seed}
    if spec.trains and args.state is None:
        raise InputError(f"backbone '{args.backbone}' is trained: pass its fit_backbone checkpoint (--state)")
    if spec.reuses and args.reuse_fewshot is None:
        raise InputError(f"backbone '{args.backbone}' reuses '{spec.reuses}': pass --reuse-fewshot")
    if not spec.frozen_image_encoder and args.test_out is None:
        raise InputError(f"backbone '{args.backbone}' changes the image side: pass --test-out")

    base = None
    if spec.reuses:
        encoder_expect = {"model": encoder_cfg.model, "pretrained": encoder_cfg.pretrained or ""}
        base = load_fewshot(args.reuse_fewshot, expect={**run, "backbone": spec.reuses, **encoder_expect})
        if base.train_paths != [it.path for it in fewshot.train]:
            raise InputError(f"{args.reuse_fewshot}: its train images differ from {args.split_file}")
    needs_encoder = spec.encodes_images or spec.changes in ("text", "both")
    encoder = load_encoder(encoder_cfg, device) if needs_encoder else None
    dim = encoder.dim if encoder is not None else int(base.train_x.shape[-1])  # type: ignore[union-attr]
    if spec.trains:
        expect = {"backbone": args.backbone, **run, "classnames": splits.classnames}
        backbone = load_trained_backbone(args.state, device, expect, encoder=encoder)
    else:
        backbone = build_backbone(args.backbone, encoder, splits.classnames, templates, None, dim)
    if encoder is None:
        assert base is not None and base.text is not None
        backbone.use_texts(torch.as_tensor(base.text))

    image_source = args.backbone
    test = None
    if base is not None:
        train_x, val_x = adapt_cached(backbone, base.train_x), adapt_cached(backbone, base.val_x)
        train_y, val_y = base.train_y, base.val_y
        train_paths, val_paths = base.train_paths, [it.path for it in fewshot.val]
        if spec.frozen_image_encoder:
            image_source = str(base.attrs["image_source"])
        else:
            want = {"backbone": base.attrs["image_source"], "dataset": args.dataset, **encoder_expect}
            base_x, base_y, _ = load_test(args.reuse_test, want)
            if len(base_y) != len(splits.test):
                raise InputError(
                    f"{args.reuse_test}: {len(base_y)} test images, the dataset has {len(splits.test)}"
                )
            test = (adapt_cached(backbone, base_x), base_y, [it.path for it in splits.test])
    else:
        extraction = from_dict(ExtractionConfig, cfg.get("extraction"), "extraction.")
        images = [*fewshot.train, *fewshot.val] + ([] if spec.frozen_image_encoder else list(splits.test))
        check_images(splits, images)
        name = args.dataset
        train = encode_items(backbone, splits, fewshot.train, runtime, f"{name} train", extraction, args.seed)
        val = encode_items(backbone, splits, fewshot.val, runtime, f"{name} val")
        train_x, train_y, train_paths = train.x, train.y, train.paths
        val_x, val_y, val_paths = val.x, val.y, val.paths
        if not spec.frozen_image_encoder:
            t = encode_items(backbone, splits, splits.test, runtime, f"{name} test")
            test = (t.x, t.y, t.paths)
    reused_text = base.text if base is not None else None
    text, targets = class_text_arrays(backbone, spec, train_x, train_y, reused_text)

    attrs = _attrs(args, encoder_cfg, cfg, image_source)
    forwards = dict(backbone.forwards)
    if test is not None:
        test_attrs = {**attrs, "shot": args.shot, "seed": args.seed, "forwards": forwards}
        write_test_cache(args.test_out, features=test[0], labels=test[1], paths=test[2], attrs=test_attrs)
    write_fewshot_cache(
        args.out,
        train_x=train_x,
        train_y=np.asarray(train_y),
        train_paths=list(train_paths),
        val_x=val_x,
        val_y=np.asarray(val_y),
        val_paths=list(val_paths),
        text=text,
        classnames=list(splits.classnames),
        attrs={**attrs, "shot": args.shot, "seed": args.seed, "templates": templates, "forwards": forwards},
        train_targets=targets,
    )
    return forwards


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = _parse(argv)
    set_threads(args.threads)
    cfg = parse_json_object(args.config, "--config")
    if "encoder" not in cfg:
        raise InputError("argument --config: expected a JSON object with an 'encoder' key")
    runtime = RuntimeConfig(device=args.device, batch_size=args.batch_size, workers=args.workers)
    start = time.perf_counter()
    forwards = extract_run(args, cfg, runtime) if args.split_file else extract_test(args, cfg, runtime)
    seconds = time.perf_counter() - start
    log.info(
        "wrote %s in %.1fs: %d images and %d prompts through the encoders",
        args.out, seconds, forwards.get("image", 0), forwards.get("text", 0),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
