"""Losses against NumPy float64 references and finite differences (torch-free)."""
import warnings

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from tests.conftest import tol


@pytest.fixture(autouse=True)
def _use_backend(backend):
    fr.set_backend(backend)


def ce_ref(z, t, eps=0.0, w=None):
    z = np.asarray(z, np.float64)
    N, C = z.shape
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.ones(C) if w is None else w
    per = -(1 - eps) * w[t] * logp[np.arange(N), t] - eps / C * (w * logp).sum(1)
    return per.sum() / w[t].sum()


def fd_grad(f, z, h=1e-6):
    g = np.zeros_like(z, dtype=np.float64)
    for idx in np.ndindex(z.shape):
        old = z[idx]
        z[idx] = old + h
        lp = f(z)
        z[idx] = old - h
        lm = f(z)
        z[idx] = old
        g[idx] = (lp - lm) / (2 * h)
    return g


@pytest.mark.parametrize("N,C", [(1, 2), (7, 3), (33, 10)])
@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_cross_entropy_value_and_gradient(dtype, rng, N, C, eps):
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    t = rng.integers(0, C, N)
    loss = nn.CrossEntropyLoss(label_smoothing=eps)
    rt, at = tol(dtype, f32=1e-5, f64=1e-12)
    assert loss(z, t) == pytest.approx(ce_ref(z, t, eps), rel=rt, abs=at)
    g = loss.backward()
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(g, fd_grad(lambda a: ce_ref(a, t, eps), z64), rtol=1e-4,
                               atol=1e-6 if dtype == np.float32 else 1e-9)


def test_weighted_cross_entropy_gradient_matches_finite_differences(rng):
    z = rng.standard_normal((9, 4))
    t = rng.integers(0, 4, 9)
    w = rng.uniform(0.1, 3, 4)
    loss = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    assert loss(z, t) == pytest.approx(ce_ref(z, t, 0.1, w), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), fd_grad(lambda a: ce_ref(a, t, 0.1, w), z.copy()),
                               rtol=1e-5, atol=1e-9)


def test_mse_and_bce_gradients_match_finite_differences(rng):
    x = rng.standard_normal((7, 3))
    y = rng.uniform(0, 1, (7, 3))
    mse = nn.MSELoss()
    assert mse(x, y) == pytest.approx(((x - y) ** 2).mean(), rel=1e-12)
    np.testing.assert_allclose(mse.backward(), fd_grad(lambda a: ((a - y) ** 2).mean(), x.copy()),
                               rtol=1e-6, atol=1e-9)

    def bce(a):
        s = 1 / (1 + np.exp(-a))
        return -(2.0 * y * np.log(s) + (1 - y) * np.log(1 - s)).mean()
    b = nn.BCEWithLogitsLoss(pos_weight=2.0)
    assert b(x, y) == pytest.approx(bce(x), rel=1e-12)
    np.testing.assert_allclose(b.backward(), fd_grad(bce, x.copy()), rtol=1e-6, atol=1e-9)


def test_bce_with_logits_is_stable_for_large_logits():
    b = nn.BCEWithLogitsLoss()
    v = b(np.array([1000.0, -1000.0], np.float32), np.array([0.0, 1.0]))
    assert v == pytest.approx(1000.0)
    assert np.all(np.isfinite(b.backward()))


def test_loss_returns_float_and_backward_before_call_errors():
    loss = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="before forward"):
        loss.backward()
    v = loss(np.zeros((2, 3), np.float32), np.array([0, 2]))
    assert type(v) is float and v == pytest.approx(np.log(3), rel=1e-6)


def test_bad_targets_are_clear_errors():
    loss = nn.CrossEntropyLoss()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="out of bounds"):
        loss(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="shape"):
        loss(z, np.array([0, 1]))
    with pytest.raises(ValueError, match="probability target must have the input's shape"):
        loss(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices or float"):
        loss(z, np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="dtype"):
        loss(z.astype(np.int32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="elementwise")
    with pytest.raises(ValueError, match="does not broadcast"), pytest.warns(UserWarning):
        nn.MSELoss()(np.zeros((2, 3)), np.zeros(2))


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["ce", "mse", "bce"]), n=st.integers(0, 6), c=st.integers(1, 5),
       xdt=st.sampled_from([np.float32, np.float64, np.int64]),
       tdt=st.sampled_from([np.int64, np.int32, np.float32, np.float64]),
       tshape=st.sampled_from(["match", "rows", "wrong"]))
def test_random_loss_inputs_give_answer_or_clean_error(kind, n, c, xdt, tdt, tshape):
    loss = {"ce": nn.CrossEntropyLoss, "mse": nn.MSELoss, "bce": nn.BCEWithLogitsLoss}[kind]()
    x = np.linspace(-2, 2, n * c).reshape(n, c).astype(xdt)
    shape = {"match": (n, c), "rows": (n,), "wrong": (n + 1,)}[tshape]
    t = (np.arange(int(np.prod(shape))).reshape(shape) % c).astype(tdt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # MSELoss broadcasting, as torch
            v = loss(x, t)
    except (TypeError, ValueError):
        return
    assert isinstance(v, float) and np.isfinite(v)
    if kind == "ce" and t.dtype.kind == "i":
        assert v == pytest.approx(ce_ref(x, t.astype(int)), rel=1e-4)
    g = loss.backward()
    assert g.shape == x.shape and np.all(np.isfinite(g))
    if kind == "ce" and t.dtype.kind == "f":          # probability targets: -sum t log p / N
        z = x.astype(np.float64)
        logp = z - z.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        assert v == pytest.approx(-(t * logp).sum() / n, rel=1e-4)
