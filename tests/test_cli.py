"""The command line: demo, train, predict, bench (through main([...]) and python -m fastreg)."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest

from fastreg import cli
from fastreg import io as frio


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def class_csv(tmp_path):
    g = np.random.default_rng(0)
    X = g.standard_normal((240, 4)) * [1, 10, 0.1, 1] + [0, 50, 0, 0]
    y = np.where(X[:, 0] + (X[:, 1] - 50) / 10 > 0, "spam", "ham")
    path = tmp_path / "cls.csv"
    _write_csv(path, ["f1", "f2", "label", "f3", "f4"],
               [[f"{a:.6f}", f"{b:.6f}", c, f"{d:.6f}", f"{e:.6f}"]
                for (a, b, d, e), c in zip(X, y)])
    return path, X, y


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------

def test_demo_quick_runs_a_compare_study_and_writes_its_table(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("optuna")
    pytest.importorskip("pandas")
    out_dir = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--epochs", "2", "--out", str(out_dir),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "scikit-learn digits" in out
    for name in ("none", "L2", "L1", "weight decay", "dropout", "batch norm", "layer norm",
                 "early stopping", "lr schedule", "augmentation", "combined"):
        assert f"\n{name} " in out
    for col in ("valid", "test", "gap", "epochs", "best"):
        assert col in out
    rows = [line.split() for line in out.splitlines() if line.startswith("none ")]
    valid, test = map(float, rows[0][1:3])
    assert 0.5 < test <= 1 and 0.5 < valid <= 1
    assert (out_dir / "best_model.fr").exists() and (out_dir / "results.csv").exists()
    # running it again continues the study: nothing is trained again
    assert cli.main(["demo", "--quick", "--epochs", "2", "--out", str(out_dir),
                     "--no-progress"]) == 0
    assert capsys.readouterr().out.count("\nnone ") == 1


def test_demo_data_falls_back_to_a_generated_stand_in(monkeypatch):
    from fastreg import demo
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    X, y, source = demo.load_digits_data()
    assert source.startswith("generated stand-in")
    assert X.shape == (1797, 64) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert set(np.unique(y)) <= set(range(10))


def test_demo_rejects_bad_epochs(capsys):
    assert cli.main(["demo", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert cli.main(["demo", "--seeds", "0"]) == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# train / predict
# ---------------------------------------------------------------------------------------------

def test_train_then_predict_classification(tmp_path, class_csv, capsys):
    path, X, y = class_csv
    model_path = tmp_path / "m.fr"
    argv = ["train", str(path), "--target", "label", "--hidden", "32,16", "--dropout", "0.1",
            "--batch-norm", "--l2", "1e-4", "--optimizer", "adam", "--lr", "1e-2",
            "--scheduler", "onecycle", "--epochs", "30", "--patience", "5", "--batch-size",
            "32", "--out", str(model_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "classification, 2 classes" in out and "epoch   1" in out and "saved" in out
    model = frio.load(model_path)
    assert model.metadata["classes"] == ["ham", "spam"]
    assert model.metadata["features"] == ["f1", "f2", "f3", "f4"]
    preds = tmp_path / "p.csv"
    assert cli.main(["predict", str(model_path), str(path), "--out", str(preds)]) == 0
    rows = _read(preds)
    assert rows[0] == ["prediction", "p_ham", "p_spam"]
    labels = np.array([r[0] for r in rows[1:]])
    assert (labels == y).mean() > 0.85
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    # the saved model takes raw (unstandardized) features: same answer as the eval model
    feats = X.astype(np.float32)
    scores = model(feats)
    np.testing.assert_array_equal(np.array(["ham", "spam"])[scores.argmax(1)], labels)


def test_train_regression_with_each_scheduler(tmp_path, capsys):
    g = np.random.default_rng(1)
    X = g.standard_normal((120, 3))
    t = X @ [1.5, -2.0, 0.5] + 0.3
    path = tmp_path / "reg.csv"
    _write_csv(path, ["a", "b", "c", "y"], [[*map(str, r), str(v)] for r, v in zip(X, t)])
    for sched in ("cosine", "step", "plateau"):
        out = tmp_path / f"{sched}.fr"
        assert cli.main(["train", str(path), "--target", "y", "--hidden", "16", "--epochs",
                         "40", "--lr", "1e-2", "--scheduler", sched, "--layer-norm",
                         "--optimizer", "sgd", "--l1", "1e-5", "--quiet",
                         "--out", str(out)]) == 0
        assert "regression" in capsys.readouterr().out
    assert cli.main(["predict", str(out), str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prediction"
    pred = np.array([float(v) for v in lines[1:]])
    assert np.corrcoef(pred, t)[0, 1] > 0.8


@pytest.mark.parametrize("rows,argv_extra,match", [
    ([["1", "2", "0"], ["3", "x!", "1"]], [], r"row 3, column 'b': 'x!' is not a number"),
    ([["1", "2", "0"], ["3", "4"]], [], r"row 3: 2 cells, the header has 3 columns"),
    ([["1", "2", "0"], ["3", "nan", "1"]], [], r"row 3, column 'b': 'nan' is not a finite"),
    ([["1", "2", "0"], ["3", "4", "1"]], ["--target", "missing"],
     r"column 'missing' not found \(columns: a, b, y\)"),
    ([["1", "2", "0"], ["3", "4", "1"], ["1", "1", "1"], ["2", "2", ""]], [],
     r"row 5, column 'y': empty target"),
    ([["1", "2", "a"], ["3", "4", "b"], ["5", "6", "a"], ["7", "8", "b"]],
     ["--task", "regression"], r"row 2, column 'y': 'a' is not a number"),
])
def test_csv_errors_name_row_and_column(tmp_path, capsys, rows, argv_extra, match):
    path = tmp_path / "bad.csv"
    _write_csv(path, ["a", "b", "y"], rows)
    argv = ["train", str(path), "--target", "y", "--epochs", "1", "--out",
            str(tmp_path / "m.fr"), *argv_extra]       # a later --target overrides
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert re.search(match, err), err
    assert not (tmp_path / "m.fr").exists()


def test_read_csv_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(cli.CSVError, match="empty"):
        cli.read_csv(str(empty))
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n")
    with pytest.raises(cli.CSVError, match="duplicate"):
        cli.read_csv(str(dup))
    with pytest.raises(cli.CSVError, match="cannot open"):
        cli.read_csv(str(tmp_path / "missing.csv"))


def test_predict_errors(tmp_path, class_csv, capsys):
    path, _, _ = class_csv
    bad = tmp_path / "bad.fr"
    bad.write_bytes(b"garbage")
    assert cli.main(["predict", str(bad), str(path)]) == 2
    assert "not a fastreg file" in capsys.readouterr().err
    model_path = tmp_path / "m.fr"
    assert cli.main(["train", str(path), "--target", "label", "--hidden", "4", "--epochs",
                     "2", "--quiet", "--out", str(model_path)]) == 0
    other = tmp_path / "other.csv"
    _write_csv(other, ["f1", "f2"], [["1", "2"]])
    assert cli.main(["predict", str(model_path), str(other)]) == 2
    assert "missing feature column(s) ['f3', 'f4']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# bench and python -m fastreg
# ---------------------------------------------------------------------------------------------

def test_bench_calls_the_comparison_driver(monkeypatch, capsys):
    import fastreg._bench as bench
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--only", "matmul"]) == 0
    assert seen == [["--quick", "--only", "matmul"]]


def test_bench_reruns_with_openblas_timeout_only_where_openblas_would_spin(monkeypatch):
    import fastreg._bench as bench
    envs = []
    monkeypatch.setattr(bench.subprocess, "call", lambda cmd, env: envs.append(env) or 0)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.delenv("FASTREG_BENCH_REEXEC", raising=False)
    monkeypatch.setattr(bench, "_openblas_spins", lambda: True)
    assert bench.main(["--only", "no-such-group"]) == 0
    assert [e["OPENBLAS_THREAD_TIMEOUT"] for e in envs] == ["16"]
    envs.clear()
    monkeypatch.setattr(bench, "_openblas_spins", lambda: False)
    assert bench.main(["--only", "no-such-group"]) == 0
    assert envs == []                   # ran in this process: no re-run


def test_openblas_spins_follows_the_blas_interop_mode():
    import fastreg as fr
    import fastreg._bench as bench
    if bench._openblas_spins():
        pytest.skip(f"this OpenBLAS is not routed onto fastreg's pool: {fr.get_blas_interop()}")
    fr.set_blas_interop("off")
    try:
        assert bench._openblas_spins()
    finally:
        fr.set_blas_interop("auto")
    assert not bench._openblas_spins()


def test_bench_without_driver_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastreg._bench", None)
    assert cli.main(["bench"]) == 2
    assert "fastreg._bench" in capsys.readouterr().err


def test_python_dash_m_fastreg(tmp_path, class_csv):
    path, _, _ = class_csv
    model_path = tmp_path / "m.fr"
    assert cli.main(["train", str(path), "--target", "label", "--hidden", "8", "--epochs",
                     "2", "--quiet", "--out", str(model_path)]) == 0
    out = subprocess.run([sys.executable, "-m", "fastreg", "predict", str(model_path),
                          str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "prediction,p_ham,p_spam" and len(lines) == 241
    script = ("import sys; from fastreg.cli import main; "
              f"rc = main(['predict', {str(model_path)!r}, {str(path)!r}, '--out', "
              f"{str(tmp_path / 'p.csv')!r}]); "
              "print(rc, 'numba' in sys.modules)")
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, check=False)
    assert quiet.stdout.split() == ["0", "False"], quiet.stderr     # predict never loads numba
    helped = subprocess.run([sys.executable, "-m", "fastreg", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert helped.returncode == 0
    for cmd in ("demo", "study", "train", "predict", "bench"):
        assert cmd in helped.stdout
