"""Fused optimizer kernels (fastreg/_kernels/optim/) against a NumPy float64 reference.

The reference (tests/reference.py) is written independently from the kernels, straight from
the algorithms as torch.optim documents them; it needs no torch. Every kernel runs on every
backend and dtype, at lengths that hit the vector remainder loops and the parallel block
boundary (16384).
"""
import numpy as np
import pytest
import reference as ref
from conftest import tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastreg
from fastreg._kernels import optim as K

SIZES = (1, 7, 33, 1000, 40000)
N_STEPS = 3


# ----------------------------------------------------------------------------- reference
# tests/reference.py: one step of each algorithm in float64, straight from torch.optim's docs
ref_sgd, ref_adam, ref_rmsprop = ref.sgd_step, ref.adam_step, ref.rmsprop_step
ref_adagrad, ref_adadelta = ref.adagrad_step, ref.adadelta_step


# ----------------------------------------------------------------------------- drivers
# For each kernel: reference, state names (reference key, kernel argument, needed when), and a
# function calling the kernel with the state arrays.
def _run_kernel(kind, w, g, bufs, t, opts, backend):
    o = dict(opts)
    if kind == "sgd":
        K.sgd_step(w, g, bufs.get("buf"), first_step=(t == 1), backend=backend, **o)
    elif kind == "adam":
        K.adam_step(w, g, bufs["m"], bufs["v"], bufs.get("vmax"), step=t, backend=backend, **o)
    elif kind == "rmsprop":
        K.rmsprop_step(w, g, bufs["sq"], bufs.get("ga"), bufs.get("buf"), backend=backend, **o)
    elif kind == "adagrad":
        K.adagrad_step(w, g, bufs["sum"], step=t, backend=backend, **o)
    else:
        K.adadelta_step(w, g, bufs["sq"], bufs["acc"], backend=backend, **o)


REFS = {"sgd": ref_sgd, "adam": ref_adam, "rmsprop": ref_rmsprop, "adagrad": ref_adagrad,
        "adadelta": ref_adadelta}
STATE = {"sgd": ("buf",), "adam": ("m", "v", "vmax"), "rmsprop": ("sq", "ga", "buf"),
         "adagrad": ("sum",), "adadelta": ("sq", "acc")}

CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, "l1": 0.01,
             "l2": 0.02}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "l2": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True,
              "beta1": 0.5, "beta2": 0.9, "l1": 0.01}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "centered": True, "weight_decay": 0.1}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "maximize": True, "alpha": 0.9,
                 "l1": 0.01}),
    ("adagrad", {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1, "maximize": True, "l2": 0.1}),
    ("adadelta", {"lr": 1.0}),
    ("adadelta", {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1, "maximize": True, "l1": 0.01}),
]


def _ids(case):
    kind, opts = case
    return kind + "-" + "-".join(f"{k}={v}" for k, v in opts.items())


_needed = ref.optim_state_needed


def _trajectory(kind, opts, n, dtype, backend, seed=0, steps=N_STEPS):
    rng = np.random.default_rng(seed)
    w64 = rng.standard_normal(n)
    w64[: max(1, n // 10)] = 0.0            # exact zeros: sign(0) = 0 in the L1 gradient
    names = _needed(kind, opts)
    init = 0.1 if kind == "adagrad" else 0.0
    st64 = {k: np.full(n, init) for k in names}
    w = w64.astype(dtype)
    bufs = {k: np.full(n, init, dtype=dtype) for k in names}
    for t in range(1, steps + 1):
        g64 = rng.standard_normal(n)
        # Reference from the kernel's own (rounded) inputs, so only one step's rounding counts.
        w64 = w.astype(np.float64)
        st64 = {k: b.astype(np.float64) for k, b in bufs.items()}
        want = REFS[kind](w64, g64, st64, t, **opts)
        _run_kernel(kind, w, g64.astype(dtype), bufs, t, opts, backend)
        yield t, w, want, bufs, st64


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("n", SIZES)
def test_kernel_matches_float64_reference(case, n, backend, dtype):
    kind, opts = case
    rtol, atol = tol(dtype)
    for t, w, want, bufs, st64 in _trajectory(kind, opts, n, dtype, backend):
        np.testing.assert_allclose(w, want, rtol=rtol, atol=atol, err_msg=f"param, step {t}")
        for k, b in bufs.items():
            np.testing.assert_allclose(b, st64[k], rtol=rtol, atol=atol,
                                       err_msg=f"{k}, step {t}")


@pytest.mark.parametrize("case", CASES[1::3], ids=_ids)
def test_one_and_two_threads_give_identical_bits(case, backend):
    kind, opts = case
    results = []
    for threads in (1, 2):
        fastreg.set_num_threads(threads)
        *_, (_t, w, _want, bufs, _st) = _trajectory(kind, opts, 40000, np.float32, backend)
        results.append((w.copy(), {k: b.copy() for k, b in bufs.items()}))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])


def test_codes_mirror_the_c_header():
    cy = pytest.importorskip("fastreg._kernels.optim.cy")
    for name, value in cy.CODES.items():
        assert getattr(K, name) == value, name


def test_length_zero_is_a_no_op(backend, dtype):
    e = np.empty(0, dtype)
    K.adam_step(e, e.copy(), e.copy(), e.copy(), None, step=1, backend=backend)
    K.sgd_step(e, e.copy(), None, lr=0.1, backend=backend)


def test_unused_buffer_is_ignored(backend):
    w, g = np.ones(5), np.ones(5)
    K.sgd_step(w, g, "not used when momentum is 0", lr=0.5, backend=backend)
    np.testing.assert_array_equal(w, 0.5)


# ----------------------------------------------------------------------------- bad input
def _adam_args(n=8, dtype=np.float64):
    return [np.ones(n, dtype), np.ones(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype), None]


@pytest.mark.parametrize("pos,bad,exc,name", [
    (0, np.ones(8, np.int64), TypeError, "param"),
    (0, [1.0] * 8, TypeError, "param"),
    (1, np.ones(8, np.float32), TypeError, "grad"),
    (1, np.ones(9), ValueError, "grad"),
    (2, np.ones(7), ValueError, "exp_avg"),
    (3, None, TypeError, "exp_avg_sq"),
    (0, np.ones((2, 4)), ValueError, "param"),
    (0, np.ones(16)[::2], ValueError, "param"),
    (3, np.zeros(16)[::2], ValueError, "exp_avg_sq"),
])
def test_bad_arrays_name_the_argument(pos, bad, exc, name, backend):
    args = _adam_args()
    args[pos] = bad
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(exc, match=name):
        K.adam_step(*args, step=1, backend=backend)
    for a, b in zip(args, before):          # nothing ran: inputs untouched
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


def test_read_only_outputs_are_rejected(backend):
    args = _adam_args()
    args[0].flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        K.adam_step(*args, step=1, backend=backend)
    args = _adam_args()
    args[2].flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        K.adam_step(*args, step=1, backend=backend)
    args = _adam_args()
    args[1].flags.writeable = False          # the gradient is only read
    K.adam_step(*args, step=1, backend=backend)


def test_overlapping_buffers_are_rejected(backend):
    w, g = np.ones(8), np.ones(8)
    with pytest.raises(ValueError, match="param and grad must not share memory"):
        K.sgd_step(w, w, None, lr=0.1, backend=backend)
    buf = np.zeros(16)
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq must not share memory"):
        K.adam_step(w, g, buf[:8], buf[:8], None, step=1, backend=backend)


def test_required_buffers(backend):
    w, g = np.ones(4), np.ones(4)
    with pytest.raises(TypeError, match="momentum_buffer"):
        K.sgd_step(w, g, None, lr=0.1, momentum=0.9, backend=backend)
    with pytest.raises(TypeError, match="max_exp_avg_sq"):
        K.adam_step(w, g, np.zeros(4), np.zeros(4), None, step=1, amsgrad=True, backend=backend)
    with pytest.raises(TypeError, match="grad_avg"):
        K.rmsprop_step(w, g, np.zeros(4), None, None, centered=True, backend=backend)
    with pytest.raises(TypeError, match="momentum_buffer"):
        K.rmsprop_step(w, g, np.zeros(4), None, None, momentum=0.5, backend=backend)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"lr": -1.0}, ValueError, "lr must be in"),
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number"),
    ({"beta1": 1.0}, ValueError, "beta1 must be in"),
    ({"beta2": -0.1}, ValueError, "beta2 must be in"),
    ({"eps": -1e-8}, ValueError, "eps must be in"),
    ({"step": 0}, ValueError, "step must be in"),
    ({"step": 1.5}, TypeError, "step must be an integer"),
    ({"weight_decay": -1}, ValueError, "weight_decay must be in"),
    ({"l1": -1}, ValueError, "l1 must be in"),
    ({"amsgrad": 1}, TypeError, "amsgrad must be a bool"),
])
def test_bad_scalars_name_the_argument(kwargs, exc, match):
    args = _adam_args()
    kw = {"step": 1, **kwargs}
    with pytest.raises(exc, match=match):
        K.adam_step(*args, **kw)


def test_nesterov_needs_momentum_and_no_dampening():
    w, g = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match="Nesterov"):
        K.sgd_step(w, g, np.zeros(4), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        K.sgd_step(w, g, np.zeros(4), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        K.sgd_step(np.ones(3), np.ones(3), None, lr=0.1, backend="fortran")


# ----------------------------------------------------------------------------- hypothesis
_dtypes = st.sampled_from([np.float32, np.float64, np.int32])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), dn=st.sampled_from([0, 0, 0, 1]), dts=st.tuples(_dtypes, _dtypes,
       _dtypes), amsgrad=st.booleans(), decoupled=st.booleans(),
       lr=st.floats(-0.1, 1.0), wd=st.floats(0, 0.5), step=st.integers(0, 5),
       backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_adam_entry_point(n, dn, dts, amsgrad, decoupled, lr, wd, step, backend):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(dts[0])
    g = rng.standard_normal(n + dn).astype(dts[1])
    m, v, vm = (np.zeros(n, dts[2]) for _ in range(3))
    w0, g0 = w.astype(np.float64), g.astype(np.float64)
    try:
        K.adam_step(w, g, m, v, vm, step=step, lr=lr, weight_decay=wd,
                    decoupled_weight_decay=decoupled, amsgrad=amsgrad, backend=backend)
    except (TypeError, ValueError):
        assert len({dts[0], dts[1], dts[2]}) > 1 or dts[0] == np.int32 or dn or lr < 0 \
            or step < 1
        return
    st64 = {"m": np.zeros(n), "v": np.zeros(n), "vmax": np.zeros(n)}
    want = ref_adam(w0, g0, st64, step, lr=lr, weight_decay=wd,
                    decoupled_weight_decay=decoupled, amsgrad=amsgrad)
    rtol, atol = tol(w.dtype, f32=1e-4, f64=1e-9)
    np.testing.assert_allclose(w, want, rtol=rtol, atol=atol)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), shape2=st.booleans(), dts=st.tuples(_dtypes, _dtypes, _dtypes),
       momentum=st.sampled_from([0.0, 0.5]), nesterov=st.booleans(),
       maximize=st.booleans(), l1=st.floats(0, 0.1), l2=st.floats(0, 0.1),
       backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_sgd_entry_point(n, shape2, dts, momentum, nesterov, maximize, l1, l2,
                                    backend):
    rng = np.random.default_rng(n)
    shape = (n, 2) if shape2 else (n,)
    w = rng.standard_normal(shape).astype(dts[0])
    g = rng.standard_normal(n).astype(dts[1])
    buf = np.zeros(n, dts[2])
    w0 = w.astype(np.float64)
    try:
        K.sgd_step(w, g, buf, lr=0.1, momentum=momentum, nesterov=nesterov, maximize=maximize,
                   first_step=True, l1=l1, l2=l2, backend=backend)
    except (TypeError, ValueError):
        used = {dts[0], dts[1]} | ({dts[2]} if momentum else set())
        assert len(used) > 1 or dts[0] == np.int32 or shape2 or (nesterov and not momentum)
        return
    want = ref_sgd(w0, g.astype(np.float64), {}, 1, lr=0.1, momentum=momentum,
                   nesterov=nesterov, maximize=maximize, l1=l1, l2=l2)
    rtol, atol = tol(w.dtype, f32=1e-5, f64=1e-12)
    np.testing.assert_allclose(w, want, rtol=rtol, atol=atol)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), n=st.integers(1, 40), bad=st.sampled_from(
       [None, "dtype", "length", "ndim", "strided", "readonly"]),
       which=st.integers(0, 3), dtype=st.sampled_from([np.float32, np.float64]),
       backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_every_entry_point(case, n, bad, which, dtype, backend):
    """Any kernel, any option set, one corrupted array: a clean error or the right answer."""
    kind, opts = case
    names = _needed(kind, opts)
    rng = np.random.default_rng(n)
    arrays = {"w": rng.standard_normal(n).astype(dtype), "g": rng.standard_normal(n).astype(dtype)}
    init = 0.1 if kind == "adagrad" else 0.0
    arrays.update({k: np.full(n, init, dtype) for k in names})
    keys = list(arrays)
    target = keys[which % len(keys)]
    if bad == "dtype":
        arrays[target] = arrays[target].astype(np.float64 if dtype == np.float32 else np.float32)
    elif bad == "length":
        arrays[target] = np.zeros(n + 1, dtype)
    elif bad == "ndim":
        arrays[target] = arrays[target].reshape(n, 1)
    elif bad == "strided":
        arrays[target] = np.repeat(arrays[target], 2)[::2]
    elif bad == "readonly" and target != "g":
        arrays[target].flags.writeable = False
    # Harmless corruptions: a read-only gradient (only read) and a length-1 "strided" view
    # (one element is contiguous whatever its stride).
    harmless = (bad == "readonly" and target == "g") or (bad == "strided" and n == 1)
    before = {k: a.astype(np.float64) for k, a in arrays.items()}
    w = arrays.pop("w")
    g = arrays.pop("g")
    try:
        _run_kernel(kind, w, g, arrays, 1, opts, backend)
    except (TypeError, ValueError) as exc:
        assert bad is not None and not harmless, exc
        return
    assert bad is None or harmless
    st64 = {k: before[k] for k in names}
    want = REFS[kind](before["w"], before["g"], st64, 1, **opts)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(w, want, rtol=rtol, atol=atol)
