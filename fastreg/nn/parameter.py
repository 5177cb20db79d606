"""Parameter: a learnable array and its gradient."""
from __future__ import annotations

import numpy as np

from .._kernels import placement
from .._kernels.placement import HOST
from . import _tape
from ._tape import _local


class Parameter:
    """A learnable array (``data``) with its gradient (``grad``), as ``torch.nn.Parameter``.

    Contract shared by modules and optimizers:

    * ``data`` and ``grad`` are C-contiguous ndarrays of the module's dtype (CUDA device arrays
      once the module is moved with ``Module.to("cuda")``). An optimizer may
      re-point them at views of one flat buffer (so a whole group steps in one kernel call);
      therefore code **never caches** ``p.data``/``p.grad`` across calls and writes into them in
      place (``p.data[...] = value``) instead of rebinding.
    * Backward passes **accumulate** into ``grad`` (``+=``), allocating zeros when it is None.
    * ``Optimizer.zero_grad`` zeroes lazily: it marks the gradient *stale* instead of writing
      zeros over the whole flat gradient each step. A stale gradient reads as zeros (``grad``,
      ``grad_buffer()`` write them first), and a kernel that writes a whole gradient may take a
      stale one to overwrite instead of accumulate (``Linear``'s weight-gradient GEMM: no fill,
      and no read of the zeros).
    * ``regularize`` is True for weights that L1/L2 penalties and weight-decay groups apply to by
      default (Linear weights), False for biases and normalization parameters.
    """

    __slots__ = ("_data", "_grad", "_stale", "regularize", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True, regularize: bool = False):
        place = placement.of(data)
        if place is None:
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        self._data = place.contiguous(data, "data")
        self._grad: np.ndarray | None = None
        self._stale = False         # grad's values are void: it reads as zeros (zero_grad)
        self.requires_grad = bool(requires_grad)
        self.regularize = bool(regularize)

    # Layers hand ``data`` and ``grad`` to kernels that trust their shapes, so re-binding them
    # is checked here, once: same shape and dtype, C-contiguous, a host or device array.
    def _get_data(self) -> np.ndarray:
        return self._data

    def _get_data_recording(self):
        # while some forward records (fastreg.nn._tape), a read inside this thread's recording
        # forward gives the parameter's leaf on the tape, so arithmetic on it carries its
        # gradient; any other read gives the plain array
        tape = _local.tape
        if tape is not None and tape.record:
            return tape.param(self)
        return self._data

    def _set_data(self, value) -> None:
        self._data = _checked(value, self._data, "data")

    #: the array (see _recording_switch: the class swaps in the recording getter while a
    #: tape records anywhere, so plain reads stay a bare attribute read)
    data = property(_get_data, _set_data)

    @property
    def grad(self) -> np.ndarray | None:
        if self._stale:
            self._write_zeros()
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        self._grad = None if value is None else _checked(value, self._data, "grad")
        self._stale = False

    def _write_zeros(self) -> None:
        """Make a stale (lazily zeroed) gradient real zeros."""
        self._stale = False
        g = self._grad
        placement.of(g).fill(g, 0.0)

    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        """Number of elements (torch's ``Parameter.numel()``)."""
        return int(self._data.size)

    # Arithmetic reads ``data`` (recorded inside a taped forward): ``self.alpha * h`` as torch.
    def __add__(self, o):
        return self.data + o

    def __radd__(self, o):
        return o + self.data

    def __sub__(self, o):
        return self.data - o

    def __rsub__(self, o):
        return o - self.data

    def __mul__(self, o):
        return self.data * o

    def __rmul__(self, o):
        return o * self.data

    def __truediv__(self, o):
        return self.data / o

    def __rtruediv__(self, o):
        return o / self.data

    def __matmul__(self, o):
        return self.data @ o

    def __rmatmul__(self, o):
        return o @ self.data

    def __neg__(self):
        return -self.data

    def __pow__(self, o):
        return self.data ** o

    @property
    def T(self):
        return self.data.T

    def __getitem__(self, idx):
        return self.data[idx]

    def sum(self, *args, **kwargs):
        return self.data.sum(*args, **kwargs)

    def mean(self, *args, **kwargs):
        return self.data.mean(*args, **kwargs)

    def reshape(self, *shape):
        return self.data.reshape(*shape)

    __array_priority__ = 1001.0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = [i.data if isinstance(i, Parameter) else i for i in inputs]
        return getattr(ufunc, method)(*args, **kwargs)

    def grad_buffer(self) -> np.ndarray:
        """``grad``, allocated as zeros on first use, for a backward pass to accumulate into."""
        if self._grad is None:
            d = self._data
            self._grad = placement.of(d).zeros(d.shape, d.dtype)
        elif self._stale:
            self._write_zeros()
        return self._grad

    def grad_to_overwrite(self) -> np.ndarray | None:
        """``grad`` if it is stale (zeroed lazily), for a kernel that writes all of it instead
        of accumulating (it then counts as written); None otherwise: accumulate into
        :meth:`grad_buffer`."""
        if self._stale:
            self._stale = False
            return self._grad
        return None

    @property
    def is_cuda(self) -> bool:
        """True if ``data`` lives on the GPU."""
        return placement.of(self._data) is not HOST

    def numpy(self) -> np.ndarray:
        """``data`` as a numpy array (a host copy when it lives on the GPU)."""
        return HOST.to_host(self._data)

    def __repr__(self) -> str:
        where = ", device='cuda'" if self.is_cuda else ""
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype}{where})"


def _checked(value, like, what: str):
    """``value`` if it may stand for an array shaped like ``like`` (else a clear error)."""
    place = placement.of(value)
    if place is None:
        raise TypeError(f"Parameter.{what} must be a numpy.ndarray, got {type(value).__name__}")
    if tuple(value.shape) != tuple(like.shape) or value.dtype != like.dtype:
        raise ValueError(f"Parameter.{what} must have shape {tuple(like.shape)} and dtype "
                         f"{like.dtype} (the parameter's), got shape {tuple(value.shape)} and "
                         f"dtype {value.dtype}; copy values in place with p.data[...] = value")
    if not place.is_contiguous(value):
        raise ValueError(f"Parameter.{what} must be C-contiguous")
    return value


def _recording_switch(on: bool) -> None:
    Parameter.data = property(Parameter._get_data_recording if on else Parameter._get_data,
                              Parameter._set_data)


_tape._hooks.append(_recording_switch)
