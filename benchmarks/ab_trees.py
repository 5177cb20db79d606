"""A/B timing of two fastreg checkouts, each in its own processes, alternated A B A B.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [--rounds 7] [--threads 2]

Each round runs every case once per tree in a fresh subprocess (``PYTHONPATH=<tree>``, built in
place: ``python setup.py build_ext --inplace``), alternating the order of the trees, so idle
thread pools or a noisy neighbour hit both sides alike. Prints the median time of each case per
tree and the ratio OLD / NEW (> 1: NEW is faster). The cases are the core's hot paths: one
training step of a 784-512-256-10 MLP (BatchNorm, ReLU, Dropout 0.2, AdamW, batch 256), a
batch-1 ``Linear(784, 512)`` module call, the fused GEMM 1024 x 784 x 512 (+ bias, ReLU), BatchNorm1d / LayerNorm forward + backward on
4096 x 1024, an AdamW step over 10M parameters, and a compiled predictor at batch 1 and 1024.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CASES = ("train_step", "linear_b1", "batchnorm", "layernorm", "adamw_10m", "predict_b1",
         "predict_b1024", "gemm_1024")

CHILD = r'''
import json, sys, time
import numpy as np
import fastreg as fr
from fastreg import nn
fr.set_num_threads(int(sys.argv[2]))
case = sys.argv[1]
rng = np.random.default_rng(0)
f32 = np.float32

def timeit(fn, min_time=0.3):
    for _ in range(3):
        fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / n
        n *= 2

def mlp():
    fr.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(512, 256, bias=False), nn.BatchNorm1d(256),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))

if case == "train_step":
    m = mlp(); loss = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(m.parameters(), lr=1e-3)
    x = rng.standard_normal((256, 784)).astype(f32); y = rng.integers(0, 10, 256)
    def fn():
        opt.zero_grad(); loss(m(x), y); m.backward(loss.backward(), input_grad=False); opt.step()
elif case == "linear_b1":
    lin = nn.Linear(784, 512).eval(); x = rng.standard_normal((1, 784)).astype(f32)
    fn = lambda: lin(x)
elif case in ("batchnorm", "layernorm"):
    layer = nn.BatchNorm1d(1024) if case == "batchnorm" else nn.LayerNorm(1024)
    x = rng.standard_normal((4096, 1024)).astype(f32); dy = np.ones_like(x)
    def fn():
        layer(x); layer.backward(dy)
elif case == "gemm_1024":
    from fastreg._kernels import matmul
    x = rng.standard_normal((1024, 784)).astype(f32)
    w = rng.standard_normal((512, 784)).astype(f32); b = np.zeros(512, f32)
    out = np.empty((1024, 512), f32)
    fn = lambda: matmul.linear_forward(x, w, b, out, activation="relu")
elif case == "adamw_10m":
    p = nn.Parameter(rng.standard_normal(10_000_000).astype(f32))
    opt = fr.optim.AdamW([p], lr=1e-3); p.grad_buffer()[...] = 1e-3
    fn = opt.step
else:
    m = mlp().eval(); pred = fr.inference.compile(m)
    x = rng.standard_normal((1 if case == "predict_b1" else 1024, 784)).astype(f32)
    fn = lambda: pred(x)
print(json.dumps(timeit(fn)))
'''


def run(tree: str, case: str, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": tree, "OPENBLAS_THREAD_TIMEOUT": "16"}
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(threads)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(CASES))
    args = ap.parse_args()
    cases = [c for c in args.only.split(",") if c]
    times = {(t, c): [] for t in ("old", "new") for c in cases}
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for c in cases:
            for t in order:
                times[(t, c)].append(run(getattr(args, t), c, args.threads))
    print("| case | old (median) | new (median) | old / new |\n|---|---|---|---|")
    for c in cases:
        a, b = statistics.median(times[("old", c)]), statistics.median(times[("new", c)])
        print(f"| {c} | {a * 1e6:.1f} us | {b * 1e6:.1f} us | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
