"""Time per epoch: fastreg (estimator and plain loop) vs sklearn.neural_network.MLPClassifier.

The same configuration everywhere: synthetic float32 data (default 60000 × 784, 10 classes from
a random linear teacher), hidden_layer_sizes=(512, 256), ReLU, Adam, batch_size=256, shuffle,
random_state=0. Three workers, each measurement in its own fresh process (``--worker``), which
first runs one epoch on 2000 rows (kernel compilation / caches / BLAS warm-up, not timed):

- ``sklearn``: ``sklearn.neural_network.MLPClassifier(...).fit(X, y)`` with ``max_iter=1``;
- ``fastreg``: ``fastreg.sklearn.MLPClassifier``, the same call;
- ``fastreg-loop``: a plain loop over ``fr.data.DataLoader`` batches with the Module API
  (``Sequential`` of Linear/ReLU, ``CrossEntropyLoss``, ``Adam`` with scikit-learn's default L2
  penalty α = 1e-4 as the fused ``l2`` of the weights' group, ``backward(..., input_grad=False)``).

Like for like: scikit-learn (>= 1.1) keeps float32 input in float32 (its coefs_ are float32), so
all three compute in float32; per batch all three gather the shuffled rows, run forward and
backward (none computes the gradient w.r.t. the input data: scikit-learn's backprop stops at the
first hidden layer), compute the batch loss with its L2 term and take one Adam step; none
computes a validation score (``early_stopping=False``, the default). The two estimator fits also
include their input validation (one pass over X) and the label binarization. The workers
alternate within every round (the order rotates each round) and the report is the median over
``--rounds`` rounds, with the ratios of medians and their range over rounds.

    python benchmarks/bench_sklearn.py --rounds 5
    python benchmarks/bench_sklearn.py --rounds 5 --threads 1 --cpu   # A/B on a loaded machine
    python benchmarks/bench_sklearn.py --profile          # where one estimator epoch goes

``--profile`` runs one ``fastreg.sklearn.MLPClassifier`` epoch in this process on one thread and
prints CPU time per phase: each GEMM kind, the other kernels, the estimator's NumPy softmax and
loss, and the rest (gathering, Python, input validation, setup) as the remainder.
``--threads N`` exports OMP_NUM_THREADS / OPENBLAS_NUM_THREADS = N to every worker; ``--cpu``
reports process CPU seconds (all threads) instead of wall seconds -- with one thread, the
measure least disturbed by other jobs. Run it on a quiet machine: on a shared one, other jobs inflate both sides unevenly.
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

LIBS = ("fastreg", "sklearn", "fastreg-loop")
_clock = time.perf_counter          # time.process_time with --cpu


def _data(n: int, d: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((d, 10), dtype=np.float32)
    y = np.argmax(X @ W + rng.standard_normal((n, 10), dtype=np.float32), axis=1)
    return X, y


def _loop(n: int, d: int) -> float:
    """A plain DataLoader loop, one epoch, timed after a warm-up epoch on 2000 rows."""
    import fastreg as fr
    X, y = _data(n, d)
    fr.manual_seed(0)
    model = fr.nn.Sequential(fr.nn.Linear(d, 512), fr.nn.ReLU(), fr.nn.Linear(512, 256),
                             fr.nn.ReLU(), fr.nn.Linear(256, 10))
    loss_fn = fr.nn.CrossEntropyLoss()
    # scikit-learn's alpha = 1e-4: gradient alpha * W / batch, i.e. l2 = alpha / (2 * batch)
    opt = fr.optim.Adam(fr.optim.param_groups(model, l2=0.5e-4 / 256), lr=1e-3)

    def epoch(loader):
        model.train()
        total = 0.0
        for xb, yb in loader:
            total += loss_fn(model(xb), yb) * len(yb)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        return total / loader.num_samples

    epoch(fr.data.DataLoader(X[:2000], y[:2000], batch_size=256, seed=0))   # warm-up
    loader = fr.data.DataLoader(X, y, batch_size=256, seed=0)
    t0 = _clock()
    epoch(loader)
    return _clock() - t0


def worker(lib: str, n: int, d: int) -> float:
    """One timed epoch of ``lib`` in this process; returns seconds."""
    if lib == "fastreg-loop":
        return _loop(n, d)
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
    t0 = _clock()
    MLPClassifier(**kw).fit(X, y)
    return _clock() - t0


def profile(n: int, d: int) -> None:
    """One estimator epoch, one thread, CPU time per phase (kernel entry points wrapped)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import collections

    from sklearn.exceptions import ConvergenceWarning

    import fastreg as fr
    import fastreg.sklearn._mlp as mlp
    from fastreg._kernels import elementwise, matmul, optim
    warnings.simplefilter("ignore", ConvergenceWarning)
    fr.set_num_threads(1)
    acc: collections.Counter = collections.Counter()

    def wrap(mod, name, key):
        f = getattr(mod, name)

        def timed(*a, **k):
            t = time.process_time()
            try:
                return f(*a, **k)
            finally:
                acc[key] += time.process_time() - t
        setattr(mod, name, timed)

    for name in ("run_linear_forward", "run_linear_backward_input",
                 "run_linear_backward_input_act", "run_linear_backward_weight"):
        wrap(matmul, name, "GEMM " + name[len("run_linear_"):])
    wrap(elementwise, "run_activation_backward", "ReLU backward")
    wrap(optim, "_run", "Adam kernel")
    wrap(mlp, "_out_activation", "softmax (NumPy)")
    wrap(mlp, "_loss", "loss (NumPy)")
    X, y = _data(n, d)
    kw = {"hidden_layer_sizes": (512, 256), "activation": "relu", "solver": "adam",
          "batch_size": 256, "max_iter": 1, "shuffle": True, "random_state": 0}
    mlp.MLPClassifier(**kw).fit(X[:2000], y[:2000])
    acc.clear()
    t0 = time.process_time()
    mlp.MLPClassifier(**kw).fit(X, y)
    total = time.process_time() - t0
    print(f"one epoch {n}x{d}, 1 thread: {total:.3f} CPU s")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {k:28s} {v:7.3f} s  {100 * v / total:5.1f}%")
    rest = total - sum(acc.values())
    print(f"  {'rest (gather, Python, setup)':28s} {rest:7.3f} s  {100 * rest / total:5.1f}%")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=60000, help="rows")
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS / OPENBLAS_NUM_THREADS for the workers")
    ap.add_argument("--cpu", action="store_true", help="process CPU seconds, not wall seconds")
    ap.add_argument("--profile", action="store_true",
                    help="per-phase CPU time of one fastreg estimator epoch, one thread")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile:
        profile(args.n, args.features)
        return
    if args.worker:
        if args.cpu:
            global _clock
            _clock = time.process_time
        print(json.dumps({"seconds": worker(args.worker, args.n, args.features)}))
        return
    times: dict[str, list[float]] = {lib: [] for lib in LIBS}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    unit = "CPU s" if args.cpu else "s"
    for r in range(args.rounds):
        order = LIBS[r % len(LIBS):] + LIBS[:r % len(LIBS)]
        for lib in order:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", lib,
                                  "--n", str(args.n), "--features", str(args.features)]
                                 + (["--cpu"] if args.cpu else []),
                                 check=True, capture_output=True, text=True, cwd=root, env=env)
            t = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
            times[lib].append(t)
            print(f"round {r + 1}: {lib:12s} {t:7.3f} {unit}/epoch", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median {unit}/epoch over {args.rounds} rounds ({args.n}x{args.features} float32, "
          f"batch 256, 512-256 ReLU, Adam): " +
          ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    sk = times["sklearn"]
    for lib in ("fastreg", "fastreg-loop"):
        per = [s / f for s, f in zip(sk, times[lib])]
        print(f"scikit-learn / {lib} = {med['sklearn'] / med[lib]:.2f}x (per round "
              f"{min(per):.2f}-{max(per):.2f})")


if __name__ == "__main__":
    main()
