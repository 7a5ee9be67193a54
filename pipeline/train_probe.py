"""Stage 2: fit the linear probe for one (backbone, dataset, shot, seed) and write its result JSON."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict

from threadpoolctl import threadpool_limits

from pipeline.core.cli import add_cache_arguments, guarded, load_cached_run, parse_json_arg, setup_logging
from pipeline.core.config import ProbeConfig, from_dict
from pipeline.core.errors import InputError
from pipeline.methods.linear_probe import evaluate, fit_probe, save_probe
from pipeline.report.records import Result, build_record, write_record

log = logging.getLogger("pipeline.train_probe")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train_probe", description=__doc__)
    add_cache_arguments(p)
    p.add_argument("--config", default="{}", help="JSON: the probe config slice (ProbeConfig)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
    p.add_argument("--out", required=True, help="result record (JSON)")
    p.add_argument("--weights", default=None, help="also write the probe's weights here (.npz)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = from_dict(ProbeConfig, parse_json_arg(args.config, "--config"), prefix="probe.")
    if args.threads < 1:
        raise InputError(f"argument --threads: must be >= 1, got {args.threads}")
    feats = load_cached_run(args)
    log.info(
        "%s %s shot=%d seed=%d: %d train, %d val, %d test, %d classes",
        args.backbone,
        args.dataset,
        args.shot,
        args.seed,
        len(feats.train_y),
        len(feats.val_y),
        len(feats.test_y),
        feats.n_classes,
    )
    with threadpool_limits(limits=args.threads):
        start = time.perf_counter()
        result = fit_probe(feats.train_x, feats.train_y, feats.val_x, feats.val_y, cfg)
        train_seconds = time.perf_counter() - start
        test_acc = evaluate(result.classifier, feats.test_x, feats.test_y)
    log.info("C=%.4g val %.2f%% test %.2f%% (%.1f s)", result.C, result.val_acc, test_acc, train_seconds)
    run = {"backbone": args.backbone, "dataset": args.dataset, "shot": args.shot, "seed": args.seed}
    probe = Result("linear_probe", "linear probe", "primary", test_acc, result.val_acc, info={"C": result.C})
    record = build_record(
        stage="linear_probe",
        run=run,
        results=[probe],
        config=asdict(cfg),
        timing={"train_seconds": train_seconds},
        info={
            "n_train": len(feats.train_y),
            "n_val": len(feats.val_y),
            "n_test": len(feats.test_y),
            "converged": result.converged,
            "search": [list(h) for h in result.history],
        },
    )
    if args.weights:  # before the record: the record is the rule's completion marker
        save_probe(args.weights, result.classifier, feats.classnames)
    write_record(args.out, record)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
