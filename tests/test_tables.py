"""Tables: fastreg.data.read_table, TablePreprocessor, pandas inputs to fit/predict, and the CLI
on messy CSVs (issue 16, item 3)."""
from __future__ import annotations

import csv
import io
import re
import time

import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="pandas is an optional extra (fastreg[tables])")

import fastreg as fr
from fastreg import cli
from fastreg import io as frio
from fastreg.data import TableError, TablePreprocessor, read_table
from fastreg.data.table import MAX_LISTED, row_numbers

MESSY = ("id;height;weight;colour;size;score\n"
         "a1;1,5;60;red;S;1,25\n"
         "a2;NA;72,5;blue;M;2,5\n"
         "\n"
         "a3;1,8;;red;?;3,75\n"
         "a4;2;80;green;L;-1e1\n")


# ---------------------------------------------------------------------------------------------
# read_table
# ---------------------------------------------------------------------------------------------

def test_semicolon_decimal_comma_missing_markers_text_and_ids():
    df = read_table(MESSY.encode())
    assert list(df.columns) == ["id", "height", "weight", "colour", "size", "score"]
    np.testing.assert_array_equal(df["height"].to_numpy(), [1.5, np.nan, 1.8, 2.0])
    np.testing.assert_array_equal(df["weight"].to_numpy(), [60, 72.5, np.nan, 80])
    np.testing.assert_array_equal(df["score"].to_numpy(), [1.25, 2.5, 3.75, -10.0])
    for c in ("height", "weight", "score"):
        assert df[c].dtype == np.float64
    assert df["colour"].tolist() == ["red", "blue", "red", "green"]
    assert df["id"].tolist() == ["a1", "a2", "a3", "a4"]
    assert df["size"].isna().tolist() == [False, False, True, False]
    np.testing.assert_array_equal(row_numbers(df), [2, 3, 5, 6])   # blank line 4


def test_tab_and_comma_sniffed_and_explicit(tmp_path):
    tab = "x\ty\tname\n1.5\t2\tu\n3\t4e-3\tv\n"
    df = read_table(io.StringIO(tab))
    assert list(df.columns) == ["x", "y", "name"]
    np.testing.assert_array_equal(df["y"].to_numpy(), [2.0, 4e-3])
    path = tmp_path / "c.csv"
    path.write_text('a,b\n"1,5",2\n3,4\n')                  # quoted cell, comma separator
    with pytest.raises(TableError, match=r"row 2, column 'a': '1,5' is not a number"):
        read_table(path)                                   # decimal '.' with a ',' separator
    assert read_table(path, decimal=",")["a"].tolist() == [1.5, 3.0]
    # an explicit separator and extra missing markers
    df = read_table(b"a;b\n1;--\n2;3\n", sep=";", na_values=["--"])
    assert np.isnan(df["b"].iloc[0]) and df["b"].iloc[1] == 3
    np.testing.assert_array_equal(read_table(b"a,b\n1,2\n", columns=["b", "a"]).columns,
                                  ["b", "a"])
    with pytest.raises(TableError, match=r"column\(s\) \['z'\] not found"):
        read_table(b"a,b\n1,2\n", columns=["z"])


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (fastreg[tables])")
    df = read_table(MESSY.encode())
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    back = read_table(path)
    assert list(back.columns) == list(df.columns)
    np.testing.assert_array_equal(back["height"].to_numpy(), df["height"].to_numpy())
    assert back["colour"].tolist() == df["colour"].tolist()
    assert back["size"].isna().tolist() == df["size"].isna().tolist()


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    for mod in ("pyarrow", "fastparquet"):
        monkeypatch.setitem(sys.modules, mod, None)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
    with pytest.raises((ImportError, TableError), match="pyarrow|Parquet"):
        read_table(path)


def test_every_offending_column_is_listed_with_its_first_bad_row():
    rows = ["a,b,c,d,e"] + [f"{i},{i},{i},{i},t{i}" for i in range(10)]
    rows[3] = "2,x!,2,2,t2"        # row 4 (header is row 1)
    rows[7] = "6,6,6,inf,t6"       # row 8
    rows[9] = "8,oops,8,8,t8"      # a second bad cell in b
    with pytest.raises(TableError) as exc:
        read_table("\n".join(rows).encode())
    msg = str(exc.value)
    assert "2 column(s)" in msg
    assert "row 4, column 'b': 'x!' is not a number (and 1 more rows)" in msg
    assert "row 8, column 'd': 'inf' is not a finite number" in msg
    assert "'e'" not in msg                       # a text column is not an error


def test_error_message_is_bounded():
    n = 1_000_000
    header = ",".join(["c"] * n)                  # 10^6 duplicate names
    t0 = time.perf_counter()
    with pytest.raises(TableError) as exc:
        read_table((header + "\n" + ",".join(["1"] * n) + "\n").encode())
    assert time.perf_counter() - t0 < 5
    assert "duplicate" in str(exc.value) and len(str(exc.value)) < 2000
    bad = ",".join(f"c{j}" for j in range(500)) + "\n" + ",".join(["x1"] + ["1"] * 499) + "\n" \
        + ",".join(["2"] * 500) + "\n"
    many = bad.replace("x1", "1")
    many = many.split("\n")
    many[1] = ",".join(["1"] * 500)
    many[2] = ",".join(["y"] + ["z"] * 499)
    many.append(",".join(["3"] * 500))
    with pytest.raises(TableError) as exc:          # 500 bad columns, 20 spelled out
        read_table("\n".join(many).encode())
    msg = str(exc.value)
    assert "500 column(s)" in msg and f"(and {500 - MAX_LISTED} more columns)" in msg
    assert msg.count("is not a number") == MAX_LISTED and len(msg) < 3000


def test_non_utf8_byte_is_reported_on_its_row():
    lines = [b"a,b"] + [b"%d,%d" % (i, i) for i in range(60)]
    lines[39] = b"38,caf\xe9"                    # row 40
    with pytest.raises(TableError, match=r"row 40: byte 0xe9 .* not valid utf-8"):
        read_table(b"\n".join(lines) + b"\n")
    df = read_table(b"\n".join(lines) + b"\n", encoding="latin-1", text_columns=["b"])
    assert df["b"].iloc[38] == "café"


def test_duplicate_check_is_linear_in_columns():
    n = 40_000
    names = [f"c{j}" for j in range(n)]
    names[-1] = "c7"
    t0 = time.perf_counter()
    with pytest.raises(TableError, match=r"duplicate column name\(s\) \['c7'\]"):
        read_table((",".join(names) + "\n" + ",".join(["1"] * n) + "\n").encode())
    assert time.perf_counter() - t0 < 0.5
    names[-1] = "last"
    t0 = time.perf_counter()
    df = read_table((",".join(names) + "\n" + ",".join(["1"] * n) + "\n").encode())
    assert df.shape == (1, n) and time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"a,,b\n1,2,3\n", r"empty column name\(s\) at position\(s\) 2"),
    (b"a,b\n1,2\n3\n4,5,6\n", r"row 3: 1 cells, the header has 2 columns; row 4: 3 cells"),
])
def test_structural_errors(data, match):
    with pytest.raises(TableError, match=match):
        read_table(data)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sep must be one character"):
        read_table(b"a\n1\n", sep=";;")
    with pytest.raises(ValueError, match="decimal must be"):
        read_table(b"a\n1\n", decimal="x")
    with pytest.raises(TypeError, match="path_or_buffer"):
        read_table(12)
    with pytest.raises(TableError, match="cannot open"):
        read_table("/nonexistent/t.csv")


# ---------------------------------------------------------------------------------------------
# TablePreprocessor
# ---------------------------------------------------------------------------------------------

def _frame():
    return pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0, 100.0, 200.0],
                         "c": ["a", "b", "a", None, "zz", "a"],
                         "z": [0.5, -0.5, 1.5, 2.5, 3.5, 4.5]})


def test_preprocessor_maths_against_numpy():
    df = _frame()
    tr = df.iloc[:4]
    pre = TablePreprocessor().fit(tr)
    X = pre.transform(df)
    assert pre.feature_names_out_ == ["x", "z", "c=a", "c=b"]
    x = np.array([1.0, 2.0, 4.0])
    med = np.median(x)                                     # 2.0, from the training rows only
    xt = np.array([1.0, 2.0, med, 4.0])
    ref_x = (np.array([1, 2, med, 4, 100, 200]) - xt.mean()) / xt.std()
    np.testing.assert_allclose(X[:, 0], ref_x, rtol=1e-15)
    z = tr["z"].to_numpy()
    np.testing.assert_allclose(X[:, 1], (df["z"] - z.mean()) / z.std(), rtol=1e-15)
    # one-hot; missing and unseen ('zz') rows are all zero
    np.testing.assert_array_equal(X[:, 2:], [[1, 0], [0, 1], [1, 0], [0, 0], [0, 0], [1, 0]])
    mean = TablePreprocessor(impute="mean", standardize=False).fit(tr).transform(df)
    np.testing.assert_allclose(mean[2, 0], x.mean())
    with pytest.raises(ValueError, match=r"missing values in numeric column\(s\) \['x'\]"):
        TablePreprocessor(impute="none").fit(tr).transform(df)


def test_preprocessor_is_fitted_on_the_training_rows_only():
    df = _frame()
    pre = TablePreprocessor().fit(df.iloc[:4], y=np.array([1.0, 2.0, 3.0, 4.0]))
    # statistics of all rows would differ: the outliers 100 and 200 are in the later rows
    assert pre.fill_[0] == 2.0 and pre.mean_[0] == pytest.approx(2.25)
    assert pre.categories_["c"] == ["a", "b"]           # 'zz' only appears after row 4
    assert pre.target_mean_ == 2.5
    np.testing.assert_allclose(pre.inverse_transform_target(pre.transform_target([7.0])), 7.0)


def test_preprocessor_columns_reordered_or_missing_named():
    df = _frame()
    pre = TablePreprocessor().fit(df)
    ref = pre.transform(df)
    np.testing.assert_array_equal(pre.transform(df[["z", "c", "x"]].assign(extra=1)), ref)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['c'\].*extra column\(s\): "
                                         r"\['w'\]"):
        pre.transform(df[["x", "z"]].assign(w=1))


def test_preprocessor_json_round_trip_and_embedding_indices():
    import json
    df = _frame()
    pre = TablePreprocessor(categorical="embedding").fit(df.iloc[:4], y=[1.0, 2, 3, 5])
    back = TablePreprocessor.from_json(json.loads(json.dumps(pre.to_json())))
    num, idx = back.transform(df)
    num0, idx0 = pre.transform(df)
    np.testing.assert_array_equal(num, num0)
    np.testing.assert_array_equal(idx, idx0)
    np.testing.assert_array_equal(idx[:, 0], [1, 2, 1, 0, 0, 1])      # 0: unknown / missing
    assert back.embedding_sizes() == [3] and back.target_scale_ == pre.target_scale_
    emb = fr.nn.Embedding(back.embedding_sizes()[0], 2)             # every index is in range
    assert emb(idx[:, 0]).shape == (6, 2)
    with pytest.raises(ValueError, match="not a TablePreprocessor"):
        TablePreprocessor.from_json({"type": "x"})
    with pytest.raises(ValueError, match="impute must be one of"):
        TablePreprocessor(impute="zero")
    with pytest.raises(RuntimeError, match="not fitted"):
        TablePreprocessor().transform(df)
    with pytest.raises(ValueError, match=r"more than 2 categories"):
        TablePreprocessor(max_categories=2).fit(df)


# ---------------------------------------------------------------------------------------------
# DataFrames into fit and predict
# ---------------------------------------------------------------------------------------------

def _model(n_in, n_out=1):
    fr.manual_seed(0)
    return fr.nn.Sequential(fr.nn.Linear(n_in, 8), fr.nn.ReLU(), fr.nn.Linear(8, n_out))


def test_dataframes_into_fit_and_predict(tmp_path):
    g = np.random.default_rng(0)
    X = g.standard_normal((64, 3))
    y = X @ [1.0, -2.0, 0.5]
    df = pd.DataFrame(X, columns=["a", "b", "c"]).astype({"c": np.float32})
    df["b"] = (df["b"] * 3).round().astype(np.int64)         # an integer column
    m1, m2 = _model(3), _model(3)
    opt1, opt2 = fr.optim.SGD(m1.parameters(), lr=1e-3), fr.optim.SGD(m2.parameters(), lr=1e-3)
    ys = pd.Series(y, name="t").to_frame()
    h1 = fr.train.fit(m1, fr.nn.MSELoss(), opt1, train=(df, ys), valid=(df[["c", "a", "b"]],
                      ys), epochs=2, batch_size=16, progress=False, seed=0)
    arr = df.to_numpy(dtype=np.float32)
    h2 = fr.train.fit(m2, fr.nn.MSELoss(), opt2, train=(arr, y.reshape(-1, 1)),
                      valid=(arr, y.reshape(-1, 1)), epochs=2, batch_size=16, progress=False,
                      seed=0)
    assert h1.history["loss"] == h2.history["loss"]
    assert h1.history["val_loss"] == h2.history["val_loss"]
    assert m1.feature_names_in_ == ["a", "b", "c"]
    path = tmp_path / "m.fr"
    frio.save(m1, path)
    m = frio.load(path)
    assert m.metadata["features"] == ["a", "b", "c"]
    ref = m.predict(arr)
    np.testing.assert_array_equal(m.predict(df), ref)
    np.testing.assert_array_equal(m.predict(df[["c", "b", "a"]].assign(id=7)), ref)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['b'\].*extra.*\['q'\]"):
        m.predict(df[["a", "c"]].assign(q=1.0))
    bad = df.assign(s=["u"] * 64)
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['s'\].*TablePreprocessor"):
        fr.train.fit(_model(4), fr.nn.MSELoss(), opt1, train=(bad, ys), epochs=1,
                     progress=False)
    with pytest.raises(ValueError, match=r"missing values in column\(s\) \['a'\]"):
        fr.train.fit(_model(3), fr.nn.MSELoss(), opt1, train=(df.assign(a=np.nan), ys),
                     epochs=1, progress=False)


# ---------------------------------------------------------------------------------------------
# the CLI on a messy CSV
# ---------------------------------------------------------------------------------------------

def _messy_csv(path, n=160, seed=0):
    g = np.random.default_rng(seed)
    num = g.standard_normal((n, 2)) * [1, 10] + [0, 50]
    colour = g.choice(["red", "green", "blue"], n)
    label = np.where(num[:, 0] + (colour == "red") * 1.5 - 0.5 > 0, "yes", "no")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["id", "a", "b", "colour", "label"])
        for i in range(n):
            a = "NA" if i % 17 == 3 else f"{num[i, 0]:.5f}".replace(".", ",")
            w.writerow([f"r{i}", a, f"{num[i, 1]:.4f}".replace(".", ","),
                        "" if i % 23 == 5 else colour[i], label[i]])
    return label


def test_cli_train_predict_on_a_messy_csv(tmp_path, capsys):
    data = tmp_path / "messy.csv"
    label = _messy_csv(data)
    model_path = tmp_path / "m.fr"
    assert cli.main(["train", str(data), "--target", "label", "--drop", "id", "--hidden", "16",
                     "--epochs", "3", "--lr", "1e-2", "--quiet", "--out",
                     str(model_path)]) == 0
    cap = capsys.readouterr()
    assert "1 text one-hot to 5 inputs" in cap.out
    assert "still improving: raise --epochs" in cap.err
    m = frio.load(model_path)
    pre = TablePreprocessor.from_json(m.metadata["preprocessor"])
    assert pre.feature_names_in_ == ["a", "b", "colour"] and pre.text_ == ["colour"]
    # fitted on the training split only: not the median of all rows
    df = read_table(data)
    y = (df["label"] == "yes").to_numpy().astype(np.int64)         # classes ['no', 'yes']
    (itr, _), _, _ = fr.data.train_valid_test_split(np.arange(160).reshape(-1, 1), y,
                                                    valid=0.15, test=0.0, seed=0)
    a = df["a"].to_numpy()
    assert pre.fill_[0] == np.nanmedian(a[itr[:, 0]]) != np.nanmedian(a)
    assert pre.mean_[1] == 0 and pre.scale_[1] == 1                  # folded into the model
    # fastreg predict on the raw rows == the Python path on the same rows
    preds = tmp_path / "p.csv"
    assert cli.main(["predict", str(model_path), str(data), "--keep", "id", "--out",
                     str(preds)]) == 0
    err = capsys.readouterr().err
    assert "target 'label': accuracy" in err and "log loss" in err
    with open(preds, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "prediction", "p_no", "p_yes"]
    assert [r[0] for r in rows[1:]] == [f"r{i}" for i in range(160)]
    scores = m.predict(pre.transform(df).astype(np.float32))
    classes = np.array(m.metadata["classes"])
    np.testing.assert_array_equal([r[1] for r in rows[1:]], classes[scores.argmax(1)])
    np.testing.assert_array_equal(m.predict(df), scores)    # the stored preprocessing
    assert len(label) == 160
    # reordered columns with the target absent: same predictions; a missing column: named
    shuffled = df[["colour", "b", "id", "a"]]
    alt = tmp_path / "alt.csv"
    shuffled.to_csv(alt, index=False)
    assert cli.main(["predict", str(model_path), str(alt)]) == 0
    out = capsys.readouterr()
    assert [ln.split(",")[0] for ln in out.out.splitlines()[1:]] == [r[1] for r in rows[1:]]
    assert "accuracy" not in out.err
    df[["a", "b", "id"]].to_csv(alt, index=False)
    assert cli.main(["predict", str(model_path), str(alt)]) == 2
    assert "missing feature column(s) ['colour']" in capsys.readouterr().err


def test_cli_regression_target_scaling_features_and_errors(tmp_path, capsys):
    g = np.random.default_rng(2)
    X = g.standard_normal((120, 3))
    t = 1000 + 300 * (X @ [1.5, -2.0, 0.5])
    data = tmp_path / "reg.tsv"
    with open(data, "w") as f:
        f.write("a\tb\tc\tjunk\ty\n")
        f.writelines("\t".join(f"{x:.6f}" for x in r) + f"\tq\t{v:.4f}\n"
                     for r, v in zip(X, t))
    model_path = tmp_path / "r.fr"
    assert cli.main(["train", str(data), "--target", "y", "--features", "a", "b", "c",
                     "--impute", "mean", "--task", "regression", "--hidden", "16", "--epochs",
                     "40", "--lr", "1e-2", "--quiet", "--out", str(model_path)]) == 0
    capsys.readouterr()
    m = frio.load(model_path)
    assert m.metadata["features"] == ["a", "b", "c"]
    assert cli.main(["predict", str(model_path), str(data), "--target", "y"]) == 0
    cap = capsys.readouterr()
    pred = np.array([float(v) for v in cap.out.splitlines()[1:]])
    assert np.corrcoef(pred, t)[0, 1] > 0.9 and abs(pred.mean() - 1000) < 150  # raw units
    assert "RMSE" in cap.err and "R^2" in cap.err
    for argv, match in [
        (["--drop", "nope"], r"--drop column\(s\) \['nope'\] not found"),
        (["--features", "a", "zz"], r"--features column\(s\) \['zz'\] not found"),
    ]:
        assert cli.main(["train", str(data), "--target", "y", "--epochs", "1", "--out",
                         str(tmp_path / "x.fr"), *argv]) == 2
        assert re.search(match, capsys.readouterr().err)
    assert cli.main(["predict", str(model_path), str(data), "--keep", "nope"]) == 2
    assert "--keep column(s) ['nope'] not found" in capsys.readouterr().err


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())       # argparse wraps lines
    for opt in ("--sep", "--drop", "--features", "--impute", "--task"):
        assert opt in out
    assert "(default: median)" in out and "(default: 50)" in out
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--keep" in out and "--target" in out



def test_cli_reports_bad_tables_in_one_line(tmp_path, capsys):
    data = tmp_path / "latin.csv"
    rows = [b"a,b,y"] + [b"%d,%d,%d" % (i, i % 3, i % 2) for i in range(8)]
    rows[3] = b"2,caf\xe9,0"                                        # row 4
    data.write_bytes(b"\n".join(rows) + b"\n")
    argv = ["train", str(data), "--target", "y", "--epochs", "1", "--out", str(tmp_path / "m")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "row 4: byte 0xe9" in err and err.count("\n") == 1
    assert cli.main([*argv, "--encoding", "latin-1"]) == 2           # now a mixed column
    assert "row 4, column 'b': 'café' is not a number" in capsys.readouterr().err


def test_cli_predict_on_a_model_file_without_preprocessing(tmp_path, capsys):
    m = _model(2)
    path = tmp_path / "plain.fr"
    frio.save(m, path, metadata={"features": ["u", "v"], "target": "t"})
    data = tmp_path / "d.csv"
    data.write_text("v;u;t;name\n1,5;2;0,5;a\n3;4;1;b\n")
    assert cli.main(["predict", str(path), str(data), "--keep", "name"]) == 0
    cap = capsys.readouterr()
    ref = frio.load(path).predict(np.array([[2.0, 1.5], [4.0, 3.0]]))[:, 0]
    lines = cap.out.splitlines()
    assert lines[0] == "name,prediction"
    np.testing.assert_allclose([float(ln.split(",")[1]) for ln in lines[1:]], ref, rtol=1e-6)
    assert "RMSE" in cap.err                                        # 't' is present
    data.write_text("v;u\n1;x\n2;y\n")
    assert cli.main(["predict", str(path), str(data)]) == 2
    assert "column(s) ['u'] are not numeric" in capsys.readouterr().err
