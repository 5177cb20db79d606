"""The study engine: Optuna studies in an RDB storage, phases, workers (inline, local processes,
Dask), progress, resumption, the best model and the report call."""
from __future__ import annotations

import datetime
import math
import os
import shutil
import sys
import threading
import time
import warnings

from . import _space
from ._data import StudyError

#: (heartbeat interval, grace period) in seconds: a RUNNING trial whose worker has not beaten
#: for the grace period is marked FAIL and retried (RetryHeartbeatStaleTrialCallback).
HEARTBEAT = (5, 20)
#: Retries of a trial whose worker died (then it stays FAIL and the study goes on without it).
MAX_RETRY = 2
#: Launch rounds per phase before giving up (a phase normally needs 1; a dead worker adds 1-2).
MAX_ROUNDS = 30


class _NoWork(Exception):
    """No WAITING trial left in a queue study: the worker moves on."""


_STORAGES: dict = {}


def make_storage(url: str, heartbeat=HEARTBEAT, quiet: bool = True):
    """An optuna RDBStorage with heartbeats and the retry of stale trials (one per URL and
    heartbeat in a process: opening one checks the schema, ~0.3 s)."""
    key = (url, tuple(heartbeat))
    if key not in _STORAGES:
        _STORAGES[key] = _make_storage(url, heartbeat, quiet)
    return _STORAGES[key]


def _make_storage(url: str, heartbeat, quiet: bool):
    kw = {}
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 300}}
    for attempt in range(5):
        try:
            return _open_storage(url, heartbeat, quiet, kw)
        except Exception as exc:
            # two processes creating the schema of a new database at once: one wins, the
            # other's CREATE TABLE / INSERT of the schema version fails; it is there a moment
            # later
            text = type(exc).__name__ + str(exc)
            if not ("IntegrityError" in text or "already exists" in text) or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _open_storage(url, heartbeat, quiet, kw):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if quiet:
            # ERROR: no per-trial "failed" tracebacks (an interrupted or diverged trial is
            # counted as failed by the progress line and the summary)
            optuna.logging.set_verbosity(optuna.logging.ERROR)
        storage = RDBStorage(url, heartbeat_interval=int(heartbeat[0]),
                             grace_period=int(heartbeat[1]),
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                 max_retry=MAX_RETRY), **kw)
    if url.startswith("sqlite"):          # WAL: readers do not block the writer; fewer fsyncs
        from sqlalchemy import event

        @event.listens_for(storage.engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
        storage.engine.dispose()          # connections made before the listener: reopened
    return storage


def check_storage(url: str, heartbeat=HEARTBEAT) -> None:
    """Raise StudyError naming ``storage`` when the URL is malformed or the database cannot be
    opened (before any trial)."""
    if not isinstance(url, str) or not url:
        raise StudyError(f"storage must be an SQLAlchemy URL string, got {url!r}")
    try:
        from sqlalchemy.engine import make_url
        u = make_url(url)
        u.get_dialect()
    except Exception as exc:  # noqa: BLE001 - any failure is a bad URL
        raise StudyError(f"storage {url!r}: not a usable SQLAlchemy URL ({exc})") from None
    if u.get_backend_name() == "sqlite" and u.database:
        d = os.path.dirname(os.path.abspath(u.database))
        if not os.path.isdir(d):
            raise StudyError(f"storage {url!r}: folder {d!r} does not exist")
    try:
        make_storage(url, heartbeat)
    except Exception as exc:  # noqa: BLE001
        raise StudyError(f"storage {url!r}: cannot open ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _claim_waiting(study):
    """Claim (WAITING -> RUNNING) the oldest queued trial of ``study`` with ONE conditional
    ``UPDATE ... WHERE state = 'WAITING'``; the trial id, or None when none is left.

    Optuna's own pop reads the state, then writes RUNNING: on SQLite (no row locks; pysqlite
    begins the transaction only at the write) two processes can both read WAITING and both
    "win", run the same trial twice and fail on the second ``tell`` ("Cannot tell a COMPLETE
    trial"). A conditional update is atomic on every database: exactly one claimer sees
    rowcount 1."""
    import datetime

    import sqlalchemy
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):          # in-memory / journal: optuna's own pop
        return optuna_pop(study)
    T = models.TrialModel
    for trial in storage.get_all_trials(study._study_id, deepcopy=False,
                                        states=(TrialState.WAITING,)):
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        stmt = (sqlalchemy.update(T)
                .where(T.trial_id == trial._trial_id, T.state == TrialState.WAITING)
                .values({T.state: TrialState.RUNNING, T._datetime_start_utc: now}))
        with backend.engine.begin() as conn:
            claimed = conn.execute(stmt).rowcount == 1
        if claimed:
            return trial._trial_id
    return None


def optuna_pop(study):
    import optuna
    return optuna.Study._pop_waiting_trial_id(study)


def _queue_study(name, storage, pruner=None):
    """An optuna.Study that runs only trials already in its queue (enqueued configurations): when
    none is WAITING, ``ask`` raises _NoWork instead of creating a fresh trial, so a worker never
    samples a configuration nobody asked for (the race between "queue empty?" and ``ask``)."""
    import optuna

    class QueueStudy(optuna.Study):
        def _pop_waiting_trial_id(self):
            tid = _claim_waiting(self)
            if tid is None:
                raise _NoWork
            return tid

    return QueueStudy(study_name=name, storage=storage, pruner=pruner)


def _suggest_fixed(trial, name, value):
    """Record a fixed (enqueued) param with a distribution that holds it; categorical params
    use the same choices in every trial (optuna requires it within a study)."""
    if isinstance(value, str) or value is None:
        choices = {"norm": ["none", "batch", "layer"], "schedule": ["none", "onecycle"]}.get(
            name, [value])
        return trial.suggest_categorical(name, choices)
    if isinstance(value, (bool, int)):
        return trial.suggest_int(name, int(value), int(value))
    return trial.suggest_float(name, float(value), float(value))


def _suggest(trial, name, d):
    """trial.suggest_* for an optuna distribution."""
    import optuna.distributions as D
    if isinstance(d, D.CategoricalDistribution):
        return trial.suggest_categorical(name, list(d.choices))
    if isinstance(d, D.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, log=d.log)
    return trial.suggest_float(name, d.low, d.high, log=d.log)


def _set_user_attrs(trial, attrs: dict) -> None:
    """``trial.set_user_attr`` for every item, in ONE database transaction when the storage is
    an RDBStorage (through its private ``_set_trial_attr_without_commit``, which its public
    ``set_trial_user_attr`` wraps in a commit of its own: 15 commits per trial otherwise, the
    largest cost of a small trial on SQLite); any other storage, or another optuna layout: one
    ``set_user_attr`` per item."""
    try:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        backend = getattr(trial.storage, "_backend", trial.storage)
        if isinstance(backend, RDBStorage) and hasattr(backend, "_set_trial_attr_without_commit"):
            with _create_scoped_session(backend.scoped_session, True) as session:
                for k, v in attrs.items():
                    backend._set_trial_attr_without_commit(
                        session, models.TrialUserAttributeModel, trial._trial_id, k, v)
            return
    except (ImportError, AttributeError):
        pass
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


class Objective:
    """The function every worker optimizes: read the trial's configuration from its params,
    train, record the contract's user_attrs, return the validation metric."""

    def __init__(self, prep, spec: dict, out_dir: str):
        self.prep, self.spec, self.out_dir = prep, spec, out_dir

    def __call__(self, trial):
        import optuna

        from ._trial import run_config
        spec, prep = self.spec, self.prep
        base = spec["base"]
        phase = spec["phase"]
        if phase == "strength":
            technique, seed = spec["technique"], spec["seed"]
            params = {}
            if spec["grid"]:
                name, values = spec["grid"]
                if isinstance(values[0], int):
                    params[name] = trial.suggest_int(name, min(values), max(values))
                else:
                    params[name] = trial.suggest_float(name, min(values), max(values),
                                                       log=min(values) > 0)
            config = _space.apply(base, technique, params)
            strength = _space.strength_of(technique, params)
            model_path = None
        elif phase == "final":
            technique = trial.suggest_categorical("technique", spec["techniques"])
            seed = trial.suggest_int("seed", 0, 2 ** 31 - 1)
            params = {k: _suggest_fixed(trial, k, v) for k, v in spec["chosen"][technique].items()}
            config = _space.apply(base, technique, params)
            strength = _space.strength_of(technique, params) if technique != "combined" else None
            model_path = os.path.join(self.out_dir, "models",
                                      f"{technique.replace(' ', '_')}_seed{seed}.fr")
        else:                                                    # search
            technique, seed = "search", spec["seed"]
            space = _space.search_space(prep.kind, base["epochs"])
            params = {k: _suggest(trial, k, d) for k, d in space.items()}
            config = _space.search_config(base, params)
            strength = None
            model_path = os.path.join(self.out_dir, "models", f"search_{trial.number}.fr")
        config["technique"] = technique
        try:
            # intermediate values only where a pruner reads them (search): one write each
            attrs, pruned = run_config(prep, config, seed, model_path=model_path,
                                       trial=trial if phase == "search" else None)
        except FloatingPointError as exc:          # a diverged run: a result, not a crash
            trial.set_user_attr("technique", technique)
            trial.set_user_attr("config", config)
            trial.set_user_attr("error", str(exc))
            return float("nan")                   # optuna marks the trial FAIL
        attrs["strength"] = strength
        _set_user_attrs(trial, attrs)
        if pruned:
            raise optuna.TrialPruned()
        return attrs["valid"][prep.metric]


def worker_main(storage_url, heartbeat, names, specs, prep, out_dir, threads=None,
                index=0, search=None):
    """One worker: run the queued trials of ``names`` (or the search) against the storage.
    ``threads``: fastreg's thread count for this process ("dask": the Dask worker's)."""
    import optuna

    import fastreg as fr
    if threads == "dask":
        try:
            from distributed import get_worker
            threads = get_worker().state.nthreads
        except Exception:  # noqa: BLE001
            threads = None
    if threads:
        fr.set_num_threads(int(threads))
    storage = make_storage(storage_url, heartbeat)
    done = 0
    for name in names:
        spec = specs[name]
        obj = Objective(prep, spec, out_dir)
        if spec["phase"] == "search":
            from optuna.study import MaxTrialsCallback
            from optuna.trial import TrialState
            n, deadline = search["n"], search["deadline"]
            sampler = optuna.samplers.TPESampler(seed=spec["seed"] + 1009 * index)
            pruner = optuna.pruners.MedianPruner(n_startup_trials=5,
                                                 n_warmup_steps=max(1, spec["base"]["epochs"]
                                                                    // 4))
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                      pruner=pruner)
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            left = None if n is None else n - len(study.get_trials(deepcopy=False,
                                                                   states=states))
            if (left is not None and left <= 0) or timeout == 0.0:
                continue
            study.optimize(obj, n_trials=left, timeout=timeout, catch=(),
                           callbacks=[MaxTrialsCallback(n, states=states)] if n else None)
            continue
        study = _queue_study(name, storage, pruner=optuna.pruners.NopPruner())
        try:
            study.optimize(obj, catch=())
        except _NoWork:
            pass
        done += 1
    return done


# ---------------------------------------------------------------------------------------------

def _trial_key(params: dict) -> tuple:
    out = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, float):
            v = float(f"{v:.12g}")
        out.append((k, v))
    return tuple(out)


def _existing_keys(study) -> set:
    """Configurations (param keys) that need no new trial: finished, queued or running, or
    failed by a diverged run (it would diverge again)."""
    from optuna.trial import TrialState
    keys = set()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and "error" not in t.user_attrs:
            continue        # killed/interrupted (retried) or a closed duplicate
        params = t.system_attrs.get("fixed_params", t.params)
        keys.add(_trial_key(params))
    return keys


def _dedupe_waiting(study) -> int:
    """Several ``fastreg study`` processes on one storage may enqueue the same configuration at
    the same moment (check, then enqueue: not atomic). Keep the oldest trial of each
    configuration; claim every younger WAITING copy (WAITING -> RUNNING is atomic in the
    storage, so two processes never both claim one) and close it as FAIL with user_attrs
    "duplicate" (the number of the trial kept). Returns the number closed."""
    from optuna.trial import TrialState
    storage, n = study._storage, 0
    first: dict = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.FAIL:
            continue
        key = _trial_key(t.system_attrs.get("fixed_params", t.params))
        if key not in first:
            first[key] = t.number
            continue
        if t.state != TrialState.WAITING:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except Exception:  # noqa: BLE001, S112 - popped or finished by another process
            continue
        storage.set_trial_user_attr(t._trial_id, "duplicate", first[key])
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        n += 1
    return n


def _jsonish(v):
    """``v`` as it reads back from the storage (tuples become lists)."""
    import json
    return json.loads(json.dumps(v))


class Engine:
    """Runs one study command: see :func:`fastreg.study.study`."""

    def __init__(self, prep, *, mode, name, storage_url, out_dir, seeds, seed, base, grid,
                 n_trials, timeout, jobs, dask, heartbeat, progress, out=print,
                 techniques=None):
        self.prep, self.mode, self.name = prep, mode, name
        self.storage_url, self.out_dir = storage_url, out_dir
        self.seeds, self.seed, self.base, self.grid = seeds, seed, base, grid
        self.n_trials, self.timeout = n_trials, timeout
        self.jobs, self.dask, self.heartbeat = jobs, dask, heartbeat
        self.progress, self.out = progress, out
        self.storage = make_storage(storage_url, heartbeat)
        self.techniques = list(techniques or _space.techniques_for(prep.kind))
        self.specs: dict[str, dict] = {}
        self.names: list[str] = []
        self._client = None
        self._cluster = None
        self._procs = []
        self.deadline = None if timeout is None else time.time() + timeout

    # -- studies ----------------------------------------------------------------------------

    def _info(self) -> dict:
        p = self.prep
        return {"mode": self.mode, "task": p.task, "metric": p.metric,
                "direction": p.direction, "data": p.description,
                "n_train": len(p.train), "n_valid": len(p.valid),
                "n_test": len(p.test),
                "techniques": (self.techniques + ["combined"]) if self.mode == "compare"
                else ["search"],
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}

    def _study(self, name, spec):
        import optuna
        study = optuna.create_study(study_name=name, storage=self.storage,
                                    direction=self.prep.direction, load_if_exists=True)
        info = self._info()
        old = study.user_attrs.get("fastreg")
        if old:
            if old.get("task") != info["task"] or old.get("mode") != info["mode"]:
                raise StudyError(f"study_name {name!r}: the storage already holds a "
                                 f"{old.get('mode')} study of a {old.get('task')} task; use "
                                 "another study name or storage")
            info["created"] = old.get("created", info["created"])
        prev = study.user_attrs.get("fastreg_spec")
        if prev and prev.get("phase") == spec["phase"]:
            for key in ("base", "grid", "seed"):
                if _jsonish(prev.get(key)) != _jsonish(spec.get(key)):
                    raise StudyError(
                        f"study_name {name!r}: the storage holds this study run with other "
                        f"settings ({key}: {prev.get(key)!r}, now {spec.get(key)!r}); re-run "
                        "with the same settings to continue it, or use another --study-name "
                        "or --out")
        study.set_user_attr("fastreg", info)
        study.set_user_attr("fastreg_spec", spec)
        self.specs[name] = spec
        if name not in self.names:
            self.names.append(name)
        return study

    def _enqueue(self, study, param_sets) -> int:
        have = _existing_keys(study)
        n = 0
        for params in param_sets:
            if _trial_key(params) not in have:
                study.enqueue_trial(params)
                n += 1
        if n:
            _dedupe_waiting(study)
        return n

    # -- running ----------------------------------------------------------------------------

    def _counts(self, names):
        from optuna.trial import TrialState
        c = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
        per = {}
        best = None
        sign = 1 if self.prep.direction == "maximize" else -1
        for n in names:
            sid = self.storage.get_study_id_from_name(n)
            w = r = 0
            for t in self.storage.get_all_trials(sid, deepcopy=False):
                s = t.state
                if s == TrialState.COMPLETE:
                    c["complete"] += 1
                    if best is None or sign * t.value > sign * best:
                        best = t.value
                elif s == TrialState.PRUNED:
                    c["pruned"] += 1
                elif s == TrialState.FAIL:
                    c["fail"] += 1
                elif s == TrialState.RUNNING:
                    c["running"] += 1
                    r += 1
                elif s == TrialState.WAITING:
                    c["waiting"] += 1
                    w += 1
            per[n] = (w, r)
        return c, per, best

    def _fail_stale(self, names):
        import optuna
        for n in names:
            study = optuna.load_study(study_name=n, storage=self.storage)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)

    def _search_needs(self, name) -> bool:
        if self.specs[name]["phase"] != "search":
            return False
        if self.deadline is not None and time.time() >= self.deadline:
            return False
        if self.n_trials is None:
            return True
        from optuna.trial import TrialState
        sid = self.storage.get_study_id_from_name(name)
        done = [t for t in self.storage.get_all_trials(sid, deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and "error" in t.user_attrs)]
        return len(done) < self.n_trials

    def run_phase(self, names):
        for _ in range(MAX_ROUNDS):
            self._fail_stale(names)
            _, per, _ = self._counts(names)
            need = [n for n in names if per[n][0] > 0 or self._search_needs(n)]
            if need:
                self._launch(need)
                continue
            if any(per[n][1] for n in names):          # running elsewhere, or a dead worker's
                time.sleep(max(0.5, self.heartbeat[0] / 2))
                continue
            return
        raise StudyError(f"the study did not finish after {MAX_ROUNDS} rounds of workers "
                         "(workers keep dying?)")

    def _worker_args(self, names):
        return (self.storage_url, self.heartbeat, names, self.specs, self.prep, self.out_dir)

    def _launch(self, names):
        search = {"n": self.n_trials, "deadline": self.deadline}
        args = self._worker_args(names)
        if self.dask is not None:
            return self._launch_dask(args, search)
        if self.jobs == 1:
            worker_main(*args, threads=None, index=0, search=search)
            return
        import multiprocessing as mp
        cores = os.cpu_count() or 1
        threads = max(1, cores // self.jobs)
        ctx = mp.get_context("spawn")
        self._procs = [ctx.Process(target=worker_main, args=args,
                                   kwargs={"threads": threads, "index": i, "search": search},
                                   daemon=False) for i in range(self.jobs)]
        for p in self._procs:
            p.start()
        try:
            for p in self._procs:
                p.join()
        except BaseException:
            for p in self._procs:
                if p.is_alive():
                    p.terminate()
            raise
        bad = [p.exitcode for p in self._procs if p.exitcode and p.exitcode > 0]
        self._procs = []
        if bad:
            raise StudyError(f"a worker process failed (exit code {bad[0]}); see its "
                             "traceback above")

    def _dask_client(self):
        if self._client is not None:
            return self._client
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise StudyError("dask: dask.distributed is not installed (pip install "
                             "'fastreg[study]')") from None
        if self.dask.startswith("local:"):
            n = int(self.dask.split(":", 1)[1])
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self._client = Client(self._cluster)
            self._threads = max(1, (os.cpu_count() or 1) // n)
        else:
            self._client = Client(self.dask, timeout=30)
            self._threads = "dask"
        return self._client

    def _launch_dask(self, args, search):
        from distributed import wait
        client = self._dask_client()
        workers = list(client.scheduler_info()["workers"])
        if not workers:
            raise StudyError(f"dask {self.dask!r}: the cluster has no workers")
        storage_url, heartbeat, names, specs, prep, out_dir = args
        prep_f = client.scatter(prep, broadcast=True)
        futs = [client.submit(worker_main, storage_url, heartbeat, names, specs, prep_f,
                              out_dir, threads=self._threads, index=i, search=search,
                              pure=False, workers=[w], allow_other_workers=True)
                for i, w in enumerate(workers)]
        try:
            wait(futs)
        except BaseException:
            client.cancel(futs)
            raise
        for f in futs:
            if f.status == "error":
                exc = f.exception()
                if type(exc).__name__ == "KilledWorker":
                    continue                 # the killed trials are retried by the next round
                raise exc

    def close(self):
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    # -- the modes --------------------------------------------------------------------------

    def strength_phase(self):
        names = []
        for t in self.techniques:
            grid = _space.GRIDS[self.grid].get(t)
            spec = {"phase": "strength", "technique": t, "grid": grid, "seed": self.seed,
                    "base": self.base}
            name = f"{self.name}/{t}"
            study = self._study(name, spec)
            self._enqueue(study, _space.strength_configs(t, self.grid))
            names.append(name)
        return names

    def chosen(self):
        """technique -> (params, validation value) of its best grid point (ties: grid order)."""
        import optuna
        from optuna.trial import TrialState
        out = {}
        sign = 1 if self.prep.direction == "maximize" else -1
        for t in self.techniques:
            study = optuna.load_study(study_name=f"{self.name}/{t}", storage=self.storage)
            grid = _space.strength_configs(t, self.grid)
            done = {}
            for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                done.setdefault(_trial_key(tr.params), tr.value)
            best = None
            for params in grid:
                v = done.get(_trial_key(params))
                if v is not None and (best is None or sign * v > sign * best[1]):
                    best = (params, v)
            if best is not None:
                out[t] = best
        return out

    def final_phase(self, chosen):
        none_v = chosen.get("none", (None, None))[1]
        if none_v is None:
            combo, used = {}, []
        else:
            combo, used = _space.combine(self.base, chosen, none_v,
                                         self.prep.direction == "maximize")
        finals = {t: dict(chosen[t][0]) for t in self.techniques if t in chosen}
        finals["combined"] = combo
        spec = {"phase": "final", "techniques": self.techniques + ["combined"],
                "chosen": finals, "combined_uses": used, "base": self.base}
        name = f"{self.name}/final"
        study = self._study(name, spec)
        seeds = [self.seed + i for i in range(self.seeds)]
        self._enqueue(study, [{"technique": t, "seed": s, **p} for t, p in finals.items()
                              for s in seeds])
        return name, used

    def expected_total(self):
        if self.mode == "search":
            return self.n_trials
        n1 = sum(len(_space.strength_configs(t, self.grid)) for t in self.techniques)
        return n1 + (len(self.techniques) + 1) * self.seeds


# ---------------------------------------------------------------------------------------------
# progress

class Progress:
    """A live bar of trials (done / pruned / failed / running, best so far, ETA) on stderr,
    polling the storage: tqdm when installed, else a plain line every 5 s."""

    def __init__(self, engine, enabled: bool):
        self.engine, self.enabled = engine, enabled
        self.total = engine.expected_total()
        self._stop = threading.Event()
        self._thread = None
        self._bar = None
        self.t0 = time.time()
        self._start_done = None

    def start(self):
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, desc="trials", unit="trial", file=sys.stderr,
                             dynamic_ncols=True)
        except ImportError:
            self._bar = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _line(self):
        names = list(self.engine.names)
        if not names:
            return None, ""
        c, _, best = self.engine._counts(names)
        finished = c["complete"] + c["pruned"] + c["fail"]
        if self._start_done is None:
            self._start_done = finished
        rate_n = finished - self._start_done
        eta = ""
        if rate_n > 0 and self.total:
            left = max(0, self.total - c["complete"] - c["pruned"])
            eta = f", ETA {left * (time.time() - self.t0) / rate_n:.0f} s"
        best_s = "-" if best is None else f"{best:.4g}"
        return c, (f"done {c['complete']}, pruned {c['pruned']}, failed {c['fail']}, running "
                   f"{c['running']}, best {self.engine.prep.metric} {best_s}{eta}")

    def _loop(self):
        last = 0.0
        while not self._stop.wait(1.0):
            try:
                c, text = self._line()
            except Exception:  # noqa: BLE001, S112 - a busy database: try again next second
                continue
            if c is None:
                continue
            if self._bar is not None:
                self._bar.n = min(self.total or 10 ** 9, c["complete"] + c["pruned"])
                self._bar.set_postfix_str(text, refresh=True)
            elif time.time() - last >= 5:
                print(f"fastreg study: {text}", file=sys.stderr, flush=True)
                last = time.time()

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        if self._bar is not None:
            try:
                c, text = self._line()
                if c is not None:
                    self._bar.n = min(self.total or 10 ** 9, c["complete"] + c["pruned"])
                    self._bar.set_postfix_str(text, refresh=True)
            except Exception:  # noqa: BLE001, S110 - the last refresh is cosmetic
                pass
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# results

def results_frame(storage, names, prep, mode):
    """The ranked results (pandas DataFrame): per technique over its seeds in compare mode
    (ranked by mean test metric; ``chosen`` marks the pick by validation), per trial in search
    mode (ranked by validation)."""
    import numpy as np
    import optuna
    import pandas as pd
    from optuna.trial import TrialState
    metric = prep.metric
    rows = []
    if mode == "compare" and not any(n.endswith("/final") for n in names):
        mode = "search"      # interrupted in phase 1: list its trials, one row per config
    for name in names:
        if mode == "compare" and not name.endswith("/final"):
            continue
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            s = a.get("strength") or {}
            rows.append({"technique": a.get("technique"), "strength": s.get("name"),
                         "value": s.get("value"), "seed": a.get("seed"),
                         f"valid_{metric}": a["valid"][metric],
                         f"train_{metric}": a["train"][metric],
                         f"test_{metric}": a["test"][metric], "gap": a["gap"],
                         "epochs_run": a["epochs_run"], "best_epoch": a["best_epoch"],
                         "seconds": a["seconds"], "model_file": a.get("model_file"),
                         "trial": t.number, "params": dict(t.params)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    asc = metric == "rmse"
    if mode == "search":
        return df.sort_values(f"valid_{metric}", ascending=asc, kind="stable").reset_index(
            drop=True)
    g = df.groupby("technique", sort=False)
    out = pd.DataFrame({
        "strength": g["strength"].first(), "value": g["value"].first(),
        "seeds": g["seed"].nunique(),
        f"valid_{metric}": g[f"valid_{metric}"].mean(),
        f"test_{metric}": g[f"test_{metric}"].mean(),
        f"test_{metric}_std": g[f"test_{metric}"].std(ddof=1).fillna(0.0),
        "gap": g["gap"].mean(), "epochs_run": g["epochs_run"].mean(),
        "best_epoch": g["best_epoch"].mean(), "seconds": g["seconds"].mean()}).reset_index()
    v = out[f"valid_{metric}"].to_numpy()
    pick = int(np.argmin(v) if asc else np.argmax(v))
    out["chosen"] = False
    out.loc[pick, "chosen"] = True
    return out.sort_values(f"test_{metric}", ascending=asc, kind="stable").reset_index(
        drop=True)


def best_model(storage, names, prep, mode, out_dir, technique=None):
    """Copy the model of the configuration chosen by VALIDATION to ``<out>/best_model.fr``:
    compare: the technique with the best mean validation metric over its seeds, its best-
    validation seed; search: the best trial. Returns the path or None."""
    import optuna
    from optuna.trial import TrialState
    sign = 1 if prep.direction == "maximize" else -1
    cands = []
    for name in names:
        if (mode == "compare" and not name.endswith("/final")):
            continue
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        cands += [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("model_file") and
                  os.path.exists(t.user_attrs["model_file"])]
    if not cands:
        return None
    if mode == "compare":                # the technique results_frame marks "chosen"
        cands = sorted([t for t in cands if t.user_attrs["technique"] == technique],
                       key=lambda t: t.user_attrs["seed"])
        if not cands:
            return None
    best = max(cands, key=lambda t: sign * t.value)      # first of equals (lowest seed)
    path = os.path.join(out_dir, "best_model.fr")
    shutil.copyfile(best.user_attrs["model_file"], path)
    return path


def format_table(df, metric) -> str:
    if df is None or df.empty:
        return "(no finished trials)"
    lines = [(f"{'technique':<15} {'strength':>20} {'valid':>8} {'test':>8} {'± std':>7} "
              f"{'gap':>7} {'epochs':>6} {'best':>5} {'s':>6}")]
    lines.append("-" * len(lines[0]))
    for _, r in df.iterrows():
        st = "" if r.get("strength") in (None, "") or (isinstance(r.get("strength"), float)
                                                       and math.isnan(r["strength"])) \
            else f"{r['strength']}={r['value']:.3g}"
        mark = " *" if r.get("chosen") else ""
        lines.append(f"{r['technique']:<15} {st:>20} {r[f'valid_{metric}']:8.4f} "
                     f"{r[f'test_{metric}']:8.4f} {r.get(f'test_{metric}_std', 0.0):7.4f} "
                     f"{r['gap']:7.4f} {r['epochs_run']:6.1f} {r['best_epoch']:5.1f} "
                     f"{r['seconds']:6.2f}{mark}")
    return "\n".join(lines)
