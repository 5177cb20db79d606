"""Training checkpoints: save everything a run needs to continue bit for bit, atomically.

A checkpoint holds the model's ``state_dict``, the optimizer's and the scheduler's, fastreg's
random state (the NumPy generator and the Philox key/offset of the dropout masks), the data
loader's shuffling state (seed, epoch), the state of the other callbacks (EarlyStopping's best
value, wait count and best weights), the History so far, the epoch and the global step. It is
written with :func:`fastreg.io.atomic_write` into the same pickle-free container as model files
(a JSON tree + stored ``.npy`` members), so a crash mid-save leaves the previous checkpoint.

Resuming from epoch k and training to epoch E gives bitwise the same weights as training to E
without stopping: every source of randomness and every running statistic is restored.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable

import numpy as np

from .. import _random
from .._checks import check_int
from .._kernels.placement import HOST
from ..io import container as _container
from ..io import tree as _tree
from ..io.container import ModelFileError
from .callbacks import Callback

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "resume", "resume_trainer",
           "save_checkpoint"]

CHECKPOINT_FORMAT = "fastreg-checkpoint"
CHECKPOINT_VERSION = 1
#: Attributes of callbacks without state_dict() that a checkpoint carries (EarlyStopping's).
_CALLBACK_FIELDS = ("best", "best_epoch", "stopped_epoch", "wait", "best_weights")
_HISTORY_FIELDS = ("history", "epochs", "epoch_times", "best_epoch", "best_value", "monitor",
                   "stop_reason", "stopped_early", "wall_time")


def _callback_state(cb) -> dict | None:
    if isinstance(cb, Checkpoint):
        return None
    if callable(getattr(cb, "state_dict", None)):
        return {"state_dict": cb.state_dict()}
    fields = {k: getattr(cb, k) for k in _CALLBACK_FIELDS if hasattr(cb, k)}
    return {"fields": fields} if fields else None


def _load_callback_state(cb, state) -> None:
    if state is None:
        return
    if "state_dict" in state:
        cb.load_state_dict(state["state_dict"])
        return
    for k, v in state.get("fields", {}).items():
        if k in _CALLBACK_FIELDS:
            setattr(cb, k, v)


def save_checkpoint(path: str | os.PathLike, model, optimizer=None, scheduler=None,
                    epoch: int = 0, *, global_step: int = 0, loader=None,
                    callbacks: Iterable = (), history=None, extra: dict | None = None,
                    stop_training: bool = False, stop_reason: str = "") -> None:
    """Write a checkpoint of a training run to ``path`` (atomically).

    Parameters
    ----------
    path : str or os.PathLike
    model : fastreg.nn.Module
    optimizer, scheduler : optional
        Anything with ``state_dict()`` (fastreg's optimizers and schedulers). A ``LambdaLR``
        holding a Python function cannot be stored (TypeError).
    epoch : int
        The last completed epoch (resuming continues with ``epoch + 1``).
    global_step : int
        Optimizer steps taken so far.
    loader : fastreg.data.DataLoader, optional
        Its shuffling state (seed, next epoch).
    callbacks : iterable of Callback
        Their state (``state_dict()`` when they have one, else EarlyStopping's fields).
    history : fastreg.train.History, optional
    extra : dict, optional
        Any additional JSON/array tree of the caller's.
    stop_training, stop_reason : bool, str
        Whether the run had stopped (a callback such as EarlyStopping asked to stop at this
        epoch) and why: resuming a stopped run trains no further.
    """
    arch = None
    try:
        arch = _tree.architecture(model)
    except (TypeError, ValueError):
        pass                    # custom modules: the weights are still saved, by key
    tree = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "model": dict(model.state_dict()),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": _random.default_generator.get_state(),
        "loader": None if loader is None else loader.state_dict(),
        "callbacks": [_callback_state(cb) for cb in callbacks],
        "history": None if history is None else {k: getattr(history, k)
                                                 for k in _HISTORY_FIELDS},
        "extra": extra,
        "stop_training": bool(stop_training),
        "stop_reason": str(stop_reason),
    }
    _container.save_tree(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, tree,
                         {"architecture": arch})


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` as a dict (the tree above).

    Raises :class:`fastreg.ModelFileError` for a truncated, corrupted or hostile file.
    """
    header, tree = _container.load_tree(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    p = os.fspath(path)
    if not isinstance(tree, dict) or not isinstance(tree.get("model"), dict):
        raise ModelFileError(f"{p}: not a fastreg checkpoint tree")
    for key, kind in (("epoch", int), ("global_step", int), ("stop_training", bool),
                      ("stop_reason", str), ("callbacks", list)):
        value = tree.get(key, kind())
        if type(value) is not kind or (kind is int and value < 0):
            raise ModelFileError(f"{p}: checkpoint field {key!r} must be a "
                                 f"{'non-negative ' if kind is int else ''}{kind.__name__}, "
                                 f"got {str(value)[:80]}")
    tree.setdefault("global_step", 0)
    tree.setdefault("stop_training", False)
    tree.setdefault("stop_reason", "")
    tree["architecture"] = header.get("architecture")
    return tree


def _snapshot(model, optimizer, scheduler, loader, callbacks, history) -> list:
    """Undo actions restoring everything :func:`resume` may change (all or nothing)."""
    undo = []
    sd = {k: np.array(HOST.to_host(v), copy=True) for k, v in model.state_dict().items()}
    undo.append(lambda: model.load_state_dict(sd, strict=False))
    if optimizer is not None:
        osd = copy.deepcopy(optimizer.state_dict())
        undo.append(lambda: optimizer.load_state_dict(osd))
    if scheduler is not None:
        ssd = dict(scheduler.__dict__)
        undo.append(lambda: (scheduler.__dict__.clear(), scheduler.__dict__.update(ssd)))
    if loader is not None:
        lsd = dict(loader.__dict__)
        undo.append(lambda: (loader.__dict__.clear(), loader.__dict__.update(lsd)))
    for cb in callbacks:
        csd = dict(cb.__dict__)
        undo.append(lambda cb=cb, csd=csd: (cb.__dict__.clear(), cb.__dict__.update(csd)))
    if history is not None:
        hsd = copy.deepcopy(history.__dict__)
        undo.append(lambda: (history.__dict__.clear(), history.__dict__.update(hsd)))
    rng = copy.deepcopy(_random.default_generator.__dict__)
    undo.append(lambda: (_random.default_generator.__dict__.clear(),
                         _random.default_generator.__dict__.update(rng)))
    return undo


def resume(path: str | os.PathLike, model, optimizer=None, scheduler=None, *, loader=None,
           callbacks: Iterable = (), history=None) -> dict:
    """Restore a run from the checkpoint at ``path``, in place; return the checkpoint dict.

    Loads the model, optimizer and scheduler states, fastreg's random state, the loader's
    shuffling state, the callbacks' states and the History, so that continuing with epoch
    ``ckpt["epoch"] + 1`` reproduces the uninterrupted run bit for bit. Call it after the
    callbacks' ``on_train_begin`` (which resets them) and after building the loader.

    All or nothing: if any part of the checkpoint does not fit (a key, a shape, a value that
    cannot be cast, a malformed optimizer or scheduler state), everything restored so far is
    rolled back and :class:`ModelFileError` names the file and the problem.
    """
    ckpt = load_checkpoint(path)
    p = os.fspath(path)
    callbacks = list(callbacks)
    undo = _snapshot(model, optimizer, scheduler, loader, callbacks, history)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
        if optimizer is not None:
            if ckpt["optimizer"] is None:
                raise ValueError("the checkpoint holds no optimizer state")
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            if ckpt["scheduler"] is None:
                raise ValueError("the checkpoint holds no scheduler state")
            scheduler.load_state_dict(ckpt["scheduler"])
        if loader is not None and ckpt.get("loader") is not None:
            loader.load_state_dict(ckpt["loader"])
        cbs = [cb for cb in callbacks if not isinstance(cb, Checkpoint)]
        states = [s for s in ckpt.get("callbacks", []) if s is not None]
        for cb, state in zip([cb for cb in cbs if _callback_state(cb) is not None], states):
            _load_callback_state(cb, state)
        if history is not None and ckpt.get("history") is not None:
            for k, v in ckpt["history"].items():
                if k in _HISTORY_FIELDS:
                    setattr(history, k, v)
        _random.default_generator.set_state(ckpt["rng"])
    except Exception as exc:        # noqa: BLE001 - whatever the file's content broke
        for action in undo:         # nothing stays half-applied
            action()
        raise ModelFileError(f"{p}: cannot resume from this checkpoint: "
                             f"{type(exc).__name__}: {str(exc)[:500]}") from None
    return ckpt


def resume_trainer(path: str | os.PathLike, trainer) -> int:
    """:func:`resume` for the fit loop's ``Trainer``; returns the epoch to continue after.

    Uses ``trainer.model``, ``optimizer``, ``scheduler``, ``history`` and, when present,
    ``trainer.loader`` and ``trainer.callbacks``; sets ``trainer.epoch`` and
    ``trainer.global_step``.
    """
    ckpt = resume(path, trainer.model, trainer.optimizer, getattr(trainer, "scheduler", None),
                  loader=getattr(trainer, "loader", None),
                  callbacks=getattr(trainer, "callbacks", ()),
                  history=getattr(trainer, "history", None))
    trainer.epoch = ckpt["epoch"]
    trainer.global_step = ckpt["global_step"]
    if ckpt["stop_training"]:           # the run had stopped (e.g. early): it stays finished
        trainer.stop_training = True
        trainer.stop_reason = ckpt["stop_reason"]
    return ckpt["epoch"]


class Checkpoint(Callback):
    """Save a checkpoint of the run after every ``every`` epochs.

    Put it **last** in the callback list, so the states it saves include what the other
    callbacks did in the same epoch. Needs ``trainer.loader`` (and ``trainer.callbacks``) to
    save the shuffling and callback states; without them the model, optimizer, scheduler and
    random states are still saved.

    Parameters
    ----------
    path : str or os.PathLike
        Overwritten atomically each time.
    every : int, default 1
        Epoch period.
    """

    def __init__(self, path: str | os.PathLike, every: int = 1) -> None:
        check_int("every", every, 1)
        self.path = os.fspath(path)
        self.every = int(every)
        self.last_saved_epoch: int | None = None

    def save(self, trainer, epoch: int) -> None:
        save_checkpoint(self.path, trainer.model, trainer.optimizer,
                        getattr(trainer, "scheduler", None), epoch,
                        global_step=getattr(trainer, "global_step", 0),
                        loader=getattr(trainer, "loader", None),
                        callbacks=getattr(trainer, "callbacks", ()),
                        history=getattr(trainer, "history", None),
                        stop_training=bool(getattr(trainer, "stop_training", False)),
                        stop_reason=str(getattr(trainer, "stop_reason", "") or ""))
        self.last_saved_epoch = epoch

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if epoch % self.every == 0:
            self.save(trainer, epoch)

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, every={self.every})"
