"""The report of ``fastreg study`` (fastreg.study._report), written from a storage alone.

The studies here are fakes built with Optuna's own API, following the trial contract of the study
engine: a compare run (classification, ``digits/<technique>`` strength searches + ``digits/final``
re-run over seeds) and a search run (regression, ``house/search``). Expected numbers are computed
here from the fake values with NumPy, never read back from the report code.
"""
import csv
import json
import math
import os
import re
import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from fastreg.study import _report as rep
from fastreg.study import _report_plots as plots

optuna.logging.set_verbosity(optuna.logging.WARNING)
needs_matplotlib = pytest.mark.skipif(
    plots.load_matplotlib() is None,
    reason="matplotlib is not installed (pip install 'fastreg[study]'): the report has no figures")
FloatD = optuna.distributions.FloatDistribution
IntD = optuna.distributions.IntDistribution

DATA = 'my <data> & "co".csv'
#: (technique, strength param or None, strength value, params, seeds, valid/test accuracies)
FINAL = [
    ("none", None, None, {}, [0.905, 0.915, 0.910], [0.90, 0.91, 0.92]),
    ("L2", "l2", 1e-3, {"l2": 1e-3}, [0.930, 0.940, 0.935], [0.93, 0.94, 0.935]),
    ("dropout", "dropout", 0.3, {"dropout": 0.3}, [0.960, 0.955, 0.965], [0.94, 0.945, 0.95]),
    ("combined", None, None, {"l2": 1e-3, "dropout": 0.3}, [0.945, 0.950, 0.940],
     [0.96, 0.955, 0.965]),
]
#: strength searches, one seed each: technique -> (param, [(value, valid, test)])
SEARCH = {
    "L2": ("l2", [(1e-4, 0.920, 0.915), (1e-3, 0.935, 0.930), (1e-2, 0.900, 0.905)]),
    "dropout": ("dropout", [(0.1, 0.940, 0.930), (0.3, 0.958, 0.944), (0.5, 0.950, 0.947)]),
    # never re-run in "final": its row comes from the search (the dagger)
    "early stopping": ("patience", [(3, 0.910, 0.900), (10, 0.925, 0.921)]),
}
DIST = {"l2": FloatD(1e-5, 1e-1, log=True), "dropout": FloatD(0.0, 0.7),
        "patience": IntD(1, 50), "lr": FloatD(1e-4, 1e-1, log=True), "seed": IntD(0, 99),
        "technique": optuna.distributions.CategoricalDistribution([f[0] for f in FINAL])}


def _history(scale: float, epochs: int, metric: str, seed: int):
    e = np.arange(1, epochs + 1)
    loss = (scale * 2.0 * 0.6 ** e + 0.01 * (seed + 1)).tolist()
    val_loss = (scale * 2.0 * 0.7 ** e + 0.05 + 0.01 * e).tolist()
    m = (0.5 + 0.45 * (1 - 0.5 ** e) - 0.01 * seed).tolist()
    vm = (0.45 + 0.4 * (1 - 0.6 ** e)).tolist()
    return {"loss": loss, "val_loss": val_loss, metric: m, "val_" + metric: vm}


def _attrs(technique, strength, seed, valid, test, metric, epochs, stopped, scale, minimize):
    train = test + (-0.05 if minimize else 0.05)
    hist = _history(scale, epochs, metric, seed)
    best = int(np.argmax(hist["val_" + metric])) + 1 if not minimize else epochs
    return {"technique": technique, "strength": strength, "seed": seed,
            "config": {"technique": technique, "seed": seed, "hidden": [32, 16],
                       "strength": strength},
            "history": hist, "best_epoch": best, "epochs_run": epochs,
            "stopped_early": stopped,
            "valid": {metric: valid, "loss": 0.3}, "train": {metric: train, "loss": 0.1},
            "test": {metric: test, "loss": 0.35},
            "gap": (test - train) if minimize else (train - test),
            "seconds": 1.5 + seed, "model_file": f"/models/{technique} s{seed}.fr"}


def _meta(mode, task, metric, direction, techniques):
    return {"mode": mode, "task": task, "metric": metric, "direction": direction,
            "data": DATA, "n_train": 700, "n_valid": 150, "n_test": 150,
            "techniques": techniques, "created": "2026-12-02T12:00:00+00:00"}


def _study(storage, name, direction, meta):
    s = optuna.create_study(storage=storage, study_name=name, direction=direction)
    s.set_user_attr("fastreg", meta)
    return s


def _add(s, params, value, attrs, state=optuna.trial.TrialState.COMPLETE, inter=None):
    s.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: DIST[k] for k in params}, value=value,
        user_attrs=attrs, state=state, intermediate_values=inter))


def build_compare(storage):
    techs = ["none", "L2", "dropout", "early stopping", "combined"]
    meta = _meta("compare", "classification", "accuracy", "maximize", techs)
    for k, (tech, (pname, pts)) in enumerate(sorted(SEARCH.items())):
        s = _study(storage, f"digits/{tech}", "maximize", meta)
        for j, (x, v, t) in enumerate(pts):
            _add(s, {pname: x}, v, _attrs(tech, {"name": pname, "value": float(x)}, 0, v, t,
                                          "accuracy", 5 + j, tech == "early stopping",
                                          1.0 + k, False))
        if tech == "L2":        # one pruned and one failed strength
            _add(s, {pname: 5e-2}, None, {"technique": tech},
                 state=optuna.trial.TrialState.PRUNED, inter={0: 0.5, 1: 0.6})
            _add(s, {pname: 7e-2}, None, {"technique": tech,
                                          "error": "loss is not finite (nan) at epoch 3"},
                 state=optuna.trial.TrialState.FAIL)
    s = _study(storage, "digits/final", "maximize", meta)
    for i, (tech, pname, x, params, valid, test) in enumerate(FINAL):
        strength = None if pname is None else {"name": pname, "value": x}
        for seed, (v, t) in enumerate(zip(valid, test)):
            # as the engine does: the final phase's grid has "seed" and "technique" as params
            _add(s, {**params, "seed": seed, "technique": tech}, v,
                 _attrs(tech, strength, seed, v, t, "accuracy", 6, False, 0.5 + i, False))
    _add(s, {}, None, {"technique": "none"}, state=optuna.trial.TrialState.RUNNING)


def build_search(storage, n=10):
    meta = _meta("search", "regression", "rmse", "minimize", ["search"])
    s = _study(storage, "house/search", "minimize", meta)
    g = np.random.default_rng(3)
    for i in range(n):
        params = {"lr": float(10 ** g.uniform(-4, -1)), "l2": float(10 ** g.uniform(-5, -1)),
                  "dropout": float(g.uniform(0, 0.7))}
        v = float(1.0 + 3 * params["dropout"] + 0.1 * g.normal())
        t = v + 0.05
        _add(s, params, v, _attrs("search", None, i, v, t, "rmse", 4 + i % 3, i % 2 == 0,
                                  1.0 + i, True))
    _add(s, {"lr": 1e-2, "l2": 1e-3, "dropout": 0.5}, None, {"technique": "search"},
         state=optuna.trial.TrialState.PRUNED, inter={0: 4.0, 1: 3.5, 2: 3.4})


@pytest.fixture(scope="module")
def compare_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    url = f"sqlite:///{d / 'study.db'}"
    build_compare(url)
    files = rep.write_report(url, None, d / "out")
    return url, d / "out", files


@pytest.fixture(scope="module")
def search_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("srch")
    store = optuna.storages.InMemoryStorage()
    build_search(store)
    files = rep.write_report(store, ["house/search"], d / "out")
    return store, d / "out", files


@pytest.fixture
def no_figures(monkeypatch):
    """Tables only (as without matplotlib): keeps the tests that check no figure fast."""
    monkeypatch.setattr(plots, "load_matplotlib", lambda: None)


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _md_table(md: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after a heading."""
    part = md.split(heading, 1)[1]
    lines = [ln for ln in part.split("\n\n", 3)[2].splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def _pm(xs):
    return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}"


def test_results_csv_has_one_row_per_complete_trial_with_every_param_and_metric(compare_report):
    _, _, files = compare_report
    with open(files["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_search = sum(len(p[1]) for p in SEARCH.values())
    n_final = sum(len(f[4]) for f in FINAL)
    assert len(rows) == n_search + n_final                  # pruned/failed/running left out
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for col in ("study", "number", "technique", "strength_name", "strength_value", "seed",
                "param_l2", "param_dropout", "param_patience", "valid_accuracy", "valid_loss",
                "train_accuracy", "test_accuracy", "test_loss", "gap", "epochs_run",
                "best_epoch", "stopped_early", "seconds", "value", "model_file"):
        assert col in rows[0], col
    keys = [(r["study"], int(r["number"])) for r in rows]
    assert keys == sorted(keys)
    final = [r for r in rows if r["study"] == "digits/final"]
    for tech, pname, x, params, valid, test in FINAL:
        mine = sorted((r for r in final if r["technique"] == tech), key=lambda r: int(r["seed"]))
        assert [float(r["valid_accuracy"]) for r in mine] == valid
        assert [float(r["test_accuracy"]) for r in mine] == test
        assert [float(r["value"]) for r in mine] == valid
        for r in mine:
            assert math.isclose(float(r["gap"]), float(r["train_accuracy"])
                                - float(r["test_accuracy"]))
            assert r["strength_name"] == (pname or "")
            for p in ("l2", "dropout"):
                assert r[f"param_{p}"] == (repr(params[p]) if p in params else "")
    es = [r for r in rows if r["technique"] == "early stopping"]
    assert sorted(int(r["param_patience"]) for r in es) == [3, 10]
    assert {r["stopped_early"] for r in es} == {"true"}


def test_compare_table_is_ranked_by_test_mean_with_mean_std_and_delta(compare_report):
    _, _, files = compare_report
    md = _read(files["md"])
    table = _md_table(md, "## Ranked techniques")
    # expected: every FINAL technique over its seeds + early stopping's best-by-validation
    # strength (patience 10, one seed) from its search
    exp = {t: (np.mean(te), _pm(te), _pm(va)) for t, _, _, _, va, te in FINAL}
    es_best = max(SEARCH["early stopping"][1], key=lambda p: p[1])
    exp["early stopping"] = (es_best[2], f"{es_best[2]:.4f} ± –", f"{es_best[1]:.4f} ± –")
    order = sorted(exp, key=lambda t: -exp[t][0])
    names = [row[1].replace(" (baseline)", "").replace(" †", "") for row in table]
    assert names == [f"**{t}**" if t == "dropout" else t for t in order]   # bold: chosen
    base = exp["none"][0]
    for rank, row in enumerate(table, 1):
        tech = order[rank - 1]
        assert row[0] == str(rank)
        assert row[4] == exp[tech][1], tech
        assert row[6] == exp[tech][2], tech
        if tech == "none":
            assert row[1] == "none (baseline)" and row[5] == "baseline"
        else:
            d = exp[tech][0] - base
            assert row[5] == ("+" if d >= 0 else "−") + f"{abs(d):.4f}", tech
    assert "Bold: the chosen configuration (the best validation mean)." in md
    es_row = table[order.index("early stopping")]
    assert es_row[1] == "early stopping †" and es_row[2] == "`patience=10`" and es_row[3] == "1"
    assert table[order.index("L2")][2] == "`l2=0.001`"
    # gap mean, epochs run, seconds of the dropout row (train = test + 0.05, 6 epochs, 1.5+seed s)
    drop = table[order.index("dropout")]
    assert drop[7] == "0.0500" and drop[8] == "6.0" and drop[10] == "2.50"


def test_chosen_configuration_is_by_validation_not_test(compare_report):
    _, _, files = compare_report
    md = _read(files["md"])
    chosen = md.split("## Chosen configuration", 1)[1].split("\n## ", 1)[0]
    # combined has the best test mean, dropout the best validation mean: dropout is chosen
    assert "**dropout** at dropout=0.3" in chosen
    assert "not by test" in chosen
    va, te = FINAL[2][4], FINAL[2][5]
    assert f"validation accuracy {_pm(va)}, test accuracy {_pm(te)} over 3 seed(s)" in chosen
    cfg = json.loads(chosen.split("```json\n", 1)[1].split("\n```", 1)[0])
    best_seed = int(np.argmax(va))
    assert cfg["technique"] == "dropout" and cfg["seed"] == best_seed
    best = md.split("## Best model", 1)[1]
    assert f"fastreg predict '/models/dropout s{best_seed}.fr' YOUR_DATA.csv" in best


def test_header_counts_and_escaping(compare_report):
    _, _, files = compare_report
    md = _read(files["md"])
    html = _read(files["html"])
    n_done = sum(len(p[1]) for p in SEARCH.values()) + sum(len(f[4]) for f in FINAL)
    assert f"**{n_done} done**, 1 pruned, 1 failed, 1 running" in md
    assert "700 train / 150 validation / 150 test rows" in md
    assert "## Failed trials\n\n- #4 of `digits/L2` (L2): loss is not finite (nan) at epoch 3" in md
    assert "my &lt;data&gt; &amp; &quot;co&quot;.csv" in html
    assert DATA not in html and "<data>" not in html
    assert r'- Data: my \<data\> & "co".csv' in md


@needs_matplotlib
def test_html_is_self_contained_and_every_technique_and_plot_is_there(compare_report):
    _, _, files = compare_report
    md = _read(files["md"])
    html = _read(files["html"])
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    assert "@import" not in html and "url(" not in html
    pngs = {k: v for k, v in files.items() if v.endswith(".png")}
    assert set(pngs) == {"curves_loss", "curves_accuracy", "strength"}
    assert html.count('src="data:image/png;base64,') == len(pngs)
    for path in pngs.values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({os.path.basename(path)})" in md
    for tech in ["none", "L2", "dropout", "early stopping", "combined"]:
        assert f"| {tech}" in md and f">{tech}" in html, tech
    assert "train loss (data term, no penalty)" not in md   # that label is in the figure ...
    assert "without the L1/L2 penalty" in md                # ... and said in its caption


@needs_matplotlib
def test_learning_curves_share_one_y_range_covering_every_curve(compare_report):
    url, _, _ = compare_report
    run = rep.read_runs(url)[0]
    figs = rep.curve_figures(run)
    assert set(figs) == {"curves_loss", "curves_accuracy"}
    for key, fig in figs.items():
        lims = plots.axes_ylims(fig)
        assert len(lims) == 5                               # one panel per technique
        assert all(lim == lims[0] for lim in lims), key
        lo, hi = lims[0]
        hk = key[len("curves_"):]
        drawn = []
        for ax in fig.axes:
            for line in ax.get_lines():
                if list(line.get_ydata()) != [0, 1]:        # not an axvline (axes coords)
                    drawn += [float(y) for y in line.get_ydata()]
        assert drawn and lo <= min(drawn) and max(drawn) <= hi, key
        # the extremes come from different techniques: a per-panel scale would differ
        per_run = [t.history[s] for t in run.complete() if t.phase == "final"
                   and t.seed == 0 for s in (hk, "val_" + hk)]
        assert lo <= min(min(h) for h in per_run) and max(max(h) for h in per_run) <= hi
    # the loss spans > 10x: log axis, limits padded in log space
    assert figs["curves_loss"].axes[0].get_yscale() == "log"
    assert plots.shared_limits([[1.0, 3.0], [2.0]]) == pytest.approx((0.9, 3.1))
    assert plots.shared_limits([[1.0, 100.0]], log=True) == pytest.approx(
        (10 ** -0.1, 10 ** 2.1))
    assert plots.shared_limits([[float("nan")], []]) is None


def test_regenerating_gives_identical_files(compare_report, tmp_path):
    url, _, files = compare_report
    again = rep.write_report(url, None, tmp_path)
    assert set(again) == set(files)
    for k in files:
        with open(files[k], "rb") as a, open(again[k], "rb") as b:
            assert a.read() == b.read(), k


def test_importances_sentence_when_not_computable(compare_report):
    _, _, files = compare_report
    md = _read(files["md"])
    imp = md.split("## Parameter importances", 1)[1].split("\n## ", 1)[0]
    assert "Parameter importances are not computed" in imp
    assert "digits/L2: 1 parameter(s) vary" in imp
    assert "digits/final: 2 parameter(s) vary" not in imp   # final varies none in common


@needs_matplotlib
def test_search_report_top_trials_importances_and_pruned_counts(search_report):
    url, _, files = search_report
    md = _read(files["md"])
    s = optuna.load_study(study_name="house/search", storage=url)
    done = sorted((t for t in s.trials if t.state.name == "COMPLETE"),
                  key=lambda t: (t.value, t.number))
    table = _md_table(md, "## Top 10 trials")
    assert [row[1] for row in table] == [f"#{t.number}" for t in done]   # lower rmse first
    assert table[0][5] == f"{done[0].value:.4f}"            # columns: rank trial dropout l2 lr
    assert "**10 done**, 1 pruned, 0 failed, 0 running" in md
    imp = md.split("## Parameter importances", 1)[1].split("\n## ", 1)[0]
    rows = _md_table(md, "## Parameter importances")
    assert {r[0] for r in rows} == {"`dropout`", "`l2`", "`lr`"}
    assert rows[0][0] == "`dropout`"                        # the value is made of dropout
    assert "not computed" not in imp
    assert set(files) == {"csv", "md", "html", "curves_loss", "curves_rmse", "params"}
    panels = rep.search_param_panels(rep.read_runs(url)[0])
    assert [(p.name, p.log_x) for p in panels] == [("dropout", False), ("l2", True),
                                                   ("lr", True)]   # log where searched so
    for p in panels:
        assert p.x == sorted(t.params[p.name] for t in done)
        assert p.chosen == done[0].params[p.name]
        assert sorted(zip(p.x, p.valid_mean)) == sorted((t.params[p.name], t.value)
                                                        for t in done)
    assert "Chosen by the VALIDATION metric" in md
    assert f"Trial #{done[0].number}: validation rmse {done[0].value:.4f}" in md


def test_importances_need_enough_trials(tmp_path, no_figures):
    url = optuna.storages.InMemoryStorage()
    build_search(url, n=4)
    md = _read(rep.write_report(url, None, tmp_path / "o")["md"])
    assert (f"house/search: 4 complete trial(s); importances need at least "
            f"{rep.MIN_IMPORTANCE_TRIALS}") in md


def test_zero_complete_trials_gives_a_clear_report(tmp_path):
    url = optuna.storages.InMemoryStorage()
    s = _study(url, "empty/search", "minimize",
               _meta("search", "regression", "rmse", "minimize", ["search"]))
    _add(s, {"lr": 1e-3}, None, {}, state=optuna.trial.TrialState.FAIL)
    _add(s, {"lr": 1e-2}, None, {}, state=optuna.trial.TrialState.RUNNING)
    files = rep.write_report(url, None, tmp_path / "o")
    md = _read(files["md"])
    assert "No trial of this run has completed (0 pruned, 1 failed, 1 running)" in md
    with open(files["csv"]) as fh:
        assert len(fh.read().splitlines()) == 1              # header only
    assert set(files) == {"csv", "md", "html"}


def test_without_matplotlib_the_report_has_tables_only(compare_report, tmp_path, monkeypatch):
    url, _, _ = compare_report
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    files = rep.write_report(url, None, tmp_path)
    md = _read(files["md"])
    assert "matplotlib is not installed: the report has tables only" in md
    assert "## Ranked techniques" in md and not any(f.endswith(".png")
                                                    for f in os.listdir(tmp_path))
    assert "data:image/png" not in _read(files["html"])


@needs_matplotlib
def test_several_runs_in_one_storage_get_sections_and_prefixed_figures(tmp_path, monkeypatch):
    url = optuna.storages.InMemoryStorage()
    build_compare(url)
    build_search(url, n=3)
    drawn = []
    monkeypatch.setattr(rep._Doc, "figure", lambda self, key, *a, **k: drawn.append(key))
    files = rep.write_report(url, None, tmp_path / "o")
    md = _read(files["md"])
    assert "## Run `digits`" in md and "## Run `house`" in md
    assert "### Ranked techniques" in md and "### Top 3 trials" in md
    assert drawn == ["digits_curves_loss", "digits_curves_accuracy", "digits_strength",
                     "house_curves_loss", "house_curves_rmse", "house_params"]
    only = rep.write_report(url, None, tmp_path / "p", study_prefix="house/")
    assert "digits" not in _read(only["md"])


def test_bad_arguments_name_the_argument(tmp_path, compare_report):
    url, _, _ = compare_report
    with pytest.raises(ValueError, match=r"names: no study named \['nope/final'\]"):
        rep.write_report(url, ["nope/final"], tmp_path)
    with pytest.raises(ValueError, match="no study with the prefix 'zzz'"):
        rep.write_report(url, None, tmp_path, study_prefix="zzz")
    with pytest.raises(ValueError, match="no such SQLite file"):
        rep.write_report(f"sqlite:///{tmp_path / 'missing.db'}", None, tmp_path)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(TypeError, match="names must be a list"):
        rep.write_report(url, "digits/final", tmp_path)
    with pytest.raises(TypeError, match="storage must be"):
        rep.write_report(3, None, tmp_path)
    with pytest.raises(TypeError, match="out_dir must be a path"):
        rep.write_report(url, None, None)


def test_sqlite_file_path_is_accepted_as_storage(compare_report, tmp_path, no_figures):
    url, _, _ = compare_report
    path = url[len("sqlite:///"):]
    files = rep.write_report(path, ["digits/final"], tmp_path)
    with open(files["csv"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == sum(len(f[4]) for f in FINAL)
    assert re.search(r"\*\*12 done\*\*, 0 pruned, 0 failed, 1 running",
                     _read(files["md"]))


def test_regression_compare_ranks_lower_rmse_first(tmp_path, no_figures):
    store = optuna.storages.InMemoryStorage()
    meta = _meta("compare", "regression", "rmse", "minimize", ["none", "L2", "drop<out>"])
    srch = _study(store, "reg/L2", "minimize", meta)
    for x, v in [(1e-4, 2.0), (1e-2, 1.5)]:
        _add(srch, {"l2": x}, v, _attrs("L2", {"name": "l2", "value": x}, 0, v, v + 0.1,
                                        "rmse", 4, False, 1.0, True))
    final = _study(store, "reg/final", "minimize", meta)
    runs = {"none": (None, {}, [2.1, 2.3], [2.2, 2.6]),
            "L2": ({"name": "l2", "value": 1e-2}, {"l2": 1e-2}, [1.4, 1.6], [1.5, 1.9]),
            "drop<out>": ({"name": "dropout", "value": 0.2}, {"dropout": 0.2}, [1.2, 1.3],
                          [2.0, 2.2])}      # a technique name that needs escaping
    for tech, (strength, params, valid, test) in runs.items():
        for seed, (v, t) in enumerate(zip(valid, test)):
            _add(final, params, v, _attrs(tech, strength, seed, v, t, "rmse", 4, False, 1.0,
                                          True))
    files = rep.write_report(store, None, tmp_path)
    md, html = _read(files["md"]), _read(files["html"])
    table = _md_table(md, "## Ranked techniques")
    assert [r[1] for r in table] == ["L2", r"**drop\<out\>**", "none (baseline)"]  # by test
    assert "<strong>drop&lt;out&gt;</strong>" in html and "drop<out>" not in html
    assert table[0][4] == _pm([1.5, 1.9]) and table[0][5] == f"−{np.mean([2.2, 2.6]) - 1.7:.4f}"
    assert table[0][7] == "0.0500"             # gap = test − train; train = test − 0.05 here
    assert "(lower is better)" in md and "(for rmse: test − train)" in md
    chosen = md.split("## Chosen configuration", 1)[1]
    assert chosen.split("\n\n", 2)[1].split(". ", 1)[1].startswith(r"**drop\<out\>**")
