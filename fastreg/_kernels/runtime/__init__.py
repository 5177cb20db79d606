"""Runtimes the backends run on: the thread count every CPU backend uses, the Numba and OpenMP
thread pools (``numba.py``, ``cy.pyx``) and the CUDA runtime (``cuda.py``).

The thread count is pushed down here by :func:`fastreg.set_num_threads` (``fastreg._config``);
backends read it with :func:`get_num_threads` and never import ``fastreg._config`` themselves.
Setting it never imports numba: a pool that is not loaded yet gets the count when it loads
(:func:`load_pool`).
"""
from __future__ import annotations

import importlib
import sys

_POOLS = ("fastreg._kernels.runtime.numba", "fastreg._kernels.runtime.cy")
_threads = [1]


def get_num_threads() -> int:
    """The number of threads CPU kernels use (set through :func:`fastreg.set_num_threads`)."""
    return _threads[0]


def set_num_threads(n: int) -> None:
    """Record ``n`` (already checked) and push it into every thread pool that is loaded."""
    _threads[0] = int(n)
    for name in _POOLS:
        mod = sys.modules.get(name)
        if mod is not None:
            mod.set_num_threads(n)


def load_pool(backend: str) -> None:
    """Import the thread pool of a CPU backend ("numba" or "cython") and give it the count."""
    name = {"numba": _POOLS[0], "cython": _POOLS[1]}.get(backend)
    if name is not None and name not in sys.modules:
        importlib.import_module(name).set_num_threads(_threads[0])
