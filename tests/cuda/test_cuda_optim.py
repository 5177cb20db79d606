"""CUDA fused optimizer updates (numba's simulator without a GPU): the grid-stride loop and
device-specific behaviour, against the CPU backend and the float64 reference (tests/reference.py)
over several steps.

Every algorithm with every flag combination (n = 33) and everything on at once at n = 1 and 7
run in tests/test_kernels_reference.py. The first of the three steps is each trajectory's first
step (SGD's ``first_step`` branch, Adam's bias corrections at t = 1); n = 1000 exceeds the
simulator's 2 blocks of 256 threads, so the grid-stride loop runs.
"""

import numpy as np
import pytest
import reference as ref

from fastreg._kernels import optim as K
from fastreg._kernels.runtime import cuda as _cuda_runtime

DTYPES = (np.float32, np.float64)
STEPS = 3
#: GPU vs CPU backend (same order of operations; FMA contraction may differ).
CPU_TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-13)}
#: Kernel vs float64 reference of one step from the kernel's own inputs (as the CPU tests).
REF_TOL = {np.float32: (1e-4, 1e-4), np.float64: (1e-10, 1e-10)}
PENALTIES = {"weight_decay": 0.1, "l1": 0.01, "l2": 0.02}


# ----------------------------------------------------------------------------- reference
def ref_step(kind, w, g, s, t, o):
    """One step of torch.optim's algorithm in float64 (tests/reference.py); updates ``s``."""
    return ref.OPTIMIZERS[kind][0](w, g, s, t, **o)


# ----------------------------------------------------------------------------- drivers
needed = ref.optim_state_needed


def step(kind, w, g, b, t, o, backend=None):
    if kind == "sgd":
        K.sgd_step(w, g, b.get("buf"), first_step=(t == 1), backend=backend, **o)
    elif kind == "adam":
        K.adam_step(w, g, b["m"], b["v"], b.get("vmax"), step=t, backend=backend, **o)
    elif kind == "rmsprop":
        K.rmsprop_step(w, g, b["sq"], b.get("ga"), b.get("buf"), backend=backend, **o)
    elif kind == "adagrad":
        K.adagrad_step(w, g, b["sum"], step=t, backend=backend, **o)
    else:
        K.adadelta_step(w, g, b["sq"], b["acc"], backend=backend, **o)


def check_trajectory(dev, kind, o, n, dtype, seed=0):
    """STEPS steps on the device and on the CPU backend from the same start and gradients."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(dtype)
    w[: max(1, n // 10)] = 0                    # exact zeros: sign(0) = 0 in the L1 gradient
    init = 0.1 if kind == "adagrad" else 0.0
    cpu = {k: np.full(n, init, dtype) for k in needed(kind, o)}
    gpu = {k: dev(v) for k, v in cpu.items()}
    dw, w0 = dev(w), w.copy()
    crtol, catol = CPU_TOL[dtype]
    rrtol, ratol = REF_TOL[dtype]
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n).astype(dtype)
        w_in = dw.copy_to_host().astype(np.float64)
        s64 = {k: v.copy_to_host().astype(np.float64) for k, v in gpu.items()}
        want = ref_step(kind, w_in, g.astype(np.float64), s64, t, o)
        step(kind, dw, dev(g), gpu, t, o)
        step(kind, w, g, cpu, t, o, backend="numba")
        got = dw.copy_to_host()
        assert got.dtype == dtype
        msg = f"{kind} {o} n={n} step {t}"
        np.testing.assert_allclose(got, w, rtol=crtol, atol=catol, err_msg="param vs cpu " + msg)
        np.testing.assert_allclose(got, want, rtol=rrtol, atol=ratol, err_msg="param vs ref " + msg)
        for k, v in gpu.items():
            np.testing.assert_allclose(v.copy_to_host(), cpu[k], rtol=crtol, atol=catol,
                                       err_msg=f"{k} vs cpu {msg}")
            np.testing.assert_allclose(v.copy_to_host(), s64[k], rtol=rrtol, atol=ratol,
                                       err_msg=f"{k} vs ref {msg}")
    assert not np.array_equal(got, w0)                            # the steps did something


ALL_ON = [("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, **PENALTIES}),
          ("adam", {"lr": 0.01, "amsgrad": True, "decoupled_weight_decay": True, **PENALTIES}),
          ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.5, **PENALTIES}),
          ("adagrad", {"lr": 0.1, "lr_decay": 0.2, **PENALTIES}),
          ("adadelta", {"lr": 1.0, "maximize": True, **PENALTIES})]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", [1000])
@pytest.mark.parametrize("kind,o", ALL_ON, ids=[k for k, _ in ALL_ON])
def test_sizes_match_cpu_and_reference(dev, kind, o, n, dtype):
    check_trajectory(dev, kind, o, n, dtype, seed=n)


def test_unused_buffers_are_cached_length_0_device_arrays(dev):
    w, g = dev(np.ones(5)), dev(np.ones(5))
    K.sgd_step(w, g, np.zeros(3), lr=0.5)       # not required: ignored, even on the host
    np.testing.assert_array_equal(w.copy_to_host(), 0.5)
    assert K._check_buffers(w, g, momentum_buffer=(None, False)) is True    # on the device
    bufs = K._bufs(np.dtype(np.float64), True, None)
    assert len(bufs) == 3 and all(_cuda_runtime.is_device_array(b) and b.size == 0
                                  for b in bufs)
    assert bufs[0] is K._empty(np.dtype(np.float64), True)
    assert K._empty(np.dtype(np.float32), True).dtype == np.float32


def test_length_zero_is_a_no_op(dev):
    e = dev(np.empty(0, np.float32))
    K.adam_step(e, dev(np.empty(0, np.float32)), dev(np.empty(0, np.float32)),
                dev(np.empty(0, np.float32)), None, step=1)


# ----------------------------------------------------------------------------- bad input
def _adam_args(dev, n=8, dtype=np.float64):
    return [dev(np.ones(n, dtype)), dev(np.ones(n, dtype)), dev(np.zeros(n, dtype)),
            dev(np.zeros(n, dtype)), None]


@pytest.mark.parametrize("pos,bad,exc,match", [
    (1, np.ones(8), ValueError, "CUDA device array but .* host"),
    (3, np.zeros(8), ValueError, "CUDA device array but .* host"),
])
def test_host_device_mix_is_rejected(dev, pos, bad, exc, match):
    args = _adam_args(dev)
    args[pos] = bad
    with pytest.raises(exc, match=match):
        K.adam_step(*args, step=1)
    np.testing.assert_array_equal(args[0].copy_to_host(), 1.0)        # nothing ran


@pytest.mark.parametrize("pos,bad,exc,match", [
    (0, np.ones(8, np.int32), TypeError, "param must have dtype float32 or float64, got int32"),
    (1, np.ones(8, np.float32), TypeError, "grad must have dtype float64, got float32"),
    (2, np.zeros(8, np.float32), TypeError, "exp_avg must have dtype float64"),
    (1, np.ones(9), ValueError, r"grad must have shape \(8\)"),
    (3, np.zeros(7), ValueError, r"exp_avg_sq must have shape \(8\)"),
    (0, np.ones((2, 4)), ValueError, "param must be 1-dimensional"),
])
def test_wrong_dtype_or_shape_device_arrays_are_rejected(dev, pos, bad, exc, match):
    args = _adam_args(dev)
    args[pos] = dev(bad)
    with pytest.raises(exc, match=match):
        K.adam_step(*args, step=1)


def test_missing_buffers_overlap_and_cpu_backend_are_rejected_on_device(dev):
    w, g = dev(np.ones(4)), dev(np.ones(4))
    with pytest.raises(TypeError, match="max_exp_avg_sq"):
        K.adam_step(w, g, dev(np.zeros(4)), dev(np.zeros(4)), None, step=1, amsgrad=True)
    with pytest.raises(TypeError, match="momentum_buffer"):
        K.sgd_step(w, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="param and grad must not share memory"):
        K.sgd_step(w, w, None, lr=0.1)
    buf = dev(np.zeros(8))
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq must not share memory"):
        K.adam_step(w, g, buf[:4], buf[2:6], None, step=1)
    with pytest.raises(ValueError, match="backend 'cython' runs on the CPU"):
        K.sgd_step(w, g, None, lr=0.1, backend="cython")
    np.testing.assert_array_equal(w.copy_to_host(), 1.0)
