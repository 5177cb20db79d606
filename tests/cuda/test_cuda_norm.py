"""CUDA batch-norm / layer-norm kernels (numba's simulator without a GPU): launch geometry and
device-specific behaviour, against float64 NumPy references (tests/reference.py) and the CPU
backend on the same inputs, through the public wrappers.

Small shapes (C = 1, C not a multiple of the 32-column strip, C > 32, rows beyond one block's 8
row lanes, N = 1), every affine / running-statistics / gradient-flag variant, run in
tests/test_kernels_reference.py. Here: rows and columns beyond the simulator's grid (grid-stride
loops), N = 0, and several row groups per column reduction (forced with _reduction_blocks) so
the last-block finish combines partials from more than one block. Also: batchnorm_backward_eval on the host (NumPy, bit for bit
the formula fastreg.nn.BatchNorm1d.backward used) and on the device.
"""
import numpy as np
import pytest
import reference as ref

from fastreg._kernels import norm
from fastreg._kernels.norm import cuda as _norm_cuda

DTYPES = (np.float32, np.float64)
BN_SHAPES = [(130, 40)]          # beyond the simulator grid: grid-stride loops, two strips


# --------------------------------------------------------------------------------------------
# float64 references (tests/reference.py) and helpers
# --------------------------------------------------------------------------------------------

def bn_train_ref(x, w, b, eps):
    """(y, mean, biased var, rstd) of the training-mode forward."""
    y, mu, rstd, _, _, var = ref.batchnorm_forward_train(x, w, b, eps=eps)
    return y, mu, var, rstd


bn_backward_ref = ref.batchnorm_backward
ln_forward_ref = ref.layernorm_forward
ln_backward_ref = ref.layernorm_backward
bn_backward_eval_ref = ref.batchnorm_backward_eval


def close(actual, expected, dtype, f32=1e-4, f64=1e-10):
    """Against a float64 reference: the CPU tests' tolerances."""
    t = f32 if np.dtype(dtype) == np.float32 else f64
    np.testing.assert_allclose(actual, expected, rtol=t, atol=t)


def near_cpu(actual, cpu, dtype):
    """Against the CPU backend on the same inputs: same formulas, only the float64 summation
    order differs, so a few ulp of the data dtype."""
    close(actual, cpu, dtype, f32=1e-5, f64=1e-13)


def rand(rng, shape, dtype, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def nans(shape, dtype):
    return np.full(shape, np.nan, dtype)


def to_dev(dev, *arrays):
    return [None if a is None else dev(a) for a in arrays]


def host(*arrays):
    return [None if a is None else a.copy_to_host() for a in arrays]


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def groups(monkeypatch):
    """Force column reductions onto several row groups (the simulator's grid has 1-2)."""
    monkeypatch.setattr(_norm_cuda, "_reduction_blocks", lambda: 3)


# --------------------------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------------------------

def _bn_train_case(dev, rng, shape, dtype, affine, running):
    N, C = shape
    x = rand(rng, shape, dtype, loc=0.5, scale=2.0)
    w, b = (rand(rng, C, dtype), rand(rng, C, dtype)) if affine else (None, None)
    rm0, rv0 = rand(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype)
    rm, rv = (rm0.copy(), rv0.copy()) if running else (None, None)
    out, sm, sr = nans(shape, dtype), nans(C, dtype), nans(C, dtype)
    norm.batchnorm_forward_train(x, w, b, rm, rv, out, sm, sr, momentum=0.3, eps=1e-3)
    d = to_dev(dev, x, w, b, rm0 if running else None, rv0 if running else None, nans(shape, dtype),
               nans(C, dtype), nans(C, dtype))
    ret = norm.batchnorm_forward_train(*d, momentum=0.3, eps=1e-3)
    assert ret is d[5]
    got = dict(zip(["rm", "rv", "out", "sm", "sr"], host(*d[3:])))
    y, mu, var, rstd = bn_train_ref(x, w, b, 1e-3)
    close(got["out"], y, dtype)
    close(got["sm"], mu, dtype)
    close(got["sr"], rstd, dtype)
    for k, cpu in [("out", out), ("sm", sm), ("sr", sr)]:
        near_cpu(got[k], cpu, dtype)
    if running:
        close(got["rm"], 0.7 * rm0.astype(np.float64) + 0.3 * mu, dtype)
        close(got["rv"], 0.7 * rv0.astype(np.float64) + 0.3 * var * N / (N - 1), dtype)
        near_cpu(got["rm"], rm, dtype)
        near_cpu(got["rv"], rv, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_train(dev, rng, dtype, shape):
    _bn_train_case(dev, rng, shape, dtype, affine=True, running=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine", [((130, 40), True), ((0, 3), True)])
def test_batchnorm_forward_eval(dev, rng, dtype, shape, affine):
    _N, C = shape
    x = rand(rng, shape, dtype, scale=3.0)
    w, b = (rand(rng, C, dtype), rand(rng, C, dtype)) if affine else (None, None)
    rm, rv = rand(rng, C, dtype), (rng.random(C) + 0.1).astype(dtype)
    out = nans(shape, dtype)
    norm.batchnorm_forward_eval(x, w, b, rm, rv, out, eps=1e-4)
    d = to_dev(dev, x, w, b, rm, rv, nans(shape, dtype))
    assert norm.batchnorm_forward_eval(*d, eps=1e-4) is d[5]
    got = d[5].copy_to_host()
    y = (x.astype(np.float64) - rm) / np.sqrt(rv.astype(np.float64) + 1e-4)
    if affine:
        y = y * w + b.astype(np.float64)
    close(got, y, dtype)
    near_cpu(got, out, dtype)


def _bn_backward_case(dev, rng, shape, dtype, affine, accumulate, need=(True, True)):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=-1.0, scale=1.5), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    sm = x.astype(np.float64).mean(0).astype(dtype)
    sr = (1.0 / np.sqrt(x.astype(np.float64).var(0) + 1e-5)).astype(dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw = dw0.copy() if affine and need[0] else None
    db = db0.copy() if affine and need[1] else None
    dx = nans(shape, dtype)
    norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, accumulate=accumulate)
    d = to_dev(dev, dy, x, w, sm, sr, nans(shape, dtype), dw0 if dw is not None else None,
               db0 if db is not None else None)
    assert norm.batchnorm_backward(*d, accumulate=accumulate) is d[5]
    gdx, gdw, gdb = host(*d[5:])
    rdx, rdw, rdb = bn_backward_ref(dy, x, w, sm, sr)
    close(gdx, rdx, dtype, f32=2e-4)
    near_cpu(gdx, dx, dtype)
    for got, cpu, want, base in [(gdw, dw, rdw, dw0), (gdb, db, rdb, db0)]:
        if cpu is None:
            assert got is None
            continue
        close(got, (base.astype(np.float64) if accumulate else 0.0) + want, dtype, f32=2e-4)
        near_cpu(got, cpu, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,accumulate", [((130, 40), True)])
def test_batchnorm_backward(dev, rng, dtype, shape, accumulate):
    _bn_backward_case(dev, rng, shape, dtype, affine=True, accumulate=accumulate)


def test_batchnorm_large_mean_float32_statistics_are_accurate(dev, rng):
    # 1e4 + N(0, 1): shifted float64 sums keep the variance (naive float32 loses every digit)
    x = rand(rng, (300, 3), np.float32, loc=1e4)
    d = to_dev(dev, x, np.zeros(3, np.float32), np.ones(3, np.float32), nans(x.shape, np.float32),
               nans(3, np.float32), nans(3, np.float32))
    norm.batchnorm_forward_train(d[0], None, None, *d[1:], momentum=1.0)
    rv, out, sm, sr = host(*d[2:])
    y, mu, var, rstd = bn_train_ref(x, None, None, 1e-5)
    np.testing.assert_allclose(sr, rstd, rtol=1e-5)
    np.testing.assert_allclose(sm, mu, rtol=1e-7)
    np.testing.assert_allclose(rv, var * 300 / 299, rtol=1e-5)
    np.testing.assert_allclose(out, y, atol=2e-5)


def test_batchnorm_nan_propagates(dev, rng):
    x = rand(rng, (9, 4), np.float32)
    x[3, 1] = np.nan
    d = to_dev(dev, x, nans(x.shape, np.float32), np.zeros(4, np.float32),
               np.zeros(4, np.float32))
    norm.batchnorm_forward_train(d[0], None, None, None, None, *d[1:])
    out = d[1].copy_to_host()
    assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, axis=1)).all()


# --------------------------------------------------------------------------------------------
# batch norm, eval-mode backward (new): host NumPy and device kernel
# --------------------------------------------------------------------------------------------

def _layers_eval_backward(dy, x, gamma, rm, rv, eps, dgamma, dbeta, dt):
    """What fastreg.nn.BatchNorm1d.backward computed in eval mode before this kernel existed."""
    dx = np.empty_like(dy)
    r = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
    if dgamma is not None:
        dgamma += ((dy * ((x - rm) * r)).sum(axis=0)).astype(dt)
    if dbeta is not None:
        dbeta += dy.sum(axis=0)
    scale = r if gamma is None else gamma * r
    np.multiply(dy, scale.astype(dt), out=dx)
    return dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (130, 40)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_backward_eval_host_is_the_layer_formula(rng, dtype, shape, affine):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=1.0), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    rm, rv = rand(rng, C, dtype), (rng.random(C) + 0.2).astype(dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw, db = (dw0.copy(), db0.copy()) if affine else (None, None)
    ew, eb = (dw0.copy(), db0.copy()) if affine else (None, None)
    dx = nans(shape, dtype)
    assert norm.batchnorm_backward_eval(dy, x, w, rm, rv, dx, dw, db, 1e-3) is dx
    edx = _layers_eval_backward(dy, x, w, rm, rv, 1e-3, ew, eb, dtype)
    np.testing.assert_array_equal(dx, edx)
    rdx, rdw, rdb = bn_backward_eval_ref(dy, x, w, rm, rv, 1e-3)
    close(dx, rdx, dtype)
    if affine:
        np.testing.assert_array_equal(dw, ew)
        np.testing.assert_array_equal(db, eb)
        close(dw, dw0.astype(np.float64) + rdw, dtype)
        close(db, db0.astype(np.float64) + rdb, dtype)
        norm.batchnorm_backward_eval(dy, x, w, rm, rv, dx, dw, db, 1e-3, accumulate=False)
        close(dw, rdw, dtype)
        close(db, rdb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine,accumulate",
                         [((130, 40), True, True), ((0, 3), True, False)])
def test_batchnorm_backward_eval_device(dev, rng, dtype, shape, affine, accumulate):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=1.0), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    rm, rv = rand(rng, C, dtype), (rng.random(C) + 0.2).astype(dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw, db = (dw0.copy(), db0.copy()) if affine else (None, None)
    dx = nans(shape, dtype)
    norm.batchnorm_backward_eval(dy, x, w, rm, rv, dx, dw, db, 1e-3, accumulate=accumulate)
    d = to_dev(dev, dy, x, w, rm, rv, nans(shape, dtype), dw0 if affine else None,
               db0 if affine else None)
    assert norm.batchnorm_backward_eval(*d, 1e-3, accumulate=accumulate) is d[5]
    gdx, gdw, gdb = host(*d[5:])
    rdx, rdw, rdb = bn_backward_eval_ref(dy, x, w, rm, rv, 1e-3)
    close(gdx, rdx, dtype)
    np.testing.assert_array_equal(gdx, dx)      # the same float64 scale rounded once
    if affine:
        base = (lambda a: a.astype(np.float64)) if accumulate else (lambda a: 0.0)
        close(gdw, base(dw0) + rdw, dtype)
        close(gdb, base(db0) + rdb, dtype)
        near_cpu(gdw, dw, dtype)
        near_cpu(gdb, db, dtype)


# --------------------------------------------------------------------------------------------
# layer norm
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine", [((20, 130), "both"), ((0, 4), "both")])
def test_layernorm_forward(dev, rng, dtype, shape, affine):
    N, C = shape
    x = rand(rng, shape, dtype, loc=2.0, scale=0.5)
    w = rand(rng, C, dtype) if affine in ("both", "weight") else None
    b = rand(rng, C, dtype) if affine in ("both", "bias") else None
    out, sm, sr = nans(shape, dtype), nans(N, dtype), nans(N, dtype)
    norm.layernorm_forward(x, w, b, out, sm, sr, eps=1e-3)
    d = to_dev(dev, x, w, b, nans(shape, dtype), nans(N, dtype), nans(N, dtype))
    assert norm.layernorm_forward(*d, eps=1e-3) is d[3]
    gout, gsm, gsr = host(*d[3:])
    y, mu, rstd = ln_forward_ref(x, w, b, 1e-3)
    for got, cpu, want in [(gout, out, y), (gsm, sm, mu), (gsr, sr, rstd)]:
        close(got, want, dtype)
        near_cpu(got, cpu, dtype)


def test_layernorm_large_mean_float32_statistics_are_accurate(dev, rng):
    x = rand(rng, (3, 300), np.float32, loc=1e4)
    d = to_dev(dev, x, nans(x.shape, np.float32), nans(3, np.float32), nans(3, np.float32))
    norm.layernorm_forward(d[0], None, None, *d[1:])
    out, sm, sr = host(*d[1:])
    y, mu, rstd = ln_forward_ref(x, None, None, 1e-5)
    np.testing.assert_allclose(sr, rstd, rtol=1e-5)
    np.testing.assert_allclose(sm, mu, rtol=1e-7)
    np.testing.assert_allclose(out, y, atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,affine,accumulate",
                         [((20, 130), False, True), ((0, 5), True, False), ((0, 5), True, True)])
def test_layernorm_backward(dev, rng, dtype, shape, affine, accumulate):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=1.0), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    _, mu, rstd = ln_forward_ref(x, None, None, 1e-5)
    sm, sr = mu.astype(dtype), rstd.astype(dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw, db = (dw0.copy(), db0.copy()) if affine else (None, None)
    dx = nans(shape, dtype)
    norm.layernorm_backward(dy, x, w, sm, sr, dx, dw, db, accumulate=accumulate)
    d = to_dev(dev, dy, x, w, sm, sr, nans(shape, dtype), dw0 if affine else None,
               db0 if affine else None)
    assert norm.layernorm_backward(*d, accumulate=accumulate) is d[5]
    gdx, gdw, gdb = host(*d[5:])
    rdx, rdw, rdb = ln_backward_ref(dy, x, w, sm, sr)
    close(gdx, rdx, dtype, f32=2e-4)
    near_cpu(gdx, dx, dtype)
    if affine:
        base = (lambda a: a.astype(np.float64)) if accumulate else (lambda a: 0.0)
        close(gdw, base(dw0) + rdw, dtype, f32=2e-4)
        close(gdb, base(db0) + rdb, dtype, f32=2e-4)
        near_cpu(gdw, dw, dtype)
        near_cpu(gdb, db, dtype)


# --------------------------------------------------------------------------------------------
# column reductions over several row groups: the last-block finish, determinism, counters
# --------------------------------------------------------------------------------------------

def test_reductions_over_many_row_groups(dev, rng, groups):
    # 3 row groups of 33 / 33 / 34 rows: the strip's last block adds partials of 3 blocks, and
    # leaves the strip counter at 0 for the next launch (else the next call never finishes)
    N, C = 100, 5
    dtype = np.float32
    assert _norm_cuda._row_groups(N, _norm_cuda._strips(C)) == 3
    x, dy = rand(rng, (N, C), dtype, loc=3.0), rand(rng, (N, C), dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    _, lmu, lrs = ln_forward_ref(x, None, None, 1e-5)
    lm, lr = lmu.astype(dtype), lrs.astype(dtype)
    dx_, dy_, x_, w_, b_, rm, rv, out, sm, sr, lm_, lr_ = to_dev(
        dev, nans((N, C), dtype), dy, x, w, b, np.zeros(C, dtype), np.ones(C, dtype),
        nans((N, C), dtype), nans(C, dtype), nans(C, dtype), lm, lr)
    grads = [dev(nans(C, dtype)) for _ in range(6)]
    norm.batchnorm_forward_train(x_, w_, b_, rm, rv, out, sm, sr)
    assert not _norm_cuda._counters(1).copy_to_host()[0]
    y, mu, var, rstd = bn_train_ref(x, w, b, 1e-5)
    close(out.copy_to_host(), y, dtype)
    close(sm.copy_to_host(), mu, dtype)
    close(sr.copy_to_host(), rstd, dtype)
    close(rm.copy_to_host(), 0.1 * mu, dtype)
    close(rv.copy_to_host(), 0.9 + 0.1 * var * N / (N - 1), dtype)
    hsm, hsr = sm.copy_to_host(), sr.copy_to_host()
    checks = [
        (norm.batchnorm_backward, (dy_, x_, w_, sm, sr, dx_, grads[0], grads[1]), {},
         bn_backward_ref(dy, x, w, hsm, hsr)),
        (norm.layernorm_backward, (dy_, x_, w_, lm_, lr_, dx_, grads[2], grads[3]), {},
         ln_backward_ref(dy, x, w, lm, lr)),
        (norm.batchnorm_backward_eval, (dy_, x_, w_, sm, sr, dx_, grads[4], grads[5], 1e-5), {},
         bn_backward_eval_ref(dy, x, w, hsm, hsr, 1e-5)),
    ]
    for fn, args, kw, (rdx, rdw, rdb) in checks:
        fn(*args, accumulate=False, **kw)
        assert not _norm_cuda._counters(1).copy_to_host()[0], fn.__name__
        gdx, gdw, gdb = host(args[5], args[6], args[7])
        close(gdx, rdx, dtype, f32=2e-4)
        close(gdw, rdw, dtype, f32=2e-4)
        close(gdb, rdb, dtype, f32=2e-4)


# --------------------------------------------------------------------------------------------
# errors: clean messages before any launch
# --------------------------------------------------------------------------------------------

def _dev_bn_args(dev, dtype=np.float32, N=4, C=3):
    x = np.ones((N, C), dtype)
    x[0] = 2.0
    return {"x": dev(x), "weight": dev(np.ones(C, dtype)), "bias": dev(np.ones(C, dtype)),
            "running_mean": dev(np.zeros(C, dtype)), "running_var": dev(np.ones(C, dtype)),
            "out": dev(np.empty((N, C), dtype)), "save_mean": dev(np.empty(C, dtype)),
            "save_rstd": dev(np.empty(C, dtype))}


@pytest.mark.parametrize("arg,bad,exc,msg", [
    ("weight", np.ones(3, np.float32), ValueError, "is a CUDA device array but weight is a host"),
    ("out", np.ones((4, 3), np.float32), ValueError, "is a CUDA device array but out is a host"),
    ("bias", "dev64", TypeError, "bias must have dtype float32, got float64"),
    ("save_rstd", "dev_shape", ValueError, r"save_rstd must have shape \(3\)"),
])
def test_batchnorm_train_rejects_bad_device_arguments(dev, arg, bad, exc, msg):
    a = _dev_bn_args(dev)
    if isinstance(bad, str):
        bad = dev(np.ones(3, np.float64) if bad == "dev64" else np.ones(4, np.float32))
    a[arg] = bad
    with pytest.raises(exc, match=msg):
        norm.batchnorm_forward_train(**a)


def test_device_calls_reject_cpu_backends_and_aliasing(dev):
    a = _dev_bn_args(dev)
    with pytest.raises(ValueError, match="runs on the CPU but the arrays are CUDA device arrays"):
        norm.batchnorm_forward_train(**a, backend="numba")
    a["out"] = a["x"]
    with pytest.raises(ValueError, match="x and out must not share memory"):
        norm.batchnorm_forward_train(**a)


def test_backward_and_layernorm_reject_bad_device_arguments(dev):
    v = lambda n=3, dt=np.float32: dev(np.ones(n, dt))
    x, dy, dx = dev(np.ones((4, 3), np.float32)), dev(np.ones((4, 3), np.float32)), \
        dev(np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="dy is a CUDA device array but x is a host"):
        norm.batchnorm_backward(dy, np.ones((4, 3), np.float32), v(), v(), v(), dx, v(), v())
    with pytest.raises(TypeError, match="dweight must have dtype float32"):
        norm.batchnorm_backward(dy, x, v(), v(), v(), dx, v(3, np.float64), v())
    with pytest.raises(ValueError, match=r"dx must have shape \(4, 3\)"):
        norm.layernorm_backward(dy, x, v(), v(4), v(4), dev(np.empty((3, 4), np.float32)), v(),
                                v())
    with pytest.raises(ValueError, match=r"running_var must have shape \(3\)"):
        norm.batchnorm_backward_eval(dy, x, v(), v(), v(4), dx, v(), v(), 1e-5)
    with pytest.raises(ValueError, match="dweight and dbias must be None when weight is None"):
        norm.batchnorm_backward_eval(dy, x, None, v(), v(), dx, v(), None, 1e-5)
    with pytest.raises(ValueError, match="eps must be in"):
        norm.batchnorm_backward_eval(dy, x, v(), v(), v(), dx, v(), v(), -1.0)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        norm.layernorm_forward(x, None, None, dev(np.empty((4, 3))), v(4), v(4))
    with pytest.raises(ValueError, match="running_mean is a CUDA device array but x is a host"):
        norm.batchnorm_forward_eval(np.ones((4, 3), np.float32), None, None, v(), v(),
                                    np.empty((4, 3), np.float32))


def test_host_batchnorm_backward_eval_rejects_cuda_backend():
    x = np.ones((4, 3), np.float32)
    v = lambda: np.ones(3, np.float32)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA device arrays"):
        norm.batchnorm_backward_eval(x, x.copy(), v(), v(), v(), np.empty_like(x), v(), v(),
                                     1e-5, backend="cuda")
