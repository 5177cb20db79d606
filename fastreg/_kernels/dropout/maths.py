"""The Philox4x32-10 rounds, written once for the Numba and CUDA dropout backends.

Plain Python (no numba import here): ``dropout/numba.py`` compiles :func:`philox4x32_10` with
``numba.njit(inline="always")`` and ``dropout/cuda.py`` with ``numba.cuda.jit(device=True,
inline=True)``; both call it from their own mask loops. The C backend reads the same constants
from ``common/philox.h`` (a test checks they agree with ``codes.py``); the generator and how a
mask is drawn from it are specified in ``dropout/__init__.py``.

Editing this file: numba's on-disk cache (``cache=True``) is keyed on the source file of each
jitted kernel, not on the files it inlines from, so kernels cached before an edit here keep the
old maths. Touch the backend modules that import this one (or delete their ``__pycache__``
``*.nbi``/``*.nbc`` files) after changing it.

32-bit words are held in uint64 with explicit ``& 0xffffffff``: every product ``M * c`` has both
factors < 2**32, so it is exact in 64 bits and its high half is ``hi32``. On the CPU LLVM lowers
these products to 32x32->64 multiplies (vpmuludq); on the GPU no mulhi intrinsic is needed
(the CUDA simulator has none). All operands are uint64: numba types uint64 op int64 as float64.
The same function also runs on NumPy uint64 scalars or arrays.
"""
from __future__ import annotations

import numpy as np

from .codes import _MASK32, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

M0 = np.uint64(PHILOX_M0)
M1 = np.uint64(PHILOX_M1)
W0 = np.uint64(PHILOX_W0)
W1 = np.uint64(PHILOX_W1)
LO = np.uint64(_MASK32)
S32 = np.uint64(32)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1): all uint64 < 2**32."""
    for _ in range(PHILOX_ROUNDS):
        p0 = M0 * c0                        # both factors < 2**32: exact 64-bit product
        p1 = M1 * c2
        c0, c1, c2, c3 = ((p1 >> S32) ^ c1 ^ k0, p1 & LO,
                          (p0 >> S32) ^ c3 ^ k1, p0 & LO)
        k0 = (k0 + W0) & LO
        k1 = (k1 + W1) & LO
    return c0, c1, c2, c3
