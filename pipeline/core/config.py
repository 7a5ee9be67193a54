"""Frozen configuration dataclasses for every stage, built from the JSON slices the workflow passes.

The workflow validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml`` and hands each
stage exactly the slice its output depends on, as canonical JSON. Inside Python that slice becomes one
of the dataclasses below; ``asdict(cfg)`` is what checkpoints, HDF5 attributes and result JSONs record.
Runtime knobs (device, inference batch size, workers) live in ``RuntimeConfig`` and never enter a slice.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.core.errors import InputError

T = TypeVar("T")


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` with sorted keys and no whitespace: equal configs give equal strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field annotation; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise InputError(errors[0] if errors else f"config key '{key}': invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{key}': expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InputError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return {_dict_key(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(f"config key '{key}': expected a string, got {value!r}")
        return value
    return value


def _dict_key(k: Any, annotation: Any, key: str) -> Any:
    """A mapping key as its annotated type: JSON and YAML round trips turn integer keys into strings."""
    if annotation is int:
        try:
            return int(k)
        except (TypeError, ValueError):
            raise InputError(f"config key '{key}': key {k!r} is not an integer") from None
    return str(k)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"config key '{key}': unknown value {value!r} (choose from {', '.join(choices)})")


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, naming any unknown or mistyped key.

    Raises:
        InputError: a key that ``cls`` does not have (the message lists the valid keys), or a
            value of the wrong type (the message names the key).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"unknown config key '{prefix}{unknown[0]}' (valid keys: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in data:
            annotation = hints[name]
            if dataclasses.is_dataclass(annotation):
                kwargs[name] = from_dict(annotation, data[name], f"{prefix}{name}.")
            else:
                kwargs[name] = _coerce(data[name], annotation, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except InputError as err:
        # __post_init__ checks name the bare field; give the full key path.
        message = str(err)
        bare = "config key '"
        if prefix and message.startswith(bare) and not message.startswith(bare + prefix):
            message = bare + prefix + message[len(bare) :]
        raise InputError(message) from None


@dataclass(frozen=True)
class EncoderConfig:
    """Which open_clip model encodes images and texts."""

    model: str = "demo-vit-t-28"  # open_clip architecture name (built-in or pipeline/demo/model_configs)
    pretrained: str | None = None  # open_clip tag (e.g. "openai") or a local checkpoint path


@dataclass(frozen=True)
class ExtractionConfig:
    """How few-shot training images are turned into cached views."""

    views: int = 4  # K augmented views per few-shot training image, stored beside the center view
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale range
    hflip: bool = True  # random horizontal flip in the augmentation


@dataclass(frozen=True)
class FMAConfig:
    """Flow Matching Alignment: velocity net, training schedule and early-stopping solver (SPEC 2)."""

    blocks: int = 6  # adaLN residual blocks (paper: 6; official code: 12)
    coupling: str = "class"  # "class": pair x0 with its own class text; "random": any class text
    noise: str = "paper"  # "none" | "paper" (N(x_t, t(1-t) gamma sigma^2)) | "interpolant"
    noise_scale: float = 1.0  # gamma
    min_one_minus_t: float = 0.01  # clamp of (1 - t) in the paper-form target (z - x_hat) / (1 - t)
    lr: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 200
    warmup_epochs: int = 1
    step_size: float = 0.1  # h of the Euler solver
    max_steps: int = 10  # M is chosen in {0, ..., max_steps} on the validation split
    # Cached views the trainer draws x0 from: None = all K cached augmented views (plus the center);
    # 0 = the center view only; k = the center and the first k augmented views (k <= K of the cache).
    train_views: int | None = None
    # The official FMA code's way: every epoch encodes a fresh random augmentation of every training
    # image instead of drawing cached views (needs the images and the encoder at training time).
    online: bool = False

    def __post_init__(self) -> None:
        _check_choice("fma.coupling", self.coupling, ("class", "random"))
        _check_choice("fma.noise", self.noise, ("none", "paper", "interpolant"))
        if self.train_views is not None and self.train_views < 0:
            raise InputError(f"config key 'fma.train_views': must be >= 0 or null, got {self.train_views}")
        if self.online and self.train_views is not None:
            raise InputError(
                "config key 'fma.train_views': has no effect with fma.online (online training encodes "
                "fresh views instead of drawing cached ones); leave it null"
            )
        if not 0.0 < self.min_one_minus_t < 1.0:
            raise InputError(
                f"config key 'fma.min_one_minus_t': must be in (0, 1), got {self.min_one_minus_t}"
            )


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe (CoOp's lpclip protocol, SPEC 5)."""

    c_grid: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    search_steps: int = 8  # binary-search steps in log space around the best grid C
    max_iter: int = 1000


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs that change speed, never results (kept out of every rule's params)."""

    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    batch_size: int = 256  # inference batch size for feature extraction
    workers: int = 0  # DataLoader workers for image decoding
