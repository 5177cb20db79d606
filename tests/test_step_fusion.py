"""The training step's fusions and its allocation-free steady state (issue 15, item 1).

* ReLU -> Dropout in a Sequential runs as one kernel each way (``relu_dropout_forward`` /
  ``relu_dropout_backward``); outputs, masks, input gradients and parameter gradients must equal
  the unfused layers bit for bit, on every CPU backend and both dtypes.
* After warm-up, a training step (forward, loss, zero_grad, backward, AdamW step) allocates no
  arrays but the logits ``model(x)`` returns (the caller's copy): tracemalloc sees no other
  block the size of an activation.
* The input-gradient GEMM of a Linear applies the backward of the activation (or fused ReLU ->
  Dropout) before it in its epilogue (``matmul.linear_backward_input_act``); Sequential routes
  the pair through it. Bit for bit the GEMM then the separate pass, on every backend.
"""
import contextlib
import tracemalloc

import numpy as np
import pytest
from reference import act as ref_act
from reference import act_grad as ref_act_grad
from reference import assert_model_gradients_match_central_differences

import fastreg as fr
from fastreg import nn
from fastreg._kernels import dropout as D
from fastreg._kernels import elementwise as E
from fastreg._kernels import matmul as MM
from fastreg._kernels.matmul.codes import GRAD_CODES, GRAD_RELU_DROPOUT
from fastreg.nn import layers as L

AWKWARD = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0])


def _x(n, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(n).astype(dtype)
    x[:min(n, AWKWARD.size)] = AWKWARD[:min(n, AWKWARD.size)]
    return x


@pytest.mark.parametrize("n", [1, 7, 33, 257, 4099])
@pytest.mark.parametrize("mode_scale", [1.0 / 0.7, 1.0])      # inverted, classic
def test_relu_dropout_kernels_equal_the_two_unfused_kernels_bitwise(backend, dtype, n,
                                                                     mode_scale):
    x = _x(n, dtype)
    dy = np.random.default_rng(1).standard_normal(n).astype(dtype)
    dy[:3] = (np.inf, -0.0, np.nan)[:min(n, 3)]
    nb = D.mask_nbytes(n)
    # unfused: ReLU, then dropout; backward dropout, then ReLU (from ReLU's output y)
    y, out1, mask1 = np.empty_like(x), np.empty_like(x), np.empty(nb, np.uint8)
    E.activation_forward(x, y, "relu", backend=backend)
    D.dropout_forward(y, out1, mask1, 0.3, mode_scale, 12345, 77, backend=backend)
    g, dx1 = np.empty_like(x), np.empty_like(x)
    D.dropout_backward(dy, mask1, g, mode_scale, backend=backend)
    E.activation_backward(g, y, dx1, "relu", backend=backend)
    # fused
    out2, mask2, dx2 = np.empty_like(x), np.empty(nb, np.uint8), np.empty_like(x)
    D.run_relu_dropout_forward(x, out2, mask2, 0.3, mode_scale, 12345, 77, backend=backend)
    D.run_relu_dropout_backward(dy, out2, dx2, mode_scale, backend=backend)
    assert mask2.tobytes() == mask1.tobytes()
    assert out2.tobytes() == out1.tobytes()
    assert dx2.tobytes() == dx1.tobytes()
    # and against NumPy: max(x, 0) * scale where kept (NaN passes ReLU), gradient where out > 0
    keep = D.dropout_keep_reference(n, 0.3, 12345, 77)
    t = dtype.type
    relu = np.where(x < 0, t(0), x)
    want = np.where(keep, relu * t(mode_scale), t(0))
    np.testing.assert_array_equal(out2, want)
    np.testing.assert_array_equal(dx2, np.where(want > 0, dy * t(mode_scale), t(0)))


def _model(dt, fuse, mode="inverted"):
    fr.manual_seed(0)
    m = nn.Sequential(nn.Linear(7, 33, dtype=dt), nn.BatchNorm1d(33, dtype=dt), nn.ReLU(),
                      nn.Dropout(0.3, mode=mode), nn.Linear(33, 5, dtype=dt), nn.ReLU(),
                      nn.Dropout(0.5), nn.Linear(5, 3, dtype=dt))
    m.fuse = fuse
    return m


def _steps(model, dt, n, train=True):
    model.train(train)
    fr.manual_seed(5)                          # the same dropout masks for both models
    g = np.random.default_rng(1)
    x = g.standard_normal((n, 7)).astype(dt)
    got = []
    for _ in range(2):                         # two calls: fresh masks, reused buffers
        y = model(x).copy()
        for p in model.parameters():
            p.grad = None
        dx = model.backward(g.standard_normal(y.shape).astype(dt)).copy()
        got.append((y, dx, [p.grad.copy() for p in model.parameters()]))
    return got


@pytest.mark.parametrize("n", [2, 33, 257])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_sequential_relu_dropout_fusion_is_bitwise_the_unfused_pair(dtype, n, mode):
    dtype = dtype.type
    fused, plain = _model(dtype, True, mode), _model(dtype, False, mode)
    a, b = _steps(fused, dtype, n), _steps(plain, dtype, n)
    assert fused[3]._cache[0] == "relu"            # BatchNorm, ReLU, Dropout: it did fuse
    assert fused[6]._cache[0] == "mask"            # Linear + ReLU fuse first, Dropout alone
    assert plain[3]._cache[0] == "mask"
    for (y1, dx1, g1), (y2, dx2, g2) in zip(a, b):
        assert y1.tobytes() == y2.tobytes()
        assert dx1.tobytes() == dx2.tobytes()
        for u, v in zip(g1, g2):
            assert u.tobytes() == v.tobytes()


def test_relu_dropout_pair_in_eval_mode_runs_unfused_and_back_propagates():
    m = _model(np.float64, True, "classic")
    a = _steps(m, np.float64, 9, train=False)
    b = _steps(_model(np.float64, False, "classic"), np.float64, 9, train=False)
    for (y1, dx1, _), (y2, dx2, _) in zip(a, b):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(dx1, dx2)


def test_relu_dropout_pair_on_0d_and_3d_inputs():
    for shape in [(), (2, 3, 5)]:
        x = np.asarray(np.random.default_rng(0).standard_normal(shape))
        outs = []
        for fuse in (True, False):
            fr.manual_seed(3)
            m = nn.Sequential(nn.ReLU(), nn.Dropout(0.4))
            m.fuse = fuse
            y = np.array(m(x), copy=True)
            outs.append((y, np.array(m.backward(np.ones_like(y)), copy=True)))
        assert outs[0][0].tobytes() == outs[1][0].tobytes()
        assert outs[0][1].tobytes() == outs[1][1].tobytes()


def test_bad_input_to_a_fused_pair_gets_relus_own_error():
    m = nn.Sequential(nn.ReLU(), nn.Dropout(0.2))
    with pytest.raises(TypeError, match=r"ReLU\(\): input must be a numpy.ndarray, got list"):
        m([1.0, 2.0])
    with pytest.raises(TypeError, match=r"ReLU\(\): input has dtype int64"):
        m(np.arange(4))


def _peak_bytes_of_steps(step, warm=3, steps=3):
    """(peak, net) bytes tracemalloc sees over ``steps`` calls of ``step`` after ``warm``."""
    for _ in range(warm):
        step()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, current - before


def _mlp_step(model):
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = np.random.default_rng(0)
    x = g.standard_normal((512, 32)).astype(np.float32)
    y = g.integers(0, 10, 512)

    def step():
        out = model(x)
        loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return step


# Python's own small objects (frames, tuples, floats, a kernel call's arguments) peak at about
# 5 kB in a step; every array of the steps below is larger than 8 kB except the dropout masks.
SMALL = 8192


def test_training_step_allocates_no_arrays_after_warm_up():
    fr.manual_seed(0)
    f32 = np.float32
    model = nn.Sequential(nn.Linear(32, 64, dtype=f32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(64, 48, dtype=f32), nn.Tanh(), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(48, 10, dtype=f32))
    peak, net = _peak_bytes_of_steps(_mlp_step(model))
    # the one array a step allocates: ``model(x)`` hands the caller a copy of the logits
    # (512 x 10 float32), as torch returns a fresh tensor; the layers' buffers are reused
    logits = 512 * 10 * 4
    assert peak < logits + SMALL, f"a training step allocated {peak} bytes at its peak"
    assert net < SMALL // 2


def test_benchmark_step_with_batchnorm_allocates_no_arrays_after_warm_up():
    # the norm kernels' scratch is a per-thread grow-only cache (norm._Scratch), not per call
    from fastreg._bench.compare_train import fastreg_step
    step, _ = fastreg_step(batch=256)
    peak, _ = _peak_bytes_of_steps(step)
    assert peak < 256 * 10 * 4 + SMALL, f"a training step allocated {peak} bytes at its peak"


# --- zero_grad without a pass over the gradients -----------------------------------------------

def _lazy_model():
    fr.manual_seed(0)
    f64 = np.float64
    body = nn.Sequential(nn.Linear(6, 9, dtype=f64), nn.Tanh(), nn.Linear(9, 4, dtype=f64))
    unused = nn.Linear(3, 3, dtype=f64)    # gets a gradient at the first step only
    params = list(body.parameters()) + list(unused.parameters())
    return body, unused, fr.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _train(eager: bool, steps=3):
    body, unused, opt = _lazy_model()
    g = np.random.default_rng(2)
    loss_fn = nn.CrossEntropyLoss()
    for i in range(steps):
        x, y = g.standard_normal((8, 6)), g.integers(0, 4, 8)
        opt.zero_grad()
        if eager:                                  # what zero_grad used to do: write zeros now
            for p in opt.param_groups[0]["params"]:
                p.grad[...] = 0.0
        loss_fn(body(x), y)
        body.backward(loss_fn.backward())
        if i == 0:
            unused(x[:, :3])
            unused.backward(np.ones((8, 3)))
        opt.step()
    return [p.data.copy() for p in opt.param_groups[0]["params"]], body, unused, opt


def test_lazy_zero_grad_trains_bitwise_like_eager_zeroing():
    lazy, *_ = _train(False)
    eager, *_ = _train(True)
    for a, b in zip(lazy, eager):
        assert a.tobytes() == b.tobytes()


def test_zeroed_gradients_read_as_zeros_and_accumulate_after_a_write():
    _, body, unused, opt = _train(False, steps=1)
    assert any(np.any(p.grad != 0) for p in body.parameters())
    opt.zero_grad()
    for p in list(body.parameters()) + list(unused.parameters()):
        np.testing.assert_array_equal(p.grad, 0.0)   # read: zeros (written on demand)
    w = body[0].weight
    opt.zero_grad()
    w.grad[...] = 1.0                              # a user's write after zero_grad counts
    x = np.random.default_rng(5).standard_normal((4, 6))
    body(x)
    g = np.ones((4, 4))
    body.backward(g)
    once = w.grad.copy() - 1.0
    body(x)
    body.backward(g)                               # no zero_grad: a second backward adds
    np.testing.assert_allclose(w.grad, 1.0 + 2 * once, rtol=1e-12, atol=1e-12)
    opt.zero_grad()
    body(x)
    body.backward(g)                               # overwritten, not added to the stale values
    np.testing.assert_allclose(body[0].weight.grad, once, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(unused.weight.grad, 0.0)


# --- the activation's backward in the input-gradient GEMM's epilogue -------------------------
# Linear_{i+1}'s dx = dy @ W feeds the backward of step i's activation (a Linear's fused
# activation, or a fused ReLU -> Dropout); matmul.run_linear_backward_input_act applies it on
# each final output tile (Cython), and Sequential.backward routes the pair through it. It must
# give the bits of the GEMM followed by the separate pass, on every backend.

GRAD_NAMES = ("relu", "leaky_relu", "sigmoid", "tanh", "relu_dropout")
SLOPE, SCALE = 0.1, 1.0 / 0.7
# (N, M, K): dx is (N, K), the GEMM's depth M. N <= 4: the few-rows path (3 x 1000 x 2100 is
# split across threads); N = 7, 33, 257, 1030: whole and edge slivers; K = 1, 7, 33, 257: edge
# panels of every width; M = 600: two depth blocks (the epilogue only in the last).
DX_SHAPES = [(1, 1, 1), (2, 7, 33), (4, 600, 300), (3, 1000, 2100), (7, 33, 257),
             (33, 257, 7), (257, 600, 300), (1030, 70, 129)]


def _act_out(name, n, k, dtype, rng):
    """A saved activation output with the values that test `y > 0`: zeros, -0.0, NaN."""
    pre = rng.standard_normal((n, k))
    if name == "relu_dropout":
        keep = rng.random((n, k)) >= 0.3
        y = np.where(keep, ref_act(pre, "relu") * SCALE, 0.0)
    else:
        y = ref_act(pre, name, SLOPE)
    y = y.astype(dtype)
    flat = y.reshape(-1)
    flat[::5] = 0.0
    flat[1::7] = -0.0
    flat[2::11] = np.nan
    return y, pre


def _separate(dy, w, y, name, backend):
    """The unfused pair: the GEMM, then the activation's own backward kernel."""
    g = np.empty((dy.shape[0], w.shape[1]), dy.dtype)
    MM.linear_backward_input(dy, w, g, backend=backend)
    dx = np.empty_like(g)
    if name == "relu_dropout":
        D.run_relu_dropout_backward(g, y, dx, SCALE, backend=backend)
    else:
        E.activation_backward(g, y, dx, name, slope=SLOPE, backend=backend)
    return g, dx


@pytest.mark.parametrize("shape", DX_SHAPES, ids=["x".join(map(str, s)) for s in DX_SHAPES])
@pytest.mark.parametrize("name", GRAD_NAMES)
def test_dx_gemm_epilogue_is_bitwise_the_gemm_then_the_activation_pass(backend, dtype, name,
                                                                       shape):
    N, M, K = shape
    rng = np.random.default_rng(N * 7919 + M * 31 + K)
    dy = rng.standard_normal((N, M)).astype(dtype)
    if N > 1:
        dy[0, M // 2] = np.inf                  # one row of inf / NaN gradients
    w = rng.standard_normal((M, K)).astype(dtype)
    y, _ = _act_out(name, N, K, dtype, rng)
    before = fr.get_num_threads()
    big = 2.0 * N * M * K >= 4e6
    try:
        for threads in ((1, 2, 3) if big else (1,)):
            fr.set_num_threads(threads)
            plain, want = _separate(dy, w, y, name, backend)
            got = np.full((N, K), 7.0, dtype)
            assert MM.linear_backward_input_act(dy, w, got, y, name, slope=SLOPE, scale=SCALE,
                                                backend=backend) is got
            assert got.tobytes() == want.tobytes(), (name, shape, threads)
    finally:
        fr.set_num_threads(before)
    # against NumPy float64, from the output y: the masks select (an inf gradient where y <= 0
    # gives 0, not inf * 0), the smooth activations multiply
    dy64, w64, y64 = dy.astype(np.float64), w.astype(np.float64), y.astype(np.float64)
    g64, scale = dy64 @ w64, np.abs(dy64) @ np.abs(w64)
    with np.errstate(invalid="ignore"):
        if name == "relu":
            want64, d = np.where(y64 > 0, g64, 0.0), np.where(y64 > 0, 1.0, 0.0)
        elif name == "leaky_relu":
            want64, d = np.where(y64 > 0, g64, g64 * SLOPE), np.where(y64 > 0, 1.0, SLOPE)
        elif name == "relu_dropout":
            s = float(dtype.type(SCALE))
            want64, d = np.where(y64 > 0, g64 * s, 0.0), np.where(y64 > 0, s, 0.0)
        elif name == "sigmoid":
            d = y64 * (1 - y64)
            want64 = g64 * d
        else:
            d = 1 - y64 * y64
            want64 = g64 * d
        tol = (1e-5 if dtype == np.float32 else 1e-12) * (
            np.where(d == 0, 0.0, scale * np.abs(d)) + 1.0)
        finite = np.isfinite(want64)
        assert np.all(np.abs(got[finite] - want64[finite]) <= tol[finite]), (name, shape)
    assert np.array_equal(np.isnan(got), np.isnan(want64))
    assert np.array_equal(np.isinf(got), np.isinf(want64))
    # the epilogue did run: the plain GEMM differs wherever the activation's gradient is not 1
    changed = (np.abs(d - 1.0) > 1e-3) & np.isfinite(plain) & (plain != 0)
    assert changed.any() or N * K == 1          # (1 x 1: tanh at y = 0 has slope 1)
    assert np.all(got[changed] != plain[changed])


def test_dx_gemm_epilogue_against_the_input_side_reference(dtype):
    # f'(z) from the activation's INPUT z (reference.act_grad), the form no kernel uses
    rng = np.random.default_rng(3)
    N, M, K = 37, 45, 29
    dy = rng.standard_normal((N, M)).astype(dtype)
    w = rng.standard_normal((M, K)).astype(dtype)
    for name in ("relu", "leaky_relu", "sigmoid", "tanh"):
        z = rng.standard_normal((N, K))
        y = ref_act(z, name, SLOPE).astype(dtype)
        got = np.empty((N, K), dtype)
        MM.linear_backward_input_act(dy, w, got, y, name, slope=SLOPE)
        want = (dy.astype(np.float64) @ w.astype(np.float64)) * ref_act_grad(z, name, SLOPE)
        rtol = 1e-4 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10, err_msg=name)


def test_dx_gemm_epilogue_identity_is_the_plain_gemm_and_codes_are_accepted():
    rng = np.random.default_rng(0)
    dy, w = rng.standard_normal((9, 5)), rng.standard_normal((5, 4))
    y = np.abs(rng.standard_normal((9, 4)))
    a, b = np.empty((9, 4)), np.empty((9, 4))
    MM.linear_backward_input_act(dy, w, a, y, "identity")
    MM.linear_backward_input(dy, w, b)
    assert a.tobytes() == b.tobytes()
    MM.linear_backward_input_act(dy, w, a, y, GRAD_RELU_DROPOUT, scale=2.0)
    MM.linear_backward_input_act(dy, w, b, y, "RELU_DROPOUT", scale=2.0)
    assert a.tobytes() == b.tobytes()
    assert set(GRAD_CODES) == {"identity", *GRAD_NAMES}


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"activation": "gelu"}, ValueError, r"activation must be one of .*'relu_dropout'.*'gelu'"),
    ({"activation": 9}, ValueError, r"activation code must be one of"),
    ({"activation": True}, TypeError, r"activation must be a name or an integer code"),
    ({"activation": "relu_dropout", "scale": 0.5}, ValueError, r"scale must be >= 1.*0\.5"),
    ({"activation": "relu_dropout", "scale": float("nan")}, ValueError, r"scale"),
    ({"activation": "leaky_relu", "slope": float("inf")}, ValueError, r"slope"),
])
def test_dx_gemm_epilogue_rejects_bad_arguments(kwargs, exc, match):
    rng = np.random.default_rng(0)
    dy, w, y = rng.standard_normal((6, 5)), rng.standard_normal((5, 4)), rng.random((6, 4))
    with pytest.raises(exc, match=match):
        MM.linear_backward_input_act(dy, w, np.empty((6, 4)), y, **kwargs)


def test_dx_gemm_epilogue_checks_act_out():
    rng = np.random.default_rng(0)
    dy, w = rng.standard_normal((6, 5)), rng.standard_normal((5, 4))
    dx = np.empty((6, 4))
    with pytest.raises(ValueError, match=r"act_out must have shape \(6, 4\), got \(4, 6\)"):
        MM.linear_backward_input_act(dy, w, dx, np.ones((4, 6)), "relu")
    with pytest.raises(TypeError, match=r"act_out must have dtype float64, got float32"):
        MM.linear_backward_input_act(dy, w, dx, np.ones((6, 4), np.float32), "relu")
    with pytest.raises(ValueError, match=r"act_out must be C-contiguous"):
        MM.linear_backward_input_act(dy, w, dx, np.ones((4, 6)).T, "relu")
    with pytest.raises(ValueError, match=r"dx must not share memory with act_out"):
        MM.linear_backward_input_act(dy, w, dx, dx, "relu")
    with pytest.raises(TypeError, match=r"act_out must be a numpy.ndarray, got list"):
        MM.linear_backward_input_act(dy, w, dx, [[1.0] * 4] * 6, "relu")


def _act_layer(name):
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(SLOPE), "sigmoid": nn.Sigmoid,
            "tanh": nn.Tanh}[name]()


def _chain(dt, name, fuse, k0=7, norm=nn.BatchNorm1d):
    """Linear -> act -> Linear -> act -> Linear, and a BatchNorm -> ReLU -> Dropout -> Linear
    block (the benchmark step's): three input-gradient fusions, one of them ReLU -> Dropout."""
    fr.manual_seed(0)
    m = nn.Sequential(nn.Linear(k0, 33, dtype=dt), _act_layer(name), nn.Linear(33, 20, dtype=dt),
                      _act_layer(name), nn.Linear(20, 17, dtype=dt), norm(17, dtype=dt),
                      nn.ReLU(), nn.Dropout(0.3), nn.Linear(17, 5, dtype=dt))
    m.fuse = fuse
    return m


def _spy(monkeypatch):
    """Counts of the fused dx GEMM and of the separate activation / ReLU->Dropout passes."""
    calls = {"fused": 0, "act": 0, "relu_dropout": 0}

    def counting(key, f):
        def counted(*a, **k):
            calls[key] += 1
            return f(*a, **k)
        return counted
    monkeypatch.setattr(MM, "run_linear_backward_input_act",
                        counting("fused", MM.run_linear_backward_input_act))
    monkeypatch.setattr(E, "run_activation_backward",
                        counting("act", E.run_activation_backward))
    monkeypatch.setattr(D, "run_relu_dropout_backward",
                        counting("relu_dropout", D.run_relu_dropout_backward))
    return calls


def _train_steps(model, dt, x, input_grad=True, steps=2):
    fr.manual_seed(5)
    g = np.random.default_rng(1)
    got = []
    for _ in range(steps):
        y = model(x).copy()
        for p in model.parameters():
            p.grad = None
        dx = model.backward(g.standard_normal(y.shape).astype(dt), input_grad=input_grad)
        got.append((y, None if dx is None else dx.copy(),
                    [p.grad.copy() for p in model.parameters()]))
    return got


def _ulps(a, b):
    it = np.int32 if a.dtype == np.float32 else np.int64
    return np.abs(a.view(it).astype(np.int64) - b.view(it).astype(np.int64))


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_fused_linear_activation_forward_is_the_unfused_pair_bitwise(backend, dtype, name):
    """Sequential's docstring: Linear + activation in one GEMM epilogue gives the bits of the
    Linear and then the activation layer (the Cython epilogue evaluates Sigmoid / Tanh with the
    elementwise kernels' exp / tanh; it used libm's, 2-3 ulp away)."""
    fr.manual_seed(0)
    m = nn.Sequential(nn.Linear(33, 257, dtype=dtype), _act_layer(name))
    x = (3.0 * np.random.default_rng(0).standard_normal((65, 33))).astype(dtype)
    x[0, :4] = [40.0, -40.0, 100.0, -100.0]        # saturating pre-activations
    fused = m(x)
    m.fuse = False
    unfused = m(x)
    assert fused.dtype == unfused.dtype == dtype
    assert np.isfinite(fused).all()
    assert _ulps(fused, unfused).max() == 0


@contextlib.contextmanager
def _input_grad_fusion_off():
    """Sequential as before this fusion: every other fusion on (the forward's Linear +
    activation, ReLU -> Dropout), so a comparison isolates the input-gradient fusion."""
    saved = L.Linear._fuses_input_grad
    L.Linear._fuses_input_grad = lambda self, through: False
    try:
        yield
    finally:
        L.Linear._fuses_input_grad = saved


def _assert_same_bits(a, b):
    for (y1, dx1, g1), (y2, dx2, g2) in zip(a, b):
        assert y1.tobytes() == y2.tobytes()
        assert (dx1 is None) == (dx2 is None)
        if dx1 is not None:
            assert dx1.tobytes() == dx2.tobytes()
        for u, v in zip(g1, g2):
            assert u.tobytes() == v.tobytes()


@pytest.mark.parametrize("n", [1, 2, 7, 33, 257, 1030])
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_sequential_input_grad_fusion_is_bitwise_the_unfused_layers(backend, dtype, name, n,
                                                                    monkeypatch):
    fr.set_backend(backend)
    try:
        dt = dtype.type
        x = np.random.default_rng(n).standard_normal((n, 7)).astype(dt)
        norm = nn.LayerNorm if n == 1 else nn.BatchNorm1d    # (no batch statistics of 1 row)
        with _input_grad_fusion_off():
            plain = _train_steps(_chain(dt, name, True, norm=norm), dt, x)
        calls = _spy(monkeypatch)
        fused_model = _chain(dt, name, True, norm=norm)
        fused = _train_steps(fused_model, dt, x)
        # per step: 3 fused dx GEMMs; Cython applies the activations in their epilogues, the
        # numba backend's fallback runs the separate passes after its GEMMs
        sep = backend == "numba"
        assert calls == {"fused": 3 * 2, "act": 2 * 2 * sep, "relu_dropout": 2 * sep}
        assert fused_model[7]._cache[0] == "relu"
        _assert_same_bits(fused, plain)
    finally:
        fr.set_backend("auto")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sequential_input_grad_fusion_is_bitwise_at_every_thread_count(threads):
    before = fr.get_num_threads()
    fr.set_num_threads(threads)
    try:
        for dt in (np.float32, np.float64):
            fr.manual_seed(0)
            x = np.random.default_rng(2).standard_normal((300, 64)).astype(dt)
            a = _train_steps(_chain(dt, "relu", True, k0=64), dt, x, input_grad=False)
            with _input_grad_fusion_off():
                b = _train_steps(_chain(dt, "relu", True, k0=64), dt, x, input_grad=False)
            _assert_same_bits(a, b)
            c = _train_steps(_chain(dt, "relu", False, k0=64), dt, x, input_grad=False)
            _assert_same_bits(a, c)     # ReLU: the unfused layers' bits too
    finally:
        fr.set_num_threads(before)


def test_sequential_input_grad_fusion_on_3d_input_and_when_the_next_step_is_not_a_linear(
        monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 3, 6))

    def model():
        fr.manual_seed(1)
        f64 = np.float64
        return nn.Sequential(nn.Linear(6, 8, dtype=f64), nn.Tanh(), nn.Linear(8, 5, dtype=f64),
                             nn.LayerNorm(5, dtype=f64), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(5, 4, dtype=f64), nn.Sigmoid(), nn.LayerNorm(4, dtype=f64))
    with _input_grad_fusion_off():
        plain = _train_steps(model(), np.float64, x)
    calls = _spy(monkeypatch)
    fused = _train_steps(model(), np.float64, x)
    _assert_same_bits(fused, plain)
    # per step: Linear(8, 5) takes Tanh's backward, Linear(5, 4) the ReLU -> Dropout's; the
    # Sigmoid before the LayerNorm keeps its own pass
    assert calls == {"fused": 2 * 2, "act": 2 * 1, "relu_dropout": 0}


def test_sequential_input_grad_fusion_matches_finite_differences():
    f64 = np.float64
    fr.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6, dtype=f64), nn.Sigmoid(), nn.Linear(6, 7, dtype=f64),
                          nn.LeakyReLU(0.2), nn.Linear(7, 6, dtype=f64), nn.Tanh(),
                          nn.Linear(6, 8, dtype=f64), nn.LayerNorm(8, dtype=f64), nn.ReLU(),
                          nn.Dropout(0.25), nn.Linear(8, 3, dtype=f64))
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 5))
    t = rng.integers(0, 3, 11)

    def loss_at():
        fr.manual_seed(99)                   # the same dropout mask at every evaluation
        return loss_fn(model(x), t)

    loss_at()
    model.zero_grad()
    dx = model.backward(loss_fn.backward()).copy()
    assert model[9]._cache[0] == "relu"      # the ReLU -> Dropout pair fused
    assert_model_gradients_match_central_differences(loss_at, model, x, dx, rng, per_param=5,
                                                     x_indices=[(0, 0), (5, 2), (10, 4)])


def test_sequential_under_autocast_keeps_the_separate_pass_and_its_bits(monkeypatch):
    f32 = np.float32
    x = np.random.default_rng(0).standard_normal((40, 7)).astype(f32)
    outs = []
    for off in (False, True):
        with fr.amp.autocast("bf16"), (_input_grad_fusion_off() if off
                                       else contextlib.nullcontext()):
            outs.append(_train_steps(_chain(f32, "tanh", True), f32, x))
    _assert_same_bits(*outs)
    calls = _spy(monkeypatch)
    with fr.amp.autocast("bf16"):
        _train_steps(_chain(f32, "tanh", True), f32, x, steps=1)
    assert calls["fused"] == 0 and calls["act"] == 2 and calls["relu_dropout"] == 1


def test_bf16_linear_given_through_applies_the_separate_pass():
    # Sequential never passes _through to a layer recorded under autocast; if it did, the
    # layer must still return the gradient through the activation (run_act_grad_pass)
    f32 = np.float32
    rng = np.random.default_rng(0)
    fr.manual_seed(0)
    lin = nn.Linear(6, 4, dtype=f32)
    x = np.tanh(rng.standard_normal((5, 6))).astype(f32)
    dy = rng.standard_normal((5, 4)).astype(f32)
    with fr.amp.autocast("bf16"):
        lin(x)
    plain = lin.backward(dy).copy()
    want = np.empty_like(plain)
    E.activation_backward(plain, x, want, "tanh")
    with fr.amp.autocast("bf16"):
        lin(x)
    got = lin.backward(dy, _through=(x, E.activation_code("tanh"), 0.01))
    assert got.tobytes() == want.tobytes()
    assert not np.array_equal(got, plain)


def test_linear_backward_takes_through_only_from_sequential():
    # the private keywords default to the unfused behaviour: a direct call is unchanged
    import inspect
    sig = inspect.signature(L.Linear.backward)
    assert sig.parameters["_preact"].default is False
    assert sig.parameters["_through"].default is None
    assert inspect.signature(L.Dropout.backward).parameters["_preact"].default is False
