"""The nine GEMMs of one training step, fastreg vs NumPy/OpenBLAS, each in its own process.

    python benchmarks/bench_step_gemms.py [--rounds 5] [--threads 1,2] [--seconds 0.3]
                                          [--other-root DIR]
    python benchmarks/bench_step_gemms.py --in-step [--threads 1,2] [--other-root DIR]

The step is bench_backends.py's (784-512-256-10 MLP, batch 256, float32). Per Linear layer
(N = 256 rows, K inputs, M outputs) the step calls

    fwd  out = act(x @ W.T + b)      C (N x M),  depth K   (bias; no activation: BN follows)
    dx   dx = dy @ W                 C (N x K),  depth M   (not for the first layer in the step,
                                                            timed here all the same)
    dW   dW = dy.T @ x, db = sum(dy) C (M x K),  depth N   (dbias fused, overwriting)

NumPy runs the same products with the same transpositions (``x @ W.T``, ``dy @ W``,
``dy.T @ x`` plus ``dy.sum(0)`` for dbias). Each library and thread count runs in a fresh
process (so no pool's idle threads take the other's cores), the sides alternated in every round;
a side reports the fastest of its timed calls (the undisturbed one on a shared machine), the
table the median over rounds, in GFLOP/s and as a fraction of ``cy.peak_probe(threads)`` (the
FMA peak measured in the fastreg child of every round; the best of the rounds is used). ``--other-root`` adds a
third side, fastreg from another checkout built in place (e.g. the tree before a kernel change),
to A/B two builds under the same noise: its column is other / this tree (> 1: this tree faster).

``--in-step`` times the GEMM calls where the step makes them instead (caches as the step leaves
them): the real step of ``fastreg._bench.compare_train.fastreg_step`` with the matmul entry
points wrapped, 300 steps after 20 warm-up, the median per call and of the step, one process per
thread count (and per tree with ``--other-root``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ((784, 512), (512, 256), (256, 10))
BATCH = 256

CHILD = r'''
import json, sys, time
import numpy as np
side, threads, seconds, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
layers = json.loads(sys.argv[5])
out = {}
if side == "fastreg":
    import fastreg as fr
    from fastreg._kernels import matmul as mm
    from fastreg._kernels.matmul import cy
    fr.set_backend("cython")
    fr.set_num_threads(threads)
    out["peak"] = cy.peak_probe(threads)[0]
rng = np.random.default_rng(0)

def best(fn):
    for _ in range(3):
        fn()
    ts, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(ts) < 10:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)

for K, M in layers:
    N = batch
    x = rng.standard_normal((N, K)).astype(np.float32)
    w = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    y = np.empty((N, M), np.float32)
    dy = rng.standard_normal((N, M)).astype(np.float32)
    dx = np.empty((N, K), np.float32)
    dw = np.empty((M, K), np.float32)
    db = np.empty(M, np.float32)
    if side == "fastreg":
        fns = {"fwd": lambda: mm.run_linear_forward(x, w, b, y, 0, 0.0),
               "dx": lambda: mm.run_linear_backward_input(dy, w, dx),
               "dW": lambda: mm.run_linear_backward_weight(dy, x, dw, db, False)}
    else:
        def fwd(x=x, w=w, b=b, y=y):
            np.matmul(x, w.T, out=y)
            np.add(y, b, out=y)
        fns = {"fwd": fwd,
               "dx": lambda: np.matmul(dy, w, out=dx),
               "dW": lambda: (np.matmul(dy.T, x, out=dw), np.sum(dy, axis=0, out=db))}
    for name, fn in fns.items():
        out[f"{name} {K}x{M}"] = best(fn)
print(json.dumps(out))
'''

IN_STEP_CHILD = r'''
import collections, json, sys, time
import numpy as np
import fastreg as fr
from fastreg._bench.compare_train import fastreg_step
from fastreg._kernels import matmul as mm
threads = int(sys.argv[1])
fr.set_backend("cython")
fr.set_num_threads(threads)
step, _ = fastreg_step(256)
rec = collections.defaultdict(list)
clock = time.perf_counter

def wrap(name, fn, mnk):
    def timed(*a):
        t0 = clock()
        r = fn(*a)
        rec[name + " %dx%dx%d" % mnk(a)].append(clock() - t0)
        return r
    return timed

mm.run_linear_forward = wrap("fwd", mm.run_linear_forward,
                             lambda a: (a[0].shape[0], a[1].shape[0], a[0].shape[1]))
mm.run_linear_backward_input = wrap("dx", mm.run_linear_backward_input,
                                    lambda a: (a[0].shape[0], a[1].shape[1], a[0].shape[1]))
mm.run_linear_backward_weight = wrap("dW", mm.run_linear_backward_weight,
                                     lambda a: (a[0].shape[1], a[1].shape[1], a[0].shape[0]))
for _ in range(20):
    step()
rec.clear()
steps = []
for _ in range(300):
    t0 = clock()
    step()
    steps.append(clock() - t0)
out = {k: float(np.median(v)) for k, v in rec.items()}
out["step"] = float(np.median(steps))
print(json.dumps({"file": fr.__file__, **out}))
'''


def in_step(threads: int, root: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", IN_STEP_CHILD, str(threads)], capture_output=True,
                       text=True, check=False, env=env, cwd=root)
    if p.returncode != 0:
        raise SystemExit(f"in-step child ({root}) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def report_in_step(threads_list: list[int], roots: dict[str, str]) -> None:
    for threads in threads_list:
        res = {side: in_step(threads, root) for side, root in roots.items()}
        sides = list(res)
        print(f"\nthreads {threads}, in the step, median per call: GFLOP/s"
              + (" (" + " / ".join(sides) + ")" if len(sides) > 1 else ""))
        total = dict.fromkeys(sides, 0.0)
        for key in sorted(k for k in res[sides[0]] if k not in ("file", "step")):
            m, n, k = map(int, key.split()[1].split("x"))
            f = 2.0 * m * n * k
            for side in sides:
                total[side] += res[side][key]
            print(f"  {key:16s} " + " / ".join(f"{res[s][key] * 1e6:8.1f} us {f / res[s][key] * 1e-9:6.1f}"
                                                 for s in sides))
        print("  GEMM sum " + " / ".join(f"{total[s] * 1e3:.3f} ms" for s in sides)
              + ", step " + " / ".join(f"{res[s]['step'] * 1e3:.3f} ms" for s in sides))


def run(side: str, threads: int, seconds: float, root: str = ROOT) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", CHILD, "numpy" if side == "numpy" else "fastreg",
                        str(threads), str(seconds), str(BATCH), json.dumps(LAYERS)],
                       capture_output=True, text=True, check=False, env=env, cwd=root)
    if p.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def flops(key: str) -> float:
    K, M = map(int, key.split()[1].split("x"))
    return 2.0 * BATCH * K * M


def shape(key: str) -> str:
    what, km = key.split()
    K, M = map(int, km.split("x"))
    m, n, k = {"fwd": (BATCH, M, K), "dx": (BATCH, K, M), "dW": (M, K, BATCH)}[what]
    return f"{m}x{n}x{k}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=0.3, help="timed calls per product")
    ap.add_argument("--other-root", help="a second fastreg checkout (built in place) to A/B")
    ap.add_argument("--in-step", action="store_true",
                    help="time the GEMM calls inside the real training step instead")
    a = ap.parse_args()
    if a.in_step:
        roots = {"this tree": ROOT}
        if a.other_root:
            roots["other"] = os.path.abspath(a.other_root)
        report_in_step([int(t) for t in a.threads.split(",")], roots)
        return
    roots = {"fastreg": ROOT, "numpy": ROOT}
    if a.other_root:
        roots["other"] = os.path.abspath(a.other_root)
    for threads in map(int, a.threads.split(",")):
        res: dict[str, list[dict]] = {side: [] for side in roots}
        for r in range(a.rounds):
            for side, root in roots.items():
                res[side].append(run(side, threads, a.seconds, root))
            print(f"threads {threads} round {r + 1}/{a.rounds} done", file=sys.stderr)
        peak = max(d["peak"] for d in res["fastreg"])     # the machine's, not the neighbours'
        keys = list(res["numpy"][0])
        print(f"\nthreads {threads}: peak_probe {peak:.1f} GFLOP/s (best round); median over "
              f"{a.rounds} "
              f"rounds of each side's fastest call")
        other = "other" in res
        print("| product | C (m x n), depth k | fastreg us | GFLOP/s | % peak | NumPy us | "
              "GFLOP/s | NumPy / fastreg |" + (" other / fastreg |" if other else ""))
        print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if other else ""))
        tot = dict.fromkeys(res, 0.0)
        for key in keys:
            t = {s: statistics.median(d[key] for d in res[s]) for s in res}
            for s, v in t.items():
                tot[s] += v
            f = flops(key)
            print(f"| {key} | {shape(key)} | {t['fastreg'] * 1e6:.1f} | "
                  f"{f / t['fastreg'] * 1e-9:.1f} | {f / t['fastreg'] * 1e-9 / peak:.0%} | "
                  f"{t['numpy'] * 1e6:.1f} | {f / t['numpy'] * 1e-9:.1f} | "
                  f"{t['numpy'] / t['fastreg']:.2f} |"
                  + (f" {t['other'] / t['fastreg']:.2f} |" if other else ""))
        print(f"| all nine | | {tot['fastreg'] * 1e6:.0f} | | | {tot['numpy'] * 1e6:.0f} | | "
              f"{tot['numpy'] / tot['fastreg']:.2f} |"
              + (f" {tot['other'] / tot['fastreg']:.2f} |" if other else ""))


if __name__ == "__main__":
    main()
