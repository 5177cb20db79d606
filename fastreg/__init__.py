"""fastreg: a CPU engine for training and serving regularized neural networks.

Numba and Cython kernels behind a Module API shaped like PyTorch's. ``import fastreg`` is light:
it imports numpy only (not even numpy.random: ``manual_seed`` and ``Generator`` load it on
first access); numba is imported the first time a numba kernel runs, and the submodules
(``nn``, ``optim``, ``data``, ``train``, ``onnx``...) on first attribute access.
"""
from __future__ import annotations

import importlib

from ._config import (
    get_backend,
    get_blas_interop,
    get_default_dtype,
    get_num_threads,
    set_backend,
    set_blas_interop,
    set_default_dtype,
    set_num_threads,
)

__version__ = "0.1.0"

#: ``onnx`` is fastreg.onnx, which imports the onnx package only when its functions run;
#: ``distributed`` imports mpi4py only in ``init()``.
_SUBMODULES = ("nn", "optim", "data", "train", "inference", "io", "cuda", "distributed", "onnx",
               "amp")
#: Names re-exported from fastreg.io, imported on first access.
_IO_NAMES = ("save", "load", "ModelFileError", "from_torch_state_dict")
#: Names re-exported from fastreg.nn._tape (gradient modes, cat), imported on first access.
_TAPE_NAMES = ("no_grad", "enable_grad", "is_grad_enabled", "set_grad_enabled", "cat")
#: Names re-exported from fastreg._random, imported on first access (numpy.random is not needed
#: to load a model file and predict: ``fastreg.inference.load``).
_RANDOM_NAMES = ("Generator", "initial_seed", "manual_seed")
#: Names re-exported from fastreg.amp (bf16 mixed precision), imported on first access.
_AMP_NAMES = ("autocast", "is_autocast_enabled")

__all__ = [
    "Generator",
    "ModelFileError",
    "amp",
    "autocast",
    "cat",
    "cuda",
    "data",
    "distributed",
    "enable_grad",
    "from_torch_state_dict",
    "get_backend",
    "get_blas_interop",
    "get_default_dtype",
    "get_num_threads",
    "inference",
    "initial_seed",
    "io",
    "is_autocast_enabled",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "nn",
    "no_grad",
    "onnx",
    "optim",
    "save",
    "set_backend",
    "set_blas_interop",
    "set_default_dtype",
    "set_grad_enabled",
    "set_num_threads",
    "study",
    "train",
]


def __getattr__(name):
    if name in _SUBMODULES:
        mod = importlib.import_module(f"fastreg.{name}")
        globals()[name] = mod
        return mod
    if name in _IO_NAMES:
        value = getattr(importlib.import_module("fastreg.io"), name)
        globals()[name] = value
        return value
    if name in _TAPE_NAMES:
        value = getattr(importlib.import_module("fastreg.nn._tape"), name)
        globals()[name] = value
        return value
    if name in _RANDOM_NAMES:
        value = getattr(importlib.import_module("fastreg._random"), name)
        globals()[name] = value
        return value
    if name in _AMP_NAMES:
        value = getattr(importlib.import_module("fastreg.amp"), name)
        globals()[name] = value
        return value
    if name == "study":   # the package fastreg.study, callable: fastreg.study(data, ...)
        value = importlib.import_module("fastreg.study")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastreg' has no attribute {name!r}")
