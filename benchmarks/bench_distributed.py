"""Data-parallel training over MPI on one machine: 2 ranks x 1 thread vs 1 rank x 2 threads vs
1 rank x 1 thread, for the 784-512-256-10 MLP (float32, Adam) at a global batch of 256.

    python benchmarks/bench_distributed.py [--rounds 5] [--steps 40]

Each configuration runs as a fresh job (``mpiexec -n 2 python <this> --worker ...`` or
``python <this> --worker ...``); the three are alternated within each round (the order rotates)
and the table shows medians over the rounds of:

    samples/s     global batch x timed steps / wall time of those steps (after warm-up steps)
    step ms       wall time per step
    allreduce ms  time inside DistributedOptimizer's Allreduce per step, as trained: includes
                  waiting for the slower rank
    pure ms       one Allreduce of the 2.1 MB flat gradient after a barrier (communication
                  only, mean of 20)

``--scaling S`` prints instead the scaling model of the README for N machines of S samples/s
each (no measurement): ring allreduce of the flat gradient, 2(N-1)/N of it over each link plus
2(N-1) latencies, after the compute of B/(N S) seconds (no overlap), at 10/25/100 Gb/s.

Needs mpi4py and mpiexec (``pip install 'fastreg[mpi]'``). Timing on a shared machine is noisy;
the medians and the alternation are there for that.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = (("2 ranks x 1 thread", 2, 1), ("1 rank x 2 threads", 1, 2),
           ("1 rank x 1 thread", 1, 1))


def worker(threads: int, steps: int, warmup: int, batch: int) -> None:
    sys.path.insert(0, ROOT)
    import fastreg as fr
    from fastreg import distributed as dist
    from fastreg import nn

    world = dist.init()
    rank = dist.rank()
    fr.set_num_threads(threads)
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = dist.DistributedOptimizer(fr.optim.Adam(model.parameters(), lr=1e-3))
    dist.broadcast_parameters(model)
    loss_fn = nn.CrossEntropyLoss()
    per_rank = batch // world
    rng = np.random.default_rng(rank)
    X = rng.standard_normal((per_rank * 8, 784)).astype(np.float32)
    y = rng.integers(0, 10, per_rank * 8)

    def step(i):
        lo = (i % 8) * per_rank
        xb, yb = X[lo:lo + per_rank], y[lo:lo + per_rank]
        loss_fn(model(xb), yb)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    for i in range(warmup):
        step(i)
    dist.barrier()
    opt.allreduce_seconds, opt.allreduce_calls = 0.0, 0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    dist.barrier()
    wall = time.perf_counter() - t0
    pure = 0.0
    if world > 1:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        g = opt._flat[0].grad
        for _ in range(3):
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        reps = 20
        for _ in range(reps):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            pure += time.perf_counter() - t
        pure /= reps
    nbytes = sum(f.grad.nbytes for f in opt._flat)
    if rank == 0:
        print("RESULT " + json.dumps({
            "samples_per_s": batch * steps / wall, "step_ms": 1e3 * wall / steps,
            "allreduce_ms": 1e3 * opt.allreduce_seconds / steps, "pure_ms": 1e3 * pure,
            "grad_mb": nbytes / 1e6}), flush=True)


GRAD_BYTES = 4 * (784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10)     # 2.14 MB float32
LATENCY_S = 20e-6                   # per message on a cluster network (TCP: 10-50 us)


def allreduce_seconds(n: int, gbps: float, nbytes: int = GRAD_BYTES) -> float:
    """Ring allreduce: 2(n-1)/n of the buffer over each link, 2(n-1) message latencies."""
    return 2 * (n - 1) / n * nbytes / (gbps * 1e9 / 8) + 2 * (n - 1) * LATENCY_S


def scaling(throughput: float) -> None:
    print(f"scaling model: one machine trains {throughput:.0f} samples/s; flat gradient "
          f"{GRAD_BYTES / 1e6:.2f} MB; latency {LATENCY_S * 1e6:.0f} us/message; speedup over "
          "one machine (parallel efficiency)")
    for batch in (256, 4096):
        t1 = batch / throughput
        print(f"\nglobal batch {batch}: one machine {1e3 * t1:.1f} ms/step")
        print("| N | allreduce ms 10/25/100 Gb/s | 10 Gb/s | 25 Gb/s | 100 Gb/s |")
        print("|---:|---|---:|---:|---:|")
        for n in (2, 4, 8, 16, 64):
            ta = [allreduce_seconds(n, g) for g in (10, 25, 100)]
            cells = [f"{t1 / (t1 / n + a):.1f}x ({100 * (t1 / n) / (t1 / n + a):.0f}%)"
                     for a in ta]
            print(f"| {n} | {' / '.join(f'{1e3 * a:.2f}' for a in ta)} | " + " | ".join(cells)
                  + " |")


def run_config(nranks: int, threads: int, args) -> dict:
    me = os.path.abspath(__file__)
    cmd = [sys.executable, me, "--worker", "--threads", str(threads), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    if nranks > 1:
        here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        mpiexec = here if os.path.exists(here) else shutil.which("mpiexec")
        if mpiexec is None:
            sys.exit("mpiexec not found: pip install 'fastreg[mpi]'")
        cmd = [mpiexec, "-n", str(nranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--scaling", type=float, metavar="S",
                    help="print the scaling model for machines of S samples/s and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.threads, args.steps, args.warmup, args.batch)
        return
    if args.scaling:
        scaling(args.scaling)
        return
    results = {name: [] for name, _, _ in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % 3:] + CONFIGS[:r % 3]
        for name, n, t in order:
            results[name].append(run_config(n, t, args))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{name}: {results[name][-1]['samples_per_s']:.0f}/s" for name, _, _ in CONFIGS),
            file=sys.stderr, flush=True)
    med = {name: {k: statistics.median(d[k] for d in rs) for k in rs[0]}
           for name, rs in results.items()}
    base = med["1 rank x 1 thread"]["samples_per_s"]
    print(f"MLP 784-512-256-10 float32, Adam, global batch {args.batch}, {args.steps} timed "
          f"steps, median of {args.rounds} alternated rounds; flat gradient "
          f"{med[CONFIGS[0][0]]['grad_mb']:.2f} MB")
    print("| configuration | samples/s | vs 1x1 | step ms | allreduce ms/step "
          "| pure allreduce ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, _ in CONFIGS:
        m = med[name]
        ar = f"{m['allreduce_ms']:.2f}" if n > 1 else "-"
        pure = f"{m['pure_ms']:.2f}" if n > 1 else "-"
        print(f"| {name} | {m['samples_per_s']:.0f} | {m['samples_per_s'] / base:.2f} | "
              f"{m['step_ms']:.1f} | {ar} | {pure} |")


if __name__ == "__main__":
    main()
