"""Stage-1 backbones behind a name registry: adding one is a new module and one line here."""

from __future__ import annotations

from pipeline.backbones.base import Backbone
from pipeline.backbones.zeroshot import ZeroShotCLIP
from pipeline.core.errors import InputError

BACKBONES: dict[str, type[Backbone]] = {
    ZeroShotCLIP.name: ZeroShotCLIP,
}


def get_backbone(name: str) -> type[Backbone]:
    """The backbone class registered under ``name``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise InputError(f"unknown backbone '{name}' (choose from {', '.join(sorted(BACKBONES))})") from None


__all__ = ["BACKBONES", "Backbone", "get_backbone"]
