"""``fit``: the mini-batch training loop (forward, loss, backward, optimizer step, schedule,
validation, callbacks), recorded in a :class:`History`."""
from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .._checks import check_int as _check_int
from .._config import FLOAT_DTYPES
from .._kernels.runtime.cuda import to_host
from .history import History

#: Schedulers stepped after every optimizer step by default (their period is in steps).
STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")
#: Schedulers stepped with the validation loss once per epoch.
PLATEAU_SCHEDULERS = ("ReduceLROnPlateau",)
SCHEDULER_INTERVALS = ("epoch", "step")


class Trainer:
    """The state callbacks see: ``model``, ``optimizer``, ``loss_fn``, ``scheduler``,
    ``history``, ``epoch`` (1-based), ``global_step``, ``stop_training``, ``stop_reason``."""

    def __init__(self, model, loss_fn, optimizer, scheduler, history: History):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.history = history
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False
        self.stop_reason = ""


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def accuracy_count(output: np.ndarray, target: np.ndarray) -> int:
    """Correct predictions in a batch: argmax over classes for (N, C) scores with integer
    targets; ``output > 0`` vs ``target > 0.5`` for one logit per sample (binary). GPU outputs
    are copied to the host (the metric asks for the predictions)."""
    output, target = to_host(output), to_host(target)
    if output.ndim == 2 and output.shape[1] > 1:
        return int(np.count_nonzero(output.argmax(axis=1) == np.asarray(target).reshape(-1)))
    return int(np.count_nonzero((output.reshape(-1) > 0) == (np.asarray(target).reshape(-1)
                                                                > 0.5)))


def _resolve_metrics(metrics, loss_fn) -> list[tuple[str, Callable]]:
    """[(name, fn(output, target) -> summed value over the batch)]."""
    from ..nn.loss import MSELoss
    out = []
    for m in metrics or ():
        if m == "accuracy":
            if isinstance(loss_fn, MSELoss):
                continue            # regression: accuracy is meaningless, skipped silently
            out.append(("accuracy", accuracy_count))
        elif callable(m):
            name = getattr(m, "__name__", type(m).__name__)
            out.append((name, lambda o, t, f=m: float(f(to_host(o), to_host(t))) * o.shape[0]))
        else:
            raise ValueError(f"metrics entries must be 'accuracy' or callables "
                             f"f(output, target) -> float (a batch mean), got {m!r}")
    return out


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------

def _model_dtype(model) -> np.dtype | None:
    for p in model.parameters():
        return p.data.dtype
    return None


def _check_pair(name: str, pair, dtype, takes_indices: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a tuple (X, y), got {type(pair).__name__}")
    X, y = pair
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must hold numpy arrays, got ({type(X).__name__}, "
                        f"{type(y).__name__})")
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X and y must have the same number of samples, got "
                         f"X.shape={X.shape} and y.shape={y.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    # the data is cast once here (not per batch) so a float64 dataset trains a float32 model;
    # integer indices for a model that starts with an Embedding stay integers
    if dtype is not None and X.dtype != dtype and (X.dtype in FLOAT_DTYPES
                                                    or X.dtype.kind in "iub") \
            and not (X.dtype.kind in "iu" and takes_indices):
        X = X.astype(dtype)
    return X, y


def _takes_indices(model) -> bool:
    """Does the model's first layer take integer indices (an Embedding)?"""
    from ..nn import Embedding, Sequential
    m = model
    while isinstance(m, Sequential):
        children = [c for c in m if c is not None]
        if not children:
            return False
        m = children[0]
    return isinstance(m, Embedding)


def _from_pandas(model, train, valid, dtype):
    """pandas DataFrames/Series in ``train``/``valid`` -> arrays (numeric columns, in the model's
    dtype; ``valid``'s columns reordered to ``train``'s); the names go to
    ``model.feature_names_in_``. pandas is touched only when such an object is given."""
    def has_pandas(pair):
        return isinstance(pair, (tuple, list)) and any(
            type(v).__module__.startswith("pandas") for v in pair)
    if not (has_pandas(train) or has_pandas(valid)):
        return train, valid
    from ..data.table import frame_to_array
    names = None
    out = []
    for what, pair in (("train", train), ("valid", valid)):
        if has_pandas(pair) and len(pair) in (2, 3):
            X, cols = frame_to_array(pair[0], dtype, what=f"{what} X", features=names)
            y, _ = frame_to_array(pair[1], None, what=f"{what} y")
            names = names or cols
            pair = (X, y, *[_series_values(v) for v in pair[2:]])
        out.append(pair)
    if names is not None:
        object.__setattr__(model, "feature_names_in_", list(names))
    return out[0], out[1]


def _series_values(v):
    """A pandas Series of weights as its values (anything else unchanged)."""
    return v.to_numpy() if type(v).__module__.startswith("pandas") else v


def _scheduler_interval(scheduler, override) -> str | None:
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    if name in PLATEAU_SCHEDULERS:
        if override == "step":
            raise ValueError("ReduceLROnPlateau is stepped once per epoch with the validation "
                             "loss; scheduler_interval='step' is not supported for it")
        return "plateau"
    if override is not None:
        if override not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS} or None, "
                             f"got {override!r}")
        return override
    return "step" if name in STEP_SCHEDULERS else "epoch"


def _current_lr(optimizer) -> float:
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    return float(getattr(optimizer, "lr", math.nan))


def _backward_takes_input_grad(model) -> bool:
    try:
        return "input_grad" in inspect.signature(model.backward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def evaluate(model, loss_fn, X: np.ndarray, y: np.ndarray, batch_size: int = 1024,
             metrics: Sequence = ("accuracy",), sample_weight=None) -> dict[str, float]:
    """Mean loss and metrics of ``model`` (in eval mode) over ``(X, y)``, in batches
    (weighted means ``sum w_i m_i / sum w_i`` with ``sample_weight``).

    Returns ``{"loss": ..., "accuracy": ...}``. The model is left in eval mode.
    """
    X, y = _check_pair("data", (X, y), _model_dtype(model), _takes_indices(model))
    mets = _resolve_metrics(metrics, loss_fn)
    w = _sample_weights("sample_weight", sample_weight, None, y, X.shape[0])
    return _evaluate(model, loss_fn, X, y, _check_int("batch_size", batch_size, 1), mets, w)


def _evaluate(model, loss_fn, X, y, batch_size, mets, w=None) -> dict[str, float]:
    model.eval()
    n = X.shape[0]
    total = 0.0
    sums = [0.0] * len(mets)
    for start in range(0, n, batch_size):
        xb = np.ascontiguousarray(X[start:start + batch_size])
        yb = y[start:start + batch_size]
        out = model(xb)
        if w is None:
            total += loss_fn(out, yb) * len(xb)
            for i, (_, fn) in enumerate(mets):
                sums[i] += fn(out, yb)
        else:
            wb = w[start:start + batch_size]
            total += weighted_loss(loss_fn, out, yb, wb, grad=False)[0] * float(wb.sum())
            for i, (name, fn) in enumerate(mets):
                sums[i] += _weighted_metric(name, fn, out, yb, wb)
    denom = n if w is None else float(w.sum())
    res = {"loss": total / denom}
    for (name, _), s in zip(mets, sums):
        res[name] = s / denom
    return res


# ---------------------------------------------------------------------------------------------
# sample and class weights
# ---------------------------------------------------------------------------------------------

def weighted_loss(loss_fn, out, target, w, grad: bool = True):
    r"""The weighted mean loss of a batch and its gradient w.r.t. ``out``.

    :math:`L = \sum_i w_i \ell_i / \sum_i w_i` (scikit-learn's definition), where
    :math:`\ell_i` is sample i's loss: the loss with ``reduction="none"``, averaged over the
    sample's other elements (MSE / BCE on several outputs). ``loss_fn`` must be a fastreg loss
    built with ``reduction="mean"``; its reduction is switched for this call only. Returns
    ``(L, dL/dout)`` (the gradient None when ``grad`` is False).
    """
    red = getattr(loss_fn, "reduction", None)
    if red != "mean":
        raise ValueError("sample weights need a fastreg loss with reduction='mean' (fit takes "
                         f"the weighted mean of its per-sample losses), got reduction={red!r}")
    w = np.asarray(w, dtype=np.float64)
    ignore = getattr(loss_fn, "ignore_index", None)
    t = np.asarray(to_host(target))
    if ignore is not None and t.dtype.kind in "iu" and t.shape == w.shape:
        w = np.where(t == ignore, 0.0, w)   # ignored samples leave the denominator, as torch's
    loss_fn.reduction = "none"
    try:
        per = loss_fn(out, target)
        per_h = np.asarray(to_host(per), dtype=np.float64)
        n = w.shape[0]
        k = per_h.size // n if n else 1
        lw = per_h.reshape(n, -1).mean(axis=1)
        sw = float(w.sum())
        loss = float(np.dot(w, lw) / sw) if sw > 0 else 0.0
        if not grad:
            return loss, None
        g = np.broadcast_to((w / (sw * k)).reshape((n,) + (1,) * (per_h.ndim - 1)),
                            per_h.shape).astype(per_h.dtype if per_h.dtype.kind == "f"
                                                else np.float64)
        g = np.ascontiguousarray(g.astype(getattr(per, "dtype", g.dtype), copy=False))
        return loss, loss_fn.backward(g)
    finally:
        loss_fn.reduction = red


def _weighted_metric(name, fn, out, yb, wb) -> float:
    """Weighted sum of a metric over a batch: accuracy per sample; a callable metric (a batch
    mean) weighted by the batch's total weight."""
    if name == "accuracy" and fn is accuracy_count:
        o, t = to_host(out), np.asarray(to_host(yb)).reshape(-1)
        if o.ndim == 2 and o.shape[1] > 1:
            ok = o.argmax(axis=1) == t
        else:
            ok = (o.reshape(-1) > 0) == (t > 0.5)
        return float(np.dot(wb, ok))
    return fn(out, yb) / max(len(wb), 1) * float(wb.sum())


def class_weights(class_weight, y: np.ndarray) -> np.ndarray | None:
    """Per-sample weights from ``class_weight`` (None, "balanced" or {class: weight}) as
    scikit-learn computes them: "balanced" gives class c the weight
    ``n_samples / (n_classes * count(c))``; classes missing from a dict weigh 1."""
    if class_weight is None:
        return None
    t = np.asarray(y)
    if t.ndim != 1 or t.dtype.kind not in "iub":
        raise ValueError("class_weight needs integer class labels y of shape (N,), got "
                         f"dtype {t.dtype} and shape {t.shape}")
    classes, inv, counts = np.unique(t, return_inverse=True, return_counts=True)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got "
                             f"{class_weight!r}")
        per_class = t.shape[0] / (len(classes) * counts.astype(np.float64))
        return per_class[inv]
    if isinstance(class_weight, dict):
        out = np.ones(t.shape[0])
        for c, v in class_weight.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v) or v < 0:
                raise ValueError(f"class_weight[{c!r}] must be a finite number >= 0, got {v!r}")
            out[t == c] = float(v)
        return out
    raise TypeError(f"class_weight must be None, 'balanced' or a dict, got "
                    f"{type(class_weight).__name__}")


def _sample_weights(name, sample_weight, class_weight, y, n, cw_ref=None):
    from ..data.loader import check_sample_weight
    w = None if sample_weight is None else check_sample_weight(sample_weight, n, name)
    if class_weight is not None:
        cw = class_weights(class_weight if cw_ref is None else cw_ref, y)
        w = cw if w is None else w * cw
        if not w.sum() > 0:
            raise ValueError(f"{name}: the sample and class weights have a zero sum")
    return w


def fit(model, loss_fn, optimizer, train: tuple, valid: tuple | None = None, epochs: int = 10,
        batch_size: int = 256, scheduler=None, callbacks: Iterable = (),
        metrics: Sequence = ("accuracy",), progress: bool = True, shuffle: bool = True,
        seed: int | None = None, scheduler_interval: str | None = None,
        drop_last: bool | None = None, checkpoint: str | os.PathLike | None = None,
        resume: bool = False, distributed: bool | None = None, sample_weight=None,
        class_weight=None, precision: str = "float32") -> History:
    """Train ``model`` with mini-batch gradient descent and return its :class:`History`.

    Each epoch visits every training sample once in a fresh random order (``DataLoader``,
    sampling without replacement, ``ceil(N / batch_size)`` steps); per step::

        out = model(xb); loss = loss_fn(out, yb)
        optimizer.zero_grad(); model.backward(loss_fn.backward()); optimizer.step()

    then the validation pass in eval mode, the scheduler, and the callbacks.

    Parameters
    ----------
    model : fastreg.nn.Module
    loss_fn : fastreg.nn loss (returns a float, ``backward()`` gives dL/doutput)
    optimizer : fastreg.optim optimizer
    train, valid : (X, y)
        Arrays; X is cast once to the model's dtype. ``valid`` is optional (without it there
        is no ``val_loss``, so EarlyStopping must monitor something else). X may be a pandas
        DataFrame of numeric columns (y a Series/DataFrame): its column names go to
        ``model.feature_names_in_`` (and ``fr.save``'s ``metadata["features"]``); text columns
        or missing values are an error pointing at :class:`fastreg.data.TablePreprocessor`.
    epochs, batch_size : int
        ``batch_size=1`` trains on single samples; a model holding a ``BatchNorm1d`` cannot
        (ValueError before training, as torch needs more than one value per channel).
    scheduler : learning-rate scheduler, optional
        Stepping rule: ``ReduceLROnPlateau`` gets ``step(val_loss)`` (or the train loss without
        validation data) after each epoch; ``OneCycleLR`` and ``CyclicLR`` are stepped after
        every optimizer step; every other scheduler once per epoch. ``scheduler_interval``
        ("epoch" or "step") overrides the rule for the non-plateau schedulers.
    callbacks : iterable of Callback
        ``on_train_begin(trainer)``, ``on_epoch_end(trainer, epoch, logs)``,
        ``on_train_end(trainer)``; a callback sets ``trainer.stop_training`` to stop.
    metrics : sequence of "accuracy" or callables ``f(output, target) -> batch mean``
        "accuracy" is skipped for ``MSELoss``.
    progress : bool
        A tqdm bar over epochs when tqdm is installed, else one printed line per epoch.
    shuffle : bool
    seed : int, optional
        Seed of the batch order (None: drawn from ``fastreg.manual_seed``'s generator).
    scheduler_interval : {"epoch", "step"}, optional
        Overrides the stepping rule above.
    drop_last : bool, optional
        True: ``floor(N / batch_size)`` full batches per epoch. False: keep the short last
        batch. None (default): keep it unless it holds a single sample, which BatchNorm1d
        cannot train on (no batch variance; torch raises there too).
    checkpoint : path, optional
        Save model, optimizer, scheduler, random state, loader, callbacks and history there
        (atomically) at the end of every epoch (:class:`fastreg.train.Checkpoint`).
    resume : bool
        With ``checkpoint``: if the file exists, continue from the epoch after the one it holds.
        The resumed run is bitwise identical to one that never stopped. A run that had
        finished (all ``epochs`` done, or stopped early by a callback) trains no further: its
        history is returned.
    sample_weight : array-like, shape (N,), optional
        Per-sample weights of ``train``: each batch's loss is the weighted mean
        ``sum_i w_i l_i / sum_i w_i`` of the per-sample losses (scikit-learn's definition; the
        loss must be a fastreg loss with ``reduction="mean"``), and the logged training loss and
        accuracy are weighted the same way. Weights for ``valid`` come as its third element,
        ``valid=(Xv, yv, wv)``; the validation loss and accuracy (what early stopping and
        ReduceLROnPlateau watch) are then weighted too.
    class_weight : None, "balanced" or dict, optional
        Weights per class (integer targets), multiplied into the sample weights of ``train`` and
        ``valid``: "balanced" gives class c ``n / (n_classes * count(c))`` computed on the
        training labels, as scikit-learn; a dict maps class to weight (missing classes: 1).
    precision : {"float32", "bf16"}
        "bf16": each training step's forward runs under :class:`fastreg.autocast` ("bf16")
        (Linear products with bf16-rounded operands and float32 accumulation, their backward
        too; norms, activations, losses, the master weights and the optimizer state stay
        float32; see :mod:`fastreg.amp`). Needs a float32 model. Validation runs in float32.
        "float32" (default): no autocast.
    distributed : bool, optional
        Data-parallel training over MPI (:mod:`fastreg.distributed`; launch with
        ``mpiexec -n N python train.py``). None (default): on when the process was started by
        an MPI launcher with more than one rank. Every rank then holds the model (rank 0's
        parameters are broadcast at the start), trains on its shard of each global batch of
        ``N * batch_size`` samples (``DataLoader(shard=(rank, N))``), and the optimizer
        averages the flat gradients with one allreduce per param group
        (``DistributedOptimizer``), so N ranks × ``batch_size`` train like one process with
        ``N * batch_size``. Training and validation metrics are summed over the ranks (each
        validates its contiguous share of ``valid``) and every rank gets rank 0's result, so
        EarlyStopping and ReduceLROnPlateau decide identically and all ranks stop together.
        Progress output and checkpoints come from rank 0 only; ``resume`` reads the checkpoint
        on every rank (a shared file system) and needs the same number of ranks. An exception
        on any rank prints its traceback and aborts the whole job (``comm.Abort``).

    Returns
    -------
    History
        Epochs are numbered from 1. The logs of each epoch hold "loss" (mean training loss of
        the epoch's batches, in training mode, plus ``optimizer.penalty()`` at the epoch's end
        when the optimizer has L1/L2 penalties), "accuracy", "val_loss", "val_accuracy" and
        "lr" (the first parameter group's rate at the start of the epoch).

    Raises
    ------
    FloatingPointError
        When a training loss is NaN or infinite; the message names the epoch and the step.
    """
    from ..data import DataLoader

    if not callable(getattr(model, "backward", None)):
        raise TypeError(f"model must be a fastreg.nn.Module, got {type(model).__name__}")
    dtype = _model_dtype(model)
    amp = _autocast_for(precision, dtype)
    train, valid = _from_pandas(model, train, valid, dtype)    # DataFrame/Series -> arrays
    X, y = _check_pair("train", train, dtype, _takes_indices(model))
    Xv = yv = wv = None
    if valid is not None:
        wv_in = None
        if isinstance(valid, (tuple, list)) and len(valid) == 3:
            valid, wv_in = tuple(valid[:2]), valid[2]
        Xv, yv = _check_pair("valid", valid, dtype, _takes_indices(model))
    w = _sample_weights("sample_weight", sample_weight, class_weight, y, X.shape[0])
    if valid is not None and (wv_in is not None or class_weight is not None):
        # "balanced" weights come from the training labels, applied to the validation labels
        cw_ref = None
        if isinstance(class_weight, str) and class_weight == "balanced":
            classes, counts = np.unique(np.asarray(y), return_counts=True)
            cw_ref = dict(zip(classes.tolist(),
                              (len(y) / (len(classes) * counts.astype(np.float64))).tolist()))
        wv = _sample_weights("valid sample weights", wv_in, class_weight, yv, Xv.shape[0],
                             cw_ref)
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    interval = _scheduler_interval(scheduler, scheduler_interval)
    mets = _resolve_metrics(metrics, loss_fn)
    callbacks = list(callbacks or ())
    if checkpoint is not None:
        from .checkpoint import Checkpoint
        callbacks.append(Checkpoint(checkpoint))     # last: saves the others' epoch state
    penalty = getattr(optimizer, "penalty", None)
    input_grad_kw = _backward_takes_input_grad(model)
    dist = _distributed(distributed)          # None, or (the fastreg.distributed module, world)
    shard = None
    if dist is not None:
        dd, world = dist
        rank = dd.rank()
        shard = (rank, world)
        dd.DistributedOptimizer(optimizer)
        dd.broadcast_parameters(model)
        if seed is None:                       # one batch order for the whole job: rank 0's
            from .._random import default_generator
            seed = int(default_generator.numpy.integers(0, 2**63))
        seed = dd.broadcast_object(seed)
        if rank != 0:                          # output and files: rank 0 only
            from .checkpoint import Checkpoint as _Ckpt
            progress = False
            callbacks = [cb for cb in callbacks if not isinstance(cb, _Ckpt)]

    history = History()
    trainer = Trainer(model, loss_fn, optimizer, scheduler, history)
    if w is not None and dist is not None:
        raise ValueError("sample_weight / class_weight with distributed training is not "
                         "supported yet")
    loader = DataLoader(X, y, batch_size=batch_size, shuffle=shuffle,
                        drop_last=bool(drop_last), seed=seed, shard=shard, sample_weight=w)
    trainer.loader = loader
    trainer.callbacks = callbacks
    if dist is not None and len(loader) == 0:
        raise ValueError(f"train has {X.shape[0]} samples: not one batch for each of the "
                         f"{dist[1]} ranks (batch_size={batch_size}, drop_last={bool(drop_last)})")
    if batch_size == 1:
        _check_single_sample_batches(model)
    # the short last batch holding one sample is skipped (drop_last=None); with batch_size=1
    # every batch has one sample and is trained on (models without BatchNorm1d); distributed:
    # the sharded loader drops a global batch smaller than the world instead
    skip_single = drop_last is None and len(loader) > 1 and batch_size > 1 and dist is None
    full_batch = batch_size * (1 if dist is None else dist[1])
    bar = _progress_bar(epochs) if progress else None
    t_start = time.perf_counter()
    for cb in callbacks:
        cb.on_train_begin(trainer)
    start = 1
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        from .checkpoint import resume_trainer
        start = resume_trainer(checkpoint, trainer) + 1
        if trainer.stop_training:       # the run had stopped (early): return its history
            start = epochs + 1
        elif dist is not None and trainer.global_step != (start - 1) * len(loader):
            raise ValueError(
                f"resume: the checkpoint {os.fspath(checkpoint)!r} holds {trainer.global_step} "
                f"steps after {start - 1} epochs, but this run takes {len(loader)} steps per "
                f"epoch on {dist[1]} ranks; resume with the world size, batch_size and data "
                "of the run that wrote it")
    try:
        for epoch in range(start, epochs + 1):
            trainer.epoch = epoch
            t_epoch = time.perf_counter()
            lr = _current_lr(optimizer)
            model.train()
            total, seen = 0.0, 0
            sums = [0.0] * len(mets)
            for step, batch in enumerate(loader, 1):
                xb, yb = batch[0], batch[1]
                if skip_single and len(xb) == 1:
                    continue
                with amp:
                    out = model(xb)
                if w is None:
                    loss = loss_fn(out, yb)
                else:
                    loss, wgrad = weighted_loss(loss_fn, out, yb, batch[2])
                if not math.isfinite(loss):
                    trainer.stop_reason = f"non-finite loss at epoch {epoch}, step {step}"
                    raise FloatingPointError(
                        f"training loss is {loss} at epoch {epoch}, step {step} (global step "
                        f"{trainer.global_step + 1}); lower the learning rate, check the data "
                        "for NaN/inf, or add normalization")
                optimizer.zero_grad()
                grad = loss_fn.backward() if w is None else wgrad
                if dist is not None and loader.global_batch_size(step - 1) != full_batch:
                    # a short last global batch: weight this rank's mean loss by its share, so
                    # the averaged gradient is that of the global batch's mean loss
                    grad = grad * (dist[1] * len(xb) / loader.global_batch_size(step - 1))
                if input_grad_kw:
                    model.backward(grad, input_grad=False)   # dL/d(data) is never needed
                else:
                    model.backward(grad)
                optimizer.step()
                trainer.global_step += 1
                if interval == "step":
                    scheduler.step()
                if w is None:
                    n = len(xb)
                    total += loss * n
                    seen += n
                    for i, (_, fn) in enumerate(mets):
                        sums[i] += fn(out, yb)
                else:
                    n = float(batch[2].sum())
                    total += loss * n
                    seen += n
                    for i, (name, fn) in enumerate(mets):
                        sums[i] += _weighted_metric(name, fn, out, yb, batch[2])
            if dist is not None:                  # sums over the ranks, rank 0's result
                red = dist[0].allreduce_sum([total, seen, *sums])
                total, seen, sums = float(red[0]), float(red[1]), [float(v) for v in red[2:]]
            logs = {"loss": total / seen + (float(penalty()) if callable(penalty) else 0.0)}
            for (name, _), s in zip(mets, sums):
                logs[name] = s / seen
            if Xv is not None:
                if dist is None:
                    res = _evaluate(model, loss_fn, Xv, yv, max(batch_size, 1024), mets, wv)
                else:
                    res = _evaluate_shard(model, loss_fn, Xv, yv, max(batch_size, 1024), mets,
                                          dist)
                logs["val_loss"] = res.pop("loss")
                for k, v in res.items():
                    logs["val_" + k] = v
            logs["lr"] = lr
            if interval == "plateau":
                scheduler.step(logs.get("val_loss", logs["loss"]))
            elif interval == "epoch":
                scheduler.step()
            history.append(epoch, logs, time.perf_counter() - t_epoch)
            for cb in callbacks:
                cb.on_epoch_end(trainer, epoch, logs)
            _report(bar, history, progress)
            if trainer.stop_training:
                break
        for cb in callbacks:
            cb.on_train_end(trainer)
        if dist is not None:
            dist[0].barrier()                     # rank 0's files are complete for everyone
    except BaseException as exc:
        if dist is not None:                      # never leave the other ranks waiting
            dist[0].abort(f"{type(exc).__name__} in fit at epoch {trainer.epoch}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
        model.train()
        history.wall_time = time.perf_counter() - t_start
    _finish(history, trainer, callbacks, epochs)
    return history


def _autocast_for(precision, dtype):
    """The autocast context of ``fit(precision=...)`` (a disabled one for "float32")."""
    from ..amp import PRECISIONS, autocast
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and dtype is not None and np.dtype(dtype) != np.float32:
        raise ValueError(f"precision='bf16' needs a float32 model (autocast leaves float64 "
                         f"layers alone, as torch), got a {np.dtype(dtype)} model")
    return autocast("bf16", enabled=precision == "bf16")


def _distributed(flag):
    """(fastreg.distributed, world) when this fit is data-parallel, else None."""
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"distributed must be True, False or None, got {flag!r}")
    if flag is False:
        return None
    from .. import distributed as dd
    if flag is None and dd.launched_world_size() == 1:
        return None
    world = dd.init()
    return (dd, world) if world > 1 else None


def _evaluate_shard(model, loss_fn, X, y, batch_size, mets, dist) -> dict[str, float]:
    """:func:`_evaluate` over the ranks: each takes its contiguous share of ``(X, y)``; the sums
    are reduced, so every rank gets the means over the whole set (rank 0's numbers)."""
    dd, world = dist
    n = X.shape[0]
    r = dd.rank()
    lo, hi = n * r // world, n * (r + 1) // world
    local = [0.0] * (1 + len(mets))
    if hi > lo:
        res = _evaluate(model, loss_fn, X[lo:hi], y[lo:hi], batch_size, mets)
        local = [res["loss"] * (hi - lo)] + [res[name] * (hi - lo) for name, _ in mets]
    red = dd.allreduce_sum(local)
    out = {"loss": float(red[0]) / n}
    for i, (name, _) in enumerate(mets):
        out[name] = float(red[1 + i]) / n
    return out


def _finish(history: History, trainer: Trainer, callbacks: list, epochs: int) -> None:
    history.stopped_early = bool(trainer.stop_training) and len(history) < epochs
    if trainer.stop_reason:
        history.stop_reason = trainer.stop_reason
    elif trainer.stop_training:
        history.stop_reason = f"stopped by a callback after epoch {history.epochs[-1]}"
    else:
        history.stop_reason = f"completed {len(history)} epochs"
    stopper = next((cb for cb in callbacks if getattr(cb, "best_epoch", None) is not None
                    and hasattr(cb, "monitor")), None)
    if stopper is not None:
        history.monitor = stopper.monitor
        history.best_epoch = int(stopper.best_epoch)
        history.best_value = float(stopper.best)
        return
    key = "val_loss" if "val_loss" in history else "loss"
    values = history.history.get(key, [])
    finite = [(v, e) for v, e in zip(values, history.epochs) if math.isfinite(v)]
    if finite:
        history.monitor = key
        history.best_value, history.best_epoch = min(finite)


def _check_single_sample_batches(model) -> None:
    """Raise ValueError up front when a training batch of one sample meets a BatchNorm1d in
    training mode (torch's rule: more than one value per channel is needed)."""
    from ..nn import BatchNorm1d
    for name, m in model.named_modules():
        if isinstance(m, BatchNorm1d):
            raise ValueError(  # noqa: TRY004 - torch raises ValueError here
                f"batch_size=1 cannot train BatchNorm1d {name or '<root>'}: in training mode "
                "it needs more than one value per channel (as torch); use batch_size >= 2 or "
                "LayerNorm")


def _progress_bar(epochs: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, desc="fit", unit="epoch", file=sys.stderr, leave=True)


def _report(bar, history: History, progress: bool) -> None:
    if not progress:
        return
    if bar is None:
        print(history.format_epoch(len(history) - 1), flush=True)
        return
    last = {k: v[-1] for k, v in history.history.items() if k != "lr"}
    bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()}, refresh=False)
    bar.update(1)
