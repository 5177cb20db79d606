"""fastreg.study: the regularization study on Optuna (compare end to end, the trial contract,
resumption after kill -9, --jobs 2 and Dask give the same numbers as one process, a Dask worker
killed mid-trial, bad input before any trial). Tiny data, 2-3 epochs, the "tiny" grids."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("pandas")

import fastreg as fr
from fastreg import cli
from fastreg.study import StudyError, _trial
from fastreg.study._data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"epochs": 2, "hidden": (32,), "grid": "tiny", "lr": 3e-3, "batch_size": 64,
        "progress": False, "heartbeat": (1, 3), "echo": lambda *a: None}


@pytest.fixture(scope="module")
def digits():
    from fastreg.demo import load_digits_data
    X, y, _ = load_digits_data()
    return np.round(X[:300] * 16).reshape(-1, 8, 8), y[:300]      # raw pixels 0..16


def _complete(storage, name):
    st = optuna.load_study(study_name=name, storage=storage)
    return st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def _numbers(res):
    """{(study suffix, params): (value, test metric)} of every COMPLETE trial."""
    out = {}
    for name in res.names:
        for t in _complete(res.storage, name):
            key = (name.split("/", 1)[1], json.dumps(t.params, sort_keys=True))
            assert key not in out, f"configuration run twice: {key}"
            out[key] = (t.value, t.user_attrs["test"]["accuracy"])
    return out


def test_import_fastreg_stays_light():
    code = ("import sys, fastreg; m = fastreg.study; assert callable(m); "
            "heavy = [k for k in ('optuna', 'pandas', 'dask', 'distributed', 'sqlalchemy', "
            "'numba') if k in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_compare_end_to_end_on_digits(digits, tmp_path):
    res = fr.study(digits, seeds=1, out=str(tmp_path), **FAST)
    names = res.names
    techniques = ["none", "L2", "L1", "weight decay", "dropout", "batch norm", "layer norm",
                  "early stopping", "lr schedule", "augmentation"]
    assert names == [f"study/{t}" for t in techniques] + ["study/final"]
    # the contract: study attrs on every study, trial attrs on every COMPLETE trial
    for name in names:
        info = optuna.load_study(study_name=name, storage=res.storage).user_attrs["fastreg"]
        assert info["mode"] == "compare" and info["metric"] == "accuracy"
        assert info["direction"] == "maximize" and info["n_test"] == 60
    final = _complete(res.storage, "study/final")
    assert sorted({t.user_attrs["technique"] for t in final}) == sorted(techniques +
                                                                        ["combined"])
    assert len(final) == 11
    for t in final:
        a = t.user_attrs
        assert a["seed"] == 0 and t.params["seed"] == a["seed"]
        assert t.value == a["valid"]["accuracy"]
        h = a["history"]
        assert set(h) == {"loss", "val_loss", "accuracy", "val_accuracy"}
        assert all(len(v) == a["epochs_run"] for v in h.values())
        assert 1 <= a["best_epoch"] <= a["epochs_run"]
        assert h["val_accuracy"][a["best_epoch"] - 1] == pytest.approx(a["valid"]["accuracy"])
        assert a["gap"] == pytest.approx(a["train"]["accuracy"] - a["test"]["accuracy"])
        assert os.path.exists(a["model_file"])
        if a["technique"] == "L2":
            assert a["strength"]["name"] == "l2" and "l2" in t.params
    # strength picked by validation: the final L2 strength is the best phase-1 grid point
    l2 = _complete(res.storage, "study/L2")
    best = max(l2, key=lambda t: (t.value, -l2.index(t)))
    fin = next(t for t in final if t.user_attrs["technique"] == "L2")
    assert fin.params["l2"] == best.params["l2"]
    # results: every technique; report files; the best model loads and predicts raw pixels
    assert set(res.results["technique"]) == set(techniques + ["combined"])
    assert int(res.results["chosen"].sum()) == 1
    assert os.path.exists(res.report["csv"])
    import pandas as pd
    csv = pd.read_csv(res.report["csv"])
    assert set(techniques + ["combined"]) <= set(csv["technique"])
    for key in ("md", "html", "curves_loss", "curves_accuracy", "strength"):
        assert os.path.getsize(res.report[key]) > 0, key
    with open(res.report["md"], encoding="utf-8") as f:
        md = f.read()
    assert all(t in md for t in techniques + ["combined"])
    with open(res.report["html"], encoding="utf-8") as f:
        assert "data:image/png;base64," in f.read()
    model = fr.load(res.best_model)
    X, y = digits
    test = prepare(digits, seed=0).test                 # the same split (same seed)
    pred = np.asarray(model.predict(X[test].reshape(len(test), -1))).argmax(axis=1)
    chosen = res.results.loc[res.results["chosen"], "technique"].item()
    v = res.results[["technique", "valid_accuracy"]].to_numpy().tolist()
    assert max(x[1] for x in v) == res.results.loc[res.results["chosen"], "valid_accuracy"].item()
    def read(path):
        with open(path, "rb") as f:
            return f.read()
    same = [t for t in final if read(t.user_attrs["model_file"]) == read(res.best_model)]
    assert chosen in [t.user_attrs["technique"] for t in same], (chosen, v)
    acc = same[0].user_attrs["test"]["accuracy"]
    assert abs(np.mean(pred == y[test]) - acc) <= 1 / len(test)
    assert model.metadata["classes"] == [str(c) for c in range(10)]


def test_training_loss_history_excludes_the_penalty(digits):
    prep = prepare(digits, seed=0)
    from fastreg.study import _space
    cfg = _space.apply(_space.base_config(hidden=(64,), epochs=1), "L2", {"l2": 1.0})
    attrs, pruned = _trial.run_config(prep, cfg, seed=0)
    # 10-class cross-entropy is ~2.3 at the start; the L2 penalty of the 64x64+64x10 weights
    # at l2=1 is ~20: a history that included it would be far above 5
    assert not pruned and attrs["history"]["loss"][0] < 5.0


def test_regression_table_and_cli_predict(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    g = np.random.default_rng(0)
    X = g.normal(size=(150, 3))
    df = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": np.where(X[:, 2] > 0, "u", "v"),
                       "y": 3 * X[:, 0] - X[:, 1] + 0.1 * g.normal(size=150)})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "o"
    assert cli.main(["study", str(path), "--target", "y", "--quick", "--out", str(out),
                     "--hidden", "16", "--no-progress", "--heartbeat", "1", "--techniques",
                     "L2", "dropout"]) == 0
    text = capsys.readouterr().out
    assert "combined" in text and "dropout" in text and "batch norm" not in text
    info = optuna.load_study(study_name="t/final", storage=f"sqlite:///{out}/study.db")
    assert info.user_attrs["fastreg"]["metric"] == "rmse"
    assert info.direction == optuna.study.StudyDirection.MINIMIZE
    t = info.best_trial
    assert t.user_attrs["gap"] == pytest.approx(t.user_attrs["test"]["rmse"] -
                                                t.user_attrs["train"]["rmse"])
    # best_model.fr is a `fastreg train`-style file: fastreg predict reads the raw table
    assert cli.main(["predict", str(out / "best_model.fr"), str(path), "--out",
                     str(tmp_path / "p.csv")]) == 0
    p = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    assert np.sqrt(np.mean((p - df["y"].to_numpy()) ** 2)) < df["y"].std()
    # the report again, from the storage alone
    os.remove(out / "results.csv")
    assert cli.main(["study", "--report-only", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    assert {"none", "L2", "dropout", "combined"} <= set(rows["technique"])


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastreg", "study", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_resume_after_kill_9(digits, tmp_path):
    X, y = digits
    data = tmp_path / "d.npz"
    np.savez(data, X=X[:200], y=y[:200])
    out = tmp_path / "o"
    args = [str(data), "--grid", "tiny", "--epochs", "3", "--seeds", "2", "--hidden", "32",
            "--out", str(out), "--heartbeat", "1", "--no-progress", "--techniques", "L2"]
    url = f"sqlite:///{out}/study.db"
    p = _run_cli(args)
    deadline = time.time() + 120
    done_before = {}
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.3)
        try:
            names = [s.study_name for s in optuna.get_all_study_summaries(url)]
            done = {(n, t.number): (t.value, t.user_attrs["seconds"]) for n in names
                    for t in _complete(url, n)}
        except Exception:  # noqa: BLE001, S112 - the database is being created
            continue
        if len(done) >= 4:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            done_before = done
            break
    assert done_before, "the study finished (or failed) before it could be killed: " + (
        p.stdout.read() if p.stdout else "")
    p = _run_cli(args)
    text, _ = p.communicate(timeout=240)
    assert p.returncode == 0, text
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    after = {(n, t.number): (t.value, t.user_attrs["seconds"]) for n in names
             for t in _complete(url, n)}
    for k, v in done_before.items():        # finished trials kept as they were, not re-run
        assert after[k] == v
    for n in names:                         # and no configuration completed twice
        keys = [json.dumps(t.params, sort_keys=True) for t in _complete(url, n)]
        assert len(keys) == len(set(keys)), n
    assert len(_complete(url, "d/final")) == 3 * 2          # none, L2, combined x 2 seeds


@pytest.fixture(scope="module")
def one_process(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs1")
    return fr.study(digits, seeds=2, techniques=["L2"], out=str(out), **FAST)


@pytest.mark.slow
def test_jobs_2_gives_the_same_numbers(digits, one_process, tmp_path):
    res = fr.study(digits, seeds=2, techniques=["L2"], out=str(tmp_path), jobs=2, **FAST)
    assert _numbers(res) == _numbers(one_process)
    assert len(_numbers(res)) == 1 + 2 + 3 * 2


@pytest.mark.slow
def test_dask_local_2_with_a_worker_killed_mid_trial(digits, one_process, tmp_path,
                                                     monkeypatch):
    pytest.importorskip("distributed")
    marker = tmp_path / "killed"
    monkeypatch.setenv(_trial.KILL_HOOK, str(marker))
    res = fr.study(digits, seeds=2, techniques=["L2"], out=str(tmp_path / "o"),
                   dask="local:2", **FAST)
    assert marker.exists()                   # a worker process did die mid-trial
    fails = [t for n in res.names for t in optuna.load_study(
        study_name=n, storage=res.storage).get_trials(states=(optuna.trial.TrialState.FAIL,))]
    assert len(fails) == 1                   # only that trial was lost, and it was redone
    assert _numbers(res) == _numbers(one_process)


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "target 'nope'"),
    (["--target", "y", "--jobs", "0"], "jobs must be an integer >= 1, got 0"),
    (["--target", "y", "--storage", "nosuchdb://x"], "storage 'nosuchdb://x'"),
    (["--target", "s", "--task", "regression"], "target 's': 'x0' is not a number"),
    (["--target", "one"], "at least 2 classes"),
])
def test_bad_input_is_reported_before_any_trial(tmp_path, capsys, args, message):
    path = tmp_path / "t.csv"
    rows = ["a,y,s,one"] + [f"{i},{i % 2},x{i},1" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    assert cli.main(["study", str(path), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert "fastreg study: error:" in err and message in err
    assert not (out / "study.db").exists()


def test_empty_table_and_bad_arrays(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("a,y\n")
    with pytest.raises((StudyError, ValueError), match="empty|no data"):
        fr.study(str(path), target="y", out=str(tmp_path / "o"), progress=False)
    with pytest.raises(StudyError, match="y must be 1-D"):
        fr.study((np.zeros((20, 4, 4)), np.zeros((19,))), out=str(tmp_path / "o"))
    with pytest.raises(StudyError, match="labels"):
        np.save(tmp_path / "x.npy", np.zeros((20, 4, 4)))
        fr.study(str(tmp_path / "x.npy"), out=str(tmp_path / "o"))


def test_search_mode_runs_n_trials_of_the_joint_space(digits, tmp_path):
    res = fr.study(digits, mode="search", n_trials=4, out=str(tmp_path), **FAST)
    assert res.names == ["study/search"]
    st = res.studies[0]
    assert st.user_attrs["fastreg"]["mode"] == "search"
    done = st.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                 optuna.trial.TrialState.PRUNED))
    assert len(done) == 4
    for t in done:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.user_attrs["technique"] == "search" and t.user_attrs["strength"] is None
            assert {"lr", "l2", "dropout", "norm", "augment"} <= set(t.params)
            assert t.value == t.user_attrs["valid"]["accuracy"]
    assert res.best_model is not None and len(res.results) == len(
        [t for t in done if t.state == optuna.trial.TrialState.COMPLETE])
    # re-running continues: the 4 trials are there, none is added
    again = fr.study(digits, mode="search", n_trials=4, out=str(tmp_path), **FAST)
    assert len(again.studies[0].trials) == len(st.trials)


def test_cv_trains_every_fold_and_averages(digits, tmp_path):
    res = fr.study(digits, cv=2, seeds=1, techniques=["L2"], out=str(tmp_path), **FAST)
    final = _complete(res.storage, "study/final")
    assert len(final) == 3
    for t in final:
        folds = t.user_attrs["folds"]
        assert len(folds) == 2
        for split in ("train", "valid", "test"):
            assert t.user_attrs[split]["accuracy"] == pytest.approx(
                np.mean([f[split]["accuracy"] for f in folds]))
        assert t.value == pytest.approx(t.user_attrs["valid"]["accuracy"])
    info = res.studies[0].user_attrs["fastreg"]
    assert info["n_test"] == 60 and info["n_train"] + info["n_valid"] == 240


@pytest.mark.slow
def test_two_study_commands_cooperate_on_one_storage(digits, tmp_path):
    """Optuna's RDB mode, as on several machines with PostgreSQL: two `fastreg study`
    processes started together on one SQLite file finish the study, each configuration once."""
    X, y = digits
    data = tmp_path / "d.npz"
    np.savez(data, X=X[:200], y=y[:200])
    url = f"sqlite:///{tmp_path}/shared.db"
    procs = [_run_cli([str(data), "--grid", "tiny", "--epochs", "2", "--seeds", "2",
                       "--hidden", "16", "--storage", url, "--out", str(tmp_path / f"o{i}"),
                       "--heartbeat", "1", "--no-progress", "--techniques", "L2"])
             for i in range(2)]
    for p in procs:
        text, _ = p.communicate(timeout=240)
        assert p.returncode == 0, text
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    assert sorted(names) == ["d/L2", "d/final", "d/none"]
    for n in names:
        keys = [json.dumps(t.params, sort_keys=True) for t in _complete(url, n)]
        assert len(keys) == len(set(keys)), n
    assert len(_complete(url, "d/final")) == 3 * 2


def _claim_all(url, q):
    import optuna

    from fastreg.study._run import _claim_waiting
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.load_study(study_name="q", storage=url)
    got = []
    while (tid := _claim_waiting(st)) is not None:
        got.append(tid)
    q.put(got)


def test_queued_trials_are_claimed_once_across_processes(tmp_path):
    # optuna's own pop (read WAITING, then write RUNNING) lets two processes on SQLite claim one
    # trial (measured: 309 claims of 300 trials by 3 processes), which ran a configuration twice
    # and failed a Dask worker on its second tell; the conditional UPDATE claims each once
    import multiprocessing as mp

    import optuna
    url = f"sqlite:///{tmp_path / 'q.db'}"
    st = optuna.create_study(study_name="q", storage=url)
    for i in range(200):
        st.enqueue_trial({"x": i}, skip_if_exists=False)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_claim_all, args=(url, q)) for _ in range(3)]
    for p in ps:
        p.start()
    claims = [q.get(timeout=120) for _ in ps]
    for p in ps:
        p.join()
    ids = [i for c in claims for i in c]
    assert len(ids) == len(set(ids)) == 200
    assert {t.state for t in st.get_trials()} == {optuna.trial.TrialState.RUNNING}
