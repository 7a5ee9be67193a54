"""FMA evaluation: accuracy per Euler step, choices of M, step ensemble, CV (docs/methods.md, F10-F13)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError
from pipeline.features.texts import ClassTexts, cosine_logits
from pipeline.methods.fma.solver import (
    VelocityField,
    euler_trajectory,
    own_text,
    select_m,
    select_m_with_margin,
)
from pipeline.methods.fma.trainer import train_velocity
from pipeline.report.records import Result, baseline_result, build_record

log = logging.getLogger(__name__)

CV_SEED_STRIDE = 1000  # fold f trains with seed + CV_SEED_STRIDE (f + 1), Eq. (F13)


@dataclass(frozen=True)
class StepCurves:
    """One split's accuracy along the flow.

    Attributes:
        acc: accuracy (%) at M = 0..max_steps.
        dist: mean distance ||x_M - z_y|| of the unnormalised feature to its own class text, per M.
        correct: correct predictions per M (the CV sums these over folds).
        ensemble_acc: accuracy (%) of the multi-step ensemble, Eq. (F12).
        n: number of images.
    """

    acc: list[float]
    dist: list[float]
    correct: list[int]
    ensemble_acc: float
    n: int


@torch.no_grad()
def step_curves(
    velocity: VelocityField,
    x0: Tensor,
    labels: Tensor,
    texts: ClassTexts,
    step_size: float,
    max_steps: int,
    ensemble_steps: tuple[int, ...] = (0, 4, 8),
    temperature: float = 100.0,
    batch_size: int = 4096,
) -> StepCurves:
    """Accuracy and distance at every M = 0..max_steps and the ensemble's accuracy, in bounded memory.

    Each batch's class texts are computed once from its untransported x0 (``texts(x0)``: (C, D), or
    (B, C, D) per image) and held fixed along the ODE. Classification is the argmax cosine, Eq. (F10);
    the ensemble sums softmax(temperature * cos(x_m, texts)) over m in ``ensemble_steps``, Eq. (F12).

    Args:
        velocity: u(x, t).
        x0: (N, D) features; labels: (N,) class ids.
        texts: the class-text provider (``pipeline.features.texts``).
        step_size: h; max_steps: the last M.

    Returns:
        ``StepCurves`` of the split.
    """
    n = x0.shape[0]
    assert n > 0, "step_curves needs at least one sample"
    assert all(0 <= m <= max_steps for m in ensemble_steps), ensemble_steps
    correct = torch.zeros(max_steps + 1, dtype=torch.int64)
    dist = torch.zeros(max_steps + 1, dtype=torch.float64)
    ensemble_correct = 0
    labels = labels.to(x0.device)
    for start in range(0, n, batch_size):
        xb, yb = x0[start : start + batch_size], labels[start : start + batch_size]
        text = texts(xb).to(xb.device)  # (C, D) or (B, C, D), from x0 only
        z = own_text(text, yb)  # (B, D)
        traj = euler_trajectory(velocity, xb, step_size, max_steps)  # (M + 1, B, D)
        probs = torch.zeros(xb.shape[0], text.shape[-2], dtype=torch.float64, device=xb.device)  # (B, C)
        for m, x in enumerate(traj):
            logits = cosine_logits(x, text)  # (B, C)
            correct[m] += int((logits.argmax(dim=-1) == yb).sum())
            dist[m] += torch.linalg.vector_norm(x - z, dim=-1).double().sum().item()
            if m in ensemble_steps:
                probs += torch.softmax(temperature * logits.double(), dim=-1)
        ensemble_correct += int((probs.argmax(dim=-1) == yb).sum())
    return StepCurves(
        acc=(100.0 * correct.double() / n).tolist(),
        dist=(dist / n).tolist(),
        correct=correct.tolist(),
        ensemble_acc=100.0 * ensemble_correct / n,
        n=n,
    )


def curves_for(
    velocity: VelocityField, x0: np.ndarray, y: np.ndarray, texts: ClassTexts, cfg: FMAConfig, device: Any
) -> StepCurves:
    """``step_curves`` of numpy arrays under ``cfg``'s solver and ensemble settings."""
    return step_curves(
        velocity,
        torch.as_tensor(np.asarray(x0), dtype=torch.float32).to(device),
        torch.as_tensor(np.asarray(y), dtype=torch.int64).to(device),
        texts,
        cfg.step_size,
        cfg.max_steps,
        ensemble_steps_of(cfg),
        cfg.ensemble_temperature,
    )


def ensemble_steps_of(cfg: FMAConfig) -> tuple[int, ...]:
    """The ensemble's steps that the trajectory reaches (``ensemble_steps`` <= ``max_steps``)."""
    return tuple(m for m in cfg.ensemble_steps if m <= cfg.max_steps)


# ------------------------------------------------------------------------------------- cross-validation


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id in 0..k-1 of every image, Eq. (F13): each class's images in a seeded random order, dealt
    round-robin, continuing from where the previous class stopped (classes in increasing id).

    Args:
        labels: (N,) class ids.

    Returns:
        (N,) int64 fold ids; fold sizes differ by at most one, and so do a class's counts per fold.
    """
    labels = np.asarray(labels, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    pos = 0
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        order = idx[torch.randperm(len(idx), generator=gen).numpy()]
        folds[order] = (pos + np.arange(len(idx))) % k
        pos += len(idx)
    return folds


@dataclass(frozen=True)
class CVSelection:
    """M chosen by k-fold cross-validation over the run's train + val images, Eq. (F13).

    Attributes:
        m: chosen M (best pooled held-out accuracy, ties to the smaller M).
        acc: pooled held-out accuracy (%) per M.
        folds: k.
        seconds: wall time of the k fold trainings and evaluations.
    """

    m: int
    acc: list[float]
    folds: int
    seconds: float


def cv_select_m(
    features: Any, cfg: FMAConfig, seed: int, texts: ClassTexts, device: Any = "cpu"
) -> CVSelection:
    """Choose M by stratified ``cfg.cv_folds``-fold cross-validation over train + val, Eq. (F13).

    The run's N training images (all their cached views) and Nv validation images (center view only;
    it fills every view slot) are pooled and dealt into k stratified folds (``stratified_folds``,
    seeded by ``seed``). For each fold a velocity net of the same config is trained on the other
    folds (seed ``seed + CV_SEED_STRIDE (f + 1)``) and the held-out center views are classified at
    every M; correct counts are summed over folds and the best M wins, ties to the smaller M.
    Nothing outside this run's own train and val images is used. With ``cfg.online`` the folds
    train on the cached views instead (every fold would need the images re-encoded).

    Raises:
        InputError: fewer images than folds (names ``fma.cv_folds``).
    """
    k = cfg.cv_folds
    assert k >= 2, k
    train_x = np.asarray(features.train_x, dtype=np.float32)  # (N, V, D)
    val_x = np.asarray(features.val_x, dtype=np.float32)  # (Nv, D)
    n_views = train_x.shape[1]
    x = np.concatenate([train_x, np.repeat(val_x[:, None], n_views, axis=1)])  # (N + Nv, V, D)
    y = np.concatenate([np.asarray(features.train_y), np.asarray(features.val_y)]).astype(np.int64)
    if len(y) < k:
        raise InputError(
            f"config key 'fma.cv_folds': {k} folds need at least {k} train + val images, got {len(y)}"
        )
    targets = getattr(features, "train_targets", None)
    if targets is not None:  # per-image texts: the val images' own-class texts from their x0
        val_text = texts(torch.as_tensor(val_x).to(device))  # (Nv, C, D) or (C, D)
        val_z = own_text(val_text, torch.as_tensor(np.asarray(features.val_y))).cpu().numpy()  # (Nv, D)
        targets = np.concatenate([np.asarray(targets), np.repeat(val_z[:, None], n_views, axis=1)])
    fold_cfg = cfg
    if cfg.online:
        log.info("cv: fma.online is set; the fold nets train on the cached views")
        fold_cfg = dataclasses.replace(cfg, online=False, train_views=None)

    folds = stratified_folds(y, k, seed)
    correct = np.zeros(cfg.max_steps + 1, dtype=np.int64)
    start = time.perf_counter()
    for f in range(k):
        held, kept = folds == f, folds != f
        fold = SimpleNamespace(
            train_x=x[kept],
            train_y=y[kept],
            text=getattr(features, "text", None),
            train_targets=None if targets is None else targets[kept],
        )
        fit = train_velocity(fold, fold_cfg, seed=seed + CV_SEED_STRIDE * (f + 1), device=device)
        curves = curves_for(fit.net, x[held, 0], y[held], texts, cfg, device)
        correct += np.asarray(curves.correct)
        log.info(
            "cv fold %d/%d: %d train, %d held out; held-out acc M=0 %.1f%%, best %.1f%%",
            f + 1, k, int(kept.sum()), int(held.sum()), curves.acc[0], max(curves.acc),
        )  # fmt: skip
    acc = (100.0 * correct / len(y)).tolist()
    m = select_m(acc)
    seconds = time.perf_counter() - start
    log.info("cv: chose M=%d (pooled held-out %.2f%%) in %.1fs", m, acc[m], seconds)
    return CVSelection(m=m, acc=acc, folds=k, seconds=seconds)


# ---------------------------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class FMAEvaluation:
    """Every reading of one trained flow: curves, the Ms chosen each way, the ensemble and CV.

    Attributes:
        val, test: ``StepCurves`` of the validation and test splits.
        m: M chosen on val with the margin ``select_margin`` (``select_m_with_margin``), Eq. (F11).
        m_argmax: the plain val argmax (ties to the smaller M).
        m_full: the full trajectory, max_steps.
        m_oracle: M chosen on test: a diagnostic, never a valid result.
        cv: the cross-validated choice, or None when ``cv_folds`` is 0.
        ensemble_steps, ensemble_temperature: the ensemble's settings, Eq. (F12).
    """

    val: StepCurves
    test: StepCurves
    m: int
    m_argmax: int
    m_full: int
    m_oracle: int
    cv: CVSelection | None
    ensemble_steps: tuple[int, ...]
    ensemble_temperature: float

    def results(self) -> list[Result]:
        """The run's results for its record (``pipeline.report.records``)."""
        val, test = self.val.acc, self.test.acc
        steps = ", ".join(str(m) for m in self.ensemble_steps)
        out = [
            baseline_result(test[0], val[0]),
            Result("fma", "FMA", "primary", test[self.m], val[self.m], True, {"m": self.m}),
            Result(
                "fma_argmax", "FMA, M = val argmax (no margin)", "variant",
                test[self.m_argmax], val[self.m_argmax], False, {"m": self.m_argmax},
            ),
            Result(
                "fma_full", f"FMA, full trajectory (M = {self.m_full})", "variant",
                test[self.m_full], val[self.m_full], False, {"m": self.m_full},
            ),
            Result(
                "fma_oracle", "FMA, oracle M (picked on test)", "diagnostic",
                test[self.m_oracle], val[self.m_oracle], False, {"m": self.m_oracle},
            ),
            Result(
                "fma_ensemble", f"FMA, multi-step ensemble (M = {steps})", "variant",
                self.test.ensemble_acc, self.val.ensemble_acc, False,
                {"steps": list(self.ensemble_steps), "temperature": self.ensemble_temperature},
            ),
        ]  # fmt: skip
        if self.cv is not None:
            m = self.cv.m
            out.append(
                Result(
                    "fma_cv",
                    f"FMA, M by {self.cv.folds}-fold CV on train + val",
                    "variant",
                    test[m],
                    val[m],
                    False,
                    {"m": m, "folds": self.cv.folds},
                )  # fmt: skip
            )
        return out


def evaluate_fma(
    velocity: VelocityField,
    features: Any,
    cfg: FMAConfig,
    texts: ClassTexts,
    device: Any = "cpu",
    cv: CVSelection | None = None,
) -> FMAEvaluation:
    """Val and test curves of a trained flow and M chosen each way (Eqs. (F10)-(F13)).

    Args:
        velocity: the trained net.
        features: with ``val_x`` (Nv, D), ``val_y``, ``test_x`` (Nt, D), ``test_y`` arrays.
        cfg: solver (step_size, max_steps) and ensemble settings.
        texts: the class-text provider.
        cv: a ``cv_select_m`` result to apply to this net, if any.

    Raises:
        InputError: an empty val or test split.
    """
    for name in ("val", "test"):
        if len(getattr(features, f"{name}_y")) == 0:
            raise InputError(f"the '{name}' split is empty: FMA needs it to choose and report M")
    if ensemble_steps_of(cfg) != tuple(cfg.ensemble_steps):
        log.warning(
            "ensemble steps %s beyond max_steps %d are left out",
            [m for m in cfg.ensemble_steps if m > cfg.max_steps], cfg.max_steps,
        )  # fmt: skip
    val = curves_for(velocity, features.val_x, features.val_y, texts, cfg, device)
    test = curves_for(velocity, features.test_x, features.test_y, texts, cfg, device)
    evaluation = FMAEvaluation(
        val=val,
        test=test,
        m=select_m_with_margin(val.acc, len(features.val_y), cfg.select_margin),
        m_argmax=select_m(val.acc),
        m_full=cfg.max_steps,
        m_oracle=select_m(test.acc),
        cv=cv,
        ensemble_steps=ensemble_steps_of(cfg),
        ensemble_temperature=cfg.ensemble_temperature,
    )
    e = evaluation
    log.info(
        "M=%d on val (val %.2f%%, test %.2f%%); zero-shot test %.2f%%; full M=%d test %.2f%%; "
        "oracle M=%d test %.2f%%; ensemble test %.2f%%%s",
        e.m, val.acc[e.m], test.acc[e.m], test.acc[0], e.m_full, test.acc[e.m_full], e.m_oracle,
        test.acc[e.m_oracle], test.ensemble_acc,
        "" if cv is None else f"; cv M={cv.m} test {test.acc[cv.m]:.2f}%",
    )  # fmt: skip
    return evaluation


def fma_record(
    *,
    run: dict[str, Any],
    cfg: FMAConfig,
    evaluation: FMAEvaluation,
    history: list[float],
    timing: dict[str, float],
    info: dict[str, Any],
    variant: str | None = None,
) -> dict[str, Any]:
    """The stage's result record (``pipeline.report.records.build_record``, stage "fma").

    Curves are per Euler step (``"x": "step"``): val/test accuracy and distance, and the pooled CV
    accuracy when CV ran. ``info`` gets the loss history and every chosen M beside the caller's keys.
    """
    e = evaluation
    steps = list(range(len(e.val.acc)))
    curves: dict[str, Any] = {
        "x": "step",
        "step": steps,
        "val_acc": e.val.acc,
        "test_acc": e.test.acc,
        "val_dist": e.val.dist,
        "test_dist": e.test.dist,
    }
    if e.cv is not None:
        curves["cv_acc"] = e.cv.acc
    info = {
        **info,
        "selected_m": e.m,
        "oracle_m": e.m_oracle,
        "cv_m": None if e.cv is None else e.cv.m,
        "final_loss": history[-1] if history else None,
        "loss_history": history,
    }
    return build_record(
        stage="fma",
        run=run,
        results=e.results(),
        config=dataclasses.asdict(cfg),
        curves=curves,
        timing=timing,
        info=info,
        variant=variant,
    )
