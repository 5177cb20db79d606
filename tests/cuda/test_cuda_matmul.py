"""CUDA linear-layer products (fastreg._kernels.matmul on device arrays): launch geometry and
device-specific behaviour, in numba's CUDA simulator. Small shapes, every activation with and
without bias, and the weight-gradient flags on small shapes run in tests/test_kernels_reference.py
(against tests/reference.py and the CPU backend).

Shapes: x (N, K), weight (M, K), bias (M,), out (N, M); dy (N, M), dx (N, K), dweight (M, K).
The simulator runs every GPU thread as a Python thread (~0.2 s per 64 x 64 tile and depth slab
of 16), so the shapes are small but still cross tile edges, several tiles and several slabs.
"""
import numpy as np
import pytest
from reference import linear_backward_input as ref_backward_input
from reference import linear_backward_weight as ref_backward_weight
from reference import linear_forward as ref_forward

from fastreg._kernels import matmul as mm
from fastreg._kernels.common.codes import ACTIVATIONS
from fastreg._kernels.matmul import cuda as mc
from fastreg._kernels.runtime import cuda as _cuda_runtime

# (N, K, M). (33, 70, 17): a deep forward (5 slabs), 2 column tiles in both backward passes;
# (70, 40, 90): 2 x 2 output tiles forward, 2 row tiles of dweight / dbias, up to 6 slabs.
SHAPES = [(33, 70, 17), (70, 40, 90)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
CPU = "numba"


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def host(a):
    return a.copy_to_host()


def assert_close(got, want, scale, dtype):
    """|got - want| <= rtol * scale + atol, the tolerances of tests/test_matmul.py."""
    rtol, atol = (1e-5, 1e-5) if np.dtype(dtype) == np.float32 else (1e-12, 1e-12)
    err = np.abs(got.astype(np.float64) - want)
    bound = rtol * scale + atol
    assert np.all(err <= bound), f"max err {err.max():.3g}, worst ratio {(err / bound).max():.3g}"


def assert_matches_cpu(got, cpu, scale, dtype):
    """Same inputs on the CPU backend: both within the reference bound of the exact result."""
    assert_close(got, cpu.astype(np.float64), 2 * scale, dtype)


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_linear_forward_matches_reference_and_cpu(shape, dtype, dev, rng):
    N, K, M = shape
    x, w, b = rand(rng, (N, K), dtype), rand(rng, (M, K), dtype), rand(rng, M, dtype)
    out = dev(np.full((N, M), np.nan, dtype))
    assert mm.linear_forward(dev(x), dev(w), dev(b), out, "relu") is out
    got = host(out)
    want, scale = ref_forward(x, w, b, "relu")
    assert_close(got, want, scale, dtype)
    cpu = mm.linear_forward(x, w, b, np.empty((N, M), dtype), "relu", backend=CPU)
    assert_matches_cpu(got, cpu, scale, dtype)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_fused_activation_propagates_nan(activation, dev, rng):
    N, K, M = 5, 3, 6
    x, w, b = rand(rng, (N, K), np.float32), rand(rng, (M, K), np.float32), rand(rng, M, np.float32)
    x[2, 1] = np.nan
    out = dev(np.zeros((N, M), np.float32))
    mm.linear_forward(dev(x), dev(w), dev(b), out, activation)
    got = host(out)
    assert np.isnan(got[2]).all()
    assert not np.isnan(np.delete(got, 2, axis=0)).any()


def test_sigmoid_saturates_without_overflow_noise(dev):
    x = np.array([[1.0], [-1.0]], np.float32)
    w = np.array([[200.0]], np.float32)
    out = dev(np.empty((2, 1), np.float32))
    mm.linear_forward(dev(x), dev(w), None, out, "sigmoid")
    np.testing.assert_array_equal(host(out), [[1.0], [0.0]])


@pytest.mark.parametrize("N,K,M", [(5, 0, 3), (0, 4, 3), (4, 3, 0)])
def test_linear_forward_empty_dimensions(N, K, M, dev):
    b = np.arange(M, dtype=np.float64) - 1
    out = dev(np.full((N, M), np.nan))
    mm.linear_forward(dev(np.ones((N, K))), dev(np.ones((M, K))), dev(b), out, "relu")
    np.testing.assert_array_equal(host(out), np.broadcast_to(np.maximum(b, 0), (N, M)))


# ---------------------------------------------------------------- backward
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_linear_backward_input_matches_reference_and_cpu(shape, dtype, dev, rng):
    N, K, M = shape
    dy, w = rand(rng, (N, M), dtype), rand(rng, (M, K), dtype)
    dx = dev(np.full((N, K), np.nan, dtype))
    assert mm.linear_backward_input(dev(dy), dev(w), dx) is dx
    got = host(dx)
    want, scale = ref_backward_input(dy, w)
    assert_close(got, want, scale, dtype)
    cpu = mm.linear_backward_input(dy, w, np.empty((N, K), dtype), backend=CPU)
    assert_matches_cpu(got, cpu, scale, dtype)


@pytest.mark.parametrize("name", ["tanh", "relu_dropout"])
def test_linear_backward_input_act_is_the_gemm_then_the_activation_pass(name, dev, rng):
    # no CUDA epilogue: the device GEMM, then the activation's own device kernel, in place
    N, K, M = SHAPES[0]
    dtype = np.float32
    dy, w = rand(rng, (N, M), dtype), rand(rng, (M, K), dtype)
    y = np.tanh(rand(rng, (N, K), dtype)) if name == "tanh" else \
        np.maximum(rand(rng, (N, K), dtype), 0) * dtype(2.0)
    dx = dev(np.full((N, K), np.nan, dtype))
    assert mm.linear_backward_input_act(dev(dy), dev(w), dx, dev(y), name, scale=2.0) is dx
    got = host(dx)
    g, scale = ref_backward_input(dy, w)
    y64 = y.astype(np.float64)
    want = g * (1 - y64 * y64) if name == "tanh" else np.where(y64 > 0, 2.0 * g, 0.0)
    assert_close(got, want, 2 * scale, dtype)
    cpu = mm.linear_backward_input_act(dy, w, np.empty((N, K), dtype), y, name, scale=2.0,
                                       backend=CPU)
    assert_matches_cpu(got, cpu, 2 * scale, dtype)


def _weight_grads(dy, x, dw0, db0, accumulate):
    """Reference dweight, dbias (None if db0 is None) and their scales."""
    want_w, scale_w, want_b, scale_b = ref_backward_weight(dy, x)
    if accumulate:
        want_w, scale_w = want_w + dw0, scale_w + np.abs(dw0)
        if db0 is not None:
            want_b, scale_b = want_b + db0, scale_b + np.abs(db0)
    return want_w, scale_w, want_b, scale_b


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_linear_backward_weight_matches_reference_and_cpu(shape, dtype, dev, rng):
    N, K, M = shape
    dy, x = rand(rng, (N, M), dtype), rand(rng, (N, K), dtype)
    dw0, db0 = rand(rng, (M, K), dtype), rand(rng, M, dtype)
    dw, db = dev(dw0), dev(db0)
    assert mm.linear_backward_weight(dev(dy), dev(x), dw, db, True) is None
    got_w, got_b = host(dw), host(db)
    want_w, scale_w, want_b, scale_b = _weight_grads(dy, x, dw0, db0, True)
    assert_close(got_w, want_w, scale_w, dtype)
    assert_close(got_b, want_b, scale_b, dtype)
    cpu_w, cpu_b = dw0.copy(), db0.copy()
    mm.linear_backward_weight(dy, x, cpu_w, cpu_b, True, backend=CPU)
    assert_matches_cpu(got_w, cpu_w, scale_w, dtype)
    assert_matches_cpu(got_b, cpu_b, scale_b, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("accumulate", [True, False], ids=["acc", "overwrite"])
@pytest.mark.parametrize("with_dbias", [True, False], ids=["dbias", "nodbias"])
def test_linear_backward_weight_flags(with_dbias, accumulate, dtype, dev, rng):
    # K = 70: two column tiles of dweight, of which only tile 0 may add to dbias
    N, K, M = 6, 70, 5
    dy, x = rand(rng, (N, M), dtype), rand(rng, (N, K), dtype)
    dw0 = rand(rng, (M, K), dtype)
    db0 = rand(rng, M, dtype) if with_dbias else None
    # overwrite: NaN in the old gradients shows any read of them
    dw = dev(dw0 if accumulate else np.full((M, K), np.nan, dtype))
    db = None if db0 is None else dev(db0 if accumulate else np.full(M, np.nan, dtype))
    mm.linear_backward_weight(dev(dy), dev(x), dw, db, accumulate=accumulate)
    want_w, scale_w, want_b, scale_b = _weight_grads(dy, x, dw0, db0, accumulate)
    assert_close(host(dw), want_w, scale_w, dtype)
    if db is not None:
        assert_close(host(db), want_b, scale_b, dtype)


def test_backward_weight_empty_batch_overwrites_with_zeros(dev):
    dw, db = dev(np.ones((3, 4))), dev(np.ones(3))
    mm.linear_backward_weight(dev(np.ones((0, 3))), dev(np.ones((0, 4))), dw, db,
                              accumulate=False)
    assert not host(dw).any() and not host(db).any()


def test_backward_input_empty_depth_gives_zeros(dev):
    dx = dev(np.full((4, 3), np.nan, np.float32))
    mm.linear_backward_input(dev(np.ones((4, 0), np.float32)), dev(np.ones((0, 3), np.float32)),
                             dx)
    np.testing.assert_array_equal(host(dx), 0)


# ---------------------------------------------------------------- the large tile
def test_large_tile_all_layouts(dev, rng):
    """TILE_LARGE (picked on a GPU for big float32 outputs) on the three products, each with
    130 output rows or columns (2 tiles of 128) and 2 or 3 depth slabs of 8."""
    N, K, M, dt, tile = 9, 20, 130, np.float32, mc.TILE_LARGE
    identity = ACTIVATIONS["identity"]
    x, w, b = rand(rng, (N, K), dt), rand(rng, (M, K), dt), rand(rng, M, dt)
    out = dev(np.empty((N, M), dt))  # (9, 130) = x (9, 20) @ w.T
    mc._gemm(N, M, K, dev(x), K, True, dev(w), K, True, out, False, dev(b), ACTIVATIONS["tanh"],
             0.0, None, tile=tile)
    want, scale = ref_forward(x, w, b, "tanh")
    assert_close(host(out), want, scale, dt)
    dy, w2 = rand(rng, (N, K), dt), rand(rng, (K, M), dt)
    dx = dev(np.empty((N, M), dt))  # (9, 130) = dy (9, 20) @ w2 (20, 130)
    mc._gemm(N, M, K, dev(dy), K, True, dev(w2), M, False, dx, False, None, identity, 0.0, None,
             tile=tile)
    assert_close(host(dx), *ref_backward_input(dy, w2), dt)
    dy = rand(rng, (N, M), dt)
    dw0, db0 = rand(rng, (M, K), dt), rand(rng, M, dt)
    dw, db = dev(dw0), dev(db0)  # (130, 20) += dy.T (130, 9) @ x (9, 20), dbias over 130 rows
    mc._gemm(M, K, N, dev(dy), M, False, dev(x), K, False, dw, True, None, identity, 0.0, db,
             tile=tile)
    want_w, scale_w, want_b, scale_b = _weight_grads(dy, x, dw0, db0, True)
    assert_close(host(dw), want_w, scale_w, dt)
    assert_close(host(db), want_b, scale_b, dt)


def test_tile_choice(monkeypatch):
    assert mc._pick_tile(np.dtype(np.float32), 4096, 4096) == mc.TILE_SMALL  # simulator
    monkeypatch.setattr(_cuda_runtime, "simulator", lambda: False)
    monkeypatch.setitem(mc._state, "sm_count", 132)
    assert mc._pick_tile(np.dtype(np.float32), 4096, 4096) == mc.TILE_LARGE
    assert mc._pick_tile(np.dtype(np.float64), 4096, 4096) == mc.TILE_SMALL
    assert mc._pick_tile(np.dtype(np.float32), 256, 1024) == mc.TILE_SMALL  # 16 large blocks


# ---------------------------------------------------------------- bad input
def _fwd(dev, dtype=np.float64, N=4, K=3, M=2):
    return [dev(np.ones((N, K), dtype)), dev(np.ones((M, K), dtype)), dev(np.ones(M, dtype)),
            dev(np.zeros((N, M), dtype))]


@pytest.mark.parametrize("which", range(4), ids=["x", "weight", "bias", "out"])
def test_host_device_mix_is_rejected(which, dev):
    args = _fwd(dev)
    args[which] = host(args[which])
    with pytest.raises(ValueError, match="device array but .* is a host"):
        mm.linear_forward(*args)


def test_backward_host_device_mix_is_rejected(dev):
    with pytest.raises(ValueError, match="dx is a host"):
        mm.linear_backward_input(dev(np.ones((4, 2))), dev(np.ones((2, 3))), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dbias is a host"):
        mm.linear_backward_weight(dev(np.ones((4, 2))), dev(np.ones((4, 3))),
                                  dev(np.zeros((2, 3))), np.zeros(2))


@pytest.mark.parametrize("which,bad,exc,match", [
    (0, np.ones((4, 3), np.int64), TypeError, "x must have dtype float32 or float64"),
    (1, np.ones((2, 3), np.float32), TypeError, "weight must have dtype float64"),
    (2, np.ones(2, np.float32), TypeError, "bias must have dtype float64"),
    (3, np.zeros((4, 2), np.float32), TypeError, "out must have dtype float64"),
    (1, np.ones((2, 4)), ValueError, r"x \(4, 3\).*weight \(2, 4\)"),
    (2, np.ones(3), ValueError, r"weight \(2, 3\).*bias \(3,\)"),
    (3, np.zeros((4, 3)), ValueError, r"out must have shape.*\(4, 2\).*got out \(4, 3\)"),
    (0, np.ones(3), ValueError, "x must be 2-dimensional"),
])
def test_linear_forward_rejects_bad_device_arrays(which, bad, exc, match, dev):
    args = _fwd(dev)
    args[which] = dev(bad)
    with pytest.raises(exc, match=match):
        mm.linear_forward(*args)


def test_backward_rejects_bad_device_arrays(dev):
    dy, w, x = dev(np.ones((4, 2))), dev(np.ones((2, 3))), dev(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dx must have shape.*got dx \(4, 2\)"):
        mm.linear_backward_input(dy, w, dev(np.zeros((4, 2))))
    with pytest.raises(TypeError, match="dx must have dtype float64"):
        mm.linear_backward_input(dy, w, dev(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match=r"dweight must have shape.*got dweight \(3, 2\)"):
        mm.linear_backward_weight(dy, x, dev(np.zeros((3, 2))), None)
    with pytest.raises(TypeError, match="dbias must have dtype float64"):
        mm.linear_backward_weight(dy, x, dev(np.zeros((2, 3))), dev(np.zeros(2, np.float32)))


def test_overlapping_device_output_is_rejected(dev):
    buf = dev(np.ones(20))
    x, out = buf[:12].reshape(4, 3), buf[10:18].reshape(4, 2)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        mm.linear_forward(x, dev(np.ones((2, 3))), None, out)
    np.testing.assert_array_equal(host(buf), 1.0)  # nothing was written
    with pytest.raises(ValueError, match="dweight must not share memory with dbias"):
        wb = dev(np.zeros(8))
        mm.linear_backward_weight(dev(np.ones((4, 2))), dev(np.ones((4, 3))),
                                  wb[:6].reshape(2, 3), wb[5:7])


def test_cpu_backend_with_device_arrays_is_rejected(dev):
    with pytest.raises(ValueError, match="runs on the CPU but the arrays are CUDA device"):
        mm.linear_forward(*_fwd(dev), backend="numba")
