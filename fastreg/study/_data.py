"""The study's data: a table (CSV/Parquet/DataFrame/2-D array) or images ((N,H,W[,C]) arrays),
its target, the split, and the preprocessing -- all prepared once, before any trial, in the
process that starts the study; the workers get the prepared arrays.

* Classification: a stratified train/valid/test split (``fastreg.data.train_valid_test_split``);
  regression: a random one. With ``cv=K`` the test split is held out first and the rest is cut
  into K folds (stratified for classification); each trial trains K times.
* Tables: :class:`fastreg.data.TablePreprocessor` (impute, one-hot, standardize) fitted on the
  train+valid rows, never on the test rows; a regression target is standardized the same way
  (losses and RMSE are reported in the target's units).
* Images: pixels scaled to [0, 1] by the array's maximum (or its integer type's), flattened for
  the MLP; the augmentations (rotation, shift, flip) act on the (H, W[, C]) view.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

TABLE_EXT = (".csv", ".tsv", ".txt", ".parquet", ".pq")
#: Integer-valued targets with at most this many distinct values count as class labels.
MAX_AUTO_CLASSES = 100


class StudyError(ValueError):
    """Bad input to a study; the message names the argument and its value."""


@dataclass
class Prepared:
    """Everything a trial needs, picklable (sent to worker processes and Dask workers)."""
    kind: str                       # "table" | "images"
    task: str                       # "classification" | "regression"
    X: np.ndarray                   # (N, F) float32, preprocessed (standardized / scaled)
    y: np.ndarray                   # int64 classes, or float32 (N, 1) standardized target
    train: np.ndarray               # row indices
    valid: np.ndarray
    test: np.ndarray
    folds: list = field(default_factory=list)     # [(train_idx, valid_idx)] with cv
    classes: list | None = None
    features: list | None = None
    target: str | None = None
    preprocessor: dict | None = None              # TablePreprocessor.to_json() (tables)
    image_shape: tuple | None = None              # (H, W) or (H, W, C)
    pixel_scale: float = 1.0                      # raw pixel = scaled * pixel_scale
    target_scale: float = 1.0                     # raw target = y * scale + mean
    target_mean: float = 0.0
    description: str = ""

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "rmse"

    @property
    def direction(self) -> str:
        return "maximize" if self.task == "classification" else "minimize"

    @property
    def n_out(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def splits(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(train rows, valid rows)]: one pair, or K with cv."""
        return self.folds or [(self.train, self.valid)]


def _target_values(col, name: str, task: str):
    """(y, task, classes) from a pandas Series (the CLI's rules: text or <= 100 distinct
    integers -> classification)."""
    numeric = col.dtype.kind in "biuf"
    values = col.to_numpy(dtype=np.float64, na_value=np.nan) if numeric else None
    missing = [i for i, v in enumerate(col) if v is None or (isinstance(v, float) and
                                                              math.isnan(v))]
    if missing:
        raise StudyError(f"target {name!r}: {len(missing)} empty cell(s) (first at data row "
                         f"{missing[0] + 1})")
    if task == "regression" and not numeric:
        bad = next(v for v in col if not _is_number(v))
        raise StudyError(f"target {name!r}: {bad!r} is not a number (task='regression' needs "
                         "a numeric target)")
    if task == "auto":
        if not numeric:
            task = "classification"
        else:
            integral = bool(np.all(values == np.round(values)))
            task = "classification" if integral and len(np.unique(values)) <= \
                MAX_AUTO_CLASSES else "regression"
    if task == "regression":
        if values is None:
            values = np.asarray([float(v) for v in col])
        return values, task, None
    if numeric:
        labels = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values]
        classes = sorted(set(labels), key=float)
    else:
        labels = [str(v) for v in col]
        classes = sorted(set(labels))
    if len(classes) < 2:
        raise StudyError(f"target {name!r}: a classification target needs at least 2 classes, "
                         f"found {classes}")
    index = {k: i for i, k in enumerate(classes)}
    return np.asarray([index[s] for s in labels], dtype=np.int64), task, classes


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _split(y_cls, n, task, valid, test, cv, seed):
    """(train, valid, test, folds) row indices."""
    import fastreg as fr
    strat = task == "classification" and np.bincount(y_cls).min() >= 2
    idx = np.arange(n).reshape(-1, 1)
    lab = y_cls if task == "classification" else np.zeros(n)
    if cv and cv > 1:
        (rest, yrest), _, (te, _) = fr.data.train_valid_test_split(
            idx, lab, valid=0.0, test=test, stratify=strat, seed=seed)
        rest, te = rest[:, 0], te[:, 0]
        g = np.random.default_rng(seed)
        if task == "classification":      # stratified: deal each class's rows round-robin
            fold_of = np.empty(len(rest), dtype=np.int64)
            start = 0
            for c in np.unique(yrest):
                rows = np.flatnonzero(yrest == c)
                rows = rows[g.permutation(len(rows))]
                fold_of[rows] = (start + np.arange(len(rows))) % cv
                start += len(rows)
        else:
            fold_of = g.permutation(len(rest)) % cv
        folds = [(rest[fold_of != k], rest[fold_of == k]) for k in range(cv)]
        if min(len(v) for _, v in folds) == 0:
            raise StudyError(f"cv={cv}: too few rows ({len(rest)}) for {cv} folds")
        return folds[0][0], folds[0][1], te, folds
    (tr, _), (va, _), (te, _) = fr.data.train_valid_test_split(
        idx, lab, valid=valid, test=test, stratify=strat, seed=seed)
    return tr[:, 0], va[:, 0], te[:, 0], []


def load_arrays(path: str, labels: str | None):
    """(X, y) from a .npy (with a labels .npy) or a .npz holding X and y."""
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z or "y" not in z:
                    raise StudyError(f"data {path!r}: a .npz needs arrays 'X' and 'y', has "
                                     f"{sorted(z.files)}")
                return z["X"], z["y"]
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StudyError(f"data {path!r}: cannot read ({exc})") from None
    if labels is None:
        raise StudyError(f"data {path!r}: a .npy array of images needs --labels y.npy "
                         "(or give a .npz holding X and y)")
    try:
        y = np.load(labels, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StudyError(f"labels {labels!r}: cannot read ({exc})") from None
    return X, y


def prepare(data, target=None, y=None, *, labels=None, task="auto", valid=0.15, test=0.2,
            cv=None, seed=0, read_options=None, impute="median", drop=(), features=None
            ) -> Prepared:
    """Validate and prepare ``data`` (see :func:`fastreg.study.study`); raises StudyError."""
    if task not in ("auto", "classification", "regression"):
        raise StudyError(f"task must be 'auto', 'classification' or 'regression', got {task!r}")
    if cv is not None and (not isinstance(cv, int) or cv < 2):
        raise StudyError(f"cv must be an integer >= 2 (or None), got {cv!r}")
    description = ""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise StudyError(f"data {path!r}: no such file")
        if path.lower().endswith((".npy", ".npz")):
            X, yy = load_arrays(path, labels)
            return _prepare_arrays(X, yy, task, valid, test, cv, seed,
                                   f"{os.path.basename(path)}")
        from ..data.table import DEFAULT_NA_VALUES, read_table
        opts = dict(read_options or {})
        na = DEFAULT_NA_VALUES + tuple(opts.pop("na", None) or ())
        try:
            df = read_table(path, na_values=na, **opts)
        except ValueError as exc:
            raise StudyError(f"data {path!r}: {exc}") from None
        description = os.path.basename(path)
    elif isinstance(data, tuple) and len(data) == 2:
        return _prepare_arrays(np.asarray(data[0]), np.asarray(data[1]), task, valid, test,
                               cv, seed, "arrays")
    elif isinstance(data, np.ndarray):
        if y is None:
            raise StudyError("data is an array: give the targets as y=")
        return _prepare_arrays(data, np.asarray(y), task, valid, test, cv, seed, "arrays")
    elif type(data).__module__.startswith("pandas"):
        df = data
        description = "DataFrame"
    else:
        raise StudyError(f"data must be a CSV/Parquet/.npy/.npz path, a DataFrame or (X, y) "
                         f"arrays, got {type(data).__name__}")
    return _prepare_table(df, target, y, task, valid, test, cv, seed, impute, drop, features,
                          description)


def _prepare_table(df, target, y, task, valid, test, cv, seed, impute, drop, features, desc):
    import pandas as pd

    header = [str(c) for c in df.columns]
    if y is not None:
        ycol = pd.Series(np.asarray(y)) if not isinstance(y, pd.Series) else y.reset_index(
            drop=True)
        target = target or (ycol.name if isinstance(ycol.name, str) else "target")
        if len(ycol) != len(df):
            raise StudyError(f"y has {len(ycol)} values but data has {len(df)} rows")
    else:
        if target is None:
            raise StudyError("target is required for a table (the name of the target column)")
        if target not in header:
            raise StudyError(f"target {target!r}: no such column in {desc} (columns: "
                             f"{', '.join(header[:20])}{' ...' if len(header) > 20 else ''})")
        ycol = df[target].reset_index(drop=True)
    for what, cols in (("drop", list(drop or ())), ("features", list(features or ()))):
        missing = [c for c in cols if c not in header]
        if missing:
            raise StudyError(f"{what}: column(s) {missing} not found in {desc}")
    if features:
        feats = list(dict.fromkeys(features))
        if target in feats:
            raise StudyError(f"features must not include the target {target!r}")
    else:
        feats = [h for h in header if h != target and h not in set(drop or ())]
    if len(df) == 0:
        raise StudyError(f"data {desc!r}: the table is empty (no data rows)")
    if not feats:
        raise StudyError(f"data {desc!r}: no feature columns besides the target {target!r}")
    if len(df) < 10:
        raise StudyError(f"data {desc!r}: only {len(df)} rows; a study needs at least 10")
    yv, task, classes = _target_values(ycol, target, task)
    ycls = yv if task == "classification" else None
    tr, va, te, folds = _split(ycls, len(df), task, valid, test, cv, seed)
    from ..data.preprocess import TablePreprocessor
    pre = TablePreprocessor(impute=impute)
    fit_rows = np.sort(np.concatenate([tr, va]))
    frame = df[feats].reset_index(drop=True)
    try:
        pre.fit(frame.iloc[fit_rows], y=yv[fit_rows] if task == "regression" else None)
        X = pre.transform(frame).astype(np.float32)
    except ValueError as exc:
        raise StudyError(f"data {desc!r}: {exc}") from None
    prep = Prepared(kind="table", task=task, X=np.ascontiguousarray(X), y=yv, train=tr,
                    valid=va, test=te, folds=folds, classes=classes, features=feats,
                    target=target, preprocessor=pre.to_json(),
                    description=f"{desc}: {len(df)} rows, {len(feats)} features -> "
                                f"{X.shape[1]} inputs, target {target!r} ({task})")
    if task == "regression":
        prep.target_mean = float(pre.target_mean_ if pre.target_mean_ is not None else 0.0)
        prep.target_scale = float(pre.target_scale_ if pre.target_scale_ is not None else 1.0)
        prep.y = ((yv - prep.target_mean) / prep.target_scale).astype(np.float32).reshape(-1, 1)
    return prep


def _prepare_arrays(X, y, task, valid, test, cv, seed, desc) -> Prepared:
    if X.ndim not in (2, 3, 4):
        raise StudyError(f"data: X must be (N, F) features or (N, H, W[, C]) images, got shape "
                         f"{X.shape}")
    if X.shape[0] == 0:
        raise StudyError("data: X is empty (no samples)")
    if y.ndim != 1 or len(y) != X.shape[0]:
        raise StudyError(f"y must be 1-D with one value per sample ({X.shape[0]}), got shape "
                         f"{y.shape}")
    if X.dtype.kind not in "biuf":
        raise StudyError(f"data: X must be numeric, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise StudyError("data: X holds NaN or infinite values")
    if X.ndim == 2:
        import pandas as pd
        df = pd.DataFrame(X.astype(np.float64), columns=[f"x{j}" for j in range(X.shape[1])])
        name = "y"
        return _prepare_table(df, name, pd.Series(y, name=name), task, valid, test, cv, seed,
                              "none", (), None, desc)
    import pandas as pd
    if len(y) < 10:
        raise StudyError(f"data: only {len(y)} samples; a study needs at least 10")
    yv, task, classes = _target_values(pd.Series(y), "y", task)
    scale = float(max(1.0, np.abs(X).max()))     # pixels to [0, 1] (uint8: 255, digits: 16)
    Xf = (X.reshape(X.shape[0], -1).astype(np.float64) / scale).astype(np.float32)
    tr, va, te, folds = _split(yv if task == "classification" else None, len(y), task, valid,
                               test, cv, seed)
    prep = Prepared(kind="images", task=task, X=np.ascontiguousarray(Xf), y=yv, train=tr,
                    valid=va, test=te, folds=folds, classes=classes, target="y",
                    image_shape=tuple(int(s) for s in X.shape[1:]), pixel_scale=scale,
                    description=f"{desc}: {X.shape[0]} images {'x'.join(map(str, X.shape[1:]))}"
                                f", {task}")
    if task == "regression":
        fit_rows = np.concatenate([tr, va])              # never the test rows
        m, s = float(yv[fit_rows].mean()), float(yv[fit_rows].std() or 1.0)
        prep.target_mean, prep.target_scale = m, s
        prep.y = ((yv - m) / s).astype(np.float32).reshape(-1, 1)
    return prep
