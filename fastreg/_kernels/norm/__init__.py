"""Batch norm and layer norm kernels: forward and backward for (N, C) activations.

Shapes and buffers (llm.c style): x, dy, out, dx are (N, C) C-contiguous float32/float64; per-
feature vectors weight (gamma), bias (beta), running_mean, running_var, dweight, dbias are (C,);
batch norm saves per-feature statistics save_mean/save_rstd (C,), layer norm saves per-row ones
(N,). Everything passed to one call has one dtype. What backward needs from forward (mean and
rstd = 1/sqrt(var + eps)) is an explicit buffer the caller keeps.

batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd,
                        momentum=0.1, eps=1e-5, backend=None)
batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps=1e-5, backend=None)
batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                   backend=None)
batchnorm_backward_eval(dy, x, weight, running_mean, running_var, dx, dweight, dbias, eps,
                        accumulate=True, backend=None)
layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps=1e-5, backend=None)
layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                   backend=None)

Numerics: forward statistics are float64 sums of x - x[0] (accurate for data with a large mean,
where E[x^2] - E[x]^2 in float32 fails), stored in x's dtype; in float32, d = x - x[0] and d^2
of four rows (batch norm) or four 8-wide vectors (layer norm, AVX2) are first summed in float32,
a 4-term sum rounded once, then added in float64. Elementwise maths runs in x's dtype
with the float64 mean entering as a hi + lo pair. Backward column sums (d gamma, d beta) add
blocks of 16 rows in x's dtype into float64 totals; layer-norm row sums are float64.

Parallelism: rows are split into chunks by the shape alone (_n_chunks, never by the thread
count); column sums are per-chunk partials in a float64 (P, 2, C) scratch, added in chunk order
afterwards, so results do not depend on the thread count (measured faster than giving each
thread a block of columns: equal at 4096 x 1024, 2x faster at C = 64). Outputs must not share
memory with inputs or each other.

CUDA: when the arrays are CUDA device arrays (all of them; a host/device mix is a ValueError),
each function runs the kernel of the same name in norm/cuda.py, which takes the validated
arguments of the public function (no CPU scratch) and keeps the same numerics.
"""
from __future__ import annotations

import threading

import numpy as np

from ... import _config
from ..._checks import check_array, check_scalar, float_dtype, no_overlap, on_device
from .. import _dispatch
from .codes import CHUNKS_PER_THREAD, MAX_CHUNKS, SERIAL_BELOW

__all__ = [
    "batchnorm_backward",
    "batchnorm_backward_eval",
    "batchnorm_forward_eval",
    "batchnorm_forward_train",
    "layernorm_backward",
    "layernorm_forward",
]

_SERIAL_BELOW = SERIAL_BELOW

_EMPTY = {dt: np.empty(0, dt) for dt in _config.FLOAT_DTYPES}


def _or_empty(a, dtype):
    """Backends take arrays only; a missing optional vector becomes an empty one plus a flag."""
    return _EMPTY[dtype] if a is None else a


_CHUNKS_PER_THREAD = CHUNKS_PER_THREAD


def _n_chunks(n: int, c: int) -> int:
    """Row chunks for a call on an (n, c) array: one per _SERIAL_BELOW elements (64 KB of
    float32), at least 1, at most MAX_CHUNKS and n. A function of the shape only: the column sums
    add per-chunk partials in chunk order, so results do not depend on the thread count (nor on
    which thread ran which chunk). Each chunk costs a (2, C) float64 partial that every thread
    adds up: with one chunk per 16 KB, a 256 x 512 batch norm (32 chunks of 8 rows) spent more on
    partials than on its rows; 8 chunks of 32 rows still balance 2-4 threads."""
    return max(1, min(MAX_CHUNKS, n, n * c // _SERIAL_BELOW))


class _Scratch(threading.local):
    """Per-thread scratch of the host kernels (partial sums, row blocks, coefficients).

    Buffer ownership: the scratch is the norm module's, lent to one kernel call at a time and
    dead when the call returns (nothing in it outlives the call: the caller's outputs and the
    saved statistics are the caller's arrays). One grow-only flat array per (role, dtype) and
    Python thread, so steady-state calls allocate nothing (a smaller last batch of an epoch
    reuses the larger one's memory), and two Python threads running kernels at once -- even the
    same layer's -- never share scratch (threading.local). Memory held: at most (64, 2, C)
    float64 + (64, 2, C) + (4, C) in the dtype per thread, about 1.6 MB at C = 1024 float32.
    """

    def __init__(self):
        self.arrays = {}
        self.last = {}

    def chunked(self, kind: str, N: int, C: int, dtype):
        """(P, partial, block, coef) for a ``kind`` ("fwd", "bwd", "ln") call on (N, C):
        P = _n_chunks(N, C), partial/block as _partials (block None for "fwd"), coef (4, C)
        (None for "ln"). One dict lookup when the shape is the last call's."""
        key = (kind, N, C, dtype)
        hit = self.last.get(kind)
        if hit is not None and hit[0] == key:
            return hit[1]
        P = _n_chunks(N, C)
        partial = self.get("partial", (P, 2, C), np.dtype(np.float64))
        block = None if kind == "fwd" else self.get("block", (P, 2, C), dtype)
        coef = None if kind == "ln" else self.get("coef", (4, C), dtype)
        # kept per kind; a view another call re-cut since then still points into memory of
        # this thread's scratch (it keeps its flat array alive), dead between calls: reusable
        self.last[kind] = (key, (P, partial, block, coef))
        return P, partial, block, coef

    def get(self, role: str, shape: tuple, dtype) -> np.ndarray:
        key = (role, dtype)
        entry = self.arrays.get(key)
        if entry is not None and entry[1].shape == shape:
            return entry[1]                       # steady state: the same view as last call
        n = 1
        for d in shape:
            n *= d
        flat = entry[0] if entry is not None and entry[0].size >= n else _aligned(n, dtype)
        view = flat[:n].reshape(shape)
        self.arrays[key] = (flat, view)
        return view


def _aligned(n: int, dtype) -> np.ndarray:
    """An uninitialised (n,) array whose data starts on a 64-byte (cache-line) boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + n * dtype.itemsize].view(dtype)


_scratch = _Scratch()


def _partials(P: int, C: int, dtype, block: bool = False):
    """This thread's (P, 2, C) float64 partial sums and, with ``block``, (P, 2, C) block sums in
    ``dtype`` (see _Scratch); the kernels overwrite them before reading."""
    partial = _scratch.get("partial", (P, 2, C), np.dtype(np.float64))
    return partial, (_scratch.get("block", (P, 2, C), dtype) if block else None)


def _coef(C: int, dtype) -> np.ndarray:
    """This thread's (4, C) coefficient scratch in ``dtype``."""
    return _scratch.get("coef", (4, C), dtype)


def _check_x(name, x):
    dtype = float_dtype(name, x)
    check_array(name, x, ndim=2)
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature (column), got shape {x.shape}")
    return dtype


def _check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean,
                            save_rstd, momentum=0.1, eps=1e-5, backend=None) -> np.ndarray:
    r"""Batch-norm forward in training mode: normalise each feature with batch statistics.

    .. math::
        \mu_c = \frac1N \sum_n x_{nc}, \quad
        \sigma^2_c = \frac1N \sum_n (x_{nc} - \mu_c)^2, \quad
        r_c = (\sigma^2_c + \epsilon)^{-1/2}, \quad
        y_{nc} = (x_{nc} - \mu_c)\, r_c\, \gamma_c + \beta_c

    and, when running statistics are given (as ``torch.nn.BatchNorm1d``),
    :math:`m \leftarrow (1-\text{momentum})\,m + \text{momentum}\,\mu` and
    :math:`v \leftarrow (1-\text{momentum})\,v + \text{momentum}\,\sigma^2 N/(N-1)`.

    Parameters
    ----------
    x : ndarray (N, C), float32 or float64, N >= 2
    weight, bias : ndarray (C,) or None
        gamma and beta; None means gamma = 1 (resp. beta = 0), i.e. ``affine=False``.
    running_mean, running_var : ndarray (C,) or None
        Updated in place; both None to skip (``track_running_stats=False``).
    out : ndarray (N, C)
        Receives y.
    save_mean, save_rstd : ndarray (C,)
        Receive mu and r, for :func:`batchnorm_backward`.
    momentum : float in [0, 1]
    eps : float >= 0
    backend : {"numba", "cython", "auto", "cuda"} or None (the global setting)
        Device arrays always run the CUDA kernel (None, "auto" or "cuda").

    Returns
    -------
    out
    """
    dev = on_device(x=x, weight=weight, bias=bias, running_mean=running_mean,
                    running_var=running_var, out=out, save_mean=save_mean, save_rstd=save_rstd)
    dtype = _check_x("x", x)
    N, C = x.shape
    if N < 2:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{x.shape}")
    weight = check_array("weight", weight, dtype=dtype, shape=(C,), allow_none=True)
    bias = check_array("bias", bias, dtype=dtype, shape=(C,), allow_none=True)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None, got "
                         f"{type(running_mean).__name__} and {type(running_var).__name__}")
    running_mean = check_array("running_mean", running_mean, dtype=dtype, shape=(C,),
                               writeable=True, allow_none=True)
    running_var = check_array("running_var", running_var, dtype=dtype, shape=(C,),
                              writeable=True, allow_none=True)
    check_array("out", out, dtype=dtype, shape=(N, C), writeable=True)
    check_array("save_mean", save_mean, dtype=dtype, shape=(C,), writeable=True)
    check_array("save_rstd", save_rstd, dtype=dtype, shape=(C,), writeable=True)
    momentum = check_scalar("momentum", momentum, low=0.0, high=1.0)
    eps = check_scalar("eps", eps, low=0.0)
    no_overlap(x=x, weight=weight, bias=bias, running_mean=running_mean,
               running_var=running_var, out=out, save_mean=save_mean, save_rstd=save_rstd)
    return run_batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean,
                                       save_rstd, momentum, eps, dev, backend)


def batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps=1e-5,
                           backend=None) -> np.ndarray:
    r"""Batch-norm forward in evaluation mode, with the running (population) statistics.

    .. math:: y_{nc} = (x_{nc} - m_c)\,(v_c + \epsilon)^{-1/2}\,\gamma_c + \beta_c

    Parameters
    ----------
    x : ndarray (N, C), float32 or float64 (any N >= 0)
    weight, bias : ndarray (C,) or None (gamma = 1, beta = 0)
    running_mean, running_var : ndarray (C,)
        m and v (read only here).
    out : ndarray (N, C)
    eps : float >= 0
    backend : {"numba", "cython", "auto", "cuda"} or None

    Returns
    -------
    out
    """
    dev = on_device(x=x, weight=weight, bias=bias, running_mean=running_mean,
                    running_var=running_var, out=out)
    dtype = _check_x("x", x)
    N, C = x.shape
    weight = check_array("weight", weight, dtype=dtype, shape=(C,), allow_none=True)
    bias = check_array("bias", bias, dtype=dtype, shape=(C,), allow_none=True)
    check_array("running_mean", running_mean, dtype=dtype, shape=(C,))
    check_array("running_var", running_var, dtype=dtype, shape=(C,))
    check_array("out", out, dtype=dtype, shape=(N, C), writeable=True)
    eps = check_scalar("eps", eps, low=0.0)
    no_overlap(x=x, out=out, weight=weight, bias=bias, running_mean=running_mean,
               running_var=running_var)
    return run_batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps, dev,
                                      backend)


def _check_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate,
                    stats_len, stats_names=("save_mean", "save_rstd")):
    """Validate a backward call; returns (dtype, accumulate, on_device). ``save_mean`` and
    ``save_rstd`` are the statistics, named ``stats_names`` in messages."""
    m_name, r_name = stats_names
    dev = on_device(dy=dy, x=x, weight=weight, **{m_name: save_mean, r_name: save_rstd}, dx=dx,
                    dweight=dweight, dbias=dbias)
    dtype = _check_x("x", x)
    N, C = x.shape
    check_array("dy", dy, dtype=dtype, shape=(N, C))
    weight = check_array("weight", weight, dtype=dtype, shape=(C,), allow_none=True)
    n_stats = C if stats_len == "C" else N
    check_array(m_name, save_mean, dtype=dtype, shape=(n_stats,))
    check_array(r_name, save_rstd, dtype=dtype, shape=(n_stats,))
    check_array("dx", dx, dtype=dtype, shape=(N, C), writeable=True)
    if weight is None and (dweight is not None or dbias is not None):
        raise ValueError("dweight and dbias must be None when weight is None (affine=False), got "
                         f"{type(dweight).__name__} and {type(dbias).__name__}")
    dweight = check_array("dweight", dweight, dtype=dtype, shape=(C,), writeable=True,
                          allow_none=True)
    dbias = check_array("dbias", dbias, dtype=dtype, shape=(C,), writeable=True, allow_none=True)
    accumulate = _check_bool("accumulate", accumulate)
    no_overlap(dy=dy, x=x, weight=weight, **{m_name: save_mean, r_name: save_rstd}, dx=dx,
               dweight=dweight, dbias=dbias)
    return dtype, accumulate, dev


def batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                       backend=None) -> np.ndarray:
    r"""Batch-norm backward (training mode), from the statistics saved by the forward pass.

    With :math:`\hat x_{nc} = (x_{nc} - \mu_c)\, r_c` recomputed from x:

    .. math::
        \partial\beta_c = \sum_n dy_{nc}, \quad
        \partial\gamma_c = \sum_n dy_{nc}\,\hat x_{nc}, \quad
        dx_{nc} = \frac{\gamma_c r_c}{N}\left(N\,dy_{nc} - \partial\beta_c
                  - \hat x_{nc}\,\partial\gamma_c\right)

    Parameters
    ----------
    dy, x : ndarray (N, C)
    weight : ndarray (C,) or None (gamma = 1; then dweight and dbias must be None)
    save_mean, save_rstd : ndarray (C,)
        mu and r from :func:`batchnorm_forward_train`.
    dx : ndarray (N, C)
        Overwritten with the input gradient.
    dweight, dbias : ndarray (C,) or None
        Receive d gamma and d beta: added to (``accumulate=True``) or overwritten; None skips.
    accumulate : bool
    backend : {"numba", "cython", "auto", "cuda"} or None

    Returns
    -------
    dx
    """
    _, accumulate, dev = _check_backward(dy, x, weight, save_mean, save_rstd, dx, dweight,
                                             dbias, accumulate, "C")
    return run_batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias,
                                  accumulate, dev, backend)


def batchnorm_backward_eval(dy, x, weight, running_mean, running_var, dx, dweight, dbias, eps,
                            accumulate=True, backend=None) -> np.ndarray:
    r"""Batch-norm backward in evaluation mode, where the statistics are constants.

    With :math:`r_c = (v_c + \epsilon)^{-1/2}` from the running variance:

    .. math::
        dx_{nc} = dy_{nc}\,\gamma_c r_c, \quad
        \partial\gamma_c = \sum_n dy_{nc}\,(x_{nc} - m_c)\, r_c, \quad
        \partial\beta_c = \sum_n dy_{nc}

    On host arrays this is NumPy, bit for bit what ``fastreg.nn.BatchNorm1d.backward`` computed
    in eval mode: r in float64; :math:`\gamma r` rounded to x's dtype before the product with dy;
    the d gamma terms and sum in float64, rounded once; d beta is NumPy's column sum of dy (in
    x's dtype). On device arrays the CUDA kernel sums both in float64.

    Parameters
    ----------
    dy, x : ndarray (N, C), float32 or float64 (any N >= 0)
    weight : ndarray (C,) or None (gamma = 1; then dweight and dbias must be None)
    running_mean, running_var : ndarray (C,)
        m and v, as used by :func:`batchnorm_forward_eval`.
    dx : ndarray (N, C)
        Overwritten with the input gradient.
    dweight, dbias : ndarray (C,) or None
        Receive d gamma and d beta: added to (``accumulate=True``) or overwritten; None skips.
    eps : float >= 0
        The forward pass's eps.
    accumulate : bool
    backend : {"numba", "cython", "auto", "cuda"} or None
        Only checked for host arrays (the host code is NumPy for every CPU backend).

    Returns
    -------
    dx
    """
    _, accumulate, dev = _check_backward(dy, x, weight, running_mean, running_var, dx,
                                             dweight, dbias, accumulate, "C",
                                             ("running_mean", "running_var"))
    eps = check_scalar("eps", eps, low=0.0)
    return run_batchnorm_backward_eval(dy, x, weight, running_mean, running_var, dx, dweight,
                                       dbias, eps, accumulate, dev, backend)


def layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps=1e-5,
                      backend=None) -> np.ndarray:
    r"""Layer-norm forward: normalise each row (sample) over its C features.

    .. math::
        \mu_n = \frac1C \sum_c x_{nc}, \quad
        \sigma^2_n = \frac1C \sum_c (x_{nc} - \mu_n)^2, \quad
        r_n = (\sigma^2_n + \epsilon)^{-1/2}, \quad
        y_{nc} = (x_{nc} - \mu_n)\, r_n\, \gamma_c + \beta_c

    Parameters
    ----------
    x : ndarray (N, C), float32 or float64 (any N >= 0, including 1)
    weight, bias : ndarray (C,) or None (gamma = 1, beta = 0)
    out : ndarray (N, C)
    save_mean, save_rstd : ndarray (N,)
        Receive mu and r, for :func:`layernorm_backward`.
    eps : float >= 0
    backend : {"numba", "cython", "auto", "cuda"} or None

    Returns
    -------
    out
    """
    dev = on_device(x=x, weight=weight, bias=bias, out=out, save_mean=save_mean,
                    save_rstd=save_rstd)
    dtype = _check_x("x", x)
    N, C = x.shape
    weight = check_array("weight", weight, dtype=dtype, shape=(C,), allow_none=True)
    bias = check_array("bias", bias, dtype=dtype, shape=(C,), allow_none=True)
    check_array("out", out, dtype=dtype, shape=(N, C), writeable=True)
    check_array("save_mean", save_mean, dtype=dtype, shape=(N,), writeable=True)
    check_array("save_rstd", save_rstd, dtype=dtype, shape=(N,), writeable=True)
    eps = check_scalar("eps", eps, low=0.0)
    no_overlap(x=x, weight=weight, bias=bias, out=out, save_mean=save_mean, save_rstd=save_rstd)
    return run_layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps, dev, backend)


def layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                       backend=None) -> np.ndarray:
    r"""Layer-norm backward, from the per-row statistics saved by the forward pass.

    With :math:`\hat x_{nc} = (x_{nc} - \mu_n)\, r_n` and :math:`g_{nc} = dy_{nc}\,\gamma_c`:

    .. math::
        dx_{nc} = r_n \left(g_{nc} - \frac1C\sum_{c'} g_{nc'}
                  - \hat x_{nc}\,\frac1C\sum_{c'} g_{nc'}\hat x_{nc'}\right), \quad
        \partial\gamma_c = \sum_n dy_{nc}\,\hat x_{nc}, \quad
        \partial\beta_c = \sum_n dy_{nc}

    Parameters
    ----------
    dy, x : ndarray (N, C)
    weight : ndarray (C,) or None (gamma = 1; then dweight and dbias must be None)
    save_mean, save_rstd : ndarray (N,)
        mu and r from :func:`layernorm_forward`.
    dx : ndarray (N, C)
        Overwritten with the input gradient.
    dweight, dbias : ndarray (C,) or None
        Added to (``accumulate=True``) or overwritten; None skips.
    accumulate : bool
    backend : {"numba", "cython", "auto", "cuda"} or None

    Returns
    -------
    dx
    """
    _, accumulate, dev = _check_backward(dy, x, weight, save_mean, save_rstd, dx, dweight,
                                             dbias, accumulate, "N")
    return run_layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias,
                                  accumulate, dev, backend)


# ---------------------------------------------------------------------------------------------
# Trusted entry points: for callers that have checked the arrays themselves (nn layers,
# inference plans). Same meaning and argument order as the checked functions above, with the
# placement as ``device`` (True: CUDA device arrays) and no checks: passing anything the checked
# function would reject is undefined behaviour.
# ---------------------------------------------------------------------------------------------

def run_batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean,
                                save_rstd, momentum: float, eps: float, device: bool = False,
                                backend: str | None = None):
    """Trusted :func:`batchnorm_forward_train`."""
    if device:
        _dispatch.kernel("norm", "batchnorm_forward_train", backend, device=True)(
            x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps)
        return out
    N, C = x.shape
    dtype = x.dtype
    _, partial, _, coef = _scratch.chunked("fwd", N, C, dtype)
    fn = _dispatch.kernel("norm", "batchnorm_forward_train", backend)
    fn(x, _or_empty(weight, dtype), _or_empty(bias, dtype), _or_empty(running_mean, dtype),
       _or_empty(running_var, dtype), out, save_mean, save_rstd, partial, coef,
       weight is not None, bias is not None, running_mean is not None, momentum, eps)
    return out


def run_batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps: float,
                               device: bool = False, backend: str | None = None):
    """Trusted :func:`batchnorm_forward_eval`."""
    if device:
        _dispatch.kernel("norm", "batchnorm_forward_eval", backend, device=True)(
            x, weight, bias, running_mean, running_var, out, eps)
        return out
    N, C = x.shape
    dtype = x.dtype
    coef = _coef(C, dtype)
    fn = _dispatch.kernel("norm", "batchnorm_forward_eval", backend)
    P = _n_chunks(N, C) if N > 0 else 0
    fn(x, _or_empty(weight, dtype), _or_empty(bias, dtype), running_mean, running_var, out, coef,
       P, weight is not None, bias is not None, eps)
    return out


def run_batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias,
                           accumulate: bool, device: bool = False, backend: str | None = None):
    """Trusted :func:`batchnorm_backward`."""
    if device:
        _dispatch.kernel("norm", "batchnorm_backward", backend, device=True)(
            dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate)
        return dx
    N, C = x.shape
    dtype = x.dtype
    _, partial, block, coef = _scratch.chunked("bwd", N, C, dtype)
    fn = _dispatch.kernel("norm", "batchnorm_backward", backend)
    fn(dy, x, _or_empty(weight, dtype), save_mean, save_rstd, dx, _or_empty(dweight, dtype),
       _or_empty(dbias, dtype), partial, block, coef, weight is not None, dweight is not None,
       dbias is not None, accumulate)
    return dx


def run_batchnorm_backward_eval(dy, x, weight, running_mean, running_var, dx, dweight, dbias,
                                eps: float, accumulate: bool, device: bool = False,
                                backend: str | None = None):
    """Trusted :func:`batchnorm_backward_eval`."""
    if device:
        _dispatch.kernel("norm", "batchnorm_backward_eval", backend, device=True)(
            dy, x, weight, running_mean, running_var, dx, dweight, dbias, eps, accumulate)
        return dx
    _dispatch.resolve("norm", backend)
    dtype = x.dtype
    r = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    if dweight is not None:
        dg = (dy * ((x - running_mean) * r)).sum(axis=0).astype(dtype)
        if accumulate:
            dweight += dg
        else:
            dweight[...] = dg
    if dbias is not None:
        if accumulate:
            dbias += dy.sum(axis=0)
        else:
            dbias[...] = dy.sum(axis=0)
    scale = r if weight is None else weight * r
    np.multiply(dy, scale.astype(dtype), out=dx)
    return dx


def run_layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps: float,
                          device: bool = False, backend: str | None = None):
    """Trusted :func:`layernorm_forward`."""
    if device:
        _dispatch.kernel("norm", "layernorm_forward", backend, device=True)(
            x, weight, bias, out, save_mean, save_rstd, eps)
        return out
    dtype = x.dtype
    fn = _dispatch.kernel("norm", "layernorm_forward", backend)
    fn(x, _or_empty(weight, dtype), _or_empty(bias, dtype), out, save_mean, save_rstd,
       weight is not None, bias is not None, eps)
    return out


def run_layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias,
                           accumulate: bool, device: bool = False, backend: str | None = None):
    """Trusted :func:`layernorm_backward`."""
    if device:
        _dispatch.kernel("norm", "layernorm_backward", backend, device=True)(
            dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate)
        return dx
    N, C = x.shape
    dtype = x.dtype
    _, partial, block, _ = _scratch.chunked("ln", N, C, dtype)
    fn = _dispatch.kernel("norm", "layernorm_backward", backend)
    fn(dy, x, _or_empty(weight, dtype), save_mean, save_rstd, dx, _or_empty(dweight, dtype),
       _or_empty(dbias, dtype), partial, block, weight is not None, dweight is not None,
       dbias is not None, accumulate)
    return dx
