"""Linear-layer products: forward with a fused bias + activation epilogue, and the two backward
products, dbias fused into the weight-gradient pass.

Shapes (llm.c style; all arrays C-contiguous and of one dtype, float32 or float64)::

    x       (N, K)   layer input, N rows (batch), K input features
    weight  (M, K)   M output features (torch.nn.Linear layout)
    bias    (M,)     or None
    out     (N, M)   act(x @ weight.T + bias), written in place
    dy      (N, M)   gradient w.r.t. the pre-activation output
    dx      (N, K)   gradient w.r.t. x, overwritten
    dweight (M, K)   gradient w.r.t. weight, accumulated (or overwritten)
    dbias   (M,)     gradient w.r.t. bias, accumulated (or overwritten), or None

Every function validates its arguments here, then calls the backend chosen by ``backend``
(``"numba"``, ``"cython"``, ``"blas"``, ``"auto"``, or None for the global setting) through
:func:`fastreg._kernels._dispatch.kernel`. The own kernels are cache-blocked packed GEMMs,
parallel over output blocks; ``"blas"`` is NumPy's matmul plus a NumPy epilogue. When the
arrays are CUDA device arrays (all of them: a host / device mix is a ValueError) the call runs
the CUDA backend, ``_matmul_cuda`` (shared-memory tiled GEMMs), whatever the backend setting.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ..._checks import check_array, check_scalar, float_dtype, may_share_memory, on_device
from .. import _dispatch
from .codes import ACT_IDENTITY, GRAD_CODES, GRAD_RELU_DROPOUT, activation_code

__all__ = ["linear_backward_input", "linear_backward_input_act", "linear_backward_weight",
           "linear_forward"]

#: The kernels index with C ints.
_MAX_DIM = 2**31 - 1
def _check_dims(*dims: int) -> None:
    if max(dims) > _MAX_DIM:
        raise ValueError(f"array dimensions must be at most {_MAX_DIM}, got {dims}")


def _check_outputs_apart(outputs: dict, inputs: dict) -> None:
    """Outputs must not share memory with inputs nor with each other (inputs may alias)."""
    outs = [(k, v) for k, v in outputs.items() if v is not None]
    for i, (on, o) in enumerate(outs):
        for other, a in (*inputs.items(), *outs[i + 1:]):
            if a is not None and may_share_memory(o, a):
                raise ValueError(f"{on} must not share memory with {other}")


def _on_device(**arrays) -> bool:
    """:func:`on_device`, with the all-host-ndarray case first: it is the batch-1 inference
    path, where a microsecond is a tenth of the call."""
    for a in arrays.values():
        if a is not None and type(a) is not np.ndarray:
            return on_device(**arrays)
    return False


def _check_slope(slope) -> float:
    # the common case (a finite float) without check_scalar's generality: this sits on the
    # batch-1 inference path, where microseconds of Python are the whole cost
    if type(slope) is float and math.isfinite(slope):
        return slope
    return check_scalar("slope", slope)


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                   activation: int | str = ACT_IDENTITY, slope: float = 0.01,
                   backend: str | None = None) -> np.ndarray:
    r"""Fused linear layer: ``out = act(x @ weight.T + bias)``.

    .. math:: \mathrm{out}_{nm} = f\Big(\sum_k x_{nk} W_{mk} + b_m\Big)

    with :math:`f` the identity, ReLU :math:`\max(v, 0)`, leaky ReLU (:math:`v` if :math:`v \ge 0`
    else :math:`\text{slope}\cdot v`), sigmoid :math:`1/(1+e^{-v})` or tanh, applied to each
    output tile while it is still in registers / L1 (no second pass over ``out``).

    Parameters
    ----------
    x : ndarray, shape (N, K)
    weight : ndarray, shape (M, K)
    bias : ndarray, shape (M,), or None
    out : ndarray, shape (N, M)
        Written in place; must not overlap the inputs.
    activation : int or str
        A code from :mod:`fastreg._kernels.common.codes` or its name ("identity", "relu",
        "leaky_relu", "sigmoid", "tanh").
    slope : float
        Negative-side slope of the leaky ReLU (finite).
    backend : {"numba", "cython", "blas", "auto", "cuda"} or None
        Ignored for CUDA device arrays, which always run the CUDA kernels (a CPU backend named
        explicitly is then a ValueError).

    Returns
    -------
    out : ndarray
    """
    dt = float_dtype("x", x)
    check_array("x", x, ndim=2)
    check_array("weight", weight, dtype=dt, ndim=2)
    N, K = x.shape
    M = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"x and weight shapes do not match: x {x.shape} needs weight (M, {K}), "
                         f"got weight {weight.shape}")
    check_array("bias", bias, dtype=dt, ndim=1, allow_none=True)
    if bias is not None and bias.shape[0] != M:
        raise ValueError(f"bias and weight shapes do not match: weight {weight.shape} needs "
                         f"bias ({M},), got bias {bias.shape}")
    check_array("out", out, dtype=dt, ndim=2, writeable=True)
    if out.shape != (N, M):
        raise ValueError(f"out must have shape (N, M) = ({N}, {M}) for x {x.shape} and weight "
                         f"{weight.shape}, got out {out.shape}")
    act = activation_code(activation)
    slope = _check_slope(slope)
    _check_dims(N, K, M)
    dev = _on_device(x=x, weight=weight, bias=bias, out=out)
    _check_outputs_apart({"out": out}, {"x": x, "weight": weight, "bias": bias})
    return run_linear_forward(x, weight, bias, out, act, slope, dev, backend)


def _check_input_grad_args(dy, weight, dx) -> tuple:
    """The checks of dx = dy @ weight: dtype, ndim, matching shapes and sizes, a writeable dx."""
    dt = float_dtype("dy", dy)
    check_array("dy", dy, ndim=2)
    check_array("weight", weight, dtype=dt, ndim=2)
    N, M = dy.shape
    K = weight.shape[1]
    if weight.shape[0] != M:
        raise ValueError(f"dy and weight shapes do not match: dy {dy.shape} needs weight "
                         f"({M}, K), got weight {weight.shape}")
    check_array("dx", dx, dtype=dt, ndim=2, writeable=True)
    if dx.shape != (N, K):
        raise ValueError(f"dx must have shape (N, K) = ({N}, {K}) for dy {dy.shape} and weight "
                         f"{weight.shape}, got dx {dx.shape}")
    _check_dims(N, K, M)
    return dt, N, K


def linear_backward_input(dy: np.ndarray, weight: np.ndarray, dx: np.ndarray,
                          backend: str | None = None) -> np.ndarray:
    r"""Gradient of a linear layer w.r.t. its input: ``dx = dy @ weight`` (overwrites ``dx``).

    .. math:: \mathrm{dx}_{nk} = \sum_m \mathrm{dy}_{nm} W_{mk}

    Parameters
    ----------
    dy : ndarray, shape (N, M)
    weight : ndarray, shape (M, K)
    dx : ndarray, shape (N, K)
        Written in place; must not overlap the inputs.
    backend : {"numba", "cython", "blas", "auto", "cuda"} or None
        Ignored for CUDA device arrays, which always run the CUDA kernels (a CPU backend named
        explicitly is then a ValueError).

    Returns
    -------
    dx : ndarray
    """
    _check_input_grad_args(dy, weight, dx)
    dev = _on_device(dy=dy, weight=weight, dx=dx)
    _check_outputs_apart({"dx": dx}, {"dy": dy, "weight": weight})
    return run_linear_backward_input(dy, weight, dx, dev, backend)


def linear_backward_input_act(dy: np.ndarray, weight: np.ndarray, dx: np.ndarray,
                              act_out: np.ndarray, activation: int | str, slope: float = 0.01,
                              scale: float = 1.0, backend: str | None = None) -> np.ndarray:
    r"""The input gradient of a linear layer taken through the activation that precedes it:
    ``dx = act_grad(dy @ weight, act_out)`` (overwrites ``dx``).

    For ``Linear_i -> act -> Linear_{i+1}``, ``dy`` is the gradient w.r.t. Linear_{i+1}'s output,
    ``act_out`` the activation's saved output (Linear_{i+1}'s input) and ``dx`` the gradient
    w.r.t. the activation's *input*. With :math:`g = \mathrm{dy}\,W` and :math:`y` = act_out:

    .. math::
        \mathrm{relu}: [y > 0]\,g \qquad
        \mathrm{leaky\_relu}: y > 0 \;?\; g : g\cdot\text{slope} \qquad
        \mathrm{sigmoid}: g\,y\,(1 - y) \qquad
        \mathrm{tanh}: g\,(1 - y^2) \qquad
        \mathrm{relu\_dropout}: [y > 0]\,g\cdot\text{scale}

    ("relu_dropout": a fused ReLU -> Dropout, ``act_out`` the dropout's output, ``scale`` its
    keep scale; "identity": plain ``dy @ weight``). Bit-identical to
    :func:`linear_backward_input` followed by ``elementwise.activation_backward`` (or
    ``dropout``'s ``run_relu_dropout_backward``): the same float operations on the same values.
    The Cython backend applies it in the GEMM's epilogue, on each finished row sliver of ``dx``
    while it is in cache (no second kernel call, no write and re-read of ``dx``); the numba,
    blas and CUDA backends run the GEMM and then the separate activation-backward kernel.

    Parameters
    ----------
    dy : ndarray, shape (N, M)
    weight : ndarray, shape (M, K)
    dx : ndarray, shape (N, K)
        Written in place; must not overlap the inputs.
    act_out : ndarray, shape (N, K)
        The activation's output; must not overlap ``dx``.
    activation : int or str
        An activation code or name ("identity", "relu", "leaky_relu", "sigmoid", "tanh") or
        "relu_dropout".
    slope : float
        Leaky ReLU's negative-side slope (finite).
    scale : float
        The dropout's scale for "relu_dropout" (finite, >= 1: ``1/(1-p)`` or 1).
    backend : {"numba", "cython", "blas", "auto", "cuda"} or None

    Returns
    -------
    dx : ndarray
    """
    dt, N, K = _check_input_grad_args(dy, weight, dx)
    check_array("act_out", act_out, dtype=dt, shape=(N, K))
    if isinstance(activation, str) and activation.lower() in GRAD_CODES:
        code = GRAD_CODES[activation.lower()]
    elif isinstance(activation, str):
        raise ValueError(f"activation must be one of {sorted(GRAD_CODES)}, got {activation!r}")
    elif activation == GRAD_RELU_DROPOUT and not isinstance(activation, bool):
        code = GRAD_RELU_DROPOUT
    else:
        code = activation_code(activation)
    slope = _check_slope(slope)
    scale = check_scalar("scale", scale)
    if code == GRAD_RELU_DROPOUT and not scale >= 1.0:
        raise ValueError(f"scale must be >= 1 for relu_dropout (1/(1-p) or 1), got {scale!r}")
    dev = _on_device(dy=dy, weight=weight, dx=dx, act_out=act_out)
    _check_outputs_apart({"dx": dx}, {"dy": dy, "weight": weight, "act_out": act_out})
    return run_linear_backward_input_act(dy, weight, dx, act_out, code, slope, scale, dev, backend)


def linear_backward_weight(dy: np.ndarray, x: np.ndarray, dweight: np.ndarray,
                           dbias: np.ndarray | None, accumulate: bool = True,
                           backend: str | None = None) -> None:
    r"""Gradients of a linear layer w.r.t. weight and bias, in one pass over ``dy``.

    .. math::
        \mathrm{dW}_{mk} \mathrel{(+)=} \sum_n \mathrm{dy}_{nm} x_{nk}, \qquad
        \mathrm{db}_m \mathrel{(+)=} \sum_n \mathrm{dy}_{nm}

    Parameters
    ----------
    dy : ndarray, shape (N, M)
    x : ndarray, shape (N, K)
    dweight : ndarray, shape (M, K)
    dbias : ndarray, shape (M,), or None
    accumulate : bool
        True adds to ``dweight`` / ``dbias`` (gradient accumulation, as ``Parameter.grad``);
        False overwrites them.
    backend : {"numba", "cython", "blas", "auto", "cuda"} or None
        Ignored for CUDA device arrays, which always run the CUDA kernels (a CPU backend named
        explicitly is then a ValueError).
    """
    dt = float_dtype("dy", dy)
    check_array("dy", dy, ndim=2)
    check_array("x", x, dtype=dt, ndim=2)
    N, M = dy.shape
    K = x.shape[1]
    if x.shape[0] != N:
        raise ValueError(f"dy and x shapes do not match: dy {dy.shape} needs x ({N}, K), "
                         f"got x {x.shape}")
    check_array("dweight", dweight, dtype=dt, ndim=2, writeable=True)
    if dweight.shape != (M, K):
        raise ValueError(f"dweight must have shape (M, K) = ({M}, {K}) for dy {dy.shape} and "
                         f"x {x.shape}, got dweight {dweight.shape}")
    check_array("dbias", dbias, dtype=dt, ndim=1, writeable=True, allow_none=True)
    if dbias is not None and dbias.shape[0] != M:
        raise ValueError(f"dbias must have shape ({M},) for dy {dy.shape}, got dbias "
                         f"{dbias.shape}")
    if not isinstance(accumulate, (bool, np.bool_)):
        raise TypeError(f"accumulate must be a bool, got {accumulate!r}")
    _check_dims(N, K, M)
    dev = _on_device(dy=dy, x=x, dweight=dweight, dbias=dbias)
    _check_outputs_apart({"dweight": dweight, "dbias": dbias}, {"dy": dy, "x": x})
    run_linear_backward_weight(dy, x, dweight, dbias, bool(accumulate), dev, backend)


# ---------------------------------------------------------------------------------------------
# Trusted entry points: for callers that have checked the arrays themselves (nn layers,
# inference plans). Same meaning as the functions above, with the activation as a code, the
# placement as ``device`` (True: CUDA device arrays) and no argument checks at all: passing
# anything the checked function would reject is undefined behaviour.
# ---------------------------------------------------------------------------------------------

def run_linear_forward(x, weight, bias, out, act: int, slope: float, device: bool = False,
                       backend: str | None = None):
    """Trusted :func:`linear_forward`."""
    _dispatch.kernel("matmul", "linear_forward", backend, device)(x, weight, bias, out, act,
                                                                   slope)
    return out


def run_linear_backward_input(dy, weight, dx, device: bool = False, backend: str | None = None):
    """Trusted :func:`linear_backward_input`."""
    _dispatch.kernel("matmul", "linear_backward_input", backend, device)(dy, weight, dx)
    return dx


#: The fused input-gradient kernel: the Cython backend's only (HELPERS in
#: tests/test_backend_contract.py); the others take run_linear_backward_input_act's fallback.
_FUSED_DX = "linear_backward_input_act"
#: dx GEMM kernel -> the fused kernel of the same backend module, or None
_fused_dx_cache: dict = {}


def _fused_dx(gemm):
    fn = _fused_dx_cache.get(gemm, _fused_dx_cache)
    if fn is _fused_dx_cache:
        mod = sys.modules.get(getattr(gemm, "__module__", None) or "")
        fn = _fused_dx_cache[gemm] = getattr(mod, _FUSED_DX, None)
    return fn


def run_linear_backward_input_act(dy, weight, dx, act_out, code: int, slope: float,
                                  scale: float, device: bool = False, backend: str | None = None):
    """Trusted :func:`linear_backward_input_act` (the activation as a code: ``ACT_*`` or
    ``GRAD_RELU_DROPOUT``). Cython: one GEMM with the activation's backward in its epilogue;
    numba / blas / CUDA: the GEMM, then the separate activation-backward pass (same bits)."""
    gemm = _dispatch.kernel("matmul", "linear_backward_input", backend, device)
    if code == ACT_IDENTITY:
        gemm(dy, weight, dx)
        return dx
    param = scale if code == GRAD_RELU_DROPOUT else slope
    fused = None if device else _fused_dx(gemm)
    if fused is not None:
        fused(dy, weight, dx, act_out, code, param)
        return dx
    gemm(dy, weight, dx)
    return run_act_grad_pass(dx, act_out, code, param, device,
                             None if backend == "blas" else backend)


def run_act_grad_pass(dx, act_out, code: int, param: float, device: bool = False,
                      backend: str | None = None):
    """The epilogue of :func:`run_linear_backward_input_act` as its own pass over ``dx`` (in
    place): ``elementwise``'s activation backward, or ``dropout``'s ReLU -> Dropout backward (the
    calls the unfused layers make; ``backend`` names theirs, None: the global setting)."""
    if code == GRAD_RELU_DROPOUT:
        from .. import dropout as _dropout
        _dropout.run_relu_dropout_backward(dx, act_out, dx, param, device, backend)
    elif code != ACT_IDENTITY:
        from .. import elementwise as _elementwise
        _elementwise.run_activation_backward(dx, act_out, dx, code, param, device, backend)
    return dx


def run_linear_backward_weight(dy, x, dweight, dbias, accumulate: bool, device: bool = False,
                               backend: str | None = None) -> None:
    """Trusted :func:`linear_backward_weight`."""
    _dispatch.kernel("matmul", "linear_backward_weight", backend, device)(dy, x, dweight, dbias,
                                                                          accumulate)


# ---------------------------------------------------------------------------------------------
# bf16 autocast products (trusted, float32 host arrays only): the operands rounded to bf16 (ties
# to even), float32 accumulation, and with ``round_out`` the result rounded to bf16 once before
# it is accumulated / activated -- torch's CPU autocast of a Linear (see fastreg.amp). Cython:
# bf16.h (rounds while packing); numba / blas: bf16.fallback (rounded copies + their float32
# kernels).
# ---------------------------------------------------------------------------------------------

_BF16_NAMES = ("linear_forward_bf16", "linear_backward_input_bf16", "linear_backward_weight_bf16")
_F32_NAMES = ("linear_forward", "linear_backward_input", "linear_backward_weight")
_bf16_kernels_cache: dict[str, tuple] = {}


def _bf16_kernels(backend: str | None) -> tuple:
    # load the float32 kernel first: it applies "auto"'s numba fallback when Cython is not built
    _dispatch.kernel("matmul", "linear_forward", backend)
    be = _dispatch.resolve("matmul", backend)
    ks = _bf16_kernels_cache.get(be)
    if ks is None:
        if be == "cython":
            ks = tuple(_dispatch.kernel("matmul", n, be) for n in _BF16_NAMES)
        else:
            from .bf16 import fallback
            ks = fallback(*(_dispatch.kernel("matmul", n, be) for n in _F32_NAMES))
        _bf16_kernels_cache[be] = ks
    return ks


def run_linear_forward_bf16(x, weight, bias, out, act: int, slope: float, round_out: bool = True,
                            backend: str | None = None):
    """Trusted bf16 :func:`linear_forward`: ``out = act(bf16(bf16(x) @ bf16(W).T + bf16(b)))``
    (the outer bf16 only with ``round_out``)."""
    _bf16_kernels(backend)[0](x, weight, bias, out, act, slope, round_out)
    return out


def run_linear_backward_input_bf16(dy, weight, dx, round_out: bool = True,
                                   backend: str | None = None):
    """Trusted bf16 :func:`linear_backward_input`: ``dx = bf16(bf16(dy) @ bf16(W))``."""
    _bf16_kernels(backend)[1](dy, weight, dx, round_out)
    return dx


def run_linear_backward_weight_bf16(dy, x, dweight, dbias, accumulate: bool,
                                    round_out: bool = True, backend: str | None = None) -> None:
    """Trusted bf16 :func:`linear_backward_weight`: ``dW (+)= bf16(bf16(dy).T @ bf16(x))``,
    ``db (+)= bf16(sum_n bf16(dy))``; with ``accumulate`` the rounded product is added to what
    ``dW``/``db`` held (torch: the bf16 gradient cast to float32 and added to ``.grad``)."""
    _bf16_kernels(backend)[2](dy, x, dweight, dbias, accumulate, round_out)
