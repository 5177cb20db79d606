"""What fusing batch norm's statistics into the GEMM epilogue above it could save at most.

Issue 15 lists "fuse BatchNorm's statistics pass into the preceding GEMM's epilogue (column sums
of the output while it is in registers)". The most such a fusion can save is the statistics pass
itself: a training-mode forward (statistics, then normalise) minus an eval-mode forward (the same
normalising pass with given statistics). This script times both kernels on the batch norms of
the training step of ``benchmarks/bench_backends.py`` (784-512-256-10, batch 256: 256×512 and
256×256 float32), through the trusted entry points on preallocated buffers, and prints the
difference per step next to the step's time (pass it with ``--step-ms``: the fastreg row of
``bench_backends.py``).

    python benchmarks/bn_stats_share.py --threads 1 --step-ms 8.5
    python benchmarks/bn_stats_share.py --threads 2 --step-ms 4.9

Each time is the 10th percentile of 3000 back-to-back calls, best of two alternated passes (on a
shared machine, the calls that ran undisturbed). Not part of asv.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _best_times(norm, n: int, c: int, calls: int) -> dict[str, float]:
    """{"train", "eval"}: seconds per forward of an (n, c) float32 batch norm."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c)).astype(np.float32)
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    out, sm, sr = np.empty_like(x), np.empty(c, np.float32), np.empty(c, np.float32)

    def train():
        norm.run_batchnorm_forward_train(x, w, b, rm, rv, out, sm, sr, 0.1, 1e-5)

    def normalise():
        norm.run_batchnorm_forward_eval(x, w, b, rm, rv, out, 1e-5)

    best: dict[str, float] = {}
    for name, f in (("train", train), ("eval", normalise)) * 2:
        ts = []
        for _ in range(calls):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        best[name] = min(best.get(name, np.inf), float(np.percentile(ts, 10)))
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step-ms", type=float, default=None,
                    help="the training step's time, to print the share")
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args(argv)
    import fastreg as fr
    from fastreg._kernels import norm
    fr.set_num_threads(args.threads)
    total = 0.0
    for n, c in ((256, 512), (256, 256)):
        best = _best_times(norm, n, c, args.calls)
        stats = best["train"] - best["eval"]
        total += stats
        print(f"{n}x{c} float32, {args.threads} thread(s): training forward "
              f"{best['train'] * 1e6:.1f} us, normalising pass alone {best['eval'] * 1e6:.1f} us"
              f" -> statistics pass {stats * 1e6:.1f} us")
    line = f"statistics passes per step: {total * 1e6:.1f} us"
    if args.step_ms:
        line += f" = {100 * total * 1e3 / args.step_ms:.2f}% of a {args.step_ms} ms step"
    print(line)


if __name__ == "__main__":
    main()
