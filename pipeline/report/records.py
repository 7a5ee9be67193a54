"""One result record per stage-2 run, whatever the method: who ran, what it scored, its curves.

Every stage-2 job (FMA, linear probe, any future method) writes one JSON of this shape
(``RECORD_SCHEMA``); the report builds every table from these records without knowing the methods::

    {
      "schema": 1,
      "stage": "fma",                      # the stage that wrote it
      "backbone": "coop", "dataset": "dtd", "shot": 16, "seed": 1,
      "variant": null,                     # ablation variant name, or null
      "results": [                         # one entry per reported number, see Result
        {"method": "backbone", "label": "", "role": "baseline", "val_acc": 61.2, "test_acc": 60.4},
        {"method": "fma", "label": "FMA", "role": "primary", "val_acc": 70.0, "test_acc": 68.1,
         "plug_and_play": true, "info": {"m": 6}},
        {"method": "fma_oracle", "label": "FMA, oracle M (picked on test)", "role": "diagnostic", ...}
      ],
      "curves": {"x": "step", "step": [0, 1, ...], "val_acc": [...], "test_acc": [...], ...},
      "timing": {"train_seconds": 12.3},
      "config": {...},                     # asdict of the method's config
      "info": {...}                        # anything else (sizes, loss history, devices)
    }

Roles: ``baseline`` is the backbone itself (its row is labelled with the backbone alone);
``primary`` results are the method's headline number (main tables); ``variant`` results are other
readings of the same run (ablation tables); ``diagnostic`` results are never valid results (an M
picked on the test split) and are shown in italics where they are shown at all. A result's row
label in the tables is ``"<backbone label> + <label>"`` (the backbone label alone for an empty
label). ``plug_and_play: true`` puts a result in the plug-and-play table beside its baseline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json
from pipeline.core.errors import InputError

RECORD_SCHEMA = 1
ROLES = ("baseline", "primary", "variant", "diagnostic")
BASELINE = "backbone"  # the method name of a baseline result


@dataclass(frozen=True)
class Result:
    """One number a run reports (test accuracy in %, with its validation accuracy when it has one)."""

    method: str
    label: str
    role: str
    test_acc: float
    val_acc: float | None = None
    plug_and_play: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "label": self.label,
            "role": self.role,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "plug_and_play": self.plug_and_play,
        }
        if self.info:
            out["info"] = self.info
        return out


def baseline_result(test_acc: float, val_acc: float | None = None) -> Result:
    """The backbone's own accuracy (FMA at M = 0)."""
    return Result(BASELINE, "", "baseline", test_acc, val_acc)


def build_record(
    *,
    stage: str,
    run: Mapping[str, Any],
    results: Sequence[Result],
    config: Mapping[str, Any],
    curves: Mapping[str, Any] | None = None,
    timing: Mapping[str, float] | None = None,
    info: Mapping[str, Any] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Assemble a record; ``run`` holds backbone, dataset, shot and seed."""
    record = {
        "schema": RECORD_SCHEMA,
        "stage": stage,
        "backbone": run["backbone"],
        "dataset": run["dataset"],
        "shot": int(run["shot"]),
        "seed": int(run["seed"]),
        "variant": variant,
        "results": [r.to_json() for r in results],
        "curves": dict(curves or {}),
        "timing": dict(timing or {}),
        "config": dict(config),
        "info": dict(info or {}),
    }
    check_record(record, "<new record>")
    return record


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Check and write a record atomically."""
    check_record(record, str(path))
    write_json(path, record)


# ---------------------------------------------------------------------------------------------- reading


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_record(record: Any, where: str) -> None:
    """Raise ``InputError`` naming ``where`` and the first key that breaks the record shape."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object")
    if record.get("schema") != RECORD_SCHEMA:
        raise InputError(f"{where}: record schema is {record.get('schema')!r}, expected {RECORD_SCHEMA}")
    for key in ("stage", "backbone", "dataset"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise InputError(f"{where}: key '{key}' must be a non-empty string")
    for key in ("shot", "seed"):
        if not _is_int(record.get(key)):
            raise InputError(f"{where}: key '{key}' must be an integer, got {record.get(key)!r}")
    if record.get("variant") is not None and not isinstance(record["variant"], str):
        raise InputError(f"{where}: key 'variant' must be a string or null")
    results = record.get("results")
    if not isinstance(results, list) or not results:
        raise InputError(f"{where}: key 'results' must be a non-empty list")
    seen = set()
    for i, r in enumerate(results):
        at = f"{where}: results[{i}]"
        if not isinstance(r, dict):
            raise InputError(f"{at} must be an object")
        if not isinstance(r.get("method"), str) or not r["method"] or not isinstance(r.get("label"), str):
            raise InputError(f"{at}: 'method' must be a non-empty string and 'label' a string")
        if r["method"] in seen:
            raise InputError(f"{at}: method '{r['method']}' appears twice")
        seen.add(r["method"])
        if r.get("role") not in ROLES:
            raise InputError(f"{at}: 'role' must be one of {', '.join(ROLES)}, got {r.get('role')!r}")
        if not _is_number(r.get("test_acc")):
            raise InputError(f"{at}: 'test_acc' must be a finite number, got {r.get('test_acc')!r}")
        if r.get("val_acc") is not None and not _is_number(r["val_acc"]):
            raise InputError(f"{at}: 'val_acc' must be a finite number or null")
    curves = record.get("curves", {})
    if not isinstance(curves, dict):
        raise InputError(f"{where}: key 'curves' must be an object")
    if curves:
        x = curves.get("x")
        steps = curves.get(x) if isinstance(x, str) else None
        if not isinstance(steps, list) or not steps:
            raise InputError(f"{where}: 'curves' must name its x axis ('x') and hold that list")
        for key, values in curves.items():
            if key == "x":
                continue
            if (
                not isinstance(values, list)
                or len(values) != len(steps)
                or not all(_is_number(v) for v in values)
            ):
                raise InputError(f"{where}: curve '{key}' must be a list of {len(steps)} finite numbers")
    for key in ("timing", "config", "info"):
        if not isinstance(record.get(key, {}), dict):
            raise InputError(f"{where}: key '{key}' must be an object")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one record; the returned dict keeps its file under ``"path"``.

    Raises:
        InputError: a missing or unparsable file, or a record of the wrong shape (named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: result record not found")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    check_record(record, str(path))
    return {**record, "path": str(path)}


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read every record (see ``read_record``)."""
    return [read_record(p) for p in paths]
