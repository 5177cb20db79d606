"""Embedding kernels, Numba backend. Same names and positional signatures as embedding/cy.pyx;
arguments are checked by fastreg/_kernels/embedding/__init__.py.

Shapes: ``weight``/``grad_weight`` (V, D), ``indices`` flat (n,) int32 or int64 with values in
[0, V), ``out``/``grad_output`` (n, D), one float dtype; ``counts`` (V,) int64 scratch (length 0
unless ``scale_by_freq``); ``unique`` (m,) int64, sorted and distinct.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def embedding_forward(weight, indices, out):
    """out[i, :] = weight[indices[i], :], parallel over the n looked-up rows."""
    D = weight.shape[1]
    for i in prange(indices.shape[0]):
        k = indices[i]
        for j in range(D):
            out[i, j] = weight[k, j]


@njit(cache=True, parallel=True)
def embedding_backward(grad_output, indices, grad_weight, counts, padding_idx, scale_by_freq,
                       nchunks):
    """grad_weight[k] += s_k * sum_{i: indices[i] = k} grad_output[i] (k != padding_idx), with
    s_k = 1 / count(k) if scale_by_freq else 1.

    Deterministic: chunk c owns embedding rows [r0, r1) and scans all n indices in order, so
    every row sums its contributions in input order, whatever nchunks is (no atomics).
    """
    V = grad_weight.shape[0]
    D = grad_weight.shape[1]
    n = indices.shape[0]
    rows = (V + nchunks - 1) // nchunks
    one = grad_weight.dtype.type(1.0)
    for c in prange(nchunks):
        r0 = c * rows
        r1 = min(r0 + rows, V)
        if scale_by_freq:
            for k in range(r0, r1):
                counts[k] = 0
            for i in range(n):
                k = indices[i]
                if r0 <= k < r1:
                    counts[k] += 1
        for i in range(n):
            k = indices[i]
            if k == padding_idx or k < r0 or k >= r1:
                continue
            if scale_by_freq:
                s = grad_weight.dtype.type(1.0 / counts[k])
                for j in range(D):
                    grad_weight[k, j] += grad_output[i, j] * s
            else:
                for j in range(D):
                    grad_weight[k, j] += grad_output[i, j] * one


@njit(cache=True, parallel=True)
def embedding_renorm(weight, unique, max_norm, norm_type):
    """For each row k in unique: if ||weight[k]||_p > max_norm, weight[k] *= max_norm /
    (||weight[k]||_p + 1e-7). The norm is accumulated in float64; p = inf is max |w|."""
    D = weight.shape[1]
    inf = np.inf
    for u in prange(unique.shape[0]):
        k = unique[u]
        acc = 0.0
        if norm_type == inf:
            for j in range(D):
                acc = max(acc, abs(np.float64(weight[k, j])))
            norm = acc
        elif norm_type == 2.0:
            for j in range(D):
                a = np.float64(weight[k, j])
                acc += a * a
            norm = np.sqrt(acc)
        elif norm_type == 1.0:
            for j in range(D):
                acc += abs(np.float64(weight[k, j]))
            norm = acc
        else:
            for j in range(D):
                acc += abs(np.float64(weight[k, j])) ** norm_type
            norm = acc ** (1.0 / norm_type)
        if norm > max_norm:
            s = weight.dtype.type(max_norm / (norm + 1e-7))
            for j in range(D):
                weight[k, j] *= s
