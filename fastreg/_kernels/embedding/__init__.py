"""Embedding lookup: gather rows of a table, scatter-add their gradients, renormalize rows.

Shapes: ``weight`` (V, D) float32/float64 (V = num_embeddings, D = embedding_dim); ``indices``
int32 or int64 of any shape (*S), values in [0, V); ``out`` / ``grad_output`` (*S, D) of the
weight's dtype; every array C-contiguous. With n = prod(S) and flat index i:

* ``embedding_forward``: :math:`out_i = W_{idx_i}` -- a gather, parallel over the n rows.
* ``embedding_backward``: :math:`\\partial W_k \\mathrel{+}= s_k \\sum_{i:\\,idx_i = k} dy_i`
  for every row k except ``padding_idx`` (which gets no gradient), with :math:`s_k = 1/c_k`
  (:math:`c_k` = occurrences of k in ``indices``) under ``scale_grad_by_freq``, else 1.
  Duplicate indices accumulate. **Deterministic scatter-add by per-thread ranges of embedding
  rows** (torch's CPU scheme): thread t owns rows [r_t, r_{t+1}) and scans all n indices in
  order, so each row sums its contributions in input order -- the same bits on every run, every
  thread count and both CPU backends, with no atomics (cost: every thread reads all n indices).
* ``embedding_renorm_``: for each distinct k in ``indices``, if :math:`\\|W_k\\|_p >`
  ``max_norm`` then :math:`W_k \\leftarrow W_k \\cdot \\mathrm{max\\_norm} /
  (\\|W_k\\|_p + 10^{-7})` in place (torch's ``embedding_renorm_``; the norm accumulated in
  float64, :math:`p = \\infty` is :math:`\\max_j |W_{kj}|`).

Index bounds are checked here, on the host, before any kernel runs (the kernels are compiled
without bounds checks): a negative or too-large index is an ``IndexError`` naming it
(:func:`check_indices`; device indices are copied to the host for it). Every function also takes
CUDA device arrays (all arrays of one call in the same place) and then runs embedding/cuda.py,
whose backward is sort-based (a host sort of the indices), equally deterministic.

Trusted entry points (``run_*``, for ``fastreg.nn.Embedding``) take flat ``indices`` (n,) and
2-D ``out`` / ``grad_output`` (n, D) and check nothing.
"""
from __future__ import annotations

import numpy as np

from ..._checks import (
    check_array,
    check_flag,
    check_scalar,
    float_dtype,
    may_share_memory,
    on_device,
)
from .. import _dispatch, runtime
from ..runtime import cuda as _cuda_runtime

__all__ = ["check_indices", "check_norm_type", "embedding_backward", "embedding_forward", "embedding_renorm_",
           "run_embedding_backward", "run_embedding_forward", "run_embedding_renorm"]

#: Index dtypes the kernels take (torch's: int64 and int32).
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_NO_COUNTS = np.zeros(0, np.int64)


def check_indices(name: str, indices, num_embeddings: int) -> np.ndarray:
    """``indices`` if it is a C-contiguous int32/int64 array (host or device) with every value
    in [0, num_embeddings), else a TypeError / ValueError / IndexError naming it and the value.
    Device indices are copied to the host for the check."""
    if not isinstance(indices, np.ndarray) and not _cuda_runtime.is_device_array(indices):
        raise TypeError(f"{name} must be a numpy.ndarray of int64 or int32 indices, "
                        f"got {type(indices).__name__}")
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must have dtype int64 or int32 (indices into the embedding "
                        f"table), got {indices.dtype}")
    check_array(name, indices)
    if indices.size:
        host = _cuda_runtime.to_host(indices)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} must be in [0, {num_embeddings}) (num_embeddings="
                             f"{num_embeddings}), got {bad}")
    return indices


def _check_weight(name: str, w, writeable: bool = False) -> np.dtype:
    dt = float_dtype(name, w)
    check_array(name, w, ndim=2, writeable=writeable)
    return dt


def embedding_forward(weight: np.ndarray, indices: np.ndarray, out: np.ndarray,
                      backend: str | None = None) -> np.ndarray:
    """Gather rows: ``out[..., :] = weight[indices[...], :]``.

    Parameters
    ----------
    weight : ndarray (V, D), float32 or float64, C-contiguous
    indices : ndarray (*S), int32 or int64, values in [0, V)
    out : ndarray (*S, D), weight's dtype, writeable, not overlapping ``weight``
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    out
    """
    dt = _check_weight("weight", weight)
    V, D = weight.shape
    check_indices("indices", indices, V)
    check_array("out", out, dtype=dt, shape=(*indices.shape, D), writeable=True)
    dev = on_device(weight=weight, indices=indices, out=out)
    if may_share_memory(out, weight) or may_share_memory(out, indices):
        raise ValueError("out must not overlap weight or indices")
    n = indices.size
    run_embedding_forward(weight, indices.reshape(n), out.reshape(n, D), dev, backend)
    return out


def embedding_backward(grad_output: np.ndarray, indices: np.ndarray, grad_weight: np.ndarray,
                       padding_idx: int | None = None, scale_grad_by_freq: bool = False,
                       backend: str | None = None) -> np.ndarray:
    """Scatter-add: ``grad_weight[k] += s_k * sum_{i: indices_i = k} grad_output_i`` for every
    k != ``padding_idx`` (see the module docstring; deterministic).

    Parameters
    ----------
    grad_output : ndarray (*S, D), float32 or float64
    indices : ndarray (*S), int32 or int64, values in [0, V)
    grad_weight : ndarray (V, D), grad_output's dtype, writeable (accumulated into)
    padding_idx : int in [0, V), optional
        The row that receives no gradient.
    scale_grad_by_freq : bool
        Scale row k's gradient by 1 / (occurrences of k in ``indices``).
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    grad_weight
    """
    dt = _check_weight("grad_weight", grad_weight, writeable=True)
    V, D = grad_weight.shape
    check_indices("indices", indices, V)
    float_dtype("grad_output", grad_output)
    check_array("grad_output", grad_output, dtype=dt, shape=(*indices.shape, D))
    dev = on_device(grad_output=grad_output, indices=indices, grad_weight=grad_weight)
    if may_share_memory(grad_output, grad_weight):
        raise ValueError("grad_output must not overlap grad_weight")
    pad = -1
    if padding_idx is not None:
        pad = check_scalar("padding_idx", padding_idx, low=0, high=V - 1, integer=True)
    by_freq = check_flag("scale_grad_by_freq", scale_grad_by_freq)
    n = indices.size
    run_embedding_backward(grad_output.reshape(n, D), indices.reshape(n), grad_weight, pad,
                           by_freq, dev, backend)
    return grad_weight


def embedding_renorm_(weight: np.ndarray, indices: np.ndarray, max_norm: float,
                      norm_type: float = 2.0, backend: str | None = None) -> np.ndarray:
    """Rescale, in place, each row of ``weight`` looked up by ``indices`` whose p-norm exceeds
    ``max_norm`` to norm ``max_norm`` (times ``norm / (norm + 1e-7)``), as torch.

    Parameters
    ----------
    weight : ndarray (V, D), float32 or float64, writeable
    indices : ndarray, any shape, int32 or int64, values in [0, V) (device indices are copied to
        the host: the distinct rows are found there)
    max_norm : float >= 0
    norm_type : float > 0, or inf
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    weight
    """
    _check_weight("weight", weight, writeable=True)
    check_indices("indices", indices, weight.shape[0])
    dev = on_device(weight=weight, indices=indices)
    max_norm = check_scalar("max_norm", max_norm, low=0.0)
    norm_type = check_norm_type(norm_type)
    host = _cuda_runtime.to_host(indices)
    run_embedding_renorm(weight, host.reshape(host.size), max_norm, norm_type, dev, backend)
    return weight


def check_norm_type(norm_type) -> float:
    """The p of a p-norm: a real > 0 or inf (p <= 0 is not a norm; NaN is refused)."""
    p = check_scalar("norm_type", norm_type, low=0.0, low_open=True, finite=False)
    return p


# --- trusted entry points ------------------------------------------------------------------------
# Flat indices (n,) already bounds-checked; out / grad_output (n, D); the placement as ``device``
# (True: CUDA device arrays); nothing is checked here.

def run_embedding_forward(weight, indices, out, device: bool = False,
                          backend: str | None = None):
    """Trusted :func:`embedding_forward` (flat ``indices``, ``out`` (n, D))."""
    if indices.shape[0]:
        _dispatch.kernel("embedding", "embedding_forward", backend, device)(weight, indices, out)
    return out


def run_embedding_backward(grad_output, indices, grad_weight, padding_idx: int,
                           scale_by_freq: bool, device: bool = False,
                           backend: str | None = None):
    """Trusted :func:`embedding_backward` (``padding_idx`` -1 for none)."""
    n = indices.shape[0]
    if n:
        V = grad_weight.shape[0]
        counts = np.empty(V, np.int64) if scale_by_freq and not device else _NO_COUNTS
        # chunks of rows: more than the threads (load balance), never more than the rows;
        # the result does not depend on the count (each row sums in input order)
        nchunks = max(1, min(V, 4 * runtime.get_num_threads()))
        _dispatch.kernel("embedding", "embedding_backward", backend, device)(
            grad_output, indices, grad_weight, counts, np.int64(padding_idx),
            bool(scale_by_freq), np.int64(nchunks))
    return grad_weight


def run_embedding_renorm(weight, indices, max_norm: float, norm_type: float,
                         device: bool = False, backend: str | None = None):
    """Trusted :func:`embedding_renorm_`; ``indices`` flat and on the host (the distinct rows
    are found there, then uploaded for a device ``weight``)."""
    if indices.shape[0]:
        unique = np.unique(indices).astype(np.int64, copy=False)
        if device:
            unique = _cuda_runtime.to_device(unique)
        _dispatch.kernel("embedding", "embedding_renorm", backend, device)(
            weight, unique, float(max_norm), float(norm_type))
    return weight
