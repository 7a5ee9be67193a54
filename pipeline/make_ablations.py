"""Ablation table: result records of the ablation variants -> <stem>.{md,csv,tex,html} (FMA's or a
backbone's)."""

from __future__ import annotations

import argparse
import logging

from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.report.ablations import check_labels, write_ablation_report
from pipeline.report.records import read_records

log = logging.getLogger("pipeline.make_ablations")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.make_ablations", description=__doc__)
    p.add_argument("--records", nargs="*", default=[], metavar="JSON", help="records with a variant")
    p.add_argument("--labels", default="{}", help="JSON: variant name -> row label (its order = row order)")
    p.add_argument("--out-dir", required=True, help="writes <stem>.{csv,md,tex,html} here")
    p.add_argument("--stem", default="ablations", help="file name of the tables, without extension")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    labels = check_labels(parse_json_arg(args.labels, "--labels"))
    records = read_records(args.records)
    log.info("read %d ablation records", len(records))
    for name, path in write_ablation_report(records, args.out_dir, labels, args.stem).items():
        log.info("wrote %s: %s", name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
