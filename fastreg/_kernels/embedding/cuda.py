"""Embedding kernels, CUDA backend (numba.cuda). Same names and positional signatures as
embedding/numba.py; every array is a device array checked by fastreg/_kernels/embedding/__init__.py
(``counts`` excepted: a host placeholder, unused here).

Kernel design
-------------
* ``embedding_forward``: one thread per output element (i, j), grid-stride; consecutive threads
  read consecutive columns of one table row (coalesced).
* ``embedding_backward``: **sort-based and deterministic** (no float atomics). The launcher
  copies the n indices to the host, sorts them stably (``numpy.argsort(kind="stable")``) and
  uploads the permutation with one segment per distinct row; one thread per (segment, column)
  then adds that row's contributions **in input order** into ``grad_weight`` -- the same order,
  hence the same sums, as the CPU backends' per-thread row ranges, on every run. Costs: a
  device-to-host copy of the indices, a host sort and an upload per call.
* ``embedding_renorm``: one thread per distinct row (rows are short: D values), the norm in
  float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..runtime import cuda as _cuda_runtime

THREADS = 256


@cuda.jit(cache=True)
def _forward_kernel(weight, indices, out):
    D = out.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, out.shape[0] * D, stride):
        i = e // D
        j = e - i * D
        out[i, j] = weight[indices[i], j]


@cuda.jit(cache=True)
def _backward_kernel(grad_output, order, seg_start, seg_row, seg_scale, grad_weight):
    D = grad_weight.shape[1]
    nseg = seg_row.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, nseg * D, stride):
        u = e // D
        j = e - u * D
        k = seg_row[u]
        s = seg_scale[u]
        acc = grad_weight[k, j]
        for t in range(seg_start[u], seg_start[u + 1]):
            acc += grad_output[order[t], j] * s
        grad_weight[k, j] = acc


@cuda.jit(cache=True)
def _renorm_kernel(weight, unique, max_norm, norm_type):
    D = weight.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, unique.shape[0], stride):
        k = unique[u]
        acc = 0.0
        if norm_type == math.inf:
            for j in range(D):
                a = abs(np.float64(weight[k, j]))
                acc = a if a > acc else acc  # noqa: FURB136 - builtin max() does not compile for CUDA
            norm = acc
        elif norm_type == 2.0:
            for j in range(D):
                a = np.float64(weight[k, j])
                acc += a * a
            norm = math.sqrt(acc)
        elif norm_type == 1.0:
            for j in range(D):
                acc += abs(np.float64(weight[k, j]))
            norm = acc
        else:
            for j in range(D):
                acc += abs(np.float64(weight[k, j])) ** norm_type
            norm = acc ** (1.0 / norm_type)
        if norm > max_norm:
            scale = max_norm / (norm + 1e-7)
            for j in range(D):
                weight[k, j] = weight[k, j] * scale


def embedding_forward(weight, indices, out):
    """out[i, :] = weight[indices[i], :] (device arrays)."""
    n = out.shape[0] * out.shape[1]
    if n:
        _forward_kernel[_cuda_runtime.blocks_for(n, THREADS), THREADS](weight, indices, out)


def embedding_backward(grad_output, indices, grad_weight, counts, padding_idx, scale_by_freq,
                       nchunks):
    """grad_weight[k] += s_k * sum_{i: indices[i] = k} grad_output[i] (k != padding_idx),
    sort-based (see the module docstring); ``counts`` and ``nchunks`` are the CPU backends'."""
    idx = indices.copy_to_host().astype(np.int64, copy=False)
    pos = np.flatnonzero(idx != padding_idx)          # the padding row gets nothing
    if pos.shape[0] == 0:
        return
    order = pos[np.argsort(idx[pos], kind="stable")]  # by row, input order within a row
    rows = idx[order]
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    seg_row = rows[first]
    seg_start = np.r_[first, rows.shape[0]].astype(np.int64)
    dt = grad_weight.dtype
    if scale_by_freq:
        seg_scale = (1.0 / np.diff(seg_start)).astype(dt)
    else:
        seg_scale = np.ones(seg_row.shape[0], dt)
    nseg, D = seg_row.shape[0], grad_weight.shape[1]
    put = _cuda_runtime.to_device
    _backward_kernel[_cuda_runtime.blocks_for(nseg * D, THREADS), THREADS](
        grad_output, put(order), put(seg_start), put(seg_row), put(seg_scale), grad_weight)


def embedding_renorm(weight, unique, max_norm, norm_type):
    """Rows ``unique`` (distinct, device int64) over ``max_norm`` rescaled in place."""
    m = unique.shape[0]
    if m:
        _renorm_kernel[_cuda_runtime.blocks_for(m, THREADS), THREADS](
            weight, unique, float(max_norm), float(norm_type))
