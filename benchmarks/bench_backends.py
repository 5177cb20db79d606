"""Training step on the numba backend vs the Cython backend (issue 15, item 5), and vs torch.

    python benchmarks/bench_backends.py [--rounds 7] [--threads 2] [--batch 256] [--no-torch]
                                        [--clock wall|cpu] [--overhead]

The step is the one of ``fastreg bench``'s training row: 784-512-256-10 MLP, BatchNorm1d + ReLU +
Dropout(0.2) after each hidden Linear, float32, cross-entropy, AdamW; one step = forward, loss,
zero_grad, backward (no dL/dx of the input), optimizer step. Each side runs in its own subprocess
(so no library's idle threads steal the cores of another), alternated in every round; the median
per-step time over rounds is reported with numba/cython (goal: cython time / numba time >= 0.8)
and per-op times of the numba backend (its GEMM is the part that is slow: see the README).

``--overhead`` also times the same step structure on an 8-8-8-2 MLP with batch 4 in each child
("tiny step"): there every kernel takes microseconds, so its time is the per-step cost of the
Python (and torch's dispatcher) around the kernels -- the part of the step no kernel work removes.

``--clock cpu`` times with ``time.process_time`` (CPU seconds of the whole process) instead of
the wall clock: on a loaded machine a 2-thread wall time measures the neighbours (a worker thread
that slept between two kernels waits for a time slice), while one-thread CPU time stays within
~10%; use it with ``--threads 1`` there, and the wall clock on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time
import numpy as np
kind, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
overhead = sys.argv[5] == "1"
SIZES = (784, 512, 256, 10)
TINY = (8, 8, 8, 2)
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
y = rng.integers(0, SIZES[-1], batch)

def timeit(fn, min_time=1.0):
    for _ in range(3):
        fn()
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        t = clock() - t0
        if t >= min_time:
            return t / n
        n *= 2

extra = {}
if kind == "torch":
    import torch
    torch.set_num_threads(threads)
    tnn = torch.nn
    def torch_step(sizes, bx, by):
        d0, d1, d2, d3 = sizes
        m = tnn.Sequential(tnn.Linear(d0, d1), tnn.BatchNorm1d(d1), tnn.ReLU(), tnn.Dropout(0.2),
                           tnn.Linear(d1, d2), tnn.BatchNorm1d(d2), tnn.ReLU(), tnn.Dropout(0.2),
                           tnn.Linear(d2, d3))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2)
        lossf = tnn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(bx), torch.from_numpy(by)
        def step():
            opt.zero_grad(); lossf(m(tx), ty).backward(); opt.step()
        return step
    step = torch_step(SIZES, x, y)
    if overhead:
        extra["tiny step"] = timeit(torch_step(TINY, x[:4, :TINY[0]].copy(), y[:4] % TINY[-1]),
                                    0.5)
else:
    import fastreg as fr
    from fastreg._bench.compare_train import fastreg_step
    fr.set_backend(kind)
    fr.set_num_threads(threads)
    step, model = fastreg_step(batch)
    if overhead:
        extra["tiny step"] = timeit(fastreg_step(4, sizes=TINY)[0], 0.5)
    from fastreg._kernels import matmul
    d0, d1, d2, d3 = SIZES
    w = rng.standard_normal((d1, d0)).astype(np.float32); b = np.zeros(d1, np.float32)
    out = np.empty((batch, d1), np.float32)
    dW = np.empty_like(w); db = np.empty_like(b); dy = rng.standard_normal((batch, d1)).astype(np.float32)
    extra["gemm fwd 256x784x512"] = timeit(lambda: matmul.linear_forward(x, w, b, out, backend=kind), 0.3)
    extra["gemm dW 512x256x784"] = timeit(lambda: matmul.linear_backward_weight(dy, x, dW, db, backend=kind), 0.3)
print(json.dumps({"step": timeit(step), **extra}))
'''


def run(kind: str, threads: int, batch: int, clock: str = "wall", overhead: bool = False) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, kind, str(threads), str(batch), clock,
                        "1" if overhead else "0"],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--overhead", action="store_true",
                    help="also time the step on an 8-8-8-2 MLP, batch 4 (the Python around it)")
    a = ap.parse_args()
    kinds = ["cython", "numba"] + ([] if a.no_torch else ["torch"])
    res: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(a.rounds):
        for k in kinds:
            res[k].append(run(k, a.threads, a.batch, a.clock, a.overhead))
        print(f"round {r + 1}: " + "  ".join(f"{k} {res[k][-1]['step'] * 1e3:.2f} ms"
                                             for k in kinds), file=sys.stderr)
    med = {k: {key: statistics.median(d[key] for d in res[k]) for key in res[k][0]}
           for k in kinds}
    ratios = [c["step"] / n["step"] for c, n in zip(res["cython"], res["numba"])]
    print(f"threads {a.threads}, batch {a.batch}, {a.rounds} rounds, {a.clock} clock, medians:")
    for k in kinds:
        print(f"  {k:7s} step {med[k]['step'] * 1e3:8.2f} ms"
              + "".join(f"   {key} {v * 1e3:.3f} ms" for key, v in med[k].items() if key != "step"))
    print(f"  cython/numba step time (goal >= 0.8): median {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    if "torch" in med:
        print(f"  torch/cython {med['torch']['step'] / med['cython']['step']:.2f}, "
              f"torch/numba {med['torch']['step'] / med['numba']['step']:.2f}")


if __name__ == "__main__":
    main()
