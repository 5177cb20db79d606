"""fastreg activations and fused softmax-cross-entropy vs torch, timed interleaved in one run.

    fastreg bench --only elementwise [--quick]

Cases: activation forward and backward (from the output) at an MLP size (256x512) and a large one
(4096x1024), float32, each backend, vs torch's functional activations and their autograd-free
backward formulas; softmax + cross-entropy forward (loss and probs) and backward at (256, 10)
and (4096, 1000) vs ``F.cross_entropy`` (forward) and ``softmax - onehot`` (backward).

Floor: bytes / stream bandwidth (~74 GB/s, two threads) — reads plus writes of every array;
transcendental throughput is not counted.
"""
from __future__ import annotations

import numpy as np

from fastreg._bench._timing import Case
from fastreg._kernels import elementwise as E

BANDWIDTH = 74e9
BACKENDS = ("cython", "numba")


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def cases(quick: bool) -> list[Case]:
    torch = _torch()
    F = torch.nn.functional if torch is not None else None
    rng = np.random.default_rng(0)
    out = []
    dt = np.float32
    shapes = [(4096, 1024)] if quick else [(256, 512), (4096, 1024)]
    acts = ("relu", "sigmoid", "tanh") if quick else ("relu", "leaky_relu", "sigmoid", "tanh")
    for shape in shapes:
        n = shape[0] * shape[1]
        x = rng.standard_normal(shape).astype(dt)
        y = np.empty_like(x)
        dy = rng.standard_normal(shape).astype(dt)
        dx = np.empty_like(x)
        size = f"{shape[0]}x{shape[1]} f32"
        tx, tdy = (torch.from_numpy(x), torch.from_numpy(dy)) if torch is not None else (None,
                                                                                         None)
        for act in acts:
            peer_f = peer_b = None
            if torch is not None:
                ty = {"relu": torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
                      "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](tx)
                peer_f = {"relu": lambda tx=tx: torch.relu(tx),
                          "leaky_relu": lambda tx=tx: F.leaky_relu(tx, 0.01),
                          "sigmoid": lambda tx=tx: torch.sigmoid(tx),
                          "tanh": lambda tx=tx: torch.tanh(tx)}[act]
                peer_b = {"relu": lambda ty=ty, tdy=tdy: tdy * (ty > 0),
                          "leaky_relu": lambda ty=ty, tdy=tdy: torch.where(ty > 0, tdy,
                                                                           tdy * 0.01),
                          "sigmoid": lambda ty=ty, tdy=tdy: tdy * ty * (1 - ty),
                          "tanh": lambda ty=ty, tdy=tdy: tdy * (1 - ty * ty)}[act]
            for be in BACKENDS:
                out.append(Case(
                    "elementwise", f"{act} fwd {be} {size}",
                    lambda x=x, y=y, act=act, be=be: E.activation_forward(x, y, act,
                                                                          backend=be),
                    peer_f, "torch", 2 * n * 4 / BANDWIDTH, "bytes"))
                E.activation_forward(x, y, act, backend="cython")
                out.append(Case(
                    "elementwise", f"{act} bwd {be} {size}",
                    lambda dy=dy, y=y, dx=dx, act=act, be=be: E.activation_backward(
                        dy, y, dx, act, backend=be),
                    peer_b, "torch formula", 3 * n * 4 / BANDWIDTH, "bytes"))
    xshapes = [(4096, 1000)] if quick else [(256, 10), (4096, 1000)]
    for N, C in xshapes:
        logits = (2 * rng.standard_normal((N, C))).astype(dt)
        target = rng.integers(0, C, N)
        probs = np.empty_like(logits)
        dl = np.empty_like(logits)
        size = f"{N}x{C} f32"
        peer_f = peer_b = None
        if torch is not None:
            tl, tt = torch.from_numpy(logits), torch.from_numpy(target)
            tp = torch.softmax(tl, 1)

            def peer_f(tl=tl, tt=tt):
                return F.cross_entropy(tl, tt, label_smoothing=0.1).item()

            def peer_b(tp=tp, tt=tt, C=C, N=N):
                g = tp - 0.1 / C
                g[torch.arange(N), tt] -= 0.9
                return g / N
        for be in BACKENDS:
            out.append(Case(
                "elementwise", f"softmax-CE fwd {be} {size}",
                lambda logits=logits, target=target, probs=probs, be=be:
                    E.softmax_cross_entropy_forward(logits, target, probs, 0.1, backend=be),
                peer_f, "torch F.cross_entropy", 2 * N * C * 4 / BANDWIDTH, "bytes"))
            out.append(Case(
                "elementwise", f"softmax-CE bwd {be} {size}",
                lambda probs=probs, target=target, dl=dl, be=be:
                    E.softmax_cross_entropy_backward(probs, target, dl, 0.1, backend=be),
                peer_b, "torch formula", 2 * N * C * 4 / BANDWIDTH, "bytes"))
    return out
