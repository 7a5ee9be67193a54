"""Transfer-protocol table: source runs' records and their transfer records -> <protocol>.{md,...}."""

from __future__ import annotations

import argparse
import logging

from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.core.errors import InputError
from pipeline.report.protocols import PROTOCOLS, write_protocol_report
from pipeline.report.records import read_records
from pipeline.report.summary import check_groups

log = logging.getLogger("pipeline.make_protocol_tables")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.make_protocol_tables", description=__doc__)
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--records", nargs="*", default=[], metavar="JSON", help="source and transfer records")
    p.add_argument("--backbones", default="[]", help="JSON list: the backbones' row order")
    p.add_argument("--groups", default="{}", help="JSON: dataset groups, name -> datasets (base-to-new)")
    p.add_argument("--out-dir", required=True, help="writes <protocol>.{csv,md,tex,html} here")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    order = parse_json_arg(args.backbones, "--backbones")
    if not isinstance(order, list) or not all(isinstance(b, str) for b in order):
        raise InputError("argument --backbones: expected a JSON list of backbone names")
    groups = check_groups(parse_json_arg(args.groups, "--groups"))
    records = read_records(args.records)
    log.info("read %d records", len(records))
    for name, path in write_protocol_report(args.protocol, records, args.out_dir, order, groups).items():
        log.info("wrote %s: %s", name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
