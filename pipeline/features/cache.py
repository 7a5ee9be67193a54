"""HDF5 feature cache: the only hand-off between stage 1 (encoders) and stage 2 (FMA, probes).

Two kinds of file, both written to a temporary name and renamed (see ``pipeline.core.atomic``):

* a **test file**: once per dataset for a backbone whose image encoder is frozen (shared by every
  shot, seed, stage-2 method and every backbone that reads the same image features), or once per
  (dataset, shot, seed) for a backbone that changes the image side::

      /test/features   (Nt, D) float32, L2-normalised
      /test/labels     (Nt,)   int64
      /test/paths      bytes   UTF-8 JSON list of Nt paths, relative to the dataset's image folder

* a **few-shot file**, one per backbone, dataset, shot and seed::

      /train/features  (N, V, D) float32, L2-normalised; view 0 is the center crop,
                                 views 1..K are random augmentations
      /train/labels    (N,)      int64
      /train/paths     bytes     JSON list of N paths
      /train/targets   (N, V, D) float32, only for per-image class texts (CoCoOp): each view's
                                 own-class text, computed from that view
      /val/features    (Nv, D)   float32 (center crop)
      /val/labels, /val/paths
      /text/features   (C, D)    float32, L2-normalised class text features (absent with targets)
      /classnames      bytes     JSON list of C names

Strings are stored as UTF-8 JSON in uint8 arrays, not as HDF5 variable-length strings: a damaged
variable-length string heap can make the HDF5 library spin forever, a damaged byte array is caught
by the JSON parse. Both kinds carry attributes (``ATTRIBUTE_KEYS``); readers open read-only and
refuse a file whose attributes do not match what the caller expects.
"""

from __future__ import annotations

import dataclasses
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
SCHEMA_VERSION = 2

# Attributes common to both kinds of file; JSON-valued ones are stored as canonical JSON strings.
ATTRIBUTE_KEYS = (
    "kind",  # "test" or "fewshot"
    "schema_version",
    "extraction_version",
    "backbone",  # registry name of the stage-1 backbone, e.g. "zeroshot"
    "image_source",  # the backbone whose image features the file holds (CoOp's are zero-shot CLIP's)
    "dataset",
    "model",  # open_clip architecture
    "pretrained",  # tag or checkpoint path, "" for random init
    "config",  # JSON: the config slice the file depends on
)
# Only few-shot files hold text features, so only they record the templates and the text kind.
FEWSHOT_KEYS = ("shot", "seed", "n_views", "templates", "text_kind")
TEXT_KINDS = ("static", "per_image")  # one (C, D) matrix, or per-image texts (/train/targets)
RUN_KEYS = ("shot", "seed")  # a per-run test file records its run
OPTIONAL_KEYS = ("forwards",)  # images and prompts the extraction job ran through the encoders


@dataclass
class Features:
    """Everything stage 2 needs for one (backbone, dataset, shot, seed)."""

    train_x: np.ndarray  # (N, V, D) float32; view 0 is the center crop
    train_y: np.ndarray  # (N,) int64
    val_x: np.ndarray  # (Nv, D) float32
    val_y: np.ndarray  # (Nv,) int64
    test_x: np.ndarray  # (Nt, D) float32
    test_y: np.ndarray  # (Nt,) int64
    text: np.ndarray | None  # (C, D) float32; None for per-image texts
    classnames: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    train_paths: list[str] = field(default_factory=list)  # (N,) relative to the dataset's image folder
    train_targets: np.ndarray | None = None  # (N, V, D) own-class text per view, per-image texts only

    @property
    def dim(self) -> int:
        return int(self.test_x.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if value is None:
        return ""
    return value


def _decode_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if key in ("templates", "config", "forwards") and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    """A list of strings as a uint8 array of its UTF-8 JSON (no variable-length HDF5 strings)."""
    data = np.frombuffer(json.dumps(list(values), ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    group.create_dataset(name, data=data)


def _read_strings(f: h5py.File, name: str, path: Path) -> list[str]:
    try:
        raw = np.asarray(f[name][()], dtype=np.uint8)
    except KeyError:
        raise InputError(f"{path}: feature cache has no '{name}'") from None
    try:
        values = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path}: corrupt '{name}' (not UTF-8 JSON)") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(f"{path}: corrupt '{name}' (expected a list of strings)")
    return values


def _write_split(group: h5py.Group, x: np.ndarray, y: np.ndarray, paths: list[str]) -> None:
    group.create_dataset("features", data=np.asarray(x, dtype=np.float32))
    group.create_dataset("labels", data=np.asarray(y, dtype=np.int64))
    _write_strings(group, "paths", paths)


def _write_attrs(f: h5py.File, attrs: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in attrs]
    assert not missing, f"cache attributes missing: {missing}"
    for key in keys + tuple(k for k in OPTIONAL_KEYS if k in attrs and k not in keys):
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
        attrs: values for ``ATTRIBUTE_KEYS`` except kind/schema/extraction versions
            (``image_source`` defaults to ``backbone``); a per-run file adds ``shot`` and ``seed``.
    """
    assert len(features) == len(labels) == len(paths)
    full = {
        "image_source": attrs["backbone"],
        **attrs,
        "kind": "test",
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
    }
    keys = ATTRIBUTE_KEYS + tuple(k for k in RUN_KEYS if k in attrs)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_split(f.create_group("test"), features, labels, paths)
        _write_attrs(f, full, keys)


def write_fewshot_cache(
    path: str | os.PathLike,
    *,
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_paths: list[str],
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_paths: list[str],
    text: np.ndarray | None,
    classnames: list[str],
    attrs: Mapping[str, Any],
    train_targets: np.ndarray | None = None,
) -> None:
    """Write the per-(shot, seed) file atomically; shapes as in the module docstring.

    Exactly one of ``text`` (C, D) and ``train_targets`` (N, V, D, per-image texts) is given.
    """
    assert train_x.ndim == 3 and len(train_x) == len(train_y) == len(train_paths)
    assert val_x.ndim == 2 and len(val_x) == len(val_y) == len(val_paths)
    assert (text is None) != (train_targets is None)
    if text is not None:
        assert text.shape == (len(classnames), train_x.shape[2])
    else:
        assert train_targets is not None and train_targets.shape == train_x.shape
    full = {
        "image_source": attrs["backbone"],
        **attrs,
        "kind": "fewshot",
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
        "n_views": int(train_x.shape[1]) - 1,
        "text_kind": "static" if text is not None else "per_image",
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        train = f.create_group("train")
        _write_split(train, train_x, train_y, train_paths)
        if train_targets is not None:
            train.create_dataset("targets", data=np.asarray(train_targets, dtype=np.float32))
        _write_split(f.create_group("val"), val_x, val_y, val_paths)
        if text is not None:
            f.create_group("text").create_dataset("features", data=np.asarray(text, dtype=np.float32))
        _write_strings(f, "classnames", classnames)
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
    try:
        with h5py.File(path, "r") as f:
            x, y = _read_split(f, "test", path)
    except OSError as err:
        raise InputError(f"{path}: not a readable feature cache ({err})") from None
    return x, y, attrs


def load_fewshot(path: str | os.PathLike, *, expect: Mapping[str, Any]) -> Features:
    """Read a few-shot file into ``Features`` with an empty test split (see ``load_features``).

    Raises:
        InputError: a missing or unreadable file, a missing split, or an attribute mismatch; the
            message names the file and the attribute.
    """
    path = Path(path)
    attrs = read_attrs(path)
    check_attrs(path, attrs, _base_expectation("fewshot", expect))
    try:
        with h5py.File(path, "r") as f:
            train_x, train_y = _read_split(f, "train", path)
            val_x, val_y = _read_split(f, "val", path)
            classnames = _read_strings(f, "classnames", path)
            train_paths = _read_strings(f, "train/paths", path)
            text = targets = None
            if attrs.get("text_kind") == "per_image":
                if "train/targets" not in f:
                    raise InputError(f"{path}: per-image text cache has no 'train/targets'")
                targets = np.asarray(f["train/targets"][()], dtype=np.float32)
                if targets.shape != train_x.shape or not np.isfinite(targets).all():
                    raise InputError(f"{path}: corrupt 'train/targets' (shape {targets.shape})")
            else:
                if "text/features" not in f:
                    raise InputError(f"{path}: feature cache has no text features")
                text = np.asarray(f["text/features"][()], dtype=np.float32)
                if text.shape != (len(classnames), train_x.shape[-1]) or not np.isfinite(text).all():
                    raise InputError(f"{path}: corrupt text features (shape {text.shape})")
    except OSError as err:
        raise InputError(f"{path}: not a readable feature cache ({err})") from None
    if len(train_paths) != len(train_y):
        raise InputError(f"{path}: corrupt 'train' split ({len(train_paths)} paths, {len(train_y)} labels)")
    if train_x.ndim != 3 or val_x.ndim != 2 or val_x.shape[-1] != train_x.shape[-1]:
        raise InputError(f"{path}: corrupt cache (train {train_x.shape}, val {val_x.shape})")
    for name, y in (("train", train_y), ("val", val_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(classnames)):
            raise InputError(f"{path}: {name} labels outside 0..{len(classnames) - 1}")
    empty_x = np.zeros((0, train_x.shape[-1]), dtype=np.float32)
    return Features(
        train_x, train_y, val_x, val_y, empty_x, np.zeros(0, dtype=np.int64), text, classnames, attrs,
        train_paths, targets,
    )  # fmt: skip


def load_features(
    fewshot_path: str | os.PathLike,
    test_path: str | os.PathLike,
    *,
    expect: Mapping[str, Any],
) -> Features:
    """Read a few-shot file and the test file of the same image features into ``Features``.

    Args:
        expect: attribute values the few-shot file must carry (e.g. backbone, dataset, shot, seed,
            model, pretrained, templates). The test file must hold the few-shot file's image
            features: its ``backbone`` is the few-shot file's ``image_source``, with the same
            dataset, model and pretrained weights, and a per-run test file the same shot and seed.

    Raises:
        InputError: a missing or unreadable file, a missing split, or an attribute mismatch; the
            message names the file and the attribute.
    """
    fewshot_path, test_path = Path(fewshot_path), Path(test_path)
    feats = load_fewshot(fewshot_path, expect=expect)
    attrs = feats.attrs
    test_expect = {k: attrs.get(k) for k in ("dataset", "model", "pretrained")}
    test_expect["backbone"] = attrs.get("image_source")
    test_x, test_y, test_attrs = load_test(test_path, test_expect)
    for key in RUN_KEYS:
        if key in test_attrs and test_attrs[key] != attrs.get(key):
            raise InputError(
                f"{test_path}: attribute '{key}' ({test_attrs[key]!r}) differs from {fewshot_path} "
                f"({attrs.get(key)!r})"
            )
    if test_x.shape[1] != feats.train_x.shape[2]:
        raise InputError(f"{test_path}: feature dim {test_x.shape[1]} differs from {fewshot_path}")
    if len(test_y) and (test_y.min() < 0 or test_y.max() >= len(feats.classnames)):
        raise InputError(f"{test_path}: test labels outside 0..{len(feats.classnames) - 1}")
    return dataclasses.replace(feats, test_x=test_x, test_y=test_y)
