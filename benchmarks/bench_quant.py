"""Quantized serving: fastreg int8 / bf16 vs ONNX Runtime float32 and ORT's own int8 model.

    python benchmarks/bench_quant.py [--rounds 5] [--batches 1,64] [--threads 1,2]
                                     [--min-time 0.2] [--sides fr-f32,fr-int8,fr-bf16,ort-f32,ort-int8]

The model is bench_onnx.py's 784-512-256-10 MLP (Linear, BatchNorm1d, ReLU, Dropout 0.2, twice,
then Linear(256, 10); random weights and running statistics, eval mode), written once with
``fastreg.onnx.export``. Sides, each timed in a fresh process per (side, batch, threads) case:

* ``fr-f32`` / ``fr-int8`` / ``fr-bf16``: ``fastreg.onnx.load`` of that file, then
  ``fastreg.inference.compile(model, weights=...)`` (float32, int8, bf16);
* ``fr-int8-split`` (not run by default): ``fr-int8`` with its int8 chain split over the threads
  from 250,000 multiply-adds (``Q8Chain(..., parallel_min_macs=2.5e5)``), so batch 1 runs on
  every thread too (the default chain splits from 2 million: batch 1 on one thread); compare
  it with ``fr-int8`` on a quiet machine before lowering the default;
* ``ort-f32``: ``onnxruntime.InferenceSession`` on the float file;
* ``ort-int8``: the file quantized by ORT itself,
  ``onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)`` (per-channel
  int8 weights, dynamic uint8 activations: ORT's calibration-free scheme).

ORT runs with ``intra_op_num_threads`` = threads, ``inter_op_num_threads`` = 1; fastreg with
``fastreg.set_num_threads(threads)``. Each round runs every case once per side, the side order
rotating between rounds, so a noisy neighbour hits all sides alike; a case's time is the median
over rounds of the per-call mean in one process (calls repeated until ``--min-time`` s). Before
timing, the parent prints each side's top-1 agreement with ``fr-f32`` and its largest output
difference on 256 random rows.

The floor at batch 1: the int8 weight bytes (535,040) divided by the read bandwidth measured in
the same process (a NumPy copy of a buffer of that size, counted as read + write bytes), i.e.
the time to stream the weights once from the cache level where they sit between calls.

Prints a markdown table: median times and the ratios (> 1: the fastreg side is faster).
Needs the onnx extra (onnx, onnxruntime); not an asv benchmark.
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
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, 784)).astype(np.float32)
if side.startswith("fr-"):
    import fastreg as fr
    fr.set_num_threads(threads)
    w = {"fr-f32": None, "fr-int8": "int8", "fr-int8-split": "int8", "fr-bf16": "bf16"}[side]
    pred = fr.inference.compile(fr.onnx.load(path), weights=w)
    if side == "fr-int8-split":     # the int8 chain split over the threads even at batch 1
        from fastreg._kernels.quant import cy as qcy
        pred._chains = {i: (j, qcy.Q8Chain([pred._qlinear[t].chain_layer()
                                             for t in range(i, j)], 0, 2.5e5))
                        for i, (j, _) in pred._chains.items()}
        if pred._fast is not None:
            pred._fast = pred._chains[0][1].fast
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
    sys.exit(0)
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
res = {"t": t / n}
if batch == 1 and side == "fr-int8":      # the floor: weight bytes / copy bandwidth, here
    src = np.ones(535040, np.uint8)
    dst = np.empty_like(src)
    best = 1e9
    for _ in range(200):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    res["bw"] = 2 * src.nbytes / best
print(json.dumps(res))
'''

SIDES = ("fr-f32", "fr-int8", "fr-bf16", "ort-f32", "ort-int8")
#: Sides that --sides may name besides the default ones.
EXTRA_SIDES = ("fr-int8-split",)
#: The checkout this script belongs to (imported by the parent and the children).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INT8_WEIGHT_BYTES = 784 * 512 + 512 * 256 + 256 * 10


def build_models(tmp: str) -> dict:
    """{"fr-...": float file, "ort-f32": float file, "ort-int8": ORT's quantized file}."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_onnx import build_model
    from onnxruntime.quantization import QuantType, quantize_dynamic
    f32 = os.path.join(tmp, "mlp.onnx")
    build_model(f32)
    q8 = os.path.join(tmp, "mlp_int8.onnx")
    quantize_dynamic(f32, q8, per_channel=True, weight_type=QuantType.QInt8)
    return {s: (q8 if s == "ort-int8" else f32) for s in SIDES + EXTRA_SIDES}


def run(side: str, path: str, batch: int, threads: int, min_time: float, out: str = "-"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHILD, side, path, str(batch), str(threads),
                        str(min_time), out], env=env, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{side} batch {batch} threads {threads} failed:\n{r.stderr}")
    return None if out != "-" else json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--sides", default=",".join(SIDES))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES) - set(EXTRA_SIDES))
    if unknown:
        ap.error(f"--sides: unknown {unknown}; choose from {', '.join(SIDES + EXTRA_SIDES)}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(tmp)
        # agreement on 256 rows (batch 256, one thread), against fastreg float32
        outs = {}
        for s in sides:
            f = os.path.join(tmp, f"{s}.npy")
            run(s, paths[s], 256, 1, 0.0, f)
            outs[s] = np.load(f)
        if "fr-f32" in outs:
            base = outs["fr-f32"]
            for s in sides:
                o = outs[s]
                agree = float((o.argmax(1) == base.argmax(1)).mean())
                diff = float(np.max(np.abs(o - base)) / max(np.max(np.abs(base)), 1e-30))
                print(f"{s}: top-1 agreement with fr-f32 {agree:.4f}, max |difference| / "
                      f"max |output| {diff:.1e}")
        cases = [(b_, t) for t in threads for b_ in batches]
        times = {(s, c): [] for s in sides for c in cases}
        bws = []
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for c in cases:
                for s in order:
                    res = run(s, paths[s], c[0], c[1], args.min_time)
                    times[(s, c)].append(res["t"])
                    if "bw" in res:
                        bws.append(res["bw"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print("| threads | batch | " + " | ".join(sides) + " | ORT f32 / fr int8 | "
          "ORT int8 / fr int8 | ORT f32 / fr bf16 |")
    print("|---" * (len(sides) + 5) + "|")
    for b_, t in cases:
        row = [f"{med[(s, (b_, t))] * 1e6:.1f} us" for s in sides]

        def ratio(a, b, b_=b_, t=t):
            if a in sides and b in sides:
                return f"{med[(a, (b_, t))] / med[(b, (b_, t))]:.2f}"
            return "-"
        print(f"| {t} | {b_} | " + " | ".join(row) + f" | {ratio('ort-f32', 'fr-int8')} | "
              f"{ratio('ort-int8', 'fr-int8')} | {ratio('ort-f32', 'fr-bf16')} |")
    if bws:
        bw = statistics.median(bws)
        print(f"\nbatch-1 floor (int8): {INT8_WEIGHT_BYTES} weight bytes / {bw / 1e9:.1f} GB/s "
              f"(copy bandwidth, same process) = {INT8_WEIGHT_BYTES / bw * 1e6:.1f} us")
    print(f"\n{args.rounds} rounds, median; each case in a fresh process, side order rotated. "
          f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
