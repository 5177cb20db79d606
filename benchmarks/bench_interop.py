"""NumPy (OpenBLAS) and fastreg in one process: does either slow the other? (issue 15, item 4)

    python benchmarks/bench_interop.py [--rounds 5] [--reps 100] [--markdown]

Work: ``a @ b`` in NumPy (256x784 @ 784x512 float32, OpenBLAS, 2 threads), then fastreg's fused
Linear+ReLU (the same shapes) or one fastreg training step (compare_train's 784-512-256-10 MLP,
BN + ReLU + Dropout, AdamW, batch 256), repeated; each call timed alone and the median kept.
Each configuration runs in its own process (a fresh pool state, no spinning threads left from the
previous configuration), the configurations alternate round by round, and the table gives the
median over rounds and the range. Configurations:

- ``alone``: fastreg only / NumPy only (the reference times);
- ``off``: interleaved, ``fr.set_blas_interop("off")`` -- OpenBLAS's own threads, which spin
  ~0.1 s after every call (the issue measured the fused Linear+ReLU at 0.21x);
- ``off+timeout``: the same with ``OPENBLAS_THREAD_TIMEOUT=4`` exported (what a user can set);
- ``tpc``: interleaved, OpenBLAS limited to 1 thread through threadpoolctl around each fastreg
  call (``ThreadpoolController.limit``) -- the per-step switch the issue proposed;
- ``auto``: interleaved, the default: OpenBLAS's jobs run on fastreg's OpenMP pool.

The last column, CPU seconds per wall second of the timed loops, is the number of threads kept
busy: idle pools that spin push it up whatever the work, and it is much less sensitive to other
processes on the machine than the times are.

Goal: interleaved fastreg time within 10% of ``alone`` (ratio <= 1.10), and NumPy's matmul not
slowed either. Timed loops, so not a test; the machine is shared: compare ratios, rerun when busy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = ("alone", "off", "off+timeout", "tpc", "auto")
WORKS = ("linear", "step")


def _child(config: str, work: str, reps: int) -> dict:
    import numpy as np

    import fastreg as fr
    fr.set_blas_interop("off" if config.startswith("off") or config == "tpc" else "auto")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 784)).astype(np.float32)
    w = rng.standard_normal((512, 784)).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    y, y2 = np.empty((256, 512), np.float32), np.empty((256, 512), np.float32)
    if work == "linear":
        from fastreg._kernels import matmul as mm

        def ours():
            mm.linear_forward(a, w, b, y, "relu", backend="cython")
    else:
        from fastreg._bench.compare_train import fastreg_step
        ours, _ = fastreg_step()

    def theirs():
        np.matmul(a, w.T, out=y2)

    fn = ours
    if config == "tpc":
        from threadpoolctl import ThreadpoolController
        ctl = ThreadpoolController()

        def fn():
            with ctl.limit(limits=1, user_api="blas"):
                ours()
    for _ in range(5):
        fn()
        theirs()
    t_ours, t_np = [], []
    pc = time.perf_counter
    cpu0, wall0 = time.process_time(), pc()
    if config == "alone":
        for _ in range(reps):
            t0 = pc()
            ours()
            t_ours.append(pc() - t0)
        time.sleep(0.3)  # let every idle pool fall asleep
        for _ in range(reps):
            t0 = pc()
            theirs()
            t_np.append(pc() - t0)
    else:
        for _ in range(reps):
            t0 = pc()
            theirs()
            t1 = pc()
            fn()
            t2 = pc()
            t_np.append(t1 - t0)
            t_ours.append(t2 - t1)
    # CPU seconds the process burnt per second of its wall time: ~ the threads busy; spinning
    # idle pools push it to the core count however little work is done (robust to neighbours)
    busy = (time.process_time() - cpu0) / (pc() - wall0 - (0.3 if config == "alone" else 0.0))
    out = {"fastreg": float(np.median(t_ours)), "numpy": float(np.median(t_np)), "busy": busy}
    if config == "tpc":  # the cost of the switch alone
        t_sw = []
        for _ in range(reps):
            t0 = pc()
            with ctl.limit(limits=1, user_api="blas"):
                pass
            t_sw.append(pc() - t0)
        out["switch"] = float(np.median(t_sw))
    return out


def _run(config: str, work: str, reps: int) -> dict:
    env = dict(os.environ)
    if config == "off+timeout":
        env["OPENBLAS_THREAD_TIMEOUT"] = "4"
    else:
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", config, work,
                          str(reps)], capture_output=True, text=True, env=env, cwd=root, check=False)
    if out.returncode:
        raise RuntimeError(f"{config} {work} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--work", default=",".join(WORKS))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        config, work, reps = args.child
        print(json.dumps(_child(config, work, int(reps))))
        return 0
    import numpy as np
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; median of "
          f"{args.rounds} rounds (each configuration in its own process, alternated)")
    for work in args.work.split(","):
        res = {c: [] for c in CONFIGS}
        for _ in range(args.rounds):
            for c in CONFIGS:
                res[c].append(_run(c, work, args.reps))
        base_f = [r["fastreg"] for r in res["alone"]]
        base_n = [r["numpy"] for r in res["alone"]]
        what = "fused Linear+ReLU 256x784x512" if work == "linear" else "training step"
        if args.markdown:
            print(f"\n| {what} | fastreg ms | / alone (range) | numpy ms | / alone (range) "
                  f"| CPU s / wall s |")
            print("|---|---|---|---|---|---|")
        for c in CONFIGS:
            f = np.array([r["fastreg"] for r in res[c]])
            n = np.array([r["numpy"] for r in res[c]])
            rf, rn = f / np.median(base_f), n / np.median(base_n)
            extra = ""
            if c == "tpc":
                extra = f"  (switch alone {np.median([r['switch'] for r in res[c]]) * 1e6:.0f} us)"
            busy = np.median([r["busy"] for r in res[c]])
            cols = (f"{np.median(f) * 1e3:.3f}", f"{np.median(rf):.2f} ({rf.min():.2f}-{rf.max():.2f})",
                    f"{np.median(n) * 1e3:.3f}", f"{np.median(rn):.2f} ({rn.min():.2f}-{rn.max():.2f})",
                    f"{busy:.2f}")
            if args.markdown:
                print(f"| {c} | " + " | ".join(cols) + f" |{extra}")
            else:
                print(f"{what:<32} {c:<12} fastreg {cols[0]:>8} ms x{cols[1]:<18} "
                      f"numpy {cols[2]:>8} ms x{cols[3]:<18} busy {cols[4]}{extra}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
