"""fastreg batch norm / layer norm kernels vs torch.nn.BatchNorm1d / LayerNorm, interleaved.

    fastreg bench --only norm [--quick]

Each case is one training step of the layer as a user runs it: forward (train mode, running
statistics updated) + backward with parameter gradients. fastreg writes into preallocated
buffers; torch allocates its outputs on every call and accumulates parameter grads, and the
input's .grad is reset to None each step (what ``zero_grad()`` does). Also forward-only eval
(inference) cases. Shapes: MLP-sized (256 x 200, batch 256) and large (4096 x 1024), float32
and float64, each fastreg backend.

Floor: bytes moved if every (N, C) array is touched once, over the two-thread stream-triad
bandwidth measured here (a Numba triad on 3 x 128 MB arrays; STREAM's byte count, no write-
allocate). fwd+bwd: read x, write out; read dy, x, write dx = 5 N C elements (+ O(C) vectors).
"""
from __future__ import annotations

import time

import numpy as np

from fastreg._bench._timing import Case
from fastreg._kernels import norm

BACKENDS = ("cython", "numba")
LARGE = (4096, 1024)
MLP = (256, 200)
_bandwidth: float | None = None


def stream_triad_bandwidth(n: int = 1 << 24, reps: int = 10) -> float:
    """Best two-thread triad a = b + s*c bandwidth in bytes/s (STREAM counting: 24 B/element)."""
    global _bandwidth
    if _bandwidth is None:
        from numba import njit, prange, set_num_threads

        import fastreg

        @njit(parallel=True, cache=False)
        def triad(a, b, c, s):
            for i in prange(a.size):
                a[i] = b[i] + s * c[i]

        set_num_threads(fastreg.get_num_threads())
        a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
        triad(a, b, c, 3.0)
        best = min(_timed(lambda: triad(a, b, c, 3.0)) for _ in range(reps))
        _bandwidth = 3 * 8 * n / best
    return _bandwidth


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _torch_step(torch, layer, tx, tdy):
    def step():
        tx.grad = None
        layer(tx).backward(tdy)
    return step


def cases(quick: bool) -> list[Case]:
    try:
        import torch
    except ImportError:
        torch = None
    bw = stream_triad_bandwidth()
    rng = np.random.default_rng(0)
    out = []
    dtypes = (np.float32,) if quick else (np.float32, np.float64)
    shapes = (LARGE,) if quick else (MLP, LARGE)
    for dt in dtypes:
        tag = "f32" if dt == np.float32 else "f64"
        for N, C in shapes:
            x = rng.standard_normal((N, C)).astype(dt)
            dy = rng.standard_normal((N, C)).astype(dt)
            w, b = rng.standard_normal(C).astype(dt), rng.standard_normal(C).astype(dt)
            rm, rv = np.zeros(C, dt), np.ones(C, dt)
            y, dx = np.empty((N, C), dt), np.empty((N, C), dt)
            dw, db = np.zeros(C, dt), np.zeros(C, dt)
            bm, br = np.empty(C, dt), np.empty(C, dt)
            lm, lr = np.empty(N, dt), np.empty(N, dt)
            nbytes = 5 * N * C * np.dtype(dt).itemsize
            floor, what = nbytes / bw, f"{nbytes / 1e6:.0f} MB @ {bw / 1e9:.0f} GB/s"
            fwd_bytes = 2 * N * C * np.dtype(dt).itemsize
            if torch is not None:
                tdt = torch.float32 if dt == np.float32 else torch.float64
                tx = torch.from_numpy(x.copy()).requires_grad_(True)
                tdy = torch.from_numpy(dy)
                tbn = torch.nn.BatchNorm1d(C, dtype=tdt)
                tln = torch.nn.LayerNorm(C, dtype=tdt)
                tbn_eval = torch.nn.BatchNorm1d(C, dtype=tdt).eval()
                tx_eval = torch.from_numpy(x)
                peer_bn, peer_ln = _torch_step(torch, tbn, tx, tdy), _torch_step(torch, tln, tx,
                                                                                  tdy)

                def peer_eval(tx_eval=tx_eval, tbn_eval=tbn_eval):
                    with torch.no_grad():
                        tbn_eval(tx_eval)
            else:
                peer_bn = peer_ln = peer_eval = None
            large = (N, C) == LARGE
            for be in BACKENDS:
                def bn_step(x=x, dy=dy, w=w, b=b, rm=rm, rv=rv, y=y, dx=dx, dw=dw, db=db, bm=bm,
                            br=br, be=be):
                    norm.batchnorm_forward_train(x, w, b, rm, rv, y, bm, br, backend=be)
                    norm.batchnorm_backward(dy, x, w, bm, br, dx, dw, db, backend=be)

                def ln_step(x=x, dy=dy, w=w, b=b, y=y, dx=dx, dw=dw, db=db, lm=lm, lr=lr, be=be):
                    norm.layernorm_forward(x, w, b, y, lm, lr, backend=be)
                    norm.layernorm_backward(dy, x, w, lm, lr, dx, dw, db, backend=be)

                shape = f"{N}x{C} {tag}"
                goal = 2.0 if large and dt == np.float32 else None
                out.append(Case("norm", f"bn fwd+bwd {be} {shape}", bn_step, peer_bn,
                                "torch BatchNorm1d", floor, what, goal))
                out.append(Case("norm", f"ln fwd+bwd {be} {shape}", ln_step, peer_ln,
                                "torch LayerNorm", floor, what, goal))
                out.append(Case(
                    "norm", f"bn eval {be} {shape}",
                    lambda x=x, w=w, b=b, rm=rm, rv=rv, y=y, be=be:
                        norm.batchnorm_forward_eval(x, w, b, rm, rv, y, backend=be),
                    peer_eval, "torch BatchNorm1d", fwd_bytes / bw,
                    f"{fwd_bytes / 1e6:.0f} MB @ {bw / 1e9:.0f} GB/s"))
    return out
