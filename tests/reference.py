"""Float64 NumPy twins of every public kernel of fastreg._kernels (the model: bottleneck's slow/).

One function per public kernel, named after it, taking the kernel's inputs in the kernel's order
(without its output buffers and without ``backend``) and returning what the kernel writes or
returns, in float64, written straight from the maths in the kernel's docstring. They share no code
with fastreg, except the dropout mask for large n (``dropout_keep``), which uses the package's own
vectorised NumPy Philox (``fastreg._kernels.dropout.philox4x32``); that one is pure NumPy,
independent of the compiled kernels, and checked here against the Random123 known answers
(``PHILOX_KAT``) and against the scalar Philox below (tests/test_kernels_reference.py).

Conventions:

* Backward twins return the gradient *contribution*; a kernel called with ``accumulate=True``
  must give ``old + contribution`` (the tests add it).
* The matmul twins also return the rounding scale ``sum |terms|`` of each dot product: a blocked
  float product obeys ``|got - exact| <= rtol * scale + atol``, which is a much tighter and
  fairer bound than a plain relative tolerance where terms cancel.
* Optimizer twins take the state as a dict of float64 arrays, update it in place and return the
  new parameters (one step; ``t`` is the 1-based step number).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

# --------------------------------------------------------------------------------------------
# activations (matmul's fused epilogue and elementwise.activation_*)
# --------------------------------------------------------------------------------------------

ACTIVATION_NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def act(v, name, slope=0.01):
    """f(v): identity, ReLU max(v, 0), leaky ReLU (v if v >= 0 else slope * v), sigmoid, tanh.

    NaN propagates (as in torch); sigmoid is written as exp(-log(1 + e^-v)), a form none of the
    kernels uses.
    """
    v = _f64(v)
    if name == "identity":
        return v
    if name == "relu":
        return np.where(v > 0, v, np.where(np.isnan(v), v, 0.0))
    if name == "leaky_relu":
        return np.where(v >= 0, v, slope * v)
    if name == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -v))
    if name == "tanh":
        return np.tanh(v)
    raise ValueError(name)


def act_grad(v, name, slope=0.01):
    """f'(v) from the activation's INPUT v (the kernels use the output; they must agree)."""
    v = _f64(v)
    if name == "identity":
        return np.ones_like(v)
    if name == "relu":
        return (v > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(v > 0, 1.0, slope)
    if name == "sigmoid":
        s = act(v, "sigmoid")
        return s * (1 - s)
    if name == "tanh":
        return 1 / np.cosh(v) ** 2
    raise ValueError(name)


# --------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------

def linear_forward(x, weight, bias, activation="identity", slope=0.01):
    """(out, scale): out[n, m] = act(sum_k x[n, k] w[m, k] + b[m]); scale = the same over |.|."""
    x64, w64 = _f64(x), _f64(weight)
    pre = np.einsum("nk,mk->nm", x64, w64)
    scale = np.abs(x64) @ np.abs(w64).T
    if bias is not None:
        pre = pre + _f64(bias)
        scale = scale + np.abs(_f64(bias))
    return act(pre, activation, slope), scale


def linear_backward_input(dy, weight):
    """(dx, scale): dx[n, k] = sum_m dy[n, m] w[m, k]."""
    dy64, w64 = _f64(dy), _f64(weight)
    return np.einsum("nm,mk->nk", dy64, w64), np.abs(dy64) @ np.abs(w64)


def linear_backward_weight(dy, x):
    """(dweight, dweight_scale, dbias, dbias_scale): dW[m, k] = sum_n dy[n, m] x[n, k],
    db[m] = sum_n dy[n, m]."""
    dy64, x64 = _f64(dy), _f64(x)
    return (np.einsum("nm,nk->mk", dy64, x64), np.abs(dy64).T @ np.abs(x64),
            dy64.sum(axis=0), np.abs(dy64).sum(axis=0))


# --------------------------------------------------------------------------------------------
# norm
# --------------------------------------------------------------------------------------------

def _affine(y, weight, bias):
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y


def batchnorm_forward_train(x, weight, bias, running_mean=None, running_var=None, momentum=0.1,
                            eps=1e-5):
    """(out, save_mean, save_rstd, running_mean, running_var, var).

    mu_c = mean_n x, var_c = mean_n (x - mu)^2, r = 1/sqrt(var + eps),
    out = (x - mu) r gamma + beta; running stats (None if not given):
    m <- (1 - momentum) m + momentum mu, v <- (1 - momentum) v + momentum var N / (N - 1).
    """
    x = _f64(x)
    n = x.shape[0]
    mu = x.sum(0) / n
    var = ((x - mu) ** 2).sum(0) / n
    rstd = 1.0 / np.sqrt(var + eps)
    out = _affine((x - mu) * rstd, weight, bias)
    rm = rv = None
    if running_mean is not None:
        rm = (1 - momentum) * _f64(running_mean) + momentum * mu
        rv = (1 - momentum) * _f64(running_var) + momentum * var * n / (n - 1)
    return out, mu, rstd, rm, rv, var


def batchnorm_forward_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """out = (x - m) / sqrt(v + eps) * gamma + beta."""
    y = (_f64(x) - _f64(running_mean)) / np.sqrt(_f64(running_var) + eps)
    return _affine(y, weight, bias)


def batchnorm_backward(dy, x, weight, save_mean, save_rstd):
    """(dx, dweight, dbias) of batch norm in training mode, from the saved mean and rstd:
    xhat = (x - mu) r, dbeta = sum_n dy, dgamma = sum_n dy xhat,
    dx = gamma r / N (N dy - dbeta - xhat dgamma)."""
    dy, x = _f64(dy), _f64(x)
    mean, rstd = _f64(save_mean), _f64(save_rstd)
    n = x.shape[0]
    xhat = (x - mean) * rstd
    dbeta = dy.sum(0)
    dgamma = (dy * xhat).sum(0)
    g = np.ones(x.shape[1]) if weight is None else _f64(weight)
    return g * rstd / n * (n * dy - dbeta - xhat * dgamma), dgamma, dbeta


def batchnorm_backward_eval(dy, x, weight, running_mean, running_var, eps):
    """(dx, dweight, dbias) of batch norm in eval mode (fixed statistics):
    r = 1/sqrt(v + eps), dx = dy gamma r, dgamma = sum_n dy (x - m) r, dbeta = sum_n dy."""
    dy, x = _f64(dy), _f64(x)
    r = 1.0 / np.sqrt(_f64(running_var) + eps)
    g = r if weight is None else _f64(weight) * r
    return dy * g, (dy * (x - _f64(running_mean)) * r).sum(0), dy.sum(0)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """(out, save_mean, save_rstd): per-row mu, r = 1/sqrt(var + eps), out = (x - mu) r g + b."""
    x = _f64(x)
    mu = x.mean(1)
    var = ((x - mu[:, None]) ** 2).mean(1)
    rstd = 1.0 / np.sqrt(var + eps)
    return _affine((x - mu[:, None]) * rstd[:, None], weight, bias), mu, rstd


def layernorm_backward(dy, x, weight, save_mean, save_rstd):
    """(dx, dweight, dbias) of layer norm: g = dy gamma, xhat = (x - mu) r,
    dx = r (g - mean_c g - xhat mean_c(g xhat)), dgamma = sum_n dy xhat, dbeta = sum_n dy."""
    dy, x = _f64(dy), _f64(x)
    mean, rstd = _f64(save_mean)[:, None], _f64(save_rstd)[:, None]
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * _f64(weight)
    c = x.shape[1]
    dx = rstd * (g - g.sum(1, keepdims=True) / c - xhat * (g * xhat).sum(1, keepdims=True) / c)
    return dx, (dy * xhat).sum(0), dy.sum(0)


# --------------------------------------------------------------------------------------------
# dropout: Philox4x32-10 from the Random123 spec, in plain Python integers
# --------------------------------------------------------------------------------------------

#: Random123 known-answer vectors for Philox4x32-10 (kat_vectors: counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
_M64 = (1 << 64) - 1


def philox_scalar(ctr, key):
    """One Philox4x32-10 block: 10 rounds of (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1,
    lo(M0 c0)), the key bumped by the Weyl constants between rounds."""
    c0, c1, c2, c3 = (int(c) for c in ctr)
    k0, k1 = (int(k) for k in key)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF,
                          (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def philox4x32_kernel(counters, key):
    """(B, 4) uint32 output blocks of Philox4x32-10 for (B, 4) counters and a (k0, k1) key."""
    out = [philox_scalar(row, key) for row in np.asarray(counters)]
    return np.array(out, dtype=np.uint32).reshape(-1, 4)


def keep_threshold(p):
    """floor((1 - p) 2**32), exactly from the float p."""
    return int((1 - Fraction(float(p))) * 2**32)


def dropout_keep_scalar(n, p, seed, offset):
    """Keep flags by the spec: element i <- word i % 4 of block i // 4 at counter offset + i // 4
    (mod 2**64), key (seed lo32, seed hi32); kept iff word < keep_threshold(p)."""
    thr = keep_threshold(p)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    out = []
    for b in range((n + 3) // 4):
        c = (offset + b) & _M64
        out.extend(w < thr for w in philox_scalar((c & 0xFFFFFFFF, c >> 32, 0, 0), key))
    return np.array(out[:n], dtype=bool)


def dropout_keep(n, p, seed, offset):
    """Keep flags: the scalar reference up to 1024 elements, above that fastreg's vectorised
    NumPy Philox (pure NumPy, KAT-checked; the scalar loop would take seconds)."""
    if n <= 1024:
        return dropout_keep_scalar(n, p, seed, offset)
    from fastreg._kernels.dropout import dropout_keep_reference
    return dropout_keep_reference(n, p, seed, offset)


def packed(keep):
    """Mask bytes by the spec: bit j (LSB first) of byte k <-> element 8k + j; unused bits 0."""
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    nbytes = (keep.size + 7) // 8
    bits = np.zeros(nbytes * 8, dtype=np.uint8)
    bits[:keep.size] = keep
    weights = (1 << np.arange(8)).astype(np.uint8)
    return (bits.reshape(nbytes, 8) * weights).sum(axis=1).astype(np.uint8)


def unpacked(mask, n):
    """Keep flags of the first n elements of a packed mask."""
    mask = np.asarray(mask, dtype=np.uint8)
    bits = (mask[:, None] >> np.arange(8, dtype=np.uint8)) & 1
    return bits.reshape(-1)[:n].astype(bool)


def dropout_mask(n, p, seed, offset):
    """The packed mask bytes."""
    return packed(dropout_keep(n, p, seed, offset))


def dropout_forward(x, p, scale, seed, offset):
    """(out, mask): out = x scale where kept, else 0 (dropped inf / NaN give 0 too)."""
    keep = dropout_keep(np.size(x), p, seed, offset).reshape(np.shape(x))
    return np.where(keep, _f64(x) * scale, 0.0), packed(keep)


def dropout_backward(dy, mask, scale):
    """dx = dy scale where the mask bit is set, else 0."""
    keep = unpacked(mask, np.size(dy)).reshape(np.shape(dy))
    return np.where(keep, _f64(dy) * scale, 0.0)


# --------------------------------------------------------------------------------------------
# optim: one step of torch.optim's algorithms (single-tensor order of operations)
# --------------------------------------------------------------------------------------------

def _penalised(w, g, l1, l2, maximize):
    g = g + l1 * np.sign(w) + 2.0 * l2 * w
    return -g if maximize else g


def sgd_step(w, g, st, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, l1=0.0, l2=0.0):
    """st: {"buf"} when momentum != 0; t == 1 is the first step (buf <- g)."""
    g = _penalised(w, g, l1, l2, maximize) + weight_decay * w
    if momentum != 0:
        st["buf"] = g.copy() if t == 1 else momentum * st["buf"] + (1 - dampening) * g
        g = g + momentum * st["buf"] if nesterov else st["buf"]
    return w - lr * g


def adam_step(w, g, st, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, amsgrad=False, maximize=False, l1=0.0, l2=0.0):
    """st: {"m", "v"} and {"vmax"} with amsgrad."""
    g = _penalised(w, g, l1, l2, maximize)
    if decoupled_weight_decay:
        w = w * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    st["m"] = beta1 * st["m"] + (1 - beta1) * g
    st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
    v = st["v"]
    if amsgrad:
        st["vmax"] = np.maximum(st["vmax"], st["v"])
        v = st["vmax"]
    mhat = st["m"] / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    return w - lr * mhat / (np.sqrt(vhat) + eps)


def rmsprop_step(w, g, st, t, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False, l1=0.0, l2=0.0):
    """st: {"sq"}, {"ga"} when centered, {"buf"} when momentum > 0."""
    g = _penalised(w, g, l1, l2, maximize) + weight_decay * w
    st["sq"] = alpha * st["sq"] + (1 - alpha) * g * g
    vt = st["sq"]
    if centered:
        st["ga"] = alpha * st["ga"] + (1 - alpha) * g
        vt = vt - st["ga"] ** 2
    if momentum > 0:
        st["buf"] = momentum * st["buf"] + g / (np.sqrt(vt) + eps)
        return w - lr * st["buf"]
    return w - lr * g / (np.sqrt(vt) + eps)


def adagrad_step(w, g, st, t, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                 maximize=False, l1=0.0, l2=0.0):
    """st: {"sum"}."""
    g = _penalised(w, g, l1, l2, maximize) + weight_decay * w
    clr = lr / (1 + (t - 1) * lr_decay)
    st["sum"] = st["sum"] + g * g
    return w - clr * g / (np.sqrt(st["sum"]) + eps)


def adadelta_step(w, g, st, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False,
                  l1=0.0, l2=0.0):
    """st: {"sq", "acc"}."""
    g = _penalised(w, g, l1, l2, maximize) + weight_decay * w
    st["sq"] = rho * st["sq"] + (1 - rho) * g * g
    delta = np.sqrt(st["acc"] + eps) / np.sqrt(st["sq"] + eps) * g
    st["acc"] = rho * st["acc"] + (1 - rho) * delta * delta
    return w - lr * delta


#: Per optimizer: its twin and its state names (twin key, kernel argument), in kernel order.
OPTIMIZERS = {
    "sgd": (sgd_step, (("buf", "momentum_buffer"),)),
    "adam": (adam_step, (("m", "exp_avg"), ("v", "exp_avg_sq"), ("vmax", "max_exp_avg_sq"))),
    "rmsprop": (rmsprop_step, (("sq", "square_avg"), ("ga", "grad_avg"),
                               ("buf", "momentum_buffer"))),
    "adagrad": (adagrad_step, (("sum", "state_sum"),)),
    "adadelta": (adadelta_step, (("sq", "square_avg"), ("acc", "acc_delta"))),
}


def optim_state_needed(kind, opts):
    """The state keys the kernel needs for these options."""
    need = {"sgd": {"buf": opts.get("momentum", 0) != 0},
            "adam": {"m": True, "v": True, "vmax": opts.get("amsgrad", False)},
            "rmsprop": {"sq": True, "ga": opts.get("centered", False),
                        "buf": opts.get("momentum", 0) > 0},
            "adagrad": {"sum": True}, "adadelta": {"sq": True, "acc": True}}[kind]
    return [k for k, v in need.items() if v]


# --------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------

def activation_forward(x, activation, slope=0.01):
    return act(x, activation, slope)


def activation_backward_from_input(dy, x, activation, slope=0.01):
    """dx = dy f'(x), from the activation's input x (the kernel gets y = f(x))."""
    return _f64(dy) * act_grad(x, activation, slope)


def _log_softmax(z):
    z = _f64(z)
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def softmax_cross_entropy_forward(logits, target, label_smoothing=0.0):
    """(mean loss, probs): loss_n = (1 - eps)(-log p[n, y_n]) + eps mean_c(-log p[n, c])."""
    logp = _log_softmax(logits)
    n = logp.shape[0]
    nll = -logp[np.arange(n), target]
    eps = label_smoothing
    return float(np.mean((1 - eps) * nll + eps * (-logp.mean(axis=1)))), np.exp(logp)


def softmax_cross_entropy_backward(probs, target, label_smoothing=0.0, grad_scale=None):
    """dlogits = (p - (1 - eps) onehot(y) - eps / C) g, g = 1/N by default."""
    p = _f64(probs)
    n, c = p.shape
    onehot = np.zeros_like(p)
    onehot[np.arange(n), target] = 1.0
    g = 1.0 / n if grad_scale is None else grad_scale
    return (p - (1 - label_smoothing) * onehot - label_smoothing / c) * g


def fill(a, value):
    return np.full(np.shape(a), value, dtype=np.float64)


def scale(x, alpha):
    return alpha * _f64(x)


def add_(out, a, alpha=1.0):
    return _f64(out) + alpha * _f64(a)


def subtract(a, b):
    return _f64(a) - _f64(b)


def sum_squares(a):
    return float(np.sum(_f64(a) ** 2))


def sum_abs(a):
    return float(np.sum(np.abs(_f64(a))))


def column_sum(a):
    """Contribution: out[j] = sum_i a[i, j]."""
    return _f64(a).sum(axis=0)


def mse_forward(x, t):
    """(sum of diff^2, diff) with diff = x - t as the kernel stores it (in x's dtype)."""
    diff = np.asarray(x) - np.asarray(t)           # the stored diff is rounded to the dtype
    return float(np.sum(_f64(diff) ** 2)), _f64(x) - _f64(t)


def _log_sigmoid(v):
    return -np.log1p(np.exp(-np.abs(v))) + np.minimum(v, 0)


def bce_with_logits_forward(x, t, pos_weight=None, weight=None):
    """sum_i w_i [-p t_i log s(x_i) - (1 - t_i) log(1 - s(x_i))]."""
    x, t = _f64(x), _f64(t)
    p = 1.0 if pos_weight is None else _f64(pos_weight)
    ls = _log_sigmoid(x)
    per = -(p * t * ls + (1 - t) * (ls - x))
    if weight is not None:
        per = per * _f64(weight)
    return float(per.sum())


def bce_with_logits_backward(x, t, pos_weight, weight, scale):
    """grad_i = scale w_i [(p t_i + 1 - t_i) s(x_i) - p t_i]."""
    x, t = _f64(x), _f64(t)
    p = 1.0 if pos_weight is None else _f64(pos_weight)
    g = (p * t + 1 - t) / (1 + np.exp(-x)) - p * t
    if weight is not None:
        g = g * _f64(weight)
    return scale * g


def softmax_xent_weighted_forward(logits, target, class_weight, eps=0.0):
    """(total, denom, probs): l_n = (1 - eps) w_{y_n}(-log p[n, y_n]) + eps/C sum_c w_c(-log p),
    total = sum_n l_n, denom = sum_n w_{y_n}."""
    logp = _log_softmax(logits)
    n, c = logp.shape
    w = _f64(class_weight)
    per = (1 - eps) * -logp[np.arange(n), target] * w[target] - eps / c * (logp * w).sum(1)
    return float(per.sum()), float(w[target].sum()), np.exp(logp)


def softmax_xent_weighted_backward(probs, target, class_weight, eps, scale):
    """scale (p ((1 - eps) w_y + eps/C W) - (1 - eps) w_y onehot(y) - eps/C w), W = sum w."""
    p = _f64(probs)
    n, c = p.shape
    w = _f64(class_weight)
    g = p * ((1 - eps) * w[target] + eps / c * w.sum())[:, None] - eps / c * w
    g[np.arange(n), target] -= (1 - eps) * w[target]
    return scale * g


# --------------------------------------------------------------------------------------------
# embedding (fastreg._kernels.embedding)
# --------------------------------------------------------------------------------------------

def embedding_forward(weight, indices):
    """out[s, :] = W[indices[s], :] (fancy indexing; shape (*S, D))."""
    return _f64(weight)[np.asarray(indices)]


def embedding_backward(grad_output, indices, num_embeddings, padding_idx=None,
                       scale_grad_by_freq=False):
    """The contribution to grad_weight: row k gets s_k * sum of grad_output rows with index k
    (none for padding_idx), s_k = 1 / count(k) with scale_grad_by_freq (np.add.at: unbuffered,
    so duplicates accumulate)."""
    idx = np.asarray(indices).reshape(-1).astype(np.int64)
    dy = _f64(grad_output).reshape(idx.shape[0], -1)
    if scale_grad_by_freq:
        counts = np.bincount(idx, minlength=num_embeddings).astype(np.float64)
        dy = dy / counts[idx][:, None]
    if padding_idx is not None:
        keep = idx != padding_idx
        idx, dy = idx[keep], dy[keep]
    out = np.zeros((num_embeddings, dy.shape[1]))
    np.add.at(out, idx, dy)
    return out


def embedding_renorm_(weight, indices, max_norm, norm_type=2.0):
    """Rows looked up whose p-norm exceeds max_norm scaled by max_norm / (norm + 1e-7); the
    others unchanged (a new float64 array)."""
    w = _f64(weight).copy()
    for k in np.unique(np.asarray(indices)):
        norm = np.linalg.norm(w[k], ord=norm_type)
        if norm > max_norm:
            w[k] *= max_norm / (norm + 1e-7)
    return w


# --- finite differences ----------------------------------------------------------------------

def assert_model_gradients_match_central_differences(loss_at, model, x, dx, rng, per_param,
                                                     x_indices, h=1e-6, rtol=1e-5, atol=1e-8):
    """The gradients a float64 backward left -- ``p.grad`` of every parameter of ``model`` and
    ``dx`` (dL/dx) -- against central differences (L(v + h) - L(v - h)) / 2h of ``loss_at()``
    (which must re-run the forward with fixed randomness): ``per_param`` random entries of each
    parameter, and ``x`` at ``x_indices``. Every perturbed value is restored."""
    def central(a, i):
        old = a[i]
        a[i] = old + h
        lp = loss_at()
        a[i] = old - h
        lm = loss_at()
        a[i] = old
        return (lp - lm) / (2 * h)
    for name, p in model.named_parameters():
        flat, gflat = p.data.reshape(-1), p.grad.reshape(-1)
        for i in rng.choice(flat.size, size=min(per_param, flat.size), replace=False):
            np.testing.assert_allclose(gflat[i], central(flat, i), rtol=rtol, atol=atol,
                                       err_msg=name)
    for idx in x_indices:
        np.testing.assert_allclose(dx[idx], central(x, idx), rtol=rtol, atol=atol,
                                   err_msg=f"dx{idx}")
