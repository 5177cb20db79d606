"""Process-wide settings: backend, thread count, default dtype.

One place for each fact: the list of backends, the default dtype and the thread count live here
and nowhere else. Importing this module imports numpy only.
"""
from __future__ import annotations

import os

import numpy as np

from ._kernels import runtime as _runtime

#: Backends a user can name. "auto" picks per op (see fastreg._kernels._dispatch.AUTO); "cuda"
#: runs models on the GPU (fastreg/_kernels/runtime/cuda.py; needs a GPU or the simulator).
BACKENDS = ("auto", "numba", "cython", "cuda")
#: Floating dtypes every kernel supports.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: How long an idle OpenMP worker spins before sleeping (libgomp's GOMP_SPINCOUNT). With
#: libgomp's default (300 000 spins) a worker that finished its share keeps a core busy long after
#: the kernel returns; on a loaded machine that core is taken from the threads doing real work
#: and 2-thread kernels ran 3-50x slower than 1-thread ones. 10 000 spins still bridges
#: back-to-back kernels (no measurable change on a quiet 2-core machine, within its +-15% noise).
#: Set before libgomp loads (our Cython extensions load it lazily); a value the user exported wins.
GOMP_SPINCOUNT_DEFAULT = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT_DEFAULT)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_backend(name) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def _default_threads() -> int:
    """The usable cores, capped by ``OMP_NUM_THREADS`` when it holds a positive integer (as
    joblib's and Dask's workers set it), so a worker process does not oversubscribe."""
    n = _cpu_count()
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return n


#: What fastreg.set_blas_interop accepts: "auto" runs OpenBLAS's threads on fastreg's OpenMP pool
#: where the loaded OpenBLAS allows it; "off" leaves OpenBLAS's own threads alone.
BLAS_INTEROP_MODES = ("auto", "off")


def _check_blas_interop(mode) -> str:
    if not isinstance(mode, str) or mode.lower() not in BLAS_INTEROP_MODES:
        raise ValueError(f"mode must be one of {BLAS_INTEROP_MODES}, got {mode!r}")
    return mode.lower()


_state = {
    "backend": _check_backend(os.environ.get("FASTREG_BACKEND", "auto")),
    "num_threads": _default_threads(),
    "threads_set_by_user": False,
    "default_dtype": np.dtype(np.float32),
}
_runtime.set_num_threads(_state["num_threads"])
_runtime.set_blas_interop(_check_blas_interop(os.environ.get("FASTREG_BLAS_INTEROP", "auto")))


def set_backend(name: str) -> None:
    """Select the kernel backend: "numba", "cython", "auto" (the default, per-op fastest) or
    "cuda".

    The CPU backends choose which implementation runs on host arrays. "cuda" makes models run on
    the GPU: a model called with the "cuda" backend set is moved to the device first (as
    ``model.to("cuda")``), and its outputs are device arrays. Kernels given CUDA device arrays
    always run on the GPU, whatever the setting. Without a usable GPU, "cuda" raises a
    RuntimeError that says so (and how to run numba's CUDA simulator instead).

    The environment variable ``FASTREG_BACKEND`` sets the initial value.
    """
    name = _check_backend(name)
    if name == "cuda":
        from ._kernels.runtime import cuda as cuda_runtime
        cuda_runtime.require()
    _state["backend"] = name
    from ._kernels import _dispatch
    _dispatch._default.clear()


def get_backend() -> str:
    """Return the backend chosen with :func:`set_backend` (or ``FASTREG_BACKEND``)."""
    return _state["backend"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every parallel region: Numba, OpenMP (Cython kernels) and BLAS.

    All three pools are set together so that no library oversubscribes the cores.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _state["num_threads"] = int(n)
    _state["threads_set_by_user"] = True
    apply_num_threads()


def get_num_threads() -> int:
    """Return the number of threads the kernels use now.

    Without :func:`set_num_threads`: the usable cores, capped by ``OMP_NUM_THREADS`` and by the
    OpenMP limit in force (``threadpoolctl.threadpool_limits``, joblib's worker limits); with
    it: the count set, whatever the limits.
    """
    return _runtime.get_num_threads()


def apply_num_threads() -> None:
    """Push the thread count into every runtime that is already loaded.

    Runtimes loaded later get it from the dispatcher when they are first imported, so calling
    ``set_num_threads`` never imports numba by itself.
    """
    n = _state["num_threads"]
    _runtime.set_num_threads(n, user=_state["threads_set_by_user"])
    if _state["threads_set_by_user"]:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            return
        threadpool_limits(limits=n, user_api="blas")


def set_blas_interop(mode: str = "auto") -> None:
    """How fastreg shares the cores with NumPy's BLAS in the same process.

    ``"auto"`` (the default): where NumPy's (or SciPy's) BLAS is OpenBLAS >= 0.3.27, its
    parallel jobs run on fastreg's OpenMP thread pool (OpenBLAS's threads callback) instead of
    OpenBLAS's own threads, from the first kernel the dispatcher loads on (training, a
    predictor stage other than a Linear chain; a predictor alone routes nothing until this
    function or :func:`get_blas_interop` is called). One pool then owns the cores:
    OpenBLAS's idle threads would otherwise spin for ~0.1 s after every NumPy matmul and slow the
    fastreg kernel that follows several times over. Results are bitwise the same (OpenBLAS
    splits the work as before; only which threads run it changes), and OpenBLAS's thread count
    (``threadpoolctl``'s view) is untouched. A library loaded after the switch is routed when
    ``set_blas_interop("auto")`` is called again; one that already has another threads callback
    is left alone.

    ``"off"``: OpenBLAS runs its own threads; the callback that was installed before is put
    back. Export ``OPENBLAS_THREAD_TIMEOUT=4`` before Python starts to shorten their spinning.

    The environment variable ``FASTREG_BLAS_INTEROP`` sets the initial value;
    :func:`get_blas_interop` reports which libraries are routed.
    """
    _runtime.set_blas_interop(_check_blas_interop(mode))


def get_blas_interop() -> dict:
    """``{"mode": ..., "routed": [library paths], "skipped": {path: reason}}``."""
    return _runtime.blas_interop_state()


def set_default_dtype(dtype) -> None:
    """Set the dtype new layers use when ``dtype=None`` (float32 unless changed), as in torch."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    _state["default_dtype"] = dt


def get_default_dtype() -> np.dtype:
    """Return the default floating dtype (``numpy.float32`` unless set otherwise)."""
    return _state["default_dtype"]
