"""Ablation step: merge FMA ablation-run JSONs (each with a "variant") into ablations.{md,csv,tex}."""

from __future__ import annotations

import argparse
import logging

from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.report.ablations import check_labels, load_ablation_runs, write_ablation_report

log = logging.getLogger("pipeline.make_ablations")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.make_ablations", description=__doc__)
    p.add_argument("--runs", nargs="+", required=True, metavar="JSON", help="FMA ablation result JSONs")
    p.add_argument(
        "--labels",
        default="{}",
        help='JSON {variant name: row label}; its order sets the row order, e.g. {"default": "FMA"}',
    )
    p.add_argument("--out-dir", required=True, help="writes ablations.{md,csv,tex} here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    labels = check_labels(parse_json_arg(args.labels, "--labels"))
    runs = load_ablation_runs(args.runs)
    log.info("read %d ablation runs (%d variants)", len(runs), len({r["variant"] for r in runs}))
    paths = write_ablation_report(runs, args.out_dir, labels)
    for kind, path in paths.items():
        log.info("wrote %s: %s", kind, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
