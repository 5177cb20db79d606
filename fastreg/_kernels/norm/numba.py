"""Numba backend of the norm kernels (batch norm and layer norm, forward and backward).

Shapes: x, dy, out, dx are (N, C) C-contiguous, one float dtype. Per-feature vectors (weight,
bias, running stats, batch-norm save_mean/save_rstd, dweight, dbias) are (C,); layer-norm
save_mean/save_rstd are (N,). Scratch buffers, allocated by the caller (fastreg._kernels.norm):

* ``partial`` (P, 2, C) float64: one slice per row chunk; a chunk's thread accumulates its
  column sums there, and the P slices are added afterwards (no atomics, deterministic for a
  given P).
* ``block`` (P, 2, C) in x's dtype: the backward kernels sum blocks of ``_BLOCK`` rows in the
  data dtype there before adding them to ``partial`` (half the work of float64 accumulators per
  element; the error is that of a 16-term sum per block).
* ``coef`` (4, C) in x's dtype: per-feature coefficients of the elementwise pass.

Sums are float64; elementwise maths is in the data dtype (twice the SIMD width for float32). A
float64 mean enters the elementwise pass as a hi + lo pair in the data dtype, ``(x - hi) - lo``,
so float32 data with a large mean is normalised to a few ulp.

Row chunk p covers rows [p*N//P, (p+1)*N//P). Batch norm reads its chunk twice (sums, then the
elementwise pass); the second pass walks the chunk backwards so it starts on the rows the first
pass touched last, which are still in cache. Statistics use float64 sums of x - x[0, c] (a shift
by one sample keeps E[d^2] - E[d]^2 well conditioned for data with a large mean).

Signatures are identical to the Cython backend (norm/cy.pyx); the public wrappers validate
everything, nothing here checks shapes.
"""
import numpy as np
from numba import njit, prange

# No "nnan"/"ninf" (NaN and inf must propagate) and no "reassoc" in the kernels: it would fold
# (x - hi) - lo into x - (hi + lo) and lose the low half of the mean. Only the row-sum helpers
# get "reassoc", which LLVM needs to vectorise a reduction.
_FASTMATH = {"contract", "arcp", "nsz"}
_OPTS = {"cache": True, "parallel": True, "fastmath": _FASTMATH, "error_model": "numpy"}
_REDUCE = {"cache": True, "fastmath": _FASTMATH | {"reassoc"}, "error_model": "numpy"}
#: Rows per block of the data-dtype partial sums in the backward kernels (as NORM_BLOCK in C).
_BLOCK = 16


@njit(**_REDUCE)
def _shifted_row_sums(xr, k):
    # sum(d), sum(d^2) for d = xr - k, in float64
    s1 = 0.0
    s2 = 0.0
    for c in range(xr.shape[0]):
        d = np.float64(xr[c] - k)
        s1 += d
        s2 += d * d
    return s1, s2


@njit(**_REDUCE)
def _grad_row_sums(gr, xr, weight, mean, has_weight):
    # sum(g), sum(g * (x - mean)) for g = dy * gamma, in float64
    sg = 0.0
    sgx = 0.0
    if has_weight:
        for c in range(xr.shape[0]):
            g = gr[c] * weight[c]
            sg += np.float64(g)
            sgx += np.float64(g * (xr[c] - mean))
    else:
        for c in range(xr.shape[0]):
            sg += np.float64(gr[c])
            sgx += np.float64(gr[c] * (xr[c] - mean))
    return sg, sgx


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _sum_chunks(partial):
    # (t1, t2)[c] = sum_p partial[p, (0, 1), c] in chunk order (as norm_sum_chunks in loops.h):
    # chunk-outer, so the loads are contiguous (p innermost strides 2C doubles)
    P, _, C = partial.shape
    t1 = np.zeros(C)
    t2 = np.zeros(C)
    for p in range(P):
        a = partial[p, 0]
        b = partial[p, 1]
        for c in range(C):
            t1[c] += a[c]
            t2[c] += b[c]
    return t1, t2


@njit(**_OPTS)
def batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean,
                            save_rstd, partial, coef, has_weight, has_bias, has_running,
                            momentum, eps):
    N, C = x.shape
    P = partial.shape[0]
    shift = x[0]
    # pass 1: per-chunk sums of d = x - shift and d^2
    for p in prange(P):
        s1 = partial[p, 0]
        s2 = partial[p, 1]
        for c in range(C):
            s1[c] = 0.0
            s2[c] = 0.0
        for n in range((p * N) // P, ((p + 1) * N) // P):
            xr = x[n]
            for c in range(C):
                d = np.float64(xr[c] - shift[c])
                s1[c] += d
                s2[c] += d * d
    # combine the chunks; coef = (mean hi, mean lo, gamma * rstd, beta)
    T = x.dtype.type
    inv_n = 1.0 / N
    t1, t2 = _sum_chunks(partial)
    for c in range(C):
        m = t1[c] * inv_n
        var = max(t2[c] * inv_n - m * m, 0.0)
        mean = np.float64(shift[c]) + m
        rstd = 1.0 / np.sqrt(var + eps)
        save_mean[c] = mean
        save_rstd[c] = rstd
        if has_running:
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = ((1.0 - momentum) * running_var[c]
                              + momentum * var * N / (N - 1.0))
        mh = T(mean)
        coef[0, c] = mh
        coef[1, c] = mean - mh
        coef[2, c] = rstd * weight[c] if has_weight else rstd
        coef[3, c] = bias[c] if has_bias else 0.0
    _affine_rows(x, out, coef, P, True)


@njit(**_OPTS)
def _affine_rows(x, out, coef, P, reverse):
    # out = ((x - coef[0]) - coef[1]) * coef[2] + coef[3], chunk by chunk; reverse walks each
    # chunk last row first (after a first pass, those rows are still cached); a lone pass goes
    # forwards, which the prefetchers prefer
    N, C = x.shape
    mh = coef[0]
    ml = coef[1]
    sc = coef[2]
    sh = coef[3]
    for p in prange(P):
        r0 = (p * N) // P
        r1 = ((p + 1) * N) // P
        for i in range(r1 - r0):
            n = r1 - 1 - i if reverse else r0 + i
            xr = x[n]
            orow = out[n]
            for c in range(C):
                orow[c] = ((xr[c] - mh[c]) - ml[c]) * sc[c] + sh[c]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, coef, n_chunks,
                           has_weight, has_bias, eps):
    C = x.shape[1]
    for c in range(C):
        rstd = 1.0 / np.sqrt(np.float64(running_var[c]) + eps)
        coef[0, c] = running_mean[c]
        coef[1, c] = 0.0
        coef[2, c] = rstd * weight[c] if has_weight else rstd
        coef[3, c] = bias[c] if has_bias else 0.0
    if n_chunks > 0:
        _affine_rows(x, out, coef, n_chunks, False)


@njit(**_OPTS)
def batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, partial, block,
                       coef, has_weight, need_dweight, need_dbias, accumulate):
    N, C = x.shape
    P = partial.shape[0]
    # pass 1: per-chunk sums of dy and dy * (x - mean), by blocks of _BLOCK rows
    for p in prange(P):
        sb = partial[p, 0]
        sw = partial[p, 1]
        bb = block[p, 0]
        bw = block[p, 1]
        for c in range(C):
            sb[c] = 0.0
            sw[c] = 0.0
        r1 = ((p + 1) * N) // P
        for n0 in range((p * N) // P, r1, _BLOCK):
            for c in range(C):
                bb[c] = 0.0
                bw[c] = 0.0
            for n in range(n0, min(n0 + _BLOCK, r1)):
                xr = x[n]
                gr = dy[n]
                for c in range(C):
                    bb[c] += gr[c]
                    bw[c] += gr[c] * (xr[c] - save_mean[c])
            for c in range(C):
                sb[c] += bb[c]
                sw[c] += bw[c]
    # dbeta = sum dy, dgamma = sum dy * xhat;
    # dx = gamma*rstd*dy - gamma*rstd^2*dgamma/N * (x - mean) - gamma*rstd*dbeta/N
    inv_n = 1.0 / N if N > 0 else 0.0
    t1, t2 = _sum_chunks(partial)
    for c in range(C):
        db = t1[c]
        rstd = np.float64(save_rstd[c])
        dg = t2[c] * rstd
        if need_dweight:
            dweight[c] = dweight[c] + dg if accumulate else dg
        if need_dbias:
            dbias[c] = dbias[c] + db if accumulate else db
        a = rstd * weight[c] if has_weight else rstd
        coef[0, c] = save_mean[c]
        coef[1, c] = a
        coef[2, c] = -a * rstd * dg * inv_n
        coef[3, c] = -a * db * inv_n
    mu = coef[0]
    ca = coef[1]
    cb = coef[2]
    cd = coef[3]
    for p in prange(P):
        r0 = (p * N) // P
        for n in range(((p + 1) * N) // P - 1, r0 - 1, -1):
            xr = x[n]
            gr = dy[n]
            dr = dx[n]
            for c in range(C):
                dr[c] = ca[c] * gr[c] + cb[c] * (xr[c] - mu[c]) + cd[c]


@njit(**_OPTS)
def layernorm_forward(x, weight, bias, out, save_mean, save_rstd, has_weight, has_bias, eps):
    N, C = x.shape
    T = x.dtype.type
    inv_c = 1.0 / C
    for n in prange(N):
        xr = x[n]
        orow = out[n]
        k = xr[0]
        s1, s2 = _shifted_row_sums(xr, k)
        m = s1 * inv_c
        var = max(s2 * inv_c - m * m, 0.0)
        mean = np.float64(k) + m
        mh = T(mean)
        ml = T(mean - mh)
        rs = T(1.0 / np.sqrt(var + eps))
        save_mean[n] = mh
        save_rstd[n] = rs
        if has_weight and has_bias:
            for c in range(C):
                orow[c] = ((xr[c] - mh) - ml) * rs * weight[c] + bias[c]
        elif has_weight:
            for c in range(C):
                orow[c] = ((xr[c] - mh) - ml) * rs * weight[c]
        elif has_bias:
            for c in range(C):
                orow[c] = ((xr[c] - mh) - ml) * rs + bias[c]
        else:
            for c in range(C):
                orow[c] = ((xr[c] - mh) - ml) * rs


@njit(**_OPTS)
def layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, partial, block,
                       has_weight, need_dweight, need_dbias, accumulate):
    # per row: g = dy * gamma, xhat = (x - mean) * rstd,
    # dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)); dgamma += dy * xhat, dbeta += dy
    N, C = x.shape
    P = partial.shape[0]
    T = x.dtype.type
    inv_c = 1.0 / C
    for p in prange(P):
        pw = partial[p, 0]
        pb = partial[p, 1]
        bw = block[p, 0]
        bb = block[p, 1]
        for c in range(C):
            pw[c] = 0.0
            pb[c] = 0.0
        r1 = ((p + 1) * N) // P
        for n0 in range((p * N) // P, r1, _BLOCK):
            for c in range(C):
                bw[c] = 0.0
                bb[c] = 0.0
            for n in range(n0, min(n0 + _BLOCK, r1)):
                xr = x[n]
                gr = dy[n]
                dr = dx[n]
                mean = save_mean[n]
                rstd = save_rstd[n]
                sg, sgx = _grad_row_sums(gr, xr, weight, mean, has_weight)
                mg = T(sg * inv_c)
                mgx = T(sgx * np.float64(rstd) * inv_c)
                if has_weight:
                    for c in range(C):
                        xh = (xr[c] - mean) * rstd
                        g = gr[c]
                        dr[c] = rstd * (g * weight[c] - mg - xh * mgx)
                        bw[c] += g * xh
                        bb[c] += g
                else:
                    for c in range(C):
                        xh = (xr[c] - mean) * rstd
                        dr[c] = rstd * (gr[c] - mg - xh * mgx)
            if has_weight:
                for c in range(C):
                    pw[c] += bw[c]
                    pb[c] += bb[c]
    if need_dweight or need_dbias:
        tws, tbs = _sum_chunks(partial)
        for c in range(C):
            tw = tws[c]
            tb = tbs[c]
            if need_dweight:
                dweight[c] = dweight[c] + tw if accumulate else tw
            if need_dbias:
                dbias[c] = dbias[c] + tb if accumulate else tb
