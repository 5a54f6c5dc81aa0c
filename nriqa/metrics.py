"""Correlation metrics of IQA: SRCC, PLCC, KRCC and RMSE, with the optional VQEG logistic fit.

PLCC and RMSE are often reported after mapping predictions onto the subjective scale with the VQEG
4-parameter logistic (:func:`logistic4`); ``fit="logistic"`` does that, and :func:`evaluate` then
names the results ``plcc_logistic`` / ``rmse_logistic`` so a number never hides how it was made.

Correlations are returned signed, as computed. nriqa's labels are higher = better, so a good model
correlates positively; a caller comparing against a lower = better scale (DMOS) flips the sign
itself. Degenerate inputs (length mismatch, fewer than 3 samples, NaN / inf, constant predictions
or targets) raise :class:`MetricError` instead of returning NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

from nriqa.errors import MetricError

FITS = ("none", "logistic")
MIN_SAMPLES = 3
_MAXFEV = 20000


def srcc(pred, target) -> float:
    """Spearman rank correlation."""
    x, y = _check(pred, target)
    return float(stats.spearmanr(x, y)[0])


def krcc(pred, target) -> float:
    """Kendall rank correlation (tau-b, which accounts for ties)."""
    x, y = _check(pred, target)
    return float(stats.kendalltau(x, y)[0])


def plcc(pred, target, fit: str = "none") -> float:
    """Pearson linear correlation, of the logistic-mapped predictions when ``fit="logistic"``."""
    x, y = _check(pred, target)
    x = _mapped(x, y, fit)
    return float(stats.pearsonr(x, y)[0])


def rmse(pred, target, fit: str = "none") -> float:
    """Root mean squared error; without a fit ``pred`` must already be on ``target``'s scale."""
    x, y = _check(pred, target)
    x = _mapped(x, y, fit)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def logistic4(x, b1: float, b2: float, b3: float, b4: float):
    """VQEG 4-parameter logistic: ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``."""
    z = -(np.asarray(x, dtype=np.float64) - b3) / abs(b4)
    return b2 + (b1 - b2) / (1.0 + np.exp(np.clip(z, -700, 700)))


def fit_logistic(pred, target) -> np.ndarray:
    """Least-squares :func:`logistic4` parameters ``[b1, b2, b3, b4]`` mapping ``pred`` to ``target``.

    Starts from the usual ``[max target, min target, mean pred, std pred]``. Raises
    :class:`MetricError` when the fit does not converge.
    """
    x, y = _check(pred, target)
    return _fit(x, y)


def evaluate(pred, target, fit: str = "none") -> dict:
    """All metrics at once: ``srcc``, ``krcc``, ``n`` and ``plcc`` / ``rmse``, or
    ``plcc_logistic`` / ``rmse_logistic`` when ``fit="logistic"`` (one fit serves both)."""
    x, y = _check(pred, target)
    mapped = _mapped(x, y, fit)
    suffix = "" if fit == "none" else f"_{fit}"
    return {
        "srcc": float(stats.spearmanr(x, y)[0]),
        f"plcc{suffix}": float(stats.pearsonr(mapped, y)[0]),
        "krcc": float(stats.kendalltau(x, y)[0]),
        f"rmse{suffix}": float(np.sqrt(np.mean((mapped - y) ** 2))),
        "n": len(x),
    }


def _check(pred, target) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_vector(pred, "predictions"), _as_vector(target, "targets")
    if len(x) != len(y):
        raise MetricError(f"{len(x)} predictions but {len(y)} targets")
    if len(x) < MIN_SAMPLES:
        raise MetricError(f"need at least {MIN_SAMPLES} samples for a correlation, got {len(x)}")
    for name, v in (("predictions", x), ("targets", y)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise MetricError(f"{bad.size} of the {name} are NaN or infinite (first at {bad[0]})")
        if np.ptp(v) == 0:
            raise MetricError(f"all {name} are equal ({v[0]:g}): correlation is undefined")
    return x, y


def _as_vector(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, on any device
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.squeeze()
        if arr.ndim != 1:
            raise MetricError(f"{name} must be one-dimensional, got shape {np.shape(values)}")
    return arr


def _mapped(x: np.ndarray, y: np.ndarray, fit: str) -> np.ndarray:
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; allowed: {', '.join(FITS)}")
    if fit == "none":
        return x
    mapped = logistic4(x, *_fit(x, y))
    if np.ptp(mapped) == 0:
        raise MetricError("the logistic fit maps every prediction to one value")
    return mapped


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    init = [y.max(), y.min(), x.mean(), x.std()]
    try:
        with warnings.catch_warnings():
            # A covariance that cannot be estimated is irrelevant here: only the curve is used.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic4, x, y, p0=init, maxfev=_MAXFEV)
    except (RuntimeError, ValueError, FloatingPointError) as err:
        raise MetricError(f"the 4-parameter logistic fit did not converge: {err}") from None
    if not np.all(np.isfinite(params)) or params[3] == 0:
        raise MetricError(f"the 4-parameter logistic fit is degenerate: {params.tolist()}")
    return params
