"""The study's report, from the Optuna storage alone.

STUB (engine branch): writes ``results.csv`` only -- one row per COMPLETE trial of the named
studies. The report branch replaces this file with the full report (report.md, report.html,
plots, importances) behind the same signature.
"""
from __future__ import annotations

import csv
import os


def write_report(storage, names, out_dir, best_model=None) -> dict:
    """Write the report of studies ``names`` in ``storage`` (URL or optuna storage) into
    ``out_dir``; return {"results.csv": path, ...}."""
    import optuna
    from optuna.trial import TrialState
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(storage, str):
        storage = optuna.storages.RDBStorage(storage)
    path = os.path.join(out_dir, "results.csv")
    cols = ["study", "trial", "technique", "strength_name", "strength_value", "seed", "value",
            "valid", "train", "test", "gap", "best_epoch", "epochs_run", "stopped_early",
            "seconds", "model_file"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name in names:
            study = optuna.load_study(study_name=name, storage=storage)
            info = study.user_attrs.get("fastreg", {})
            metric = info.get("metric", "accuracy")
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                a = t.user_attrs
                s = a.get("strength") or {}
                w.writerow([name, t.number, a.get("technique"), s.get("name"), s.get("value"),
                            a.get("seed"), t.value, a.get("valid", {}).get(metric),
                            a.get("train", {}).get(metric), a.get("test", {}).get(metric),
                            a.get("gap"), a.get("best_epoch"), a.get("epochs_run"),
                            a.get("stopped_early"), a.get("seconds"), a.get("model_file")])
    return {"results.csv": path}
