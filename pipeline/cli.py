"""Shared plumbing for the stage entry points (``python -m pipeline.<stage>``): logging and errors."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import InputError

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
