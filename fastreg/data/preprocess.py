"""``TablePreprocessor``: a table (pandas DataFrame from :func:`fastreg.data.read_table`) to a
float feature matrix, fitted on the training split only, stored as JSON in a model file.

For a numeric column :math:`j` with training values :math:`x_{ij}` (missing ones skipped)

.. math::  f_j = \\operatorname{median}_i x_{ij}\\ (\\text{or the mean}),\\qquad
           \\mu_j = \\tfrac1n\\sum_i \\tilde x_{ij},\\qquad
           \\sigma_j = \\sqrt{\\tfrac1n\\sum_i (\\tilde x_{ij}-\\mu_j)^2}\\ (1\\text{ if }0)

where :math:`\\tilde x` is the column with missing cells replaced by :math:`f_j`; the output is
:math:`(\\tilde x - \\mu_j)/\\sigma_j`. A text column with training categories
:math:`c_1 < \\dots < c_K` becomes K indicator columns :math:`[x = c_k]`: a category not seen in
training, or a missing cell, gives all zeros (scikit-learn's ``handle_unknown='ignore'``).
With ``categorical="embedding"`` it becomes one integer column instead, :math:`k` for
:math:`c_k` and 0 for unknown/missing, for an :class:`fastreg.nn.Embedding` of
:math:`K + 1` rows. A regression target is standardized the same way, :math:`(y-\\mu_y)/\\sigma_y`,
and :meth:`inverse_transform_target` maps predictions back.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .table import _names, _pandas

__all__ = ["TablePreprocessor"]

IMPUTE = ("median", "mean", "none")
CATEGORICAL = ("onehot", "embedding")
_STATE_VERSION = 1


class TablePreprocessor:
    """Impute, one-hot (or index) and standardize a table; fit on the training rows only.

    Parameters
    ----------
    impute : {"median", "mean", "none"}
        Fill value of missing numeric cells, from the training rows; "none": missing numeric
        cells are an error naming their columns.
    categorical : {"onehot", "embedding"}
        Text columns as indicator columns, or as integer index columns (see the module doc).
    standardize : bool
        Scale numeric columns to zero mean and unit variance (training statistics).
    standardize_target : bool
        Scale a numeric (regression) target given to :meth:`fit` the same way.
    max_categories : int
        A text column with more training categories is an error (an ID column: drop it).

    Attributes (after :meth:`fit`)
    ------------------------------
    feature_names_in_ : list of str    numeric_ : list of str    text_ : list of str
    fill_, mean_, scale_ : ndarray     categories_ : dict of str to list of str
    target_mean_, target_scale_ : float or None
    """

    def __init__(self, *, impute: str = "median", categorical: str = "onehot",
                 standardize: bool = True, standardize_target: bool = True,
                 max_categories: int = 100):
        if impute not in IMPUTE:
            raise ValueError(f"impute must be one of {IMPUTE}, got {impute!r}")
        if categorical not in CATEGORICAL:
            raise ValueError(f"categorical must be one of {CATEGORICAL}, got {categorical!r}")
        if not isinstance(max_categories, int) or max_categories < 1:
            raise ValueError(f"max_categories must be a positive int, got {max_categories!r}")
        self.impute = impute
        self.categorical = categorical
        self.standardize = bool(standardize)
        self.standardize_target = bool(standardize_target)
        self.max_categories = max_categories
        self.feature_names_in_ = None

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, df, y=None) -> TablePreprocessor:
        """Learn fill values, scales and categories from ``df`` (the training rows) and the
        target scale from a numeric ``y``."""
        df = self._frame(df, "df")
        if len(df) == 0:
            raise ValueError("df: cannot fit on an empty table")
        names = [str(c) for c in df.columns]
        numeric = [c for c in names if df[c].dtype.kind in "biuf"]
        text = [c for c in names if df[c].dtype.kind not in "biuf"]
        fill, mean, scale = [], [], []
        for c in numeric:
            x = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
            ok = x[~np.isnan(x)]
            f = 0.0 if ok.size == 0 else float(np.median(ok) if self.impute != "mean"
                                                else ok.mean())
            xt = np.where(np.isnan(x), f, x)
            m, s = float(xt.mean()), float(xt.std())
            fill.append(f)
            mean.append(m if self.standardize else 0.0)
            scale.append(s if (self.standardize and s > 0) else 1.0)
        cats, wide = {}, []
        for c in text:
            vals = {str(v) for v in df[c] if not _missing(v)}
            if len(vals) > self.max_categories:
                wide.append(f"{c!r} ({len(vals)})")
            cats[c] = sorted(vals)
        if wide:
            raise ValueError(f"text column(s) with more than {self.max_categories} categories "
                             f"(IDs?): {', '.join(wide[:20])}: drop them, or raise "
                             "max_categories")
        self.feature_names_in_ = names
        self.numeric_, self.text_ = numeric, text
        self.fill_ = np.asarray(fill, dtype=np.float64)
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.scale_ = np.asarray(scale, dtype=np.float64)
        self.categories_ = cats
        self.target_mean_ = self.target_scale_ = None
        if y is not None and self.standardize_target:
            t = np.asarray(y, dtype=np.float64)
            if t.size:
                s = float(t.std())
                self.target_mean_, self.target_scale_ = float(t.mean()), (s if s > 0 else 1.0)
        return self

    def fit_transform(self, df, y=None):
        return self.fit(df, y).transform(df)

    # -- applying -----------------------------------------------------------------------------

    @property
    def feature_names_out_(self) -> list[str]:
        self._check_fitted()
        if self.categorical == "embedding":
            return list(self.numeric_)
        return list(self.numeric_) + [f"{c}={k}" for c in self.text_
                                      for k in self.categories_[c]]

    def embedding_sizes(self) -> list[int]:
        """Rows of the Embedding for each text column (categories + 1 for unknown/missing)."""
        self._check_fitted()
        return [len(self.categories_[c]) + 1 for c in self.text_]

    def select(self, df, what: str = "df"):
        """``df``'s columns in training order: extra columns are ignored, missing ones are an
        error naming them (and the extra ones)."""
        self._check_fitted()
        df = self._frame(df, what)
        have = [str(c) for c in df.columns]
        if have == self.feature_names_in_:
            return df
        hs = set(have)
        missing = [c for c in self.feature_names_in_ if c not in hs]
        if missing:
            known = set(self.feature_names_in_)
            extra = [c for c in have if c not in known]
            raise ValueError(f"{what}: missing column(s) {_names(missing)} the preprocessing "
                             f"was fitted on (extra column(s): {_names(extra)})")
        return df[self.feature_names_in_]

    def transform(self, df, what: str = "df"):
        """The feature matrix (float64): standardized numeric columns, then the one-hot
        columns. With ``categorical="embedding"``: ``(numeric matrix, int64 index matrix)``."""
        pd = _pandas()
        df = self.select(df, what)
        n = len(df)
        num = np.empty((n, len(self.numeric_)), dtype=np.float64)
        bad, gaps = [], []
        for j, c in enumerate(self.numeric_):
            s = df[c]
            if s.dtype.kind in "biuf":
                x = s.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                x = pd.to_numeric(s.map(lambda v: None if _missing(v) else str(v).strip()),
                                  errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                if np.isnan(x).sum() > sum(_missing(v) for v in s):
                    bad.append(c)
                    continue
            miss = np.isnan(x)
            if miss.any():
                if self.impute == "none":
                    gaps.append(c)
                    continue
                x = np.where(miss, self.fill_[j], x)
            num[:, j] = (x - self.mean_[j]) / self.scale_[j]
        if bad:
            raise ValueError(f"{what}: numeric column(s) {_names(bad)} hold text")
        if gaps:
            raise ValueError(f"{what}: missing values in numeric column(s) {_names(gaps)} "
                             "(impute='none')")
        codes = []
        for c in self.text_:
            index = {k: i for i, k in enumerate(self.categories_[c])}
            codes.append(np.fromiter((-1 if _missing(v) else index.get(_as_text(v), -1)
                                      for v in df[c]), dtype=np.int64, count=n))
        if self.categorical == "embedding":
            idx = (np.stack(codes, axis=1) + 1 if codes
                   else np.empty((n, 0), dtype=np.int64))
            return num, idx
        blocks = [num]
        for c, code in zip(self.text_, codes):
            k = len(self.categories_[c])
            onehot = np.zeros((n, k), dtype=np.float64)
            rows = np.flatnonzero(code >= 0)
            onehot[rows, code[rows]] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1)

    def transform_target(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.target_mean_ is None:
            return y
        return (y - self.target_mean_) / self.target_scale_

    def inverse_transform_target(self, z) -> np.ndarray:
        """Predictions in target units: :math:`z\\sigma_y + \\mu_y`."""
        z = np.asarray(z)
        if getattr(self, "target_mean_", None) is None:
            return z
        return z * self.target_scale_ + self.target_mean_

    def fold_into(self, model) -> None:
        """Fold the numeric standardization into ``model``'s first Linear and the target
        scaling into its last Linear, then make this preprocessor pass numbers through raw:

        :math:`W' = W / \\sigma` on the numeric inputs, :math:`b' = b - W'\\mu`;
        last layer :math:`W'' = \\sigma_y W,\\ b'' = \\sigma_y b + \\mu_y`.
        The model then takes imputed, one-hot but unscaled features and predicts raw targets.
        """
        self._check_fitted()
        from ..nn._spec import LAYERS
        lin = [m for m in model.modules() if type(m) is LAYERS["Linear"]]
        if not lin:
            raise ValueError("fold_into: the model has no Linear layer")
        first, last = lin[0], lin[-1]
        k = len(self.numeric_)
        W = first.weight.data.astype(np.float64)
        W2 = W.copy()
        W2[:, :k] = W[:, :k] / self.scale_
        b = first.bias.data.astype(np.float64) - W2[:, :k] @ self.mean_
        first.weight.data[...] = W2
        first.bias.data[...] = b
        self.mean_ = np.zeros(k)
        self.scale_ = np.ones(k)
        if self.target_mean_ is not None:
            last.weight.data[...] = last.weight.data.astype(np.float64) * self.target_scale_
            last.bias.data[...] = (last.bias.data.astype(np.float64) * self.target_scale_
                                   + self.target_mean_)
            self.target_mean_ = self.target_scale_ = None

    # -- storage ------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The fitted state as a JSON-serialisable dict (for ``save(..., metadata=)``)."""
        self._check_fitted()
        return {"type": "TablePreprocessor", "version": _STATE_VERSION,
                "impute": self.impute, "categorical": self.categorical,
                "standardize": self.standardize, "standardize_target": self.standardize_target,
                "max_categories": self.max_categories,
                "feature_names_in": list(self.feature_names_in_),
                "numeric": list(self.numeric_), "text": list(self.text_),
                "fill": self.fill_.tolist(), "mean": self.mean_.tolist(),
                "scale": self.scale_.tolist(),
                "categories": {c: list(v) for c, v in self.categories_.items()},
                "target_mean": self.target_mean_, "target_scale": self.target_scale_}

    @classmethod
    def from_json(cls, state) -> TablePreprocessor:
        """Rebuild from :meth:`to_json`'s dict (or its JSON text); a malformed state raises
        ``ValueError`` naming the field."""
        if isinstance(state, str):
            state = json.loads(state)
        if not isinstance(state, dict) or state.get("type") != "TablePreprocessor":
            raise ValueError("not a TablePreprocessor state (type != 'TablePreprocessor')")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"TablePreprocessor state version {state.get('version')!r} is not "
                             f"{_STATE_VERSION}")
        try:
            self = cls(impute=state["impute"], categorical=state["categorical"],
                       standardize=state["standardize"],
                       standardize_target=state["standardize_target"],
                       max_categories=state["max_categories"])
            names = [str(c) for c in state["feature_names_in"]]
            numeric = [str(c) for c in state["numeric"]]
            text = [str(c) for c in state["text"]]
            arrays = [np.asarray(state[k], dtype=np.float64) for k in ("fill", "mean", "scale")]
            cats = {str(c): [str(v) for v in state["categories"][c]] for c in text}
            tm, ts = state["target_mean"], state["target_scale"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed TablePreprocessor state: {exc!r}") from None
        if sorted(numeric + text) != sorted(names) or any(a.shape != (len(numeric),)
                                                          for a in arrays):
            raise ValueError("malformed TablePreprocessor state: columns and statistics "
                             "do not agree")
        self.feature_names_in_, self.numeric_, self.text_ = names, numeric, text
        self.fill_, self.mean_, self.scale_ = arrays
        self.categories_ = cats
        self.target_mean_ = None if tm is None else float(tm)
        self.target_scale_ = None if ts is None else float(ts)
        return self

    # -- helpers ------------------------------------------------------------------------------

    def _check_fitted(self):
        if self.feature_names_in_ is None:
            raise RuntimeError("this TablePreprocessor is not fitted yet: call fit(train_df)")

    @staticmethod
    def _frame(df, what):
        if type(df).__name__ != "DataFrame" or not type(df).__module__.startswith("pandas"):
            raise TypeError(f"{what} must be a pandas DataFrame (fastreg.data.read_table), got "
                            f"{type(df).__name__}")
        return df

    def __repr__(self):
        state = "unfitted" if self.feature_names_in_ is None else (
            f"{len(self.numeric_)} numeric, {len(self.text_)} text columns")
        return (f"TablePreprocessor(impute={self.impute!r}, categorical={self.categorical!r}, "
                f"standardize={self.standardize}; {state})")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType",
                                                                                   "NaTType")


def _as_text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
