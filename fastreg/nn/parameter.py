"""Parameter: a learnable array and its gradient."""
from __future__ import annotations

import numpy as np

from .._kernels.runtime.cuda import is_device_array, to_host, zeros


class Parameter:
    """A learnable array (``data``) with its gradient (``grad``), as ``torch.nn.Parameter``.

    Contract shared by modules and optimizers:

    * ``data`` and ``grad`` are C-contiguous ndarrays of the module's dtype (CUDA device arrays
      once the module is moved with ``Module.to("cuda")``). An optimizer may
      re-point them at views of one flat buffer (so a whole group steps in one kernel call);
      therefore code **never caches** ``p.data``/``p.grad`` across calls and writes into them in
      place (``p.data[...] = value``) instead of rebinding.
    * Backward passes **accumulate** into ``grad`` (``+=``), allocating zeros when it is None.
    * ``regularize`` is True for weights that L1/L2 penalties and weight-decay groups apply to by
      default (Linear weights), False for biases and normalization parameters.
    """

    __slots__ = ("data", "grad", "regularize", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True, regularize: bool = False):
        if is_device_array(data):
            if not data.is_c_contiguous():
                raise ValueError("data must be a C-contiguous device array")
            self.data = data
        elif not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        else:
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
            d = self.data
            self.grad = zeros(d.shape, d.dtype) if is_device_array(d) else np.zeros_like(d)
        return self.grad

    @property
    def is_cuda(self) -> bool:
        """True if ``data`` lives on the GPU."""
        return is_device_array(self.data)

    def numpy(self) -> np.ndarray:
        """``data`` as a numpy array (a host copy when it lives on the GPU)."""
        return to_host(self.data)

    def __repr__(self) -> str:
        where = ", device='cuda'" if self.is_cuda else ""
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{where})"
