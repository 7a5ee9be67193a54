"""Build a demo dataset (real images shipped with installed packages) under the data root."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core.cli import guarded, setup_logging
from pipeline.data.catalog import get_dataset_info, list_demo_datasets
from pipeline.demo.datasets import build_demo_dataset

log = logging.getLogger("pipeline.build_demo")


@guarded
def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m pipeline.build_demo", description=__doc__)
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(list_demo_datasets())}")
    parser.add_argument("--data-root", required=True, type=Path, help="builds DATA_ROOT/<dataset folder>")
    args = parser.parse_args(argv)

    info = get_dataset_info(args.dataset)
    # build_demo_dataset refuses a dataset that is not a demo before writing anything.
    split_path = build_demo_dataset(args.dataset, args.data_root / info.folder)
    log.info("wrote %s", split_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
