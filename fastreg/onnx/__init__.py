"""fastreg.onnx: ONNX files both ways (the optional ``fastreg[onnx]`` extra).

* :func:`export` writes a fastreg model (a ``Sequential`` tree of the built-in layers) as an
  ONNX graph built with the ``onnx`` package's helpers, checked with ``onnx.checker``;
* :func:`load` reads an MLP-shaped ONNX graph (a chain of Gemm / MatMul+Add, BatchNormalization,
  LayerNormalization, Relu / LeakyRelu / Sigmoid / Tanh, Flatten, Dropout / Identity, Reshape as
  a flatten) into a fastreg ``Sequential`` that serves it with fastreg's predictor.

Importing this package does not import ``onnx``: the functions import it when called, and say
how to install it when it is missing. ``import fastreg`` and ``fastreg.load`` never import it.
"""
from __future__ import annotations

from ._export import export
from ._import import load

__all__ = ["export", "load"]
