"""Config dataclasses: unknown keys and wrong types are named; canonical JSON is stable."""

from __future__ import annotations

import pytest

from pipeline.core.config import EncoderConfig, ExtractionConfig, FMAConfig, canonical_json, from_dict
from pipeline.core.errors import InputError


def test_from_dict_fills_defaults_and_coerces_ints_to_floats() -> None:
    cfg = from_dict(FMAConfig, {"lr": 1, "blocks": 12})
    assert (
        cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.blocks == 12 and cfg.epochs == FMAConfig().epochs
    )
    assert from_dict(ExtractionConfig, {"crop_scale": [0.5, 1]}).crop_scale == (0.5, 1.0)
    assert from_dict(EncoderConfig, {"model": "x", "pretrained": None}).pretrained is None
    assert (cfg.train_views, cfg.online) == (None, False)  # the defaults keep earlier behaviour
    assert from_dict(FMAConfig, {"train_views": 0}).train_views == 0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"lr": "fast"}, "fma.lr"),
        ({"blocks": 2.5}, "fma.blocks"),
        ({"blocks": True}, "fma.blocks"),
        ({"learning_rate": 1.0}, "fma.learning_rate"),
        ({"noise": "gaussian"}, "fma.noise"),
        ({"coupling": "any"}, "fma.coupling"),
        ({"train_views": -1}, "fma.train_views"),
        ({"train_views": 1.5}, "fma.train_views"),
        ({"online": True, "train_views": 2}, "fma.train_views"),
        ({"online": "yes"}, "fma.online"),
    ],
)
def test_bad_values_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(InputError, match=needle.replace(".", r"\.")):
        from_dict(FMAConfig, data, "fma.")


def test_canonical_json_is_order_independent() -> None:
    assert (
        canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'
    )
    assert canonical_json(FMAConfig()) == canonical_json(from_dict(FMAConfig, {}))
