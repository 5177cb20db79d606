"""fastreg vs ONNX Runtime on the same ONNX model: float32 predict time, each side in its own process.

    python benchmarks/bench_onnx.py [--rounds 5] [--batches 1,64,1024] [--threads 1,2]
                                    [--min-time 0.2] [--model FILE.onnx]

The model is the 784-512-256-10 MLP of the README's inference row (Linear, BatchNorm1d, ReLU,
Dropout 0.2, twice, then Linear(256, 10); random weights and running statistics, eval mode),
written with ``fastreg.onnx.export`` (or ``--model``: any file ``fastreg.onnx.load`` imports).
Both sides run *that file*: fastreg imports it with ``fastreg.onnx.load`` and times its compiled
predictor (``fastreg.inference.compile``: BatchNorm folded into the Linear, bias + ReLU fused);
ONNX Runtime times ``InferenceSession.run`` (CPU provider, default graph optimizations, which
fold the BatchNormalization too, ``intra_op_num_threads`` = threads, ``inter_op_num_threads`` =
1). Every (side, batch, threads) case is a fresh subprocess; each round runs every case once per
side, alternating which side goes first, so a noisy neighbour hits both alike. The time of a
case is the median over rounds of the per-call mean in one process (calls repeated until
``--min-time`` seconds). Before timing, the parent checks that both sides give the same output.

Prints a markdown table: median times and the ratio ORT / fastreg (> 1: fastreg is faster).
This file is not an asv benchmark (asv collects nothing from it): it needs the onnx extra.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r'''
import json, sys, time
import numpy as np
side, path, batch, threads, min_time, out = sys.argv[1:7]
batch, threads, min_time = int(batch), int(threads), float(min_time)
x = np.random.default_rng(0).standard_normal((batch, 784)).astype(np.float32)
if side == "fastreg":
    import fastreg as fr
    fr.set_num_threads(threads)
    pred = fr.inference.compile(fr.onnx.load(path))
    fn = lambda: pred(x)
else:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fn = lambda: sess.run(None, {name: x})[0]
if out != "-":
    np.save(out, fn())
for _ in range(5):
    fn()
n = 1
while True:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t0
    if t >= min_time:
        break
    n *= 2
print(json.dumps(t / n))
'''

SIDES = ("fastreg", "ort")
#: The checkout this script belongs to (imported by the parent and the children).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(path: str) -> None:
    """The 784-512-256-10 MLP, random running statistics, exported by fastreg."""
    sys.path.insert(0, ROOT)
    import fastreg as fr
    from fastreg import nn
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(256, 10))
    g = np.random.default_rng(1)
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean[...] = g.normal(0, 0.1, m.num_features)
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
    fr.onnx.export(model.eval(), path)


def run(side: str, path: str, batch: int, threads: int, min_time: float, out: str = "-"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHILD, side, path, str(batch), str(threads),
                        str(min_time), out], env=env, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{side} batch {batch} threads {threads} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--model", default=None, help="an .onnx file (default: the MLP above)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or os.path.join(tmp, "mlp.onnx")
        if args.model is None:
            build_model(path)
        outs = {s: os.path.join(tmp, f"{s}.npy") for s in SIDES}
        for s in SIDES:
            run(s, path, 64, 1, 0.0, outs[s])
        a, b = np.load(outs["fastreg"]), np.load(outs["ort"])
        diff = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
        print(f"model {args.model or '784-512-256-10 MLP (BatchNorm, ReLU, Dropout), exported'};"
              f" outputs agree to {diff:.1e} (max abs difference / max abs output)")
        cases = [(b_, t) for t in threads for b_ in batches]
        times = {(s, c): [] for s in SIDES for c in cases}
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for c in cases:
                for s in order:
                    times[(s, c)].append(run(s, path, c[0], c[1], args.min_time))
    print("\n| threads | batch | fastreg (median) | ORT (median) | ORT / fastreg |\n"
          "|---|---|---|---|---|")
    for b_, t in cases:
        f = statistics.median(times[("fastreg", (b_, t))])
        o = statistics.median(times[("ort", (b_, t))])
        print(f"| {t} | {b_} | {f * 1e6:.1f} us | {o * 1e6:.1f} us | {o / f:.2f} |")
    print(f"\n{args.rounds} rounds, median; each case in a fresh process, sides alternated.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
