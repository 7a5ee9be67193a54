"""Shared plumbing for the stage entry points (``python -m pipeline.<stage>``): logging and errors."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline.core.errors import InputError
from pipeline.features.cache import Features, load_features

log = logging.getLogger("pipeline")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps; called only from ``main``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def parse_json_arg(text: str, name: str) -> Any:
    """Parse a JSON command-line argument, naming the argument if it is malformed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"argument {name}: not valid JSON ({err.msg} at char {err.pos})") from None


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """Turn bad input into one line on stderr and exit code 2, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except (InputError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


def parse_json_object(text: str, name: str) -> dict:
    """Parse a JSON argument that must be an object (a config slice or an expectation)."""
    value = parse_json_arg(text, name)
    if not isinstance(value, dict):
        raise InputError(f"argument {name}: expected a JSON object, got {type(value).__name__}")
    return value


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every stage-2 step takes to locate and check one (backbone, dataset, shot, seed)."""
    parser.add_argument("--fewshot", required=True, help="few-shot HDF5 cache (train/val/text)")
    parser.add_argument("--test", required=True, help="test HDF5 cache of the same backbone and dataset")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shot", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--backbone", required=True, help="stage-1 backbone registry name")
    parser.add_argument("--expect", default="{}", help="JSON: further cache attributes to check (model, ...)")


def load_cached_run(args: argparse.Namespace) -> Features:
    """Load the caches named by ``add_cache_arguments``, checking dataset/shot/seed/backbone + --expect."""
    expect = parse_json_object(args.expect, "--expect")
    run = {"dataset": args.dataset, "shot": args.shot, "seed": args.seed, "backbone": args.backbone}
    return load_features(args.fewshot, args.test, expect={**run, **expect})
