"""Time per epoch: fastreg.sklearn.MLPClassifier vs sklearn.neural_network.MLPClassifier.

The same configuration on both sides: synthetic float32 data (default 60000 × 784, 10 classes
from a random linear teacher), hidden_layer_sizes=(512, 256), ReLU, Adam, batch_size=256,
shuffle, random_state=0. Each measurement runs in its own fresh process (``--worker``): it first
fits one epoch on 2000 rows (kernel compilation / caches / BLAS warm-up, not timed), then times
``fit(X, y)`` with ``max_iter=1`` on the full data — one epoch plus the estimator's input
validation. The two libraries alternate within every round (the order flips each round) and the
report is the median over ``--rounds`` rounds, with the ratio of medians.

    python benchmarks/bench_sklearn.py --rounds 5

Run it on a quiet machine: on a shared one, other jobs inflate both sides unevenly.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings


def _data(n: int, d: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((d, 10), dtype=np.float32)
    y = np.argmax(X @ W + rng.standard_normal((n, 10), dtype=np.float32), axis=1)
    return X, y


def worker(lib: str, n: int, d: int) -> float:
    """One timed epoch of ``lib``'s MLPClassifier in this process; returns seconds."""
    if lib == "fastreg":
        from fastreg.sklearn import MLPClassifier
    else:
        from sklearn.neural_network import MLPClassifier
    from sklearn.exceptions import ConvergenceWarning
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = _data(n, d)
    kw = {"hidden_layer_sizes": (512, 256), "activation": "relu", "solver": "adam", "batch_size": 256,
              "max_iter": 1, "shuffle": True, "random_state": 0}
    MLPClassifier(**kw).fit(X[:2000], y[:2000])           # warm-up, not timed
    t0 = time.perf_counter()
    MLPClassifier(**kw).fit(X, y)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=60000, help="rows")
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--worker", choices=["fastreg", "sklearn"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps({"seconds": worker(args.worker, args.n, args.features)}))
        return
    times: dict[str, list[float]] = {"fastreg": [], "sklearn": []}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    for r in range(args.rounds):
        order = ("fastreg", "sklearn") if r % 2 == 0 else ("sklearn", "fastreg")
        for lib in order:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", lib,
                                  "--n", str(args.n), "--features", str(args.features)],
                                 check=True, capture_output=True, text=True, cwd=root, env=env)
            t = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
            times[lib].append(t)
            print(f"round {r + 1}: {lib:8s} {t:7.2f} s/epoch", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median s/epoch over {args.rounds} rounds ({args.n}x{args.features} float32, "
          f"batch 256, 512-256 ReLU, Adam): fastreg {med['fastreg']:.2f}, scikit-learn "
          f"{med['sklearn']:.2f}; scikit-learn / fastreg = {med['sklearn'] / med['fastreg']:.2f}x")


if __name__ == "__main__":
    main()
