"""fastreg.nn: layers, losses and the Module base class, named as in ``torch.nn``.

``fastreg.nn.init`` (initializers) and ``fastreg.nn.functional`` are imported on first access.
"""
from __future__ import annotations

import importlib

from .layers import (
    BatchNorm1d,
    Dropout,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .module import Module
from .parameter import Parameter

__all__ = [
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "functional",
    "init",
]


def __getattr__(name):
    if name in ("init", "functional"):
        mod = importlib.import_module(f"fastreg.nn.{name}")
        globals()["init"] = mod
        return mod
    raise AttributeError(f"module 'fastreg.nn' has no attribute {name!r}")
