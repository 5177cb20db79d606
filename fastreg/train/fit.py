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


def _check_pair(name: str, pair, dtype) -> tuple[np.ndarray, np.ndarray]:
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
    # the data is cast once here (not per batch) so a float64 dataset trains a float32 model
    if dtype is not None and X.dtype != dtype and (X.dtype in FLOAT_DTYPES
                                                    or X.dtype.kind in "iub"):
        X = X.astype(dtype)
    return X, y


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
        if has_pandas(pair) and len(pair) == 2:
            X, cols = frame_to_array(pair[0], dtype, what=f"{what} X", features=names)
            y, _ = frame_to_array(pair[1], None, what=f"{what} y")
            names = names or cols
            pair = (X, y)
        out.append(pair)
    if names is not None:
        object.__setattr__(model, "feature_names_in_", list(names))
    return out[0], out[1]


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
             metrics: Sequence = ("accuracy",)) -> dict[str, float]:
    """Mean loss and metrics of ``model`` (in eval mode) over ``(X, y)``, in batches.

    Returns ``{"loss": ..., "accuracy": ...}``. The model is left in eval mode.
    """
    X, y = _check_pair("data", (X, y), _model_dtype(model))
    mets = _resolve_metrics(metrics, loss_fn)
    return _evaluate(model, loss_fn, X, y, _check_int("batch_size", batch_size, 1), mets)


def _evaluate(model, loss_fn, X, y, batch_size, mets) -> dict[str, float]:
    model.eval()
    n = X.shape[0]
    total = 0.0
    sums = [0.0] * len(mets)
    for start in range(0, n, batch_size):
        xb = np.ascontiguousarray(X[start:start + batch_size])
        yb = y[start:start + batch_size]
        out = model(xb)
        total += loss_fn(out, yb) * len(xb)
        for i, (_, fn) in enumerate(mets):
            sums[i] += fn(out, yb)
    res = {"loss": total / n}
    for (name, _), s in zip(mets, sums):
        res[name] = s / n
    return res


def fit(model, loss_fn, optimizer, train: tuple, valid: tuple | None = None, epochs: int = 10,
        batch_size: int = 256, scheduler=None, callbacks: Iterable = (),
        metrics: Sequence = ("accuracy",), progress: bool = True, shuffle: bool = True,
        seed: int | None = None, scheduler_interval: str | None = None,
        drop_last: bool | None = None, checkpoint: str | os.PathLike | None = None,
        resume: bool = False, distributed: bool | None = None) -> History:
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
        The resumed run is bitwise identical to one that never stopped.
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
    train, valid = _from_pandas(model, train, valid, dtype)    # DataFrame/Series -> arrays
    X, y = _check_pair("train", train, dtype)
    Xv = yv = None
    if valid is not None:
        Xv, yv = _check_pair("valid", valid, dtype)
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
    loader = DataLoader(X, y, batch_size=batch_size, shuffle=shuffle,
                        drop_last=bool(drop_last), seed=seed, shard=shard)
    trainer.loader = loader
    trainer.callbacks = callbacks
    if dist is not None and len(loader) == 0:
        raise ValueError(f"train has {X.shape[0]} samples: not one batch for each of the "
                         f"{dist[1]} ranks (batch_size={batch_size}, drop_last={bool(drop_last)})")
    # distributed: the sharded loader drops a global batch smaller than the world instead
    skip_single = drop_last is None and len(loader) > 1 and dist is None
    full_batch = batch_size * (1 if dist is None else dist[1])
    bar = _progress_bar(epochs) if progress else None
    t_start = time.perf_counter()
    for cb in callbacks:
        cb.on_train_begin(trainer)
    start = 1
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        from .checkpoint import resume_trainer
        start = resume_trainer(checkpoint, trainer) + 1
        if dist is not None and trainer.global_step != (start - 1) * len(loader):
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
            for step, (xb, yb) in enumerate(loader, 1):
                if skip_single and len(xb) == 1:
                    continue
                out = model(xb)
                loss = loss_fn(out, yb)
                if not math.isfinite(loss):
                    trainer.stop_reason = f"non-finite loss at epoch {epoch}, step {step}"
                    raise FloatingPointError(
                        f"training loss is {loss} at epoch {epoch}, step {step} (global step "
                        f"{trainer.global_step + 1}); lower the learning rate, check the data "
                        "for NaN/inf, or add normalization")
                optimizer.zero_grad()
                grad = loss_fn.backward()
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
                n = len(xb)
                total += loss * n
                seen += n
                for i, (_, fn) in enumerate(mets):
                    sums[i] += fn(out, yb)
            if dist is not None:                  # sums over the ranks, rank 0's result
                red = dist[0].allreduce_sum([total, seen, *sums])
                total, seen, sums = float(red[0]), float(red[1]), [float(v) for v in red[2:]]
            logs = {"loss": total / seen + (float(penalty()) if callable(penalty) else 0.0)}
            for (name, _), s in zip(mets, sums):
                logs[name] = s / seen
            if Xv is not None:
                if dist is None:
                    res = _evaluate(model, loss_fn, Xv, yv, max(batch_size, 1024), mets)
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
