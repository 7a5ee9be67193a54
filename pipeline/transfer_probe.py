"""Stage 2, transfer: a run's linear probe scored on a target with the same classes (docs/protocol.md).

Domain generalization evaluates a run trained on a dataset on its test-only variants: the same
classes (ImageNet-V2, -Sketch) or a subset of them (ImageNet-A and -R: 200 of ImageNet's classes;
the probe's scores for those classes are compared). A target with a class the run never saw has no
probe score: the stage refuses it (one line).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.core.cli import guarded, parse_json_object, setup_logging
from pipeline.core.errors import InputError
from pipeline.features.cache import load_transfer_run
from pipeline.methods.linear_probe import label_map, load_probe
from pipeline.report.records import Result, build_record, write_record

log = logging.getLogger("pipeline.transfer_probe")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.transfer_probe", description=__doc__.splitlines()[0])
    p.add_argument(
        "--weights", type=Path, required=True, help="the run's probe weights (train_probe --weights)"
    )
    p.add_argument("--transfer", type=Path, required=True, help="the run's transfer file of the target")
    p.add_argument("--test", type=Path, help="the target's test file of the image source (frozen image side)")
    p.add_argument("--backbone", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--shot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--expect", default="{}", help="JSON: further transfer-file attributes (model, ...)")
    p.add_argument("--out", type=Path, required=True, help="the transfer result record (JSON)")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    run = {"backbone": args.backbone, "dataset": args.target, "source": args.source, "shot": args.shot,
           "seed": args.seed}  # fmt: skip
    expect = {**run, **parse_json_object(args.expect, "--expect")}
    cache, x, y = load_transfer_run(args.transfer, args.test, expect=expect)
    probe = load_probe(args.weights)
    parents = cache.attrs.get("parent_labels") or None
    mapping = label_map(probe.classnames, cache.classnames, parents)
    if mapping is None:
        missing = next(n for n in cache.classnames if probe.classnames.count(n) != 1)
        raise InputError(
            f"{args.weights}: the probe has no single class {missing!r} of {args.target}: "
            "a linear probe applies only to targets with the run's classes"
        )
    if len(y) == 0 or x.shape[1] != probe.coef.shape[1]:
        raise InputError(f"{args.test or args.transfer}: {len(y)} test features of dimension {x.shape[1]}, "
                         f"the probe takes {probe.coef.shape[1]}")  # fmt: skip
    scores = probe.scores(x)[:, mapping]  # (N, C_target)
    acc = float(100.0 * np.mean(scores.argmax(axis=1) == y))
    log.info(
        "%s %s -> %s (%d shots, seed %d): linear probe %.2f%% [%d images, %d classes]",
        args.backbone, args.source, args.target, args.shot, args.seed, acc, len(y), len(mapping),
    )  # fmt: skip
    record = build_record(
        stage="transfer_probe",
        run={"backbone": args.backbone, "dataset": args.target, "shot": args.shot, "seed": args.seed},
        results=[Result("linear_probe", "linear probe", "primary", acc)],
        config={},
        info={"source": args.source, "n_test": len(y), "n_classes": len(mapping)},
    )
    write_record(args.out, record)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
