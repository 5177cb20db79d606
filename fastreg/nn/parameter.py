"""Parameter: a learnable array and its gradient."""
from __future__ import annotations

import numpy as np


class Parameter:
    """A learnable array (``data``) with its gradient (``grad``), as ``torch.nn.Parameter``.

    Contract shared by modules and optimizers:

    * ``data`` and ``grad`` are C-contiguous ndarrays of the module's dtype. An optimizer may
      re-point them at views of one flat buffer (so a whole group steps in one kernel call);
      therefore code **never caches** ``p.data``/``p.grad`` across calls and writes into them in
      place (``p.data[...] = value``) instead of rebinding.
    * Backward passes **accumulate** into ``grad`` (``+=``), allocating zeros when it is None.
    * ``regularize`` is True for weights that L1/L2 penalties and weight-decay groups apply to by
      default (Linear weights), False for biases and normalization parameters.
    """

    __slots__ = ("data", "grad", "regularize", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True, regularize: bool = False):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        self.data = np.ascontiguousarray(data)
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self.regularize = bool(regularize)

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def grad_buffer(self) -> np.ndarray:
        """``grad``, allocated as zeros on first use, for a backward pass to accumulate into."""
        if self.grad is None:
            self.grad = np.zeros_like(self.data)
        return self.grad

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"
