"""``fastreg study``: the regularization study, on Optuna.

Which of L1, L2, weight decay, dropout, batch norm, layer norm, early stopping, a learning-rate
schedule and data augmentation helps on *this* data, and how strongly? Each trial is one
training run; the study is an ``optuna.Study`` in an Optuna RDB storage (default
``sqlite:///<out>/study.db``), so resumption, several processes, Dask workers and several
machines (a PostgreSQL storage) are Optuna's mechanisms, not fastreg's.

Modes
-----
``compare`` (default): phase 1 runs every technique on its own at each point of a small fixed
grid of strengths (:mod:`fastreg.study._space`; the configurations are enqueued, so the set never
depends on the number of workers) with the base seed; each technique's strength is picked by the
VALIDATION metric (ties: grid order). Phase 2 re-runs each technique at its chosen strength, and
the combination, over ``seeds`` seeds. The combination: every technique whose phase-1 validation
metric beats the baseline's ("none"), at its chosen strength (early stopping when not worse; of
batch/layer norm the better one). Test metrics are computed once per trial on the held-out test
split and never guide anything.

``search``: a TPE search (seeded) over the joint space for ``n_trials`` trials and/or
``timeout`` seconds, with Optuna's MedianPruner fed the validation metric each epoch. Compare
mode measures every grid point in full (no pruner), so that its strength-vs-score curves have no
holes and its picks do not depend on which trial finished first.

Resumption: re-running the same study continues it -- configurations with a COMPLETE (or
pruned, queued, running) trial are not enqueued again; a trial left RUNNING by a killed
process stops beating (Optuna's heartbeat) and after the grace period is marked FAIL and
retried (``RetryHeartbeatStaleTrialCallback``).

TRIAL CONTRACT (shared with the report, :mod:`fastreg.study._report`)
------------------------------------------------------------------
- Studies in one storage: compare mode uses one Optuna study per phase named
  ``f"{name}/{technique}"`` (strength search) and ``f"{name}/final"`` (seed re-runs); search
  mode uses ``f"{name}/search"``. ``study.set_user_attr("fastreg", {"mode": "compare"|"search",
  "task": "classification"|"regression", "metric": "accuracy"|"rmse", "direction":
  "maximize"|"minimize", "data": <description str>, "n_train":, "n_valid":, "n_test":,
  "techniques": [...], "created": iso-time})`` on every study of the run.
- Every COMPLETE trial has ``trial.params`` (the searched strengths / choices, e.g. "l2", "l1",
  "weight_decay", "dropout", "patience", "lr", "norm", "augment", ...) and ``trial.user_attrs``:
  "technique": str (e.g. "none","L2","L1","weight decay","dropout","batch norm","layer norm",
  "early stopping","lr schedule","augmentation","combined","search"),
  "strength": {"name": param name, "value": float} or None,
  "seed": int, "config": dict (full resolved configuration, JSON-able),
  "history": {"loss": [...train DATA loss per epoch, WITHOUT the penalty term], "val_loss":
  [...], "<metric>": [...train metric], "val_<metric>": [...]} (lists of floats, one per epoch
  run),
  "best_epoch": int (1-based, by validation), "epochs_run": int, "stopped_early": bool,
  "valid": {metric: value at best epoch, "loss": ...}, "train": {metric: ..., "loss": ...},
  "test": {metric: ..., "loss": ...} (test of the model restored at its best epoch),
  "gap": train metric - test metric (for rmse: test - train), "seconds": float, "model_file":
  path or None (the trial's model ``.fr``, written under ``<out>/models/``; you may keep only
  the final/seed trials' files).
- trial value = validation metric at best epoch; study direction accordingly.
- ``write_report(storage, names: list[str], out_dir, best_model: str | None) -> dict[str,
  path]`` writes report.md, report.html, results.csv (+ PNGs) from the storage alone.

Notes on this engine's side of the contract: regression losses ("loss", "val_loss") are mean
squared errors in the target's units (squared); with ``cv=K`` the "valid"/"train"/"test"
numbers are means over the K folds (per fold in user_attrs "folds") and "history", "best_epoch"
and "model_file" are fold 1's. Model files are kept for the final (seed) trials and the search
trials; the strength-phase trials have ``model_file`` None. A diverged trial (non-finite loss)
is FAIL with user_attrs "error".
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ._data import StudyError

__all__ = ["StudyError", "StudyResult", "study"]


@dataclass
class StudyResult:
    """What :func:`study` returns."""
    studies: list                  # the optuna.Study objects of the run
    results: object                # pandas DataFrame, ranked (see results_frame)
    out_dir: str
    storage: str
    names: list
    best_model: str | None
    report: dict = field(default_factory=dict)     # file name -> path
    combined_uses: list = field(default_factory=list)
    interrupted: bool = False


def _safe_name(text: str) -> str:
    base = os.path.splitext(os.path.basename(str(text)))[0] or "study"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)


def study(data, target: str | None = None, y=None, *, labels: str | None = None,
          task: str = "auto", mode: str = "compare", n_trials: int | None = None,
          timeout: float | None = None, seeds: int = 3, cv: int | None = None,
          epochs: int = 30, hidden=(256, 128), lr: float = 1e-3, batch_size: int = 64,
          grid: str = "full", jobs: int = 1, dask: str | None = None,
          storage: str | None = None, study_name: str | None = None, out: str = "study_out",
          seed: int = 0, valid: float = 0.15, test: float = 0.2, progress: bool = True,
          read_options: dict | None = None, impute: str = "median", drop=(), features=None,
          heartbeat=None, techniques=None, report: bool = True, echo=print) -> StudyResult:
    """Run (or continue) a regularization study on ``data`` and write its report into ``out``.

    Parameters
    ----------
    data : str path, pandas DataFrame, (X, y) arrays, or X with ``y=``
        CSV/Parquet table (with ``target``); ``.npy`` images (N, H, W[, C]) with ``labels=`` a
        ``.npy`` of labels, or a ``.npz`` holding ``X`` and ``y``. Arrays of 3 or 4 dimensions
        are images (augmentation joins the techniques); 2-D arrays are a numeric table.
    target : str
        Target column of a table. ``y``: targets given separately.
    task : "auto", "classification" or "regression"
        auto: text targets or at most 100 distinct integers are classes. Metric: accuracy
        (maximized) or RMSE in target units (minimized).
    mode : "compare" or "search"
        See the module docstring; ``n_trials``/``timeout`` apply to search.
    seeds : int
        Seeds per technique in compare's final phase (seeds ``seed .. seed+seeds-1``).
    cv : int, optional
        K-fold cross-validation (K >= 2) on the non-test rows instead of one validation split.
    epochs, hidden, lr, batch_size : the base training run (Adam, ReLU MLP).
    grid : "full", "small" or "tiny"
        Strength grids of compare mode (4, 3 or 2 points per technique).
    jobs : int
        Local worker processes (spawned), each with ``cpu_count // jobs`` threads; 1 runs the
        trials in this process.
    dask : str, optional
        A Dask scheduler address, or "local:N" for a LocalCluster of N single-threaded worker
        processes: one worker task per Dask worker, each running trials against the storage
        (which the workers must reach: a PostgreSQL URL for a remote cluster).
    storage : str, optional
        SQLAlchemy URL of the Optuna storage (default ``sqlite:///<out>/study.db``).
    study_name : str, optional
        Prefix of the study names (default: the data file's name, or "study").
    out : str
        Output folder: study.db, models/, best_model.fr, the report.
    heartbeat : (interval, grace) seconds, optional
        Optuna heartbeat of running trials (default (5, 20)).
    techniques : list of str, optional
        A subset of the techniques (compare mode); "none" is always included.
    """
    from . import _run
    from ._data import prepare

    # -- validation of everything, before any trial ------------------------------------------
    if mode not in ("compare", "search"):
        raise StudyError(f"mode must be 'compare' or 'search', got {mode!r}")
    for nm, v, low in (("jobs", jobs, 1), ("seeds", seeds, 1), ("epochs", epochs, 1),
                       ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise StudyError(f"{nm} must be an integer >= {low}, got {v!r}")
    if mode == "search":
        if n_trials is None and timeout is None:
            raise StudyError("search mode needs n_trials (--search N) and/or timeout")
        if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
            raise StudyError(f"n_trials must be a positive integer, got {n_trials!r}")
    if timeout is not None and not timeout > 0:
        raise StudyError(f"timeout must be > 0 seconds, got {timeout!r}")
    if grid not in ("full", "small", "tiny"):
        raise StudyError(f"grid must be 'full', 'small' or 'tiny', got {grid!r}")
    if not lr > 0:
        raise StudyError(f"lr must be > 0, got {lr!r}")
    if dask is not None:
        if not isinstance(dask, str) or not dask:
            raise StudyError(f"dask must be a scheduler address or 'local:N', got {dask!r}")
        if dask.startswith("local:"):
            n = dask.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise StudyError(f"dask 'local:N' needs N >= 1, got {dask!r}")
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise StudyError("dask: dask.distributed is not installed (pip install "
                             "'fastreg[study]')") from None
    if techniques is not None:
        bad = [t for t in techniques if t not in _run._space.TECHNIQUES]
        if bad:
            raise StudyError(f"techniques: unknown {bad} (known: "
                             f"{list(_run._space.TECHNIQUES)})")
    hb = tuple(heartbeat) if heartbeat is not None else _run.HEARTBEAT
    out = os.path.abspath(out)
    prep = prepare(data, target, y, labels=labels, task=task, valid=valid, test=test, cv=cv,
                   seed=seed, read_options=read_options, impute=impute, drop=drop,
                   features=features)
    os.makedirs(out, exist_ok=True)
    url = storage or f"sqlite:///{os.path.join(out, 'study.db')}"
    _run.check_storage(url, hb)
    name = study_name or (_safe_name(data) if isinstance(data, (str, os.PathLike))
                          else "study")
    if techniques is not None:
        techniques = [t for t in _run._space.techniques_for(prep.kind) if t in techniques
                      or t == "none"]
    base = _run._space.base_config(hidden=hidden, lr=lr, batch_size=batch_size, epochs=epochs)
    if cv:
        base["cv"] = cv
    eng = _run.Engine(prep, mode=mode, name=name, storage_url=url, out_dir=out, seeds=seeds,
                      seed=seed, base=base, grid=grid, n_trials=n_trials, timeout=timeout,
                      jobs=jobs, dask=dask, heartbeat=hb, progress=progress, out=echo,
                      techniques=techniques)
    echo(f"data: {prep.description}; split train {len(prep.train)}, valid {len(prep.valid)}, "
         f"test {len(prep.test)}{f' ({cv}-fold cv)' if cv else ''}")
    if dask is not None and not dask.startswith("local:") and url.startswith("sqlite"):
        echo(f"warning: --dask {dask} with a SQLite storage: every Dask worker must reach "
             f"{url} on a shared disk; a cluster on several machines needs a server database "
             "(--storage postgresql://...)")
    echo(f"storage: {url}; study {name!r} ({mode}); workers: "
         f"{'dask ' + dask if dask else f'{jobs} process(es)'}")
    bar = _run.Progress(eng, progress)
    interrupted = False
    used: list = []
    try:
        if mode == "compare":
            names = eng.strength_phase()
            bar.start()
            eng.run_phase(names)
            fname, used = eng.final_phase(eng.chosen())
            eng.run_phase([fname])
        else:
            spec = {"phase": "search", "seed": seed, "base": base}
            eng._study(f"{name}/search", spec)
            bar.start()
            eng.run_phase([f"{name}/search"])
    except KeyboardInterrupt:
        interrupted = True
        print("\nfastreg study: interrupted; writing what is done (re-run the same command to "
              "continue)", file=sys.stderr)
    finally:
        bar.stop()
        eng.close()
    import optuna
    studies = [optuna.load_study(study_name=n, storage=eng.storage) for n in eng.names]
    res = _run.results_frame(eng.storage, eng.names, prep, mode)
    chosen = None
    if mode == "compare" and len(res) and "chosen" in res:
        chosen = res.loc[res["chosen"], "technique"].iloc[0]
    best = _run.best_model(eng.storage, eng.names, prep, mode, out, chosen)
    files = {}
    if report:
        files = write_report(url, list(eng.names), out, best)
    if mode == "compare" and not interrupted:
        what = " + ".join(used) if used else "none (no technique beat the baseline on validation)"
        echo(f"combined = {what}")
    echo(_run.format_table(res, prep.metric))
    if best:
        echo(f"best model (by validation): {best}")
    for k, p in files.items():
        echo(f"{k}: {p}")
    return StudyResult(studies=studies, results=res, out_dir=out, storage=url,
                       names=list(eng.names), best_model=best, report=files,
                       combined_uses=used, interrupted=interrupted)


def write_report(storage, names, out_dir, best_model=None) -> dict:
    """The report (``fastreg.study._report.write_report``) from the storage alone."""
    from ._report import write_report as _write
    return _write(storage, names, out_dir, best_model)


def report_only(out_dir: str, storage: str | None = None, study_name: str | None = None
                ) -> dict:
    """Regenerate the report of the studies in ``out_dir``'s storage (all fastreg studies in
    it, or those whose name starts with ``study_name``)."""
    import optuna
    out_dir = os.path.abspath(out_dir)
    url = storage or f"sqlite:///{os.path.join(out_dir, 'study.db')}"
    if storage is None and not os.path.exists(os.path.join(out_dir, "study.db")):
        raise StudyError(f"report_only: {out_dir!r} holds no study.db (give --storage)")
    from . import _run
    _run.check_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(url)
             if "fastreg" in s.user_attrs and (study_name is None or
                                                s.study_name.startswith(study_name + "/"))]
    if not names:
        raise StudyError(f"report_only: no fastreg study in {url!r}")
    best = os.path.join(out_dir, "best_model.fr")
    return write_report(url, names, out_dir, best if os.path.exists(best) else None)


class _CallableModule(type(sys)):
    """``fastreg.study`` is this package; calling it calls :func:`study`."""

    def __call__(self, *args, **kwargs):
        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
