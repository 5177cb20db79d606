"""The training step's fusions and its allocation-free steady state (issue 15, item 1).

* ReLU -> Dropout in a Sequential runs as one kernel each way (``relu_dropout_forward`` /
  ``relu_dropout_backward``); outputs, masks, input gradients and parameter gradients must equal
  the unfused layers bit for bit, on every CPU backend and both dtypes.
* After warm-up, a training step (forward, loss, zero_grad, backward, AdamW step) allocates no
  arrays but the logits ``model(x)`` returns (the caller's copy): tracemalloc sees no other
  block the size of an activation.
"""
import tracemalloc

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg._kernels import dropout as D
from fastreg._kernels import elementwise as E

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
