"""Velocity-net checkpoints: this pipeline's (current and legacy) and the official FMA code's state dicts."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pipeline.core.atomic import save_torch
from pipeline.core.config import FMAConfig, from_dict
from pipeline.core.errors import InputError
from pipeline.methods.fma.velocity import DIT_TIME_SCALE, FREQ_DIM, OFFICIAL_TIME_SCALE, VelocityNet

log = logging.getLogger(__name__)

FORMAT = "pipeline.fma.velocity/2"  # format 1 (no "format" key): DiT time scale, no block LN affine
# Official ``models/fm.py`` (DeepFlowMatchingNet) name prefix -> this pipeline's, applied in order.
OFFICIAL_NAMES = (
    ("time_embed.mlp.", "time.mlp."),
    ("input_proj.", "input."),
    ("res_blocks.", "blocks."),
    ("final_layer.linear.", "final.linear."),
    ("final_layer.adaLN_modulation.", "final.modulation."),
)
OFFICIAL_BLOCK_NAMES = (("in_ln.", "norm."), ("mlp.", "mlp."), ("adaLN_modulation.", "modulation."))
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile wrappers
_LOAD_ERRORS = (
    KeyError,
    RuntimeError,
    TypeError,
    ValueError,
    EOFError,
    AttributeError,
    pickle.UnpicklingError,
)


def save_velocity(path: str | os.PathLike, net: VelocityNet, cfg: FMAConfig, selected_m: int) -> None:
    """Write a checkpoint atomically; it loads with ``torch.load(path, weights_only=True)``.

    Layout: {"format", "state_dict", "config": asdict(cfg), "dim", "blocks", "time_scale",
    "selected_m", "step_size"}.
    """
    state = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": dataclasses.asdict(cfg),
        "dim": int(net.dim),
        "blocks": int(net.n_blocks),
        "time_scale": float(net.time_scale),
        "selected_m": int(selected_m),
        "step_size": float(cfg.step_size),
    }
    save_torch(state, path)


def _read(path: str | os.PathLike) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except _LOAD_ERRORS as err:
        raise InputError(f"{path}: not a readable torch checkpoint ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _legacy_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 config (one ambiguous ``noise_scale``, DiT time scale) in today's keys."""
    config = dict(config)
    scale = config.pop("noise_scale", None)
    if scale is not None:
        key = "interpolant_noise_std" if config.get("noise") == "interpolant" else "paper_noise_scale"
        config[key] = scale
    config.setdefault("time_scale", DIT_TIME_SCALE)
    config.setdefault("train_views", None)  # format 1's default: every cached view
    return config


def _is_ours(state: Any) -> bool:
    return isinstance(state, dict) and {"state_dict", "config", "dim", "blocks"} <= set(state)


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _is_official(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
        and "input_proj.weight" in _strip_wrappers(state)
    )


def official_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official ``DeepFlowMatchingNet`` state dict's keys to ``VelocityNet``'s.

    Raises:
        KeyError: a key outside the official layout.
    """
    out = {}
    for key, value in _strip_wrappers(state).items():
        new = _rename(key, OFFICIAL_NAMES, OFFICIAL_BLOCK_NAMES)
        if new is None:
            raise KeyError(f"unexpected key '{key}'")
        out[new] = value
    return out


def ours_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``VelocityNet`` state dict's keys to the official ``DeepFlowMatchingNet`` layout."""
    names = tuple((b, a) for a, b in OFFICIAL_NAMES)
    block_names = tuple((b, a) for a, b in OFFICIAL_BLOCK_NAMES)
    out = {}
    for key, value in state.items():
        new = _rename(key, names, block_names)
        if new is None:
            raise KeyError(f"unexpected key '{key}'")
        out[new] = value
    return out


def _rename(
    key: str, names: tuple[tuple[str, str], ...], block_names: tuple[tuple[str, str], ...]
) -> str | None:
    for old, new in names:
        if not key.startswith(old):
            continue
        rest = key[len(old) :]
        if new in ("blocks.", "res_blocks."):  # "<i>.<submodule>.<param>"
            match = re.fullmatch(r"(\d+)\.(.+)", rest)
            if match is None:
                return None
            index, inner = match.groups()
            for old_inner, new_inner in block_names:
                if inner.startswith(old_inner):
                    return f"{new}{index}.{new_inner}{inner[len(old_inner) :]}"
            return None
        return new + rest
    return None


def _shape_of_official(state: Mapping[str, Tensor], path: str | os.PathLike) -> tuple[int, int]:
    """(D, blocks) of an official state dict, read off the tensors."""
    d_model, d_in = state["input_proj.weight"].shape
    d_out = state["final_layer.linear.weight"].shape[0]
    if not d_in == d_model == d_out:
        raise InputError(
            f"{path}: official FMA net with in/model/out channels {d_in}/{d_model}/{d_out}; "
            "only in = model = out (the released setting) is supported"
        )
    freq = state["time_embed.mlp.0.weight"].shape[1]
    if freq != FREQ_DIM:
        raise InputError(f"{path}: official FMA net with a {freq}-wide time embedding (expected {FREQ_DIM})")
    indices = {int(m.group(1)) for k in state if (m := re.match(r"res_blocks\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise InputError(f"{path}: official FMA net with residual blocks {sorted(indices)} (not 0..n-1)")
    return int(d_model), len(indices)


def load_official(path: str | os.PathLike, device: str | torch.device = "cpu") -> VelocityNet:
    """Import a state dict saved by the official code (``torch.save(model.state_dict(), ...)``).

    D and the block count are inferred from the tensors; the time scale is the official 1.0, so the
    returned net's velocity equals the official ``DeepFlowMatchingNet``'s with these weights.

    Raises:
        InputError: a missing file, or one that is not an official FMA state dict (names the file).
    """
    state = _read(path)
    if not _is_official(state):
        raise InputError(f"{path}: not an official FMA state dict (no 'input_proj.weight' tensor)")
    state = _strip_wrappers(state)
    try:
        dim, blocks = _shape_of_official(state, path)
        net = VelocityNet(dim, blocks, time_scale=OFFICIAL_TIME_SCALE)
        net.load_state_dict({k: v.float() for k, v in official_to_ours(state).items()})
    except _LOAD_ERRORS as err:
        raise InputError(f"{path}: not an official FMA state dict ({_one_line(err)})") from None
    log.info("loaded official FMA net from %s: D=%d, %d blocks, time scale 1", path, dim, blocks)
    return net.to(device).eval()


def _load_ours(state: dict[str, Any], path: str | os.PathLike) -> tuple[VelocityNet, FMAConfig]:
    legacy = state.get("format") is None
    config = _legacy_config(state["config"]) if legacy else dict(state["config"])
    time_scale = float(state.get("time_scale", DIT_TIME_SCALE if legacy else OFFICIAL_TIME_SCALE))
    net = VelocityNet(int(state["dim"]), int(state["blocks"]), time_scale=time_scale)
    weights = dict(state["state_dict"])
    if legacy:  # format 1 had block LayerNorms without affine: the identity affine is the same function
        for i in range(net.n_blocks):
            weights.setdefault(f"blocks.{i}.norm.weight", torch.ones(net.dim))
            weights.setdefault(f"blocks.{i}.norm.bias", torch.zeros(net.dim))
    net.load_state_dict(weights)
    cfg = from_dict(FMAConfig, config, prefix="fma.")
    return net, cfg


def _velocity_of(
    state: Any, path: str | os.PathLike, device: str | torch.device
) -> tuple[VelocityNet, FMAConfig]:
    if not _is_ours(state):
        hint = " (an official FMA state dict: use load_official)" if _is_official(state) else ""
        raise InputError(f"{path}: not an FMA velocity checkpoint of this pipeline{hint}")
    try:
        net, cfg = _load_ours(state, path)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    except _LOAD_ERRORS as err:
        raise InputError(f"{path}: not an FMA velocity checkpoint ({_one_line(err)})") from None
    return net.to(device).eval(), cfg


def load_velocity(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VelocityNet, FMAConfig]:
    """Read a checkpoint of ``save_velocity`` (or format 1): (net in eval mode on ``device``, its config).

    Raises:
        InputError: the file is missing or is not such a checkpoint (one line naming the file).
    """
    return _velocity_of(_read(path), path, device)


def load_selected_velocity(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VelocityNet, FMAConfig, int]:
    """``load_velocity`` and the M its run chose on its validation split (read once).

    Raises:
        InputError: as ``load_velocity``, or a checkpoint that records no M.
    """
    state = _read(path)
    net, cfg = _velocity_of(state, path, device)
    m = state.get("selected_m")
    if not isinstance(m, int) or isinstance(m, bool):
        raise InputError(f"{path}: the checkpoint records no selected M (not written by train_fma?)")
    return net, cfg, m


def load_any_velocity(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VelocityNet, FMAConfig | None]:
    """Read either layout: this pipeline's checkpoint -> (net, config); an official state dict -> (net, None).

    Raises:
        InputError: a missing file, or one in neither layout (one line naming the file).
    """
    state = _read(path)
    if _is_ours(state):
        return _velocity_of(state, path, device)
    if _is_official(state):
        return load_official(path, device), None
    raise InputError(
        f"{path}: neither an FMA checkpoint of this pipeline nor an official FMA state dict "
        "(expected a 'state_dict' entry or an 'input_proj.weight' tensor)"
    )
