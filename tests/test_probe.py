"""Tests for the linear probe: accuracy on separable data, C chosen on val, the log-space search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.config import ProbeConfig
from pipeline.core.errors import InputError
from pipeline.methods import linear_probe as probe
from pipeline.methods.linear_probe import evaluate, fit_probe


def _clusters(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float):
    x = np.concatenate([c + spread * rng.standard_normal((n, centers.shape[1])) for c in centers])
    y = np.repeat(np.arange(len(centers)), n)
    return x.astype(np.float32), y


def test_separable_clusters_above_95_percent_and_deterministic():
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.standard_normal((5, 32))
    train_x, train_y = _clusters(rng, centers, 8, 0.5)
    train_x = np.stack([train_x, train_x + 0.05], axis=1)  # (N, 2, D): view 0 is the center crop
    val_x, val_y = _clusters(rng, centers, 4, 0.5)
    test_x, test_y = _clusters(rng, centers, 60, 0.5)
    cfg = ProbeConfig()
    first = fit_probe(train_x, train_y, val_x, val_y, cfg)
    second = fit_probe(train_x, train_y, val_x, val_y, cfg)
    assert evaluate(first.classifier, test_x, test_y) > 95.0
    assert first.C == second.C and first.history == second.history
    np.testing.assert_array_equal(first.classifier.coef_, second.classifier.coef_)
    # The exact grid in order, then 8 more fits for the 8 search steps.
    assert [c for c, _ in first.history[: len(cfg.c_grid)]] == list(cfg.c_grid)
    assert len(first.history) == len(cfg.c_grid) + 8
    assert first.val_acc == max(acc for _, acc in first.history)


def test_view_zero_is_the_one_trained_on():
    rng = np.random.default_rng(1)
    centers = 3.0 * rng.standard_normal((3, 8))
    x, y = _clusters(rng, centers, 6, 0.3)
    junk = rng.standard_normal(x.shape).astype(np.float32)  # view 1 carries no class signal
    a = fit_probe(np.stack([x, junk], axis=1), y, x, y, ProbeConfig(search_steps=0))
    b = fit_probe(x, y, x, y, ProbeConfig(search_steps=0))
    np.testing.assert_array_equal(a.classifier.coef_, b.classifier.coef_)


def test_validation_split_decides_C():
    # Train: 8 points of class 0 at x=-1, 2 of class 1 at x=+1 (separable, imbalanced).
    train_x = np.array([[-1.0]] * 8 + [[1.0]] * 2, dtype=np.float32)
    train_y = np.array([0] * 8 + [1] * 2)
    # Val points sit on the class-1 side. Labelled 1, they reward a large C (a real boundary);
    # labelled 0, they reward a tiny C (weights ~0, the intercept predicts the majority class 0).
    val_x = np.array([[1.0], [0.9], [1.1]], dtype=np.float32)
    cfg = ProbeConfig()
    honest = fit_probe(train_x, train_y, val_x, np.array([1, 1, 1]), cfg)
    flipped = fit_probe(train_x, train_y, val_x, np.array([0, 0, 0]), cfg)
    assert honest.val_acc == 100.0 and flipped.val_acc == 100.0
    assert flipped.C <= 1e-2 and honest.C >= 1.0
    np.testing.assert_array_equal(flipped.classifier.predict(val_x), [0, 0, 0])


def _fake_search(monkeypatch: pytest.MonkeyPatch, acc_of_log_c) -> None:
    """Replace fitting by the identity on C and scoring by a known function of log10(C)."""
    monkeypatch.setattr(probe, "fit_logistic", lambda x, y, c, max_iter: (c, True))
    monkeypatch.setattr(probe, "evaluate", lambda clf, x, y: acc_of_log_c(math.log10(clf)))


def _dummy_data():
    x = np.zeros((4, 1, 2), dtype=np.float32)
    return x, np.array([0, 1, 0, 1]), x[:, 0], np.array([0, 1, 0, 1])


def test_binary_search_in_log_space_follows_the_protocol(monkeypatch):
    _fake_search(monkeypatch, lambda u: 100.0 - 10.0 * abs(u - 0.37))  # peak at C = 10**0.37
    result = fit_probe(*_dummy_data(), ProbeConfig())
    logs = [math.log10(c) for c, _ in result.history]
    # Grid best C* = 1 (log 0): bounds -1 and 1; step 1 keeps 1 and moves lo to 0 (= C*, already
    # scored); step 2 keeps 0 and moves hi to 0.5; then one new bound per step.
    expected = [6, 4, 2, 0, -2, -4, -6, -1, 1, 0.5, 0.25, 0.375, 0.3125, 0.34375, 0.359375]
    np.testing.assert_allclose(logs, expected, atol=1e-9)
    assert math.isclose(result.C, 10**0.375)
    assert math.isclose(result.val_acc, 100.0 - 10.0 * abs(0.375 - 0.37))


def test_ties_go_to_the_earlier_C(monkeypatch):
    _fake_search(monkeypatch, lambda u: 50.0)
    result = fit_probe(*_dummy_data(), ProbeConfig())
    assert result.C == 1e6  # first grid value; every later C only ties
    assert len(result.history) == 7 + 8


def test_search_steps_zero_is_the_grid_only(monkeypatch):
    _fake_search(monkeypatch, lambda u: -abs(u - 2.2))
    result = fit_probe(*_dummy_data(), ProbeConfig(search_steps=0))
    assert [c for c, _ in result.history] == list(ProbeConfig().c_grid)
    assert result.C == 1e2


def test_bad_inputs_raise_input_error():
    x, y, vx, vy = _dummy_data()
    with pytest.raises(InputError, match="c_grid"):
        fit_probe(x, y, vx, vy, ProbeConfig(c_grid=(1.0, -1.0)))
    with pytest.raises(InputError, match="two classes"):
        fit_probe(x, np.zeros(4, dtype=int), vx, vy, ProbeConfig())
    with pytest.raises(InputError, match="validation"):
        fit_probe(x, y, vx[:0], vy[:0], ProbeConfig())
