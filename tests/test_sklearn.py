"""fastreg.sklearn's MLPClassifier / MLPRegressor against scikit-learn's own MLPs.

The estimators take the same steps as scikit-learn's (same Glorot draws from random_state, same
batches, same solver updates), so in float64 the fitted coefficients, loss curves, validation
scores, iteration counts and verbose output are compared with scikit-learn's directly, at tight
tolerances, over the awkward paths: schedules, early stopping, sample weights, warm start,
multilabel and multi-output targets.
"""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed "
                                                "(pip install 'fastreg[sklearn]')")

from sklearn import neural_network as sknn
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_sample_weight

import fastreg as fr
from fastreg.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=33, d=7, kind="multiclass", seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d)
    if kind == "multiclass":
        y = np.argmax(X[:, :3] + 0.3 * rng.randn(n, 3), axis=1)
    elif kind == "binary":
        y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    elif kind == "multilabel":
        y = (X[:, :3] > 0).astype(int)
    elif kind == "multioutput":
        y = np.c_[X[:, 0] - 2 * X[:, 1], np.sin(X[:, 2])]
    elif kind == "poisson":
        y = rng.poisson(np.exp(0.3 * X[:, 0])).astype(float)
    else:
        y = X @ rng.randn(d) + 0.1 * rng.randn(n)
    return X, y


def _assert_same_fit(ours, theirs, rtol=1e-9, atol=1e-11):
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    assert ours.n_layers_ == theirs.n_layers_ and ours.n_outputs_ == theirs.n_outputs_
    assert ours.out_activation_ == theirs.out_activation_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol, atol=atol)
    assert len(ours.coefs_) == len(theirs.coefs_)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    if theirs.validation_scores_ is not None:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_)
    else:
        assert ours.validation_scores_ is None
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=rtol)


CASES = [
    # (estimator name, data kind, params)
    ("C", "multiclass", {"solver": "adam"}),
    ("C", "binary", {"solver": "sgd", "learning_rate": "invscaling", "power_t": 0.3,
                         "learning_rate_init": 0.1}),
    ("C", "multiclass", {"solver": "sgd", "learning_rate": "adaptive", "n_iter_no_change": 1,
                             "tol": 0.5, "nesterovs_momentum": False, "learning_rate_init": 0.05}),
    ("C", "multilabel", {"solver": "adam", "activation": "tanh", "hidden_layer_sizes": (5, 4),
                             "batch_size": 7}),
    ("C", "multiclass", {"solver": "adam", "early_stopping": True, "validation_fraction": 0.3,
                             "n_iter_no_change": 2, "activation": "logistic", "learning_rate_init": 0.05}),
    ("R", "multioutput", {"solver": "sgd", "momentum": 0.5, "alpha": 0.1, "batch_size": 10,
                              "learning_rate_init": 0.01, "shuffle": False}),
    ("R", "regression", {"solver": "adam", "early_stopping": True, "activation": "identity",
                             "learning_rate_init": 0.01}),
    ("R", "poisson", {"solver": "adam", "loss": "poisson", "learning_rate_init": 0.01}),
]


@pytest.mark.parametrize("which,kind,params", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_equals_scikit_learn_step_for_step(which, kind, params, weighted, capsys):
    X, y = _data(kind=kind)
    ours_cls, theirs_cls = ((MLPClassifier, sknn.MLPClassifier) if which == "C"
                            else (MLPRegressor, sknn.MLPRegressor))
    kw = {"hidden_layer_sizes": (6,), "max_iter": 6, "random_state": 3, "verbose": True}
    kw.update(params)
    sw = np.random.RandomState(1).uniform(0, 3, len(X)) if weighted else None
    theirs = theirs_cls(**kw).fit(X, y, sample_weight=sw)
    out_theirs = capsys.readouterr().out
    ours = ours_cls(**kw).fit(X, y, sample_weight=sw)
    out_ours = capsys.readouterr().out
    _assert_same_fit(ours, theirs)
    assert out_ours.splitlines()[0] == out_theirs.splitlines()[0]
    assert len(out_ours.splitlines()) == len(out_theirs.splitlines())
    if which == "C":
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-10)
        np.testing.assert_allclose(ours.predict_log_proba(X), theirs.predict_log_proba(X),
                                   atol=1e-8)
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    else:
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10, atol=1e-12)
    assert ours.score(X, y, sample_weight=sw) == pytest.approx(
        theirs.score(X, y, sample_weight=sw), abs=1e-10)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_stops_after_n_iter_no_change_like_scikit_learn(early_stopping, capsys):
    X, y = _data(n=60, kind="multiclass")
    kw = {"hidden_layer_sizes": (6,), "max_iter": 40, "random_state": 0, "tol": 0.5,
          "n_iter_no_change": 3, "early_stopping": early_stopping, "verbose": True}
    theirs = sknn.MLPClassifier(**kw).fit(X, y)
    out_theirs = capsys.readouterr().out
    ours = MLPClassifier(**kw).fit(X, y)
    assert capsys.readouterr().out.splitlines()[-1] == out_theirs.splitlines()[-1]
    assert ours.n_iter_ == kw["n_iter_no_change"] + 2 < kw["max_iter"]   # 1 better, 4 not
    _assert_same_fit(ours, theirs)


def test_zero_weight_samples_and_batches_are_ignored():
    X, y = _data(kind="regression")
    sw = np.r_[np.zeros(11), np.ones(22)]
    kw = {"hidden_layer_sizes": (4,), "max_iter": 3, "random_state": 0, "shuffle": False,
          "batch_size": 11, "tol": 0.0}
    a = MLPRegressor(**kw).fit(X, y, sample_weight=sw)
    b = MLPRegressor(**kw).fit(X[11:], y[11:])
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(p, q, rtol=1e-12)


def test_warm_start_and_partial_fit_match_scikit_learn():
    X, y = _data(kind="multiclass")
    kw = {"hidden_layer_sizes": (6,), "max_iter": 3, "random_state": 0, "warm_start": True}
    ours, theirs = MLPClassifier(**kw).fit(X, y), sknn.MLPClassifier(**kw).fit(X, y)
    before = [c.copy() for c in ours.coefs_]
    ours.set_params(max_iter=2).fit(X, y)
    theirs.set_params(max_iter=2).fit(X, y)
    assert not np.allclose(before[0], ours.coefs_[0])      # continued from the fitted weights
    assert len(ours.loss_curve_) == 5
    _assert_same_fit(ours, theirs)
    inc = [MLPClassifier(random_state=0, hidden_layer_sizes=(4,)),
           sknn.MLPClassifier(random_state=0, hidden_layer_sizes=(4,))]
    for est in inc:
        for lo in range(0, 33, 11):
            est.partial_fit(X[lo:lo + 11], y[lo:lo + 11], classes=np.arange(3))
    _assert_same_fit(*inc)


def test_partial_fit_equals_fit_over_the_same_batches():
    X, y = _data(kind="regression")
    fitted = MLPRegressor(hidden_layer_sizes=(5,), random_state=1, max_iter=4,
                          batch_size=len(X), shuffle=False, tol=0.0).fit(X, y)
    inc = MLPRegressor(hidden_layer_sizes=(5,), random_state=1, batch_size=len(X),
                       shuffle=False)
    for _ in range(4):
        inc.partial_fit(X, y)
    for a, b in zip(fitted.coefs_ + fitted.intercepts_, inc.coefs_ + inc.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(inc.loss_curve_, fitted.loss_curve_, rtol=1e-12)
    Xc, yc = _data(kind="multiclass")
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier().partial_fit(Xc, yc)
    clf = MLPClassifier(hidden_layer_sizes=(4,), random_state=0)
    clf.partial_fit(Xc[yc < 2], yc[yc < 2], classes=[0, 1, 2])     # a batch may miss a class
    assert clf.predict_proba(Xc).shape == (33, 3)
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(Xc, yc + 5)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)


def test_partial_fit_continues_identically_after_pickling():
    X, y = _data(kind="multiclass")
    a = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, shuffle=False)
    a.partial_fit(X, y, classes=[0, 1, 2])
    b = pickle.loads(pickle.dumps(a))
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)


def test_reproducible_with_random_state_and_global_generator_untouched():
    X, y = _data(kind="multiclass")
    fr.manual_seed(123)
    state = fr._random.default_generator.get_state()
    kw = {"hidden_layer_sizes": (6,), "max_iter": 5, "dropout": 0.3, "random_state": 7}
    a, b = MLPClassifier(**kw).fit(X, y), MLPClassifier(**kw).fit(X, y)
    c = MLPClassifier(**{**kw, "random_state": 8}).fit(X, y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert not np.allclose(a.coefs_[0], c.coefs_[0])
    assert fr._random.default_generator.get_state()["philox_offset"] == state["philox_offset"]


def test_bad_parameters_raise_clear_errors():
    X, y = _data(kind="multiclass")
    with pytest.raises(ValueError, match="solver='lbfgs' is not supported"):
        MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="'alpha' parameter .* Got -1"):
        MLPClassifier(alpha=-1).fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(3, 0)).fit(X, y)
    with pytest.raises(ValueError, match="'dropout' parameter"):
        MLPClassifier(dropout=1.0).fit(X, y)
    with pytest.raises(ValueError, match="batch_norm and layer_norm"):
        MLPClassifier(batch_norm=True, layer_norm=True).fit(X, y)
    with pytest.raises(ValueError, match="optimizer must name a fastreg.optim optimizer.*'Nope'"):
        MLPClassifier(optimizer="Nope").fit(X, y)
    with pytest.raises(ValueError, match="lr_scheduler must name.*'Nope'"):
        MLPClassifier(lr_scheduler="Nope").fit(X, y)
    with pytest.raises(ValueError, match="learning_rate='constant'"):
        MLPClassifier(lr_scheduler="StepLR", learning_rate="adaptive").fit(X, y)
    with pytest.raises(ValueError, match="dtype must be None, numpy.float32 or numpy.float64"):
        MLPClassifier(dtype="int32").fit(X, y)
    with pytest.raises(ValueError, match=r"class_weight has labels \[9\]"):
        MLPClassifier(class_weight={9: 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="non-negative targets"):
        MLPRegressor(loss="poisson").fit(X, -np.abs(X[:, 0]))
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(early_stopping=True, validation_fraction=0.01).fit(X[:20], y[:20])


def test_dtype_follows_input_unless_given():
    X, y = _data(kind="multiclass")
    m32 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X.astype(np.float32), y)
    assert m32.coefs_[0].dtype == np.float32 and m32.predict_proba(X).dtype == np.float32
    m64 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, dtype=np.float64).fit(
        X.astype(np.float32), y)
    assert m64.coefs_[0].dtype == np.float64
    mint = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, dtype="float32").fit(
        (X * 10).astype(np.int64), y.astype(float))
    assert mint.coefs_[0].dtype == np.float32


def test_class_weight_equals_the_matching_sample_weight():
    X, y = _data(kind="multiclass")
    kw = {"hidden_layer_sizes": (5,), "max_iter": 4, "random_state": 0}
    for cw in ("balanced", {0: 1.0, 1: 3.0, 2: 0.5}):
        a = MLPClassifier(class_weight=cw, **kw).fit(X, y)
        b = MLPClassifier(**kw).fit(X, y, sample_weight=compute_sample_weight(cw, y))
        np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], rtol=1e-12)


def test_fastreg_options_train_and_do_what_they_say():
    X, y = _data(n=120, kind="multiclass")
    kw = {"hidden_layer_sizes": (16,), "max_iter": 15, "random_state": 0, "learning_rate_init": 0.01}
    plain = MLPClassifier(**kw).fit(X, y)
    for extra in ({"batch_norm": True}, {"layer_norm": True, "dropout": 0.2},
                  {"optimizer": ("RMSprop", {"alpha": 0.9})}, {"optimizer": "AdamW"},
                  {"lr_scheduler": ("StepLR", {"step_size": 5, "gamma": 0.5})},
                  {"lr_scheduler": ("ReduceLROnPlateau", {"patience": 1})},
                  {"n_threads": 1, "progress": False}):
        m = MLPClassifier(**kw, **extra).fit(X, y)
        assert m.score(X, y) > 0.7, extra
    # n_threads holds during fit (seen from inside an lr_lambda) and the global count comes back
    before, seen = fr.get_num_threads(), []
    lam = ("LambdaLR", {"lr_lambda": lambda e: seen.append(fr.get_num_threads()) or 1.0})
    MLPClassifier(**kw, n_threads=1, lr_scheduler=lam).fit(X, y)
    assert seen and set(seen) == {1}
    assert fr.get_num_threads() == before
    # l1 and decoupled weight decay shrink the weights; alpha=0 + l1 adds |W| to the loss
    shrunk = MLPClassifier(**kw, l1=5.0, weight_decay=1.0).fit(X, y)
    assert np.abs(shrunk.coefs_[0]).sum() < 0.8 * np.abs(plain.coefs_[0]).sum()
    # restore_best_weights: the final weights are those of the lowest training loss
    noisy = dict(kw, learning_rate_init=0.5, max_iter=12)
    last = MLPClassifier(**noisy).fit(X, y)
    best = MLPClassifier(**noisy, restore_best_weights=True).fit(X, y)
    k = int(np.argmin(last.loss_curve_))
    if k < len(last.loss_curve_) - 1:
        again = MLPClassifier(**{**noisy, "max_iter": k + 1}).fit(X, y)
        np.testing.assert_allclose(best.coefs_[0], again.coefs_[0], rtol=1e-12)


def test_batch_norm_never_sees_a_one_row_batch():
    X, y = _data(kind="multiclass")            # 33 rows in batches of 16: 16, 17
    m = MLPClassifier(hidden_layer_sizes=(5,), batch_norm=True, batch_size=16, max_iter=2,
                      random_state=0).fit(X, y)
    assert len(m.loss_curve_) == 2 and np.isfinite(m.loss_curve_).all()
    with pytest.raises(ValueError, match="batch_norm=True needs at least 2 training samples"):
        MLPClassifier(batch_norm=True).fit(X[:1], y[:1])


def test_coefs_are_views_of_the_network_and_assignable():
    X, y = _data(kind="regression")
    m = MLPRegressor(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(X, y)
    assert [c.shape for c in m.coefs_] == [(7, 3), (3, 1)]
    m.coefs_ = [np.zeros((7, 3)), np.zeros((3, 1))]
    m.intercepts_ = [np.zeros(3), np.array([2.5])]
    np.testing.assert_allclose(m.predict(X), 2.5)
    with pytest.raises(ValueError, match=r"coefs_\[0\] must have shape \(7, 3\)"):
        m.coefs_ = [np.zeros((3, 7)), np.zeros((3, 1))]
    assert not hasattr(MLPRegressor(), "coefs_")


def test_clone_pickle_joblib_round_trips(tmp_path):
    import joblib
    X, y = _data(kind="binary")
    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0, dropout=0.1)
    assert pickle.loads(pickle.dumps(est)).get_params() == est.get_params()
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "classes_")
    est.fit(X, y)
    p0 = est.predict_proba(X)
    for back in (pickle.loads(pickle.dumps(est)),
                 joblib.load(joblib.dump(est, tmp_path / "m.joblib")[0])):
        np.testing.assert_array_equal(back.predict_proba(X), p0)
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert not hasattr(clone(est), "coefs_")


def test_grid_search_loky_and_cross_val_score():
    from sklearn.model_selection import GridSearchCV, cross_val_score
    X, y = _data(n=90, kind="multiclass")
    gs = GridSearchCV(MLPClassifier(max_iter=60, random_state=0, learning_rate_init=0.02),
                      {"hidden_layer_sizes": [(4,), (16,)]}, cv=2, n_jobs=2)
    gs.fit(X, y)
    assert gs.best_score_ > 0.6 and isinstance(gs.best_estimator_, MLPClassifier)
    scores = cross_val_score(MLPRegressor(max_iter=30, random_state=0, learning_rate_init=0.01),
                             *_data(n=90, kind="regression"), cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.5)


def test_pipeline_with_column_transformer_on_a_mixed_dataframe():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    rng = np.random.RandomState(0)
    n = 120
    df = pd.DataFrame({"age": rng.uniform(18, 80, n), "income": rng.lognormal(10, 1, n),
                       "city": rng.choice(["paris", "oslo", "lima"], n)})
    df.loc[::7, "income"] = np.nan
    y = np.where((df["age"] > 45) ^ (df["city"] == "oslo"), "a", "b")
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         ["age", "income"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])])
    pipe = Pipeline([("pre", pre), ("mlp", MLPClassifier(max_iter=60, random_state=0,
                                                         learning_rate_init=0.02))])
    gs = GridSearchCV(pipe, {"mlp__hidden_layer_sizes": [(8,), (32,)]}, cv=2).fit(df, y)
    assert gs.score(df, y) > 0.8
    # feature names flow through a bare estimator on a frame
    num = df[["age"]].assign(income=df["income"].fillna(0) / 1e4)
    m = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(num, df["age"])
    np.testing.assert_array_equal(m.feature_names_in_, ["age", "income"])
    with pytest.raises(ValueError, match="feature names"):
        m.predict(num[["income", "age"]])


def test_grid_search_on_a_dask_local_cluster():
    distributed = pytest.importorskip("dask.distributed",
                                      reason="dask.distributed is not installed")
    import joblib
    from sklearn.model_selection import GridSearchCV
    X, y = _data(n=60, kind="multiclass")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        gs = GridSearchCV(MLPClassifier(max_iter=10, random_state=0),
                          {"alpha": [1e-4, 1e-1]}, cv=2).fit(X, y)
    assert set(gs.cv_results_["param_alpha"]) == {1e-4, 1e-1}
    assert isinstance(gs.best_estimator_, MLPClassifier)


@pytest.mark.parametrize("task", ["digits", "diabetes"])
def test_accuracy_comparable_to_scikit_learn_in_float32(task):
    """float32 (ours) vs scikit-learn's float64 fit, same settings, mean of 3 seeds: the
    difference is within 0.02 accuracy / 0.05 R² (seed-to-seed spread is larger)."""
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.model_selection import train_test_split
    if task == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        cls, skcls, tol = MLPClassifier, sknn.MLPClassifier, 0.02
        kw = {"hidden_layer_sizes": (32,), "max_iter": 30}
    else:
        X, y = load_diabetes(return_X_y=True)
        X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
        cls, skcls, tol = MLPRegressor, sknn.MLPRegressor, 0.05
        kw = {"hidden_layer_sizes": (32,), "max_iter": 60, "learning_rate_init": 0.01}
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    ours, theirs = [], []
    for seed in range(3):
        ours.append(cls(**kw, random_state=seed).fit(Xtr.astype(np.float32), ytr)
                    .score(Xte.astype(np.float32), yte))
        theirs.append(skcls(**kw, random_state=seed).fit(Xtr, ytr).score(Xte, yte))
    assert abs(np.mean(ours) - np.mean(theirs)) < tol, (ours, theirs)


def test_import_fastreg_does_not_import_sklearn():
    code = ("import sys, fastreg, fastreg.sklearn; assert 'sklearn' not in sys.modules; "
            "fastreg.sklearn.MLPClassifier; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convergence_warning_as_scikit_learn():
    X, y = _data(kind="multiclass")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=1).fit(X, y)
    assert any(issubclass(x.category, ConvergenceWarning) for x in w)


def test_progress_bar_over_epochs(capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed")
    X, y = _data(kind="multiclass")
    MLPClassifier(hidden_layer_sizes=(3,), max_iter=3, progress=True).fit(X, y)
    assert "MLPClassifier" in capsys.readouterr().err


# -- the per-batch fast paths give the bits of the plain NumPy ones ---------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 33, 257, 1000])
@pytest.mark.parametrize("classes", [2, 3, 10, 33])
def test_log_loss_fast_path_is_numpys_average_bit_for_bit(dtype, n, classes):
    from scipy.special import xlogy

    from fastreg.sklearn import _mlp
    rng = np.random.default_rng(n * 100 + classes)
    z = (rng.standard_normal((n, classes)) * 20).astype(dtype)
    if n > 2:
        z[1] = -np.inf
        z[1, 0] = 0.0           # a row whose probabilities are exactly 0 and 1: the clipping
    y = np.eye(classes, dtype=dtype)[rng.integers(0, classes, n)]
    p = _mlp._out_activation("softmax", z)
    eps = np.finfo(dtype).eps
    want = float(-np.average(xlogy(y, np.clip(p, eps, 1 - eps)), weights=None, axis=0).sum())
    got = _mlp._loss("log_loss", y, p, None)
    assert got == want, (got, want)
    sw = rng.uniform(0.5, 2.0, n).astype(dtype)
    want_w = float(-np.average(xlogy(y, np.clip(p, eps, 1 - eps)), weights=sw, axis=0).sum())
    assert _mlp._loss("log_loss", y, p, sw) == want_w


class _FreshCopies:
    """Stand-in for the loader's _Gather: ``arr[idx]`` into a new array every batch."""

    def __init__(self, arr, rows, dtype=None):
        self.arr = arr

    def __call__(self, idx):
        return self.arr[idx]


@pytest.mark.parametrize("kw", [
    {},
    {"batch_norm": True, "dropout": 0.2},       # 65 rows, batch 16: a trailing 1-row batch joins
    {"solver": "sgd", "momentum": 0.9},
])
@pytest.mark.parametrize("weighted", [False, True])
def test_reused_batch_buffers_train_exactly_like_fresh_copies(monkeypatch, kw, weighted):
    # the estimator gathers each shuffled batch (rows, targets, weights) into reused buffers:
    # the same rows in the same order as ``X[idx]``, for full batches, the short last one and
    # batch_norm's merged (batch_size + 1)-row last batch, from a Fortran-ordered X
    from fastreg.sklearn import _mlp
    X, y = _data(n=65, d=9)
    X = np.asfortranarray(X.astype(np.float32))       # not C-ordered: the gather makes it so
    sw = np.random.RandomState(1).uniform(0.1, 2.0, len(y)) if weighted else None

    def fit():
        est = MLPClassifier(hidden_layer_sizes=(13, 6), batch_size=16, max_iter=3,
                            random_state=0, **kw)
        return est.fit(X, y, sample_weight=sw)

    a = fit()
    monkeypatch.setattr(_mlp, "_Gather", _FreshCopies)
    b = fit()
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert a.loss_curve_ == b.loss_curve_


def test_fit_skips_the_data_gradient_gemm_of_the_first_layer(backward_gemm_calls):
    # dL/dX is never needed (scikit-learn's backprop stops at the first hidden layer too): per
    # batch, 3 Linear layers run 3 weight-gradient GEMMs but only 2 input-gradient GEMMs
    calls = backward_gemm_calls
    X, y = _data(n=70, d=9)
    MLPClassifier(hidden_layer_sizes=(8, 5), batch_size=16, max_iter=2, random_state=0,
                  dtype=np.float32).fit(X, y)
    batches = 2 * 5
    assert calls == {"input": 2 * batches, "weight": 3 * batches}


def test_fit_gathers_batches_into_two_buffers_per_array(monkeypatch):
    # no array per batch: X's and y's batches of 3 epochs x 47 batches come from 2 buffers each
    from fastreg.data.loader import _Gather
    from fastreg.sklearn import _mlp
    owners = {}

    class Counting(_Gather):
        __slots__ = ()

        def __call__(self, idx):
            out = super().__call__(idx)
            owners.setdefault(id(self), set()).add(id(out if out.base is None else out.base))
            return out

    monkeypatch.setattr(_mlp, "_Gather", Counting)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 20)).astype(np.float32)
    MLPClassifier(hidden_layer_sizes=(16,), batch_size=64, max_iter=3, random_state=0,
                  dropout=0.3).fit(X, np.arange(3000) % 4)
    assert sorted(len(v) for v in owners.values()) == [2, 2]
