"""The serving GEMMs on a shared machine: fastreg's compiled predictor vs ONNX Runtime, per call.

    python benchmarks/bench_gemm_serving.py [--rounds 7] [--batches 64,1024] [--threads 1,2]
                                            [--seconds 0.5] [--other-root DIR]

Same model and sides as ``bench_onnx.py`` (the 784-512-256-10 MLP exported by fastreg, ORT on
that file; each case a fresh process, sides alternated per round), but every call is timed on
its own and a case reports both the **minimum** and the **median** per-call time. On a machine
other processes share, the median moves with their load; the minimum is the call that ran
undisturbed, so the ratio of minima is the one to compare across moments (it still needs the
second core free for the length of one call to show a two-thread speed-up). ``--other-root``
adds a third side: fastreg from another checkout (e.g. the tree before a kernel change, built
in place), to A/B two builds of the kernels under the same noise.
Needs the onnx extra (``fastreg.onnx.export``) and onnxruntime. Not an asv benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(path: str) -> None:
    """bench_onnx.py's MLP (random running statistics), exported."""
    sys.path.insert(0, ROOT)
    from benchmarks.bench_onnx import build_model as build
    build(path)

CHILD = r'''
import json, statistics, sys, time
import numpy as np
side, path, batch, threads, seconds = sys.argv[1:6]
batch, threads, seconds = int(batch), int(threads), float(seconds)
x = np.random.default_rng(0).standard_normal((batch, 784)).astype(np.float32)
if side == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fn = lambda: sess.run(None, {name: x})[0]
else:
    import fastreg as fr
    fr.set_num_threads(threads)
    pred = fr.inference.compile(fr.onnx.load(path))
    fn = lambda: pred(x)
for _ in range(5):
    fn()
ts, end = [], time.perf_counter() + seconds
while time.perf_counter() < end or len(ts) < 5:
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
print(json.dumps([min(ts), statistics.median(ts)]))
'''


def run(root: str, side: str, path: str, batch: int, threads: int, seconds: float):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", CHILD, side, path, str(batch), str(threads),
                        str(seconds)], env=env, cwd=root, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{side} ({root}) batch {batch} threads {threads} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", default="64,1024")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=0.5, help="timed calls per case and round")
    ap.add_argument("--other-root", default=None,
                    help="another checkout of fastreg (built in place): a third side 'other'")
    a = ap.parse_args()
    if a.rounds < 1 or a.seconds <= 0:
        ap.error(f"--rounds must be >= 1 and --seconds > 0, got {a.rounds} and {a.seconds}")
    sides = [("fastreg", ROOT, "fastreg"), ("ort", ROOT, "ort")]
    if a.other_root:
        if not os.path.isdir(os.path.join(a.other_root, "fastreg")):
            ap.error(f"--other-root must be a fastreg checkout, got {a.other_root!r}")
        sides.append(("other", os.path.abspath(a.other_root), "fastreg"))
    batches = [int(b) for b in a.batches.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp.onnx")
        build_model(path)
        res = {}
        for r in range(a.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for t in threads:
                for b in batches:
                    for name, root, kind in order:
                        res.setdefault((name, t, b), []).append(
                            run(root, kind, path, b, t, a.seconds))
    names = [s[0] for s in sides]
    head = " | ".join(f"{n} min / median" for n in names)
    print(f"| threads | batch | {head} | ORT / fastreg (min) | ORT / fastreg (median) |"
          + (" other / fastreg (min) |" if a.other_root else ""))
    print("|---" * (4 + len(names) + (1 if a.other_root else 0)) + "|")
    for t in threads:
        for b in batches:
            mins = {n: min(v[0] for v in res[(n, t, b)]) for n in names}
            meds = {n: statistics.median(v[1] for v in res[(n, t, b)]) for n in names}
            cells = " | ".join(f"{mins[n] * 1e6:.0f} / {meds[n] * 1e6:.0f} us" for n in names)
            line = (f"| {t} | {b} | {cells} | {mins['ort'] / mins['fastreg']:.2f} | "
                    f"{meds['ort'] / meds['fastreg']:.2f} |")
            if a.other_root:
                line += f" {mins['other'] / mins['fastreg']:.2f} |"
            print(line)
    print(f"\n{a.rounds} rounds; per case and round {a.seconds} s of calls in a fresh process; "
          "min: the fastest call of all rounds, median: the median over rounds of the per-call "
          "median; sides alternated.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
