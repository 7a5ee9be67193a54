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

* a **transfer file**, one per trained backbone run (backbone, dataset, shot, seed) and target
  dataset it is evaluated on (base-to-new's new half, cross-dataset, domain generalization;
  docs/protocol.md): the backbone rebuilt for the target's class names::

      /test/features   (Nt, D) only when the backbone changes the image side; otherwise stage 2
      /test/labels              reads the target's test file of the image source
      /test/paths
      /text/features   (C, D)  the target's class texts (absent for per-image texts)
      /classnames      bytes   JSON list of the target's C names

  Its ``dataset`` attribute is the target; ``source`` names the dataset the run trained on.

Nothing in the file is an HDF5 variable-length string: the HDF5 library keeps those in a "global
heap", and 16 damaged bytes there make it spin forever at 100 % CPU (in reading a dataset or an
attribute alike). Lists of strings are UTF-8 JSON in uint8 arrays; attribute strings are fixed-length
byte strings (JSON for structured values).

**Integrity (schema 3).** Every dataset carries a ``sha256`` attribute (of its dtype, shape and
bytes) and the file an ``attrs_sha256`` over its other attributes. Readers open read-only, check the
digests before decoding anything, then check the attributes against what the caller expects; any
damage, mismatch or HDF5 error becomes one ``InputError`` line naming the file. SHA-256 runs at
0.7-1.7 GB/s on one core of this project's machine, so checking costs 0.6-1.5 s per GB of features
on top of reading them (``bench/cache_read.py``; bench/README.md has the figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.core.atomic import atomic_path, storage_error
from pipeline.core.errors import InputError
from pipeline.core.versions import EXTRACTION_VERSION

# Bump when the layout or the meaning of a cached array changes: old caches then fail to load.
SCHEMA_VERSION = 3  # 3: no variable-length strings anywhere, sha256 digests

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
TRANSFER_KEYS = ("source", "shot", "seed", "templates", "text_kind", "has_test", "parent_labels")
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
    """A fixed-length byte string (never a variable-length HDF5 string) or a number."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, sort_keys=True, separators=(",", ":"))
    if value is None:
        value = ""
    if isinstance(value, str):
        return np.bytes_(value.encode("utf-8"))
    return value


def _decode_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if key in ("templates", "config", "forwards", "parent_labels") and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _digest_array(data: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    data = np.ascontiguousarray(data)
    h = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    h.update(data.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _digest_attrs(raw: Mapping[str, Any]) -> str:
    """SHA-256 of the stored (encoded) attributes, in key order, without the digest itself."""
    h = hashlib.sha256()
    for key in sorted(k for k in raw if k != ATTRS_DIGEST):
        value = raw[key]
        value = bytes(value) if isinstance(value, bytes) else repr(np.asarray(value).item()).encode()
        h.update(key.encode() + b"\0" + value + b"\0")
    return h.hexdigest()


ATTRS_DIGEST = "attrs_sha256"  # file attribute: digest of the other attributes
DATA_DIGEST = "sha256"  # dataset attribute: digest of the dataset


def _create(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """A dataset with its digest."""
    group.create_dataset(name, data=data)
    group[name].attrs[DATA_DIGEST] = np.bytes_(_digest_array(data).encode())


def _read_array(f: h5py.File, name: str, path: Path, dtype: type) -> np.ndarray:
    """A dataset's array after checking its dtype and digest (before anything decodes it)."""
    if name not in f:
        raise InputError(f"{path}: feature cache has no '{name}'")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset) or ds.dtype != np.dtype(dtype):
        raise InputError(f"{path}: corrupt '{name}' (expected a {np.dtype(dtype)} array)")
    want = ds.attrs.get(DATA_DIGEST)
    data = ds[()]
    if not isinstance(want, bytes) or _digest_array(data) != want.decode("ascii", "replace"):
        raise InputError(f"{path}: '{name}' fails its checksum: the file is damaged; delete it and rerun")
    return data


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    """Open a cache read-only; any HDF5 or decoding error becomes one ``InputError`` naming it.

    A damaged file makes h5py raise OSError, KeyError, RuntimeError, ValueError, TypeError or
    others; all of them mean the same thing to the user.
    """
    if not path.is_file():
        raise InputError(f"{path}: feature cache not found")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring
        translated = storage_error(err, path)  # e.g. no permission: not damage
        if translated is not None:
            raise translated from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: damaged or unreadable feature cache ({reason})") from None


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    """A list of strings as a uint8 array of its UTF-8 JSON (no variable-length HDF5 strings)."""
    data = np.frombuffer(json.dumps(list(values), ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    _create(group, name, data)


def _read_strings(f: h5py.File, name: str, path: Path) -> list[str]:
    raw = _read_array(f, name, path, np.uint8)
    try:
        values = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path}: corrupt '{name}' (not UTF-8 JSON)") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(f"{path}: corrupt '{name}' (expected a list of strings)")
    return values


def _write_split(group: h5py.Group, x: np.ndarray, y: np.ndarray, paths: list[str]) -> None:
    _create(group, "features", np.asarray(x, dtype=np.float32))
    _create(group, "labels", np.asarray(y, dtype=np.int64))
    _write_strings(group, "paths", paths)


def _write_attrs(f: h5py.File, attrs: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in attrs]
    assert not missing, f"cache attributes missing: {missing}"
    raw = {k: _encode_attr(attrs[k]) for k in keys + tuple(k for k in OPTIONAL_KEYS if k in attrs)}
    for key, value in raw.items():
        f.attrs[key] = value
    f.attrs[ATTRS_DIGEST] = np.bytes_(_digest_attrs(raw).encode())


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
            _create(train, "targets", np.asarray(train_targets, dtype=np.float32))
        _write_split(f.create_group("val"), val_x, val_y, val_paths)
        if text is not None:
            _create(f.create_group("text"), "features", np.asarray(text, dtype=np.float32))
        _write_strings(f, "classnames", classnames)
        _write_attrs(f, full, ATTRIBUTE_KEYS + FEWSHOT_KEYS)


def write_transfer_cache(
    path: str | os.PathLike,
    *,
    text: np.ndarray | None,
    classnames: list[str],
    attrs: Mapping[str, Any],
    test: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> None:
    """Write a transfer file atomically (layout in the module docstring).

    Args:
        text: (C, D) the target's class texts, or None for per-image texts.
        test: (features (Nt, D), labels (Nt,), paths) when the backbone changes the image side.
        attrs: ``ATTRIBUTE_KEYS`` values (``dataset`` = the target) plus source, shot, seed, templates.
    """
    if text is not None:
        assert text.ndim == 2 and text.shape[0] == len(classnames), text.shape
    full = {
        "image_source": attrs["backbone"],
        **attrs,
        "kind": "transfer",
        "schema_version": SCHEMA_VERSION,
        "extraction_version": EXTRACTION_VERSION,
        "text_kind": "static" if text is not None else "per_image",
        "has_test": int(test is not None),
        "parent_labels": list(attrs.get("parent_labels") or []),
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        if test is not None:
            features, labels, paths = test
            assert len(features) == len(labels) == len(paths)
            _write_split(f.create_group("test"), features, labels, paths)
        if text is not None:
            _create(f.create_group("text"), "features", np.asarray(text, dtype=np.float32))
        _write_strings(f, "classnames", classnames)
        _write_attrs(f, full, ATTRIBUTE_KEYS + TRANSFER_KEYS)


@dataclass
class TransferCache:
    """A transfer file: the target's class names, texts (None: per-image) and, when the backbone
    changes the image side, its own test features of the target."""

    classnames: list[str]
    text: np.ndarray | None
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    attrs: dict[str, Any]


def load_transfer(path: str | os.PathLike, *, expect: Mapping[str, Any]) -> TransferCache:
    """Read a transfer file, checking ``expect`` (backbone, dataset = target, source, shot, seed, ...).

    Raises:
        InputError: a missing, damaged or mismatched file (one line naming it).
    """
    path = Path(path)
    attrs = read_attrs(path)
    check_attrs(path, attrs, _base_expectation("transfer", expect))
    with _reading(path) as f:
        classnames = _read_strings(f, "classnames", path)
        text = test_x = test_y = None
        if attrs.get("text_kind") == "static":
            text = _read_array(f, "text/features", path, np.float32)
            if text.ndim != 2 or text.shape[0] != len(classnames) or not np.isfinite(text).all():
                raise InputError(f"{path}: corrupt text features (shape {text.shape})")
        if attrs.get("has_test"):
            test_x, test_y = _read_split(f, "test", path)
    if test_y is not None and len(test_y) and (test_y.min() < 0 or test_y.max() >= len(classnames)):
        raise InputError(f"{path}: test labels outside 0..{len(classnames) - 1}")
    return TransferCache(classnames, text, test_x, test_y, attrs)


def load_transfer_run(
    path: str | os.PathLike, test_path: str | os.PathLike | None, *, expect: Mapping[str, Any]
) -> tuple[TransferCache, np.ndarray, np.ndarray]:
    """A transfer file and the target's test features it is scored on: its own (image side
    changed), or those of the target's test file of its image source (``test_path``).

    Raises:
        InputError: either file missing, damaged or mismatched, or no test file when one is needed.
    """
    cache = load_transfer(path, expect=expect)
    if cache.test_x is not None and cache.test_y is not None:
        return cache, cache.test_x, cache.test_y
    if test_path is None:
        raise InputError(f"{path}: holds no test features: pass the target's test file (--test)")
    want = {k: cache.attrs.get(k) for k in ("model", "pretrained")}
    want.update(backbone=cache.attrs["image_source"], dataset=cache.attrs["dataset"])
    x, y, _ = load_test(test_path, want)
    if len(y) and y.max() >= len(cache.classnames):
        raise InputError(f"{test_path}: test labels outside 0..{len(cache.classnames) - 1}")
    return cache, x, y


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Return a cache file's attributes (decoded), raising ``InputError`` naming a bad file."""
    path = Path(path)
    with _reading(path) as f:
        return _read_attrs(f, path)


def _read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    have = f.attrs.get("schema_version")
    if have != SCHEMA_VERSION:
        # An older layout holds variable-length strings: read nothing else from it.
        raise InputError(
            f"{path}: cache attribute 'schema_version' is {_decode_attr('', have)!r} but this code reads "
            f"{SCHEMA_VERSION}; delete the file or rerun extraction"
        )
    for name in f.attrs:  # reading a variable-length value could hang: check the types first
        tid = f.attrs.get_id(name).get_type()
        if isinstance(tid, h5py.h5t.TypeVlenID) or (
            isinstance(tid, h5py.h5t.TypeStringID) and tid.is_variable_str()
        ):
            raise InputError(f"{path}: attribute '{name}' is a variable-length string: the file is damaged")
    raw = dict(f.attrs.items())
    want = raw.get(ATTRS_DIGEST)
    if not isinstance(want, bytes) or _digest_attrs(raw) != want.decode("ascii", "replace"):
        raise InputError(f"{path}: attributes fail their checksum: the file is damaged; delete it and rerun")
    return {k: _decode_attr(k, v) for k, v in raw.items() if k != ATTRS_DIGEST}


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
    if name not in f:
        raise InputError(f"{path}: feature cache has no '{name}' split")
    x = _read_array(f, f"{name}/features", path, np.float32)
    y = _read_array(f, f"{name}/labels", path, np.int64)
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
    with _reading(path) as f:
        x, y = _read_split(f, "test", path)
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
    with _reading(path) as f:
        train_x, train_y = _read_split(f, "train", path)
        val_x, val_y = _read_split(f, "val", path)
        classnames = _read_strings(f, "classnames", path)
        train_paths = _read_strings(f, "train/paths", path)
        text = targets = None
        if attrs.get("text_kind") == "per_image":
            targets = _read_array(f, "train/targets", path, np.float32)
            if targets.shape != train_x.shape or not np.isfinite(targets).all():
                raise InputError(f"{path}: corrupt 'train/targets' (shape {targets.shape})")
        else:
            text = _read_array(f, "text/features", path, np.float32)
            if text.shape != (len(classnames), train_x.shape[-1]) or not np.isfinite(text).all():
                raise InputError(f"{path}: corrupt text features (shape {text.shape})")
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
