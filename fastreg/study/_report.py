"""The report of ``fastreg study``, written from the Optuna storage alone.

:func:`write_report` reads every trial of the chosen studies and writes, in ``out_dir``:

- ``results.csv``: one row per COMPLETE trial (study, number, technique, strength, seed, every
  parameter, the validation / train / test metrics, the gap, epochs run, best epoch, early stop,
  seconds, value, model file);
- ``report.md`` and ``report.html`` (one self-contained file: inline CSS, PNGs as base64 data
  URIs, nothing fetched) with the header, the ranked table, the chosen configuration, the learning
  curves, the strength-vs-score plots, Optuna's parameter importances and the best model;
- the PNG figures the Markdown links (``curves_loss.png``, ``curves_<metric>.png``,
  ``strength.png``; prefixed by the run's name when the storage holds several runs).

How each number is chosen (stated in the report too):

- a technique's row (compare mode) is its runs at ONE strength: the strength of the ``final``
  study (re-run over seeds); while that study has no complete trial, the strength whose runs have
  the best validation mean in the technique's strength search (a tie: the smaller strength).
  A technique's seeds are one row: the parameters "seed" and "technique" (which the engine may
  search in its final phase) name a run, not a setting. Per row, over its n seeds:
  mean, and the sample standard deviation s = sqrt(Σ(x − x̄)² / (n − 1)) (shown as "–" for n = 1);
- rows are RANKED by the test mean (descending for accuracy, ascending for rmse); the difference
  vs the baseline (technique "none") is test mean − baseline test mean;
- the CHOSEN configuration (bold in the table) is the row with the best VALIDATION mean (search
  mode: the trial with the best validation value) — the test split never chooses anything;
- learning curves show one run per technique (its lowest seed), train dashed, validation solid,
  the best epoch as a dot, an early stop as a vertical dotted line; every panel of a figure has
  the same y-limits. The train loss is the DATA term only (no penalty), as the trials record it;
- importances: Optuna's fANOVA (seed 0) per study with >= 8 complete trials and >= 2 varying
  parameters, else a sentence saying why not.

The output depends only on the storage: studies and trials are read in sorted order, floats are
printed with fixed formats and the PNGs carry no time stamp, so a regenerated report is
byte-identical.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
from dataclasses import dataclass, field

from . import _report_plots as plots
from ._report_render import (
    Bold,
    Bullets,
    Code,
    CodeBlock,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)

#: The baseline technique: the row every other is compared with.
BASELINE = "none"
#: Search mode: rows of the ranked table; curves drawn.
TOP_K = 10
TOP_CURVES = 5
#: Optuna's importances are computed when a study has at least this many COMPLETE trials
#: and at least 2 parameters that vary among them.
MIN_IMPORTANCE_TRIALS = 8
#: Strength names drawn on a log x-axis when every value is > 0 (the λ's); others log when their
#: positive values span >= 20x.
#: Parameters that name a run rather than configure it: not part of a technique's setting,
#: not counted for the importances.
RUN_PARAMS = frozenset({"seed", "technique"})
#: Failed trials listed with their error.
MAX_FAILURES = 10
_LOG_STRENGTHS = frozenset({"l1", "l2", "weight_decay", "lr"})
_LOG_SPAN_X = 20.0
_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
_STATE_WORDS = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                "WAITING": "waiting"}


# ---------------------------------------------------------------------------------------------
# reading the storage
# ---------------------------------------------------------------------------------------------

@dataclass
class TrialRecord:
    """One trial, flattened from its FrozenTrial (missing attributes become None / {})."""
    study: str
    phase: str                      # "final", "search" or the technique studied
    number: int
    state: str
    technique: str
    strength_name: str | None
    strength_value: float | None
    seed: int | None
    params: dict
    valid: dict
    train: dict
    test: dict
    gap: float | None
    epochs_run: int | None
    best_epoch: int | None
    stopped_early: bool | None
    seconds: float | None
    value: float | None
    history: dict
    config: dict | None
    model_file: str | None
    intermediate: dict              # epoch -> validation metric (pruned trials)
    error: str | None = None        # why a FAIL trial failed (the engine's "error" attribute)
    log_params: frozenset = frozenset()   # parameters searched on a log scale


@dataclass
class StudyInfo:
    name: str
    phase: str
    counts: dict                    # state -> number of trials
    trials: list                    # TrialRecord, every state, by number
    study: object                   # the optuna Study (for the importances)


@dataclass
class Run:
    """The studies of one ``fastreg study`` run (compare: one per phase; search: one)."""
    name: str
    meta: dict
    studies: list = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.meta.get("mode", "compare")

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "value")

    @property
    def maximize(self) -> bool:
        return self.meta.get("direction", "maximize") == "maximize"

    def complete(self) -> list:
        return [t for s in self.studies for t in s.trials if t.state == "COMPLETE"]

    def counts(self) -> dict:
        total = dict.fromkeys(_STATES, 0)
        for s in self.studies:
            for k, v in s.counts.items():
                total[k] = total.get(k, 0) + v
        return total


def _float(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def _int(v) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _record(study_name: str, phase: str, t) -> TrialRecord:
    ua = t.user_attrs or {}
    strength = ua.get("strength")
    s_name = s_value = None
    if isinstance(strength, dict):
        s_name = None if strength.get("name") is None else str(strength.get("name"))
        s_value = _float(strength.get("value"))

    def _split(key):
        d = ua.get(key)
        return dict(d) if isinstance(d, dict) else {}

    hist = ua.get("history")
    return TrialRecord(
        study=study_name, phase=phase, number=int(t.number), state=t.state.name,
        technique=str(ua.get("technique", "search" if phase == "search" else phase)),
        strength_name=s_name, strength_value=s_value, seed=_int(ua.get("seed")),
        params=dict(t.params), valid=_split("valid"), train=_split("train"), test=_split("test"),
        gap=_float(ua.get("gap")), epochs_run=_int(ua.get("epochs_run")),
        best_epoch=_int(ua.get("best_epoch")),
        stopped_early=(bool(ua["stopped_early"]) if ua.get("stopped_early") is not None
                       else None),
        seconds=_float(ua.get("seconds")), value=_float(t.value),
        history=dict(hist) if isinstance(hist, dict) else {},
        config=ua.get("config") if isinstance(ua.get("config"), dict) else None,
        model_file=None if ua.get("model_file") in (None, "") else str(ua.get("model_file")),
        intermediate={int(k): float(v) for k, v in (t.intermediate_values or {}).items()},
        error=None if ua.get("error") in (None, "") else str(ua.get("error")),
        log_params=frozenset(k for k, d in (t.distributions or {}).items()
                             if getattr(d, "log", False)))


def _storage_of(storage):
    """An Optuna storage from a URL, a path to an existing SQLite file, or a storage object."""
    import optuna
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, (str, os.PathLike)):
        raise TypeError(f"storage must be a storage URL (str) or an optuna storage, got "
                        f"{type(storage).__name__}")
    url = os.fspath(storage)
    if "://" not in url:
        if not os.path.isfile(url):
            raise ValueError(f"storage must be a storage URL such as sqlite:///study.db or an "
                             f"existing SQLite file, got {url!r}")
        url = "sqlite:///" + os.path.abspath(url)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isfile(path):
            # Optuna would create an empty database: a report of nothing, from a typo.
            raise ValueError(f"storage {url!r}: no such SQLite file {path!r}")
    return optuna.storages.get_storage(url)


def _split_runs(names: list[str]) -> dict[str, str]:
    """study name -> run name. ``<run>/final`` and ``<run>/search`` anchor a run; another study
    belongs to the longest anchored run it starts with, else to its name minus the last part."""
    anchors = sorted({n.rsplit("/", 1)[0] for n in names
                      if "/" in n and n.rsplit("/", 1)[1] in ("final", "search")},
                     key=len, reverse=True)
    out = {}
    for n in names:
        run = next((a for a in anchors if n.startswith(a + "/")), None)
        if run is None:
            run = n.rsplit("/", 1)[0] if "/" in n else n
        out[n] = run
    return out


def read_runs(storage, names: list[str] | None = None,
              study_prefix: str | None = None) -> list[Run]:
    """The runs of the storage (sorted by name), each with its studies (sorted by name) and
    every trial (by number)."""
    import optuna
    store = _storage_of(storage)
    available = sorted(optuna.study.get_all_study_names(store))
    if names is None:
        chosen = [n for n in available if n.startswith(study_prefix or "")]
        if not chosen:
            what = f"with the prefix {study_prefix!r} " if study_prefix else ""
            raise ValueError(f"no study {what}in the storage (studies there: "
                             f"{available if available else 'none'})")
    else:
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"names: no study named {missing} in the storage (studies there: "
                             f"{available if available else 'none'})")
        chosen = sorted(set(names))
    run_of = _split_runs(chosen)
    runs: dict[str, Run] = {}
    for n in chosen:
        study = optuna.load_study(study_name=n, storage=store)
        run = runs.setdefault(run_of[n], Run(name=run_of[n], meta={}))
        meta = study.user_attrs.get("fastreg")
        if isinstance(meta, dict) and not run.meta:
            run.meta = dict(meta)
        phase = n[len(run.name) + 1:] if n.startswith(run.name + "/") else n
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        recs = [_record(n, phase, t) for t in trials]
        counts = dict.fromkeys(_STATES, 0)
        for r in recs:
            counts[r.state] = counts.get(r.state, 0) + 1
        if not isinstance(meta, dict):
            # a study fastreg did not write: its trials ranked by their values, as a search
            run.meta.setdefault("direction", study.direction.name.lower())
            run.meta.setdefault("mode", "search")
        run.studies.append(StudyInfo(name=n, phase=phase, counts=counts, trials=recs,
                                     study=study))
    return [runs[k] for k in sorted(runs)]


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------

def mean_std(values) -> tuple[float, float | None, int]:
    """(mean, sample std (n − 1), n) of the finite values; std None for n < 2, mean NaN for 0."""
    xs = [v for v in (_float(x) for x in values) if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return math.nan, None, 0
    m = math.fsum(xs) / n
    if n < 2:
        return m, None, n
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1)), n


def fmt(v, digits: int = 4) -> str:
    """Fixed float format: ``digits`` decimals in [1e-4, 1e5), else scientific; "–" if missing."""
    f = _float(v)
    if f is None or math.isnan(f):
        return "–"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f != 0 and (abs(f) < 1e-4 or abs(f) >= 1e5):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}f}"


def fmt_strength(v) -> str:
    f = _float(v)
    if f is None:
        return "–" if v is None else str(v)
    if f == int(f) and abs(f) < 1e6:
        return str(int(f))
    return f"{f:.3g}"


def fmt_pm(m, s) -> str:
    return f"{fmt(m)} ± {fmt(s)}"


def fmt_signed(v) -> str:
    f = _float(v)
    if f is None or math.isnan(f):
        return "–"
    s = fmt(abs(f))
    return ("−" if f < 0 else "+") + s


def _better_key(maximize: bool):
    """Sort key: best first; NaN last."""
    def key(v):
        f = _float(v)
        if f is None or math.isnan(f):
            return math.inf
        return -f if maximize else f
    return key


def _setting(params: dict) -> dict:
    """The parameters that make a configuration: without those that only name the run (the
    engine may search "seed" and "technique" as parameters of its final phase)."""
    return {k: v for k, v in params.items() if k not in RUN_PARAMS}


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={fmt_strength(v) if _float(v) is not None else v}"
                     for k, v in sorted(_setting(params).items()))


@dataclass
class Group:
    """The runs of one technique at one setting (its seeds)."""
    technique: str
    strength_name: str | None
    strength_value: float | None
    params: dict
    phase: str
    trials: list

    def stat(self, split: str, key: str):
        return mean_std([getattr(t, split).get(key) for t in self.trials])

    def mean_of(self, attr: str) -> float:
        return mean_std([getattr(t, attr) for t in self.trials])[0]

    @property
    def seeds(self) -> list:
        return sorted(t.seed for t in self.trials if t.seed is not None)

    def setting(self) -> str:
        if self.strength_name is not None:
            return f"{self.strength_name}={fmt_strength(self.strength_value)}"
        return _params_text(self.params) or "–"

    def representative(self):
        """The run whose curves are drawn: the lowest seed (then the lowest trial number)."""
        return min(self.trials, key=lambda t: (t.seed is None, t.seed or 0, t.number))


def _groups(trials: list) -> list[Group]:
    by = {}
    for t in trials:
        key = (t.phase, t.technique, t.strength_name, t.strength_value,
               json.dumps(_setting(t.params), sort_keys=True, default=str))
        by.setdefault(key, []).append(t)
    return [Group(technique=k[1], strength_name=k[2], strength_value=k[3],
                  params=_setting(v[0].params), phase=k[0],
                  trials=sorted(v, key=lambda t: t.number))
            for k, v in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]),
                                                           kv[0][3] if kv[0][3] is not None
                                                           else -math.inf, kv[0][4]))]


@dataclass
class CompareRow:
    group: Group
    source: str                     # "final" or "strength search"
    test: tuple
    valid: tuple
    gap: float
    epochs: float
    best_epoch: float
    seconds: float
    delta: float | None = None


def compare_rows(run: Run) -> list[CompareRow]:
    """One row per technique at its chosen strength, ranked by test mean (best first)."""
    metric, maximize = run.metric, run.maximize
    vkey = _better_key(maximize)
    groups = _groups(run.complete())
    final = [g for g in groups if g.phase == "final"]
    searched = [g for g in groups if g.phase != "final"]
    rows = []
    for tech in sorted({g.technique for g in groups}):
        cands, source = [g for g in final if g.technique == tech], "final"
        if not cands:
            cands, source = [g for g in searched if g.technique == tech], "strength search"
        best = min(cands, key=lambda g: (vkey(g.stat("valid", metric)[0]),
                                         g.strength_value if g.strength_value is not None
                                         else -math.inf))
        rows.append(CompareRow(group=best, source=source, test=best.stat("test", metric),
                               valid=best.stat("valid", metric), gap=best.mean_of("gap"),
                               epochs=best.mean_of("epochs_run"),
                               best_epoch=best.mean_of("best_epoch"),
                               seconds=best.mean_of("seconds")))
    rows.sort(key=lambda r: (vkey(r.test[0]), r.group.technique))
    base = next((r for r in rows if r.group.technique == BASELINE), None)
    if base is not None and not math.isnan(base.test[0]):
        for r in rows:
            r.delta = r.test[0] - base.test[0]
    return rows


def chosen_row(rows: list[CompareRow], maximize: bool) -> CompareRow | None:
    """The row with the best VALIDATION mean (ties: the earlier rank)."""
    if not rows:
        return None
    key = _better_key(maximize)
    return min(enumerate(rows), key=lambda kr: (key(kr[1].valid[0]), kr[0]))[1]


def search_ranking(run: Run) -> list:
    """COMPLETE trials by validation value (the trial value), best first; ties by number."""
    key = _better_key(run.maximize)
    return sorted(run.complete(), key=lambda t: (key(t.value), t.number))


# ---------------------------------------------------------------------------------------------
# results.csv
# ---------------------------------------------------------------------------------------------

def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def write_results_csv(runs: list[Run], path: str) -> None:
    recs = [t for run in runs for t in run.complete()]
    recs.sort(key=lambda t: (t.study, t.number))
    params = sorted({p for t in recs for p in t.params})
    splits = {s: sorted({k for t in recs for k in getattr(t, s)}) for s in
              ("valid", "train", "test")}
    header = (["study", "number", "state", "technique", "strength_name", "strength_value",
               "seed"] + [f"param_{p}" for p in params]
              + [f"{s}_{k}" for s in ("valid", "train", "test") for k in splits[s]]
              + ["gap", "epochs_run", "best_epoch", "stopped_early", "seconds", "value",
                 "model_file"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for t in recs:
            w.writerow([_csv_value(v) for v in
                        [t.study, t.number, t.state, t.technique, t.strength_name,
                         t.strength_value, t.seed]
                        + [t.params.get(p) for p in params]
                        + [getattr(t, s).get(k) for s in ("valid", "train", "test")
                           for k in splits[s]]
                        + [t.gap, t.epochs_run, t.best_epoch, t.stopped_early, t.seconds,
                           t.value, t.model_file]])


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def _metric_label(metric: str) -> str:
    return metric.upper() if metric == "rmse" else metric


def _shorten(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _curve_panels_compare(rows: list[CompareRow], key: str):
    """(panels, …) for the loss (key "loss") or the metric: one panel per technique in ranked
    order, the baseline's validation curve faint in every other panel."""
    base = next((r for r in rows if r.group.technique == BASELINE), None)
    base_valid = (base.group.representative().history.get("val_" + key, [])
                  if base is not None else [])
    panels = []
    for i, r in enumerate(rows):
        t = r.group.representative()
        train = list(t.history.get(key, []))
        valid = list(t.history.get("val_" + key, []))
        if not train and not valid:
            continue
        faint = [list(base_valid)] if base is not None and r is not base and base_valid else []
        what = ", ".join(x for x in (r.group.setting() if r.group.setting() != "–" else "",
                                     "" if t.seed is None else f"seed {t.seed}") if x)
        panels.append(plots.Panel(
            title=r.group.technique + ("\n" + _shorten(what) if what else ""),
            curves=[plots.Curve(train=train, valid=valid, color=plots.COLORS[i % 10],
                                best_epoch=t.best_epoch,
                                stop_epoch=t.epochs_run if t.stopped_early else None)],
            faint=faint, faint_label="baseline (none): validation"))
    return panels


def _curve_panels_search(run: Run, key: str):
    ranked = search_ranking(run)[:TOP_CURVES]
    curves = []
    for i, t in enumerate(ranked):
        train = list(t.history.get(key, []))
        valid = list(t.history.get("val_" + key, []))
        if train or valid:
            curves.append(plots.Curve(train=train, valid=valid, color=plots.COLORS[i % 10],
                                      label=f"#{t.number}", best_epoch=t.best_epoch,
                                      stop_epoch=t.epochs_run if t.stopped_early else None))
    faint = []
    if key == run.metric:                 # pruned trials report the validation metric
        for s in run.studies:
            for t in s.trials:
                if t.state == "PRUNED" and t.intermediate:
                    faint.append([t.intermediate[k] for k in sorted(t.intermediate)])
    if not curves and not faint:
        return []
    return [plots.Panel(title=f"top {len(curves)} trials by validation", curves=curves,
                        faint=faint, faint_label="pruned trials: validation")]


def curve_figures(run: Run, rows: list | None = None) -> dict:
    """{"curves_loss": Figure, "curves_<metric>": Figure} (figures with no data are left out).
    Requires matplotlib."""
    metric = run.metric
    figs = {}
    for key in ("loss", metric):
        if run.mode == "search":
            panels = _curve_panels_search(run, key)
        else:
            panels = _curve_panels_compare(rows if rows is not None else compare_rows(run), key)
        if not panels:
            continue
        if key == "loss":
            ylabel, train_label = "loss", "train loss (data term, no penalty)"
            valid_label, log_ok = "validation loss", True
        else:
            lab = _metric_label(metric)
            ylabel, train_label, valid_label = lab, f"train {lab}", f"validation {lab}"
            log_ok = not run.maximize
        title = (f"{'loss' if key == 'loss' else _metric_label(metric)} per epoch, same axes "
                 f"in every panel")
        figs[f"curves_{key}"] = plots.curve_figure(panels, ylabel, train_label, valid_label,
                                                   log_ok, title)
    return figs


def strength_panels(run: Run, rows: list[CompareRow]) -> list:
    """Per technique with a strength, in ranked order: validation and test (mean ± std over
    seeds) vs strength, from its strength search and the final re-run."""
    metric = run.metric
    chosen = {r.group.technique: r.group.strength_value for r in rows}
    by_tech: dict = {}
    for t in run.complete():
        if t.strength_name is None or t.strength_value is None:
            continue
        by_tech.setdefault((t.technique, t.strength_name), {}).setdefault(
            t.strength_value, []).append(t)
    rank = {r.group.technique: i for i, r in enumerate(rows)}
    panels = []
    for (tech, name), by_value in sorted(by_tech.items(),
                                         key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0])):
        xs = sorted(by_value)
        vm, vs, tm, ts = [], [], [], []
        for x in xs:
            v = mean_std([t.valid.get(metric) for t in by_value[x]])
            s = mean_std([t.test.get(metric) for t in by_value[x]])
            vm.append(v[0])
            vs.append(v[1])
            tm.append(s[0])
            ts.append(s[1])
        positive = all(x > 0 for x in xs)
        log_x = positive and (name in _LOG_STRENGTHS or
                              (len(xs) > 1 and max(xs) / min(xs) >= _LOG_SPAN_X))
        panels.append(plots.StrengthPanel(technique=tech, name=name, x=xs, valid_mean=vm,
                                          valid_std=vs, test_mean=tm, test_std=ts,
                                          chosen=chosen.get(tech), log_x=log_x))
    return panels


def search_param_panels(run: Run) -> list:
    """Search mode: per numeric parameter that varies (sorted by name), each complete trial's
    validation and test metric against its value; log x where the parameter was searched on a
    log scale; the chosen (best validation) trial's value marked."""
    metric = run.metric
    ranked = search_ranking(run)
    if not ranked:
        return []
    best = ranked[0]
    panels = []
    for name in sorted({p for t in ranked for p in _setting(t.params)}):
        pts = [(_float(t.params[name]), t.number, t) for t in ranked
               if name in t.params and not isinstance(t.params[name], bool)
               and _float(t.params[name]) is not None]
        if len({x for x, _, _ in pts}) < 2:
            continue
        pts.sort(key=lambda p: (p[0], p[1]))
        xs = [x for x, _, _ in pts]
        log_x = all(x > 0 for x in xs) and any(name in t.log_params for _, _, t in pts)
        panels.append(plots.StrengthPanel(
            technique=name, name=name, x=xs,
            valid_mean=[t.valid.get(metric, t.value) for _, _, t in pts],
            valid_std=[None] * len(pts), test_mean=[t.test.get(metric) for _, _, t in pts],
            test_std=[None] * len(pts), chosen=_float(best.params.get(name)), log_x=log_x))
    return panels


# ---------------------------------------------------------------------------------------------
# importances
# ---------------------------------------------------------------------------------------------

def importances(run: Run) -> tuple[list, list[str]]:
    """([(study, [(param, importance), ...]), ...], [sentences for the studies left out]).

    Optuna's fANOVA evaluator (seeded, so the numbers regenerate) over a study's COMPLETE trials;
    computed only with >= MIN_IMPORTANCE_TRIALS complete trials and >= 2 parameters that vary."""
    import optuna
    done, why = [], []
    for s in run.studies:
        complete = [t for t in s.trials if t.state == "COMPLETE"]
        common = (set.intersection(*(set(_setting(t.params)) for t in complete)) if complete
                  else set())
        varying = sorted(p for p in common
                         if len({json.dumps(t.params[p], default=str) for t in complete}) > 1)
        if len(varying) < 2:
            why.append(f"{s.name}: {len(varying)} parameter(s) vary over its complete trials "
                       f"({', '.join(varying) or 'none'}); importances need at least 2")
            continue
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            why.append(f"{s.name}: {len(complete)} complete trial(s); importances need at "
                       f"least {MIN_IMPORTANCE_TRIALS}")
            continue
        try:
            imp = optuna.importance.get_param_importances(
                s.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                params=varying)
        except Exception as exc:  # noqa: BLE001 - Optuna's limits (any kind): said, not raised
            why.append(f"{s.name}: Optuna could not compute importances "
                       f"({type(exc).__name__}: {exc})")
            continue
        done.append((s.name, sorted(imp.items(), key=lambda kv: (-kv[1], kv[0]))))
    return done, why


# ---------------------------------------------------------------------------------------------
# the document
# ---------------------------------------------------------------------------------------------

class _Doc:
    def __init__(self, out_dir: str, draw: bool):
        self.blocks: list = []
        self.out_dir = out_dir
        self.draw = draw
        self.files: dict[str, str] = {}

    def add(self, *blocks):
        self.blocks.extend(blocks)

    def figure(self, key: str, fig, alt: str, caption: list):
        png = plots.png_bytes(fig)
        name = f"{key}.png"
        path = os.path.join(self.out_dir, name)
        with open(path, "wb") as fh:
            fh.write(png)
        self.files[key] = path
        self.add(Image(file=name, png=png, alt=alt, caption=caption))


def _header(doc: _Doc, run: Run, h: int):
    m = run.meta
    metric = run.metric
    better = "higher" if run.maximize else "lower"
    c = run.counts()
    doc.add(Bullets(items=[
        ["Data: ", str(m.get("data", "–"))],
        ["Task: ", str(m.get("task", "–")), " · metric: ", Code(metric),
         f" ({better} is better)"],
        ["Split: ", (f"{m.get('n_train', '–')} train / {m.get('n_valid', '–')} validation / "
                     f"{m.get('n_test', '–')} test rows")],
        ["Mode: ", Code(str(run.mode)),
         *([" · techniques: ", ", ".join(str(x) for x in m["techniques"])]
           if isinstance(m.get("techniques"), list) and m["techniques"] else []),
         *([" · created ", str(m["created"])] if m.get("created") else [])],
        ["Trials: ", Bold(f"{c['COMPLETE']} done"),
         f", {c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running"
         + (f", {c['WAITING']} waiting" if c.get("WAITING") else "")],
    ]))
    rows = []
    for s in run.studies:
        best = None
        vals = [t.value for t in s.trials if t.state == "COMPLETE" and t.value is not None]
        if vals:
            best = max(vals) if run.maximize else min(vals)
        rows.append([[Code(s.name)], s.phase] + [str(s.counts.get(k, 0)) for k in _STATES[:4]]
                    + [fmt(best)])
    doc.add(Table(headers=["study", "phase", "done", "pruned", "failed", "running",
                           f"best validation {metric}"], rows=rows, align="llrrrrr"))


def _compare_section(doc: _Doc, run: Run, h: int, rows: list[CompareRow]):
    metric = run.metric
    better = "higher" if run.maximize else "lower"
    doc.add(Heading(h, ["Ranked techniques"]))
    doc.add(Para([
        ("Each technique at its chosen strength (the strength with the best VALIDATION mean in "
         "its strength search, re-run over seeds in the "), Code("final"),
        (f" study). Ranked by the test {metric} mean over seeds ({better} is better); ± is the "
         "sample standard deviation over seeds (n − 1). Gap: train − test metric")
        + (" (for rmse: test − train)" if metric == "rmse" else "")
        + (f". Δ vs baseline: test mean minus the baseline's (technique {BASELINE!r}). "
           "Epochs, best epoch and seconds are means per run.")]))
    has_base = any(r.delta is not None for r in rows)
    headers = ["rank", "technique", "strength", "seeds", f"test {metric}", "Δ vs baseline",
               f"validation {metric}", "gap", "epochs run", "best epoch", "seconds"]
    table_rows, classes = [], []
    for i, r in enumerate(rows, 1):
        g = r.group
        is_base = g.technique == BASELINE
        name = g.technique + (" (baseline)" if is_base else "")
        if r.source != "final":
            name += " †"
        chosen = r is chosen_row(rows, run.maximize)
        table_rows.append([str(i), [Bold(name)] if chosen else name, [Code(g.setting())] if g.setting() != "–" else "–",
                           str(r.test[2]), fmt_pm(r.test[0], r.test[1]),
                           "baseline" if is_base else fmt_signed(r.delta),
                           fmt_pm(r.valid[0], r.valid[1]), fmt(r.gap), fmt(r.epochs, 1),
                           fmt(r.best_epoch, 1), fmt(r.seconds, 2)])
        classes.append("chosen" if chosen else "baseline" if is_base else "")
    doc.add(Table(headers=headers, rows=table_rows, align="rllrrrrrrrr", row_classes=classes))
    notes = ["Bold: the chosen configuration (the best validation mean)."]
    if not has_base:
        notes.append(f"No baseline: the studies have no complete run of technique "
                     f"{BASELINE!r}, so there is no Δ.")
    if any(r.source != "final" for r in rows):
        notes.append("† not yet re-run in the final study: the row shows the best strength of "
                     "its strength search (its seeds there).")
    for n in notes:
        doc.add(Para([n]))
    return table_rows


def _search_section(doc: _Doc, run: Run, h: int):
    metric = run.metric
    ranked = search_ranking(run)[:TOP_K]
    params = sorted({p for t in ranked for p in t.params})
    doc.add(Heading(h, [f"Top {len(ranked)} trials"]))
    doc.add(Para([(f"Ranked by the validation {metric} at the best epoch (the value the search "
                   "optimizes); test numbers are shown, never used to rank or choose.")]))
    rows = []
    for i, t in enumerate(ranked, 1):
        rows.append([str(i), f"#{t.number}"]
                    + [fmt_strength(t.params[p]) if _float(t.params.get(p)) is not None
                       else str(t.params.get(p, "–")) for p in params]
                    + [fmt(t.value), fmt(t.test.get(metric)), fmt(t.gap),
                       "–" if t.epochs_run is None else str(t.epochs_run),
                       "–" if t.best_epoch is None else str(t.best_epoch), fmt(t.seconds, 2)])
    doc.add(Table(headers=["rank", "trial"] + params
                  + [f"validation {metric}", f"test {metric}", "gap", "epochs run",
                     "best epoch", "seconds"],
                  rows=rows, align="rl" + "l" * len(params) + "rrrrrr",
                  row_classes=["chosen"] + [""] * (len(rows) - 1)))
    return ranked


def _chosen_section(doc: _Doc, run: Run, h: int, trial, summary: list):
    doc.add(Heading(h, ["Chosen configuration"]))
    doc.add(Para([("Chosen by the VALIDATION metric, not by test: the test split never guides "
                   "a choice, so its number is an honest estimate for new data. "), *summary]))
    if trial is not None and trial.config is not None:
        doc.add(Para([f"Configuration of trial #{trial.number} of ", Code(trial.study),
                      "" if trial.seed is None else f" (seed {trial.seed})", ":"]))
        doc.add(CodeBlock(json.dumps(trial.config, indent=2, sort_keys=True, default=str),
                          "json"))
    elif trial is not None:
        doc.add(Para(["Parameters of trial #", str(trial.number), ": ",
                      Code(_params_text(trial.params) or "(none)"),
                      " (the trial recorded no full configuration)."]))


def _best_model_section(doc: _Doc, h: int, path: str | None):
    doc.add(Heading(h, ["Best model"]))
    if path is None:
        doc.add(Para(["No model file is recorded for the chosen configuration."]))
        return
    doc.add(Para(["The best model (by validation): ", Code(path),
                  ". Predict with it on rows with the training table's columns:"]))
    doc.add(CodeBlock(f"fastreg predict {shlex.quote(path)} YOUR_DATA.csv "
                      "--out predictions.csv", "sh"))


def _importance_section(doc: _Doc, run: Run, h: int):
    doc.add(Heading(h, ["Parameter importances"]))
    done, why = importances(run)
    for name, imp in done:
        doc.add(Para(["Optuna's fANOVA importances (seed 0) over the complete trials of ",
                      Code(name), (": the share of the validation metric's variance each "
                                   "parameter explains.")]))
        doc.add(Table(headers=["parameter", "importance"],
                      rows=[[[Code(p)], fmt(v)] for p, v in imp], align="lr"))
    if why:
        lead = "Not computed for:" if done else "Parameter importances are not computed:"
        if not done and run.mode == "compare":
            doc.add(Para([lead + " each strength search varies one parameter (a search, ",
                          Code("fastreg study --search N"), ", has importances)."]))
        else:
            doc.add(Para([lead]))
        doc.add(Bullets(items=[[w] for w in why]))


def _failures_section(doc: _Doc, run: Run, h: int):
    """The failed trials that recorded why (e.g. a diverged loss), at most MAX_FAILURES."""
    failed = [t for s in run.studies for t in s.trials if t.state == "FAIL" and t.error]
    if not failed:
        return
    doc.add(Heading(h, ["Failed trials"]))
    items = [[f"#{t.number} of ", Code(t.study), f" ({t.technique}): {t.error}"]
             for t in failed[:MAX_FAILURES]]
    if len(failed) > MAX_FAILURES:
        items.append([(f"... and {len(failed) - MAX_FAILURES} more (their user attribute "
                       '"error" in the storage)')])
    doc.add(Bullets(items=items))


def _run_report(doc: _Doc, run: Run, h: int, prefix: str, best_model: str | None) -> None:
    metric = run.metric
    _header(doc, run, h)
    complete = run.complete()
    if not complete:
        c = run.counts()
        doc.add(Heading(h, ["No complete trial yet"]))
        doc.add(Para([(f"No trial of this run has completed ({c['PRUNED']} pruned, "
                        f"{c['FAIL']} failed, {c['RUNNING']} running): there is nothing to "
                        "rank, choose or plot. Re-run the same "), Code("fastreg study"),
                       " command to continue the study, then regenerate this report."]))
        return
    rows = None
    if run.mode == "search":
        ranked = _search_section(doc, run, h)
        best = ranked[0]
        summary = [(f"Trial #{best.number}: validation {metric} {fmt(best.value)}, test "
                    f"{metric} {fmt(best.test.get(metric))}.")]
        chosen_trial = best
        model = best_model or best.model_file
    else:
        rows = compare_rows(run)
        _compare_section(doc, run, h, rows)
        ch = chosen_row(rows, run.maximize)
        g = ch.group
        key = _better_key(run.maximize)
        chosen_trial = min(g.trials, key=lambda t: (key(t.valid.get(metric)), t.seed or 0,
                                                    t.number))
        at = "" if g.setting() == "–" else f" at {g.setting()}"
        summary = [Bold(g.technique), (f"{at}: validation {metric} "
                                       f"{fmt_pm(ch.valid[0], ch.valid[1])}, test {metric} "
                                       f"{fmt_pm(ch.test[0], ch.test[1])} over {ch.test[2]} "
                                       "seed(s).")]
        model = best_model or chosen_trial.model_file or next(
            (t.model_file for t in g.trials if t.model_file), None)
    _chosen_section(doc, run, h, chosen_trial, summary)

    doc.add(Heading(h, ["Learning curves"]))
    if not doc.draw:
        doc.add(Para([("matplotlib is not installed: the report has tables only "
                       "(pip install matplotlib, then regenerate it).")]))
    else:
        figs = curve_figures(run, rows)
        if not figs:
            doc.add(Para(["The trials recorded no per-epoch history: no curves."]))
        what = ("one run per technique (its lowest seed), in ranked order; the baseline's "
                "validation curve in light grey in every panel" if run.mode != "search" else
                f"the top {TOP_CURVES} complete trials by validation; pruned trials in light "
                "grey")
        for key in [k for k in ("curves_loss", f"curves_{metric}") if k in figs]:
            is_loss = key == "curves_loss"
            cap = [("Loss" if is_loss else _metric_label(metric).capitalize())
                   + f" per epoch: {what}. Train dashed, validation solid, the best epoch (by "
                   "validation) as a dot, an "
                   "early stop as a vertical dotted line; every panel has the same y-axis."
                   + (" The train loss is the data term only, without the L1/L2 penalty."
                      if is_loss else "")]
            doc.figure(prefix + key, figs[key], alt=key.replace("_", " "), caption=cap)

        if run.mode == "search":
            panels = search_param_panels(run)
            if panels:
                doc.add(Heading(h, ["Parameters vs score"]))
                fig = plots.strength_figure(panels, _metric_label(metric),
                                            f"{_metric_label(metric)} vs each parameter",
                                            per_trial=True)
                doc.figure(prefix + "params", fig, alt="parameters vs score", caption=[
                    (f"Validation (circles) and test (squares) {metric} of every complete "
                     "trial against each numeric parameter that varies; the dotted line is the "
                     "chosen trial's value. Parameters searched on a log scale on a log axis; "
                     "every panel has the same y-axis.")])
        else:
            doc.add(Heading(h, ["Strength vs score"]))
            panels = strength_panels(run, rows)
            if not panels:
                doc.add(Para(["No technique with a strength has complete trials."]))
            else:
                fig = plots.strength_figure(panels, _metric_label(metric),
                                            f"{_metric_label(metric)} vs strength")
                doc.figure(prefix + "strength", fig, alt="strength vs score", caption=[
                    (f"Validation (solid) and test (dashed) {metric} against each technique's "
                     "strength, mean ± std over the seeds run at each value (strength search "
                     "and final re-run); the dotted line is the strength chosen by validation. "
                     "λ's on a log axis; every panel has the same y-axis.")])

    _importance_section(doc, run, h)
    _failures_section(doc, run, h)
    _best_model_section(doc, h, model)


def _check_args(names, out_dir, best_model, study_prefix):
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names must be a list of study names (str) or None, got {names!r}")
        if not names:
            raise ValueError("names must name at least one study, got []")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    if best_model is not None and not isinstance(best_model, (str, os.PathLike)):
        raise TypeError(f"best_model must be a path or None, got {type(best_model).__name__}")
    if study_prefix is not None and not isinstance(study_prefix, str):
        raise TypeError(f"study_prefix must be a str or None, got {study_prefix!r}")


def write_report(storage, names: list[str] | None, out_dir, best_model: str | None = None,
                 study_prefix: str | None = None) -> dict[str, str]:
    """Write ``results.csv``, ``report.md``, ``report.html`` and the PNGs into ``out_dir``
    from the Optuna ``storage`` alone.

    Parameters
    ----------
    storage : str | optuna.storages.BaseStorage
        A storage URL (``sqlite:///out/study.db``, ``postgresql://...``), a path to an existing
        SQLite file, or a storage object.
    names : list of str or None
        The studies to report; None: every study of the storage whose name starts with
        ``study_prefix`` (every study when that is None too). Studies are grouped into runs by
        name (``<run>/<technique>``, ``<run>/final``, ``<run>/search``); each run gets its own
        section (and figure names prefixed by the run's name when there are several).
    out_dir : path
        Created if missing; the report's files are (over)written there.
    best_model : path or None
        The best model file to name in the report; None: the chosen trial's ``model_file``.
    study_prefix : str or None
        See ``names``; ignored when ``names`` is given.

    Returns
    -------
    dict
        ``{"csv": path, "md": path, "html": path, <figure name>: path, ...}`` (figure names as
        ``curves_loss``, ``curves_accuracy``, ``strength``, run-prefixed with several runs).

    Raises
    ------
    ValueError
        No study to report (empty storage, unknown name, a prefix that matches nothing) or a
        SQLite storage file that does not exist. Zero COMPLETE trials is not an error: the
        report says so.
    """
    _check_args(names, out_dir, best_model, study_prefix)
    runs = read_runs(storage, None if names is None else list(names), study_prefix)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    best_model = None if best_model is None else os.fspath(best_model)
    draw = plots.load_matplotlib() is not None
    doc = _Doc(out_dir, draw)
    single = len(runs) == 1
    title = ("fastreg study report: " + runs[0].name) if single else "fastreg study report"
    doc.add(Heading(1, ["fastreg study report: ", Code(runs[0].name)] if single
                    else ["fastreg study report"]))
    for run in runs:
        if single:
            _run_report(doc, run, 2, "", best_model)
        else:
            doc.add(Heading(2, ["Run ", Code(run.name)]))
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.name)
            _run_report(doc, run, 3, slug + "_", best_model)
    files = {"csv": os.path.join(out_dir, "results.csv"),
             "md": os.path.join(out_dir, "report.md"),
             "html": os.path.join(out_dir, "report.html")}
    write_results_csv(runs, files["csv"])
    with open(files["md"], "w", encoding="utf-8", newline="\n") as fh:
        fh.write(to_markdown(doc.blocks))
    with open(files["html"], "w", encoding="utf-8", newline="\n") as fh:
        fh.write(to_html(doc.blocks, title))
    return {**files, **doc.files}
