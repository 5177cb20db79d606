"""Training callbacks: hooks the fit loop calls at the start, after each epoch and at the end.

The trainer passed to every hook has (at least) these attributes:

* ``model`` - a fastreg Module: ``state_dict()`` (dict of numpy arrays) / ``load_state_dict(sd)``;
* ``stop_training`` - bool; a callback sets it to True to end training after this epoch;
* ``stop_reason`` - str; why training stopped (shown in the History).

``logs`` passed to :meth:`Callback.on_epoch_end` holds ``"loss"``, ``"val_loss"``, ``"lr"`` and
metrics such as ``"accuracy"`` / ``"val_accuracy"`` for the epoch that just finished.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .._checks import check_int, check_scalar

__all__ = ["Callback", "EarlyStopping"]


class Callback:
    """Base class: override any of the hooks; the defaults do nothing."""

    def on_train_begin(self, trainer) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, Any]) -> None:
        """Called after each epoch (training and validation done) with that epoch's logs."""

    def on_train_end(self, trainer) -> None:
        """Called once after the last epoch, whether it stopped early or not."""


def _copy_state_dict(sd: dict) -> dict:
    """A deep copy that owns its arrays (a state_dict may hold views of an optimizer buffer)."""
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else copy.deepcopy(v))
            for k, v in sd.items()}


class EarlyStopping(Callback):
    r"""Stop training when a monitored quantity has stopped improving; keep the best weights.

    Semantics of Keras / PyTorch Lightning. With ``mode="min"`` an epoch *improves* when

    .. math:: v_t < \text{best} - \text{min\_delta}

    (``v_t > best + min_delta`` for ``"max"``). ``wait`` counts the epochs since the last
    improvement; training stops at the end of the epoch where ``wait`` reaches ``patience``
    (``patience=0`` stops at the first epoch that does not improve). The first epoch always
    improves on the initial ``best`` (:math:`+\infty` or :math:`-\infty`). A NaN value never
    improves.

    Early stopping is a regularizer: it bounds the number of gradient steps, stopping where the
    validation loss starts to rise while the training loss still falls.

    Parameters
    ----------
    monitor : str, default "val_loss"
        Key of ``logs`` to watch.
    patience : int, default 10
        Number of epochs without improvement after which training stops.
    min_delta : float, default 0.0
        Minimum change that counts as an improvement (>= 0).
    mode : {"min", "max"}, default "min"
        Whether lower or higher values of ``monitor`` are better.
    restore_best_weights : bool, default True
        Keep a copy of the model's ``state_dict()`` from the best epoch and load it back at
        ``on_train_end`` (whether or not training stopped early).

    Attributes
    ----------
    best : float
        Best monitored value so far.
    best_epoch : int or None
        Epoch (as numbered by the trainer) of ``best``; None before the first epoch.
    stopped_epoch : int or None
        Epoch at which this callback stopped training; None if it did not.
    wait : int
        Epochs since the last improvement.
    best_weights : dict or None
        Copy of the best ``state_dict`` (when ``restore_best_weights``).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 0.0,
                 mode: str = "min", restore_best_weights: bool = True) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty string, got {monitor!r}")
        patience = check_int("patience", patience, 0)
        min_delta = check_scalar("min_delta", min_delta, low=0.0)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict | None = None

    def _is_improvement(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, trainer) -> None:
        """Reset the state, so one callback object can serve several ``fit`` calls."""
        self._reset()
        if self.restore_best_weights:
            model = getattr(trainer, "model", None)
            if not (callable(getattr(model, "state_dict", None))
                    and callable(getattr(model, "load_state_dict", None))):
                raise TypeError("EarlyStopping(restore_best_weights=True) needs trainer.model "
                                "with state_dict() and load_state_dict(); got "
                                f"{type(model).__name__}")

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, Any]) -> None:
        """Compare ``logs[monitor]`` with the best so far; stop when patience runs out."""
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which is not in the epoch "
                           f"logs (available: {sorted(logs)}); pass validation data or change "
                           "`monitor`")
        try:
            value = float(logs[self.monitor])
        except (TypeError, ValueError):
            raise TypeError(f"logs[{self.monitor!r}] must be a real number, "
                            f"got {logs[self.monitor]!r}") from None
        if self._is_improvement(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = _copy_state_dict(trainer.model.state_dict())
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True
            trainer.stop_reason = (
                f"early stopping: {self.monitor} did not improve for {self.wait} epoch"
                f"{'s' if self.wait != 1 else ''} (best {self.best:.6g} at epoch "
                f"{self.best_epoch})")

    def on_train_end(self, trainer) -> None:
        """Load the best weights back into the model (when ``restore_best_weights``)."""
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(_copy_state_dict(self.best_weights))

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, mode={self.mode!r}, "
                f"restore_best_weights={self.restore_best_weights})")
