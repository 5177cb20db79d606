"""How `fastreg study` scales: (1) the storage's ceiling -- no-op trials with a real trial's
write pattern (one intermediate value per epoch, 15 user attributes) against a SQLite file, in
1 and 2 processes; (2) the wall time of one 20-trial study with --jobs 1, --jobs 2 and
--dask local:2.

    python benchmarks/study_scaling.py [--epochs 30] [--trials 20] [--skip-study]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _noop_worker(url, n, epochs):
    import optuna

    from fastreg.study._run import make_storage
    storage = make_storage(url)
    study = optuna.load_study(study_name="noop", storage=storage)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for e in range(epochs):
            trial.report(x, e)
        for k in range(15):
            trial.set_user_attr(f"a{k}", {"v": [x] * epochs})
        return x
    study.optimize(objective, n_trials=n)


def storage_rate(procs: int, n: int, epochs: int) -> float:
    import optuna
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/s.db"
        from fastreg.study._run import make_storage
        optuna.create_study(study_name="noop", storage=make_storage(url))
        t0 = time.perf_counter()
        ps = [mp.get_context("spawn").Process(target=_noop_worker, args=(url, n, epochs))
              for _ in range(procs)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        return procs * n / (time.perf_counter() - t0)


def study_time(extra, trials, epochs) -> float:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "fastreg", "study", os.path.join(ROOT, "examples",
               "diabetes.csv"), "--target", "progression", "--search", str(trials),
               "--epochs", str(epochs), "--out", d, "--no-progress", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--skip-study", action="store_true")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    for procs in (1, 2):
        print(f"SQLite storage ceiling, {procs} process(es): "
              f"{storage_rate(procs, 40, a.epochs):.1f} no-op trials/s")
    if a.skip_study:
        return
    base = None
    for label, extra in (("--jobs 1", []), ("--jobs 2", ["--jobs", "2"]),
                         ("--dask local:2", ["--dask", "local:2"])):
        t = study_time(extra, a.trials, a.epochs)
        base = base or t
        print(f"{a.trials}-trial study {label}: {t:.1f} s wall (x{base / t:.2f} vs --jobs 1)")


if __name__ == "__main__":
    main()
