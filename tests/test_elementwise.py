"""Activations and fused softmax-cross-entropy against NumPy float64 references, on every backend."""
import numpy as np
import pytest
import reference as ref
from conftest import AWKWARD_SIZES, tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastreg._kernels import _dispatch
from fastreg._kernels import elementwise as E
from fastreg._kernels.common import codes as _codes

ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


# --- float64 references (tests/reference.py) ------------------------------------------------

act_ref = ref.act
act_grad_ref = ref.act_grad          # from the INPUT (the kernel uses the output)


def xent_ref(logits, target, eps):
    """(mean loss, probs, dlogits for mean reduction) in float64."""
    loss, probs = ref.softmax_cross_entropy_forward(logits, target, eps)
    return loss, probs, ref.softmax_cross_entropy_backward(probs, target, eps)


def away_from_kinks(rng, shape, dtype):
    """Normal samples with |x| >= 0.05 so finite differences never straddle relu's kink."""
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 0.05, 0.05 * np.sign(x) + 0.05 * (x == 0), x)
    return x.astype(dtype)


# --- activations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("n", AWKWARD_SIZES + (40_000,))
def test_activation_forward_matches_reference(backend, dtype, rng, name, n):
    x = (3 * rng.standard_normal(n)).astype(dtype)
    out = np.full_like(x, np.nan)
    E.activation_forward(x, out, name, slope=0.07, backend=backend)
    rtol, atol = tol(dtype, f32=2e-6, f64=1e-14)
    np.testing.assert_allclose(out, act_ref(x, name, 0.07), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("n", AWKWARD_SIZES + (40_000,))
def test_activation_backward_from_output_matches_input_derivative(backend, dtype, rng, name, n):
    x = away_from_kinks(rng, n, dtype)
    y = np.empty_like(x)
    E.activation_forward(x, y, name, slope=0.2, backend=backend)
    dy = rng.standard_normal(n).astype(dtype)
    dx = np.full_like(x, np.nan)
    E.activation_backward(dy, y, dx, name, slope=0.2, backend=backend)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    np.testing.assert_allclose(dx, dy * act_grad_ref(x, name, 0.2), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ACTS)
def test_activation_gradient_matches_finite_differences(backend, rng, name):
    x = away_from_kinks(rng, (7, 33), np.float64)
    w = rng.standard_normal(x.shape)             # loss = sum(w * act(x))
    y = np.empty_like(x)
    E.activation_forward(x, y, name, slope=0.3, backend=backend)
    dx = np.empty_like(x)
    E.activation_backward(w, y, dx, name, slope=0.3, backend=backend)
    h = 1e-6
    yp, ym = np.empty_like(x), np.empty_like(x)
    E.activation_forward(x + h, yp, name, slope=0.3, backend=backend)
    E.activation_forward(x - h, ym, name, slope=0.3, backend=backend)
    np.testing.assert_allclose(dx, w * (yp - ym) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ACTS)
def test_activations_work_in_place_on_2d_arrays(backend, dtype, rng, name):
    x = rng.standard_normal((33, 7)).astype(dtype)
    ref = act_ref(x, name)
    E.activation_forward(x, x, name, backend=backend)
    rtol, atol = tol(dtype, f32=2e-6, f64=1e-14)
    np.testing.assert_allclose(x, ref, rtol=rtol, atol=atol)
    dy = np.ones_like(x)
    E.activation_backward(dy, x, dy, name, backend=backend)
    assert np.all(np.isfinite(dy))


def test_activation_codes_and_names_are_interchangeable(backend, rng):
    x = rng.standard_normal(50)
    for name, code in _codes.ACTIVATIONS.items():
        a, b = np.empty_like(x), np.empty_like(x)
        E.activation_forward(x, a, name, backend=backend)
        E.activation_forward(x, b, code, backend=backend)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_activations_are_finite_for_huge_inputs(backend, dtype, name):
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], dtype=dtype)
    y = np.empty_like(x)
    E.activation_forward(x, y, name, backend=backend)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, act_ref(x, name), rtol=1e-6, atol=1e-30)
    dx = np.empty_like(x)
    E.activation_backward(np.ones_like(x), y, dx, name, backend=backend)
    assert np.all(np.isfinite(dx)) and np.all(dx >= 0)


def test_activations_match_torch(backend, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal(1000).astype(dtype)
    t = torch.from_numpy(x.copy())
    refs = {"relu": torch.relu(t), "leaky_relu": F.leaky_relu(t, 0.05),
            "sigmoid": torch.sigmoid(t), "tanh": torch.tanh(t)}
    rtol, atol = tol(dtype, f32=2e-6, f64=1e-14)
    for name, want in refs.items():
        out = np.empty_like(x)
        E.activation_forward(x, out, name, slope=0.05, backend=backend)
        np.testing.assert_allclose(out, want.numpy(), rtol=rtol, atol=atol)


def test_leaky_relu_backward_needs_positive_slope(backend):
    y = np.ones(4)
    with pytest.raises(ValueError, match="slope must be > 0.*got -0.1"):
        E.activation_backward(y, y, np.empty_like(y), "leaky_relu", slope=-0.1, backend=backend)
    with pytest.raises(ValueError, match="slope must be > 0"):
        E.activation_backward(y, y, np.empty_like(y), "leaky_relu", slope=0.0, backend=backend)
    out = np.empty(3)
    E.activation_forward(np.array([-2.0, 0.0, 3.0]), out, "leaky_relu", slope=-0.5,
                         backend=backend)
    np.testing.assert_array_equal(out, [1.0, 0.0, 3.0])     # forward accepts any slope


@pytest.fixture
def no_kernel(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a kernel was reached with bad input")
    monkeypatch.setattr(_dispatch, "kernel", fail)


def test_activation_rejects_bad_arguments_naming_them(no_kernel):
    x = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        E.activation_forward(x, np.empty_like(x), "gelu")
    with pytest.raises(ValueError, match="activation code must be one of"):
        E.activation_forward(x, np.empty_like(x), 17)
    with pytest.raises(TypeError, match="activation must be a name or an integer code"):
        E.activation_forward(x, np.empty_like(x), True)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        E.activation_forward(x.astype(np.int32), np.empty_like(x), "relu")
    with pytest.raises(TypeError, match="out must have dtype float32"):
        E.activation_forward(x, np.empty(6), "relu")
    with pytest.raises(ValueError, match="out must have shape"):
        E.activation_forward(x, np.empty(7, np.float32), "relu")
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        E.activation_forward(np.ones(12, np.float32)[::2], np.empty_like(x), "relu")
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        E.activation_forward(x, ro, "relu")
    with pytest.raises(ValueError, match="dx is read-only"):
        E.activation_backward(x, x, ro, "relu")
    with pytest.raises(ValueError, match="y must have shape"):
        E.activation_backward(x, np.ones(5, np.float32), np.empty_like(x), "relu")
    with pytest.raises(TypeError, match="y must have dtype float32"):
        E.activation_backward(x, np.ones(6), np.empty_like(x), "relu")
    with pytest.raises(ValueError, match="slope must be finite"):
        E.activation_forward(x, np.empty_like(x), "leaky_relu", slope=float("nan"))
    buf = np.ones(12, np.float32)
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        E.activation_forward(buf[:6], buf[3:9], "relu")


# --- softmax + cross-entropy -----------------------------------------------------------------------

SHAPES = [(1, 1), (1, 5), (2, 3), (7, 10), (33, 2), (257, 33), (64, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_softmax_xent_matches_reference(backend, dtype, rng, shape, eps):
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], shape[0])
    probs = np.full_like(logits, np.nan)
    loss = E.softmax_cross_entropy_forward(logits, target, probs, eps, backend=backend)
    dl = np.full_like(logits, np.nan)
    E.softmax_cross_entropy_backward(probs, target, dl, eps, backend=backend)
    ref_loss, ref_probs, ref_grad = xent_ref(logits, target, eps)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=rtol, abs=atol)
    np.testing.assert_allclose(probs, ref_probs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dl, ref_grad, rtol=rtol, atol=atol / shape[0])


def test_softmax_xent_gradient_matches_finite_differences(backend, rng):
    logits = rng.standard_normal((5, 7))
    target = rng.integers(0, 7, 5)
    probs = np.empty_like(logits)
    eps = 0.2
    E.softmax_cross_entropy_forward(logits, target, probs, eps, backend=backend)
    grad = np.empty_like(logits)
    E.softmax_cross_entropy_backward(probs, target, grad, eps, backend=backend)
    h = 1e-6
    fd = np.empty_like(logits)
    scratch = np.empty_like(logits)
    for idx in np.ndindex(logits.shape):
        lp, lm = logits.copy(), logits.copy()
        lp[idx] += h
        lm[idx] -= h
        fd[idx] = (E.softmax_cross_entropy_forward(lp, target, scratch, eps, backend=backend)
                   - E.softmax_cross_entropy_forward(lm, target, scratch, eps, backend=backend)
                   ) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_softmax_xent_matches_torch_loss_and_grad(backend, dtype, rng, eps):
    torch = pytest.importorskip("torch")
    logits = (3 * rng.standard_normal((33, 10))).astype(dtype)
    target = rng.integers(0, 10, 33)
    t = torch.from_numpy(logits.copy()).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(t, torch.from_numpy(target), label_smoothing=eps)
    ref.backward()
    probs = np.empty_like(logits)
    loss = E.softmax_cross_entropy_forward(logits, target, probs, eps, backend=backend)
    dl = np.empty_like(logits)
    E.softmax_cross_entropy_backward(probs, target, dl, eps, backend=backend)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    assert loss == pytest.approx(ref.item(), rel=rtol, abs=atol)
    np.testing.assert_allclose(dl, t.grad.numpy(), rtol=rtol, atol=atol)


def test_softmax_xent_is_stable_for_huge_logits(backend, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4 - 50, -1e4]],
                      dtype=dtype)
    target = np.array([1, 0, 2])
    probs = np.empty_like(logits)
    loss = E.softmax_cross_entropy_forward(logits, target, probs, 0.1, backend=backend)
    ref_loss, ref_probs, _ = xent_ref(logits, target, 0.1)
    assert np.isfinite(loss) and np.all(np.isfinite(probs))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("C", [16, 17, 33, 1000])
def test_softmax_xent_row_max_in_every_lane_and_block(backend, dtype, C):
    """The row maximum (the shift that keeps exp finite) found wherever it sits: each row has
    one logit far above the rest (past exp's overflow: 100 for float32, 800 for float64), at
    another column -- every lane of the first 16-lane blocks, the last block, the tail -- the
    rest near -1e4; a wrong maximum overflows exp. A NaN anywhere in a row makes that row NaN and
    leaves the others' bits alone."""
    cols = sorted({*range(min(C, 40)), *(c for c in (C - 17, C - 16, C - 2, C - 1) if c >= 0)})
    N = len(cols)
    base = (-1e4 + 50.0 * np.arange(C) / C).astype(dtype)
    logits = np.tile(base, (N, 1))
    logits[np.arange(N), cols] = base.max() + (100.0 if dtype == np.float32 else 800.0)
    target = np.array([(c + 3) % C for c in cols])
    probs = np.empty_like(logits)
    loss = E.softmax_cross_entropy_forward(logits, target, probs, 0.1, backend=backend)
    ref_loss, ref_probs, _ = xent_ref(logits, target, 0.1)
    assert np.isfinite(loss) and np.isfinite(probs).all()
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-30)
    bad = logits.copy()
    bad[0, 0] = bad[1, C // 2] = bad[2, C - 1] = np.nan   # first lane, a middle block, the end
    E.softmax_cross_entropy_forward(bad, target, probs, 0.0, backend=backend)
    assert np.isnan(probs[:3]).all()
    clean = np.empty_like(probs[3:])
    E.softmax_cross_entropy_forward(logits[3:], target[3:], clean, 0.0, backend=backend)
    np.testing.assert_array_equal(probs[3:], clean)


def test_softmax_xent_in_place_and_grad_scale(backend, dtype, rng):
    logits = rng.standard_normal((7, 33)).astype(dtype)
    target = rng.integers(0, 33, 7)
    ref_loss, ref_probs, ref_grad = xent_ref(logits, target, 0.05)
    buf = logits.copy()
    loss = E.softmax_cross_entropy_forward(buf, target, buf, 0.05, backend=backend)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    np.testing.assert_allclose(buf, ref_probs, rtol=rtol, atol=atol)
    E.softmax_cross_entropy_backward(buf, target, buf, 0.05, grad_scale=2.5, backend=backend)
    np.testing.assert_allclose(buf, ref_grad * 7 * 2.5, rtol=rtol, atol=atol)


def test_softmax_xent_rejects_bad_arguments_naming_them(no_kernel):
    logits = np.zeros((4, 3), np.float32)
    probs = np.empty_like(logits)
    good = np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got 3"):
        E.softmax_cross_entropy_forward(logits, np.array([0, 3, 1, 2]), probs)
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got -1"):
        E.softmax_cross_entropy_backward(probs, np.array([0, -1, 1, 2]), probs)
    with pytest.raises(TypeError, match="target must have dtype int64"):
        E.softmax_cross_entropy_forward(logits, good.astype(np.int32), probs)
    with pytest.raises(ValueError, match="target must have shape"):
        E.softmax_cross_entropy_forward(logits, good[:3], probs)
    with pytest.raises(ValueError, match="logits must be 2-dimensional"):
        E.softmax_cross_entropy_forward(logits.ravel(), good, probs)
    with pytest.raises(ValueError, match="logits must have at least one row"):
        E.softmax_cross_entropy_forward(np.zeros((0, 3)), good[:0], np.zeros((0, 3)))
    with pytest.raises(TypeError, match="probs must have dtype float32"):
        E.softmax_cross_entropy_forward(logits, good, probs.astype(np.float64))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\]"):
        E.softmax_cross_entropy_forward(logits, good, probs, label_smoothing=1.5)
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        E.softmax_cross_entropy_backward(probs, good, probs, grad_scale=float("inf"))
    ro = np.empty_like(logits)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dlogits is read-only"):
        E.softmax_cross_entropy_backward(probs, good, ro)
    with pytest.raises(ValueError, match="logits must be C-contiguous"):
        E.softmax_cross_entropy_forward(np.zeros((3, 4), np.float32).T, good, probs)


# --- hypothesis ------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), c=st.integers(0, 12),
       dtype=st.sampled_from(["float32", "float64", "int64"]),
       tdtype=st.sampled_from(["int64", "int64", "int32"]), tshift=st.sampled_from([0, 0, 0, 1]),
       eps=st.sampled_from([0.0, 0.3, 1.0, -0.1, 2.0]),
       backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_softmax_xent_is_correct_or_raises_cleanly(n, c, dtype, tdtype, tshift, eps,
                                                              backend):
    rng = np.random.default_rng(n * 100 + c)
    logits = rng.standard_normal((n, c)).astype(dtype)
    target = (rng.integers(0, max(c, 1), n) + tshift * c).astype(tdtype)
    probs = np.empty_like(logits)
    try:
        loss = E.softmax_cross_entropy_forward(logits, target, probs, eps, backend=backend)
        dl = np.empty_like(logits)
        E.softmax_cross_entropy_backward(probs, target, dl, eps, backend=backend)
    except (TypeError, ValueError):
        valid = (dtype != "int64" and tdtype == "int64" and n > 0 and c > 0 and tshift == 0
                 and 0 <= eps <= 1)
        assert not valid
        return
    ref_loss, _, ref_grad = xent_ref(logits, target, eps)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(dl, ref_grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3),
       dtype=st.sampled_from(["float32", "float64", "float16"]),
       act=st.sampled_from([*ACTS, "softplus", 0, 4, 9]),
       slope=st.sampled_from([0.01, 0.5, 0.0, -1.0]),
       out_shape_ok=st.booleans(), backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_activations_are_correct_or_raise_cleanly(shape, dtype, act, slope,
                                                             out_shape_ok, backend):
    x = np.linspace(-3, 3, int(np.prod(shape))).reshape(shape).astype(dtype)
    out = np.empty(shape if out_shape_ok else (*shape, 2), dtype=dtype)
    try:
        E.activation_forward(x, out, act, slope, backend=backend)
        dx = np.empty_like(out)
        E.activation_backward(out, out, dx, act, slope, backend=backend)
    except (TypeError, ValueError):
        name = act if isinstance(act, str) else {v: k for k, v in _codes.ACTIVATIONS.items()
                                                 }.get(act)
        valid = (dtype != "float16" and out_shape_ok and name in ACTS
                 and not (name == "leaky_relu" and slope <= 0))
        assert not valid
        return
    name = act if isinstance(act, str) else {v: k for k, v in _codes.ACTIVATIONS.items()}[act]
    np.testing.assert_allclose(out, act_ref(x, name, slope), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_activations_accurate_over_whole_range_with_nan_passthrough(backend, dtype,
                                                                              name):
    # covers exp's overflow, subnormal and tiny-argument regimes and the tanh formula switch
    x = np.concatenate([np.linspace(-120, 120, 4801), np.geomspace(1e-30, 0.5, 200),
                        -np.geomspace(1e-30, 0.5, 200), [0.0, -0.0, np.nan]]).astype(dtype)
    y = np.empty_like(x)
    E.activation_forward(x, y, name, backend=backend)
    rtol, atol = (2e-6, 1e-37) if dtype == np.float32 else (1e-14, 1e-300)
    np.testing.assert_allclose(y[:-1], act_ref(x[:-1], name), rtol=rtol, atol=atol)
    assert np.isnan(y[-1])
