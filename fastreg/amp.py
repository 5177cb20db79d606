r"""bf16 mixed precision: ``fastreg.autocast``, torch's CPU autocast for fastreg's layers.

Inside ``with fr.autocast("bf16"):`` every float32 ``Linear`` runs its products with
bfloat16-rounded operands and float32 accumulation, as ``torch.autocast("cpu",
dtype=torch.bfloat16)`` runs ``torch.nn.Linear``:

.. math::

    y = \mathrm{bf16}\big(\mathrm{bf16}(x)\,\mathrm{bf16}(W)^\top + \mathrm{bf16}(b)\big)

and the backward of a forward recorded under autocast (whether or not autocast is still on when
``backward`` runs, as torch's graph remembers the casts) uses the same bf16 copies and the
gradient rounded to bf16, each product rounded to bf16 once before it is accumulated into the
float32 ``.grad``:

.. math::

    dX = \mathrm{bf16}\big(\mathrm{bf16}(dY)\,\mathrm{bf16}(W)\big), \quad
    dW \mathrel{+}= \mathrm{bf16}\big(\mathrm{bf16}(dY)^\top \mathrm{bf16}(x)\big), \quad
    db \mathrel{+}= \mathrm{bf16}\big(\textstyle\sum_n \mathrm{bf16}(dY)_n\big)

:math:`\mathrm{bf16}(v)` rounds a float32 to the nearest bfloat16 (8 exponent bits like
float32, 7 explicit mantissa bits: a relative step of :math:`2^{-8}`), ties to even; the values
are kept in float32 arrays (fastreg has no bf16 array type). A product of two bf16 numbers is
exact in float32, so the products' only other error is float32 accumulation.

Everything else stays float32: norms, activations, dropout, softmax and the losses, the master
weights (never stored rounded) and the optimizer state. torch differs there in one way: its
bf16 ``Linear`` output is a bf16 tensor, so the ops that follow it (BatchNorm, ReLU, Dropout,
softmax -- all but the float32-listed losses) run on bf16 tensors and round their outputs and
gradients to bf16 too; fastreg rounds only the GEMM results, so its numbers sit between torch's
autocast and float32 (measured in tests/test_autocast.py).

Like torch, autocast leaves float64 layers alone (only float32 ops are autocast), and CUDA
device arrays (torch's CPU autocast does not touch CUDA tensors either). The state is per thread
(``threading.local``, as torch's): another thread does not see this thread's autocast.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["PRECISIONS", "autocast", "get_autocast_dtype", "is_autocast_enabled"]

#: Names accepted for the autocast dtype (all mean bfloat16).
_DTYPES = {"bf16": "bf16", "bfloat16": "bf16"}
#: ``fit(precision=...)`` values: float32 (no autocast) or bf16 autocast.
PRECISIONS = ("float32", "bf16")


class _State(threading.local):
    enabled = False      # class default: a new thread starts with autocast off


_state = _State()


def is_autocast_enabled() -> bool:
    """True inside an enabled :class:`autocast` (this thread)."""
    return _state.enabled


def get_autocast_dtype() -> str:
    """The autocast dtype: ``"bf16"`` (the only one fastreg has)."""
    return "bf16"


class autocast:
    """Context manager and decorator: float32 ``Linear`` products in bf16 (see the module doc).

    Parameters
    ----------
    dtype : {"bf16", "bfloat16"}
        The lower precision (torch's ``dtype=torch.bfloat16``).
    enabled : bool
        False turns autocast off inside the block (also inside an enabled outer block), as
        torch's ``autocast(enabled=False)``.

    Nesting restores the outer state on exit; the state is per thread.

    Examples
    --------
    >>> with fr.autocast("bf16"):
    ...     loss = loss_fn(model(x), y)
    ... model.backward(loss_fn.backward())    # the recorded products run in bf16
    """

    def __init__(self, dtype: str = "bf16", enabled: bool = True, cache_enabled=None):
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        self.dtype = _DTYPES[dtype]
        self.enabled = bool(enabled)
        self.cache_enabled = cache_enabled      # torch's argument: fastreg keeps no weight cache
        self._prev: list[bool] = []

    def __enter__(self):
        self._prev.append(_state.enabled)
        _state.enabled = self.enabled
        return self

    def __exit__(self, *exc) -> bool:
        _state.enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return wrapped

    def __repr__(self) -> str:
        return f"autocast({self.dtype!r}, enabled={self.enabled})"
