"""Frozen configuration dataclasses for every stage, built from the JSON slices the workflow passes.

The workflow validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml`` and hands each
stage exactly the slice its output depends on, as canonical JSON. Inside Python that slice becomes one
of the dataclasses below; ``asdict(cfg)`` is what checkpoints, HDF5 attributes and result JSONs record.
Runtime knobs (device, inference batch size, workers) live in ``RuntimeConfig`` and never enter a slice.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
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
        if not math.isfinite(value):
            raise InputError(f"config key '{key}': must be a finite number, got {value!r}")
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
        if isinstance(k, int) and not isinstance(k, bool):
            return k
        if isinstance(k, str) and k.strip().lstrip("+-").isdigit():
            return int(k)
        raise InputError(f"config key '{key}': key {k!r} is not an integer")
    return str(k)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"config key '{key}': unknown value {value!r} (choose from {', '.join(choices)})")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config dataclass, once per class (planning a large grid builds
    thousands of configs, and resolving the annotations is most of the cost)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, naming any unknown or mistyped key.

    Raises:
        InputError: a key that ``cls`` does not have (the message lists the valid keys), or a
            value of the wrong type (the message names the key).
    """
    data = dict(data or {})
    hints = _type_hints(cls)
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


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_checkpoint_path(pretrained: str) -> bool:
    """A local file rather than an open_clip tag: it has a folder part or a checkpoint suffix."""
    return len(Path(pretrained).parts) > 1 or Path(pretrained).suffix in CHECKPOINT_SUFFIXES


@dataclass(frozen=True)
class EncoderConfig:
    """Which open_clip model encodes images and texts."""

    model: str = "demo-vit-t-28"  # open_clip architecture name (built-in or pipeline/demo/model_configs)
    pretrained: str | None = None  # open_clip tag (e.g. "openai") or a local checkpoint path


@dataclass(frozen=True)
class ExtractionConfig:
    """How one dataset's few-shot training images are turned into cached views.

    The workflow resolves the augmentation per dataset: the catalog's default
    (``pipeline.data.catalog.DatasetInfo``), unless ``extraction.augment.<dataset>`` overrides it.
    """

    views: int = 4  # K augmented views per few-shot training image, stored beside the center view
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale range
    hflip: bool = True  # random horizontal flip in the augmentation

    def __post_init__(self) -> None:
        check_crop_scale(self.crop_scale, "extraction.crop_scale")
        if self.views < 0:
            raise InputError(f"config key 'extraction.views': must be >= 0, got {self.views}")


def check_template(template: str, key: str) -> None:
    """A prompt template: exactly one ``{}`` (the class name) and no other brace, else one line naming
    ``key``. ``"{} and {}"`` would fail in ``str.format``; a template without ``{}`` gives every
    class the same text."""
    if (
        not isinstance(template, str)
        or template.count("{}") != 1
        or template.count("{") + template.count("}") != 2
    ):
        raise InputError(
            f"config key '{key}': a template needs exactly one '{{}}' for the class name "
            f"and no other brace, got {template!r}"
        )


def check_crop_scale(scale: tuple[float, ...], key: str) -> None:
    """A RandomResizedCrop area range: 0 < low <= high <= 1, else one line naming ``key``."""
    if len(scale) != 2 or not all(isinstance(s, (int, float)) for s in scale):
        raise InputError(f"config key '{key}': expected [low, high], got {list(scale)}")
    low, high = scale
    if not (0 < low <= high <= 1):
        raise InputError(f"config key '{key}': need 0 < low <= high <= 1, got [{low}, {high}]")


@dataclass(frozen=True)
class FMAConfig:
    """Flow Matching Alignment: velocity net, training, noise, solver and M selection (docs/methods.md, F).

    The defaults are the official code's recipe (github.com/HKUST-LongGroup/FMA, ``config.py``,
    ``train.py``, ``models/fm.py``): 12 blocks, unscaled time embedding, no noise, 600 epochs; x0 is
    drawn from the cached views (docs/methods.md, F14). The paper's settings (6 blocks, its noise
    augmentation) are options; docs/methods.md gives every equation these keys enter.
    """

    blocks: int = 12  # adaLN residual blocks (official code: 12; paper: 6), Eq. (F7)
    # t is multiplied by this before the sinusoids, Eq. (F8): 1.0 = official code, 1000 = DiT.
    time_scale: float = 1.0
    coupling: str = "class"  # "class": x0 with its own class text, Eq. (F2); "random": any class text
    noise: str = "none"  # "none" | "paper" Eq. (F3) | "interpolant" Eq. (F5)
    paper_noise_scale: float = 1.0  # gamma of "paper": variance multiplier of sigma^2, Eq. (F3)
    interpolant_noise_std: float = 0.05  # gamma of "interpolant": a standard deviation, Eq. (F5)
    min_one_minus_t: float = 0.01  # clamp of (1 - t) in the paper-form target, Eq. (F3)
    lr: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 600  # the official code's default (config.py)
    warmup_epochs: int = 1
    step_size: float = 0.1  # h of the Euler solver, Eq. (F10)
    max_steps: int = 10  # M is chosen in {0, ..., max_steps}, Eq. (F11)
    # M leaves 0 (the backbone) only when the best val accuracy beats M = 0 by at least this many
    # binomial standard errors of the val accuracy at M = 0; 0 = the plain val argmax. Eq. (F11).
    select_margin: float = 1.0
    # Cached views the trainer draws x0 from: None = all K cached augmented views plus the center (the
    # default, chosen on validation accuracy, docs/methods.md F14); 0 = the center view only; k = the
    # center and the first k augmented views (k <= K of the cache).
    train_views: int | None = None
    # The official FMA code's way: every epoch encodes a fresh random augmentation of every training
    # image instead of drawing cached views (needs the images and the encoder at training time).
    online: bool = False
    # Multi-step ensemble of the official test code, Eq. (F12): states x_m summed as softmax(T cos);
    # steps beyond max_steps are left out.
    ensemble_steps: tuple[int, ...] = (0, 4, 8)
    ensemble_temperature: float = 100.0
    # k > 0: also choose M by stratified k-fold cross-validation over train + val, Eq. (F13).
    cv_folds: int = 0

    def __post_init__(self) -> None:
        _check_choice("fma.coupling", self.coupling, ("class", "random"))
        _check_choice("fma.noise", self.noise, ("none", "paper", "interpolant"))
        inf = float("inf")  # the comparisons below are False for NaN too
        for key in ("paper_noise_scale", "interpolant_noise_std", "weight_decay", "select_margin"):
            value = getattr(self, key)
            if not 0.0 <= value < inf:
                raise InputError(f"config key 'fma.{key}': must be a finite number >= 0, got {value}")
        for key in ("time_scale", "ensemble_temperature", "step_size", "lr"):
            value = getattr(self, key)
            if not 0.0 < value < inf:
                raise InputError(f"config key 'fma.{key}': must be a finite number > 0, got {value}")
        for key, low in (
            ("blocks", 1),
            ("batch_size", 1),
            ("epochs", 1),
            ("warmup_epochs", 0),
            ("max_steps", 1),  # M = 0 alone would train a velocity field that is never used
        ):
            if getattr(self, key) < low:
                raise InputError(f"config key 'fma.{key}': must be >= {low}, got {getattr(self, key)}")
        if self.warmup_epochs > self.epochs:
            raise InputError(
                f"config key 'fma.warmup_epochs': must be <= fma.epochs ({self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.train_views is not None and self.train_views < 0:
            raise InputError(f"config key 'fma.train_views': must be >= 0 or null, got {self.train_views}")
        if self.online and self.train_views not in (None, 0):
            raise InputError(
                "config key 'fma.train_views': has no effect with fma.online (online training encodes "
                "fresh views instead of drawing cached ones); set it to 0 or null"
            )
        if not 0.0 < self.min_one_minus_t < 1.0:
            raise InputError(
                f"config key 'fma.min_one_minus_t': must be in (0, 1), got {self.min_one_minus_t}"
            )
        steps = self.ensemble_steps
        if not steps or len(set(steps)) != len(steps) or min(steps) < 0 or min(steps) > self.max_steps:
            raise InputError(
                f"config key 'fma.ensemble_steps': need distinct steps >= 0, at least one <= max_steps "
                f"({self.max_steps}), got {list(steps)}"
            )
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise InputError(f"config key 'fma.cv_folds': must be 0 (off) or >= 2, got {self.cv_folds}")


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe (CoOp's lpclip protocol, docs/methods.md, Eqs. (P1)-(P3))."""

    c_grid: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    search_steps: int = 8  # binary-search steps in log space around the best grid C
    max_iter: int = 1000


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs that change speed, never results (kept out of every rule's params)."""

    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    batch_size: int = 256  # inference batch size for feature extraction
    workers: int = 0  # DataLoader workers for image decoding
