"""Last step: merge FMA and linear-probe result JSONs into few-shot tables and the steps figure."""

from __future__ import annotations

import argparse
import logging

from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.report.fewshot import check_groups, load_runs, write_report

log = logging.getLogger("pipeline.make_tables")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.make_tables", description=__doc__)
    p.add_argument("--fma", nargs="*", default=[], metavar="JSON", help="FMA result JSONs")
    p.add_argument("--probe", nargs="*", default=[], metavar="JSON", help="linear-probe result JSONs")
    p.add_argument(
        "--groups",
        default="{}",
        help='JSON: dataset groups for averaged rows, e.g. {"difficult": [...], "easy": [...]}',
    )
    p.add_argument("--out-dir", required=True, help="writes fewshot.{csv,md,tex} and curves.png here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    groups = check_groups(parse_json_arg(args.groups, "--groups"))
    runs = load_runs(args.fma, args.probe)
    log.info("read %d FMA and %d linear-probe results", len(runs.fma), len(runs.probe))
    paths = write_report(runs, args.out_dir, groups)
    for kind, path in paths.items():
        log.info("wrote %s: %s", kind, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
