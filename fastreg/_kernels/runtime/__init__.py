"""Runtimes the backends run on: the thread count every CPU backend uses, the Numba and OpenMP
thread pools (``numba.py``, ``cy.pyx``) and the CUDA runtime (``cuda.py``).

The thread count is pushed down here by :func:`fastreg.set_num_threads` (``fastreg._config``);
backends read it with :func:`get_num_threads` and never import ``fastreg._config`` themselves.
Setting it never imports numba: a pool that is not loaded yet gets the count when it loads
(:func:`load_pool`).
"""
from __future__ import annotations

import importlib
import os
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


def load_pool(backend: str, route_blas: bool = True) -> None:
    """Import the thread pool of a CPU backend ("numba" or "cython") and give it the count.

    The OpenMP pool is given the count only when the user chose one: otherwise its own limit
    (``OMP_NUM_THREADS``, threadpoolctl) is left in force and read by :func:`get_num_threads`.

    ``route_blas=False`` (the serving path, :mod:`fastreg.inference`, which never calls BLAS)
    leaves the OpenBLAS routing of ``set_blas_interop("auto")`` pending (reading
    ``/proc/self/maps`` and the ctypes calls cost ~1 ms of a cold start): it is done by the next
    ``load_pool("cython")`` (every kernel the dispatcher loads: training, a predictor stage
    other than a Linear chain), by ``set_blas_interop`` and before :func:`blas_interop_state`
    reports. A serving script that also runs threaded NumPy matmuls between its predictions
    routes them with ``fastreg.set_blas_interop("auto")``.
    """
    name = {"numba": _POOLS[0], "cython": _POOLS[1]}.get(backend)
    if name is None:
        return
    if name not in sys.modules:
        mod = importlib.import_module(name)
        if backend == "cython":
            _omp_limit[0] = mod.get_max_threads
            if _user[0]:
                mod.set_num_threads(_threads[0])
            _blas["pending"] = _blas["mode"] == "auto"
        else:
            mod.set_num_threads(get_num_threads())
    if route_blas and backend == "cython":
        route_blas_pending()


def route_blas_pending() -> None:
    """Route OpenBLAS onto the OpenMP pool now if :func:`load_pool` left it pending."""
    if _blas["pending"]:
        _blas["pending"] = False
        if _blas["mode"] == "auto":
            _blas_route(sys.modules[_POOLS[1]])


# --- OpenBLAS on fastreg's OpenMP pool (fastreg.set_blas_interop) ------------------------------
#
# OpenBLAS's idle pthreads spin ~0.1 s after every threaded call (OPENBLAS_THREAD_TIMEOUT, read
# once when the library loads), and in that time they take the cores from fastreg's OpenMP
# threads: a fused Linear+ReLU right after a NumPy matmul ran several times slower. OpenBLAS
# >= 0.3.27 takes a callback that runs its parallel jobs instead of its own threads; "auto" points
# it at fastreg_blas_threads (runtime/blas_pool.h), which runs them on the OpenMP pool the Cython
# kernels use, so one pool owns the cores. Nothing else of OpenBLAS changes (its thread count,
# and so threadpoolctl's view, stay as they were); "off" puts back the callback that was there.

#: the names OpenBLAS builds export the setter under (scipy-openblas prefixes and suffixes it)
_SETTER_NAMES = tuple(f"{pre}openblas_set_threads_callback_function{suf}"
                      for pre in ("", "scipy_") for suf in ("", "64_", "_64"))
_blas: dict = {"mode": "auto", "routed": {}, "skipped": {}, "forked": False, "pending": False}
_FORKED = "forked child: libgomp's thread pool does not survive fork(), OpenBLAS runs its own"


def _blas_after_fork_in_child() -> None:
    """In a fork()ed child, give OpenBLAS its own threads back: libgomp's pool does not survive
    fork (a parallel region in the child waits forever for the parent's threads), so a NumPy
    matmul routed onto it would hang (multiprocessing's "fork", forked data-loader workers)."""
    _blas_unroute()
    _blas["forked"] = True
    _blas["skipped"]["*"] = _FORKED


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_blas_after_fork_in_child)


def _openblas_paths() -> list[str]:
    """Paths of the OpenBLAS libraries loaded in this process (NumPy's, SciPy's ...)."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                base = path.rsplit("/", 1)[-1].lower()
                if "openblas" in base and ".so" in base and path not in paths:
                    paths.append(path)
        return paths
    except OSError:  # not Linux: ask threadpoolctl (a dependency) which BLAS is loaded
        try:
            from threadpoolctl import threadpool_info
        except ImportError:  # pragma: no cover
            return paths
        return [i["filepath"] for i in threadpool_info() if i.get("internal_api") == "openblas"]


def _blas_route(pool) -> None:
    """Point every loaded OpenBLAS that has no threads callback yet at fastreg's pool."""
    import ctypes

    if not pool.HAVE_OPENMP:
        _blas["skipped"]["*"] = "fastreg was built without OpenMP"
        return
    if _blas["forked"]:
        _blas["skipped"]["*"] = _FORKED
        return
    address = pool.blas_callback_address()
    for path in _openblas_paths():
        if path in _blas["routed"] or path in _blas["skipped"]:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            _blas["skipped"][path] = f"cannot open: {exc}"
            continue
        setter = next((getattr(lib, n) for n in _SETTER_NAMES if hasattr(lib, n)), None)
        if setter is None:
            _blas["skipped"][path] = "no threads callback (OpenBLAS < 0.3.27)"
            continue
        try:
            previous = ctypes.c_void_p.in_dll(lib, "openblas_threads_callback_").value
        except ValueError:  # the variable is not exported: assume no callback was set
            previous = None
        if previous not in (None, address):
            _blas["skipped"][path] = "another threads callback is installed: left alone"
            continue
        setter.argtypes, setter.restype = [ctypes.c_void_p], None
        setter(address)
        _blas["routed"][path] = (setter, previous)


def _blas_unroute() -> None:
    for setter, previous in _blas["routed"].values():
        setter(previous)
    _blas["routed"].clear()
    _blas["skipped"].clear()


def set_blas_interop(mode: str) -> None:
    """Record ``mode`` (already checked) and apply it to the OpenBLAS libraries loaded now."""
    _blas["mode"] = mode
    _blas["pending"] = False
    if mode == "off":
        _blas_unroute()
        return
    pool = sys.modules.get(_POOLS[1])
    if pool is not None:  # else load_pool("cython") routes when the kernels load
        _blas_route(pool)


def blas_interop_state() -> dict:
    """{"mode", "routed": [paths], "skipped": {path: why}} for fastreg.get_blas_interop."""
    route_blas_pending()
    return {"mode": _blas["mode"], "routed": sorted(_blas["routed"]),
            "skipped": dict(_blas["skipped"])}
