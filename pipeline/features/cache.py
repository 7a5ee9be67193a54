"""HDF5 feature cache: the only hand-off between stage 1 (encoders) and stage 2 (FMA, probes).

Two kinds of file, both written to a temporary name and renamed (see ``pipeline.core.atomic``):

* a **test file**, one per backbone and dataset when the backbone's image encoder is frozen
  (shared by every shot, seed and stage-2 method)::

      /test/features   (Nt, D) float32, L2-normalised
      /test/labels     (Nt,)   int64
      /test/paths      (Nt,)   str, relative to the dataset's image folder

* a **few-shot file**, one per backbone, dataset, shot and seed::

      /train/features  (N, V, D) float32, L2-normalised; view 0 is the center crop,
                                 views 1..K are random augmentations
      /train/labels    (N,)      int64
      /train/paths     (N,)      str
      /val/features    (Nv, D)   float32 (center crop)
      /val/labels      (Nv,)     int64
      /val/paths       (Nv,)     str
      /text/features   (C, D)    float32, L2-normalised class text features
      /classnames      (C,)      str

Both carry attributes (``ATTRIBUTE_KEYS``); readers open read-only and refuse a file whose attributes
do not match what the caller expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import InputError
from pipeline.core.versions import EXTRACTION_VERSION

# Bump when the layout or the meaning of a cached array changes: old caches then fail to load.
SCHEMA_VERSION = 1

# Attributes common to both kinds of file; JSON-valued ones are stored as canonical JSON strings.
ATTRIBUTE_KEYS = (
    "kind",  # "test" or "fewshot"
    "schema_version",
    "extraction_version",
    "backbone",  # registry name of the stage-1 backbone, e.g. "zeroshot"
    "dataset",
    "model",  # open_clip architecture
    "pretrained",  # tag or checkpoint path, "" for random init
    "config",  # JSON: the config slice the file depends on
)
# Only few-shot files hold text features, so only they record the templates.
FEWSHOT_KEYS = ("shot", "seed", "n_views", "templates")

_STR = h5py.string_dtype(encoding="utf-8")


@dataclass
class Features:
    """Everything stage 2 needs for one (backbone, dataset, shot, seed)."""

    train_x: np.ndarray  # (N, V, D) float32; view 0 is the center crop
    train_y: np.ndarray  # (N,) int64
    val_x: np.ndarray  # (Nv, D) float32
    val_y: np.ndarray  # (Nv,) int64
    test_x: np.ndarray  # (Nt, D) float32
    test_y: np.ndarray  # (Nt,) int64
    text: np.ndarray  # (C, D) float32
    classnames: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    train_paths: list[str] = field(default_factory=list)  # (N,) relative to the dataset's image folder

    @property
    def dim(self) -> int:
        return int(self.text.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.text.shape[0])


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if value is None:
        return ""
    return value


def _decode_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if key in ("templates", "config") and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _write_split(group: h5py.Group, x: np.ndarray, y: np.ndarray, paths: list[str]) -> None:
    group.create_dataset("features", data=np.asarray(x, dtype=np.float32))
    group.create_dataset("labels", data=np.asarray(y, dtype=np.int64))
    group.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=_STR)


def _write_attrs(f: h5py.File, attrs: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in attrs]
    assert not missing, f"cache attributes missing: {missing}"
    for key in keys:
        f.attrs[key] = _encode_attr(attrs[key])


def write_test_cache(
    path: str | os.PathLike,
    *,
    features: np.ndarray,
    labels: np.ndarray,
    paths: list[str],
    attrs: Mapping[str, Any],
) -> None:
    """Write the per-dataset test file atomically.

    Args:
        features: (Nt, D) L2-normalised image features.
        labels: (Nt,) class ids.
        paths: image paths relative to the dataset's image folder.
        attrs: values for ``ATTRIBUTE_KEYS`` except kind/schema/extraction versions.
    """
    assert len(features) == len(labels) == len(paths)
    full = {
        **attrs,
        "kind": "test",
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_split(f.create_group("test"), features, labels, paths)
        _write_attrs(f, full, ATTRIBUTE_KEYS)


def write_fewshot_cache(
    path: str | os.PathLike,
    *,
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_paths: list[str],
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_paths: list[str],
    text: np.ndarray,
    classnames: list[str],
    attrs: Mapping[str, Any],
) -> None:
    """Write the per-(shot, seed) file atomically; shapes as in the module docstring."""
    assert train_x.ndim == 3 and len(train_x) == len(train_y) == len(train_paths)
    assert val_x.ndim == 2 and len(val_x) == len(val_y) == len(val_paths)
    assert text.shape == (len(classnames), train_x.shape[2])
    full = {
        **attrs,
        "kind": "fewshot",
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
        "n_views": int(train_x.shape[1]) - 1,
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_split(f.create_group("train"), train_x, train_y, train_paths)
        _write_split(f.create_group("val"), val_x, val_y, val_paths)
        f.create_group("text").create_dataset("features", data=np.asarray(text, dtype=np.float32))
        f.create_dataset("classnames", data=np.asarray(classnames, dtype=object), dtype=_STR)
        _write_attrs(f, full, ATTRIBUTE_KEYS + FEWSHOT_KEYS)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Return a cache file's attributes (decoded), raising ``InputError`` naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature cache not found")
    try:
        with h5py.File(path, "r") as f:
            return {k: _decode_attr(k, v) for k, v in f.attrs.items()}
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable feature cache ({err})") from None


def check_attrs(path: str | os.PathLike, attrs: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """Raise ``InputError`` naming ``path`` and the first attribute that differs from ``expect``."""
    for key, want in expect.items():
        have = attrs.get(key)
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            raise InputError(
                f"{path}: cache attribute '{key}' is {have!r} but the config expects {want!r}; "
                "delete the file or rerun extraction"
            )


def _read_split(f: h5py.File, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(f[f"{name}/features"][()], dtype=np.float32)
        y = np.asarray(f[f"{name}/labels"][()], dtype=np.int64)
    except KeyError:
        raise InputError(f"{path}: feature cache has no '{name}' split") from None
    if len(x) != len(y) or not np.isfinite(x).all():
        raise InputError(f"{path}: corrupt '{name}' split (length mismatch or non-finite features)")
    return x, y


def _read_paths(f: h5py.File, name: str, path: Path) -> list[str]:
    """A split's image paths (relative to the dataset's image folder) as ``str``."""
    try:
        raw = f[f"{name}/paths"][()]
    except KeyError:
        raise InputError(f"{path}: feature cache has no '{name}/paths'") from None
    return [p.decode() if isinstance(p, bytes) else str(p) for p in raw]


def _base_expectation(kind: str, expect: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
        **expect,
    }


def load_test(path: str | os.PathLike, expect: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a test file: ((Nt, D) features, (Nt,) labels, attributes), checking ``expect``."""
    path = Path(path)
    attrs = read_attrs(path)
    check_attrs(path, attrs, _base_expectation("test", expect))
    with h5py.File(path, "r") as f:
        x, y = _read_split(f, "test", path)
    return x, y, attrs


def load_features(
    fewshot_path: str | os.PathLike,
    test_path: str | os.PathLike,
    *,
    expect: Mapping[str, Any],
) -> Features:
    """Read a few-shot file and its test file into ``Features``.

    Args:
        expect: attribute values both files must carry (e.g. backbone, dataset, model, pretrained,
            templates); ``shot``, ``seed``, ``n_views`` and ``templates`` are checked against the
            few-shot file only.

    Raises:
        InputError: a missing or unreadable file, a missing split, or an attribute mismatch; the
            message names the file and the attribute.
    """
    fewshot_path, test_path = Path(fewshot_path), Path(test_path)
    shared = {k: v for k, v in expect.items() if k not in FEWSHOT_KEYS}
    attrs = read_attrs(fewshot_path)
    check_attrs(fewshot_path, attrs, _base_expectation("fewshot", expect))
    test_x, test_y, test_attrs = load_test(test_path, shared)
    # The two files must come from the same encoder, whatever the caller asked for.
    for key in ("backbone", "dataset", "model", "pretrained"):
        if attrs.get(key) != test_attrs.get(key):
            raise InputError(
                f"{test_path}: attribute '{key}' ({test_attrs.get(key)!r}) differs from "
                f"{fewshot_path} ({attrs.get(key)!r})"
            )
    with h5py.File(fewshot_path, "r") as f:
        train_x, train_y = _read_split(f, "train", fewshot_path)
        val_x, val_y = _read_split(f, "val", fewshot_path)
        try:
            text = np.asarray(f["text/features"][()], dtype=np.float32)
            classnames = [c.decode() if isinstance(c, bytes) else str(c) for c in f["classnames"][()]]
        except KeyError:
            raise InputError(f"{fewshot_path}: feature cache has no text features or class names") from None
        train_paths = _read_paths(f, "train", fewshot_path)
    if len(train_paths) != len(train_y):
        raise InputError(
            f"{fewshot_path}: corrupt 'train' split ({len(train_paths)} paths, {len(train_y)} labels)"
        )
    if train_x.ndim != 3 or text.shape != (len(classnames), train_x.shape[2]):
        raise InputError(f"{fewshot_path}: corrupt cache (train features {train_x.shape}, text {text.shape})")
    if test_x.shape[1] != text.shape[1]:
        raise InputError(f"{test_path}: feature dim {test_x.shape[1]} differs from {fewshot_path}")
    for name, y in (("train", train_y), ("val", val_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(classnames)):
            raise InputError(f"{fewshot_path}: {name} labels outside 0..{len(classnames) - 1}")
    return Features(train_x, train_y, val_x, val_y, test_x, test_y, text, classnames, attrs, train_paths)
