"""Linear-layer products (fastreg._kernels.matmul) on every backend against a float64 reference.

Shapes: x (N, K), weight (M, K), bias (M,), out (N, M); dy (N, M), dx (N, K), dweight (M, K).
"""
import numpy as np
import pytest
from conftest import AWKWARD_SIZES, tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import linear_backward_input as ref_backward_input
from reference import linear_backward_weight as ref_backward_weight
from reference import linear_forward as ref_forward

import fastreg
from fastreg._kernels import matmul as mm
from fastreg._kernels.common.codes import ACTIVATIONS

MM_BACKENDS = ("numba", "cython", "blas")

# Each awkward size appears in each of the N, K, M positions (a cyclic Latin square), plus the
# tiny case, shapes that cross several column / depth blocks, and the few-rows (GEMV) paths.
_A = AWKWARD_SIZES
SHAPES = [(_A[i], _A[(i + 1) % 6], _A[(i + 2) % 6]) for i in range(6)] + [
    (1, 1, 1), (1030, 1100, 530), (3, 1000, 1000), (4, 600, 600), (2, 1000, 3)]


@pytest.fixture(params=MM_BACKENDS)
def mm_backend(request):
    return request.param


def assert_close(got, want, scale, dtype):
    """|got - want| <= rtol * (sum of |terms|) + atol: the bound a blocked dot product obeys."""
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-12)
    err = np.abs(got.astype(np.float64) - want)
    bound = rtol * scale + atol
    assert np.all(err <= bound), f"max err {err.max():.3g}, worst ratio {(err / bound).max():.3g}"


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_forward_matches_reference(shape, dtype, mm_backend, rng):
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, M, dtype)
    out = np.full((N, M), np.nan, dtype)
    ret = mm.linear_forward(x, w, b, out, "relu", backend=mm_backend)
    assert ret is out
    want, scale = ref_forward(x, w, b, "relu")
    assert_close(out, want, scale, dtype)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(33, 257, 70), (1, 257, 33)], ids=["blocked", "gemv"])
def test_linear_forward_every_activation(activation, with_bias, shape, dtype, mm_backend, rng):
    N, K, M = shape
    x, w = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype)
    b = rand(rng, M, dtype) * 3 if with_bias else None
    out = np.empty((N, M), dtype)
    mm.linear_forward(x, w, b, out, ACTIVATIONS[activation], slope=0.2, backend=mm_backend)
    want, scale = ref_forward(x, w, b, activation, 0.2)
    assert_close(out, want, scale, dtype)


def test_linear_forward_activation_by_name_or_code_agree(mm_backend, rng):
    x, w, b = rand(rng, (9, 20), np.float64), rand(rng, (5, 20), np.float64), None
    a, c = np.empty((9, 5)), np.empty((9, 5))
    mm.linear_forward(x, w, b, a, "LEAKY_RELU", slope=0.3, backend=mm_backend)
    mm.linear_forward(x, w, b, c, ACTIVATIONS["leaky_relu"], slope=0.3, backend=mm_backend)
    np.testing.assert_array_equal(a, c)
    assert (a < 0).any()  # the negative side was exercised


def test_sigmoid_saturates_without_overflow_noise(mm_backend):
    # pre-activations of +-200 overflow exp in float32; sigmoid must give exactly 0 and 1.
    x = np.array([[1.0], [-1.0]], np.float32)
    w = np.array([[200.0]], np.float32)
    out = np.empty((2, 1), np.float32)
    mm.linear_forward(x, w, None, out, "sigmoid", backend=mm_backend)
    np.testing.assert_array_equal(out, [[1.0], [0.0]])


@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(1, 3, 5), (9, 40, 70)])
def test_fused_activation_propagates_nan_like_torch(activation, shape, dtype, mm_backend, rng):
    # relu(NaN) is NaN in torch; a max(x, 0) epilogue with the operands the wrong way round
    # turns it into 0 and hides a diverged model from fit's NaN check.
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, (M,), dtype)
    x[N // 2, 1] = np.nan
    out = np.empty((N, M), dtype)
    mm.linear_forward(x, w, b, out, activation, backend=mm_backend)
    assert np.isnan(out[N // 2]).all()
    others = np.delete(out, N // 2, axis=0)
    assert not np.isnan(others).any()


@pytest.mark.parametrize("N,K,M", [(5, 0, 3), (0, 4, 3), (4, 3, 0)])
def test_linear_forward_empty_dimensions(N, K, M, mm_backend):
    x, w = np.ones((N, K)), np.ones((M, K))
    b = np.arange(M, dtype=np.float64) - 1
    out = np.full((N, M), np.nan)
    mm.linear_forward(x, w, b, out, "relu", backend=mm_backend)
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(b, 0), (N, M)))


# ---------------------------------------------------------------- backward
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_backward_input_matches_reference(shape, dtype, mm_backend, rng):
    N, K, M = shape
    dy, w = rand(rng, (N, M), dtype), rand(rng, (M, K), dtype)
    dx = np.full((N, K), np.nan, dtype)
    assert mm.linear_backward_input(dy, w, dx, backend=mm_backend) is dx
    assert_close(dx, *ref_backward_input(dy, w), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("accumulate", [True, False], ids=["acc", "overwrite"])
def test_linear_backward_weight_matches_reference(shape, accumulate, dtype, mm_backend, rng):
    N, K, M = shape
    dy, x = rand(rng, (N, M), dtype), rand(rng, (N, K), dtype)
    dw0, db0 = rand(rng, (M, K), dtype), rand(rng, M, dtype)
    dw, db = dw0.copy(), db0.copy()
    assert mm.linear_backward_weight(dy, x, dw, db, accumulate, backend=mm_backend) is None
    want_w, scale_w, want_b, scale_b = ref_backward_weight(dy, x)
    if accumulate:
        want_w, want_b = want_w + dw0, want_b + db0
        scale_w, scale_b = scale_w + np.abs(dw0), scale_b + np.abs(db0)
    assert_close(dw, want_w, scale_w, dtype)
    assert_close(db, want_b, scale_b, dtype)


def test_linear_backward_weight_without_dbias(dtype, mm_backend, rng):
    dy, x = rand(rng, (40, 7), dtype), rand(rng, (40, 33), dtype)
    dw = np.zeros((7, 33), dtype)
    mm.linear_backward_weight(dy, x, dw, None, backend=mm_backend)
    assert_close(dw, *ref_backward_weight(dy, x)[:2], dtype)


def test_backward_weight_empty_batch_overwrites_with_zeros(mm_backend):
    dw, db = np.ones((3, 4)), np.ones(3)
    mm.linear_backward_weight(np.ones((0, 3)), np.ones((0, 4)), dw, db, accumulate=False,
                              backend=mm_backend)
    assert not dw.any() and not db.any()


def test_gradients_match_finite_differences(mm_backend, rng):
    """L = sum(g * act(x @ W.T + b)) with identity act: dL/dW, dL/db, dL/dx by central
    differences agree with the backward kernels given dy = g."""
    N, K, M = 6, 5, 4
    x, w, b, g = (rng.standard_normal(s) for s in [(N, K), (M, K), M, (N, M)])

    def loss(x_, w_, b_):
        out = np.empty((N, M))
        mm.linear_forward(x_, w_, b_, out, backend=mm_backend)
        return float((g * out).sum())

    dx, dw, db = np.empty((N, K)), np.empty((M, K)), np.empty(M)
    mm.linear_backward_input(g, w, dx, backend=mm_backend)
    mm.linear_backward_weight(g, x, dw, db, accumulate=False, backend=mm_backend)
    h = 1e-6
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            lp = loss(x, w, b)
            arr[idx] = old - h
            lm = loss(x, w, b)
            arr[idx] = old
            num[idx] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


def test_matches_torch_linear_and_autograd(mm_backend, dtype, rng):
    torch = pytest.importorskip("torch")
    N, K, M = 37, 70, 19
    x, w, b, g = (rand(rng, s, dtype) for s in [(N, K), (M, K), M, (N, M)])
    out = np.empty((N, M), dtype)
    mm.linear_forward(x, w, b, out, "tanh", backend=mm_backend)
    tx, tw, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    ty = torch.tanh(torch.nn.functional.linear(tx, tw, tb))
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=rtol, atol=atol)
    # gradients of sum(g * (x @ W.T + b)): dy = g
    lin = torch.nn.functional.linear(tx, tw, tb)
    (lin * torch.tensor(g, dtype=torch.float64)).sum().backward()
    dx, dw, db = np.empty((N, K), dtype), np.zeros((M, K), dtype), np.zeros(M, dtype)
    mm.linear_backward_input(g, w, dx, backend=mm_backend)
    mm.linear_backward_weight(g, x, dw, db, backend=mm_backend)
    for ours, theirs in ((dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_one_and_two_threads_agree(backend, rng):
    # big enough for the parallel paths (blocked GEMM and the threaded GEMV)
    cases = [(257, 600, 300), (1, 1000, 700)]
    results = {}
    for threads in (1, 2):
        fastreg.set_num_threads(threads)
        res = []
        for N, K, M in cases:
            x, w, b = (np.random.default_rng(1).standard_normal(s).astype(np.float32)
                       for s in [(N, K), (M, K), M])
            out, dx = np.empty((N, M), np.float32), np.empty((N, K), np.float32)
            dw, db = np.zeros((M, K), np.float32), np.zeros(M, np.float32)
            mm.linear_forward(x, w, b, out, "relu", backend=backend)
            mm.linear_backward_input(out, w, dx, backend=backend)
            mm.linear_backward_weight(out, x, dw, db, backend=backend)
            res.append((out, dx, dw, db))
        results[threads] = res
    for r1, r2 in zip(results[1], results[2]):
        for a1, a2 in zip(r1, r2):
            np.testing.assert_allclose(a1, a2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", None])
def test_auto_and_global_backend_dispatch(backend, rng):
    x, w = rng.standard_normal((8, 5)), rng.standard_normal((3, 5))
    out = np.empty((8, 3))
    mm.linear_forward(x, w, None, out, backend=backend)
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-12)


# ---------------------------------------------------------------- bad input
def _fwd_args(dtype=np.float64, N=4, K=3, M=2):
    return (np.ones((N, K), dtype), np.ones((M, K), dtype), np.ones(M, dtype),
            np.zeros((N, M), dtype))


@pytest.mark.parametrize("which,bad,exc,match", [
    (0, np.ones((4, 3), np.int64), TypeError, "x must have dtype float32 or float64"),
    (1, np.ones((2, 3), np.float32), TypeError, "weight must have dtype float64"),
    (2, np.ones(2, np.float32), TypeError, "bias must have dtype float64"),
    (3, np.zeros((4, 2), np.float32), TypeError, "out must have dtype float64"),
    (0, [[1.0, 2.0, 3.0]], TypeError, "x must be a numpy.ndarray"),
    (1, np.ones((2, 4)), ValueError, r"x \(4, 3\).*weight \(2, 4\)"),
    (2, np.ones(3), ValueError, r"weight \(2, 3\).*bias \(3,\)"),
    (3, np.zeros((4, 3)), ValueError, r"out must have shape.*\(4, 2\).*got out \(4, 3\)"),
    (0, np.ones(3), ValueError, "x must be 2-dimensional"),
    (0, np.ones((4, 6))[:, ::2], ValueError, "x must be C-contiguous"),
    (1, np.ones((3, 2)).T, ValueError, "weight must be C-contiguous"),
    (3, np.zeros((4, 4))[:, :2], ValueError, "out must be C-contiguous"),
])
def test_linear_forward_rejects_bad_arrays(which, bad, exc, match, mm_backend):
    args = list(_fwd_args())
    args[which] = bad
    with pytest.raises(exc, match=match):
        mm.linear_forward(*args, backend=mm_backend)


def test_linear_forward_rejects_read_only_and_overlapping_out(mm_backend):
    x, w, b, out = _fwd_args()
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        mm.linear_forward(x, w, b, out, backend=mm_backend)
    buf = np.ones(20)
    x2, out2 = buf[:12].reshape(4, 3), buf[10:18].reshape(4, 2)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        mm.linear_forward(x2, w, b, out2, backend=mm_backend)
    np.testing.assert_array_equal(buf, 1.0)  # nothing was written


@pytest.mark.parametrize("kw,exc,match", [
    ({"slope": np.inf}, ValueError, "slope must be finite"),
    ({"slope": float("nan")}, ValueError, "slope must be finite"),
    ({"slope": "0.1"}, TypeError, "slope must be a real number"),
    ({"activation": "gelu"}, ValueError, "activation must be one of"),
    ({"activation": 7}, ValueError, "activation code must be one of"),
    ({"activation": 1.0}, TypeError, "activation must be a name or an integer code"),
    ({"backend": "torch"}, ValueError, "backend must be one of"),
])
def test_linear_forward_rejects_bad_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        mm.linear_forward(*_fwd_args(), **kw)


def test_backward_input_rejects_bad_arrays(mm_backend):
    dy, w, dx = np.ones((4, 2)), np.ones((2, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"dy \(4, 2\).*weight \(3, 3\)"):
        mm.linear_backward_input(dy, np.ones((3, 3)), dx, backend=mm_backend)
    with pytest.raises(ValueError, match=r"dx must have shape.*got dx \(4, 2\)"):
        mm.linear_backward_input(dy, w, np.zeros((4, 2)), backend=mm_backend)
    with pytest.raises(TypeError, match="dx must have dtype float64"):
        mm.linear_backward_input(dy, w, np.zeros((4, 3), np.float32), backend=mm_backend)
    buf = np.ones(12)
    with pytest.raises(ValueError, match="dx must not share memory with dy"):
        mm.linear_backward_input(buf.reshape(4, 3), np.ones((3, 3)), buf.reshape(4, 3),
                                 backend=mm_backend)
    ro = np.zeros((4, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dx is read-only"):
        mm.linear_backward_input(dy, w, ro, backend=mm_backend)


def test_backward_weight_rejects_bad_arrays(mm_backend):
    dy, x, dw, db = np.ones((4, 2)), np.ones((4, 3)), np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(ValueError, match=r"dy \(4, 2\).*x \(5, 3\)"):
        mm.linear_backward_weight(dy, np.ones((5, 3)), dw, db, backend=mm_backend)
    with pytest.raises(ValueError, match=r"dweight must have shape.*got dweight \(3, 2\)"):
        mm.linear_backward_weight(dy, x, np.zeros((3, 2)), db, backend=mm_backend)
    with pytest.raises(ValueError, match=r"dbias must have shape \(2,\)"):
        mm.linear_backward_weight(dy, x, dw, np.zeros(3), backend=mm_backend)
    with pytest.raises(TypeError, match="dbias must have dtype float64"):
        mm.linear_backward_weight(dy, x, dw, np.zeros(2, np.float32), backend=mm_backend)
    with pytest.raises(TypeError, match="accumulate must be a bool"):
        mm.linear_backward_weight(dy, x, dw, db, accumulate=1, backend=mm_backend)
    with pytest.raises(ValueError, match="dweight must not share memory with x"):
        buf = np.zeros(12)
        mm.linear_backward_weight(dy, buf.reshape(4, 3), buf[:6].reshape(2, 3), db,
                                  backend=mm_backend)
    with pytest.raises(ValueError, match="dweight must not share memory with dbias"):
        buf = np.zeros(8)
        mm.linear_backward_weight(dy, x, buf[:6].reshape(2, 3), buf[5:7], backend=mm_backend)
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dbias is read-only"):
        mm.linear_backward_weight(dy, x, dw, ro, backend=mm_backend)


# ---------------------------------------------------------------- random inputs
_dtypes = st.sampled_from([np.float32, np.float64, np.int32])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(0, 40), K=st.integers(0, 40), M=st.integers(0, 40),
       dx=_dtypes, dw=_dtypes, do=_dtypes, bias_len=st.one_of(st.none(), st.integers(0, 41)),
       w_k=st.integers(0, 41), act=st.sampled_from([*ACTIVATIONS, 9]),
       backend=st.sampled_from(MM_BACKENDS), seed=st.integers(0, 2**16))
def test_linear_forward_random_inputs_correct_or_clean_error(N, K, M, dx, dw, do, bias_len, w_k,
                                                             act, backend, seed):
    rng = np.random.default_rng(seed)
    w_k = K if w_k % 3 else w_k  # mostly consistent shapes, sometimes not
    x = (rng.standard_normal((N, K)) * 3).astype(dx)
    w = (rng.standard_normal((M, w_k)) * 3).astype(dw)
    b = None if bias_len is None else rng.standard_normal(bias_len).astype(dw)
    out = np.empty((N, M), do)
    try:
        mm.linear_forward(x, w, b, out, act, slope=0.1, backend=backend)
    except (TypeError, ValueError):
        ok = (dx == dw == do and dx != np.int32 and w_k == K
              and (b is None or b.shape == (M,)) and act != 9)
        assert not ok, "valid arguments were rejected"
        return
    want, scale = ref_forward(x, w, b, act, 0.1)
    assert_close(out, want, scale, np.dtype(dx))


# ---------------------------------------------------------------- pre-packed weights (inference)
# The Cython backend's packed entry points: the weight packed once (cy.pack_weight) and read by
# linear_forward_packed / LinearChain instead of being packed on every call.
_PACKED_SHAPES = [(_A[i], _A[(i + 1) % 5], _A[(i + 2) % 5]) for i in range(5)] + [
    (1, 1, 1), (4, 600, 70), (5, 600, 70), (300, 1100, 530)]


@pytest.fixture
def cy_mm():
    return pytest.importorskip("fastreg._kernels.matmul.cy",
                               reason="the Cython extensions are not built")


@pytest.mark.parametrize("shape", _PACKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_packed_weight_forward_matches_reference_and_per_call_packing(shape, dtype, cy_mm, rng):
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, M, dtype)
    packed = cy_mm.pack_weight(w)
    assert packed.shape == (cy_mm.packed_size(dtype, M, K),) and packed.dtype == dtype
    out = np.full((N, M), np.nan, dtype)
    assert cy_mm.linear_forward_packed(x, packed, M, b, out, ACTIVATIONS["relu"], 0.0) is out
    want, scale = ref_forward(x, w, b, "relu")
    assert_close(out, want, scale, dtype)
    # same summation order as the per-call packing GEMM, and a row's result does not depend on
    # the batch it is in (the few-rows path sums like the blocked one)
    per_call = np.empty_like(out)
    cy_mm.linear_forward(x, w, b, per_call, ACTIVATIONS["relu"], 0.0)
    if N > 4:
        np.testing.assert_array_equal(out, per_call)
    one = np.empty((1, M), dtype)
    cy_mm.linear_forward_packed(x[-1:].copy(), packed, M, b, one, ACTIVATIONS["relu"], 0.0)
    np.testing.assert_array_equal(one[0], out[-1])


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(33, 257, 70), (1, 257, 33)], ids=["blocked", "gemv"])
def test_packed_weight_forward_every_activation(activation, shape, dtype, cy_mm, rng):
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, M, dtype)
    out = np.empty((N, M), dtype)
    cy_mm.linear_forward_packed(x, cy_mm.pack_weight(w), M, b, out, ACTIVATIONS[activation],
                                -0.2)
    want, scale = ref_forward(x, w, b, activation, -0.2)
    assert_close(out, want, scale, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N", [1, 2, 7, 33])
def test_linear_chain_matches_reference(N, threads, dtype, cy_mm, rng):
    dims = (257, 600, 33, 7, 1)
    acts = [ACTIVATIONS[a] for a in ("relu", "leaky_relu", "tanh", "identity")]
    ws = [rand(rng, (dims[i + 1], dims[i]), dtype) for i in range(4)]
    bs = [rand(rng, dims[i + 1], dtype) for i in range(3)] + [None]
    chain = cy_mm.LinearChain(ws, bs, acts, [0.0, 0.1, 0.0, 0.0])
    x = rand(rng, (N, dims[0]), dtype)
    h = x.astype(np.float64)
    for w, b, a in zip(ws, bs, ("relu", "leaky_relu", "tanh", "identity")):
        h, _ = ref_forward(h, w.astype(np.float64), None if b is None else b.astype(np.float64),
                           a, 0.1)
    before = fastreg.get_num_threads()
    fastreg.set_num_threads(threads)
    min_flops = cy_mm.set_chain_parallel_min_flops(0.0)    # the few-rows chain forks
    try:
        got = chain.fast(x)
        row = chain.fast(x[-1])
    finally:
        fastreg.set_num_threads(before)
        cy_mm.set_chain_parallel_min_flops(min_flops)
    rtol, atol = tol(dtype, f32=1e-4, f64=1e-11)
    np.testing.assert_allclose(got, h, rtol=rtol, atol=atol * np.abs(h).max())
    np.testing.assert_array_equal(row, got[-1])
    # what the fast path does not take, it declines (the caller's checked path handles it)
    for bad in (x.astype(np.float16), x[:, :-1], np.asfortranarray(np.ones((3, dims[0]), dtype)),
                x.reshape(1, *x.shape), x[:0], list(x[0]), x.astype(x.dtype.newbyteorder())):
        assert chain.fast(bad) is None
    assert chain.fast(x, out=np.empty((N, 2), dtype)) is None


# Shapes for the tile split across threads: few rows (the serving batches: the columns are
# split, A is read in place, its edge sliver packed), many rows, a 33-wide output (too narrow to
# split the columns: the rows are split), all big enough (>= 8 MFLOP) to fork; the three layers
# of the training step at batch 256 (the 10-wide one stays on one thread); and a weight
# gradient whose dy.T row blocks (packed whole, dbias summed while packing) end in a one-row
# sliver, over two depth blocks (N = 300).
_SPLIT_SHAPES = [(7, 1000, 1200), (64, 784, 512), (1033, 257, 33),
                 (256, 784, 512), (256, 512, 256), (256, 256, 10), (300, 70, 517)]


@pytest.mark.parametrize("shape", _SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemms_bitwise_identical_for_every_thread_count(shape, dtype, cy_mm, rng):
    # each output is summed by one thread in one order (k ascending, depth blocks in turn)
    # whatever the split, so 1, 2 and 3 threads give the same bits -- and the right ones
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, M, dtype)
    dy = rand(rng, (N, M), dtype)
    packed = cy_mm.pack_weight(w)
    relu = ACTIVATIONS["relu"]
    before = fastreg.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fastreg.set_num_threads(threads)
            out, outp = np.empty((N, M), dtype), np.empty((N, M), dtype)
            dx, dw, db = np.empty((N, K), dtype), np.empty((M, K), dtype), np.empty(M, dtype)
            cy_mm.linear_forward(x, w, b, out, relu, 0.0)
            cy_mm.linear_forward_packed(x, packed, M, b, outp, relu, 0.0)
            cy_mm.linear_backward_input(dy, w, dx)
            cy_mm.linear_backward_weight(dy, x, dw, db, False)
            results.append((out, outp, dx, dw, db))
    finally:
        fastreg.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)
    out, outp, dx, dw, db = results[0]
    np.testing.assert_array_equal(out, outp)
    want, scale = ref_forward(x, w, b, "relu")
    assert_close(out, want, scale, dtype)
    want, scale = ref_backward_input(dy, w)
    assert_close(dx, want, scale, dtype)
    want_w, scale_w, want_b, scale_b = ref_backward_weight(dy, x)
    assert_close(dw, want_w, scale_w, dtype)
    assert_close(db, want_b, scale_b, dtype)


def test_peak_probe_measures_fma_throughput(cy_mm):
    gflops, lanes = cy_mm.peak_probe(1, seconds=0.01, repeats=1)
    assert lanes in (1, 8, 16) and gflops > 0.1
    for kw, name in (({"threads": 0}, "threads"), ({"seconds": 0.0}, "seconds"),
                     ({"repeats": 0}, "repeats")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            cy_mm.peak_probe(**kw)
