"""fastreg fused optimizer updates vs torch.optim, timed interleaved in one run.

    fastreg bench --only optim [--quick]

Kernel level: one Adam and one SGD(momentum=0.9, weight_decay=1e-4) step over one flat float32
buffer of 10M parameters, each fastreg backend against torch's ``fused=True`` (the goal: >= 1.0x)
and torch's default (foreach) implementation. Class level: ``fr.optim.AdamW.step()`` on the
784-512-256-10 MLP's parameters (six tensors, 535k values, one kernel call) against
``torch.optim.AdamW`` on the same tensors.

Floor: bytes moved / ~74 GB/s two-thread stream bandwidth. Adam reads param, grad, exp_avg,
exp_avg_sq and writes param, exp_avg, exp_avg_sq: 7 x 4 bytes per float32 element (280 MB at
10M). SGD with momentum reads param, grad, buffer and writes param, buffer: 5 x 4 bytes.
"""
from __future__ import annotations

import os

import numpy as np

import fastreg as fr
from fastreg._bench._timing import Case
from fastreg._kernels import optim as K
from fastreg.nn.parameter import Parameter

BANDWIDTH = 74e9
# FASTREG_BENCH_BACKENDS=cython (or numba) times one backend per process: numba's OpenMP pool
# (system libgomp) and torch's bundled libgomp are two spinning runtimes that steal the 2 cores
# from each other when both run in one process (see the README's benchmark notes).
BACKENDS = tuple(os.environ.get("FASTREG_BENCH_BACKENDS", "cython,numba").split(","))
MLP_SHAPES = [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]


def _floor(n, streams, itemsize=4):
    return n * streams * itemsize / BANDWIDTH


def _kernel_cases(n, torch) -> list[Case]:
    rng = np.random.default_rng(0)
    dt = np.float32
    w = rng.standard_normal(n).astype(dt)
    g = (rng.standard_normal(n) * 1e-3).astype(dt)
    m, v, buf = np.zeros(n, dt), np.zeros(n, dt), np.zeros(n, dt)
    size = f"{n / 1e6:g}M f32"
    out = []

    def torch_opt(cls, **kw):
        if torch is None:
            return None
        tw = torch.tensor(w.copy(), requires_grad=True)
        tw.grad = torch.tensor(g.copy())
        opt = cls([tw], **kw)
        opt.step()                      # create the state outside the timing
        return opt.step

    adam_peers = [("torch fused", torch_opt(torch.optim.Adam, lr=1e-6, fused=True) if torch
                   else None, 1.0),
                  ("torch foreach", torch_opt(torch.optim.Adam, lr=1e-6, foreach=True) if torch
                   else None, None)]
    sgd_kw = {"lr": 1e-6, "momentum": 0.9, "weight_decay": 1e-4}
    sgd_peers = [("torch fused", torch_opt(torch.optim.SGD, fused=True, **sgd_kw) if torch
                  else None, 1.0),
                 ("torch foreach", torch_opt(torch.optim.SGD, foreach=True, **sgd_kw) if torch
                  else None, None)]
    for be in BACKENDS:
        def adam(be=be):
            K.adam_step(w, g, m, v, None, step=10, lr=1e-6, backend=be)

        def sgd(be=be):
            K.sgd_step(w, g, buf, lr=1e-6, momentum=0.9, weight_decay=1e-4, backend=be)

        for peer_name, peer, goal in adam_peers:
            out.append(Case("optim", f"adam step {size} {be}", adam, peer, peer_name,
                            _floor(n, 7), "7 streams x 4 B / 74 GB/s", goal))
        for peer_name, peer, goal in sgd_peers:
            out.append(Case("optim", f"sgd mom+wd step {size} {be}", sgd, peer, peer_name,
                            _floor(n, 5), "5 streams x 4 B / 74 GB/s", goal))
    return out


def _class_cases(torch) -> list[Case]:
    rng = np.random.default_rng(1)
    values = [rng.standard_normal(s).astype(np.float32) * 0.05 for s in MLP_SHAPES]
    grads = [(rng.standard_normal(s) * 1e-3).astype(np.float32) for s in MLP_SHAPES]
    n = sum(v.size for v in values)
    out = []
    tstep = None
    if torch is not None:
        tps = [torch.tensor(v.copy(), requires_grad=True) for v in values]
        for tp, gr in zip(tps, grads):
            tp.grad = torch.tensor(gr)
        topt = torch.optim.AdamW(tps, lr=1e-6, fused=True)
        topt.step()
        tstep = topt.step
    for be in BACKENDS:
        ps = [Parameter(v.copy()) for v in values]
        opt = fr.optim.AdamW(ps, lr=1e-6)
        for p, gr in zip(ps, grads):
            p.grad[...] = gr

        def step(opt=opt, be=be):
            prev = fr.get_backend()
            fr.set_backend(be)
            opt.step()
            fr.set_backend(prev)

        out.append(Case("optim", f"AdamW.step MLP {n / 1e3:.0f}k f32 {be}", step, tstep,
                        "torch fused", _floor(n, 7), "7 streams x 4 B / 74 GB/s"))
    return out


def cases(quick: bool) -> list[Case]:
    try:
        import torch
    except ImportError:
        torch = None
    n = 1_000_000 if quick else 10_000_000
    return _kernel_cases(n, torch) + _class_cases(torch)
