r"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators on fastreg's kernels.

The maths is scikit-learn's (sklearn/neural_network/_multilayer_perceptron.py). For a mini-batch B
with sample weights :math:`w_i` (all 1 without ``sample_weight``), :math:`S = \sum_{i\in B} w_i`,
output activation :math:`p = \sigma(z)` of the last layer's pre-activation z, and coefficient
matrices :math:`W_l` (``coefs_``),

.. math::
    L_B = \frac{\sum_i w_i\,\ell(y_i, p_i)}{S} + \frac{\alpha}{2S}\sum_l \lVert W_l\rVert^2
          \;\Bigl[+ \frac{l_1}{S}\sum_l \lVert W_l\rVert_1\Bigr],
    \qquad \frac{\partial L_B}{\partial z_i} = \frac{w_i (p_i - y_i)}{S}

with the canonical pairs (loss ℓ, output σ): half squared error / identity (``squared_error``:
:math:`\ell = \tfrac12\,\mathrm{mean}_k (y_k - p_k)^2`, its gradient taken as p − y as scikit-learn
does), Poisson deviance / exp (``poisson``), cross-entropy / softmax (multiclass), binary
cross-entropy / logistic (binary and multilabel). ``loss_`` is the epoch mean of
:math:`L_B` weighted by batch size, ``loss_curve_`` its history.

The network is a ``fastreg.nn.Sequential`` of ``Linear`` (+ optional ``BatchNorm1d``/``LayerNorm``)
+ activation (+ optional ``Dropout``) per hidden layer and a last ``Linear``; the output
activation, the loss and :math:`\partial L/\partial z` are computed here in NumPy, and
``model.backward`` plus one fused optimizer step do the rest. Parameters live in two param groups
(weights: the α and ``l1`` penalties and ``weight_decay``; biases and norm parameters: none), so
the penalty gradients :math:`\alpha W/S` and :math:`l_1\,\mathrm{sign}(W)/S` are added inside the
optimizer's kernel. The solvers match scikit-learn's step for step: ``sgd`` is
:math:`v \leftarrow \mu v - \eta g`, :math:`\theta \leftarrow \theta + v` (Nesterov:
:math:`\theta \leftarrow \theta + \mu v - \eta g`), ``adam`` is
:math:`\theta \leftarrow \theta - \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m/(\sqrt v + \epsilon)`;
initialization is Glorot uniform drawn from ``random_state`` in scikit-learn's order, so with the
same ``random_state`` both libraries start from the same weights and see the same batches.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from .. import _config, _random
from .. import nn as _nn
from .. import optim as _optim
from ..data.loader import _Gather

__all__ = ["MLPClassifier", "MLPRegressor"]

_HIDDEN_ACTIVATIONS = {"identity": _nn.Identity, "logistic": _nn.Sigmoid, "tanh": _nn.Tanh,
                       "relu": _nn.ReLU}
#: rows per forward call in predict (bounds the memory of a predict on a large X)
_PREDICT_CHUNK = 65536


def _out_activation(name: str, z: np.ndarray) -> np.ndarray:
    """scikit-learn's output activations, into a new array."""
    if name == "identity":
        return np.array(z)
    if name == "exp":
        return np.exp(z)
    if name == "logistic":
        return expit(z)
    p = np.exp(z - z.max(axis=1, keepdims=True))      # softmax
    p /= p.sum(axis=1, keepdims=True)
    return p


def _loss(name: str, y: np.ndarray, p: np.ndarray, sw) -> float:
    """scikit-learn's LOSS_FUNCTIONS (weighted mean over samples Σ wᵢ lᵢ / Σ wᵢ)."""
    if name == "squared_error":
        return float(0.5 * np.average((y - p) ** 2, weights=sw, axis=0).mean())
    if name == "poisson":
        return float(np.average(xlogy(y, y / p) - y + p, weights=sw, axis=0).sum())
    eps = np.finfo(p.dtype).eps
    p = np.minimum(np.maximum(p, eps), 1 - eps)        # np.clip's values, without its wrapper
    if name == "binary_log_loss":
        return float(-np.average(xlogy(y, p) + xlogy(1 - y, 1 - p), weights=sw, axis=0).sum())
    if sw is None:
        # np.average(a, axis=0) without weights, step for step as NumPy's mean does it (the
        # column sums, then divided in place by the count as an intp): the same bits, less
        # Python per batch
        col = np.add.reduce(xlogy(y, p), axis=0)
        np.true_divide(col, np.intp(p.shape[0]), out=col, casting="unsafe")
        return float(-col.sum())
    return float(-np.average(xlogy(y, p), weights=sw, axis=0).sum())      # log_loss (softmax)


def _name_and_kwargs(spec, what: str) -> tuple[str, dict]:
    """``"Name"`` or ``("Name", {kwargs})`` → (name, kwargs), or a ValueError naming ``what``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) \
            and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    raise ValueError(f"{what} must be a name or a (name, kwargs dict) pair, got {spec!r}")


def _resolve_dtype(dtype):
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be None, numpy.float32 or numpy.float64, got {dtype!r}")
    return dt


class _BaseMLP(BaseEstimator):
    """Shared machinery of MLPClassifier and MLPRegressor (not for direct use)."""

    _parameter_constraints: ClassVar[dict] = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
        # fastreg's own, all "off" by default
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
        "layer_norm": ["boolean"],
        "l1": [Interval(numbers.Real, 0, None, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "optimizer": [None, str, tuple],
        "lr_scheduler": [None, str, tuple],
        "restore_best_weights": ["boolean"],
        "dtype": "no_validation",
        "n_threads": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "progress": ["boolean"],
    }

    # -- the network ---------------------------------------------------------------------------
    def _linears(self) -> list:
        return [m for m in self._model if isinstance(m, _nn.Linear)]

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices, scikit-learn's layout: ``coefs_[i]`` is (n_in, n_out) — views of
        the network's (n_out, n_in) ``Linear.weight``, so writing into them changes the model."""
        if "_model" not in self.__dict__:
            raise AttributeError("coefs_ is set by fit")
        return [lin.weight.data.T for lin in self._linears()]

    @coefs_.setter
    def coefs_(self, value) -> None:
        self._set_layer_values(value, "weight", "coefs_", transpose=True)

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors (n_out,) — views of the network's ``Linear.bias``."""
        if "_model" not in self.__dict__:
            raise AttributeError("intercepts_ is set by fit")
        return [lin.bias.data for lin in self._linears()]

    @intercepts_.setter
    def intercepts_(self, value) -> None:
        self._set_layer_values(value, "bias", "intercepts_", transpose=False)

    def _set_layer_values(self, value, attr, what, transpose) -> None:
        if "_model" not in self.__dict__:
            raise AttributeError(f"{what} can only be assigned after fit")
        lins = self._linears()
        if len(value) != len(lins):
            raise ValueError(f"{what} must hold {len(lins)} arrays, got {len(value)}")
        for i, (lin, v) in enumerate(zip(lins, value)):
            dst = getattr(lin, attr).data
            v = np.asarray(v).T if transpose else np.asarray(v)
            if v.shape != dst.shape:
                raise ValueError(f"{what}[{i}] must have shape "
                                 f"{dst.T.shape if transpose else dst.shape}, got "
                                 f"{v.T.shape if transpose else v.shape}")
            dst[...] = v

    def _build_model(self, layer_units, dtype) -> None:
        """The Sequential for ``layer_units``, Glorot-initialised from ``self._random_state``
        in scikit-learn's order (per layer: coefficients, then intercepts)."""
        if self.batch_norm and self.layer_norm:
            raise ValueError("batch_norm and layer_norm cannot both be True; pick one")
        gen = _random.default_generator
        saved = gen.get_state()         # Linear's own initialisation must not move the global
        try:                            # generator: the weights are overwritten below
            layers = []
            n = len(layer_units) - 1
            for i in range(n):
                fan_in, fan_out = layer_units[i], layer_units[i + 1]
                lin = _nn.Linear(fan_in, fan_out, dtype=dtype)
                factor = 2.0 if self.activation == "logistic" else 6.0
                bound = np.sqrt(factor / (fan_in + fan_out))
                coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
                intercept = self._random_state.uniform(-bound, bound, fan_out)
                lin.weight.data[...] = coef.T
                lin.bias.data[...] = intercept
                layers.append(lin)
                if i == n - 1:
                    break
                if self.batch_norm:
                    layers.append(_nn.BatchNorm1d(fan_out, dtype=dtype))
                elif self.layer_norm:
                    layers.append(_nn.LayerNorm(fan_out, dtype=dtype))
                layers.append(_HIDDEN_ACTIVATIONS[self.activation]())
                if self.dropout > 0:
                    layers.append(_nn.Dropout(float(self.dropout)))
        finally:
            gen.set_state(saved)
        self._model = _nn.Sequential(*layers)
        self._dtype = np.dtype(dtype)
        # fastreg's generator state for this estimator's dropout masks (seeded from random_state)
        seed = int(self._random_state.randint(np.iinfo(np.int32).max)) if self.dropout else 0
        self._rng_state = _random.Generator(seed).get_state()

    # -- solvers -------------------------------------------------------------------------------
    def _make_optimizer(self) -> None:
        weights = [lin.weight for lin in self._linears()]
        wid = {id(p) for p in weights}
        others = [p for p in self._model.parameters() if id(p) not in wid]
        groups = [{"params": weights}, {"params": others}]
        lr = float(self.learning_rate_init)
        wd = float(self.weight_decay)
        if self.optimizer is not None:
            name, kwargs = _name_and_kwargs(self.optimizer, "optimizer")
            cls = getattr(_optim, name, None)
            if not (isinstance(cls, type) and issubclass(cls, _optim.Optimizer)) \
                    or cls is _optim.Optimizer:
                raise ValueError(f"optimizer must name a fastreg.optim optimizer (SGD, Adam, "
                                 f"AdamW, RMSprop, Adagrad, Adadelta), got {name!r}")
            kwargs.setdefault("lr", lr)
            opt = cls(groups, **kwargs)
            self._kind = "custom"
        elif self.solver == "sgd":
            opt = _optim.SGD(groups, lr=lr, momentum=float(self.momentum),
                             nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
            self._kind = "sgd"
        else:
            opt = _optim.Adam(groups, lr=lr, betas=(float(self.beta_1), float(self.beta_2)),
                              eps=float(self.epsilon), decoupled_weight_decay=True)
            self._kind = "adam"
        opt.param_groups[0]["weight_decay"] = wd
        opt.param_groups[1]["weight_decay"] = 0.0
        self._optimizer = opt
        self._lr = lr               # scikit-learn's current learning rate (sgd schedules)
        self._adam_t = 0
        self._scheduler = None
        if self.lr_scheduler is not None:
            if self.learning_rate != "constant":
                raise ValueError("lr_scheduler replaces learning_rate's schedule; use "
                                 f"learning_rate='constant' with it, got {self.learning_rate!r}")
            name, kwargs = _name_and_kwargs(self.lr_scheduler, "lr_scheduler")
            cls = getattr(_optim.lr_scheduler, name, None)
            if not isinstance(cls, type):
                raise ValueError(f"lr_scheduler must name a fastreg.optim.lr_scheduler class "
                                 f"(StepLR, CosineAnnealingLR, ReduceLROnPlateau, ...), got "
                                 f"{name!r}")
            self._scheduler = cls(opt, **kwargs)

    def _set_lr(self, lr: float) -> None:
        """Change scikit-learn's learning rate; SGD's momentum buffer (torch's form b, with
        scikit-learn's velocity v = −η b) is rescaled so the next step equals scikit-learn's."""
        if self._kind == "sgd":
            for flat in self._optimizer._flat:
                buf = flat.state.get("momentum_buffer")
                if buf is not None and lr > 0:
                    buf *= self._lr / lr
        self._lr = lr
        for g in self._optimizer.param_groups:
            g["lr"] = lr

    def _step(self, sw_sum: float) -> None:
        groups = self._optimizer.param_groups
        groups[0]["l2"] = 0.5 * float(self.alpha) / sw_sum
        groups[0]["l1"] = float(self.l1) / sw_sum
        if self._kind == "adam":
            # scikit-learn's ε is added to √v, torch's to √v̂ = √v / √(1-β₂ᵗ)
            self._adam_t += 1
            eps = float(self.epsilon) / math.sqrt(1.0 - float(self.beta_2) ** self._adam_t)
            for g in groups:
                g["eps"] = eps
        self._optimizer.step()

    @contextlib.contextmanager
    def _runtime(self, rng: bool = True):
        """Thread count (and, with ``rng``, the dropout generator stream) of this estimator for
        the duration of a fit or predict; the global ones are restored afterwards."""
        saved_threads = dict(_config._state)
        gen = _random.default_generator
        saved_rng = gen.get_state()
        if self.n_threads is not None:
            _config.set_num_threads(int(self.n_threads))
        rng = rng and self.__dict__.get("_rng_state") is not None
        if rng:
            gen.set_state(self._rng_state)
        try:
            yield
        finally:
            if rng:
                self._rng_state = gen.get_state()
            gen.set_state(saved_rng)
            if self.n_threads is not None:
                _config._state.update(saved_threads)
                _config.apply_num_threads()

    # -- fit -------------------------------------------------------------------------------
    def _check_params(self) -> list[int]:
        self._validate_params()
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fastreg.sklearn "
                             f"{type(self).__name__}; use solver='adam' or solver='sgd'")
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        _resolve_dtype(self.dtype)
        for what in ("optimizer", "lr_scheduler"):
            if getattr(self, what) is not None:
                _name_and_kwargs(getattr(self, what), what)
        return [int(s) for s in sizes]

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._check_params()
        first_pass = "_model" not in self.__dict__ or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        sample_weight = self._apply_class_weight(y, sample_weight)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        want = _resolve_dtype(self.dtype)
        dtype = self._dtype if not first_pass else (want if want is not None else X.dtype)
        if X.dtype != dtype:
            X = X.astype(dtype)
        y = np.asarray(y, dtype=dtype)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=dtype)
        n_features = X.shape[1]
        self.n_outputs_ = y.shape[1]
        layer_units = [n_features] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        elif [lin.in_features for lin in self._linears()] + [self._linears()[-1].out_features] \
                != layer_units:
            raise ValueError(f"the network was built for layer sizes "
                             f"{[lin.in_features for lin in self._linears()]} → "
                             f"{self._linears()[-1].out_features}; this call needs "
                             f"{layer_units}")
        with self._runtime():
            self._fit_stochastic(X, y, sample_weight, incremental)
        if not all(np.isfinite(p.data).all() for p in self._model.parameters()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    def _apply_class_weight(self, y, sample_weight):
        return sample_weight

    def _initialize(self, y, layer_units, dtype) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self._build_model(layer_units, dtype)
        self._best_state = None
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self.__dict__.pop("_optimizer", None)

    def _loss_name(self) -> str:
        if self.loss == "log_loss" and self.out_activation_ == "logistic":
            return "binary_log_loss"
        return self.loss

    def _snapshot(self) -> None:
        self._best_state = {k: np.array(v) for k, v in self._model.state_dict().items()}

    def _fit_stochastic(self, X, y, sample_weight, incremental) -> None:
        if not incremental or "_optimizer" not in self.__dict__:
            self._make_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = parts[:4]
            sw_train, sw_val = (parts[4], parts[5]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None

        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        # sklearn.utils.gen_batches (without its per-call parameter validation)
        batches = [slice(lo, min(lo + batch_size, n_samples))
                   for lo in range(0, n_samples, batch_size)]
        if self.batch_norm:
            # batch statistics need two rows: a trailing one-row batch joins the previous one
            if n_samples < 2:
                raise ValueError(f"batch_norm=True needs at least 2 training samples, got "
                                 f"{n_samples}")
            if batches[-1].stop - batches[-1].start == 1:
                batches[-2:] = [slice(batches[-2].start, n_samples)]
        loss_name = self._loss_name()
        out_act = self.out_activation_
        model = self._model
        linears = self._linears()
        alpha, l1 = float(self.alpha), float(self.l1)
        dense = not sp.issparse(X_train)
        if not dense:
            X_train = X_train.tocsr()      # row batches are cut from CSR
        gather = None
        if dense and self.shuffle:
            # shuffled rows are gathered into reused C-contiguous buffers (DataLoader's), not
            # into a fresh array per batch; the model's forward takes them without a copy
            rows = max(b.stop - b.start for b in batches)
            gather = (_Gather(X_train, rows), _Gather(y_train, rows),
                      None if sw_train is None else _Gather(sw_train, rows))
        epochs = range(self.max_iter)
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm
            except ImportError as e:
                raise ImportError("progress=True needs tqdm: pip install tqdm") from e
            bar = tqdm(total=1 if incremental else self.max_iter, desc=type(self).__name__,
                       leave=False)
        try:
            self.n_iter_ = 0
            for _ in epochs:
                model.train()
                if self.shuffle:
                    # sklearn.utils.shuffle(sample_idx, random_state=rs) without its per-call
                    # validation: the same permutation from the same draws
                    perm = np.arange(n_samples)
                    self._random_state.shuffle(perm)
                    sample_idx = sample_idx[perm]
                accumulated_loss = 0.0
                for batch_slice in batches:
                    idx = sample_idx[batch_slice] if self.shuffle else batch_slice
                    if gather is not None:
                        Xb, yb = gather[0](idx), gather[1](idx)
                        swb = None if gather[2] is None else gather[2](idx)
                    else:
                        Xb = X_train[idx]
                        if not dense:
                            Xb = Xb.toarray()
                        yb = y_train[idx]
                        swb = None if sw_train is None else sw_train[idx]
                    sw_sum = float(len(yb) if swb is None else swb.sum())
                    if sw_sum <= 0:             # an all-zero-weight batch: nothing to learn
                        continue
                    z = model(np.ascontiguousarray(Xb))
                    p = _out_activation(out_act, z)
                    loss = _loss(loss_name, yb, p, swb)
                    reg = 0.0
                    for lin in linears:
                        w = lin.weight.data.ravel()
                        if alpha:
                            reg += 0.5 * alpha * float(np.dot(w, w))
                        if l1:
                            reg += l1 * float(np.abs(w).sum())
                    loss += reg / sw_sum
                    delta = p
                    delta -= yb
                    if swb is not None:
                        delta *= swb.reshape(-1, 1)
                    delta /= sw_sum
                    self._optimizer.zero_grad()
                    model.backward(delta, input_grad=False)
                    self._step(sw_sum)
                    accumulated_loss += loss * (batch_slice.stop - batch_slice.start)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / X_train.shape[0]
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.loss_:.6g}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                if self._scheduler is not None:
                    if isinstance(self._scheduler, _optim.lr_scheduler.ReduceLROnPlateau):
                        self._scheduler.step(-self.validation_scores_[-1] if early_stopping
                                             else self.loss_)
                    else:
                        self._scheduler.step()
                elif self._kind == "sgd" and self.learning_rate == "invscaling":
                    self._set_lr(float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = (f"Validation score did not improve more than tol={self.tol:f} "
                               f"for {self.n_iter_no_change} consecutive epochs.")
                    else:
                        msg = (f"Training loss did not improve more than tol={self.tol:f} "
                               f"for {self.n_iter_no_change} consecutive epochs.")
                    if self._trigger_stopping(msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning, stacklevel=2)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        finally:
            if bar is not None:
                bar.close()
            model.eval()
        if (early_stopping or self.restore_best_weights) and self._best_state is not None:
            model.load_state_dict(self._best_state)

    def _trigger_stopping(self, msg: str) -> bool:
        """scikit-learn's: stop, except 'adaptive' SGD divides the learning rate by 5."""
        if self._kind != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self._lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._set_lr(self._lr / 5.0)
        if self.verbose:
            print(f"{msg} Setting learning rate to {self._lr:f}")
        return False

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight) -> None:
        if early_stopping:
            val_score = self._score(X, y, sample_weight=sample_weight)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print(f"Validation score: {self.validation_scores_[-1]:f}")
            last = self.validation_scores_[-1]
            if last < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last > self.best_validation_score_:
                self.best_validation_score_ = last
                self._snapshot()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
                if self.restore_best_weights:
                    self._snapshot()

    # -- predict ---------------------------------------------------------------------------
    def _forward_pass_fast(self, X, check_input=True) -> np.ndarray:
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        model = self._model
        model.eval()
        out = []
        with self._runtime(rng=False):          # eval mode draws no dropout masks
            for lo in range(0, X.shape[0], _PREDICT_CHUNK):
                Xb = X[lo:lo + _PREDICT_CHUNK]
                Xb = Xb.toarray() if sp.issparse(Xb) else Xb
                Xb = np.ascontiguousarray(Xb, dtype=self._dtype)
                out.append(_out_activation(self.out_activation_, model(Xb)))
        if not out:
            return np.empty((0, self.n_outputs_), self._dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None
            Each loss term is weighted: the batch loss is Σ wᵢ lᵢ / Σ wᵢ.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # -- pickling: the optimizer travels as its state_dict ---------------------------------
    def __getstate__(self):
        state = dict(super().__getstate__())   # (a copy: the live estimator keeps its optimizer)
        opt = state.pop("_optimizer", None)
        sched = state.pop("_scheduler", None)
        if opt is not None:
            state["_optimizer_state"] = opt.state_dict()
            state["_scheduler_state"] = None if sched is None else sched.state_dict()
        return state

    def __setstate__(self, state):
        opt_state = state.pop("_optimizer_state", None)
        sched_state = state.pop("_scheduler_state", None)
        super().__setstate__(state)
        if opt_state is not None:
            lr, t = self._lr, self._adam_t
            self._make_optimizer()
            self._optimizer.load_state_dict(opt_state)
            self._lr, self._adam_t = lr, t
            if sched_state is not None and self._scheduler is not None:
                self._scheduler.load_state_dict(sched_state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: ``sklearn.neural_network.MLPClassifier`` on fastreg.

    Every parameter, default, fitted attribute and method of scikit-learn's class (see its
    documentation), with these differences: ``solver='lbfgs'`` raises a ValueError (``max_fun``
    is accepted and unused); ``coefs_``/``intercepts_`` are views of the fastreg network
    (``_model``). The multiclass loss is cross-entropy over a softmax, binary and multilabel
    targets use a logistic output and binary cross-entropy (see the module docstring).

    fastreg's own parameters (all off by default)
    ----------------------------------------------
    dropout : float in [0, 1), default 0
        Dropout after each hidden activation (inverted; off at predict).
    batch_norm, layer_norm : bool, default False
        BatchNorm1d / LayerNorm between each hidden Linear and its activation (with batch norm
        a trailing one-row batch joins the previous one: batch statistics need two rows).
    l1 : float >= 0, default 0
        L1 penalty scaled like ``alpha``: ``l1 · Σ|W| / Σwᵢ`` per batch (weights only).
    weight_decay : float >= 0, default 0
        Decoupled weight decay (AdamW: θ ← θ(1 − ηλ)) on the weights; with ``solver='sgd'``
        torch's SGD weight decay (λθ added to the gradient).
    optimizer : None, str or (str, dict), default None
        Any ``fastreg.optim`` optimizer by name, with keyword arguments, replacing ``solver``'s
        (``lr`` defaults to ``learning_rate_init``); None follows ``solver``.
    lr_scheduler : None, str or (str, dict), default None
        A ``fastreg.optim.lr_scheduler`` class by name with its keyword arguments, stepped once
        per epoch (``ReduceLROnPlateau`` gets the training loss, or minus the validation score
        with ``early_stopping``). Needs ``learning_rate='constant'``.
    class_weight : None, dict or 'balanced', default None
        Multiplies each sample's weight by its class's weight; 'balanced' is
        ``n_samples / (n_classes · bincount(y))`` as scikit-learn computes it.
    restore_best_weights : bool, default False
        Without ``early_stopping``, end with the weights of the epoch of lowest training loss
        (with ``early_stopping`` the best-validation weights are always restored, as in
        scikit-learn).
    dtype : None, numpy.float32 or numpy.float64, default None
        Parameter dtype; None follows X (float32 stays float32, other input becomes float64).
    n_threads : int or None, default None
        Threads for fit/predict (None: fastreg's current setting).
    progress : bool, default False
        A tqdm progress bar over epochs.
    """

    _parameter_constraints: ClassVar[dict] = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [None, dict, StrOptions({"balanced"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, batch_norm=False, layer_norm=False, l1=0.0, weight_decay=0.0,
                 optimizer=None, lr_scheduler=None, class_weight=None,
                 restore_best_weights=False, dtype=None, n_threads=None, progress=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.layer_norm = layer_norm
        self.l1 = l1
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.class_weight = class_weight
        self.restore_best_weights = restore_best_weights
        self.dtype = dtype
        self.n_threads = n_threads
        self.progress = progress

    loss = "log_loss"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        self._y_raw = y
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def _apply_class_weight(self, y, sample_weight):
        y_raw = self.__dict__.pop("_y_raw", None)
        if self.class_weight is None:
            return sample_weight
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        if isinstance(self.class_weight, dict):
            unknown = [k for k in self.class_weight if k not in set(self.classes_)]
            if unknown:
                raise ValueError(f"class_weight has labels {unknown} that are not in "
                                 f"classes_ {list(self.classes_)}")
        cw = compute_class_weight(self.class_weight, classes=self.classes_, y=y_raw)
        w = cw[np.searchsorted(self.classes_, y_raw)]
        return w if sample_weight is None else sample_weight * w

    def predict(self, X):
        """Predict class labels (or the label-indicator matrix for multilabel targets)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); ``classes`` (all labels) is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: ``sklearn.neural_network.MLPRegressor`` on fastreg.

    scikit-learn's parameters (``loss`` 'squared_error' — half the mean squared error — or
    'poisson' with an exp output), attributes and methods; multi-output targets; fastreg's own
    parameters as in :class:`MLPClassifier` (without ``class_weight``).
    """

    _parameter_constraints: ClassVar[dict] = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, batch_norm=False, layer_norm=False, l1=0.0, weight_decay=0.0,
                 optimizer=None, lr_scheduler=None, restore_best_weights=False, dtype=None,
                 n_threads=None, progress=False):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.layer_norm = layer_norm
        self.l1 = l1
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.restore_best_weights = restore_best_weights
        self.dtype = dtype
        self.n_threads = n_threads
        self.progress = progress

    def predict(self, X):
        """Predicted values, (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("loss='poisson' needs non-negative targets y")
        return X, y

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

