"""scikit-learn estimators backed by fastreg's kernels (the ``fastreg[sklearn]`` extra).

``from fastreg.sklearn import MLPClassifier, MLPRegressor`` is a drop-in replacement for
``sklearn.neural_network``'s classes of the same names: same constructor parameters, defaults,
fitted attributes and methods, trained by fastreg's fused kernels. ``import fastreg`` never
imports scikit-learn; this package imports it when one of its classes is first used.
"""
from __future__ import annotations

import importlib

__all__ = ["MLPClassifier", "MLPRegressor"]


def __getattr__(name):
    if name in __all__:
        try:
            importlib.import_module("sklearn")
        except ImportError as e:   # pragma: no cover - exercised only without scikit-learn
            raise ImportError(f"fastreg.sklearn.{name} needs scikit-learn: "
                              "pip install 'fastreg[sklearn]'") from e
        value = getattr(importlib.import_module(f"{__name__}._mlp"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
