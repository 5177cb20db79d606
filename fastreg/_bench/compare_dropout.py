"""fastreg dropout kernels vs torch, timed interleaved in one run.

    fastreg bench --only dropout [--quick]

Cases: forward (mask + scaled output in one pass) and backward, for each backend, float32 and
float64, at an MLP activation size (256x512) and a large one (4096x1024), against
``torch.nn.functional.dropout(x, p, training=True)`` (forward) and ``dy * mask * scale`` with a
stored float mask (torch's backward). Plus the mask alone.

Floor: bytes / stream bandwidth (~74 GB/s, two threads): forward reads x and writes out and the
mask (n/8 bytes); backward reads dy and the mask and writes dx. Philox itself is compute: ~10
rounds of two 32x32->64 multiplies per 4 elements, which is not counted in the floor.
"""
from __future__ import annotations

import numpy as np

from fastreg._bench._timing import Case
from fastreg._kernels import dropout as D

BANDWIDTH = 74e9
BACKENDS = ("cython", "numba")
P = 0.5


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def cases(quick: bool) -> list[Case]:
    torch = _torch()
    rng = np.random.default_rng(0)
    shapes = [(4096, 1024)] if quick else [(256, 512), (4096, 1024)]
    out = []
    for dt in (np.float32, np.float64):
        tag = "f32" if dt == np.float32 else "f64"
        for shape in shapes:
            n = shape[0] * shape[1]
            isz = np.dtype(dt).itemsize
            x = rng.standard_normal(shape).astype(dt)
            y = np.empty_like(x)
            dy = rng.standard_normal(shape).astype(dt)
            dx = np.empty_like(x)
            mask = np.empty(D.mask_nbytes(n), np.uint8)
            fwd_floor = (2 * n * isz + n / 8) / BANDWIDTH
            bwd_floor = (2 * n * isz + n / 8) / BANDWIDTH
            size = f"{shape[0]}x{shape[1]} {tag}"
            peer_f = peer_b = None
            if torch is not None:
                tx = torch.from_numpy(x)
                tdy = torch.from_numpy(dy)
                tmask = (torch.rand(shape, dtype=tx.dtype) > P).to(tx.dtype)

                def peer_f(tx=tx):
                    return torch.nn.functional.dropout(tx, P, training=True)

                def peer_b(tdy=tdy, tmask=tmask):
                    return tdy * tmask * (1 / (1 - P))
            for be in BACKENDS:
                out.append(Case(
                    "dropout", f"fwd {be} {size}",
                    lambda x=x, y=y, mask=mask, be=be: D.dropout_forward(
                        x, y, mask, P, 1 / (1 - P), 1234, 0, backend=be),
                    peer_f, "torch", fwd_floor, "bytes",
                    20.0 if (dt == np.float32 and shape == (4096, 1024)) else None))
                out.append(Case(
                    "dropout", f"bwd {be} {size}",
                    lambda dy=dy, mask=mask, dx=dx, be=be: D.dropout_backward(
                        dy, mask, dx, 1 / (1 - P), backend=be),
                    peer_b, "torch dy*mask*s", bwd_floor, "bytes"))
                if dt == np.float32:
                    out.append(Case(
                        "dropout", f"mask only {be} {shape[0]}x{shape[1]}",
                        lambda n=n, mask=mask, be=be: D.dropout_mask(mask, n, P, 1234, 0,
                                                                     backend=be),
                        None, "-", (n / 8) / BANDWIDTH, "bytes"))
    return out
