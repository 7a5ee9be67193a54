"""FMA evaluation: per-step curves with shared or per-image texts, the ensemble by hand, M choices, CV."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipeline.methods.fma.evaluate as evaluate
from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError
from pipeline.features.texts import StaticTexts
from pipeline.methods.fma.evaluate import (
    CVSelection,
    cv_select_m,
    evaluate_fma,
    fma_record,
    step_curves,
    stratified_folds,
)
from pipeline.methods.fma.solver import (
    accuracy_per_step,
    distance_per_step,
    euler_trajectory,
    select_m_with_margin,
)
from pipeline.methods.fma.trainer import FitResult
from pipeline.report.records import check_record


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _fixture(n: int = 12, c: int = 3, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = _unit(torch.randn(n, d, generator=g))
    text = _unit(torch.randn(c, d, generator=g))
    y = torch.randint(0, c, (n,), generator=g)
    w = 0.5 * torch.randn(d, d, generator=g)

    def u(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) * (1 + t[:, None])

    return x0, y, text, u


def test_step_curves_match_the_full_trajectory():
    x0, y, text, u = _fixture(n=50)
    curves = step_curves(u, x0, y, StaticTexts(text), 0.1, 6, ensemble_steps=(0, 3), batch_size=7)
    traj = euler_trajectory(u, x0, 0.1, 6)
    assert curves.acc == accuracy_per_step(traj, y, text)
    assert curves.dist == pytest.approx(distance_per_step(traj, y, text), abs=1e-6)
    assert curves.correct == [round(a * 50 / 100) for a in curves.acc] and curves.n == 50


def test_ensemble_against_a_hand_computation():
    """docs/methods.md Eq. (F12): argmax_c sum_{m in S} softmax(T cos(x_m, z_c)); S = {0, 2, 3}, T = 5."""
    x0, y, text, u = _fixture(n=30, seed=3)
    steps, temperature, h = (0, 2, 3), 5.0, 0.25
    curves = step_curves(u, x0, y, StaticTexts(text), h, 4, ensemble_steps=steps, temperature=temperature)
    # by hand: Euler steps, cosines, softmax, sum, argmax
    x, t, total = x0.clone(), torch.zeros(30), torch.zeros(30, 3, dtype=torch.float64)
    for m in range(5):
        if m in steps:
            cos = (_unit(x) @ text.T).double()  # text is already unit
            total += torch.exp(temperature * cos) / torch.exp(temperature * cos).sum(-1, keepdim=True)
        x, t = x + h * u(x, t), t + h
    expected = 100.0 * (total.argmax(-1) == y).double().mean().item()
    assert curves.ensemble_acc == pytest.approx(expected)
    # The official settings: states 0, 4, 8 at the CLIP temperature 100.
    cfg = FMAConfig()
    assert cfg.ensemble_steps == (0, 4, 8) and cfg.ensemble_temperature == 100.0
    # A one-step ensemble is that step's argmax.
    single = step_curves(u, x0, y, StaticTexts(text), h, 4, ensemble_steps=(2,))
    assert single.ensemble_acc == single.acc[2]


class PerImageTexts:
    """Per-image texts that depend on x0: the class texts rotated by an x0-dependent sign pattern."""

    per_image = True

    def __init__(self, text: torch.Tensor) -> None:
        self.text, self.seen = text, []

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        self.seen.append(x0.clone())
        sign = torch.where(x0 >= 0, 1.0, -1.0)  # (B, D)
        return self.text[None] * sign[:, None, :]  # (B, C, D)


def test_per_image_texts_are_computed_once_from_x0_and_held_fixed():
    x0, y, text, u = _fixture(n=20, seed=5)
    texts = PerImageTexts(text)
    curves = step_curves(u, x0, y, texts, 0.2, 3, ensemble_steps=(0, 3), batch_size=8)
    assert len(texts.seen) == 3 and torch.equal(torch.cat(texts.seen), x0)  # once per batch, from x0
    per_image = texts(x0)  # (N, C, D)
    traj = euler_trajectory(u, x0, 0.2, 3)
    for m, x in enumerate(traj):
        pred = torch.einsum("nd,ncd->nc", _unit(x), _unit(per_image)).argmax(-1)
        assert curves.acc[m] == pytest.approx(100.0 * (pred == y).float().mean().item())
        z = per_image[torch.arange(20), y]
        assert curves.dist[m] == pytest.approx((x - z).norm(dim=-1).mean().item(), abs=1e-6)
    static = step_curves(u, x0, y, StaticTexts(text), 0.2, 3, ensemble_steps=(0,))
    assert curves.acc != static.acc  # the texts mattered


def _features(seed: int = 0, n_per: int = 4, c: int = 3, d: int = 8, views: int = 2):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(c, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    def draw(n, v=None):
        y = np.repeat(np.arange(c), n)
        shape = (len(y), d) if v is None else (len(y), v, d)
        x = np.roll(text, 1, axis=0)[y].reshape(len(y), *(1,) * (len(shape) - 2), d) + 0.4 * rng.normal(
            size=shape
        )
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32), y

    train_x, train_y = draw(n_per, views)
    val_x, val_y = draw(2)
    test_x, test_y = draw(5)
    return SimpleNamespace(
        train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y,
        text=text, train_targets=None,
    )  # fmt: skip


def test_evaluate_fma_choices_and_results():
    data = _features()
    _, _, _, u = _fixture(d=8)
    cfg = FMAConfig(max_steps=5, ensemble_steps=(0, 4))
    e = evaluate_fma(u, data, cfg, StaticTexts(data.text))
    assert e.m_argmax == int(np.argmax(e.val.acc)) and e.m_full == 5
    assert e.m == select_m_with_margin(e.val.acc, len(data.val_y), cfg.select_margin)
    assert e.m_oracle == int(np.argmax(e.test.acc))
    assert (
        evaluate_fma(u, data, FMAConfig(max_steps=5, select_margin=0.0), StaticTexts(data.text)).m
        == e.m_argmax
    )
    results = {r.method: r for r in e.results()}
    assert list(results) == ["backbone", "fma", "fma_argmax", "fma_full", "fma_oracle", "fma_ensemble"]
    assert results["fma_argmax"].test_acc == e.test.acc[e.m_argmax]
    assert results["backbone"].test_acc == e.test.acc[0] and results["backbone"].role == "baseline"
    fma = results["fma"]
    assert (fma.role, fma.label, fma.plug_and_play, fma.info) == ("primary", "FMA", True, {"m": e.m})
    assert fma.test_acc == e.test.acc[e.m] and fma.val_acc == e.val.acc[e.m]
    assert results["fma_full"].role == "variant" and results["fma_full"].test_acc == e.test.acc[5]
    assert results["fma_oracle"].role == "diagnostic"
    assert results["fma_ensemble"].test_acc == e.test.ensemble_acc
    assert results["fma_ensemble"].info == {"steps": [0, 4], "temperature": 100.0}
    cv = CVSelection(m=2, acc=[0.0] * 6, folds=3, seconds=1.0)
    e_cv = evaluate_fma(u, data, cfg, StaticTexts(data.text), cv=cv)
    assert e_cv.results()[-1].method == "fma_cv" and e_cv.results()[-1].test_acc == e_cv.test.acc[2]
    record = fma_record(
        run={"backbone": "zeroshot", "dataset": "toy", "shot": 4, "seed": 1}, cfg=cfg, evaluation=e_cv,
        history=[1.0, 0.5], timing={"train_seconds": 1.0}, info={"n_train": 12}, variant="v",
    )  # fmt: skip
    check_record(record, "test")
    assert record["curves"]["x"] == "step" and record["curves"]["cv_acc"] == cv.acc
    assert record["info"]["cv_m"] == 2 and record["variant"] == "v"
    with pytest.raises(InputError, match="'val' split is empty"):
        evaluate_fma(
            u, SimpleNamespace(**{**vars(data), "val_y": data.val_y[:0]}), cfg, StaticTexts(data.text)
        )


# ---------------------------------------------------------------------------------------- cross-validation


def test_stratified_folds_are_deterministic_and_balanced():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 2)
    folds = stratified_folds(labels, 4, seed=3)
    assert np.array_equal(folds, stratified_folds(labels, 4, seed=3))
    assert not np.array_equal(folds, stratified_folds(labels, 4, seed=4))
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for c in range(3):
        per_class = np.bincount(folds[labels == c], minlength=4)
        assert per_class.max() - per_class.min() <= 1


def test_cv_uses_only_the_runs_images_and_ties_go_to_the_smaller_m(monkeypatch):
    data = _features()
    seen = []

    def fake_train(fold, cfg, seed, device="cpu", views=None):
        seen.append((fold.train_x.copy(), seed))
        return FitResult(lambda x, t: torch.zeros_like(x), [0.0])  # u = 0: every M scores the same

    monkeypatch.setattr(evaluate, "train_velocity", fake_train)
    cfg = FMAConfig(max_steps=4, cv_folds=3)
    sel = cv_select_m(data, cfg, seed=7, texts=StaticTexts(data.text))
    assert sel.m == 0 and len(set(sel.acc)) == 1 and sel.folds == 3  # a tie: the smallest M
    assert [s for _, s in seen] == [7 + 1000, 7 + 2000, 7 + 3000]
    pooled = np.concatenate([data.train_x[:, 0], data.val_x])  # train + val center views
    trained_on = sum(len(x) for x, _ in seen)
    assert trained_on == 2 * len(pooled)  # each image is held out by exactly one of the 3 folds
    for x, _ in seen:
        assert x.shape[1:] == data.train_x.shape[1:]  # val images fill every view slot
        assert all(any(np.array_equal(row, p) for p in pooled) for row in x[:, 0])
    with pytest.raises(InputError, match=r"fma.cv_folds"):
        cv_select_m(data, FMAConfig(cv_folds=100), seed=7, texts=StaticTexts(data.text))


def test_cv_is_deterministic_and_picks_the_best_pooled_m():
    data = _features(n_per=6)
    cfg = FMAConfig(blocks=1, epochs=15, batch_size=8, lr=3e-3, max_steps=6, cv_folds=3)
    a = cv_select_m(data, cfg, seed=1, texts=StaticTexts(data.text))
    b = cv_select_m(data, cfg, seed=1, texts=StaticTexts(data.text))
    assert a.acc == b.acc and a.m == b.m
    assert a.m == min(m for m, acc in enumerate(a.acc) if acc == max(a.acc))
    assert max(a.acc) > a.acc[0]  # the fold nets learned something
