"""fastreg vs ONNX Runtime on the same ONNX model: float32 predict time, each side in its own process.

    python benchmarks/bench_onnx.py [--rounds 5] [--batches 1,64,1024] [--threads 1,2]
                                    [--min-time 0.2] [--model FILE.onnx] [--split-flops F]

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

Prints a markdown table: median times and the ratio ORT / fastreg (> 1: fastreg is faster),
then cold start (fresh interpreter: the whole process, and load + first predict with the imports
excluded; ORT's "load" is building the InferenceSession from the file) and peak RSS.
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
    split = float(sys.argv[7])
    if split >= 0:      # --split-flops: when a batch<=4 chain forks (default: the built-in rule)
        from fastreg._kernels.matmul import cy
        cy.set_chain_parallel_min_flops(split)
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


COLD = {
    "fastreg": "import numpy as np, fastreg as fr\nt0 = time.perf_counter()\n"
               "m = fr.load(sys.argv[1])\nm.predict(np.zeros((1, 784), np.float32))\n",
    "ort": "import numpy as np, onnxruntime as ort\nt0 = time.perf_counter()\n"
           "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
           "s.run(None, {s.get_inputs()[0].name: np.zeros((1, 784), np.float32)})\n",
}
COLD_TAIL = ("t1 = time.perf_counter()\nimport resource\n"
             "print(json.dumps([t1 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n")


def cold(side: str, path: str, fr_path: str) -> tuple[float, float, float]:
    """(whole process s, load + first predict s, peak RSS MB) of a fresh interpreter; fastreg
    loads the model saved in its own format (``fr_path``), ORT the .onnx file."""
    if side == "fastreg":
        path = fr_path
    import time
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import json, sys, time\n" + COLD[side] + COLD_TAIL
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                       text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{side} cold start failed:\n{r.stderr}")
    first, rss_kb = json.loads(r.stdout.strip().splitlines()[-1])
    return wall, first, rss_kb / 1024


SPLIT = [-1.0]


def run(side: str, path: str, batch: int, threads: int, min_time: float, out: str = "-"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHILD, side, path, str(batch), str(threads),
                        str(min_time), out, str(SPLIT[0])], env=env, capture_output=True,
                       text=True, check=False)
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
    ap.add_argument("--split-flops", type=float, default=-1.0,
                    help="fastreg: FLOPs per row from which a batch <= 4 chain splits its GEMVs "
                         "across threads (0: always; default: the built-in rule, 4e6)")
    args = ap.parse_args()
    SPLIT[0] = args.split_flops
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or os.path.join(tmp, "mlp.onnx")
        if args.model is None:
            build_model(path)
        sys.path.insert(0, ROOT)
        import fastreg as fr
        fr_path = os.path.join(tmp, "mlp.fr")
        fr.save(fr.onnx.load(path), fr_path)     # what the fastreg cold start loads
        outs = {s: os.path.join(tmp, f"{s}.npy") for s in SIDES}
        for s in SIDES:
            run(s, path, 64, 1, 0.0, outs[s])
        a, b = np.load(outs["fastreg"]), np.load(outs["ort"])
        diff = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
        print(f"model {args.model or '784-512-256-10 MLP (BatchNorm, ReLU, Dropout), exported'};"
              f" outputs agree to {diff:.1e} (max abs difference / max abs output)")
        cases = [(b_, t) for t in threads for b_ in batches]
        times = {(s, c): [] for s in SIDES for c in cases}
        colds = {s: [] for s in SIDES}
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for c in cases:
                for s in order:
                    times[(s, c)].append(run(s, path, c[0], c[1], args.min_time))
            for s in order:
                colds[s].append(cold(s, path, fr_path))
    print("\n| threads | batch | fastreg (median) | ORT (median) | ORT / fastreg |\n"
          "|---|---|---|---|---|")
    for b_, t in cases:
        f = statistics.median(times[("fastreg", (b_, t))])
        o = statistics.median(times[("ort", (b_, t))])
        print(f"| {t} | {b_} | {f * 1e6:.1f} us | {o * 1e6:.1f} us | {o / f:.2f} |")
    print("\n| cold start (fresh process) | fastreg | ORT |\n|---|---|---|")
    for i, what in enumerate(("whole process (interpreter + import + load + predict)",
                              "load + first predict (import excluded)")):
        f = statistics.median(c[i] for c in colds["fastreg"])
        o = statistics.median(c[i] for c in colds["ort"])
        print(f"| {what} | {f * 1e3:.0f} ms | {o * 1e3:.0f} ms |")
    print(f"| peak RSS | {statistics.median(c[2] for c in colds['fastreg']):.0f} MB | "
          f"{statistics.median(c[2] for c in colds['ort']):.0f} MB |")
    print(f"\n{args.rounds} rounds, median; each case in a fresh process, sides alternated.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
