"""Every public kernel x every backend x float32 / float64 x awkward sizes against the float64
twins of tests/reference.py.

``REGISTRY`` lists one entry per public kernel function of the five families (a test fails when
a public function is missing from it). Each entry builds the call's arguments for a size, a
dtype and a variant (activation, flags, ...), and checks the outputs against the reference.
The backends come from the family's package: every backend module that exists (numba, cy,
blas, cuda) runs every kernel; functions without a ``backend`` argument (the elementwise device
utilities) run their host path ("host") and CUDA. CUDA runs in numba's simulator (tests/
conftest.py) on a few small sizes, and additionally against the numba backend (or the host
path) on the same inputs, with the tolerances tests/cuda used. Launch-geometry edge cases (tiles,
grid-stride loops, several row groups) stay in tests/cuda/.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import reference as ref
from conftest import AWKWARD_SIZES

FAMILIES = ("matmul", "norm", "dropout", "optim", "elementwise")
#: Public functions of a family that are not kernels (no backend runs them), with the reason.
NOT_KERNELS = {
    "dropout": {
        "mask_nbytes": "size arithmetic",
        "philox_blocks": "size arithmetic",
        "philox4x32": "the package's NumPy Philox reference (checked against the KAT here)",
        "dropout_keep_reference": "the package's NumPy mask reference",
    },
}
#: Trusted entry points with no checked public twin: called only from a layer that validated
#: the arrays already (Linear under fr.autocast), tested against float64 in their own file.
TRUSTED_ONLY = {
    "matmul": {"run_linear_forward_bf16": "tests/test_autocast.py",
               "run_linear_backward_input_bf16": "tests/test_autocast.py",
               "run_linear_backward_weight_bf16": "tests/test_autocast.py",
               # the separate activation pass of run_linear_backward_input_act's fallback
               "run_act_grad_pass": "tests/test_step_fusion.py"},
    # Sequential's fused ReLU -> Dropout (its Dropout checked the arrays): bit for bit against
    # the two unfused checked kernels and a NumPy reference, every backend
    "dropout": {"run_relu_dropout_forward": "tests/test_step_fusion.py",
                "run_relu_dropout_backward": "tests/test_step_fusion.py"},
}
CPU_SIZES = AWKWARD_SIZES[:-1] + (1031,)        # 1, 2, 7, 33, 257, 1031
CUDA_SIZES = (1, 2, 7, 33)                       # the simulator runs a Python thread per GPU thread
_BACKEND_MODULE = {"numba": "numba", "cython": "cy", "blas": "blas", "cuda": "cuda"}


def family(name):
    return importlib.import_module(f"fastreg._kernels.{name}")


def public_functions(fam):
    """The family's ``__all__``, or (where it has none) the public functions it defines."""
    mod = family(fam)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, f in vars(mod).items() if not n.startswith("_")
                 and inspect.isfunction(f) and f.__module__ == mod.__name__]
    return set(names)


def backends_of(fam):
    """The backend modules the family has (its cy extension only when built)."""
    return [be for be, mod in _BACKEND_MODULE.items()
            if importlib.util.find_spec(f"fastreg._kernels.{fam}.{mod}") is not None]


def tol(dtype, f32, f64):
    return (f32, f32) if np.dtype(dtype) == np.float32 else (f64, f64)


def close(got, want, dtype, f32, f64, what=""):
    if isinstance(f32, tuple):                  # (rtol, atol) per dtype
        rtol, atol = f32 if np.dtype(dtype) == np.float32 else f64
    else:
        rtol, atol = tol(dtype, f32, f64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)


def within_bound(got, want, scale, dtype, what=""):
    """|got - want| <= rtol * scale + atol: the bound a blocked dot product obeys."""
    rtol, atol = tol(dtype, 1e-5, 1e-12)
    err = np.abs(np.asarray(got, np.float64) - want)
    bound = rtol * scale + atol
    assert np.all(err <= bound), \
        f"{what}: max err {err.max():.3g}, worst ratio {(err / bound).max():.3g}"


def rand(rng, shape, dtype, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def nans(shape, dtype):
    return np.full(shape, np.nan, dtype)


def old(inp, name, accumulate):
    """The accumulated-into start value of an output (0 when overwritten)."""
    return inp[name].astype(np.float64) if accumulate else 0.0


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------

@dataclass
class Kernel:
    family: str
    name: str
    build: Callable     # (rng, size, dtype, variant) -> (args dict, kwargs dict)
    check: Callable     # (inp, out, ret, dtype, variant) -> None; inp/out: host arrays by name
    variants: list = field(default_factory=lambda: [None])
    #: (variant, size) pairs run on CUDA; default every variant at CUDA_SIZES
    cuda: list | None = None
    #: CUDA vs the CPU backend on the same inputs: "equal", (f32, f64) tolerance, or callable
    cpu_match: object = None
    dtypes: tuple = (np.float32, np.float64)
    sizes: tuple = CPU_SIZES

    @property
    def fn(self):
        return getattr(family(self.family), self.name)

    @property
    def takes_backend(self):
        return "backend" in inspect.signature(self.fn).parameters


REGISTRY: list[Kernel] = []


def kernel(fam, **kw):
    def deco(pair):
        build, check = pair
        REGISTRY.append(Kernel(fam, build.__name__.removeprefix("build_"), build, check, **kw))
        return pair
    return deco


# ---------------------------------------------------------------- matmul
def _mm_shape(size):
    """(N, K, M): each awkward size in each position (a cyclic Latin square over the sizes);
    sizes 1 and 2 give (1, 2, 7) and (2, 7, 33), the ones CUDA runs."""
    i = CPU_SIZES.index(size)
    return tuple(CPU_SIZES[(i + j) % len(CPU_SIZES)] for j in range(3))


_MM_FWD = [(a, b) for a in ref.ACTIVATION_NAMES for b in (True, False)]


def build_linear_forward(rng, size, dt, v):
    act, with_bias = v
    N, K, M = _mm_shape(size)
    b = rand(rng, M, dt, scale=3.0) if with_bias else None
    return {"x": rand(rng, (N, K), dt), "weight": rand(rng, (M, K), dt), "bias": b,
            "out": nans((N, M), dt)}, {"activation": act, "slope": 0.2}


def check_linear_forward(inp, out, ret, dt, v):
    act, _ = v
    want, scale = ref.linear_forward(inp["x"], inp["weight"], inp["bias"], act, 0.2)
    within_bound(out["out"], want, scale, dt, "out")
    pre = ref.linear_forward(inp["x"], inp["weight"], inp["bias"])[0]
    if pre.size >= 14 and inp["x"].shape[1] >= 7:    # the data reach both sides of the act.
        assert (pre < 0).any() and (pre > 0).any()
    if act == "relu":            # relu gives +0.0, never -0.0
        assert not np.signbit(out["out"]).any()


def _mm_cpu_match(got, cpu, inp, dt, v, name=None):
    """Both within the reference bound, so within twice the bound of each other."""
    for key, scale in _MM_SCALES[name](inp).items():
        if got[key] is not None:
            within_bound(got[key], cpu[key].astype(np.float64), 2 * scale, dt, key)


_MM_SCALES = {
    "linear_forward": lambda i: {"out": ref.linear_forward(i["x"], i["weight"], i["bias"])[1]},
    "linear_backward_input": lambda i: {"dx": ref.linear_backward_input(i["dy"], i["weight"])[1]},
    "linear_backward_weight": lambda i: dict(zip(
        ("dweight", "dbias"), ref.linear_backward_weight(i["dy"], i["x"])[1::2])),
}

kernel("matmul", variants=_MM_FWD,
       cuda=[(v, 2) for v in _MM_FWD] + [(("relu", True), 1)],
       cpu_match=lambda *a: _mm_cpu_match(*a, name="linear_forward"))(
    (build_linear_forward, check_linear_forward))


def build_linear_backward_input(rng, size, dt, v):
    N, K, M = _mm_shape(size)
    return {"dy": rand(rng, (N, M), dt), "weight": rand(rng, (M, K), dt),
            "dx": nans((N, K), dt)}, {}


def check_linear_backward_input(inp, out, ret, dt, v):
    want, scale = ref.linear_backward_input(inp["dy"], inp["weight"])
    within_bound(out["dx"], want, scale, dt, "dx")


kernel("matmul", cuda=[(None, 1), (None, 2)],
       cpu_match=lambda *a: _mm_cpu_match(*a, name="linear_backward_input"))(
    (build_linear_backward_input, check_linear_backward_input))

_MM_ACT_GRAD = ["relu", "leaky_relu", "sigmoid", "tanh", "relu_dropout"]


def _act_grad_from_output(y, name):
    """f'(z) from the activation's (or the fused ReLU -> Dropout's, scale 2) output y."""
    y = y.astype(np.float64)
    return {"relu": (y > 0) * 1.0, "leaky_relu": np.where(y > 0, 1.0, 0.2),
            "sigmoid": y * (1 - y), "tanh": 1 - y * y, "relu_dropout": (y > 0) * 2.0}[name]


def build_linear_backward_input_act(rng, size, dt, v):
    N, K, M = _mm_shape(size)
    z = rng.standard_normal((N, K))
    y = (ref.act(z, v, 0.2) if v != "relu_dropout"
         else np.where(rng.random((N, K)) < 0.3, 0.0, 2.0 * ref.act(z, "relu"))).astype(dt)
    return {"dy": rand(rng, (N, M), dt), "weight": rand(rng, (M, K), dt), "dx": nans((N, K), dt),
            "act_out": y}, {"activation": v, "slope": 0.2, "scale": 2.0}


def check_linear_backward_input_act(inp, out, ret, dt, v):
    g, scale = ref.linear_backward_input(inp["dy"], inp["weight"])
    d = _act_grad_from_output(inp["act_out"], v)
    within_bound(out["dx"], g * d, scale * np.abs(d), dt, "dx")


def _act_grad_cpu_match(got, cpu, inp, dt, v):
    scale = ref.linear_backward_input(inp["dy"], inp["weight"])[1]
    d = _act_grad_from_output(inp["act_out"], v)
    within_bound(got["dx"], cpu["dx"].astype(np.float64), 2 * scale * np.abs(d), dt, "dx")


kernel("matmul", variants=_MM_ACT_GRAD, cuda=[("relu", 1), ("relu_dropout", 2)],
       cpu_match=_act_grad_cpu_match)(
    (build_linear_backward_input_act, check_linear_backward_input_act))

_MM_BWD_W = [(acc, db) for acc in (True, False) for db in (True, False)]


def build_linear_backward_weight(rng, size, dt, v):
    accumulate, with_dbias = v
    N, K, M = _mm_shape(size)
    # overwrite: NaN in the old gradients shows any read of them
    dw = rand(rng, (M, K), dt) if accumulate else nans((M, K), dt)
    db = (rand(rng, M, dt) if accumulate else nans(M, dt)) if with_dbias else None
    return {"dy": rand(rng, (N, M), dt), "x": rand(rng, (N, K), dt), "dweight": dw,
            "dbias": db}, {"accumulate": accumulate}


def check_linear_backward_weight(inp, out, ret, dt, v):
    accumulate, with_dbias = v
    assert ret is None
    dw, sw, db, sb = ref.linear_backward_weight(inp["dy"], inp["x"])
    if accumulate:
        dw, sw = dw + inp["dweight"], sw + np.abs(inp["dweight"])
    within_bound(out["dweight"], dw, sw, dt, "dweight")
    if with_dbias:
        if accumulate:
            db, sb = db + inp["dbias"], sb + np.abs(inp["dbias"])
        within_bound(out["dbias"], db, sb, dt, "dbias")


kernel("matmul", variants=_MM_BWD_W,
       cuda=[(v, s) for v in _MM_BWD_W for s in (1, 2)],
       cpu_match=lambda *a: _mm_cpu_match(*a, name="linear_backward_weight"))(
    (build_linear_backward_weight, check_linear_backward_weight))


# ---------------------------------------------------------------- norm
#: (N, C) per size: the size as rows and (in a second shape) as columns
_NORM_SHAPES = {1: (2, 1), 2: (7, 2), 7: (33, 7), 33: (2, 33), 257: (257, 3), 1031: (1031, 33)}
_LN_SHAPES = {1: (1, 1), 2: (2, 33), 7: (1, 7), 33: (33, 2), 257: (257, 257), 1031: (7, 1031)}


_NEAR_CPU = (1e-5, 1e-13)       # CUDA vs the CPU backend: same formulas, float64 sum order only


def _vec(rng, c, dt, on):
    return rand(rng, c, dt) if on else None


_BN_TRAIN = [(True, True), (False, False), (True, False)]


def build_batchnorm_forward_train(rng, size, dt, v):
    affine, running = v
    N, C = _NORM_SHAPES[size]
    return {"x": rand(rng, (N, C), dt, loc=0.5, scale=2.0), "weight": _vec(rng, C, dt, affine),
            "bias": _vec(rng, C, dt, affine),
            "running_mean": _vec(rng, C, dt, running),
            "running_var": (rng.random(C) + 0.5).astype(dt) if running else None,
            "out": nans((N, C), dt), "save_mean": nans(C, dt), "save_rstd": nans(C, dt)
            }, {"momentum": 0.3, "eps": 1e-3}


def check_batchnorm_forward_train(inp, out, ret, dt, v):
    y, mu, rstd, rm, rv, _ = ref.batchnorm_forward_train(
        inp["x"], inp["weight"], inp["bias"], inp["running_mean"], inp["running_var"], 0.3, 1e-3)
    for name, want in [("out", y), ("save_mean", mu), ("save_rstd", rstd),
                       ("running_mean", rm), ("running_var", rv)]:
        if want is not None:
            close(out[name], want, dt, 1e-4, 1e-10, name)


kernel("norm", variants=_BN_TRAIN, cpu_match=_NEAR_CPU,
       cuda=[((True, True), s) for s in (1, 2, 7)] + [((False, False), 33),
                                                        ((True, False), 33)])(
    (build_batchnorm_forward_train, check_batchnorm_forward_train))


def build_batchnorm_forward_eval(rng, size, dt, v):
    N, C = _LN_SHAPES[size]
    return {"x": rand(rng, (N, C), dt, scale=3.0), "weight": _vec(rng, C, dt, v),
            "bias": _vec(rng, C, dt, v), "running_mean": rand(rng, C, dt),
            "running_var": (rng.random(C) + 0.1).astype(dt), "out": nans((N, C), dt)
            }, {"eps": 1e-4}


def check_batchnorm_forward_eval(inp, out, ret, dt, v):
    want = ref.batchnorm_forward_eval(inp["x"], inp["weight"], inp["bias"],
                                      inp["running_mean"], inp["running_var"], 1e-4)
    close(out["out"], want, dt, 1e-4, 1e-10, "out")


kernel("norm", variants=[True, False], cpu_match=_NEAR_CPU,
       cuda=[(True, 1), (False, 2), (True, 33)])(
    (build_batchnorm_forward_eval, check_batchnorm_forward_eval))

#: (affine, accumulate, want dweight, want dbias)
_NORM_BWD = [(True, True, True, True), (True, False, True, True), (False, False, False, False),
             (True, True, False, True), (True, False, True, False)]


def _grads(rng, C, dt, v):
    affine, accumulate, need_w, need_b = v
    start = (lambda: rand(rng, C, dt)) if accumulate else (lambda: nans(C, dt))
    return (start() if affine and need_w else None), (start() if affine and need_b else None)


def _check_grads(inp, out, dt, v, ref_dx, ref_dw, ref_db, f32=2e-4):
    accumulate = v[1]
    close(out["dx"], ref_dx, dt, f32, 1e-10, "dx")
    if inp["dweight"] is not None:
        close(out["dweight"], old(inp, "dweight", accumulate) + ref_dw, dt, f32, 1e-10, "dw")
    if inp["dbias"] is not None:
        close(out["dbias"], old(inp, "dbias", accumulate) + ref_db, dt, f32, 1e-10, "db")


def build_batchnorm_backward(rng, size, dt, v):
    N, C = _NORM_SHAPES[size]
    x = rand(rng, (N, C), dt, loc=-1.0, scale=1.5)
    dw, db = _grads(rng, C, dt, v)
    return {"dy": rand(rng, (N, C), dt), "x": x, "weight": _vec(rng, C, dt, v[0]),
            "save_mean": x.astype(np.float64).mean(0).astype(dt),
            "save_rstd": (1.0 / np.sqrt(x.astype(np.float64).var(0) + 1e-5)).astype(dt),
            "dx": nans((N, C), dt), "dweight": dw, "dbias": db}, {"accumulate": v[1]}


def check_batchnorm_backward(inp, out, ret, dt, v):
    _check_grads(inp, out, dt, v, *ref.batchnorm_backward(
        inp["dy"], inp["x"], inp["weight"], inp["save_mean"], inp["save_rstd"]))


kernel("norm", variants=_NORM_BWD, cpu_match=_NEAR_CPU,
       cuda=list(zip(_NORM_BWD, (1, 2, 33, 7, 33))))(
    (build_batchnorm_backward, check_batchnorm_backward))


def build_batchnorm_backward_eval(rng, size, dt, v):
    N, C = _LN_SHAPES[size]
    dw, db = _grads(rng, C, dt, v)
    return {"dy": rand(rng, (N, C), dt), "x": rand(rng, (N, C), dt, loc=1.0),
            "weight": _vec(rng, C, dt, v[0]), "running_mean": rand(rng, C, dt),
            "running_var": (rng.random(C) + 0.2).astype(dt), "dx": nans((N, C), dt),
            "dweight": dw, "dbias": db, "eps": 1e-3}, {"accumulate": v[1]}


def check_batchnorm_backward_eval(inp, out, ret, dt, v):
    _check_grads(inp, out, dt, v, *ref.batchnorm_backward_eval(
        inp["dy"], inp["x"], inp["weight"], inp["running_mean"], inp["running_var"], 1e-3),
        f32=1e-4)


def _bn_eval_cpu_match(got, cpu, inp, dt, v):
    np.testing.assert_array_equal(got["dx"], cpu["dx"])   # one float64 scale, rounded once
    for k in ("dweight", "dbias"):
        if inp[k] is not None:
            close(got[k], cpu[k], dt, *_NEAR_CPU, k)


kernel("norm", variants=_NORM_BWD, cpu_match=_bn_eval_cpu_match,
       cuda=[(_NORM_BWD[i % 3], s) for i, s in enumerate(CUDA_SIZES)])(
    (build_batchnorm_backward_eval, check_batchnorm_backward_eval))

_LN_AFFINE = ["both", "none", "weight", "bias"]


def build_layernorm_forward(rng, size, dt, v):
    N, C = _LN_SHAPES[size]
    return {"x": rand(rng, (N, C), dt, loc=2.0, scale=0.5),
            "weight": _vec(rng, C, dt, v in ("both", "weight")),
            "bias": _vec(rng, C, dt, v in ("both", "bias")), "out": nans((N, C), dt),
            "save_mean": nans(N, dt), "save_rstd": nans(N, dt)}, {"eps": 1e-3}


def check_layernorm_forward(inp, out, ret, dt, v):
    y, mu, rstd = ref.layernorm_forward(inp["x"], inp["weight"], inp["bias"], 1e-3)
    for name, want in [("out", y), ("save_mean", mu), ("save_rstd", rstd)]:
        close(out[name], want, dt, 1e-4, 1e-10, name)


kernel("norm", variants=_LN_AFFINE, cpu_match=_NEAR_CPU,
       cuda=list(zip(_LN_AFFINE, CUDA_SIZES)))(
    (build_layernorm_forward, check_layernorm_forward))


def build_layernorm_backward(rng, size, dt, v):
    N, C = _LN_SHAPES[size]
    x = rand(rng, (N, C), dt, loc=1.0)
    _, mu, rstd = ref.layernorm_forward(x, None, None, 1e-5)
    dw, db = _grads(rng, C, dt, v)
    return {"dy": rand(rng, (N, C), dt), "x": x, "weight": _vec(rng, C, dt, v[0]),
            "save_mean": mu.astype(dt), "save_rstd": rstd.astype(dt), "dx": nans((N, C), dt),
            "dweight": dw, "dbias": db}, {"accumulate": v[1]}


def check_layernorm_backward(inp, out, ret, dt, v):
    _check_grads(inp, out, dt, v, *ref.layernorm_backward(
        inp["dy"], inp["x"], inp["weight"], inp["save_mean"], inp["save_rstd"]))


kernel("norm", variants=_NORM_BWD[:3], cpu_match=_NEAR_CPU,
       cuda=[(_NORM_BWD[i % 3], s) for i, s in enumerate(CUDA_SIZES)])(
    (build_layernorm_backward, check_layernorm_backward))


# ---------------------------------------------------------------- dropout
SEED = 0x0123456789ABCDEF
#: (p, seed, offset): counters that carry into the second word or wrap modulo 2**64
_DROP = [(0.4, 77, 5), (0.1, SEED, 2**64 - 1), (0.9, SEED, 2**32 - 40), (0.5, 2**64 - 1, 0)]


def build_dropout_forward(rng, size, dt, v):
    p, seed, offset = v
    return {"x": rand(rng, size, dt), "out": np.full(size, 7.0, dt),
            "mask": np.full((size + 7) // 8, 0xA5, np.uint8),   # bits the kernel must clear
            "p": p, "scale": 1 / (1 - p), "seed": seed, "offset": offset}, {}


def check_dropout_forward(inp, out, ret, dt, v):
    p, seed, offset = v
    want, mask = ref.dropout_forward(inp["x"], p, 1 / (1 - p), seed, offset)
    np.testing.assert_array_equal(out["mask"], mask)
    close(out["out"], want, dt, (1e-6, 0), (1e-14, 0), "out")
    dropped = want == 0
    assert np.all(out["out"][dropped] == 0) and not np.signbit(out["out"][dropped]).any()


kernel("dropout", variants=_DROP, cpu_match="equal",
       cuda=list(zip(_DROP, CUDA_SIZES)) + [(_DROP[0], 33)])(
    (build_dropout_forward, check_dropout_forward))


def build_dropout_backward(rng, size, dt, v):
    p, seed, offset = v
    return {"dy": rand(rng, size, dt), "mask": ref.dropout_mask(size, p, seed, offset),
            "dx": np.full(size, np.nan, dt), "scale": 1 / (1 - p)}, {}


def check_dropout_backward(inp, out, ret, dt, v):
    p = v[0]
    close(out["dx"], ref.dropout_backward(inp["dy"], inp["mask"], 1 / (1 - p)), dt,
          (1e-6, 0), (1e-14, 0), "dx")
    # kept: the product in the data dtype, exactly
    keep = ref.unpacked(inp["mask"], inp["dy"].size)
    np.testing.assert_array_equal(out["dx"], np.where(keep, inp["dy"] * dt.type(1 / (1 - p)), 0))


kernel("dropout", variants=_DROP, cpu_match="equal",
       cuda=list(zip(_DROP, CUDA_SIZES)))(
    (build_dropout_backward, check_dropout_backward))

_MASK = [(0.3, SEED, 0), (0.3, SEED, 12345), (0.3, SEED, 2**32 - 1), (0.3, SEED, 2**32 - 3),
         (0.3, SEED, 2**64 - 2), (0.1, SEED, 2**64 - 5), (0.9, SEED, 2**32 - 3),
         (0.5, SEED, 2**64 - 5), (0.0, 1, 7), (1e-12, 2**32, 12345), (1 - 2**-33, 0, 5),
         (0.3, 2**64 - 1, 12345)]


def build_dropout_mask(rng, size, dt, v):
    p, seed, offset = v
    return {"mask": np.full((size + 7) // 8, 0xFF, np.uint8), "n": size, "p": p, "seed": seed,
            "offset": offset}, {}


def check_dropout_mask(inp, out, ret, dt, v):
    p, seed, offset = v
    n = inp["n"]
    np.testing.assert_array_equal(out["mask"], ref.dropout_mask(n, p, seed, offset))
    if n % 8:
        assert out["mask"][-1] >> (n % 8) == 0


kernel("dropout", variants=_MASK, dtypes=(None,), cpu_match="equal",
       cuda=[(v, s) for v in _MASK for s in (1, 7, 33)])(
    (build_dropout_mask, check_dropout_mask))

_PHILOX = ["random", 0, 1, 2]       # random blocks, or a Random123 known-answer vector repeated


def build_philox4x32_kernel(rng, size, dt, v):
    if v == "random":
        ctr = rng.integers(0, 2**32, size=(size, 4), dtype=np.uint64).astype(np.uint32)
        key = tuple(int(k) for k in rng.integers(0, 2**32, 2))
    else:
        ctr = np.tile(np.array(ref.PHILOX_KAT[v][0], np.uint32), (size, 1))
        key = ref.PHILOX_KAT[v][1]
    return {"counters": ctr, "key": key}, {}


def check_philox4x32_kernel(inp, out, ret, dt, v):
    np.testing.assert_array_equal(ret, ref.philox4x32_kernel(inp["counters"], inp["key"]))
    if v != "random":
        assert all(tuple(row) == ref.PHILOX_KAT[v][2] for row in ret.tolist())


kernel("dropout", variants=_PHILOX, dtypes=(None,), cpu_match="equal",
       sizes=(1, 2, 7, 33, 257), cuda=[(v, 1) for v in _PHILOX] + [("random", 33)])(
    (build_philox4x32_kernel, check_philox4x32_kernel))


# ---------------------------------------------------------------- optim
N_STEPS = 3
_PEN = {"weight_decay": 0.1, "l1": 0.01, "l2": 0.02}
#: Per algorithm: hand-picked option sets (the CPU tests' CASES), ...
_OPTIM = {
    "sgd": [{"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, "l1": 0.01,
             "l2": 0.02}],
    "adam": [{"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "l2": 0.01},
             {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True,
              "beta1": 0.5, "beta2": 0.9, "l1": 0.01}],
    "rmsprop": [{"lr": 0.01}, {"lr": 0.01, "centered": True, "weight_decay": 0.1},
                {"lr": 0.01, "momentum": 0.9, "centered": True, "maximize": True, "alpha": 0.9,
                 "l1": 0.01}],
    "adagrad": [{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1, "maximize": True,
                              "l2": 0.1}],
    "adadelta": [{"lr": 1.0}, {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1, "maximize": True,
                               "l1": 0.01}],
}
#: ... every combination of each algorithm's own flags, each with maximize and the penalties
#: (weight decay + l1 + l2) both off and both on, the first also with one of the two on ...
_FLAGS = {
    "sgd": [{"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3},
            {"lr": 0.05, "momentum": 0.8, "nesterov": True}],
    "adam": [{"lr": 0.01, "amsgrad": a, "decoupled_weight_decay": d, "beta1": 0.8,
              "beta2": 0.95} for a, d in itertools.product((False, True), repeat=2)],
    "rmsprop": [{"lr": 0.01, "alpha": 0.9, "centered": c, "momentum": m}
                for c, m in itertools.product((False, True), (0.0, 0.7))],
    "adagrad": [{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.5}],
    "adadelta": [{"lr": 0.5, "rho": 0.8}],
}
_N_PICKED = {kind: len(cases) for kind, cases in _OPTIM.items()}    # not run on CUDA
for _kind, _opts in _FLAGS.items():
    for _j, _o in enumerate(_opts):
        for _max, _pen in ([(False, False), (True, True)] if _j else
                           itertools.product((False, True), repeat=2)):
            _OPTIM[_kind].append(dict(_o, maximize=_max, **(_PEN if _pen else {})))
#: ... and everything on at once (run on CUDA at several sizes).
_ALL_ON = {
    "sgd": {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, **_PEN},
    "adam": {"lr": 0.01, "amsgrad": True, "decoupled_weight_decay": True, **_PEN},
    "rmsprop": {"lr": 0.01, "centered": True, "momentum": 0.5, **_PEN},
    "adagrad": {"lr": 0.1, "lr_decay": 0.2, **_PEN},
    "adadelta": {"lr": 1.0, "maximize": True, **_PEN},
}
for _kind, _o in _ALL_ON.items():
    _OPTIM[_kind].append(_o)


def _optim_entry(kind):
    twin, state = ref.OPTIMIZERS[kind]

    def build(rng, size, dt, o):
        w = rng.standard_normal(size)
        w[: max(1, size // 10)] = 0.0            # exact zeros: sign(0) = 0 in the L1 gradient
        init = 0.1 if kind == "adagrad" else 0.0
        need = ref.optim_state_needed(kind, o)
        args = {"param": w.astype(dt), "grad": rand(rng, size, dt)}
        args.update({arg: np.full(size, init, dt) if key in need else None
                     for key, arg in state})
        # the later steps' gradients travel as extra arguments, not passed to the kernel
        return args, {"__steps__": [rand(rng, size, dt) for _ in range(N_STEPS - 1)], **o}

    def check(inp, out, ret, dt, o):
        raise AssertionError("optim kernels are checked step by step in run_optim")

    build.__name__ = f"build_{kind}_step"
    check.twin, check.state, check.kind = twin, state, kind
    return build, check


for _kind, _cases in _OPTIM.items():
    kernel("optim", variants=_cases, cpu_match=((1e-5, 1e-6), (1e-12, 1e-13)),
           cuda=[(o, 33) for o in _cases[_N_PICKED[_kind]:-1]]
           + [(_ALL_ON[_kind], s) for s in (1, 7)])(
        _optim_entry(_kind))


# ---------------------------------------------------------------- elementwise
def _away_from_kinks(rng, shape, dt):
    """Normal samples with |x| >= 0.05 (no derivative straddles relu's kink)."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.05 * np.sign(x) + 0.05 * (x == 0), x).astype(dt)


def build_activation_forward(rng, size, dt, v):
    return {"x": (3 * rng.standard_normal(size)).astype(dt), "out": nans(size, dt),
            "activation": v}, {"slope": 0.07}


def check_activation_forward(inp, out, ret, dt, v):
    close(out["out"], ref.activation_forward(inp["x"], v, 0.07), dt, 2e-6, 1e-14, "out")


kernel("elementwise", variants=list(ref.ACTIVATION_NAMES), cpu_match=(2e-6, 1e-14))(
    (build_activation_forward, check_activation_forward))


def build_activation_backward(rng, size, dt, v):
    x = _away_from_kinks(rng, size, dt) * dt.type(3)
    return {"dy": rand(rng, size, dt), "y": ref.act(x, v, 0.2).astype(dt),
            "dx": nans(size, dt), "activation": v}, {"slope": 0.2, "__x__": x}


def check_activation_backward(inp, out, ret, dt, v):
    want = ref.activation_backward_from_input(inp["dy"], inp["x"], v, 0.2)
    close(out["dx"], want, dt, 1e-5, 1e-12, "dx")


kernel("elementwise", variants=list(ref.ACTIVATION_NAMES), cpu_match=(2e-6, 1e-14))(
    (build_activation_backward, check_activation_backward))

_XENT_SHAPES = {1: (1, 1), 2: (2, 3), 7: (7, 10), 33: (33, 2), 257: (257, 33), 1031: (64, 1031)}


def _logits(rng, size, dt):
    n, c = _XENT_SHAPES[size]
    return (2 * rng.standard_normal((n, c))).astype(dt), rng.integers(0, c, n)


def build_softmax_cross_entropy_forward(rng, size, dt, v):
    logits, target = _logits(rng, size, dt)
    return {"logits": logits, "target": target, "probs": np.full_like(logits, np.nan),
            "label_smoothing": v}, {}


def check_softmax_cross_entropy_forward(inp, out, ret, dt, v):
    loss, probs = ref.softmax_cross_entropy_forward(inp["logits"], inp["target"], v)
    rtol, atol = tol(dt, 1e-5, 1e-12)
    assert isinstance(ret, float)
    assert ret == pytest.approx(loss, rel=rtol, abs=atol)
    close(out["probs"], probs, dt, 1e-5, 1e-12, "probs")


def _xent_cpu_match(got, cpu, inp, dt, v):
    rtol, atol = tol(dt, 1e-5, 1e-12)
    n = next(a for a in inp.values() if isinstance(a, np.ndarray)).shape[0]
    for k in got:
        if k == "__ret__" and isinstance(got[k], float):
            assert got[k] == pytest.approx(cpu[k], rel=rtol, abs=atol)
        elif k in ("probs", "dlogits"):
            atol_k = atol / n if k == "dlogits" else atol
            np.testing.assert_allclose(got[k], cpu[k], rtol=rtol, atol=atol_k, err_msg=k)


#: CUDA: one block per row, so the 33-row case only once
_XENT_CUDA = [(0.0, 1), (1.0, 2), (0.1, 7), (0.1, 33)]

kernel("elementwise", variants=[0.0, 0.1, 1.0], cpu_match=_xent_cpu_match, cuda=_XENT_CUDA)(
    (build_softmax_cross_entropy_forward, check_softmax_cross_entropy_forward))

_XENT_BWD = [(0.0, None), (0.1, None), (1.0, None), (0.05, 2.5)]


def build_softmax_cross_entropy_backward(rng, size, dt, v):
    eps, g = v
    logits, target = _logits(rng, size, dt)
    probs = ref.softmax_cross_entropy_forward(logits, target)[1].astype(dt)
    return {"probs": probs, "target": target, "dlogits": np.full_like(probs, np.nan),
            "label_smoothing": eps, "grad_scale": g}, {}


def check_softmax_cross_entropy_backward(inp, out, ret, dt, v):
    eps, g = v
    want = ref.softmax_cross_entropy_backward(inp["probs"], inp["target"], eps, g)
    rtol, atol = tol(dt, 1e-5, 1e-12)
    n = inp["probs"].shape[0]
    np.testing.assert_allclose(out["dlogits"], want, rtol=rtol,
                               atol=atol / n * (1 if g is None else n * g))


kernel("elementwise", variants=_XENT_BWD, cpu_match=_xent_cpu_match,
       cuda=list(zip(_XENT_BWD, CUDA_SIZES)))(
    (build_softmax_cross_entropy_backward, check_softmax_cross_entropy_backward))


# device utilities (host: NumPy, device: CUDA kernels): "same" as an argument value = alias
def _shape2(size):
    return (size, 2)


def build_fill(rng, size, dt, v):
    return {"a": rand(rng, _shape2(size), dt), "value": v}, {}


def check_fill(inp, out, ret, dt, v):
    np.testing.assert_array_equal(out["a"], ref.fill(inp["a"], v).astype(dt))


kernel("elementwise", variants=[-2.5, np.nan], cpu_match="equal")((build_fill, check_fill))

_INPLACE = [False, True]


def build_scale(rng, size, dt, v):
    x = rand(rng, size, dt)
    return {"x": x, "out": "x" if v else nans(size, dt), "alpha": -0.3}, {}


def check_scale(inp, out, ret, dt, v):
    close(out["out"], ref.scale(inp["x"], -0.3), dt, 1e-6, 1e-15, "out")


kernel("elementwise", variants=_INPLACE, cpu_match=(1e-6, 1e-15))((build_scale, check_scale))


def build_add_(rng, size, dt, v):
    out = rand(rng, size, dt)
    return {"out": out, "a": "out" if v else rand(rng, size, dt), "alpha": 0.5}, {}


def check_add_(inp, out, ret, dt, v):
    a = inp["out"] if v else inp["a"]
    close(out["out"], ref.add_(inp["out"], a, 0.5), dt, 1e-6, 1e-15, "out")


kernel("elementwise", variants=_INPLACE, cpu_match=(1e-6, 1e-15))((build_add_, check_add_))


def build_subtract(rng, size, dt, v):
    a, b = rand(rng, size, dt), rand(rng, size, dt)
    return {"a": a, "b": b, "out": {"a": "a", "b": "b"}.get(v, nans(size, dt))}, {}


def check_subtract(inp, out, ret, dt, v):
    close(out["out"], ref.subtract(inp["a"], inp["b"]), dt, 1e-6, 1e-15, "out")


kernel("elementwise", variants=[None, "a", "b"], cpu_match=(1e-6, 1e-15))(
    (build_subtract, check_subtract))


def build_sum_squares(rng, size, dt, v):
    return {"a": rand(rng, _shape2(size), dt, scale=3.0)}, {}


def check_sum_squares(inp, out, ret, dt, v):
    assert isinstance(ret, float)
    assert ret == pytest.approx(ref.sum_squares(inp["a"]), rel=1e-12)


kernel("elementwise", cpu_match=(1e-12, 1e-12))((build_sum_squares, check_sum_squares))


def build_sum_abs(rng, size, dt, v):
    return {"a": rand(rng, _shape2(size), dt, scale=3.0)}, {}


def check_sum_abs(inp, out, ret, dt, v):
    assert isinstance(ret, float)
    assert ret == pytest.approx(ref.sum_abs(inp["a"]), rel=1e-12)


kernel("elementwise", cpu_match=(1e-12, 1e-12))((build_sum_abs, check_sum_abs))

_COLSUM_SHAPES = {1: (1, 1), 2: (2, 33), 7: (7, 33), 33: (33, 40), 257: (257, 7),
                  1031: (1031, 5)}


def build_column_sum(rng, size, dt, v):
    shape = _COLSUM_SHAPES[size]
    return {"a": rand(rng, shape, dt), "out": rand(rng, shape[1], dt)}, {"accumulate": v}


def check_column_sum(inp, out, ret, dt, v):
    close(out["out"], old(inp, "out", v) + ref.column_sum(inp["a"]), dt, 1e-5, 1e-12, "out")


kernel("elementwise", variants=[True, False], cpu_match=(1e-6, 1e-14))(
    (build_column_sum, check_column_sum))


def build_mse_forward(rng, size, dt, v):
    x, t = rand(rng, _shape2(size), dt, scale=3.0), rand(rng, _shape2(size), dt)
    return {"x": x, "t": t, "diff": "x" if v else nans(x.shape, dt)}, {}


def check_mse_forward(inp, out, ret, dt, v):
    total, diff = ref.mse_forward(inp["x"], inp["t"])
    np.testing.assert_array_equal(out["diff"], (inp["x"] - inp["t"]))   # the dtype's difference
    close(out["diff"], diff, dt, 1e-6, 1e-15, "diff")
    assert isinstance(ret, float)
    assert ret == pytest.approx(total, rel=1e-12)


kernel("elementwise", variants=_INPLACE, cpu_match=(1e-12, 1e-12),
       cuda=[(False, 1), (True, 2), (False, 7), (True, 33)])(
    (build_mse_forward, check_mse_forward))

#: (pos_weight, weight, pos_weight in float32)
_BCE = [(False, False, False), (True, False, False), (False, True, False), (True, True, False),
        (True, False, True)]


def _bce_args(rng, size, dt, v):
    pw, w, pw32 = v
    shape = (size, 3)
    x = (4 * rng.standard_normal(shape)).astype(dt)
    t = rng.uniform(0, 1, shape).astype(dt)
    p = rng.uniform(0.5, 3, 3).astype(np.float32 if pw32 else np.float64) if pw else None
    return {"x": x, "t": t, "pos_weight": p, "weight": rng.uniform(0, 2, shape) if w else None}


def build_bce_with_logits_forward(rng, size, dt, v):
    return _bce_args(rng, size, dt, v), {}


def check_bce_with_logits_forward(inp, out, ret, dt, v):
    want = ref.bce_with_logits_forward(inp["x"], inp["t"], inp["pos_weight"], inp["weight"])
    assert isinstance(ret, float)
    assert ret == pytest.approx(want, rel=1e-12 if dt == np.float64 else 1e-6)


kernel("elementwise", variants=_BCE, cpu_match=(1e-12, 1e-12),
       cuda=list(zip(_BCE, (1, 2, 7, 33, 7))))(
    (build_bce_with_logits_forward, check_bce_with_logits_forward))


def build_bce_with_logits_backward(rng, size, dt, v):
    args = _bce_args(rng, size, dt, v)
    return {**args, "grad": "x" if v[0] and v[1] else nans(args["x"].shape, dt),
            "scale": 0.25}, {}


def check_bce_with_logits_backward(inp, out, ret, dt, v):
    want = ref.bce_with_logits_backward(inp["x"], inp["t"], inp["pos_weight"], inp["weight"],
                                        0.25)
    close(out["grad"], want, dt, 1e-5, 1e-12, "grad")


kernel("elementwise", variants=_BCE, cpu_match=(1e-12, 1e-12),
       cuda=list(zip(_BCE, (1, 2, 7, 33, 7))))(
    (build_bce_with_logits_backward, check_bce_with_logits_backward))

_WXENT = [0.0, 0.1, 1.0, 0.3]


def build_softmax_xent_weighted_forward(rng, size, dt, v):
    logits, target = _logits(rng, size, dt)
    return {"logits": logits, "target": target,
            "class_weight": rng.uniform(0.1, 2.0, logits.shape[1]),
            "probs": np.full_like(logits, np.nan), "eps": v}, {}


def check_softmax_xent_weighted_forward(inp, out, ret, dt, v):
    total, denom, probs = ref.softmax_xent_weighted_forward(
        inp["logits"], inp["target"], inp["class_weight"], v)
    rtol, atol = tol(dt, 1e-5, 1e-12)
    assert isinstance(ret[0], float) and isinstance(ret[1], float)
    assert ret[0] == pytest.approx(total, rel=rtol, abs=atol)
    assert ret[1] == pytest.approx(denom, rel=1e-12)
    close(out["probs"], probs, dt, 1e-5, 1e-12, "probs")


kernel("elementwise", variants=_WXENT, cpu_match=(1e-5, 1e-12),
       cuda=list(zip(_WXENT, CUDA_SIZES)))(
    (build_softmax_xent_weighted_forward, check_softmax_xent_weighted_forward))


def build_softmax_xent_weighted_backward(rng, size, dt, v):
    logits, target = _logits(rng, size, dt)
    w = rng.uniform(0.1, 2.0, logits.shape[1])
    probs = ref.softmax_xent_weighted_forward(logits, target, w, v)[2].astype(dt)
    return {"probs": probs, "target": target, "class_weight": w,
            "dlogits": "probs" if v == 0.3 else np.full_like(probs, np.nan), "eps": v,
            "scale": 0.5}, {}


def check_softmax_xent_weighted_backward(inp, out, ret, dt, v):
    want = ref.softmax_xent_weighted_backward(inp["probs"], inp["target"], inp["class_weight"],
                                              v, 0.5)
    close(out["dlogits"], want, dt, 1e-5, 1e-12, "dlogits")


kernel("elementwise", variants=_WXENT, cpu_match=(1e-5, 1e-12),
       cuda=list(zip(_WXENT, CUDA_SIZES)))(
    (build_softmax_xent_weighted_backward, check_softmax_xent_weighted_backward))


# --------------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------------

def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def _place(args, put):
    """Apply ``put`` to every array argument, resolving aliases ("name" -> that argument)."""
    placed = {}
    for k, a in args.items():
        if isinstance(a, str) and a in placed:
            placed[k] = placed[a]
        else:
            placed[k] = put(a) if isinstance(a, np.ndarray) else a
    return placed


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def call(k, args, kwargs, backend, dev=None):
    """Run the public function on ``backend``; (arguments after the call as host arrays, ret)."""
    kw = {key: v for key, v in kwargs.items() if not key.startswith("__")}
    if backend == "cuda":
        placed = _place(args, dev)
    else:
        placed = _place(args, lambda a: a.copy())
        if k.takes_backend:
            kw["backend"] = backend
    ret = k.fn(*placed.values(), **kw)
    after = {name: _host(a) for name, a in placed.items()}
    if isinstance(ret, tuple):
        ret = tuple(_host(r) for r in ret)
    return after, _host(ret)


def _inputs(args, kwargs):
    inp = {k: (args[a] if isinstance(a, str) and a in args else a) for k, a in args.items()}
    inp.update({k.strip("_"): v for k, v in kwargs.items() if k.startswith("__")})
    return inp


def _compare_cpu(k, got, cpu, inp, dt, v):
    match = k.cpu_match
    if match is None:
        return
    if callable(match):
        return match(got, cpu, inp, dt, v)
    for name, g in got.items():
        c = cpu[name]
        if name == "__ret__":
            g, c = np.asarray(g, dtype=np.float64), np.asarray(c, dtype=np.float64)
        elif not isinstance(g, np.ndarray) or g is inp.get(name):
            continue
        if match == "equal":
            np.testing.assert_array_equal(g, c, err_msg=name)
        else:
            f32, f64 = match if isinstance(match[0], tuple) else ((match[0],) * 2,
                                                                  (match[1],) * 2)
            rtol, atol = f32 if dt == np.float32 else f64
            np.testing.assert_allclose(g, c, rtol=rtol, atol=atol, err_msg=name)


def run_case(k, variant, size, dtype, backend, dev=None):
    dt = None if dtype is None else np.dtype(dtype)
    rng = np.random.default_rng(_seed(k.family, k.name, repr(variant), size, str(dt)))
    args, kwargs = k.build(rng, size, dt, variant)
    if k.family == "optim":
        return run_optim(k, args, kwargs, dt, variant, backend, dev)
    inp = _inputs(args, kwargs)
    after, ret = call(k, args, kwargs, backend, dev)
    k.check(inp, after, ret, dt, variant)
    if backend == "cuda":
        cpu_after, cpu_ret = call(k, args, kwargs, "numba" if k.takes_backend else "host")
        got = {n: after[n] for n in after if n not in args or not isinstance(args[n], str)}
        cpu = {n: cpu_after[n] for n in got}
        got["__ret__"], cpu["__ret__"] = ret, cpu_ret
        if ret is None or k.cpu_match == "equal" and not isinstance(ret, np.ndarray):
            del got["__ret__"], cpu["__ret__"]
        _compare_cpu(k, got, cpu, inp, dt, variant)


def run_optim(k, args, kwargs, dt, o, backend, dev):
    """N_STEPS steps from the same start; each step against the twin from the kernel's own
    (rounded) inputs, so only one step's rounding counts; on CUDA also against numba."""
    twin, state, kind = k.check.twin, k.check.state, k.check.kind
    grads = [args["grad"]] + kwargs.pop("__steps__")
    rtol, atol = tol(dt, 1e-4, 1e-10)
    put = dev if backend == "cuda" else (lambda a: a.copy())
    bufs = {n: None if a is None else put(a) for n, a in args.items() if n != "grad"}
    cpu = {n: None if a is None else a.copy() for n, a in args.items() if n != "grad"}
    kw = dict(kwargs)
    if backend != "cuda":
        kw["backend"] = backend
    start = args["param"].copy()
    for t, g in enumerate(grads, 1):
        w64 = _host(bufs["param"]).astype(np.float64)
        st64 = {key: _host(bufs[arg]).astype(np.float64) for key, arg in state
                if bufs[arg] is not None}
        want = twin(w64, g.astype(np.float64), st64, t, **kwargs)
        step_kw = dict(kw)
        if kind in ("adam", "adagrad"):
            step_kw["step"] = t
        elif kind == "sgd":
            step_kw["first_step"] = t == 1
        gg = put(g)
        k.fn(bufs["param"], gg, *[bufs[arg] for _, arg in state
                                  if arg in inspect.signature(k.fn).parameters], **step_kw)
        got = _host(bufs["param"])
        assert got.dtype == dt
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"param, step {t}")
        for key, arg in state:
            if bufs[arg] is not None:
                np.testing.assert_allclose(_host(bufs[arg]), st64[key], rtol=rtol, atol=atol,
                                           err_msg=f"{arg}, step {t}")
        if backend == "cuda":
            cpu_kw = dict(step_kw, backend="numba")
            k.fn(cpu["param"], g, *[cpu[arg] for _, arg in state
                                    if arg in inspect.signature(k.fn).parameters], **cpu_kw)
            (crt, cat) = (1e-5, 1e-6) if dt == np.float32 else (1e-12, 1e-13)
            for n, a in cpu.items():
                if a is not None:
                    np.testing.assert_allclose(_host(bufs[n]), a, rtol=crt, atol=cat,
                                               err_msg=f"{n} vs cpu, step {t}")
    assert not np.array_equal(_host(bufs["param"]), start)       # the steps did something


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------

def _cython_f64_pack_bug() -> bool:
    """Kernel bug (found by this test, present on main at 38b4a29): fastreg/_kernels/matmul/
    gemm_impl.h fr_pack_a's transpose fast path steps i0 over FR_MR in FR_TB blocks, which assumes
    FR_MR % FR_TB == 0. With the AVX2 micro-kernel (FR_MR = 6) and the float64 4 x 4 transpose,
    the block at i0 = 4 reads rows 6, 7 past the 6-row sliver and writes 4 columns with stride 6,
    over rows 0, 1 of the next depth step: rows 0, 1 of every 6-row block of the output are wrong
    (garbage once the read runs past the array) whenever N >= 6 and the depth >= 4. AVX-512
    builds (FR_MR = 8) are not affected, hence the probe rather than a fixed mark."""
    try:
        from fastreg._kernels.matmul import cy
    except ImportError:
        return False
    x = (np.arange(64, dtype=np.float64).reshape(8, 8) / 7)[:6]   # rows 6, 7 exist: no overrun
    w = np.ones((1, 8))
    out = np.zeros((6, 1))
    cy.linear_forward(x, w, None, out, 0, 0.0)
    return not np.allclose(out[:, 0], x.sum(1))


_PACK_BUG = _cython_f64_pack_bug()


def _known_bug(k, size, dtype, backend):
    """The reason a case fails on this machine because of a known kernel bug, else None."""
    if not (_PACK_BUG and backend == "cython" and dtype == np.float64 and k.family == "matmul"):
        return None
    N, K, M = _mm_shape(size)
    depth = {"linear_forward": K, "linear_backward_input": M}.get(k.name, 0)
    if N >= 6 and depth >= 4:
        return ("kernel bug: matmul cy float64 fr_pack_a transpose overruns the 6-row AVX2 "
                "sliver (see _cython_f64_pack_bug)")
    return None


def _vid(v):
    if isinstance(v, dict):
        return "-".join(f"{a}={b}" for a, b in v.items() if a != "lr") or "default"
    if isinstance(v, tuple):
        return "-".join(map(str, v))
    return str(v)


def _params():
    for k in REGISTRY:
        cpu_backends = [b for b in backends_of(k.family) if b != "cuda"]
        if not k.takes_backend:
            cpu_backends = ["host"]
        cuda_cases = k.cuda if k.cuda is not None else [
            (v, s) for v in k.variants for s in CUDA_SIZES]
        for dtype in k.dtypes:
            did = "nodtype" if dtype is None else np.dtype(dtype).name
            for be in cpu_backends:
                for v, s in itertools.product(k.variants, k.sizes):
                    bug = _known_bug(k, s, dtype, be)
                    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
                    yield pytest.param(k, v, s, dtype, be, marks=marks,
                                       id=f"{k.name}-{be}-{did}-{_vid(v)}-{s}")
            if "cuda" in backends_of(k.family):
                for v, s in cuda_cases:
                    yield pytest.param(k, v, s, dtype, "cuda",
                                       id=f"{k.name}-cuda-{did}-{_vid(v)}-{s}")


@pytest.mark.parametrize("k,variant,size,dtype,backend", list(_params()))
def test_kernel_matches_reference(k, variant, size, dtype, backend, request):
    dev = None
    if backend == "cuda":
        from fastreg._kernels.runtime import cuda as cuda_runtime
        if not cuda_runtime.available():
            pytest.skip("CUDA backend: no CUDA device and numba's simulator is off "
                        "(tests/conftest.py enables it unless FASTREG_TEST_REAL_CUDA=1)")
        dev = request.getfixturevalue("dev")
    run_case(k, variant, size, dtype, backend, dev)


def trusted_entry_points(fam):
    """``run_<kernel>``: the family's unchecked entry points (the layers' hot path), public
    whether or not the family's ``__all__`` lists them."""
    mod = family(fam)
    return {n for n, f in vars(mod).items() if n.startswith("run_") and inspect.isfunction(f)
            and f.__module__ == mod.__name__}


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_public_kernel_is_in_the_registry(fam):
    public = public_functions(fam) - trusted_entry_points(fam)
    helpers = set(NOT_KERNELS.get(fam, {}))
    assert helpers <= public, f"stale NOT_KERNELS entries: {sorted(helpers - public)}"
    registered = [k.name for k in REGISTRY if k.family == fam]
    assert len(registered) == len(set(registered)), "a kernel is registered twice"
    missing = public - helpers - set(registered)
    assert not missing, f"public {fam} kernels without a reference test: {sorted(missing)}"
    assert set(registered) <= public, f"registered but not public: {set(registered) - public}"
    orphans = {n for n in trusted_entry_points(fam) if n[4:] not in registered
               and n not in TRUSTED_ONLY.get(fam, {})}
    assert not orphans, f"trusted entry points without a registered checked kernel: {orphans}"


# --- the trusted entry points: run_<kernel> gives what the checked <kernel> gives ---------------

def _trusted_params():
    for k in REGISTRY:
        if "run_" + k.name not in trusted_entry_points(k.family):
            continue
        bes = ([b for b in backends_of(k.family) if b != "cuda"] if k.takes_backend
               else ["host"]) + ["cuda"]
        v = k.variants[len(k.variants) // 2]
        dtype = k.dtypes[-1]
        for be in bes:
            yield pytest.param(k, v, dtype, be, id=f"run_{k.name}-{be}")


def _trusted_args(k, fn_checked, args, kwargs, size):
    """The checked call's arguments as the trusted entry point takes them: every argument given
    (defaults filled in), activation names as codes, grad_scale None as 1/N."""
    from fastreg._kernels.common.codes import activation_code
    bound = inspect.signature(fn_checked).bind(*args.values(), **kwargs)
    bound.apply_defaults()
    out = dict(bound.arguments)
    out.pop("backend", None)
    if "activation" in out:
        if k.name == "linear_backward_input_act":   # its codes add "relu_dropout"
            from fastreg._kernels.matmul.codes import GRAD_CODES
            out["activation"] = GRAD_CODES[out["activation"]]
        else:
            out["activation"] = activation_code(out["activation"])
    if out.get("grad_scale", 0.0) is None:
        out["grad_scale"] = 1.0 / out["probs"].shape[0]
    return out


@pytest.mark.parametrize("k,variant,dtype,backend", list(_trusted_params()))
def test_trusted_entry_point_matches_checked_kernel(k, variant, dtype, backend, request):
    dt = None if dtype is None else np.dtype(dtype)
    size = 7
    rng = np.random.default_rng(_seed("trusted", k.name, size))
    args, kwargs = k.build(rng, size, dt, variant)
    kwargs = {key: v for key, v in kwargs.items() if not key.startswith("__")}
    params = inspect.signature(k.fn).parameters
    if "step" in params:                 # optim: the first step
        kwargs["step"] = 1
    if "first_step" in params:
        kwargs["first_step"] = True
    if backend == "cuda":
        from fastreg._kernels.runtime import cuda as cuda_runtime
        if not cuda_runtime.available():
            pytest.skip("CUDA backend: no CUDA device and numba's simulator is off")
        put = request.getfixturevalue("dev")
    else:
        put = np.copy
    trusted = getattr(family(k.family), "run_" + k.name)
    results = []
    for fn in (k.fn, trusted):
        placed = _place(args, put)
        if fn is k.fn:
            kw = dict(kwargs)
            if backend not in ("cuda", "host"):
                kw["backend"] = backend
            ret = fn(*placed.values(), **kw)
        else:
            targs = _trusted_args(k, k.fn, placed, kwargs, size)
            extra = {}
            params = inspect.signature(trusted).parameters
            if "device" in params:
                extra["device"] = backend == "cuda"
            if "backend" in params and backend not in ("cuda", "host"):
                extra["backend"] = backend
            pos = [p.name for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD
                   and p.name not in ("device", "backend")]
            checked_pos = [p.name for p in inspect.signature(k.fn).parameters.values()
                           if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "backend"]
            assert len(pos) == len(checked_pos), (pos, checked_pos)   # same order, maybe renamed
            ret = trusted(*[targs[n] for n in checked_pos],
                          **{n: v for n, v in targs.items() if n not in checked_pos}, **extra)
        after = {n: _host(a) for n, a in placed.items()}
        ret = tuple(_host(r) for r in ret) if isinstance(ret, tuple) else _host(ret)
        results.append((after, ret))
    (a1, r1), (a2, r2) = results
    for n in a1:
        if isinstance(a1[n], np.ndarray):
            np.testing.assert_array_equal(a2[n], a1[n], err_msg=n)
    if isinstance(r1, (float, tuple)):
        assert r2 == r1


def test_every_backend_of_every_family_runs():
    """The CPU backends the parametrisation derives are the ones the dispatcher knows."""
    for fam in FAMILIES:
        bes = backends_of(fam)
        assert {"numba", "cuda"} <= set(bes), (fam, bes)
        assert ("blas" in bes) == (fam == "matmul"), (fam, bes)


# --- the dropout reference itself ---------------------------------------------------------------

@pytest.mark.parametrize("ctr,key,want", ref.PHILOX_KAT)
def test_philox_references_match_random123_known_answers(ctr, key, want):
    from fastreg._kernels import dropout as D
    assert ref.philox_scalar(ctr, key) == want
    assert tuple(D.philox4x32([ctr], key)[0].tolist()) == want


def test_vectorised_keep_reference_matches_scalar_reference():
    from fastreg._kernels import dropout as D
    for n, offset in ((41, 0), (41, 2**32 - 2), (1030, 2**64 - 3)):
        np.testing.assert_array_equal(D.dropout_keep_reference(n, 0.6, 2**63 + 5, offset),
                                      ref.dropout_keep_scalar(n, 0.6, 2**63 + 5, offset))
