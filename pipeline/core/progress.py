"""Progress of long loops (image batches, epochs) in a form that reads well in a log file.

Inside a Snakemake job stderr is the job's log file, where a terminal progress bar shows nothing
useful. ``Progress`` logs one line at most every ``every`` seconds (and at the end) with the count,
the rate and the time left, readable with ``tail -f``; on a terminal it also drives a tqdm bar.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Count ``total`` units of work (``unit``: "images", "epochs", ...) and report at a bounded rate.

    Args:
        total: units expected.
        desc: what is being done, the start of every line.
        unit: name of the units.
        logger: where the lines go.
        every: seconds between two log lines (the last update always logs).
    """

    def __init__(self, total: int, desc: str, unit: str, logger: logging.Logger, every: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.log, self.every = max(0, int(total)), desc, unit, logger, every
        self.done = 0
        self.start = self._last = time.perf_counter()
        self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False) if sys.stderr.isatty() else None

    def update(self, n: int = 1, note: str = "") -> None:
        """Add ``n`` finished units; ``note`` (e.g. "loss 0.41") is appended to the log line."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.log.info("%s", self.line(now, note))
        if self.done >= self.total and self._bar is not None:
            self._bar.close()
            self._bar = None

    def line(self, now: float | None = None, note: str = "") -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s"
        text += f", {_duration(elapsed)} elapsed" if self.done >= self.total else f", ETA {_duration(eta)}"
        return text + (f"; {note}" if note else "")
