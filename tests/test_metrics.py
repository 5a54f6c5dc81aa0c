"""Metrics against scipy, the VQEG logistic fit, and every degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from nriqa.errors import MetricError
from nriqa.metrics import evaluate, fit_logistic, krcc, logistic4, plcc, rmse, srcc

RNG = np.random.default_rng(0)
X = RNG.normal(size=200)
Y = 0.7 * X + RNG.normal(scale=0.5, size=200)


@pytest.mark.parametrize(
    ("pred", "target"),
    [
        (X, Y),
        (np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])),  # n = 3
        (np.arange(10.0), np.arange(10.0)[::-1]),  # reversed order: -1
        (np.array([1, 1, 2, 2, 3, 3.0]), np.array([1, 2, 2, 3, 3, 3.0])),  # ties in both
        (np.round(X, 0), np.round(Y, 0)),  # heavy ties
    ],
)
def test_against_scipy(pred, target):
    assert srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0])
    assert plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0])
    assert krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target)[0])
    assert rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))


def test_sign_is_reported_raw():
    assert srcc(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1)
    assert plcc(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1)
    assert krcc(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1)


def test_accepts_lists_and_tensors():
    assert srcc([1, 2, 3, 4], torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert plcc(torch.arange(5.0).reshape(5, 1), np.arange(5.0)) == pytest.approx(1)


def test_logistic4_shape():
    assert logistic4(0.0, 5, 1, 0, 2) == pytest.approx(3)
    assert logistic4(100.0, 5, 1, 0, 2) == pytest.approx(5)
    assert logistic4(-100.0, 5, 1, 0, -2) == pytest.approx(1)  # |b4|: the sign is irrelevant
    assert np.isfinite(logistic4(np.array([-1e6, 1e6]), 5, 1, 0, 1e-3)).all()  # no overflow


TRUE = (80.0, 10.0, 0.4, 0.15)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_fit_recovers_known_parameters(noise):
    x = np.linspace(-0.2, 1.0, 300)
    y = logistic4(x, *TRUE) + np.random.default_rng(1).normal(scale=noise, size=x.size)
    b1, b2, b3, b4 = fit_logistic(x, y)
    tol = 1e-4 if noise == 0 else 0.02
    assert b1 == pytest.approx(TRUE[0], rel=tol)
    assert b2 == pytest.approx(TRUE[1], rel=tol)
    assert b3 == pytest.approx(TRUE[2], rel=tol)
    assert abs(b4) == pytest.approx(TRUE[3], rel=tol * 5)
    if noise == 0:
        assert plcc(x, y, fit="logistic") == pytest.approx(1, abs=1e-9)
        assert rmse(x, y, fit="logistic") == pytest.approx(0, abs=1e-6)


def test_logistic_fit_improves_plcc_on_a_nonlinear_relation():
    x = np.linspace(0, 1, 100)
    y = logistic4(x, 5, 1, 0.6, 0.05) + np.random.default_rng(2).normal(scale=0.05, size=100)
    assert plcc(x, y, fit="logistic") > plcc(x, y) + 0.05
    assert rmse(x, y, fit="logistic") < 0.1


def test_evaluate_names_the_fit():
    plain = evaluate(X, Y)
    assert set(plain) == {"srcc", "plcc", "krcc", "rmse", "n"}
    assert plain["n"] == 200 and plain["plcc"] == pytest.approx(plcc(X, Y))
    fitted = evaluate(X, Y, fit="logistic")
    assert set(fitted) == {"srcc", "plcc_logistic", "krcc", "rmse_logistic", "n"}
    assert fitted["plcc_logistic"] == pytest.approx(plcc(X, Y, fit="logistic"))
    assert fitted["rmse_logistic"] == pytest.approx(rmse(X, Y, fit="logistic"))
    assert fitted["srcc"] == plain["srcc"]
    with pytest.raises(ValueError, match="allowed: none, logistic"):
        evaluate(X, Y, fit="cubic")


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "3 predictions but 2 targets"),
        ([1.0, 2.0], [2.0, 1.0], "at least 3 samples"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "predictions are NaN or infinite"),
        ([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], "targets are NaN or infinite"),
        ([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0], "all predictions are equal"),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "all targets are equal"),
        ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], "one-dimensional"),
    ],
)
@pytest.mark.parametrize("metric", [srcc, plcc, krcc, rmse, evaluate, fit_logistic])
def test_degenerate_inputs_raise(metric, pred, target, message):
    with pytest.raises(MetricError, match=message):
        metric(pred, target)


def test_fit_failure_is_a_metric_error(monkeypatch):
    import nriqa.metrics as metrics

    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(metrics.optimize, "curve_fit", no_convergence)
    with pytest.raises(MetricError, match="did not converge"):
        fit_logistic(X, Y)
    with pytest.raises(MetricError, match="did not converge"):
        evaluate(X, Y, fit="logistic")
