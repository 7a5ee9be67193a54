"""FMAConfig: the official-recipe defaults and one-line errors naming the key for bad values."""

import pytest

from pipeline.core.config import FMAConfig, from_dict
from pipeline.core.errors import InputError


def test_defaults_are_the_official_recipe():
    cfg = FMAConfig()
    assert (cfg.blocks, cfg.time_scale, cfg.noise, cfg.coupling) == (12, 1.0, "none", "class")
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.warmup_epochs) == (2e-4, 0.01, 32, 1)
    assert (cfg.step_size, cfg.max_steps, cfg.ensemble_steps, cfg.ensemble_temperature) == (
        0.1,
        10,
        (0, 4, 8),
        100.0,
    )
    assert cfg.epochs == 600 and cfg.train_views is None  # official epochs; every cached view
    assert cfg.cv_folds == 0 and cfg.online is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("paper_noise_scale", -0.5),
        ("paper_noise_scale", float("inf")),
        ("paper_noise_scale", float("nan")),
        ("interpolant_noise_std", -1.0),
        ("interpolant_noise_std", float("inf")),
        ("time_scale", 0.0),
        ("ensemble_temperature", float("nan")),
        ("step_size", -0.1),
        ("cv_folds", 1),
        ("cv_folds", -2),
        ("ensemble_steps", []),
        ("ensemble_steps", [0, 0]),
        ("ensemble_steps", [-1, 2]),
        ("ensemble_steps", [11, 12]),
        ("blocks", 0),
        ("train_views", -1),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(key, value):
    with pytest.raises(InputError) as err:
        from_dict(FMAConfig, {key: value}, prefix="fma.")
    message = str(err.value)
    assert message.startswith(f"config key 'fma.{key}'") and "\n" not in message, message


def test_old_noise_scale_key_is_rejected_and_zero_scales_are_fine():
    with pytest.raises(InputError, match="unknown config key 'fma.noise_scale'"):
        from_dict(FMAConfig, {"noise_scale": 1.0}, prefix="fma.")
    assert FMAConfig(noise="paper", paper_noise_scale=0.0).paper_noise_scale == 0.0
    assert FMAConfig(max_steps=5).ensemble_steps == (0, 4, 8)  # 8 is left out at evaluation
    assert FMAConfig(online=True, train_views=None).online


def test_online_with_augmented_train_views_is_contradictory():
    with pytest.raises(InputError, match="fma.train_views"):
        FMAConfig(online=True, train_views=2)
