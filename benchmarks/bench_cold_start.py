"""Where ``fastreg.inference.load(path)`` + the first predict spend a cold start, stage by stage.

    python benchmarks/bench_cold_start.py [--rounds 9] [--other-root DIR]

The bench's model (784-512-256-10 MLP: Linear, BatchNorm1d, ReLU, Dropout 0.2, twice, then
Linear; float32) saved two ways: as a model file (``fastreg.save(model)``: BatchNorm folded at
load) and as a saved predictor (``fastreg.save(fastreg.inference.compile(model))``: nothing to
fold). Each round is a fresh interpreter per file (``import fastreg`` excluded, ``.pyc`` present,
``OMP_NUM_THREADS=1``) that times, in process CPU time (steadier than wall time on a shared
machine):

* imports: the pure-Python modules the load path imports (found by a first, untimed process);
* read: opening and checking the container, the architecture and the tensors (CRC included);
* fold + build: folding, the Cython extensions' import, packing the weights (LinearChain);
* blas: the OpenBLAS routing (``fastreg.set_blas_interop``) done on the way, if any;
* predict: the first call, batch 1.

``--other-root DIR`` runs the same in another checkout (built, ``.pyc`` compiled) and prints
both, rounds alternated: an A/B of the load path. Prints medians (ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAKE = r"""
import sys, fastreg as fr
from benchmarks.bench_onnx import serving_mlp   # run with cwd = this checkout
model = serving_mlp()
fr.save(model, sys.argv[1])
fr.save(fr.inference.compile(model), sys.argv[2])
"""

MODULES = r"""
import sys, numpy as np, fastreg as fr
before = set(sys.modules)
fr.inference.load(sys.argv[1])(np.zeros((1, 784), np.float32))
print(",".join(m for m in sys.modules if m not in before
               and (m.startswith("fastreg") and not m.endswith(".cy") or m.startswith("json"))))
"""

STAGES = r"""
import sys, time, importlib
import numpy as np, fastreg as fr
T = time.process_time
path, mods = sys.argv[1], [m for m in sys.argv[2].split(",") if m]
from fastreg._kernels import runtime
blas = [0.0]
route = runtime._blas_route
def timed_route(pool):
    t = T()
    route(pool)
    blas[0] += T() - t
runtime._blas_route = timed_route
t0 = T()
for m in mods:
    importlib.import_module(m)
t1 = T()
from fastreg.io import ops_file
from fastreg import inference
ops, dt, meta = ops_file.read_ops(path)
t2 = T()
inference._check_ops(ops)
try:        # as fastreg.inference.load builds it (owned: folds may overwrite what was read)
    p = inference.Predictor._from_ops(ops, dt, owned=True)
except TypeError:       # a checkout from before that argument
    p = inference.Predictor._from_ops(ops, dt)
t3 = T()
p(np.zeros((1, 784), np.float32))
t4 = T()
print(t1 - t0, t2 - t1, t3 - t2 - blas[0], blas[0], t4 - t3, t4 - t0)
"""

NAMES = ("imports", "read", "fold + build", "blas", "predict", "total")


def _env(root: str) -> dict:
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run(root: str, code: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], env=_env(root), cwd=root,
                       capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{root}: failed:\n{r.stderr}")
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--other-root", default=None, help="another checkout to compare with")
    args = ap.parse_args()
    roots = [ROOT] + ([os.path.abspath(args.other_root)] if args.other_root else [])
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model file": os.path.join(tmp, "mlp.fr"),
                 "saved predictor": os.path.join(tmp, "mlp_predictor.fr")}
        _run(ROOT, MAKE, *files.values())
        mods = {(r, f): _run(r, MODULES, p) for r in roots for f, p in files.items()}
        times: dict = {}
        for _ in range(args.rounds):
            for f, p in files.items():
                for r in roots:
                    out = _run(r, STAGES, p, mods[(r, f)])
                    times.setdefault((r, f), []).append([float(v) for v in out.split()])
    print("| checkout | file | " + " | ".join(NAMES) + " |\n" + "|---" * (2 + len(NAMES)) + "|")
    for (r, f), rows in times.items():
        med = [statistics.median(c) * 1e3 for c in zip(*rows)]
        print(f"| {os.path.basename(r) or r} | {f} | " + " | ".join(f"{v:.2f}" for v in med)
              + " |")
    print(f"\nms of process CPU time, median of {args.rounds} fresh processes per cell "
          "(OMP_NUM_THREADS=1). Command: python benchmarks/bench_cold_start.py "
          + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
