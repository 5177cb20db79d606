"""Batch norm and layer norm kernels against float64 NumPy references, finite differences and
torch, on every backend and both dtypes."""
import numpy as np
import pytest
import reference as ref
from conftest import CPU_BACKENDS, tol
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg._kernels import norm

# (N, C) pairs covering the awkward sizes 1, 2, 7, 33, 257, 1000+ in both dimensions
SHAPES = [(2, 1), (7, 2), (33, 7), (2, 33), (257, 3), (1031, 33), (7, 257), (3, 1000),
          (1000, 2), (65, 1031)]
LN_SHAPES = [(1, 1), (1, 7), (2, 33), (33, 2), (257, 257), (7, 1031), (1000, 7)]


# --------------------------------------------------------------------------------------------
# float64 references: tests/reference.py
# --------------------------------------------------------------------------------------------

def bn_train_ref(x, w, b, eps):
    """(y, mean, biased var, rstd) of the training-mode forward."""
    y, mu, rstd, _, _, var = ref.batchnorm_forward_train(x, w, b, eps=eps)
    return y, mu, var, rstd


bn_backward_ref = ref.batchnorm_backward
ln_forward_ref = ref.layernorm_forward
ln_backward_ref = ref.layernorm_backward
bn_eval_ref = ref.batchnorm_forward_eval


def close(actual, expected, dtype, f32=1e-4, f64=1e-10):
    rtol, atol = tol(dtype, f32, f64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def rand(rng, shape, dtype, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


# --------------------------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine,running", [(True, True), (False, False), (True, False)])
def test_batchnorm_forward_train_matches_reference(backend, dtype, rng, shape, affine, running):
    N, C = shape
    x = rand(rng, shape, dtype, loc=0.5, scale=2.0)
    w = rand(rng, C, dtype) if affine else None
    b = rand(rng, C, dtype) if affine else None
    rm0, rv0 = rand(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype)
    rm, rv = (rm0.copy(), rv0.copy()) if running else (None, None)
    out = np.full(shape, np.nan, dtype)
    sm, sr = np.full(C, np.nan, dtype), np.full(C, np.nan, dtype)
    ret = norm.batchnorm_forward_train(x, w, b, rm, rv, out, sm, sr, momentum=0.3, eps=1e-3,
                                       backend=backend)
    y, mu, var, rstd = bn_train_ref(x, w, b, 1e-3)
    assert ret is out
    close(out, y, dtype)
    close(sm, mu, dtype)
    close(sr, rstd, dtype)
    if running:
        close(rm, 0.7 * rm0.astype(np.float64) + 0.3 * mu, dtype)
        close(rv, 0.7 * rv0.astype(np.float64) + 0.3 * var * N / (N - 1), dtype)


@pytest.mark.parametrize("shape", [(1, 1), (1, 33), (7, 2), (257, 257), (1000, 7), (0, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_forward_eval_matches_reference(backend, dtype, rng, shape, affine):
    _N, C = shape
    x = rand(rng, shape, dtype, scale=3.0)
    w = rand(rng, C, dtype) if affine else None
    b = rand(rng, C, dtype) if affine else None
    rm, rv = rand(rng, C, dtype), (rng.random(C) + 0.1).astype(dtype)
    out = np.full(shape, np.nan, dtype)
    norm.batchnorm_forward_eval(x, w, b, rm, rv, out, eps=1e-4, backend=backend)
    close(out, bn_eval_ref(x, w, b, rm, rv, 1e-4), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine,accumulate", [(True, True), (True, False), (False, False)])
def test_batchnorm_backward_matches_reference(backend, dtype, rng, shape, affine, accumulate):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=-1.0, scale=1.5), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    sm = x.astype(np.float64).mean(0).astype(dtype)
    sr = (1.0 / np.sqrt(x.astype(np.float64).var(0) + 1e-5)).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw, db = (dw0.copy(), db0.copy()) if affine else (None, None)
    ret = norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, accumulate=accumulate,
                                  backend=backend)
    rdx, rdw, rdb = bn_backward_ref(dy, x, w, sm, sr)
    assert ret is dx
    close(dx, rdx, dtype, f32=2e-4)
    if affine:
        base_w = dw0.astype(np.float64) if accumulate else 0.0
        base_b = db0.astype(np.float64) if accumulate else 0.0
        close(dw, base_w + rdw, dtype, f32=2e-4)
        close(db, base_b + rdb, dtype, f32=2e-4)


def test_batchnorm_backward_skips_missing_parameter_grads(backend, dtype, rng):
    x, dy = rand(rng, (33, 7), dtype), rand(rng, (33, 7), dtype)
    w = rand(rng, 7, dtype)
    sm, sr = x.mean(0), (1 / np.sqrt(x.var(0) + 1e-5)).astype(dtype)
    db = np.zeros(7, dtype)
    dx = np.empty_like(x)
    norm.batchnorm_backward(dy, x, w, sm, sr, dx, None, db, accumulate=False, backend=backend)
    rdx, _, rdb = bn_backward_ref(dy, x, w, sm, sr)
    close(dx, rdx, dtype, f32=2e-4)
    close(db, rdb, dtype, f32=2e-4)


def test_batchnorm_large_mean_float32_statistics_are_accurate(backend, rng):
    # 1e4 + N(0, 1): naive float32 E[x^2] - E[x]^2 loses every digit of the variance
    x = rand(rng, (4099, 37), np.float32, loc=1e4)
    out, sm, sr = np.empty_like(x), np.empty(37, np.float32), np.empty(37, np.float32)
    rm, rv = np.zeros(37, np.float32), np.ones(37, np.float32)
    norm.batchnorm_forward_train(x, None, None, rm, rv, out, sm, sr, momentum=1.0,
                                 backend=backend)
    y, mu, var, rstd = bn_train_ref(x, None, None, 1e-5)
    np.testing.assert_allclose(sr, rstd, rtol=1e-5)
    np.testing.assert_allclose(sm, mu, rtol=1e-7)
    np.testing.assert_allclose(rv, var * 4099 / 4098, rtol=1e-5)
    np.testing.assert_allclose(out, y, atol=2e-5)
    np.testing.assert_allclose(out.astype(np.float64).mean(0), 0.0, atol=1e-5)


def test_batchnorm_nan_propagates(backend, dtype, rng):
    x = rand(rng, (9, 4), dtype)
    x[3, 1] = np.nan
    out, sm, sr = np.empty_like(x), np.empty(4, dtype), np.empty(4, dtype)
    norm.batchnorm_forward_train(x, None, None, None, None, out, sm, sr, backend=backend)
    assert np.isnan(out[:, 1]).all() and np.isfinite(np.delete(out, 1, axis=1)).all()


# --------------------------------------------------------------------------------------------
# layer norm
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("affine", ["both", "none", "weight", "bias"])
def test_layernorm_forward_matches_reference(backend, dtype, rng, shape, affine):
    N, C = shape
    x = rand(rng, shape, dtype, loc=2.0, scale=0.5)
    w = rand(rng, C, dtype) if affine in ("both", "weight") else None
    b = rand(rng, C, dtype) if affine in ("both", "bias") else None
    out = np.full(shape, np.nan, dtype)
    sm, sr = np.full(N, np.nan, dtype), np.full(N, np.nan, dtype)
    ret = norm.layernorm_forward(x, w, b, out, sm, sr, eps=1e-3, backend=backend)
    y, mu, rstd = ln_forward_ref(x, w, b, 1e-3)
    assert ret is out
    close(out, y, dtype)
    close(sm, mu, dtype)
    close(sr, rstd, dtype)


@pytest.mark.parametrize("shape", LN_SHAPES + [(0, 5)])
@pytest.mark.parametrize("affine,accumulate", [(True, True), (True, False), (False, False)])
def test_layernorm_backward_matches_reference(backend, dtype, rng, shape, affine, accumulate):
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=1.0), rand(rng, shape, dtype)
    w = rand(rng, C, dtype) if affine else None
    _, mu, rstd = ln_forward_ref(x, None, None, 1e-5)
    sm, sr = mu.astype(dtype), rstd.astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    dw0, db0 = rand(rng, C, dtype), rand(rng, C, dtype)
    dw, db = (dw0.copy(), db0.copy()) if affine else (None, None)
    ret = norm.layernorm_backward(dy, x, w, sm, sr, dx, dw, db, accumulate=accumulate,
                                  backend=backend)
    rdx, rdw, rdb = ln_backward_ref(dy, x, w, sm, sr)
    assert ret is dx
    close(dx, rdx, dtype, f32=2e-4)
    if affine:
        base_w = dw0.astype(np.float64) if accumulate else 0.0
        base_b = db0.astype(np.float64) if accumulate else 0.0
        close(dw, base_w + rdw, dtype, f32=2e-4)
        close(db, base_b + rdb, dtype, f32=2e-4)


def test_layernorm_large_mean_float32_statistics_are_accurate(backend, rng):
    x = rand(rng, (5, 4099), np.float32, loc=1e4)
    out, sm, sr = np.empty_like(x), np.empty(5, np.float32), np.empty(5, np.float32)
    norm.layernorm_forward(x, None, None, out, sm, sr, backend=backend)
    y, mu, rstd = ln_forward_ref(x, None, None, 1e-5)
    np.testing.assert_allclose(sr, rstd, rtol=1e-5)
    np.testing.assert_allclose(sm, mu, rtol=1e-7)
    np.testing.assert_allclose(out, y, atol=2e-5)


def test_large_outputs_match_reference(backend, dtype, rng):
    # >= 8 MB outputs take the Cython streaming-store path; an odd C misaligns every row
    N, C = (2053, 1031) if dtype == np.float32 else (1031, 1031)
    x, dy = rand(rng, (N, C), dtype, loc=2.0), rand(rng, (N, C), dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    out, dx = np.full((N, C), np.nan, dtype), np.full((N, C), np.nan, dtype)
    sm, sr, dw, db = (np.zeros(C, dtype) for _ in range(4))
    norm.batchnorm_forward_train(x, w, b, None, None, out, sm, sr, backend=backend)
    close(out, bn_train_ref(x, w, b, 1e-5)[0], dtype)
    norm.batchnorm_forward_eval(x, w, b, sm, sr, out, backend=backend)
    close(out, bn_eval_ref(x, w, b, sm, sr, 1e-5), dtype)
    norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, backend=backend)
    close(dx, bn_backward_ref(dy, x, w, sm, sr)[0], dtype, f32=2e-4)
    lm, lr = np.empty(N, dtype), np.empty(N, dtype)
    norm.layernorm_forward(x, w, b, out, lm, lr, backend=backend)
    close(out, ln_forward_ref(x, w, b, 1e-5)[0], dtype)
    norm.layernorm_backward(dy, x, w, lm, lr, dx, dw, db, accumulate=False, backend=backend)
    rdx, rdw, rdb = ln_backward_ref(dy, x, w, lm, lr)
    close(dx, rdx, dtype, f32=2e-4)
    close(dw, rdw, dtype, f32=2e-4)
    close(db, rdb, dtype, f32=2e-4)


# --------------------------------------------------------------------------------------------
# finite differences of the scalar loss L = sum(out * R), float64
# --------------------------------------------------------------------------------------------

def _fd_grad(f, a, h=1e-6):
    g = np.empty(a.shape)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("op", ["batchnorm", "layernorm"])
def test_backward_matches_finite_differences(backend, rng, op):
    N, C = 5, 4
    x = rand(rng, (N, C), np.float64, loc=0.3)
    w, b, R = rand(rng, C, np.float64), rand(rng, C, np.float64), rand(rng, (N, C), np.float64)
    n_stats = C if op == "batchnorm" else N
    out, sm, sr = np.empty((N, C)), np.empty(n_stats), np.empty(n_stats)

    def forward():
        if op == "batchnorm":
            norm.batchnorm_forward_train(x, w, b, None, None, out, sm, sr, eps=0.1,
                                         backend=backend)
        else:
            norm.layernorm_forward(x, w, b, out, sm, sr, eps=0.1, backend=backend)
        return float((out * R).sum())

    forward()
    dx, dw, db = np.empty((N, C)), np.zeros(C), np.zeros(C)
    backward = norm.batchnorm_backward if op == "batchnorm" else norm.layernorm_backward
    backward(R, x, w, sm, sr, dx, dw, db, accumulate=False, backend=backend)
    np.testing.assert_allclose(dx, _fd_grad(forward, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd_grad(forward, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd_grad(forward, b), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3), (64, 33), (257, 7)])
def test_batchnorm_train_matches_torch(backend, dtype, rng, shape):
    torch = pytest.importorskip("torch")
    _N, C = shape
    x, dy = rand(rng, shape, dtype, loc=3.0), rand(rng, shape, dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    bn = torch.nn.BatchNorm1d(C, momentum=0.2, dtype=tdt)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(w))
        bn.bias.copy_(torch.from_numpy(b))
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    out, sm, sr = np.empty(shape, dtype), np.empty(C, dtype), np.empty(C, dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    for _ in range(2):   # two steps: the running statistics compound
        ty = bn(tx)
        norm.batchnorm_forward_train(x, w, b, rm, rv, out, sm, sr, momentum=0.2,
                                     backend=backend)
    ty.backward(torch.from_numpy(dy))
    dx, dw, db = np.empty(shape, dtype), np.zeros(C, dtype), np.zeros(C, dtype)
    norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, backend=backend)
    t = tol(dtype, 2e-4, 1e-9)
    np.testing.assert_allclose(out, ty.detach().numpy(), *t)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), *t)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), *t)
    np.testing.assert_allclose(dx, tx.grad.numpy(), *t)
    np.testing.assert_allclose(dw, bn.weight.grad.numpy(), *t)
    np.testing.assert_allclose(db, bn.bias.grad.numpy(), *t)


@pytest.mark.parametrize("shape", [(1, 5), (64, 33), (7, 257)])
def test_layernorm_matches_torch(backend, dtype, rng, shape):
    torch = pytest.importorskip("torch")
    N, C = shape
    x, dy = rand(rng, shape, dtype, loc=-2.0), rand(rng, shape, dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    ln = torch.nn.LayerNorm(C, dtype=tdt)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(w))
        ln.bias.copy_(torch.from_numpy(b))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = ln(tx)
    ty.backward(torch.from_numpy(dy))
    out, sm, sr = np.empty(shape, dtype), np.empty(N, dtype), np.empty(N, dtype)
    norm.layernorm_forward(x, w, b, out, sm, sr, backend=backend)
    dx, dw, db = np.empty(shape, dtype), np.zeros(C, dtype), np.zeros(C, dtype)
    norm.layernorm_backward(dy, x, w, sm, sr, dx, dw, db, backend=backend)
    t = tol(dtype, 2e-4, 1e-9)
    np.testing.assert_allclose(out, ty.detach().numpy(), *t)
    np.testing.assert_allclose(dx, tx.grad.numpy(), *t)
    np.testing.assert_allclose(dw, ln.weight.grad.numpy(), *t)
    np.testing.assert_allclose(db, ln.bias.grad.numpy(), *t)


# --------------------------------------------------------------------------------------------
# bad input: a clean error naming the argument, before any compiled loop
# --------------------------------------------------------------------------------------------

def _bn_args(dtype=np.float32, N=4, C=3):
    x = np.ones((N, C), dtype)
    x[0] = 2.0
    vec = lambda: np.ones(C, dtype)
    return {"x": x, "weight": vec(), "bias": vec(), "running_mean": vec(), "running_var": vec(),
                "out": np.empty((N, C), dtype), "save_mean": vec(), "save_rstd": vec()}


def test_batchnorm_train_rejects_single_sample(backend):
    a = _bn_args(N=1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        norm.batchnorm_forward_train(**a, backend=backend)


@pytest.mark.parametrize("arg,bad,exc,msg", [
    ("x", np.ones((4, 3), np.int64), TypeError, "x must have dtype float32 or float64"),
    ("x", [[1.0, 2.0]], TypeError, "x must be a numpy.ndarray"),
    ("x", np.ones(4, np.float32), ValueError, "x must be 2-dimensional"),
    ("x", np.ones((3, 8), np.float32)[:, ::2], ValueError, "x must be C-contiguous"),
    ("weight", np.ones(4, np.float32), ValueError, r"weight must have shape \(3\)"),
    ("bias", np.ones(3, np.float64), TypeError, "bias must have dtype float32"),
    ("running_var", None, ValueError, "running_mean and running_var must both"),
    ("out", np.ones((4, 4), np.float32), ValueError, r"out must have shape \(4, 3\)"),
    ("out", np.ones((4, 6), np.float32)[:, :3], ValueError, "out must be C-contiguous"),
    ("save_rstd", np.ones((3, 1), np.float32), ValueError, "save_rstd must have shape"),
])
def test_batchnorm_train_rejects_bad_arrays(backend, arg, bad, exc, msg):
    a = _bn_args()
    a[arg] = bad
    with pytest.raises(exc, match=msg):
        norm.batchnorm_forward_train(**a, backend=backend)


@pytest.mark.parametrize("arg", ["out", "save_mean", "save_rstd", "running_mean"])
def test_batchnorm_train_rejects_read_only_outputs(backend, arg):
    a = _bn_args()
    a[arg].flags.writeable = False
    with pytest.raises(ValueError, match=f"{arg} is read-only"):
        norm.batchnorm_forward_train(**a, backend=backend)
    assert np.all(a["running_mean"] == 1.0)      # nothing was written before the error


@pytest.mark.parametrize("kw,msg", [({"momentum": 1.5}, "momentum must be in"),
                                    ({"eps": -1e-5}, "eps must be in"),
                                    ({"eps": float("nan")}, "eps must be finite")])
def test_batchnorm_train_rejects_bad_scalars(kw, msg):
    with pytest.raises(ValueError, match=msg):
        norm.batchnorm_forward_train(**_bn_args(), **kw)


def test_outputs_must_not_alias_inputs():
    a = _bn_args()
    a["out"] = a["x"]
    with pytest.raises(ValueError, match="x and out must not share memory"):
        norm.batchnorm_forward_train(**a)


def test_backward_rejects_bad_arguments(backend):
    x = dy = np.ones((4, 3), np.float32)
    dy = dy.copy()
    v = lambda: np.ones(3, np.float32)
    dx = np.empty((4, 3), np.float32)
    with pytest.raises(ValueError, match="dweight and dbias must be None when weight is None"):
        norm.batchnorm_backward(dy, x, None, v(), v(), dx, v(), None, backend=backend)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
        norm.batchnorm_backward(dy[:2], x, v(), v(), v(), dx, v(), v(), backend=backend)
    with pytest.raises(ValueError, match=r"save_mean must have shape \(4\)"):
        norm.layernorm_backward(dy, x, v(), v(), np.ones(4, np.float32), dx, v(), v(),
                                backend=backend)
    with pytest.raises(TypeError, match="accumulate must be a bool"):
        norm.layernorm_backward(dy, x, v(), np.ones(4, np.float32), np.ones(4, np.float32),
                                dx, v(), v(), accumulate=1, backend=backend)
    ro = np.empty((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dx is read-only"):
        norm.layernorm_backward(dy, x, None, np.ones(4, np.float32), np.ones(4, np.float32),
                                ro, None, None, backend=backend)
    with pytest.raises(TypeError, match="dweight must have dtype float32"):
        norm.batchnorm_backward(dy, x, v(), v(), v(), dx, np.ones(3), v(), backend=backend)


def test_layernorm_forward_rejects_bad_arguments(backend):
    x = np.ones((4, 3), np.float32)
    out, s = np.empty((4, 3), np.float32), lambda: np.empty(4, np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(3\)"):
        norm.layernorm_forward(x, np.ones(2, np.float32), None, out, s(), s(), backend=backend)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        norm.layernorm_forward(x, None, None, out.astype(np.float64), s(), s(), backend=backend)
    with pytest.raises(ValueError, match="x must have at least one feature"):
        norm.layernorm_forward(np.ones((4, 0), np.float32), None, None,
                               np.ones((4, 0), np.float32), s(), s(), backend=backend)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        norm.layernorm_forward(np.asfortranarray(np.ones((4, 3), np.float32)), None, None, out,
                               s(), s(), backend=backend)


def test_default_backend_dispatch_works():
    rng = np.random.default_rng(0)
    x = rand(rng, (9, 5), np.float32)
    out, sm, sr = np.empty_like(x), np.empty(9, np.float32), np.empty(9, np.float32)
    norm.layernorm_forward(x, None, None, out, sm, sr)
    close(out, ln_forward_ref(x, None, None, 1e-5)[0], np.float32)


# --------------------------------------------------------------------------------------------
# hypothesis: random shapes and dtypes either give the reference answer or a clean error
# --------------------------------------------------------------------------------------------

_dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.float16])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), c=st.integers(0, 40), c2=st.integers(0, 40), dt=_dtypes,
       dt2=_dtypes, op=st.sampled_from(["bn_train", "bn_eval", "bn_bwd", "ln_fwd", "ln_bwd"]),
       affine=st.booleans(), be=st.sampled_from(CPU_BACKENDS), seed=st.integers(0, 2**16))
def test_random_shapes_and_dtypes_never_crash(n, c, c2, dt, dt2, op, affine, be, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)).astype(dt)
    dy = rng.standard_normal((n, c)).astype(dt)
    vec = rng.standard_normal(c2).astype(dt2)
    w = vec if affine else None
    nstat = c2 if op.startswith("bn") else n
    sm = np.abs(rng.standard_normal(nstat)).astype(dt2) + 1
    sr = np.abs(rng.standard_normal(nstat)).astype(dt2) + 1
    out = np.empty((n, c), dt)
    g = (vec.copy(), vec.copy()) if affine else (None, None)
    try:
        if op == "bn_train":
            norm.batchnorm_forward_train(x, w, w, None, None, out, sm, sr, backend=be)
            expect = bn_train_ref(x, w, w, 1e-5)[0]
        elif op == "bn_eval":
            norm.batchnorm_forward_eval(x, w, w, sm, sr, out, backend=be)
            expect = bn_eval_ref(x, w, w, sm, sr, 1e-5)
        elif op == "ln_fwd":
            norm.layernorm_forward(x, w, None, out, sm, sr, backend=be)
            expect = ln_forward_ref(x, w, None, 1e-5)[0]
        elif op == "bn_bwd":
            norm.batchnorm_backward(dy, x, w, sm, sr, out, *g, backend=be)
            expect = bn_backward_ref(dy, x, w, sm, sr)[0]
        else:
            norm.layernorm_backward(dy, x, w, sm, sr, out, *g, backend=be)
            expect = ln_backward_ref(dy, x, w, sm, sr)[0]
    except (TypeError, ValueError):
        return
    close(out, expect, out.dtype, f32=1e-3, f64=1e-8)


# --------------------------------------------------------------------------------------------
# row chunking: sizes around the serial threshold and the chunk count, and schedule independence
# --------------------------------------------------------------------------------------------

_S = norm._SERIAL_BELOW


@pytest.mark.parametrize("shape", [(_S // 33, 33), (_S // 33 + 1, 33), (3, 8000), (9, 2049),
                                   (4 * _S // 1024 + 1, 1024)])
def test_chunk_boundary_shapes_match_reference(backend, dtype, rng, shape):
    N, C = shape
    x, dy = rand(rng, shape, dtype, loc=3.0), rand(rng, shape, dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    out, dx = np.empty(shape, dtype), np.empty(shape, dtype)
    sm, sr, dw, db = (np.zeros(C, dtype) for _ in range(4))
    norm.batchnorm_forward_train(x, w, b, None, None, out, sm, sr, backend=backend)
    y, mu, _, rstd = bn_train_ref(x, w, b, 1e-5)
    close(out, y, dtype)
    close(sm, mu, dtype)
    close(sr, rstd, dtype)
    norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, accumulate=False, backend=backend)
    rdx, rdw, rdb = bn_backward_ref(dy, x, w, sm, sr)
    close(dx, rdx, dtype, f32=2e-4)
    close(dw, rdw, dtype, f32=2e-4)
    close(db, rdb, dtype, f32=2e-4)
    lm, lr = np.empty(N, dtype), np.empty(N, dtype)
    norm.layernorm_forward(x, w, b, out, lm, lr, backend=backend)
    close(out, ln_forward_ref(x, w, b, 1e-5)[0], dtype)
    norm.layernorm_backward(dy, x, w, lm, lr, dx, dw, db, accumulate=False, backend=backend)
    rdx, rdw, rdb = ln_backward_ref(dy, x, w, lm, lr)
    close(dx, rdx, dtype, f32=2e-4)
    close(dw, rdw, dtype, f32=2e-4)
    close(db, rdb, dtype, f32=2e-4)


def test_chunk_count_bounds():
    assert norm._n_chunks(10, 10) == 1
    assert 1 <= norm._n_chunks(3, 100000) <= 3
    assert norm._n_chunks(4096, 1024) <= 4096


def test_results_do_not_depend_on_the_schedule(backend, rng):
    # chunks are handed out dynamically; per-chunk partials summed in chunk order make every
    # call bitwise identical
    N, C = 2053, 517
    x, dy = rand(rng, (N, C), np.float32, loc=1e3), rand(rng, (N, C), np.float32)
    w, b = rand(rng, C, np.float32), rand(rng, C, np.float32)
    runs = []
    for _ in range(4):
        out, dx = np.empty((N, C), np.float32), np.empty((N, C), np.float32)
        sm, sr, dw, db = (np.zeros(C, np.float32) for _ in range(4))
        lm, lr = np.empty(N, np.float32), np.empty(N, np.float32)
        lw, lb = np.zeros(C, np.float32), np.zeros(C, np.float32)
        norm.batchnorm_forward_train(x, w, b, None, None, out, sm, sr, backend=backend)
        norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, backend=backend)
        lout, ldx = np.empty_like(out), np.empty_like(dx)
        norm.layernorm_forward(x, w, b, lout, lm, lr, backend=backend)
        norm.layernorm_backward(dy, x, w, lm, lr, ldx, lw, lb, backend=backend)
        runs.append((out, dx, sm, sr, dw, db, lout, ldx, lm, lr, lw, lb))
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            np.testing.assert_array_equal(a, b_)


def test_results_do_not_depend_on_the_thread_count(backend, rng):
    # the row split is a function of the shape only (norm._n_chunks): 1, 2 and 3 threads give
    # bitwise the same statistics, outputs and gradients
    import fastreg
    N, C = 1031, 259
    x, dy = rand(rng, (N, C), np.float32, loc=10.0), rand(rng, (N, C), np.float32)
    w, b = rand(rng, C, np.float32), rand(rng, C, np.float32)
    assert norm._n_chunks(N, C) > 3
    runs = []
    for threads in (1, 2, 3):
        fastreg.set_num_threads(threads)
        out, dx, lout, ldx = (np.empty((N, C), np.float32) for _ in range(4))
        sm, sr, dw, db, lw, lb = (np.zeros(C, np.float32) for _ in range(6))
        lm, lr = np.empty(N, np.float32), np.empty(N, np.float32)
        norm.batchnorm_forward_train(x, w, b, None, None, out, sm, sr, backend=backend)
        norm.batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, backend=backend)
        norm.layernorm_forward(x, w, b, lout, lm, lr, backend=backend)
        norm.layernorm_backward(dy, x, w, lm, lr, ldx, lw, lb, backend=backend)
        runs.append((out, dx, sm, sr, dw, db, lout, ldx, lm, lr, lw, lb))
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("shape", [(2053, 1031), (64, 31), (5, 4111)])
def test_layernorm_backward_without_weight_matches_reference(backend, dtype, rng, shape):
    # the vector row loops with a tail (C % 16 != 0), streamed (first shape, float32) or not
    x, dy = rand(rng, shape, dtype, loc=-3.0), rand(rng, shape, dtype)
    _, mu, rstd = ln_forward_ref(x, None, None, 1e-5)
    sm, sr = mu.astype(dtype), rstd.astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    norm.layernorm_backward(dy, x, None, sm, sr, dx, None, None, backend=backend)
    close(dx, ln_backward_ref(dy, x, None, sm, sr)[0], dtype, f32=2e-4)


@pytest.mark.parametrize("shape", [(3, 8), (2, 40), (5, 63), (1, 96), (2, 520)])
def test_layernorm_simd_width_tails_match_reference(backend, dtype, rng, shape):
    # the AVX2 float32 row loops take 32 columns per step for the statistics and 8 for the rest,
    # in tiles of 512: widths just above and below those, every affine combination
    N, C = shape
    x, dy = rand(rng, shape, dtype, loc=3.0), rand(rng, shape, dtype)
    w, b = rand(rng, C, dtype), rand(rng, C, dtype)
    for ww, bb in [(w, b), (w, None), (None, b), (None, None)]:
        out, sm, sr = np.full(shape, np.nan, dtype), np.empty(N, dtype), np.empty(N, dtype)
        norm.layernorm_forward(x, ww, bb, out, sm, sr, backend=backend)
        y, mu, rstd = ln_forward_ref(x, ww, bb, 1e-5)
        close(out, y, dtype)
        close(sm, mu, dtype)
        close(sr, rstd, dtype)
        dx = np.full(shape, np.nan, dtype)
        dw, db = (np.zeros(C, dtype), np.zeros(C, dtype)) if ww is not None else (None, None)
        norm.layernorm_backward(dy, x, ww, sm, sr, dx, dw, db, backend=backend)
        rdx, rdw, rdb = ln_backward_ref(dy, x, ww, sm, sr)
        close(dx, rdx, dtype, f32=2e-4)
        if ww is not None:
            close(dw, rdw, dtype, f32=2e-4)
            close(db, rdb, dtype, f32=2e-4)


def _bn_ln_step(x, dy, w, b, backend):
    """Batch norm and layer norm forward + backward through the trusted entry points (the ones
    the nn layers call, which take their scratch from norm._scratch)."""
    N, C = x.shape
    dt = x.dtype
    out, dx, lout, ldx = (np.empty((N, C), dt) for _ in range(4))
    sm, sr, dw, db, lw, lb = (np.zeros(C, dt) for _ in range(6))
    lm, lr = np.empty(N, dt), np.empty(N, dt)
    rm, rv = np.zeros(C, dt), np.ones(C, dt)
    norm.run_batchnorm_forward_train(x, w, b, rm, rv, out, sm, sr, 0.1, 1e-5, False, backend)
    norm.run_batchnorm_backward(dy, x, w, sm, sr, dx, dw, db, True, False, backend)
    norm.run_layernorm_forward(x, w, b, lout, lm, lr, 1e-5, False, backend)
    norm.run_layernorm_backward(dy, x, w, lm, lr, ldx, lw, lb, True, False, backend)
    return out, dx, sm, sr, rm, rv, dw, db, lout, ldx, lm, lr, lw, lb


def test_scratch_is_reused_across_calls_and_never_shared_between_python_threads():
    import threading
    a = norm._partials(8, 33, np.dtype(np.float32), block=True)
    b = norm._partials(8, 33, np.dtype(np.float32), block=True)
    assert a[0] is b[0] and a[1] is b[1]                  # steady state: the same arrays
    assert a[0].ctypes.data % 64 == 0 and a[1].ctypes.data % 64 == 0   # cache-line aligned
    P, partial, block, coef = norm._scratch.chunked("bwd", 257, 33, np.dtype(np.float32))
    assert P == norm._n_chunks(257, 33) and partial.shape == block.shape == (P, 2, 33)
    assert coef.shape == (4, 33) and coef.dtype == np.float32
    assert norm._scratch.chunked("bwd", 257, 33, np.dtype(np.float32))[1] is partial
    small = norm._partials(3, 33, np.dtype(np.float32))[0]
    assert np.shares_memory(small, a[0])                  # a smaller call reuses the memory
    assert norm._coef(33, np.dtype(np.float64)).dtype == np.float64
    other = []
    t = threading.Thread(target=lambda: other.append(norm._partials(8, 33, np.dtype(np.float32),
                                                                    block=True)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0][0], a[0])
    assert not np.shares_memory(other[0][1], a[1])


def test_two_python_threads_running_norm_kernels_at_once_get_their_own_results(backend, dtype,
                                                                              rng):
    # each thread its own data of one shape (the same scratch size); shared scratch would mix
    # their partial sums. Every concurrent result must equal the serial one bit for bit.
    import threading
    N, C = 517, 259
    data = [(rand(rng, (N, C), dtype, loc=3.0 * k), rand(rng, (N, C), dtype),
             rand(rng, C, dtype), rand(rng, C, dtype)) for k in range(2)]
    want = [_bn_ln_step(*d, backend) for d in data]
    errors = []
    start = threading.Barrier(2)

    def run(k):
        try:
            start.wait()
            for _ in range(30):
                got = _bn_ln_step(*data[k], backend)
                for g, w in zip(got, want[k]):
                    if g.tobytes() != w.tobytes():
                        errors.append(k)
                        return
        except Exception as e:          # noqa: BLE001 -- reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
