"""fastreg matmul kernels vs NumPy/OpenBLAS, timed interleaved in one run.

    fastreg bench --only matmul [--quick]

Shapes: the 784-512-256-10 MLP layers at batch 1, 64, 256, 1024, and one large 2048^3 product;
the three products of a linear layer (forward x @ W.T, backward dx = dy @ W, dW = dy.T @ x with
dbias), float32 and float64, for each fastreg backend (numba, cython, blas). Plus the fused
forward linear + bias + ReLU against NumPy's unfused ``np.maximum(x @ w.T + b, 0)``.

Floor: max(FLOPs / peak, bytes / stream bandwidth). The float32 peak is measured, not assumed:
``fastreg._kernels.matmul.cy.peak_probe`` (independent FMA chains on full vector registers) at
fastreg's thread count, once per run; float64 is half of it. Bandwidth ~74 GB/s (two threads).
"""
from __future__ import annotations

import numpy as np

from fastreg._bench._timing import Case
from fastreg._kernels import matmul as mm
from fastreg._kernels.common.codes import ACT_RELU

BANDWIDTH = 74e9
#: Used when the Cython extensions (and so the probe) are not built: 2 Zen 3 cores, AVX2, two
#: 256-bit FMA pipes each at ~2.9 GHz (the probe measured 93 GFLOP/s per core, 181 for two).
PEAK_F32_FALLBACK = 186e9
_peak: list[float] = []


def peak_f32() -> float:
    """Float32 FLOP/s of fastreg's threads, measured once (see the module docstring)."""
    if not _peak:
        try:
            from fastreg._kernels.matmul import cy
            from fastreg._kernels.runtime import get_num_threads
            _peak.append(cy.peak_probe(get_num_threads())[0] * 1e9)
        except ImportError:
            _peak.append(PEAK_F32_FALLBACK)
    return _peak[0]
LAYERS = ((784, 512), (512, 256), (256, 10))
BATCHES = (1, 64, 256, 1024)
LARGE = (2048, 2048, 2048)
BACKENDS = ("cython", "numba", "blas")


def _floor(n, k, m, dt, extra_bytes=0):
    flops = 2.0 * n * k * m
    peak = peak_f32() if dt == np.float32 else peak_f32() / 2
    nbytes = (n * k + k * m + n * m) * np.dtype(dt).itemsize + extra_bytes
    t_flop, t_mem = flops / peak, nbytes / BANDWIDTH
    what = "flops" if t_flop >= t_mem else "bytes"
    return max(t_flop, t_mem), what


def _shapes(quick):
    if quick:
        return [(1, 784, 512), (256, 784, 512)]
    return [(b, k, m) for b in BATCHES for k, m in LAYERS] + [LARGE]


def cases(quick: bool) -> list[Case]:
    rng = np.random.default_rng(0)
    out = []
    for dt in (np.float32, np.float64):
        tag = "f32" if dt == np.float32 else "f64"
        for n, k, m in _shapes(quick):
            x = rng.standard_normal((n, k)).astype(dt)
            w = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal(m).astype(dt)
            y = np.empty((n, m), dt)
            dy = rng.standard_normal((n, m)).astype(dt)
            dx = np.empty((n, k), dt)
            dw = np.empty((m, k), dt)
            db = np.empty(m, dt)
            floor, what = _floor(n, k, m, dt)
            shape = f"{n}x{k}x{m} {tag}"
            for be in BACKENDS:
                out.append(Case(
                    "matmul", f"fwd {be} {shape}",
                    lambda x=x, w=w, y=y, be=be: mm.linear_forward(x, w, None, y, backend=be),
                    lambda x=x, w=w, y=y: np.matmul(x, w.T, out=y),
                    "numpy/OpenBLAS", floor, what, 0.8))
                out.append(Case(
                    "matmul", f"fwd+bias+relu {be} {shape}",
                    lambda x=x, w=w, b=b, y=y, be=be: mm.linear_forward(
                        x, w, b, y, ACT_RELU, backend=be),
                    lambda x=x, w=w, b=b: np.maximum(x @ w.T + b, 0),
                    "numpy unfused", floor, what, 1.0))
                out.append(Case(
                    "matmul", f"bwd dx {be} {shape}",
                    lambda dy=dy, w=w, dx=dx, be=be: mm.linear_backward_input(dy, w, dx,
                                                                            backend=be),
                    lambda dy=dy, w=w, dx=dx: np.matmul(dy, w, out=dx),
                    "numpy/OpenBLAS", floor, what, 0.8))
                out.append(Case(
                    "matmul", f"bwd dW+db {be} {shape}",
                    lambda dy=dy, x=x, dw=dw, db=db, be=be: mm.linear_backward_weight(
                        dy, x, dw, db, accumulate=False, backend=be),
                    lambda dy=dy, x=x, dw=dw, db=db: (np.matmul(dy.T, x, out=dw),
                                                      np.sum(dy, axis=0, out=db)),
                    "numpy/OpenBLAS", floor, what, 0.8))
    return out
