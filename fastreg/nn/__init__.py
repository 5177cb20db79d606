"""fastreg.nn: layers, losses and the Module base class, named as in ``torch.nn``.

``fastreg.nn.init`` (initializers), ``fastreg.nn.functional`` (functional activations and
dropout) and ``fastreg.nn.utils`` (gradient clipping, parameter vectors) are imported on first
access.
"""
from __future__ import annotations

import importlib

from .containers import ModuleDict, ModuleList
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
from .sparse import Embedding

__all__ = [
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "MSELoss",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "functional",
    "init",
    "utils",
]


def __getattr__(name):
    if name in ("init", "functional", "utils"):
        mod = importlib.import_module(f"fastreg.nn.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'fastreg.nn' has no attribute {name!r}")
