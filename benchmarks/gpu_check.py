"""Check every fastreg CUDA kernel against the CPU result, and time it against PyTorch CUDA.

Run on a machine with an NVIDIA GPU (fastreg installed with ``pip install -e ".[cuda]"`` and a
CUDA build of torch)::

    python benchmarks/gpu_check.py              # full table (shapes of the CPU benchmarks)
    python benchmarks/gpu_check.py --markdown   # the same as a README table

Each row: the kernel's CUDA result compared with fastreg's CPU backend on the same inputs
(``ok`` / ``FAIL`` with the largest relative error; dropout masks must match bit for bit), the
per-call time of fastreg and torch (best of several rounds, each a loop between two
synchronizations, the two interleaved), and their ratio torch / fastreg (> 1: fastreg faster).
Goals (issue 5): every kernel >= 0.5x torch CUDA, the fused optimizer >= 1.0x.

``--smoke`` runs the same checks on tiny shapes without timing; with ``NUMBA_ENABLE_CUDASIM=1``
it runs without a GPU (the test-suite does that, so this script cannot rot unnoticed).
The exit status is 1 if any check fails.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastreg as fr
from fastreg._kernels import dropout as kdrop
from fastreg._kernels import elementwise as kelem
from fastreg._kernels import matmul as kmm
from fastreg._kernels import norm as knorm
from fastreg._kernels import optim as kopt
from fastreg._kernels.runtime import cuda as rt

GOAL = 0.5
GOAL_OPTIM = 1.0


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _sync(torch=None):
    rt.synchronize()
    if torch is not None:
        torch.cuda.synchronize()


def _per_call(fn, sync, min_time):
    n = 1
    while True:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n
        n *= 2 if dt < min_time / 4 else 1 + int(min_time / max(dt, 1e-9))


def _time_pair(ours, theirs, torch, rounds, min_time):
    ours()
    if theirs is not None:
        theirs()
    _sync(torch)
    a, b = [], []
    for _ in range(rounds):
        a.append(_per_call(ours, rt.synchronize, min_time))
        if theirs is not None:
            b.append(_per_call(theirs, torch.cuda.synchronize, min_time))
    return min(a), (min(b) if b else None)


def _relerr(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return math.inf
    m = ~np.isnan(want)
    scale = max(1.0, float(np.abs(want[m]).max())) if m.any() else 1.0
    return float(np.abs(got[m] - want[m]).max() / scale) if m.any() else 0.0


class Row:
    def __init__(self, group, name, err, tol, ours=None, theirs=None, goal=GOAL):
        self.group, self.name, self.err, self.tol = group, name, err, tol
        self.ours, self.theirs, self.goal = ours, theirs, goal

    @property
    def ok(self) -> bool:
        return self.err <= self.tol


def _d(a):
    return rt.to_device(a)


def _h(a):
    return a.copy_to_host()


# ---------------------------------------------------------------------------------------------
# cases: each returns a Row (check always; timing when a torch CUDA peer is given)
# ---------------------------------------------------------------------------------------------

def matmul_rows(shapes, torch, timing, rounds, min_time, rng):
    rows = []
    for (N, K, M) in shapes:
        x = rng.standard_normal((N, K)).astype(np.float32)
        W = (rng.standard_normal((M, K)) / np.sqrt(K)).astype(np.float32)
        b = rng.standard_normal(M).astype(np.float32)
        dy = rng.standard_normal((N, M)).astype(np.float32)
        xd, Wd, bd, dyd = _d(x), _d(W), _d(b), _d(dy)
        out_d, dx_d = rt.empty((N, M), np.float32), rt.empty((N, K), np.float32)
        dW_d, db_d = rt.empty((M, K), np.float32), rt.empty(M, np.float32)
        tag = f"{N}x{K}x{M} f32"
        tol = 1e-4 * math.sqrt(K)

        out = np.empty((N, M), np.float32)
        kmm.linear_forward(x, W, b, out, "relu")
        kmm.linear_forward(xd, Wd, bd, out_d, "relu")
        e_fwd = _relerr(_h(out_d), out)
        dx = np.empty((N, K), np.float32)
        kmm.linear_backward_input(dy, W, dx)
        kmm.linear_backward_input(dyd, Wd, dx_d)
        e_dx = _relerr(_h(dx_d), dx)
        dW, db = np.empty((M, K), np.float32), np.empty(M, np.float32)
        kmm.linear_backward_weight(dy, x, dW, db, accumulate=False)
        kmm.linear_backward_weight(dyd, xd, dW_d, db_d, accumulate=False)
        e_dw = max(_relerr(_h(dW_d), dW), _relerr(_h(db_d), db) / math.sqrt(N))
        t = [None] * 6
        if timing:
            peer = [None, None, None]
            if torch is not None:
                tx, tW, tb, tdy = (torch.from_numpy(a).cuda() for a in (x, W, b, dy))
                F = torch.nn.functional
                peer = [lambda: F.relu(F.linear(tx, tW, tb)), lambda: tdy @ tW,
                        lambda: (tdy.t() @ tx, tdy.sum(0))]
            t[0:2] = _time_pair(lambda: kmm.linear_forward(xd, Wd, bd, out_d, "relu"), peer[0],
                                torch, rounds, min_time)
            t[2:4] = _time_pair(lambda: kmm.linear_backward_input(dyd, Wd, dx_d), peer[1],
                                torch, rounds, min_time)
            t[4:6] = _time_pair(lambda: kmm.linear_backward_weight(dyd, xd, dW_d, db_d, False),
                                peer[2], torch, rounds, min_time)
        rows += [Row("matmul", f"linear fwd + bias + relu {tag}", e_fwd, tol, *t[0:2]),
                 Row("matmul", f"linear dx {tag}", e_dx, tol, *t[2:4]),
                 Row("matmul", f"linear dW + db {tag}", e_dw, tol, *t[4:6])]
    return rows


def norm_rows(shape, torch, timing, rounds, min_time, rng):
    N, C = shape
    dt = np.float32
    x = (rng.standard_normal((N, C)) * 2 + 1).astype(dt)
    dy = rng.standard_normal((N, C)).astype(dt)
    w = rng.uniform(0.5, 1.5, C).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    tag = f"{N}x{C} f32"
    rows = []
    # batch norm (train forward + backward)
    host = {k: np.empty(s, dt) for k, s in
            (("out", (N, C)), ("mean", C), ("rstd", C), ("dx", (N, C)), ("dw", C), ("db", C))}
    rm, rv = np.zeros(C, dt), np.ones(C, dt)
    dev = {k: rt.empty(v.shape, dt) for k, v in host.items()}
    xd, dyd, wd, bd, rmd, rvd = (_d(a) for a in (x, dy, w, b, rm, rv))

    def bn(a, d, xx, ww, bb, rmm, rvv, dyy):
        knorm.batchnorm_forward_train(xx, ww, bb, rmm, rvv, d["out"], d["mean"], d["rstd"],
                                      momentum=0.1, eps=1e-5)
        knorm.batchnorm_backward(dyy, xx, ww, d["mean"], d["rstd"], d["dx"], d["dw"], d["db"],
                                 accumulate=False)
    bn(None, host, x, w, b, rm, rv, dy)
    bn(None, dev, xd, wd, bd, rmd, rvd, dyd)
    err = max(_relerr(_h(dev[k]), host[k]) for k in host)
    err = max(err, _relerr(_h(rmd), rm), _relerr(_h(rvd), rv))
    t = (None, None)
    if timing:
        peer = None
        if torch is not None:
            tx, tdy, tw, tb = (torch.from_numpy(a).cuda() for a in (x, dy, w, b))
            trm, trv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
            aten = torch.ops.aten

            def peer():
                _out, sm, si = torch.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
                return aten.native_batch_norm_backward(tdy, tx, tw, trm, trv, sm, si, True,
                                                       1e-5, [True, True, True])
        t = _time_pair(lambda: bn(None, dev, xd, wd, bd, rmd, rvd, dyd), peer, torch, rounds,
                       min_time)
    rows.append(Row("norm", f"batchnorm fwd+bwd {tag}", err, 1e-4, *t))
    # layer norm
    lh = {k: np.empty(s, dt) for k, s in
          (("out", (N, C)), ("mean", N), ("rstd", N), ("dx", (N, C)), ("dw", C), ("db", C))}
    ld = {k: rt.empty(v.shape, dt) for k, v in lh.items()}

    def ln(d, xx, ww, bb, dyy):
        knorm.layernorm_forward(xx, ww, bb, d["out"], d["mean"], d["rstd"], eps=1e-5)
        knorm.layernorm_backward(dyy, xx, ww, d["mean"], d["rstd"], d["dx"], d["dw"], d["db"],
                                 accumulate=False)
    ln(lh, x, w, b, dy)
    ln(ld, xd, wd, bd, dyd)
    err = max(_relerr(_h(ld[k]), lh[k]) for k in lh)
    t = (None, None)
    if timing:
        peer = None
        if torch is not None:
            tx, tdy, tw, tb = (torch.from_numpy(a).cuda() for a in (x, dy, w, b))
            aten = torch.ops.aten

            def peer():
                _out, mu, rs = torch.native_layer_norm(tx, [C], tw, tb, 1e-5)
                return aten.native_layer_norm_backward(tdy, tx, [C], mu, rs, tw, tb,
                                                       [True, True, True])
        t = _time_pair(lambda: ln(ld, xd, wd, bd, dyd), peer, torch, rounds, min_time)
    rows.append(Row("norm", f"layernorm fwd+bwd {tag}", err, 1e-4, *t))
    return rows


def dropout_rows(shape, torch, timing, rounds, min_time, rng):
    N, C = shape
    n = N * C
    p = 0.2
    x = rng.standard_normal((N, C)).astype(np.float32)
    out, mask = np.empty_like(x), np.empty(kdrop.mask_nbytes(n), np.uint8)
    kdrop.dropout_forward(x, out, mask, p, 1 / (1 - p), 1234, 5)
    xd, out_d = _d(x), rt.empty((N, C), np.float32)
    mask_d = rt.empty(kdrop.mask_nbytes(n), np.uint8)
    kdrop.dropout_forward(xd, out_d, mask_d, p, 1 / (1 - p), 1234, 5)
    same = np.array_equal(_h(mask_d), mask) and np.array_equal(_h(out_d), out)
    t = (None, None)
    if timing:
        peer = None
        if torch is not None:
            tx = torch.from_numpy(x).cuda()

            def peer():
                return torch.native_dropout(tx, p, True)
        t = _time_pair(lambda: kdrop.dropout_forward(xd, out_d, mask_d, p, 1 / (1 - p), 1234, 5),
                       peer, torch, rounds, min_time)
    return [Row("dropout", f"dropout fwd (mask bits equal CPU) {N}x{C} f32",
                0.0 if same else math.inf, 0.0, *t)]


def elementwise_rows(shape, xshape, torch, timing, rounds, min_time, rng):
    rows = []
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    xd, dyd = _d(x), _d(dy)
    yd, dxd = rt.empty(shape, np.float32), rt.empty(shape, np.float32)
    for act in ("relu", "sigmoid", "tanh"):
        y, dx = np.empty_like(x), np.empty_like(x)
        kelem.activation_forward(x, y, act)
        kelem.activation_backward(dy, y, dx, act)
        kelem.activation_forward(xd, yd, act)
        kelem.activation_backward(dyd, yd, dxd, act)
        err = max(_relerr(_h(yd), y), _relerr(_h(dxd), dx))
        t = (None, None)
        if timing:
            peer = None
            if torch is not None:
                tx, tdy = torch.from_numpy(x).cuda(), torch.from_numpy(dy).cuda()
                aten = torch.ops.aten
                f = {"relu": (torch.relu, lambda g, o: aten.threshold_backward(g, o, 0)),
                     "sigmoid": (torch.sigmoid, aten.sigmoid_backward),
                     "tanh": (torch.tanh, aten.tanh_backward)}[act]

                def peer(f=f):
                    return f[1](tdy, f[0](tx))

            def ours(act=act):
                kelem.activation_forward(xd, yd, act)
                kelem.activation_backward(dyd, yd, dxd, act)
            t = _time_pair(ours, peer, torch, rounds, min_time)
        rows.append(Row("elementwise", f"{act} fwd+bwd {shape[0]}x{shape[1]} f32", err, 1e-5,
                        *t))
    N, C = xshape
    z = (2 * rng.standard_normal((N, C))).astype(np.float32)
    tgt = rng.integers(0, C, N).astype(np.int64)
    probs, g = np.empty_like(z), np.empty_like(z)
    loss = kelem.softmax_cross_entropy_forward(z, tgt, probs, label_smoothing=0.1)
    kelem.softmax_cross_entropy_backward(probs, tgt, g, label_smoothing=0.1, grad_scale=1 / N)
    zd, td = _d(z), _d(tgt)
    pd, gd = rt.empty((N, C), np.float32), rt.empty((N, C), np.float32)

    def ours():
        v = kelem.softmax_cross_entropy_forward(zd, td, pd, label_smoothing=0.1)
        kelem.softmax_cross_entropy_backward(pd, td, gd, label_smoothing=0.1, grad_scale=1 / N)
        return v
    loss_d = ours()
    err = max(abs(loss_d - loss) / max(1.0, abs(loss)), _relerr(_h(gd), g))
    t = (None, None)
    if timing:
        peer = None
        if torch is not None:
            tz, tt = torch.from_numpy(z).cuda(), torch.from_numpy(tgt).cuda()
            F = torch.nn.functional

            def peer():
                lv = F.cross_entropy(tz, tt, label_smoothing=0.1)
                gr = torch.softmax(tz, 1)
                gr[torch.arange(N, device="cuda"), tt] -= 1
                return lv.item(), gr
        t = _time_pair(ours, peer, torch, rounds, min_time)
    rows.append(Row("elementwise", f"softmax-xent fwd+bwd {N}x{C} f32 (loss to host)", err,
                    1e-5, *t))
    return rows


def optim_rows(n, torch, timing, rounds, min_time, rng):
    rows = []
    p0 = rng.standard_normal(n).astype(np.float32)
    g0 = rng.standard_normal(n).astype(np.float32)
    for name in ("adam", "sgd"):
        p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        pd, gd, md, vd = _d(p0), _d(g0), _d(m), _d(v)

        def step(pp, gg, mm, vv, k, name=name):
            if name == "adam":
                kopt.adam_step(pp, gg, mm, vv, None, step=k, lr=1e-3, weight_decay=1e-2,
                               decoupled_weight_decay=True)
            else:
                kopt.sgd_step(pp, gg, mm, lr=0.01, momentum=0.9, weight_decay=1e-4,
                              first_step=(k == 1))
        for k in (1, 2, 3):
            step(p, g0, m, v, k)
            step(pd, gd, md, vd, k)
        err = max(_relerr(_h(pd), p), _relerr(_h(md), m))
        t = (None, None)
        if timing:
            peer = None
            if torch is not None:
                tp = torch.nn.Parameter(torch.from_numpy(p0).cuda())
                tp.grad = torch.from_numpy(g0).cuda()
                opt = (torch.optim.AdamW([tp], lr=1e-3, weight_decay=1e-2, fused=True)
                       if name == "adam" else
                       torch.optim.SGD([tp], lr=0.01, momentum=0.9, weight_decay=1e-4,
                                       fused=True))
                peer = opt.step
            t = _time_pair(lambda: step(pd, gd, md, vd, 4), peer, torch, rounds, min_time)
        label = "AdamW" if name == "adam" else "SGD momentum + wd"
        rows.append(Row("optim", f"{label} step {n:,} params f32", err, 1e-5, *t,
                        goal=GOAL_OPTIM))
    return rows


def train_step_rows(batch, dims, torch, timing, rounds, min_time, rng):
    """End-to-end step of Linear-BN-ReLU-Dropout MLP + cross-entropy + Adam, CUDA vs CPU."""
    x = rng.standard_normal((batch, dims[0])).astype(np.float32)
    y = rng.integers(0, dims[-1], batch).astype(np.int64)

    def build():
        fr.manual_seed(0)
        layers = []
        for a, b in itertools.pairwise(dims[:-1]):
            # no bias before BatchNorm: its gradient is zero up to rounding, which Adam would
            # amplify into full-size steps that differ between CPU and GPU
            layers += [fr.nn.Linear(a, b, bias=False), fr.nn.BatchNorm1d(b), fr.nn.ReLU(),
                       fr.nn.Dropout(0.2)]
        layers.append(fr.nn.Linear(dims[-2], dims[-1]))
        return fr.nn.Sequential(*layers)

    def run(model, steps):
        opt = fr.optim.Adam(model.parameters(), lr=1e-3)
        lossf = fr.nn.CrossEntropyLoss()
        fr.manual_seed(1)
        losses = []
        for _ in range(steps):
            losses.append(lossf(model(x), y))
            opt.zero_grad()
            model.backward(lossf.backward(), input_grad=False)
            opt.step()
        return losses, opt, lossf
    cpu, gpu = build(), build().to("cuda")
    lc, _, _ = run(cpu, 2)
    lg, opt, lossf = run(gpu, 2)
    err = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(lc, lg))
    err = max(err, max(_relerr(fr.cuda.to_host(q.data), p.data)
                       for p, q in zip(cpu.parameters(), gpu.parameters())))
    xd = rt.to_device(x)
    t = (None, None)
    if timing:
        def ours():
            out = gpu.forward(xd)
            lossf(out, y)
            opt.zero_grad()
            gpu.backward(lossf.backward(), input_grad=False)
            opt.step()
        peer = None
        if torch is not None:
            nn = torch.nn
            mods = []
            for a, b in itertools.pairwise(dims[:-1]):
                mods += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(),
                         nn.Dropout(0.2)]
            mods.append(nn.Linear(dims[-2], dims[-1]))
            tm = nn.Sequential(*mods).cuda()
            topt = torch.optim.Adam(tm.parameters(), lr=1e-3, fused=True)
            tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
            tl = nn.CrossEntropyLoss()

            def peer():
                topt.zero_grad()
                loss = tl(tm(tx), ty)
                loss.backward()
                topt.step()
                return loss.item()
        t = _time_pair(ours, peer, torch, rounds, min_time)
    name = "-".join(map(str, dims))
    return [Row("train", f"train step {name} BN+dropout, Adam, batch {batch} (loss to host)",
                err, 2e-3, *t)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, checks only")
    ap.add_argument("--quick", action="store_true", help="fewer timing rounds")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    if not fr.cuda.is_available():
        print("gpu_check: no CUDA device found (set NUMBA_ENABLE_CUDASIM=1 with --smoke to run "
              "the checks in numba's simulator)", file=sys.stderr)
        return 2
    timing = not args.smoke
    torch = _torch() if timing else None
    rounds, min_time = (3, 0.02) if args.quick else (7, 0.05)
    rng = np.random.default_rng(0)
    if args.smoke:
        mm, nshape, dshape, eshape, xshape, nopt = [(3, 5, 4), (9, 17, 6)], (6, 5), (3, 13), \
            (4, 9), (5, 7), 1000
        batch, dims = 8, (6, 5, 3)
    else:
        mm = [(256, 784, 512), (4096, 784, 512)]
        nshape, dshape, eshape, xshape, nopt = (4096, 1024), (4096, 1024), (4096, 1024), \
            (4096, 1000), 10_000_000
        batch, dims = 4096, (784, 512, 512, 10)
    rows = []
    rows += matmul_rows(mm, torch, timing, rounds, min_time, rng)
    rows += norm_rows(nshape, torch, timing, rounds, min_time, rng)
    rows += dropout_rows(dshape, torch, timing, rounds, min_time, rng)
    rows += elementwise_rows(eshape, xshape, torch, timing, rounds, min_time, rng)
    rows += optim_rows(nopt, torch, timing, rounds, min_time, rng)
    rows += train_step_rows(batch, dims, torch, timing, rounds, min_time, rng)
    _print(rows, args.markdown, torch is not None, timing)
    return 0 if all(r.ok for r in rows) else 1


def _fmt_t(s):
    if s is None:
        return "-"
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _print(rows, markdown, have_torch, timing):
    head = ["kernel", "check vs CPU", "fastreg", "torch CUDA", "torch/fastreg", "goal"]
    lines = []
    for r in rows:
        ratio = (r.theirs / r.ours) if (r.ours and r.theirs) else None
        ok = f"ok ({r.err:.1e})" if r.ok else f"FAIL ({r.err:.1e} > {r.tol:.0e})"
        goal = f">= {r.goal:g}x" + ("" if ratio is None else
                                    (" met" if ratio >= r.goal else " missed"))
        lines.append([r.name, ok, _fmt_t(r.ours), _fmt_t(r.theirs),
                      "-" if ratio is None else f"{ratio:.2f}x", goal])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
    else:
        widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for ln in lines:
            print("  ".join(c.ljust(w) for c, w in zip(ln, widths)))
    if timing and not have_torch:
        print("(torch with CUDA not found: fastreg times only)")


if __name__ == "__main__":
    sys.exit(main())
