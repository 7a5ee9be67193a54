"""Last step: every stage-2 result record -> the few-shot and plug-and-play tables and the step figure."""

from __future__ import annotations

import argparse
import logging

from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.core.errors import InputError
from pipeline.report.records import read_records
from pipeline.report.tables import check_groups, write_fewshot_report

log = logging.getLogger("pipeline.make_tables")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.make_tables", description=__doc__)
    p.add_argument("--records", nargs="*", default=[], metavar="JSON", help="result records of any method")
    p.add_argument(
        "--groups",
        default="{}",
        help='JSON: dataset groups for averaged rows, e.g. {"difficult": [...], "easy": [...]}',
    )
    p.add_argument("--backbones", default="[]", help="JSON list: backbone order of the rows")
    p.add_argument("--out-dir", required=True, help="writes fewshot.*, plugplay.* and curves.png here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    groups = check_groups(parse_json_arg(args.groups, "--groups"))
    order = parse_json_arg(args.backbones, "--backbones")
    if not isinstance(order, list) or not all(isinstance(b, str) for b in order):
        raise InputError("argument --backbones: expected a JSON list of backbone names")
    records = read_records(args.records)
    log.info("read %d result records", len(records))
    for name, path in write_fewshot_report(records, args.out_dir, groups, order).items():
        log.info("wrote %s: %s", name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
