"""Optimizers shaped like ``torch.optim``, stepping each param group in one fused kernel call.

``SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Adagrad``, ``Adadelta`` (torch's algorithms, defaults
and validation messages) plus fastreg's ``l1``/``l2`` penalty options on every group, and
``param_groups(model, weight_decay, l1, l2)`` to regularize weights but not biases/norm parameters.
``fastreg.optim.lr_scheduler`` is imported on first access.
"""
from __future__ import annotations

import importlib

from .algorithms import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop
from .optimizer import Optimizer, param_groups

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "lr_scheduler",
    "param_groups",
]


def __getattr__(name):
    # lr_scheduler is written separately; load it lazily so this package imports without it.
    if name == "lr_scheduler":
        mod = importlib.import_module(f"{__name__}.lr_scheduler")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
