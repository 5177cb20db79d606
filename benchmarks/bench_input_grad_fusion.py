"""The activation's backward fused into the input-gradient GEMM: what it saves, A/B over trees.

    python benchmarks/bench_input_grad_fusion.py kernel [--threads 1] [--rounds 7] [--wall]
    python benchmarks/bench_input_grad_fusion.py ab OLD_TREE NEW_TREE [--threads 1] [--rounds 5]
        [--wall] [--n 60000] [--cases loop_epoch,step]

``kernel`` (this tree): for the input-gradient products of the scikit-learn benchmark's loop
(784-512-256-10 MLP, batch 256: dx 256 x 512 = dy 256 x 256 @ W 256 x 512, and 256 x 256 =
256 x 10 @ 10 x 256) and of the benchmark step (the same model with BatchNorm -> ReLU -> Dropout),
the time of ``run_linear_backward_input`` alone, of it followed by the separate pass
(``run_activation_backward`` / ``run_relu_dropout_backward``, what the unfused layers run) and of
``run_linear_backward_input_act`` (the pass in the GEMM's epilogue), float32, median over
rounds of the min-of-repeats, process CPU time (``--wall``: wall time; with 2+ threads the CPU
time also counts OpenMP's spin-waits).

``ab``: each case in a fresh process per tree (``PYTHONPATH=<tree>``, built in place),
alternating the order each round; medians and the ratio OLD / NEW (> 1: NEW faster), process CPU
seconds (``--wall``: wall). Cases: ``loop_epoch`` (one epoch of ``bench_sklearn.py``'s
fastreg-loop on ``--n`` rows, after its warm-up) and ``step`` (``bench_backends.py``'s training
step, batch 256, the min over 7 runs of 20 steps, ms).
With ``--threads 1`` (the default) CPU time is the measure least disturbed by other jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[4])
import fastreg as fr
fr.set_num_threads(int(sys.argv[2]))
case, n = sys.argv[1], int(sys.argv[3])
clock = time.perf_counter if sys.argv[5] == "wall" else time.process_time
if case == "loop_epoch":
    import bench_sklearn as bs
    bs._clock = clock
    print(json.dumps(bs._loop(n, 784)))
else:
    from fastreg._bench.compare_train import fastreg_step
    step, _ = fastreg_step(256)
    for _ in range(5):
        step()
    best = []
    for _ in range(7):
        t0 = clock()
        for _ in range(20):
            step()
        best.append((clock() - t0) / 20 * 1e3)
    print(json.dumps(min(best)))
'''


def _child(tree: str, case: str, threads: int, n: int, wall: bool) -> float:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-c", CHILD, case, str(threads), str(n), HERE,
                        "wall" if wall else "cpu"],
                       capture_output=True, text=True, env=env, check=False, cwd=tree)
    if p.returncode != 0:
        raise SystemExit(f"{case} in {tree} failed:\n{p.stderr[-3000:]}")
    return float(json.loads(p.stdout.strip().splitlines()[-1]))


def ab(old: str, new: str, rounds: int, threads: int, n: int, cases, wall: bool) -> None:
    res = {c: {old: [], new: []} for c in cases}
    for r in range(rounds):
        for c in cases:
            for tree in ((old, new) if r % 2 == 0 else (new, old)):
                res[c][tree].append(_child(tree, c, threads, n, wall))
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{c} {res[c][old][-1]:.4g} / {res[c][new][-1]:.4g}" for c in cases), flush=True)
    kind = "wall" if wall else "CPU"
    unit = {"loop_epoch": f"{kind} s", "step": f"{kind} ms"}
    print(f"\n{threads} thread(s), {rounds} rounds, medians (OLD = {old}, NEW = {new}):")
    for c in cases:
        a, b = statistics.median(res[c][old]), statistics.median(res[c][new])
        ratios = sorted(x / y for x, y in zip(res[c][old], res[c][new]))
        print(f"  {c:11s} OLD {a:8.4g} {unit[c]}  NEW {b:8.4g} {unit[c]}  OLD/NEW {a / b:.3f} "
              f"(per round {ratios[0]:.3f} .. {ratios[-1]:.3f})")


def _kernel_times(N: int, M: int, K: int, code: int, rounds: int, clock) -> dict:
    """Median over rounds of the min of 50 calls (us of ``clock``): the GEMM alone, the GEMM
    then the separate pass, and the fused call."""
    import numpy as np

    from fastreg._kernels import dropout, elementwise, matmul
    from fastreg._kernels.matmul.codes import GRAD_RELU_DROPOUT
    rng = np.random.default_rng(0)
    f32 = np.float32
    dy = rng.standard_normal((N, M), dtype=f32)
    w = rng.standard_normal((M, K), dtype=f32)
    y = np.maximum(rng.standard_normal((N, K), dtype=f32), 0)
    dx, g = np.empty((N, K), f32), np.empty((N, K), f32)

    def gemm():
        matmul.run_linear_backward_input(dy, w, g)

    def separate():
        matmul.run_linear_backward_input(dy, w, g)
        if code == GRAD_RELU_DROPOUT:
            dropout.run_relu_dropout_backward(g, y, dx, 1.25)
        else:
            elementwise.run_activation_backward(g, y, dx, code, 0.01)

    def fused():
        matmul.run_linear_backward_input_act(dy, w, dx, y, code, 0.01, 1.25)

    fns = {"gemm": gemm, "gemm + pass": separate, "fused": fused}
    t = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(5):
                f()
            best = float("inf")
            for _ in range(50):
                t0 = clock()
                f()
                best = min(best, clock() - t0)
            t[k].append(best * 1e6)
    return {k: statistics.median(v) for k, v in t.items()}


def kernel(rounds: int, threads: int, wall: bool) -> None:
    import fastreg as fr
    from fastreg._kernels.common.codes import ACT_RELU
    from fastreg._kernels.matmul.codes import GRAD_RELU_DROPOUT
    fr.set_num_threads(threads)
    cases = [("loop dx 256x512 (k 256), ReLU", 256, 256, 512, ACT_RELU),
             ("loop dx 256x256 (k 10), ReLU", 256, 10, 256, ACT_RELU),
             ("step dx 256x512 (k 256), ReLU->Dropout", 256, 256, 512, GRAD_RELU_DROPOUT)]
    clock = time.perf_counter if wall else time.process_time
    print(f"{threads} thread(s), float32, median over {rounds} rounds of the min of 50 calls "
          f"({'wall' if wall else 'process CPU'} us):")
    for label, N, M, K, code in cases:
        m = _kernel_times(N, M, K, code, rounds, clock)
        print(f"  {label:40s} gemm {m['gemm']:7.1f}  gemm + pass {m['gemm + pass']:7.1f}  "
              f"fused {m['fused']:7.1f}  (pass {m['gemm + pass'] - m['gemm']:5.1f}, epilogue "
              f"{m['fused'] - m['gemm']:5.1f}; separate / fused "
              f"{m['gemm + pass'] / m['fused']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["kernel", "ab"])
    ap.add_argument("trees", nargs="*", help="ab: OLD_TREE NEW_TREE")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=60000, help="rows of the loop epoch")
    ap.add_argument("--cases", default="loop_epoch,step")
    ap.add_argument("--wall", action="store_true",
                    help="wall clock (with 2+ threads the CPU time counts the spin-waits)")
    a = ap.parse_args()
    if a.mode == "kernel":
        kernel(a.rounds, a.threads, a.wall)
        return
    if len(a.trees) != 2:
        raise SystemExit("ab needs OLD_TREE NEW_TREE")
    ab(os.path.abspath(a.trees[0]), os.path.abspath(a.trees[1]), a.rounds, a.threads, a.n,
       a.cases.split(","), a.wall)


if __name__ == "__main__":
    main()
