"""fastreg batch norm / layer norm kernels vs torch.nn.BatchNorm1d / LayerNorm.

    fastreg bench --only norm [--quick]          (same process, interleaved, best round)
    python -m fastreg._bench.compare_norm [--rounds 5] [--reps 20] [--shape 4096x1024,256x512]
                                                 (each library in its own process, alternated,
                                                  median of rounds and the range: the README's;
                                                  256 x 512 is the batch-norm of issue 15's
                                                  training step, L2-resident: its "floor" is the
                                                  DRAM one and only an upper bound there)

Each case is one training step of the layer as a user runs it: forward (train mode, running
statistics updated) + backward with parameter gradients. fastreg writes into preallocated
buffers; torch allocates its outputs on every call and accumulates parameter grads, and the
input's .grad is reset to None each step (what ``zero_grad()`` does). Also forward-only eval
(inference) cases. Shapes: MLP-sized (256 x 200, batch 256) and large (4096 x 1024), float32
and float64, each fastreg backend.

Floor: the bytes the op must move, each (N, C) pass at the speed of a streaming kernel measured
here (norm/cy.pyx ``bandwidth_probe``, C, fastreg's threads, on 128 MB arrays -- 4x the L3): a read
pass at the read-only sum's speed, a read + write pair at the non-temporal copy's speed; the
per-feature and per-row vectors at the read speed. Training-mode forward + backward, float32 s = 4
bytes, momentum on (running statistics read and written), parameter gradients accumulated:
    BatchNorm fwd: read x (column statistics), read x again + write y: 2 reads, 1 write (the
      statistics must be complete before the first y; only a GEMM epilogue above could deliver
      them fused); vectors: read gamma, beta, read + write running_mean/var, write save_mean/
      save_rstd = 8 C. bwd: read dy, x (the two column sums), read dy, x again + write dx:
      4 reads, 1 write; vectors: read gamma, save_mean, save_rstd, read + write dgamma, dbeta =
      7 C. fwd + bwd = 6 reads + 2 writes of N C s bytes + 15 C s ("8 passes").
      The second reads of x (and dy) are DRAM traffic only when the rows between the two passes
      do not fit in the cache: in row order (fastreg's schedule) a 16.8 MB x and dy do not. A
      column-blocked schedule (all N rows of a block of columns, then its second pass while the
      block is cached) would move 3 reads + 2 writes: ``PASSES_CACHED["bn"]``, printed as the
      DRAM lower bound.
    LayerNorm fwd: read x + write y (a row's statistics and its output are one L1-resident
      visit): 1 + 1; vectors: read gamma, beta (2 C), write save_mean/save_rstd (2 N). bwd: read
      dy, x + write dx, dgamma/dbeta summed on the way: 2 + 1; vectors: read save_mean/save_rstd
      (2 N), gamma (C), read + write dgamma, dbeta (4 C). fwd + bwd = 3 reads + 2 writes of
      N C s bytes + (4 N + 7 C) s ("5 passes").
    eval: read x + write y; read the four (C,) vectors.
fastreg's kernels make exactly these passes (BatchNorm's second pass walks the rows last-first,
so its start still hits what the first pass left in the L3; that is a bonus, not counted).
"""
from __future__ import annotations

import time

import numpy as np

from fastreg._bench._timing import Case
from fastreg._kernels import norm

BACKENDS = ("cython", "numba")
LARGE = (4096, 1024)
MLP = (256, 200)
_bandwidth: dict | None = None

#: (reads, writes) of (N, C) arrays each op must make (see the module docstring)
PASSES = {"bn": (6, 2), "ln": (3, 2), "eval": (1, 1)}
#: batch norm's DRAM lower bound when its second reads hit the cache (a column-blocked schedule)
PASSES_CACHED = {"bn": (3, 2)}
#: elements of the per-feature (C,) and per-row (N,) vectors each op reads or writes:
#: (per-C count, per-N count), see the module docstring
VECTORS = {"bn": (15, 0), "ln": (7, 4), "eval": (4, 0)}


def probe_bandwidth(n: int = 1 << 25, reps: int = 10) -> dict:
    """{"read": B/s of the read-only pass, "copy": B/s (bytes read + written) of the streaming
    copy}, best of ``reps``, fastreg's thread count, float32 arrays of ``n`` elements."""
    global _bandwidth
    if _bandwidth is None:
        from fastreg._kernels import runtime
        runtime.load_pool("cython")
        from fastreg._kernels.norm import cy
        src = np.ones(n, np.float32)
        dst = np.zeros(n, np.float32)
        cy.bandwidth_probe(src, dst, True)
        t_read = min(_timed(lambda: cy.bandwidth_probe(src, dst, False)) for _ in range(reps))
        t_copy = min(_timed(lambda: cy.bandwidth_probe(src, dst, True)) for _ in range(reps))
        _bandwidth = {"read": 4 * n / t_read, "copy": 8 * n / t_copy}
    return _bandwidth


def floor_bytes(op: str, n: int, c: int, itemsize: int, cached: bool = False) -> int:
    """Bytes the op must move (see the module docstring); ``cached``: batch norm's second reads
    served by the cache (PASSES_CACHED)."""
    reads, writes = (PASSES_CACHED if cached else PASSES)[op]
    per_c, per_n = VECTORS[op]
    return ((reads + writes) * n * c + per_c * c + per_n * n) * itemsize


def floor_seconds(op: str, n: int, c: int, itemsize: int, bw: dict,
                  cached: bool = False) -> float:
    """Seconds the op's unavoidable bytes take at the probed speeds: each (N, C) write is paired
    with a read at the copy's speed, the other reads and the small vectors at the read pass's."""
    reads, writes = (PASSES_CACHED if cached else PASSES)[op]
    per_c, per_n = VECTORS[op]
    a = n * c * itemsize
    v = (per_c * c + per_n * n) * itemsize
    return ((reads - writes) * a + v) / bw["read"] + writes * 2 * a / bw["copy"]


def stream_triad_bandwidth() -> float:
    """The copy probe's bytes/s (kept for callers of the old numba triad)."""
    return probe_bandwidth()["copy"]


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
    bw = probe_bandwidth()
    what_bw = f"read {bw['read'] / 1e9:.0f} / copy {bw['copy'] / 1e9:.0f} GB/s"
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
            isz = np.dtype(dt).itemsize
            mb = N * C * isz / 1e6
            bn_floor = floor_seconds("bn", N, C, isz, bw)
            ln_floor = floor_seconds("ln", N, C, isz, bw)
            ev_floor = floor_seconds("eval", N, C, isz, bw)
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
                                "torch BatchNorm1d", bn_floor,
                                f"8 x {mb:.0f} MB, {what_bw}", goal))
                out.append(Case("norm", f"ln fwd+bwd {be} {shape}", ln_step, peer_ln,
                                "torch LayerNorm", ln_floor, f"5 x {mb:.0f} MB, {what_bw}",
                                goal))
                out.append(Case(
                    "norm", f"bn eval {be} {shape}",
                    lambda x=x, w=w, b=b, rm=rm, rv=rv, y=y, be=be:
                        norm.batchnorm_forward_eval(x, w, b, rm, rv, y, backend=be),
                    peer_eval, "torch BatchNorm1d", ev_floor, f"2 x {mb:.0f} MB, {what_bw}"))
    return out


# --- each library in its own process, alternated (python -m fastreg._bench.compare_norm) ------

def _child(who: str, op: str, n: int, c: int, reps: int, api: str = "kernel") -> float:
    """Median seconds of one fwd+bwd step of ``op`` by ``who`` ("fastreg" or "torch"). fastreg
    runs the checked kernel functions (``api="kernel"``) or the ``fastreg.nn`` layer
    (``api="layer"``: forward, then backward, as torch's module)."""
    import fastreg
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c)).astype(np.float32)
    dy = rng.standard_normal((n, c)).astype(np.float32)
    if who == "fastreg" and api == "layer":
        layer = fastreg.nn.BatchNorm1d(c) if op == "bn" else fastreg.nn.LayerNorm(c)
        layer.train()

        def step():
            layer(x)
            layer.backward(dy)
    elif who == "torch":
        import torch
        torch.set_num_threads(fastreg.get_num_threads())
        layer = (torch.nn.BatchNorm1d(c) if op == "bn" else torch.nn.LayerNorm(c))
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        step = _torch_step(torch, layer, tx, torch.from_numpy(dy))
    else:
        w, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        dw, db = np.zeros(c, np.float32), np.zeros(c, np.float32)
        if op == "bn":
            rm, rv, m, r = np.zeros(c, np.float32), np.ones(c, np.float32), *(
                np.empty(c, np.float32) for _ in range(2))

            def step():
                norm.batchnorm_forward_train(x, w, b, rm, rv, y, m, r, backend="cython")
                norm.batchnorm_backward(dy, x, w, m, r, dx, dw, db, backend="cython")
        else:
            m, r = np.empty(n, np.float32), np.empty(n, np.float32)

            def step():
                norm.layernorm_forward(x, w, b, y, m, r, backend="cython")
                norm.layernorm_backward(dy, x, w, m, r, dx, dw, db, backend="cython")
    for _ in range(3):
        step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None) -> int:
    import argparse
    import json
    ap = argparse.ArgumentParser(description="norm fwd+bwd, fastreg vs torch, own processes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shape", default="4096x1024,256x512",
                    help="comma-separated NxC shapes (default: %(default)s)")
    ap.add_argument("--api", choices=("kernel", "layer"), default="kernel",
                    help="fastreg side: the checked kernel functions (default) or the "
                         "fastreg.nn layer's forward + backward (what a training step runs)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shape.split(",")]
    if args.child:
        who, op = args.child
        n, c = shapes[0]
        if who == "probe":
            print(json.dumps(probe_bandwidth()))
        else:
            print(json.dumps(_child(who, op, n, c, args.reps, args.api)))
        return 0
    for n, c in shapes:
        _compare_shape(args, n, c)
    return 0


def _compare_shape(args, n: int, c: int) -> None:
    import json
    import os
    import subprocess
    import sys
    # a small step takes microseconds: enough repetitions for ~0.1 s per child
    reps = max(args.reps, min(2000, (1 << 24) // (n * c)))

    def run(*child):
        out = subprocess.run([sys.executable, "-m", "fastreg._bench.compare_norm", "--shape",
                              f"{n}x{c}", "--reps", str(reps), "--api", args.api, "--child",
                              *child],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{child} failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"# {n}x{c} float32, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.rounds} rounds, each library in its own "
          f"process, alternated; fastreg api={args.api}")
    res = {k: [] for k in ("probe", "fastreg bn", "torch bn", "fastreg ln", "torch ln")}
    for _ in range(args.rounds):
        for k, v in res.items():
            v.append(run("probe", "-") if k == "probe" else run(*k.split()))
    bw = {key: float(np.median([p[key] for p in res["probe"]])) for key in ("read", "copy")}
    print(f"# bandwidth: read {bw['read'] / 1e9:.1f} GB/s, copy {bw['copy'] / 1e9:.1f} GB/s "
          f"(range read {min(p['read'] for p in res['probe']) / 1e9:.1f}-"
          f"{max(p['read'] for p in res['probe']) / 1e9:.1f})")
    for op in ("bn", "ln"):
        f, t = np.array(res[f"fastreg {op}"]), np.array(res[f"torch {op}"])
        ratio = t / f
        fl = floor_seconds(op, n, c, 4, bw)
        mb = floor_bytes(op, n, c, 4) / 1e6
        print(f"{op} fwd+bwd: fastreg {np.median(f) * 1e3:.2f} ms, torch {np.median(t) * 1e3:.2f}"
              f" ms, torch/fastreg {np.median(ratio):.2f}x ({ratio.min():.2f}-{ratio.max():.2f}); "
              f"floor {fl * 1e3:.2f} ms ({PASSES[op][0]} reads + {PASSES[op][1]} writes, "
              f"{mb:.2f} MB), fastreg/floor {np.median(f) / fl:.2f} "
              f"({f.min() / fl:.2f}-{f.max() / fl:.2f})")
        if op in PASSES_CACHED:
            fc = floor_seconds(op, n, c, 4, bw, cached=True)
            r, w = PASSES_CACHED[op]
            print(f"   DRAM lower bound if the second reads hit the cache: {fc * 1e3:.2f} ms "
                  f"({r} reads + {w} writes, {floor_bytes(op, n, c, 4, cached=True) / 1e6:.2f} "
                  f"MB), fastreg/bound {np.median(f) / fc:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
