"""Linear probe on frozen image features: CoOp's lpclip protocol, CLIP appendix A3 (docs/methods.md, P)."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from pipeline.core.atomic import atomic_path
from pipeline.core.config import ProbeConfig
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

# Fixed so that a refit reproduces the search's fit exactly (lbfgs itself is deterministic).
RANDOM_STATE = 0


@dataclass(frozen=True)
class ProbeResult:
    """The chosen regularisation strength and the classifier fitted on the train split with it."""

    C: float  # inverse L2 strength chosen on the validation split
    val_acc: float  # validation accuracy (%) at C
    classifier: LogisticRegression  # fitted on the train split with C
    history: tuple[tuple[float, float], ...]  # (C, val_acc %) of every distinct fit, in order
    converged: bool  # whether lbfgs converged within max_iter at C


def center_view(x: np.ndarray) -> np.ndarray:
    """Return the center-crop view of cached train features.

    Args:
        x: (N, V, D) features with view 0 the center crop, or (N, D) already single-view.

    Returns:
        (N, D) float64 array.
    """
    if x.ndim == 3:
        x = x[:, 0]  # (N, D)
    if x.ndim != 2:
        raise InputError(f"probe features must be (N, D) or (N, V, D), got shape {x.shape}")
    return np.asarray(x, dtype=np.float64)


def evaluate(classifier: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent of ``classifier`` on (N, D) features ``x`` with (N,) labels ``y``."""
    if len(y) == 0:
        raise InputError("cannot evaluate a probe on an empty split")
    pred = classifier.predict(np.asarray(x, dtype=np.float64))  # (N,)
    return float(100.0 * np.mean(pred == np.asarray(y)))


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> tuple[LogisticRegression, bool]:
    """Fit multinomial L2 logistic regression with lbfgs; return it and whether it converged.

    Convergence warnings are expected at large C on tiny few-shot sets: they are logged at debug
    level instead of being printed; every other warning passes through unchanged.
    """
    # The default penalty is L2 in every scikit-learn version (1.8 deprecates the ``penalty`` argument).
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=RANDOM_STATE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(x, y)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
            log.debug("C=%.3g: lbfgs did not converge in %d iterations", C, max_iter)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clf, converged


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: ProbeConfig,
) -> ProbeResult:
    """Choose C on the validation split and return the probe fitted on the train split with it.

    1. Grid: fit on train and score on val for every C in ``cfg.c_grid`` (in order).
    2. Binary search in log space around the best grid C*: bounds lo = C*/10, hi = 10 C*. Each of
       ``cfg.search_steps`` steps scores both bounds, keeps the better one (ties keep lo) and moves
       the worse one to the log-midpoint sqrt(lo * hi).
    3. C = the best C ever scored (ties to the one scored first).

    Fits are deterministic, so a C scored twice is fitted once (Cs are compared in log space, to
    9 decimals). Step 1 fits both bounds and moves one to sqrt(lo * hi) = C*, already fitted; step
    2 therefore fits nothing new, and every later step fits one new bound: ``len(c_grid) +
    search_steps`` distinct fits for ``search_steps >= 2``. The search fits on the train split, so
    the classifier kept for C *is* the refit on the train split with C.

    Args:
        train_x: (N, V, D) cached train features (view 0, the center crop, is used) or (N, D).
        train_y: (N,) labels.
        val_x: (Nv, D) validation features.
        val_y: (Nv,) labels.
        cfg: grid, number of search steps and lbfgs iteration cap.

    Raises:
        InputError: an empty grid, a non-positive C, an empty split or a single training class.
    """
    if not cfg.c_grid or any(not c > 0 for c in cfg.c_grid):
        raise InputError(f"config key 'probe.c_grid': need positive values, got {list(cfg.c_grid)}")
    if cfg.search_steps < 0 or cfg.max_iter < 1:
        raise InputError("config keys 'probe.search_steps' >= 0 and 'probe.max_iter' >= 1 are required")
    x = center_view(train_x)  # (N, D)
    xv = center_view(val_x)  # (Nv, D)
    if len(np.unique(train_y)) < 2:
        raise InputError("linear probe needs at least two classes in the train split")
    if len(val_y) == 0:
        raise InputError("linear probe needs a non-empty validation split to choose C")

    # Keyed by rounded log10(C): the log-midpoint of C*/10 and 10 C* is C* only up to rounding.
    scored: dict[float, tuple[float, float, LogisticRegression, bool]] = {}  # key -> (C, acc, clf, ok)
    history: list[tuple[float, float]] = []

    def score(c: float) -> float:
        key = round(math.log10(c), 9)
        if key not in scored:
            clf, ok = fit_logistic(x, train_y, c, cfg.max_iter)
            acc = evaluate(clf, xv, val_y)
            scored[key] = (c, acc, clf, ok)
            history.append((c, acc))
            log.debug("C=%.4g: val %.2f%%", c, acc)
        return scored[key][1]

    for c in cfg.c_grid:
        score(float(c))
    # Best grid C: first occurrence of the maximum, i.e. ties go to the earlier grid value.
    grid_best = max(history, key=lambda h: h[1])[0]

    lo, hi = grid_best / 10.0, grid_best * 10.0
    for _ in range(cfg.search_steps):
        if score(lo) >= score(hi):
            hi = math.sqrt(lo * hi)  # keep lo; move hi to the log-midpoint
        else:
            lo = math.sqrt(lo * hi)

    best_c, best_acc = max(history, key=lambda h: h[1])  # max returns the first maximal entry
    _, _, clf, converged = scored[round(math.log10(best_c), 9)]
    if not converged:
        log.warning("lbfgs did not converge in %d iterations at the chosen C=%.4g", cfg.max_iter, best_c)
    log.info("chose C=%.4g (val %.2f%%) after %d fits", best_c, best_acc, len(history))
    return ProbeResult(
        C=best_c, val_acc=best_acc, classifier=clf, history=tuple(history), converged=converged
    )


# ---------------------------------------------------------------------------------------------- weights


def save_probe(path: str | os.PathLike, classifier: LogisticRegression, classnames: Sequence[str]) -> None:
    """Write a fitted probe's weights atomically as .npz: coef (K, D), intercept (K,), classes (K,)
    (the label of each row) and the run's class names (JSON), for scoring it on other test sets."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            coef=np.asarray(classifier.coef_, dtype=np.float64),
            intercept=np.asarray(classifier.intercept_, dtype=np.float64),
            classes=np.asarray(classifier.classes_, dtype=np.int64),
            classnames=np.frombuffer(json.dumps(list(classnames)).encode("utf-8"), dtype=np.uint8),
        )


@dataclass(frozen=True)
class ProbeWeights:
    """A saved probe: scores = x @ coef.T + intercept; row k scores label ``classes[k]``."""

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    classnames: list[str]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, C) scores per label 0..C-1 (-inf for a label it never saw)."""
        out = np.full((len(x), len(self.classnames)), -np.inf)
        raw = np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept  # (N, K)
        if self.coef.shape[0] == 1:  # two classes: one row scores classes[1] against classes[0]
            raw = np.concatenate([np.zeros_like(raw), raw], axis=1)
        out[:, self.classes] = raw
        return out


def load_probe(path: str | os.PathLike) -> ProbeWeights:
    """Read a ``save_probe`` file (no pickles).

    Raises:
        InputError: a missing or damaged file (one line naming it).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            coef, intercept, classes = data["coef"], data["intercept"], data["classes"]
            names = json.loads(bytes(data["classnames"]).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: probe weights not found") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a probe weights file ({type(err).__name__}: {err})") from None
    k = 2 if coef.shape[0] == 1 else coef.shape[0]
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],) or classes.shape != (k,) or not names:
        raise InputError(f"{path}: inconsistent probe weights (coef {coef.shape}, classes {classes.shape})")
    if classes.min() < 0 or classes.max() >= len(names):
        raise InputError(f"{path}: probe classes outside 0..{len(names) - 1}")
    return ProbeWeights(coef, intercept, classes, [str(n) for n in names])


def label_map(
    source: Sequence[str], target: Sequence[str], parent_labels: Sequence[int] | None = None
) -> list[int] | None:
    """For each target class, the source label a probe's score for it comes from, or None when the
    target has a class the source lacks (the probe does not apply).

    ``parent_labels`` (a test-only variant's classes in its parent dataset, e.g. ImageNet-A's 200 in
    ImageNet) win when they name the same classes; otherwise class names must match one to one.
    """
    if parent_labels is not None and len(parent_labels) == len(target):
        if all(0 <= p < len(source) and source[p] == t for p, t in zip(parent_labels, target, strict=True)):
            return [int(p) for p in parent_labels]
    index: dict[str, list[int]] = {}
    for i, name in enumerate(source):
        index.setdefault(name, []).append(i)
    if not all(len(index.get(name, [])) == 1 for name in target):
        return None
    return [index[name][0] for name in target]
