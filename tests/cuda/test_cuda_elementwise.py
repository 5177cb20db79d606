"""CUDA elementwise kernels (numba's simulator without a GPU) against the float64 references of
tests/reference.py and against the CPU backend on the same inputs; the device utilities (fill,
scale, add_, subtract, reductions, loss helpers) on host and device.

Small sizes (n = 1, 2, 7, 33; up to 33 rows or columns) of every kernel and utility, with every
activation, smoothing and optional argument, run in tests/test_kernels_reference.py. Here: sizes
beyond one block and the simulator's grid (grid-stride loops), rows wider than a warp or a block,
in-place use, non-finite inputs and argument errors."""
import numpy as np
import pytest
import reference as ref
from conftest import tol

from fastreg._kernels import elementwise as E
from fastreg._kernels import placement

SIZES = (300,)                   # 300 > one block (and > the simulator's whole grid of threads)
ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


# --- float64 references (tests/reference.py) and helpers -------------------------------------

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



def host(a):
    return a.copy_to_host()


def close(a, b, dtype, f32=1e-5, f64=1e-12):
    rtol, atol = tol(dtype, f32=f32, f64=f64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# --- activations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_activations_match_reference_and_cpu(dev, dtype, rng, n):
    x = away_from_kinks(rng, n, dtype) * dtype.type(3)
    dy = rng.standard_normal(n).astype(dtype)
    for name in ACTS:
        out = dev(np.full_like(x, np.nan))
        assert E.activation_forward(dev(x), out, name, slope=0.2) is out
        y = host(out)
        cpu = np.empty_like(x)
        E.activation_forward(x, cpu, name, slope=0.2, backend="numba")
        close(y, act_ref(x, name, 0.2), dtype, f32=2e-6, f64=1e-14)
        close(y, cpu, dtype, f32=2e-6, f64=1e-14)
        dx = dev(np.full_like(x, np.nan))
        E.activation_backward(dev(dy), out, dx, name, slope=0.2)
        cpu_dx = np.empty_like(x)
        E.activation_backward(dy, cpu, cpu_dx, name, slope=0.2, backend="numba")
        close(host(dx), dy * act_grad_ref(x, name, 0.2), dtype)
        close(host(dx), cpu_dx, dtype, f32=2e-6, f64=1e-14)


def test_activations_in_place_on_2d_device_arrays(dev, dtype, rng):
    x = rng.standard_normal((33, 7)).astype(dtype)
    for name in ACTS:
        d = dev(x)
        E.activation_forward(d, d, name)
        close(host(d), act_ref(x, name), dtype, f32=2e-6, f64=1e-14)
        g = dev(np.ones_like(x))
        E.activation_backward(g, d, g, name)
        cpu_y, cpu_g = np.empty_like(x), np.ones_like(x)
        E.activation_forward(x, cpu_y, name, backend="numba")
        E.activation_backward(cpu_g, cpu_y, cpu_g, name, backend="numba")
        close(host(g), cpu_g, dtype, f32=2e-6, f64=1e-14)


def test_activations_nan_inf_and_huge_inputs_like_cpu(dev, dtype):
    x = np.array([np.nan, -np.inf, np.inf, -1e4, -100.0, -0.0, 0.0, 30.0, 1e4], dtype=dtype)
    for name in ACTS:
        out = dev(np.zeros_like(x))
        E.activation_forward(dev(x), out, name, slope=0.5)
        cpu = np.empty_like(x)
        E.activation_forward(x, cpu, name, slope=0.5, backend="numba")
        y = host(out)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(cpu))
        np.testing.assert_allclose(y, cpu, rtol=1e-6, atol=1e-30)      # subnormal tails differ
        with np.errstate(invalid="ignore", over="ignore"):
            np.testing.assert_allclose(y[1:], act_ref(x[1:], name, 0.5), rtol=1e-6, atol=1e-30)
        assert np.isnan(y[0])


# --- softmax + cross-entropy -----------------------------------------------------------------------

XENT_CASES = [((3, 33), 0.0), ((2, 300), 0.2)]        # rows wider than a warp / a block


@pytest.mark.parametrize("shape,eps", XENT_CASES)
def test_softmax_xent_matches_reference_and_cpu(dev, dtype, rng, shape, eps):
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], shape[0])
    probs = dev(np.full_like(logits, np.nan))
    loss = E.softmax_cross_entropy_forward(dev(logits), dev(target), probs, eps)
    dl = dev(np.full_like(logits, np.nan))
    E.softmax_cross_entropy_backward(probs, dev(target), dl, eps)
    ref_loss, ref_probs, ref_grad = xent_ref(logits, target, eps)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=rtol, abs=atol)
    np.testing.assert_allclose(host(probs), ref_probs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(dl), ref_grad, rtol=rtol, atol=atol / shape[0])
    cpu_p, cpu_g = np.empty_like(logits), np.empty_like(logits)
    cpu_loss = E.softmax_cross_entropy_forward(logits, target, cpu_p, eps, backend="numba")
    E.softmax_cross_entropy_backward(cpu_p, target, cpu_g, eps, backend="numba")
    assert loss == pytest.approx(cpu_loss, rel=rtol, abs=atol)
    np.testing.assert_allclose(host(probs), cpu_p, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(dl), cpu_g, rtol=rtol, atol=atol / shape[0])


def test_softmax_xent_in_place_grad_scale_and_huge_logits(dev, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4 - 50, -1e4]], dtype=dtype)
    target = np.array([1, 0, 2])
    buf = dev(logits)
    loss = E.softmax_cross_entropy_forward(buf, dev(target), buf, 0.1)
    ref_loss, ref_probs, ref_grad = xent_ref(logits, target, 0.1)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(host(buf), ref_probs, rtol=1e-6, atol=1e-30)
    E.softmax_cross_entropy_backward(buf, dev(target), buf, 0.1, grad_scale=2.5)
    np.testing.assert_allclose(host(buf), ref_grad * 3 * 2.5, rtol=1e-5, atol=1e-6)


def test_softmax_xent_nan_and_inf_rows_like_cpu(dev, dtype):
    logits = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf] * 3, [0.0, -np.inf, 2.0]],
                      dtype=dtype)
    target = np.array([0, 1, 2, 2])
    probs = dev(np.zeros_like(logits))
    loss = E.softmax_cross_entropy_forward(dev(logits), dev(target), probs)
    cpu_p = np.empty_like(logits)
    E.softmax_cross_entropy_forward(logits, target, cpu_p, backend="numba")
    np.testing.assert_allclose(host(probs), cpu_p, rtol=1e-6, atol=0)   # NaN where the CPU has
    assert np.all(np.isnan(host(probs)[:3])) and np.isfinite(host(probs)[3]).all()
    assert np.isnan(loss)


def test_softmax_xent_out_of_range_target_on_device(dev):
    logits = dev(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got 3"):
        E.softmax_cross_entropy_forward(logits, dev(np.array([0, 3, 1, 2])), dev(np.zeros((4, 3))))
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got -1"):
        E.softmax_xent_weighted_forward(logits, dev(np.array([0, 1, -1, 2])),
                                        dev(np.ones(3)), dev(np.zeros((4, 3))))
    p = dev(np.full((4, 3), 1 / 3))
    g = dev(np.zeros((4, 3)))
    E.softmax_cross_entropy_backward(p, dev(np.array([0, 5, 1, 2])), g)
    gh = host(g)
    assert np.isnan(gh[1]).all() and np.isfinite(np.delete(gh, 1, axis=0)).all()
    E.softmax_xent_weighted_backward(p, dev(np.array([0, 1, 2, -4])), dev(np.ones(3)), g, 0.1,
                                     1.0)
    gh = host(g)
    assert np.isnan(gh[3]).all() and np.isfinite(gh[:3]).all()


WXENT_CASES = [((3, 33), 1.0), ((2, 300), 0.3)]       # rows wider than a warp / a block


@pytest.mark.parametrize("shape,eps", WXENT_CASES)
def test_weighted_softmax_xent_host_and_device_match_reference(dev, dtype, rng, shape, eps):
    n, c = shape
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, c, n)
    w = rng.uniform(0.1, 2.0, c)
    ref_total, ref_denom, p = ref.softmax_xent_weighted_forward(logits, target, w, eps)
    ref_g = ref.softmax_xent_weighted_backward(p, target, w, eps, 1.0)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    hp, hg = np.empty_like(logits), np.empty_like(logits)
    dp, dg = dev(np.full_like(logits, np.nan)), dev(np.full_like(logits, np.nan))
    for probs, grad, args in ((hp, hg, (logits, target, w)),
                              (dp, dg, (dev(logits), dev(target), dev(w)))):
        total, denom = E.softmax_xent_weighted_forward(*args, probs, eps)
        assert isinstance(total, float) and isinstance(denom, float)
        assert total == pytest.approx(ref_total, rel=rtol, abs=atol)
        assert denom == pytest.approx(ref_denom, rel=1e-12)
        E.softmax_xent_weighted_backward(probs, args[1], args[2], grad, eps, 0.5)
        got_p = probs if isinstance(probs, np.ndarray) else host(probs)
        got_g = grad if isinstance(grad, np.ndarray) else host(grad)
        np.testing.assert_allclose(got_p, p, rtol=rtol, atol=atol)
        np.testing.assert_allclose(got_g, 0.5 * ref_g, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(dp), hp, rtol=rtol, atol=atol)
    np.testing.assert_allclose(host(dg), hg, rtol=rtol, atol=atol)


def test_weighted_softmax_xent_in_place_on_device(dev, rng):
    logits = rng.standard_normal((5, 6))
    target = rng.integers(0, 6, 5)
    w = rng.uniform(0.5, 1.5, 6)
    ref_p, ref_g = np.empty_like(logits), np.empty_like(logits)
    host_out = E.softmax_xent_weighted_forward(logits, target, w, ref_p, 0.2)
    E.softmax_xent_weighted_backward(ref_p, target, w, ref_g, 0.2, 1.0 / host_out[1])
    buf, t, dw = dev(logits), dev(target), dev(w)
    got = E.softmax_xent_weighted_forward(buf, t, dw, buf, 0.2)
    np.testing.assert_allclose(got, host_out, rtol=1e-12)
    np.testing.assert_allclose(host(buf), ref_p, rtol=1e-12, atol=1e-15)
    E.softmax_xent_weighted_backward(buf, t, dw, buf, 0.2, 1.0 / got[1])
    np.testing.assert_allclose(host(buf), ref_g, rtol=1e-12, atol=1e-15)


# --- device utilities ------------------------------------------------------------------------------

def both(dev, *arrays):
    """The same call on host copies and on device copies: [(host arrays), (device arrays)]."""
    return [tuple(a.copy() for a in arrays), tuple(dev(a) for a in arrays)]


def to_np(a):
    return a if isinstance(a, np.ndarray) else host(a)


@pytest.mark.parametrize("n", SIZES)
def test_fill_scale_add_subtract(dev, dtype, rng, n):
    a = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    for x, y in both(dev, a, b):
        assert E.fill(x, -2.5) is x
        np.testing.assert_array_equal(to_np(x), np.full(n, -2.5, dtype))
    for x, y in both(dev, a, b):
        out = E.scale(x, y, 0.3)
        close(to_np(out), 0.3 * a64, dtype, f32=1e-6, f64=1e-15)
        E.scale(x, x, -2.0)                                   # in place
        close(to_np(x), -2.0 * a64, dtype, f32=1e-6, f64=1e-15)
    for x, y in both(dev, a, b):
        E.add_(x, y, alpha=0.5)
        close(to_np(x), a64 + 0.5 * b64, dtype, f32=1e-6, f64=1e-15)
        E.add_(x, y)
        close(to_np(x), a64 + 1.5 * b64, dtype, f32=1e-6, f64=1e-15)
        E.add_(y, y, alpha=1.0)                               # in place: y += y
        close(to_np(y), 2 * b64, dtype, f32=1e-6, f64=1e-15)
    for x, y in both(dev, a, b):
        out = x.copy() if isinstance(x, np.ndarray) else dev(np.zeros_like(a))
        E.subtract(x, y, out)
        close(to_np(out), a64 - b64, dtype, f32=1e-6, f64=1e-15)
        E.subtract(x, y, y)                                   # out is b
        close(to_np(y), a64 - b64, dtype, f32=1e-6, f64=1e-15)


def test_fill_any_shape_and_integer_dtype_and_runtime_zeros(dev):
    a = dev(np.ones((3, 5, 2), np.float32))
    E.fill(a, np.nan)
    assert np.isnan(host(a)).all()
    i = dev(np.zeros(40, np.int64))
    E.fill(i, 7)
    np.testing.assert_array_equal(host(i), 7)
    z = placement.cuda().zeros((33, 3), np.float64)
    assert z.shape == (33, 3)
    np.testing.assert_array_equal(host(z), 0.0)


@pytest.mark.parametrize("n", SIZES)
def test_sum_squares_sum_abs_and_mse(dev, dtype, rng, n):
    a = (3 * rng.standard_normal((n, 2))).astype(dtype)
    t = rng.standard_normal((n, 2)).astype(dtype)
    diff_ref = (a - t).astype(np.float64)                     # the stored diff, in the dtype
    for x, y in both(dev, a, t):
        ss, sa = E.sum_squares(x), E.sum_abs(x)
        assert isinstance(ss, float) and isinstance(sa, float)
        assert ss == pytest.approx(np.sum(a.astype(np.float64) ** 2), rel=1e-12)
        assert sa == pytest.approx(np.sum(np.abs(a.astype(np.float64))), rel=1e-12)
        diff = x.copy() if isinstance(x, np.ndarray) else dev(np.zeros_like(a))
        m = E.mse_forward(x, y, diff)
        np.testing.assert_array_equal(to_np(diff), a - t)
        assert m == pytest.approx(np.sum(diff_ref ** 2), rel=1e-12)
        assert E.mse_forward(x, y, x) == pytest.approx(m, rel=1e-12)     # diff may be x
        np.testing.assert_array_equal(to_np(x), a - t)


def test_device_reductions_are_deterministic_and_empty_is_zero(dev, rng):
    a = dev(rng.standard_normal(300).astype(np.float32))
    assert E.sum_squares(a) == E.sum_squares(a)
    assert E.sum_abs(a) == E.sum_abs(a)
    empty = dev(np.zeros(0))
    assert E.sum_squares(empty) == 0.0 and E.sum_abs(empty) == 0.0


@pytest.mark.parametrize("shape", [(300, 7), (0, 3)])
def test_column_sum(dev, dtype, rng, shape):
    a = rng.standard_normal(shape).astype(dtype)
    start = rng.standard_normal(shape[1]).astype(dtype)
    want = ref.column_sum(a)
    for x, out in both(dev, a, start):
        E.column_sum(x, out, accumulate=True)
        close(to_np(out), start.astype(np.float64) + want, dtype, f32=1e-5, f64=1e-12)
        E.column_sum(x, out)
        close(to_np(out), want, dtype, f32=1e-5, f64=1e-12)
    cpu, gpu = start.copy(), dev(start)
    E.column_sum(a, cpu, accumulate=True)
    E.column_sum(dev(a), gpu, accumulate=True)
    close(host(gpu), cpu, dtype, f32=1e-6, f64=1e-14)


def bce_ref(x, t, pw, w):
    """(total, d total / dx) in float64."""
    return (ref.bce_with_logits_forward(x, t, pw, w),
            ref.bce_with_logits_backward(x, t, pw, w, 1.0))


@pytest.mark.parametrize("n", SIZES)
def test_bce_with_logits(dev, dtype, rng, n):
    x = (4 * rng.standard_normal((n, 3))).astype(dtype)
    t = rng.uniform(0, 1, (n, 3)).astype(dtype)
    options = [(None, None), (rng.uniform(0.5, 3, 3), None),
               (None, rng.uniform(0, 2, (n, 3))), (rng.uniform(0.5, 3, 3), rng.uniform(0, 2, (n, 3)))]
    pw, w = options[-1]
    ref_total, ref_g = bce_ref(x, t, pw, w)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    results = []
    for xs, ts, grad in both(dev, x, t, np.zeros_like(x)):
        place = dev if not isinstance(xs, np.ndarray) else (lambda a: a)
        pws, ws = (None if a is None else place(a) for a in (pw, w))
        total = E.bce_with_logits_forward(xs, ts, pws, ws)
        assert total == pytest.approx(ref_total, rel=1e-12 if dtype == np.float64 else 1e-6)
        E.bce_with_logits_backward(xs, ts, pws, ws, grad, 0.25)
        np.testing.assert_allclose(to_np(grad), 0.25 * ref_g, rtol=rtol, atol=atol)
        E.bce_with_logits_backward(xs, ts, pws, ws, xs, 0.25)           # grad may be x
        np.testing.assert_allclose(to_np(xs), 0.25 * ref_g, rtol=rtol, atol=atol)
        results.append(total)
    assert results[1] == pytest.approx(results[0], rel=1e-12)


def test_bce_extreme_logits_like_host(dev):
    x = np.array([[-800.0, -30.0, 0.0, 30.0, 800.0, np.inf, -np.inf, np.nan]])
    t = np.array([[0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.5]])
    finite = E.bce_with_logits_forward(dev(x[:, :5]), dev(t[:, :5]))
    assert finite == pytest.approx(E.bce_with_logits_forward(x[:, :5], t[:, :5]), rel=1e-12)
    assert np.isnan(E.bce_with_logits_forward(x, t))
    assert np.isnan(E.bce_with_logits_forward(dev(x), dev(t)))
    hg, dg = np.zeros_like(x), dev(np.zeros_like(x))
    E.bce_with_logits_backward(x, t, None, None, hg, 1.0)
    E.bce_with_logits_backward(dev(x), dev(t), None, None, dg, 1.0)
    np.testing.assert_allclose(host(dg), hg, rtol=1e-12, atol=1e-300)
    assert np.isnan(hg[0, -1])


# --- argument errors -------------------------------------------------------------------------------

def test_host_device_mix_raises_value_error(dev):
    h = np.zeros(6, np.float32)
    d = dev(h)
    target, logits = np.zeros(2, np.int64), np.zeros((2, 3), np.float32)
    mix = "CUDA device array but .* is a host"
    calls = [
        lambda: E.activation_forward(d, h, "relu"),
        lambda: E.activation_backward(d, d, h, "relu"),
        lambda: E.softmax_cross_entropy_forward(dev(logits), target, dev(logits)),
        lambda: E.softmax_cross_entropy_backward(logits, dev(target), logits),
        lambda: E.scale(h, d, 2.0),
        lambda: E.add_(d, h),
        lambda: E.subtract(d, d, h),
        lambda: E.column_sum(dev(logits), np.zeros(3, np.float32)),
        lambda: E.mse_forward(d, h, d),
        lambda: E.bce_with_logits_forward(d, d, np.ones(6), None),
        lambda: E.bce_with_logits_backward(d, d, None, h, d, 1.0),
        lambda: E.softmax_xent_weighted_forward(dev(logits), dev(target), np.ones(3),
                                                dev(logits)),
        lambda: E.softmax_xent_weighted_backward(dev(logits), dev(target), dev(np.ones(3)),
                                                 logits, 0.0, 1.0),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=mix):
            call()


def test_wrong_dtype_device_arrays_raise_type_error(dev):
    f32, f64 = dev(np.zeros(6, np.float32)), dev(np.zeros(6))
    logits = dev(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        E.activation_forward(f64, f32, "tanh")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        E.activation_forward(dev(np.zeros(6, np.int64)), f64, "tanh")
    with pytest.raises(TypeError, match="target must have dtype int64, got int32"):
        E.softmax_cross_entropy_forward(logits, dev(np.zeros(2, np.int32)), logits)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        E.subtract(f32, f64, f32)
    with pytest.raises(TypeError, match="a must have dtype float32 or float64"):
        E.sum_squares(dev(np.zeros(3, np.int32)))
    with pytest.raises(TypeError, match="class_weight must have dtype float64, got float32"):
        E.softmax_xent_weighted_forward(logits, dev(np.zeros(2, np.int64)),
                                        dev(np.ones(3, np.float32)), logits)
    with pytest.raises(TypeError, match="t must have dtype float64"):
        E.bce_with_logits_forward(f64, f32)


def test_wrong_shape_device_arrays_raise_value_error(dev):
    a, b = dev(np.zeros(6)), dev(np.zeros(7))
    logits = dev(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"out must have shape \(6\), got \(7,\)"):
        E.activation_forward(a, b, "relu")
    with pytest.raises(ValueError, match="target must have shape"):
        E.softmax_cross_entropy_forward(logits, dev(np.zeros(3, np.int64)), logits)
    with pytest.raises(ValueError, match="logits must be 2-dimensional"):
        E.softmax_cross_entropy_forward(a, dev(np.zeros(6, np.int64)), a)
    with pytest.raises(ValueError, match=r"out must have shape \(3\)"):
        E.column_sum(logits, dev(np.zeros(2)))
    with pytest.raises(ValueError, match="pos_weight must have shape"):
        E.bce_with_logits_forward(logits, logits, dev(np.ones(2)))
    with pytest.raises(ValueError, match="weight must have shape"):
        E.bce_with_logits_backward(logits, logits, None, a, logits, 1.0)
    with pytest.raises(ValueError, match="diff must have shape"):
        E.mse_forward(a, a, b)
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        buf = dev(np.zeros(12))
        E.activation_forward(buf[:6], buf[3:9], "relu")
    with pytest.raises(ValueError, match="out must not overlap a"):
        E.column_sum(logits, logits.reshape(-1)[:3])
