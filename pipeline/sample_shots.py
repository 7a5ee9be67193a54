"""Sample one few-shot subset (dataset, shot, seed) and write it as a small JSON split file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core.cli import guarded, setup_logging
from pipeline.data.catalog import list_datasets
from pipeline.data.coop import check_images, load_dataset
from pipeline.data.fewshot import SAMPLERS, sample_fewshot, write_split_file

log = logging.getLogger("pipeline.sample_shots")


@guarded
def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m pipeline.sample_shots", description=__doc__)
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(list_datasets())}")
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--shot", required=True, type=int, help="training images per class")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument(
        "--sampler", default="dassl", choices=SAMPLERS, help="numpy (this project's) or dassl (CoOp's draw)"
    )
    parser.add_argument("--out", required=True, type=Path, help="few-shot split JSON to write")
    args = parser.parse_args(argv)

    splits = load_dataset(args.dataset, args.data_root)
    fewshot = sample_fewshot(splits, args.shot, args.seed, args.sampler)
    # Fail here, naming the split file, rather than in extraction: only the sampled images are statted.
    check_images(splits, fewshot.train + fewshot.val)
    write_split_file(args.out, args.dataset, args.shot, args.seed, fewshot, args.sampler)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
