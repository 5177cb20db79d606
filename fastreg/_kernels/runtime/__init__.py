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
#: True once the user chose a count (fastreg.set_num_threads): it then wins over every limit.
_user = [False]
#: omp_get_max_threads of the OpenMP runtime the Cython kernels use, once it is loaded.
_omp_limit = [None]


def get_num_threads() -> int:
    """The number of threads CPU kernels use now.

    The count :func:`fastreg.set_num_threads` chose, if it was called. Otherwise the default
    (the usable cores, capped by ``OMP_NUM_THREADS``), lowered to the OpenMP limit in force for
    this thread -- what ``threadpoolctl.threadpool_limits(n)`` (and so joblib/scikit-learn's
    worker limits) set on the OpenMP runtime -- so fastreg never oversubscribes inside them.
    """
    n = _threads[0]
    if not _user[0]:
        limit = _omp_limit[0]
        if limit is not None:
            m = limit()
            if 0 < m < n:
                return m
    return n


def set_num_threads(n: int, user: bool = False) -> None:
    """Record ``n`` (already checked); a user's choice is pushed into every loaded pool."""
    _threads[0] = int(n)
    if user:
        _user[0] = True
    for name in _POOLS:
        mod = sys.modules.get(name)
        if mod is not None and (_user[0] or name == _POOLS[0]):
            mod.set_num_threads(n)


def load_pool(backend: str) -> None:
    """Import the thread pool of a CPU backend ("numba" or "cython") and give it the count.

    The OpenMP pool is given the count only when the user chose one: otherwise its own limit
    (``OMP_NUM_THREADS``, threadpoolctl) is left in force and read by :func:`get_num_threads`.
    """
    name = {"numba": _POOLS[0], "cython": _POOLS[1]}.get(backend)
    if name is not None and name not in sys.modules:
        mod = importlib.import_module(name)
        if backend == "cython":
            _omp_limit[0] = mod.get_max_threads
            if _user[0]:
                mod.set_num_threads(_threads[0])
        else:
            mod.set_num_threads(get_num_threads())
