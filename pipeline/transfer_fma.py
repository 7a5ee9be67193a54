"""Stage 2, transfer: a run's velocity field and backbone scored on another class set (docs/protocol.md).

The velocity field trained on the run's dataset transports the target's test features toward the
target's class texts; M is the one the run chose on its own validation split (the target has none
to choose on). The record (stage ``transfer``) holds the backbone's own accuracy on the target
(M = 0), FMA at that M, the full trajectory, the oracle M (a diagnostic) and the step ensemble.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from pipeline.core.cli import guarded, parse_json_object, setup_logging
from pipeline.core.device import resolve_device, set_threads
from pipeline.core.errors import InputError
from pipeline.features.cache import load_transfer_run
from pipeline.features.texts import ClassTexts, ImageConditionedTexts, StaticTexts
from pipeline.methods.fma.checkpoint import load_selected_velocity
from pipeline.methods.fma.evaluate import curves_for, ensemble_steps_of
from pipeline.methods.fma.solver import select_m
from pipeline.report.records import Result, baseline_result, build_record, write_record

log = logging.getLogger("pipeline.transfer_fma")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.transfer_fma", description=__doc__.splitlines()[0])
    p.add_argument("--transfer", type=Path, required=True, help="the run's transfer file of the target")
    p.add_argument("--test", type=Path, help="the target's test file of the image source (frozen image side)")
    p.add_argument("--velocity", type=Path, required=True, help="the run's train_fma checkpoint")
    p.add_argument("--backbone", required=True)
    p.add_argument("--source", required=True, help="the dataset the run trained on")
    p.add_argument("--shot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--backbone-state", type=Path, help="the run's fit_backbone checkpoint (per-image texts)")
    p.add_argument("--expect", default="{}", help="JSON: further transfer-file attributes (model, ...)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="the transfer result record (JSON)")
    return p


def target_texts(args: argparse.Namespace, cache, device: torch.device) -> ClassTexts:
    """The target's class texts: the file's matrix, or per-image texts of the rebuilt backbone."""
    if cache.text is not None:
        return StaticTexts(cache.text)
    if args.backbone_state is None:
        raise InputError(f"{args.transfer}: the backbone has per-image class texts: pass --backbone-state")
    from pipeline.backbones.loading import load_for_classes  # open_clip only for this case

    expect = {"backbone": args.backbone, "dataset": args.source, "shot": args.shot, "seed": args.seed}
    templates = list(cache.attrs.get("templates") or [])
    return ImageConditionedTexts(
        load_for_classes(args.backbone_state, device, expect, cache.classnames, templates)
    )


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    set_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"argument --device: {err}") from None
    run = {"backbone": args.backbone, "dataset": args.target, "source": args.source, "shot": args.shot,
           "seed": args.seed}  # fmt: skip
    expect = {**run, **parse_json_object(args.expect, "--expect")}
    cache, x, y = load_transfer_run(args.transfer, args.test, expect=expect)
    if len(y) == 0:
        raise InputError(f"{args.test or args.transfer}: the target's test split is empty")
    net, cfg, m = load_selected_velocity(args.velocity, device)
    if net.dim != x.shape[1]:
        raise InputError(
            f"{args.velocity}: velocity field of dimension {net.dim}, features have {x.shape[1]}"
        )
    if not 0 <= m <= cfg.max_steps:
        raise InputError(f"{args.velocity}: selected M {m} outside 0..{cfg.max_steps}")
    texts = target_texts(args, cache, device)
    start = time.perf_counter()
    test = curves_for(net, x, y, texts, cfg, device)
    seconds = time.perf_counter() - start
    acc, oracle = test.acc, select_m(test.acc)
    steps = ", ".join(str(s) for s in ensemble_steps_of(cfg))
    results = [
        baseline_result(acc[0]),
        Result("fma", "FMA", "primary", acc[m], None, True, {"m": m}),
        Result("fma_full", f"FMA, full trajectory (M = {cfg.max_steps})", "variant", acc[cfg.max_steps], None,
               False, {"m": cfg.max_steps}),
        Result("fma_oracle", "FMA, oracle M (picked on test)", "diagnostic", acc[oracle], None, False,
               {"m": oracle}),
        Result("fma_ensemble", f"FMA, multi-step ensemble (M = {steps})", "variant", test.ensemble_acc, None,
               False, {"steps": list(ensemble_steps_of(cfg))}),
    ]  # fmt: skip
    log.info(
        "%s %s -> %s (%d shots, seed %d): backbone %.2f%%, FMA (M=%d, chosen on %s val) %.2f%%; "
        "oracle M=%d %.2f%% [%d images, %d classes, %.1fs]",
        args.backbone, args.source, args.target, args.shot, args.seed, acc[0], m, args.source, acc[m],
        oracle, acc[oracle], len(y), len(cache.classnames), seconds,
    )  # fmt: skip
    record = build_record(
        stage="transfer",
        run={"backbone": args.backbone, "dataset": args.target, "shot": args.shot, "seed": args.seed},
        results=results,
        config={"step_size": cfg.step_size, "max_steps": cfg.max_steps},
        curves={"x": "step", "step": list(range(len(acc))), "test_acc": acc, "test_dist": test.dist},
        timing={"eval_seconds": seconds},
        info={"source": args.source, "selected_m": m, "oracle_m": oracle, "n_test": len(y),
              "n_classes": len(cache.classnames), "device": str(device)},
    )  # fmt: skip
    write_record(args.out, record)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
