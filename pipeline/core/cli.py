"""Shared plumbing for the stage entry points (``python -m pipeline.<stage>``): logging and errors."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.core.atomic import STORAGE_ERRNOS
from pipeline.core.errors import InputError, Interrupted
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


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (Slurm at a time limit, Snakemake on Ctrl-C) raises ``Interrupted``, as SIGINT raises
    KeyboardInterrupt, so that ``atomic_path`` removes its temporary files on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """Turn bad input, a storage failure (disk full, read-only, no permission) or a SIGINT/SIGTERM
    into one line on stderr and an exit code (2, 1, 128 + signal), instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            with _sigterm_raises():
                return main(*args, **kwargs)
        except (InputError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            if err.errno not in STORAGE_ERRNOS:
                raise
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as err:  # SIGINT, or SIGTERM as Interrupted
            signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
            name = signal.Signals(signum).name
            print(f"error: stopped by {name}; no partial output was left", file=sys.stderr)
            return 128 + signum

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
