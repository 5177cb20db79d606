"""Print fastreg : peer speed-ups measured in one run (``fastreg bench``).

    fastreg bench [--quick] [--only GROUP[,GROUP]] [--threads N] [--markdown]
    python benchmarks/compare.py ...   (the same, from a checkout)

Each ``fastreg/_bench/compare_<group>.py`` module defines ``cases(quick: bool) -> list[Case]``;
peers (torch, scikit-learn) are imported only here, and a case whose peer is missing is skipped.
The table reports speed-up = peer time / fastreg time (> 1 means fastreg is faster) and
fastreg time / floor (1.0 would be at the FLOP or bandwidth floor). Absolute times are printed
for context only: these machines are shared and noisy, ratios are what we compare.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import subprocess
import sys

from ._timing import compare

HERE = os.path.dirname(os.path.abspath(__file__))


def machine_line() -> str:
    import numpy as np
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import fastreg
    spin = ", ".join(f"{k}={os.environ.get(k, 'default')}"
                     for k in ("GOMP_SPINCOUNT", *SPIN_ENV))
    interop = fastreg.get_blas_interop()
    blas = (f"OpenBLAS on fastreg's pool: {len(interop['routed'])} routed"
            if interop["mode"] == "auto" else f"blas interop {interop['mode']}")
    return (f"{cpu}, {fastreg.get_num_threads()} threads, Python {platform.python_version()}, "
            f"numpy {np.__version__}; {spin}; {blas}")


#: Idle thread pools must stop spinning promptly on both sides, or whichever library ran last
#: steals a core from the other: OpenBLAS's idle workers spin 2**28 cycles (~0.1 s) by default,
#: which made fastreg's kernels that run right after a numpy matmul 2-4x slower. 2**16 cycles
#: (~25 us) matches the GOMP_SPINCOUNT fastreg sets for its own (and torch's) OpenMP pool.
#: OpenBLAS reads it when numpy loads, so the driver re-runs itself with it set -- only where
#: fastreg's default BLAS interop cannot route OpenBLAS's jobs onto fastreg's OpenMP pool (then
#: OpenBLAS has no threads of its own to spin, and the re-run changed no ratio measurably in an
#: alternated A/B of ``--quick --only matmul,train``, 2026-12-03).
SPIN_ENV = {"OPENBLAS_THREAD_TIMEOUT": "16"}


def _openblas_spins() -> bool:
    """Would OpenBLAS's own idle threads spin next to fastreg's in this process? False when
    ``fastreg.set_blas_interop("auto")`` routes every loaded OpenBLAS onto fastreg's OpenMP pool;
    True with ``"off"``, an OpenBLAS without the threads callback, or no Cython/OpenMP build."""
    import fastreg
    from fastreg._kernels import runtime
    try:
        runtime.load_pool("cython")     # routes the OpenBLAS libraries loaded now ("auto")
    except ImportError:
        return True
    state = fastreg.get_blas_interop()
    return state["mode"] != "auto" or not state["routed"] or bool(state["skipped"])


def main(argv=None) -> int:
    missing = {k: v for k, v in SPIN_ENV.items() if k not in os.environ}
    if missing and os.environ.get("FASTREG_BENCH_REEXEC") != "1" and _openblas_spins():
        env = {**os.environ, **missing, "FASTREG_BENCH_REEXEC": "1"}
        args = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "fastreg._bench", *args], env=env)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller cases")
    ap.add_argument("--only", default="", help="comma-separated groups to run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)

    import fastreg
    if args.threads:
        fastreg.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(fastreg.get_num_threads())
    except ImportError:
        pass

    groups = [m.name[len("compare_"):] for m in pkgutil.iter_modules([HERE])
              if m.name.startswith("compare_")]
    if args.only:
        wanted = set(args.only.split(","))
        groups = [g for g in groups if g in wanted]
    print(f"# {machine_line()}")
    rows = []
    for g in sorted(groups):
        try:
            mod = importlib.import_module(f"fastreg._bench.compare_{g}")
            cases = mod.cases(args.quick)
        except ImportError as exc:  # a peer (torch, scikit-learn) that is not installed
            print(f"# {g}: skipped ({exc})")
            continue
        fastreg.set_blas_interop(fastreg.get_blas_interop()["mode"])  # a peer's new OpenBLAS
        for case in cases:
            r = compare(case, rounds=3 if args.quick else 7, min_time=0.02 if args.quick else 0.05)
            rows.append(r)
            _print_row(r, args.markdown, header=len(rows) == 1)
            sys.stdout.flush()
    return 0


def _fmt_t(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.3f} ms" if t >= 1e-4 else f"{t * 1e6:.1f} us"


def _print_row(r, markdown, header):
    speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    floor = "-" if r["floor_ratio"] is None else f"{r['floor_ratio']:.2f}"
    goal = "-" if r["goal"] is None else f"{r['goal']:g}x"
    cols = [r["group"], r["name"], r["peer"], _fmt_t(r["fastreg_s"]), _fmt_t(r["peer_s"]),
            speed, goal, floor]
    if markdown:
        if header:
            print("| op | case | peer | fastreg | peer | speed-up | goal | fastreg/floor |")
            print("|---|---|---|---|---|---|---|---|")
        print("| " + " | ".join(cols) + " |")
    else:
        if header:
            print(f"{'op':<11} {'case':<44} {'peer':<16} {'fastreg':>10} {'peer':>10} "
                  f"{'speed-up':>8} {'goal':>6} {'/floor':>6}")
        print(f"{cols[0]:<11} {cols[1]:<44} {cols[2]:<16} {cols[3]:>10} {cols[4]:>10} "
              f"{cols[5]:>8} {cols[6]:>6} {cols[7]:>6}")
