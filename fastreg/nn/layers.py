"""Layers: Linear, BatchNorm1d, LayerNorm, Dropout, activations, Identity, Flatten, Sequential.

Shapes: N = batch rows, K = in_features, M = out_features, C = features normalized.
Each layer is an llm.c-style pair: ``forward(x)`` writes into an output array the layer owns
(reused across calls of the same shape) and caches what backward needs; ``backward(dy)``
accumulates parameter gradients (``+=``) and returns dL/dx in another owned array.
The arithmetic runs in ``fastreg._kernels``; this file only validates and wires buffers.

Each layer also describes itself once, next to its forward (:mod:`fastreg.nn._spec`): a
``layer_spec`` (constructor arguments with their checks, the state they imply, fusion flags) and
``inference_ops()`` (its eval-mode fold), registered with ``@register_layer``; model files,
``inference.compile``, ``Sequential``'s fusion and the CLI read only that.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from .. import _config, _random
from .. import amp as _amp
from .._kernels import dropout as _dropout
from .._kernels import elementwise as _elementwise
from .._kernels import matmul as _matmul
from .._kernels import norm as _norm
from .._kernels import placement
from .._kernels.common import codes as _codes
from .._kernels.matmul import bf16 as _matmul_bf16
from .._kernels.matmul import codes as _matmul_codes
from ._spec import (
    ActivationOp,
    AffineOp,
    Arg,
    FlattenOp,
    ForwardOp,
    LayerNormOp,
    LayerSpec,
    LinearOp,
    ScaleOp,
    f64,
    is_bool,
    is_dim,
    is_dtype,
    is_real,
    is_real_or_none,
    is_shape,
    is_small_int,
    is_str,
    register_layer,
    spec_of,
)
from ._tape import call_backward
from .module import Module
from .parameter import Parameter

_F32 = np.dtype(np.float32)

__all__ = [
    "BatchNorm1d",
    "Dropout",
    "Flatten",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
]


def _resolve_dtype(dtype) -> np.dtype:
    """``dtype=None`` means ``fastreg.get_default_dtype()``; otherwise float32 or float64."""
    if dtype is None:
        return _config.get_default_dtype()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _config.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _check_input(layer: Module, x, dtype: np.dtype, min_ndim: int = 1) -> np.ndarray:
    """The module call's one input check: ``x`` as a C-contiguous array of the layer's dtype
    where the layer runs (``Module._place_input``), or a clear error naming the layer."""
    x = layer._place_input(x)
    if x.dtype != dtype:
        raise TypeError(f"{layer._describe()}: input has dtype {x.dtype} but the layer's dtype "
                        f"is {dtype}; cast the input with x.astype(numpy.{dtype})")
    if x.ndim < min_ndim:
        raise ValueError(f"{layer._describe()}: input must have at least {min_ndim} "
                         f"dimension(s), got shape {x.shape}")
    return _contiguous(layer, "input", x)


def _contiguous(layer: Module, what: str, a):
    place = layer._place
    if place.is_contiguous(a):
        return a
    return place.contiguous(a, f"{layer._describe()}: {what}")


def _input_float_dtype(x) -> np.dtype:
    """Parameter-free layers follow their input's float dtype (anything else is rejected)."""
    dt = getattr(x, "dtype", None)
    return dt if dt in _config.FLOAT_DTYPES else _config.get_default_dtype()


def _check_grad(layer: Module, dy, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """dy where the forward ran (a host gradient for a GPU layer is copied in), of the forward
    output's shape and dtype."""
    place = layer._place
    if not place.owns(dy):
        if placement.of(dy) is None:
            raise TypeError(f"{layer._describe()}: grad_output must be a numpy.ndarray, "
                            f"got {type(dy).__name__}")
        dy = place.accept(dy, f"{layer._describe()}: grad_output")
    if dy.shape != shape:
        raise ValueError(f"{layer._describe()}: grad_output has shape {dy.shape}, the last "
                         f"forward output had shape {shape}")
    if dy.dtype != dtype:
        raise TypeError(f"{layer._describe()}: grad_output has dtype {dy.dtype}, "
                        f"expected {dtype}")
    return _contiguous(layer, "grad_output", dy)


def _apart(layer: Module, out, x) -> None:
    """The one overlap check a module-owned output needs: a custom forward may hand a layer
    its own output buffer back as input (``fc(fc(x))``), which the kernels would read while
    writing."""
    if type(out) is np.ndarray:
        # out is a view of a module-owned flat array (its base); only views of that array can
        # overlap it, and numpy points every view's base at the owner
        shared = out.base is not None and (x.base is out.base or x is out.base)
    else:
        shared = layer._place.may_share_memory(out, x)
    if shared:
        raise ValueError(f"{layer._describe()}: the input is this layer's own output buffer "
                         "from a previous call; copy it first (x.copy())")


def _check_slope(slope) -> float:
    if isinstance(slope, bool) or not isinstance(slope, (int, float, np.integer, np.floating)) \
            or not math.isfinite(slope):
        raise ValueError(f"slope must be a finite number, got {slope!r}")
    return float(slope)


def _init_module():
    """``fastreg.nn.init`` when it exists (written separately), else None."""
    try:
        from . import init
    except ImportError:
        return None
    return init


# ---------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------

def _dtype_name(dt) -> str:
    return np.dtype(dt).name


def _linear_state(a) -> dict:
    M, K, dt = a["out_features"], a["in_features"], a["dtype"]
    return {"weight": ((M, K), dt), **({"bias": ((M,), dt)} if a["bias"] else {})}


@register_layer
class Linear(Module):
    r"""Affine map :math:`y = x W^\top + b`, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
        K and M. ``weight`` is (M, K) (torch's layout), ``bias`` is (M,).
    bias : bool
        Learn an additive bias.
    dtype : numpy dtype, optional
        float32 or float64; None means ``fastreg.get_default_dtype()``.

    Notes
    -----
    Initialization is torch's: ``W ~ U(-1/sqrt(K), 1/sqrt(K))`` (kaiming_uniform with
    :math:`a=\sqrt 5`) and ``b ~ U(-1/sqrt(K), 1/sqrt(K))``, drawn from
    ``fastreg.manual_seed``'s generator. ``weight.regularize`` is True (L1/L2 penalties and weight
    decay groups apply to it by default), the bias's is False.

    Input (N, K) or (*, K); output (N, M). Backward: ``dW += dy^T x``, ``db += sum_n dy``,
    ``dx = dy W``. Inside ``Sequential`` a following ReLU / LeakyReLU(slope > 0) / Sigmoid / Tanh
    is fused into the same kernel call (its backward then uses the activation's output).
    Under ``fastreg.autocast("bf16")`` a float32 Linear runs the three products with
    bf16-rounded operands and float32 accumulation (:mod:`fastreg.amp`).
    """

    layer_spec = LayerSpec(
        args={"in_features": Arg(is_dim), "out_features": Arg(is_dim),
              "bias": Arg(is_bool, lambda m: m.bias is not None),
              "dtype": Arg(is_dtype, lambda m: _dtype_name(m.weight.data.dtype))},
        state=_linear_state, fuses_activation=True)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        dt = _resolve_dtype(dtype)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=dt),
                                regularize=True)
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dtype=dt))
        else:
            self.register_parameter("bias", None)
        self._cache = None
        self.reset_parameters()

    def _check_replacement(self, name: str, new, old) -> None:
        # a bias added to a bias=False layer: the kernels read out_features values from it
        if name == "bias" and old is None and new is not None:
            old = np.empty(self.out_features, self._parameters["weight"].data.dtype)
        super()._check_replacement(name, new, old)

    def reset_parameters(self) -> None:
        """torch's default: kaiming_uniform_(a=sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        init = _init_module()
        if init is not None and hasattr(init, "kaiming_uniform_"):
            init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                init.uniform_(self.bias, -bound, bound)
            return
        gen = _random.default_generator.numpy
        # kaiming_uniform(a=sqrt 5): gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in) = 1/sqrt(K)
        self.weight.data[...] = gen.uniform(-bound, bound, size=self.weight.shape)
        if self.bias is not None:
            self.bias.data[...] = gen.uniform(-bound, bound, size=self.bias.shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def inference_ops(self) -> tuple:
        W = f64(self.weight.data)
        b = np.zeros(W.shape[0]) if self.bias is None else f64(self.bias.data)
        return (LinearOp(W, b),)

    def forward(self, x: np.ndarray, *, activation: int = _codes.ACT_IDENTITY,
                slope: float = 0.01) -> np.ndarray:
        """``y = act(x W^T + b)``; ``activation`` is a ``_codes.ACT_*`` (Sequential's fusion)."""
        params = self._parameters      # (not self.weight: Module.__getattr__ is the slow path)
        W = params["weight"].data
        bias = params["bias"]
        x = _check_input(self, x, W.dtype)
        shape = tuple(x.shape)      # (a plain tuple: device arrays' shapes may not be)
        if shape[-1] != self.in_features:
            raise ValueError(f"{self._describe()}: input has shape {x.shape}, expected "
                             f"(N, {self.in_features}) (in_features={self.in_features})")
        x2 = x.reshape(-1, self.in_features)
        out = self._buffer("out", (x2.shape[0], self.out_features), W.dtype)
        _apart(self, out, x2)
        if type(activation) is not int or type(slope) is not float:   # Sequential passes codes
            activation = _codes.activation_code(activation)
            slope = _check_slope(slope)
        b = None if bias is None else bias.data
        dev = self._place.is_device
        # autocast: float32 host layers only (torch leaves float64 alone; CPU autocast, CUDA)
        bf16 = _amp._state.enabled and W.dtype == _F32 and not dev
        if bf16:
            _matmul.run_linear_forward_bf16(x2, W, b, out, activation, slope)
        else:
            _matmul.run_linear_forward(x2, W, b, out, activation, slope, dev)
        self.__dict__["_cache"] = (x2, shape, out, activation, slope, bf16)
        return out.reshape(*shape[:-1], self.out_features) if x.ndim != 2 else out

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True,
                 _preact: bool = False, _through: tuple | None = None):
        """Gradients of the last forward; returns dL/dx (None with ``input_grad=False``).

        Sequential's input-gradient fusion (private): ``_preact`` says ``grad_output`` is
        already the gradient w.r.t. the fused activation's input (the next Linear computed it),
        so the activation pass is skipped; ``_through = (act_out, code, param)`` (from
        :meth:`_input_grad_through` of the module before) makes the returned dx the gradient
        through that module's activation, ``act_grad(dy @ W, act_out)``, in one GEMM.
        """
        x2, in_shape, y, act, slope, bf16 = self._require_cache()
        dy = _check_grad(self, grad_output, (*in_shape[:-1], self.out_features), y.dtype)
        dy = dy.reshape(y.shape)
        dev = self._place.is_device
        if act != _codes.ACT_IDENTITY and not _preact:
            # fused activation: gradient w.r.t. the pre-activation, from the saved output
            dz = self._buffer("dz", y.shape, y.dtype)
            _elementwise.run_activation_backward(dy, y, dz, act, slope, dev)
            dy = dz
        params = self._parameters      # (not self.weight: Module.__getattr__ is the slow path)
        W, b = params["weight"], params["bias"]
        bp = b if (b is not None and b.requires_grad) else None
        if bf16:    # recorded under autocast: the products of fastreg.amp's backward
            db = None if bp is None else bp.grad_buffer()
            dy = np.ascontiguousarray(dy)
            if W.requires_grad:
                _matmul.run_linear_backward_weight_bf16(dy, x2, W.grad_buffer(), db, True)
            elif db is not None:
                db += _matmul_bf16.round_bf16(_matmul_bf16.round_bf16(dy).sum(0))
            if not input_grad:
                return None
            dx = self._buffer("dx", x2.shape, y.dtype)
            _matmul.run_linear_backward_input_bf16(dy, W.data, dx)
            if _through is not None:     # (Sequential does not fuse here: the separate pass)
                _matmul.run_act_grad_pass(dx, _through[0].reshape(x2.shape), _through[1],
                                          _through[2], dev)
            return dx.reshape(in_shape)
        if W.requires_grad:
            # zero_grad zeroes lazily (Parameter): stale dW and db are overwritten (no pass of
            # zeros, no read of them); otherwise the GEMM adds to the gradients
            if W._stale and (bp is None or bp._stale):
                _matmul.run_linear_backward_weight(
                    dy, x2, W.grad_to_overwrite(), None if bp is None else bp.grad_to_overwrite(),
                    False, dev)
            else:
                _matmul.run_linear_backward_weight(
                    dy, x2, W.grad_buffer(), None if bp is None else bp.grad_buffer(), True, dev)
        elif bp is not None:
            db = bp.grad_to_overwrite()
            if db is None:
                self._place.column_sum(dy, bp.grad_buffer(), True)
            else:
                self._place.column_sum(dy, db, False)
        if not input_grad:
            return None
        dx = self._buffer("dx", x2.shape, y.dtype)
        if _through is None:
            _matmul.run_linear_backward_input(dy, W.data, dx, dev)
        else:
            act_out, code, param = _through      # param: the slope, or the dropout's scale
            _matmul.run_linear_backward_input_act(dy, W.data, dx, act_out.reshape(x2.shape),
                                                  code, param, param, dev)
        return dx.reshape(in_shape)

    def _input_grad_through(self):
        """``(act_out, code, param)`` when this Linear's backward starts with a fused
        activation's backward that a following Linear's dx GEMM can apply in its epilogue
        (Sequential), else None."""
        cache = self.__dict__.get("_cache")
        if cache is None or cache[3] == _codes.ACT_IDENTITY:
            return None
        return cache[2], cache[3], cache[4]

    def _fuses_input_grad(self, through) -> bool:
        """Can this Linear's backward take ``_through`` (its dx GEMM in float, shapes agree)?"""
        cache = self.__dict__.get("_cache")
        return (through is not None and cache is not None and not cache[5]
                and through[0].size == cache[0].size and through[0].dtype == cache[0].dtype)


# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------

def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) \
            or not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _reads_bias(affine: str = "affine"):
    """The ``bias`` argument of a norm layer: whether it has beta (a bias assigned later to a
    ``bias=False`` layer counts), or the constructor's value without affine parameters."""
    return lambda m: (m.bias is not None) if getattr(m, affine) else m._has_bias


def _check_norm_bias(layer: Module, name: str, new, old) -> None:
    # a bias added to a bias=False norm: the kernels read weight-shaped values from it
    if name == "bias" and old is None and new is not None and layer.weight is not None:
        w = layer._parameters["weight"].data
        old = np.empty(w.shape, w.dtype)
    Module._check_replacement(layer, name, new, old)


def _batchnorm_state(a) -> dict:
    C, dt = (a["num_features"],), a["dtype"]
    s = {}
    if a["affine"]:
        s["weight"] = (C, dt)
        if a["bias"]:
            s["bias"] = (C, dt)
    if a["track_running_stats"]:
        s["running_mean"] = (C, dt)
        s["running_var"] = (C, dt)
        s["num_batches_tracked"] = ((), "int64")
    return s


@register_layer
class BatchNorm1d(Module):
    r"""Batch normalization of (N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``.

    .. math::
        \mu_B = \frac1m\sum_i x_i,\quad \sigma^2_B = \frac1m\sum_i (x_i-\mu_B)^2,\quad
        y = \gamma\,\frac{x-\mu_B}{\sqrt{\sigma^2_B+\epsilon}} + \beta

    per feature (channel) c, over the m = N rows of (N, C) input or the m = N L positions of
    (N, C, L) input (as torch; the (N, C, L) case runs the (N L, C) kernels on a transposed
    copy, host arrays only).
    Training uses batch statistics and updates the running estimates
    ``running_mean <- (1-m) running_mean + m mu_B`` and
    ``running_var <- (1-m) running_var + m m/(m-1) sigma^2_B`` (unbiased); ``momentum=None``
    uses the cumulative average ``m = 1/num_batches_tracked``. Evaluation uses the running
    estimates, or the batch statistics when ``track_running_stats=False`` (as torch). Batch
    statistics need ``eps > 0`` (torch's "batch_norm eps must be positive during training";
    ``eps = 0`` is accepted for evaluation with running statistics).

    Parameters
    ----------
    num_features : int
        C.
    eps : float
        Added to the variance.
    momentum : float or None
        Running-statistics factor m.
    affine : bool
        Learn ``weight`` (gamma, ones) and ``bias`` (beta, zeros).
    track_running_stats : bool
        Keep ``running_mean``, ``running_var``, ``num_batches_tracked`` buffers.
    dtype : numpy dtype, optional
    bias : bool, keyword-only
        With ``affine``, learn beta (torch 2.x's ``bias=``); False: ``bias`` is None, beta = 0.
    """

    layer_spec = LayerSpec(
        args={"num_features": Arg(is_dim), "eps": Arg(is_real), "momentum": Arg(is_real_or_none),
              "affine": Arg(is_bool), "track_running_stats": Arg(is_bool),
              "dtype": Arg(is_dtype, lambda m: _dtype_name(m._dtype)),
              "bias": Arg(is_bool, _reads_bias(), default=True)},
        state=_batchnorm_state)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=None, *,
                 bias: bool = True):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if momentum is not None and (isinstance(momentum, bool) or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        dt = _resolve_dtype(dtype)
        C = self.num_features = int(num_features)
        self.eps = _check_eps(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self._has_bias = bool(bias)
        if self.affine:
            self.weight = Parameter(np.ones(C, dtype=dt))
            if self._has_bias:
                self.bias = Parameter(np.zeros(C, dtype=dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype=dt))
            self.register_buffer("running_var", np.ones(C, dtype=dt))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._dtype = dt
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                + ("" if self._has_bias else ", bias=False"))

    def _check_replacement(self, name: str, new, old) -> None:
        _check_norm_bias(self, name, new, old)

    def inference_ops(self) -> tuple:
        r"""Eval with running statistics is affine: :math:`y = s x + t`,
        :math:`s = \gamma/\sqrt{\mathrm{var}+\epsilon}`, :math:`t = \beta - \mathrm{mean}\,s`."""
        if not self.track_running_stats:
            return (ForwardOp(self),)       # batch statistics at eval: not a fixed map
        s = 1.0 / np.sqrt(f64(self.running_var) + self.eps)
        shift = -f64(self.running_mean) * s
        if self.affine:
            g = f64(self.weight.data)
            s, shift = s * g, shift * g
            if self.bias is not None:
                shift = shift + f64(self.bias.data)
        return (AffineOp(s, shift),)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            placement.of(self.running_mean).fill(self.running_mean, 0.0)
            placement.of(self.running_var).fill(self.running_var, 1.0)
            self.num_batches_tracked.fill(0)

    def _rows(self, x, key: str):
        """(N, C, L) -> the (N L, C) rows the kernels normalize (a transposed copy)."""
        if x.ndim == 2:
            return x
        if self._place.is_device:
            raise ValueError(f"{self._describe()}: (N, C, L) input is supported for host arrays "
                             f"only, got a device array of shape {x.shape}")
        N, C, L = x.shape
        rows = self._buffer(key, (N * L, C), x.dtype)
        rows.reshape(N, L, C)[...] = x.transpose(0, 2, 1)
        return rows

    def _unrows(self, rows, shape, key: str):
        """The (N L, C) kernel output back as (N, C, L) (into an owned buffer)."""
        if len(shape) == 2:
            return rows
        N, C, L = shape
        out = self._buffer(key, shape, rows.dtype)
        out[...] = rows.reshape(N, L, C).transpose(0, 2, 1)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        dt = self._dtype
        x = _check_input(self, x, dt, min_ndim=2)
        if x.ndim > 3 or x.shape[1] != self.num_features:
            raise ValueError(f"{self._describe()}: input has shape {x.shape}, expected "
                             f"(N, {self.num_features}) or (N, {self.num_features}, L) "
                             f"(num_features={self.num_features})")
        shape = tuple(x.shape)
        x = self._rows(x, "x_rows")
        N, C = x.shape
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats and N < 2:
            raise ValueError(f"{self._describe()}: expected more than 1 value per channel when "
                             f"training, got input size {shape}")
        if use_batch_stats and not self.eps > 0:
            raise ValueError(f"{self._describe()}: batch_norm eps must be positive during "
                             f"training, but got {self.eps}")
        gamma = self.weight.data if self.affine else None     # None: gamma = 1, beta = 0
        beta = self.bias.data if self.affine and self.bias is not None else None
        out = self._buffer("out", x.shape, dt)
        _apart(self, out, x)
        dev = self._place.is_device
        if not use_batch_stats:                  # eval with running statistics
            _norm.run_batchnorm_forward_eval(x, gamma, beta, self.running_mean,
                                             self.running_var, out, self.eps, dev)
            self._cache = (x, None, None, shape)
            return self._unrows(out, shape, "out_ncl")
        mean = self._buffer("save_mean", (C,), dt)
        rstd = self._buffer("save_rstd", (C,), dt)
        m = 0.0
        if self.training and self.track_running_stats:
            nbt = self.num_batches_tracked
            nbt += 1            # in place: no buffer re-assignment (and its checks) per step
            m = (1.0 / float(nbt)) if self.momentum is None else self.momentum
        # running_mean/var are None without track_running_stats: batch statistics only
        _norm.run_batchnorm_forward_train(x, gamma, beta, self.running_mean, self.running_var,
                                          out, mean, rstd, m, self.eps, dev)
        self._cache = (x, mean, rstd, shape)
        return self._unrows(out, shape, "out_ncl")

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        x, mean, rstd, shape = self._require_cache()
        dt = self._dtype
        dy = self._rows(_check_grad(self, grad_output, shape, dt), "dy_rows")
        gamma = self.weight.data if self.affine else None
        dgamma = self.weight.grad_buffer() if self.affine and self.weight.requires_grad \
            else None
        b = self.bias
        dbeta = b.grad_buffer() if self.affine and b is not None and b.requires_grad else None
        dx = self._buffer("dx", x.shape, dt)
        dev = self._place.is_device
        if mean is None:
            # eval-mode statistics are constants: y = gamma*(x - rm)*r + beta, r = 1/sqrt(rv+eps)
            _norm.run_batchnorm_backward_eval(dy, x, gamma, self.running_mean, self.running_var,
                                              dx, dgamma, dbeta, self.eps, True, dev)
        else:
            _norm.run_batchnorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, True, dev)
        return self._unrows(dx, shape, "dx_ncl") if input_grad else None


def _layernorm_state(a) -> dict:
    if not a["elementwise_affine"]:
        return {}
    v = a["normalized_shape"]
    shape, dt = ((v,) if type(v) is int else tuple(v)), a["dtype"]
    return {"weight": (shape, dt), **({"bias": (shape, dt)} if a["bias"] else {})}


def _check_normalized_shape(normalized_shape) -> tuple:
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
        else normalized_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                        for d in shape):
        raise ValueError("normalized_shape must be a positive int or a non-empty sequence of "
                         f"positive ints, got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


@register_layer
class LayerNorm(Module):
    r"""Layer normalization over the last ``len(normalized_shape)`` dimensions, as
    ``torch.nn.LayerNorm``.

    With :math:`D` the trailing dimensions named by ``normalized_shape`` (C = their product
    values per sample n):

    .. math::
        \mu_n = \frac1C\sum_{i\in D} x_{ni},\quad
        \sigma^2_n = \frac1C\sum_{i\in D} (x_{ni}-\mu_n)^2,\quad
        y_{ni} = \gamma_i\,\frac{x_{ni}-\mu_n}{\sqrt{\sigma^2_n+\epsilon}} + \beta_i

    Statistics are per sample, so any batch size works (including 1) and train/eval agree.
    The kernels see the input as (N, C) rows (a view: no copy).

    Parameters
    ----------
    normalized_shape : int or sequence of ints
        The trailing input shape normalized over.
    eps : float
    elementwise_affine : bool
        Learn ``weight`` gamma (ones) and ``bias`` beta (zeros) of shape ``normalized_shape``.
    bias : bool
        With ``elementwise_affine``, learn beta (torch 2.x); False: ``bias`` is None, beta = 0.
    dtype : numpy dtype, optional
    """

    layer_spec = LayerSpec(
        args={"normalized_shape": Arg(is_shape, lambda m: m.normalized_shape[0]
                                      if len(m.normalized_shape) == 1
                                      else list(m.normalized_shape)),
              "eps": Arg(is_real), "elementwise_affine": Arg(is_bool),
              "dtype": Arg(is_dtype, lambda m: _dtype_name(m._dtype)),
              "bias": Arg(is_bool, _reads_bias("elementwise_affine"), default=True)},
        state=_layernorm_state)

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=None):
        super().__init__()
        shape = _check_normalized_shape(normalized_shape)
        dt = _resolve_dtype(dtype)
        self.normalized_shape = shape
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._has_bias = bool(bias)
        self._features = math.prod(shape)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(shape, dtype=dt))
            if self._has_bias:
                self.bias = Parameter(np.zeros(shape, dtype=dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._dtype = dt
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps:g}, "
                f"elementwise_affine={self.elementwise_affine}"
                + ("" if self._has_bias else ", bias=False"))

    def _check_replacement(self, name: str, new, old) -> None:
        _check_norm_bias(self, name, new, old)

    def inference_ops(self) -> tuple:
        affine = self.elementwise_affine
        b = self.bias if affine else None
        multi = len(self.normalized_shape) > 1
        return (LayerNormOp(f64(self.weight.data).reshape(-1) if affine else None,
                            None if b is None else f64(b.data).reshape(-1), self.eps,
                            self._features, self.normalized_shape if multi else ()),)

    def _vec(self, p, grad: bool = False):
        """A (C,) view of parameter p's data (or its grad buffer), None if absent/frozen."""
        if p is None or (grad and not p.requires_grad):
            return None
        a = p.grad_buffer() if grad else p.data
        return a if a.ndim == 1 else a.reshape(-1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        dt = self._dtype
        shape = self.normalized_shape
        C = self._features
        x = _check_input(self, x, dt)
        k = len(shape)
        if tuple(x.shape)[x.ndim - k:] != shape or x.ndim < k:
            raise ValueError(f"{self._describe()}: input has shape {x.shape}, expected "
                             f"(*, {', '.join(map(str, shape))}) "
                             f"(normalized_shape={self.normalized_shape})")
        x2 = x.reshape(-1, C)
        N = x2.shape[0]
        affine = self.elementwise_affine
        gamma = self._vec(self.weight) if affine else None
        beta = self._vec(self.bias) if affine else None
        out = self._buffer("out", x2.shape, dt)
        _apart(self, out, x2)
        mean = self._buffer("save_mean", (N,), dt)
        rstd = self._buffer("save_rstd", (N,), dt)
        _norm.run_layernorm_forward(x2, gamma, beta, out, mean, rstd, self.eps,
                                    self._place.is_device)
        self._cache = (x2, tuple(x.shape), mean, rstd)
        return out.reshape(x.shape)

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        x2, in_shape, mean, rstd = self._require_cache()
        dt = self._dtype
        dy = _check_grad(self, grad_output, in_shape, dt).reshape(x2.shape)
        affine = self.elementwise_affine
        gamma = self._vec(self.weight) if affine else None
        dgamma = self._vec(self.weight, grad=True) if affine else None
        dbeta = self._vec(self.bias, grad=True) if affine else None
        dx = self._buffer("dx", x2.shape, dt)
        _norm.run_layernorm_backward(dy, x2, gamma, mean, rstd, dx, dgamma, dbeta, True,
                                     self._place.is_device)
        return dx.reshape(in_shape) if input_grad else None


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

DROPOUT_MODES = ("inverted", "classic")


@register_layer
class Dropout(Module):
    r"""Zero each element with probability ``p`` during training (fresh Bernoulli mask per call).

    ``mode="inverted"`` (torch's and the default): kept elements are scaled by
    :math:`1/(1-p)` in training and evaluation is the identity. ``mode="classic"``: training
    keeps elements unscaled and evaluation multiplies by :math:`(1-p)`. Both give
    :math:`E[y] = x` at evaluation scale.

    Masks come from the Philox4x32-10 counter RNG keyed by ``fastreg.manual_seed`` (each call
    reserves fresh counter blocks), are stored as bits and reused by backward. ``p = 0`` and
    inverted evaluation return the input itself (no copy, no kernel). ``p = 1`` drops
    everything: training returns zeros and a zero gradient (as torch; no mask is drawn), and
    classic evaluation scales by ``1 - p = 0``. Any shape, 0-d included.

    ``inplace`` is accepted (torch's argument; model files keep it) and does not change what is
    computed: fastreg never writes a layer's result into its input. The output goes into the
    layer's own buffer, reused across calls of the same shape, which already saves the per-call
    allocation in-place operation saves in torch, and the input stays intact (a fused
    Linear + activation before the Dropout reads its output in backward).
    """

    layer_spec = LayerSpec(args={"p": Arg(is_real), "mode": Arg(is_str),
                                 "inplace": Arg(is_bool, default=False)})

    def __init__(self, p: float = 0.5, inplace: bool = False, mode: str = "inverted"):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise TypeError(f"p must be a real number, got {p!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        if mode not in DROPOUT_MODES:
            raise ValueError(f"mode must be one of {DROPOUT_MODES}, got {mode!r}")
        if not isinstance(inplace, (bool, np.bool_)):
            raise TypeError(f"inplace must be a bool, got {inplace!r}")
        self.p = float(p)
        self.inplace = bool(inplace)
        self.mode = mode
        self._cache = None

    def extra_repr(self) -> str:
        extra = "" if self.mode == "inverted" else f", mode={self.mode!r}"
        return f"p={self.p}{', inplace=True' if self.inplace else ''}{extra}"

    def inference_ops(self) -> tuple:
        """Eval: the identity (inverted), or a constant scale by ``1 - p`` (classic)."""
        if self.mode == "inverted" or self.p == 0.0:
            return ()
        return (ScaleOp(1.0 - self.p),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_input(self, x, _input_float_dtype(x), min_ndim=0)
        p = self.p
        if p == 0.0 or (not self.training and self.mode == "inverted"):
            self._cache = ("identity", x.shape, x.dtype)
            return x
        out = self._buffer("out", x.shape, x.dtype)
        _apart(self, out, x)
        if not self.training or p == 1.0:          # classic inference: scale by 1 - p; p = 1
            self._place.scale(x, out, 1.0 - p if not self.training else 0.0)
            self._cache = ("scale", x.shape, x.dtype, 1.0 - p if not self.training else 0.0)
            return out
        shape = x.shape
        out = out.reshape(-1) if x.ndim == 0 else out
        x = x.reshape(-1) if x.ndim == 0 else x
        n = x.size
        mask = self._buffer("mask", (_dropout.mask_nbytes(n),), np.uint8)
        seed, offset = _random.default_generator.reserve_philox(_dropout.philox_blocks(n))
        scale = 1.0 / (1.0 - p) if self.mode == "inverted" else 1.0
        _dropout.run_dropout_forward(x, out, mask, p, scale, seed, offset,
                                     self._place.is_device)
        self._cache = ("mask", shape, x.dtype, mask, scale)
        return out.reshape(shape)

    def forward_after_relu(self, x: np.ndarray, relu: Module):
        """``self(relu(x))`` in one pass, or None where the pair does not fuse (Sequential).

        Training with ``0 < p < 1``, non-0-d input: the mask and ``max(x, 0) * scale`` where
        kept come from one kernel (``run_relu_dropout_forward``), bit-identical to the two layers
        (the same Philox blocks are reserved), and :meth:`backward` then returns the gradient
        w.r.t. the ReLU's input, ``dy * scale`` where the output is > 0. ``relu``'s own cache is
        cleared: its backward is part of this one.
        """
        p = self.p
        if not self.training or not 0.0 < p < 1.0 or getattr(x, "ndim", 0) == 0 \
                or getattr(x, "dtype", None) not in _config.FLOAT_DTYPES:
            return None             # (a bad input then gets ReLU's own error)
        x = _check_input(self, x, _input_float_dtype(x))
        out = self._buffer("out", x.shape, x.dtype)
        _apart(self, out, x)
        n = x.size
        mask = self._buffer("mask", (_dropout.mask_nbytes(n),), np.uint8)
        seed, offset = _random.default_generator.reserve_philox(_dropout.philox_blocks(n))
        scale = 1.0 / (1.0 - p) if self.mode == "inverted" else 1.0
        _dropout.run_relu_dropout_forward(x, out, mask, p, scale, seed, offset,
                                          self._place.is_device)
        relu._cache = None
        self._cache = ("relu", x.shape, x.dtype, out, scale)
        return out

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True,
                 _preact: bool = False):
        """dL/dx of the last forward. ``_preact`` (Sequential, after a fused ReLU -> Dropout):
        ``grad_output`` is already the gradient w.r.t. the ReLU's input (the following Linear's
        dx GEMM applied this backward in its epilogue), returned as it is."""
        cache = self._require_cache()
        kind, shape, dt = cache[:3]
        dy = _check_grad(self, grad_output, shape, dt)
        if not input_grad:
            return None
        if kind == "identity" or (_preact and kind == "relu"):
            return dy
        dx = self._buffer("dx", shape, dt)
        if kind == "relu":          # fused ReLU -> Dropout: the gradient w.r.t. ReLU's input
            _dropout.run_relu_dropout_backward(dy, cache[3], dx, cache[4], self._place.is_device)
        elif kind == "scale":
            self._place.scale(dy, dx, cache[3])
        elif len(shape) == 0:
            _dropout.run_dropout_backward(dy.reshape(-1), cache[3], dx.reshape(-1), cache[4],
                                          self._place.is_device)
        else:
            _dropout.run_dropout_backward(dy, cache[3], dx, cache[4], self._place.is_device)
        return dx

    def _input_grad_through(self):
        """``(out, GRAD_RELU_DROPOUT, scale)`` after a fused ReLU -> Dropout forward: its
        backward needs only its output, so a following Linear's dx GEMM can apply it
        (Sequential); else None."""
        cache = self.__dict__.get("_cache")
        if cache is None or cache[0] != "relu":
            return None
        return cache[3], _matmul_codes.GRAD_RELU_DROPOUT, cache[4]


# ---------------------------------------------------------------------------------------------
# Activations (element-wise; backward from the saved output y)
# ---------------------------------------------------------------------------------------------

class _Activation(Module):
    """y = f(x) element-wise through ``elementwise.activation_forward``; backward from y."""
    _code = _codes.ACT_IDENTITY
    layer_spec = LayerSpec(activation=True)

    def __init__(self):
        super().__init__()
        self._cache = None

    @property
    def slope(self) -> float:
        return 0.01

    def fusable(self) -> bool:
        """Can Sequential fold this into the preceding Linear (backward from output exact)?"""
        return True

    def inference_ops(self) -> tuple:
        return (ActivationOp(self._code, float(self.slope)),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """y = f(x) for any shape, 0-d included (the kernels see a 0-d array as (1,))."""
        x = _check_input(self, x, _input_float_dtype(x), min_ndim=0)
        dt = x.dtype
        out = self._buffer("out", x.shape, dt)
        _apart(self, out, x)
        if x.ndim == 0:
            _elementwise.run_activation_forward(x.reshape(1), out.reshape(1), self._code,
                                                self.slope, self._place.is_device)
        else:
            _elementwise.run_activation_forward(x, out, self._code, self.slope,
                                                self._place.is_device)
        self._cache = (x, out)
        return out

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        _x, y = self._require_cache()
        dy = _check_grad(self, grad_output, y.shape, y.dtype)
        if not input_grad:
            return None
        dx = self._buffer("dx", y.shape, y.dtype)
        if y.ndim == 0:                            # the kernels see a 0-d array as (1,)
            _elementwise.run_activation_backward(dy.reshape(1), y.reshape(1), dx.reshape(1),
                                                 self._code, self.slope, self._place.is_device)
            return dx
        _elementwise.run_activation_backward(dy, y, dx, self._code, self.slope,
                                             self._place.is_device)
        return dx


@register_layer
class ReLU(_Activation):
    r""":math:`\max(x, 0)`; gradient 0 where :math:`x \le 0` (as torch)."""
    _code = _codes.ACT_RELU


@register_layer
class Sigmoid(_Activation):
    r""":math:`1/(1+e^{-x})`; backward :math:`dy\,y(1-y)`."""
    _code = _codes.ACT_SIGMOID


@register_layer
class Tanh(_Activation):
    r""":math:`\tanh x`; backward :math:`dy\,(1-y^2)`."""
    _code = _codes.ACT_TANH


@register_layer
class LeakyReLU(_Activation):
    r""":math:`x` for :math:`x > 0`, else :math:`\text{negative\_slope}\cdot x`."""
    _code = _codes.ACT_LEAKY_RELU
    layer_spec = LayerSpec(args={"negative_slope": Arg(is_real)}, activation=True)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or \
                not isinstance(negative_slope, (int, float, np.integer, np.floating)) or \
                not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    @property
    def slope(self) -> float:
        return self.negative_slope

    def fusable(self) -> bool:
        # from the output, "x > 0" is "y > 0" only when the slope is positive
        return self.negative_slope > 0

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        if self.negative_slope > 0:
            return super().backward(grad_output, input_grad=input_grad)
        x, y = self._require_cache()
        dy = _check_grad(self, grad_output, y.shape, y.dtype)
        if not input_grad:
            return None
        dx = self._buffer("dx", y.shape, y.dtype)
        # dy * ([x > 0] + slope [x <= 0]): the output-based kernel evaluated on the input x (the
        # checked function refuses slope <= 0 because it assumes y; shapes are checked above)
        _elementwise.run_activation_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1),
                                             _codes.ACT_LEAKY_RELU, self.negative_slope,
                                             self._place.is_device)     # (-1): 0-d too
        return dx


@register_layer
class Identity(Module):
    """Returns its input unchanged (no copy)."""

    layer_spec = LayerSpec()

    def __init__(self, *args, **kwargs):
        super().__init__()

    def inference_ops(self) -> tuple:
        return ()

    def forward(self, x):
        self._cache = True
        return x

    def backward(self, grad_output, *, input_grad: bool = True):
        return grad_output if input_grad else None


@register_layer
class Flatten(Module):
    """Flatten dimensions ``start_dim..end_dim`` into one (a view when the input is contiguous)."""

    layer_spec = LayerSpec(args={"start_dim": Arg(is_small_int), "end_dim": Arg(is_small_int)})

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._cache = None

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def inference_ops(self) -> tuple:
        """(N, ...) -> (N, -1) folds; other dimension ranges run this module's forward."""
        if self.start_dim == 1 and self.end_dim == -1:
            return (FlattenOp(),)
        return (ForwardOp(self),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _contiguous(self, "input", self._place_input(x))
        nd = max(x.ndim, 1)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"{self._describe()}: cannot flatten dims {self.start_dim}.."
                             f"{self.end_dim} of an input with shape {x.shape}")
        self._cache = tuple(x.shape)
        shape = tuple(x.shape)
        return x.reshape(*shape[:s], -1, *shape[e + 1:])

    def backward(self, grad_output, *, input_grad: bool = True):
        shape = self._require_cache()
        if not input_grad:
            return None
        if type(grad_output) is np.ndarray:
            return np.reshape(grad_output, shape)
        return _contiguous(self, "grad_output", grad_output).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Sequential
# ---------------------------------------------------------------------------------------------

@register_layer
class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse.

    Indexable (``model[0]``, ``model[1:3]`` is a Sequential sharing the same modules), iterable,
    ``len``-able and printable like ``torch.nn.Sequential``. Accepts modules or an OrderedDict.

    Speed: a layer whose ``layer_spec.fuses_activation`` is set (Linear) directly followed by an
    ``activation`` layer that is ``fusable()`` (ReLU, LeakyReLU(negative_slope > 0), Sigmoid,
    Tanh) is run as one ``linear_forward(..., activation=...)`` call, and its backward applies
    ``activation_backward`` from the saved output; the result equals the unfused pair bit for
    bit (the epilogue evaluates Sigmoid and Tanh with the elementwise kernels' exp / tanh). A
    ``ReLU`` directly followed by a ``Dropout`` (training, ``0 < p < 1``) runs as one
    ``relu_dropout_forward`` pass, and its backward as one ``relu_dropout_backward`` pass from the
    output (:meth:`Dropout.forward_after_relu`); bit-identical to the two layers. In backward,
    a Linear that follows such a fused (Linear, activation) or ReLU -> Dropout step computes
    that step's pre-activation gradient directly, the activation's backward applied in its
    input-gradient GEMM's epilogue (``matmul.run_linear_backward_input_act``; the step then
    skips its own pass): the same bits as the separate pass, one pass over the gradient fewer.
    A layer recorded under ``fastreg.autocast`` keeps the separate pass. Set ``fuse = False`` on
    the instance to run every module separately.

    A module instance may appear only once: backward uses the cache of a module's latest call,
    and a second call would overwrite the output the first handed on.
    """

    layer_spec = LayerSpec(container=True)

    def __init__(self, *args):
        super().__init__()
        self.fuse = True
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, m in args[0].items():
                self.add_module(str(key), m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)
        self._plan = None

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"Sequential takes fastreg.nn.Module instances, got "
                            f"{type(module).__name__}")
        for other_name, other in self._modules.items():
            if other is module and other_name != name:
                raise ValueError(
                    f"Sequential: the same {type(module).__name__} instance appears twice (at "
                    f"{other_name!r} and {name!r}); create a separate instance for each position "
                    "(each caches its own forward pass for backward)")
        super().add_module(name, module)
        object.__setattr__(self, "_plan", None)

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), module)
        return self

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if isinstance(value, Module):
            object.__setattr__(self, "_plan", None)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"Sequential indices must be integers or slices, got "
                            f"{type(idx).__name__}")
        n = len(items)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for Sequential of length {n}")
        return items[idx][1]

    def _steps(self):
        """[(module, fused partner or None)]: Linear + activation pairs as (Linear, activation),
        ReLU + Dropout pairs as (Dropout, ReLU); the first module of a pair runs its backward."""
        mods = [m for m in self._modules.values() if m is not None]
        steps, i = [], 0
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if self.fuse and nxt is not None and _fuses(m, nxt):
                steps.append((m, nxt))
                i += 2
            elif self.fuse and nxt is not None and type(m) is ReLU and type(nxt) is Dropout:
                steps.append((nxt, m))
                i += 2
            else:
                steps.append((m, None))
                i += 1
        return steps

    def forward(self, x):
        steps = self._steps()
        d = self.__dict__
        d["_plan"] = None                # a forward that fails midway leaves nothing to backward
        plan = steps                     # (a fresh list: an unfused pair is rewritten in it)
        for k, (m, other) in enumerate(steps):
            if other is None:
                x = m.forward(x)
            elif type(m) is Dropout:     # (Dropout, ReLU): one pass where it fuses
                y = m.forward_after_relu(x, other)
                if y is None:            # eval, p in {0, 1}, 0-d: the two layers, unfused
                    plan[k] = (_Pair(other, m), None)
                    y = m.forward(other.forward(x))
                x = y
            else:
                x = m.forward(x, activation=other._code, slope=other.slope)
                other.__dict__["_cache"] = None   # its own backward must not run stale
        d["_plan"] = plan
        d["_plan_thread"] = threading.get_ident()
        return x

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        """Back-propagate through the modules of the last forward, in reverse.

        ``input_grad=False`` skips dL/dx of the first module (the training loop does not need
        the gradient w.r.t. the data; for a leading Linear that saves a whole GEMM).
        """
        d = self.__dict__
        steps = d.get("_plan")
        if steps is None:
            raise RuntimeError("Sequential: backward() called before forward()")
        if d.get("_plan_thread") != threading.get_ident():
            raise RuntimeError("Sequential: backward() ran on a different thread than its "
                               "forward(); a model must be trained from one thread at a time")
        g = grad_output
        last = len(steps) - 1
        through = None
        for i in range(last, -1, -1):
            m = steps[i][0]
            # Input-gradient fusion: a Linear whose input came from a fused (Linear, activation)
            # or ReLU -> Dropout step computes that step's pre-activation gradient in its dx
            # GEMM's epilogue (_through), and the step then skips its own pass (_preact).
            preact = through is not None
            through = None
            if type(m) is Linear and i > 0 and self.fuse:
                prev = steps[i - 1][0]
                if type(prev) is Linear or type(prev) is Dropout:
                    through = prev._input_grad_through()
                    if not m._fuses_input_grad(through):
                        through = None
            if through is not None or preact:
                if type(m) is Linear:
                    g = m.backward(g, input_grad=input_grad or i > 0, _preact=preact,
                                   _through=through)
                else:
                    g = m.backward(g, input_grad=input_grad or i > 0, _preact=True)
            elif type(m) in _BUILTIN:
                g = m.backward(g, input_grad=input_grad or i > 0)
            else:                   # a custom module: its backward may not take input_grad
                g = call_backward(m, g, input_grad or i > 0)
        return g


class _Pair:
    """An unfused ReLU -> Dropout step of a Sequential plan: backward through both, in reverse."""

    __slots__ = ("first", "second")

    def __init__(self, first: Module, second: Module):
        self.first, self.second = first, second

    def backward(self, grad_output, *, input_grad: bool = True):
        g = self.second.backward(grad_output, input_grad=True)
        return self.first.backward(g, input_grad=input_grad)


def _fuses(m: Module, nxt: Module) -> bool:
    """Does ``m`` absorb the activation ``nxt`` into its epilogue (layer descriptions)?"""
    spec, nspec = spec_of(type(m)), spec_of(type(nxt))
    return spec is not None and spec.fuses_activation and nspec is not None \
        and nspec.activation and nxt.fusable()


#: The built-in layer classes (their backward takes ``input_grad``), filled below.
_BUILTIN = frozenset([Linear, BatchNorm1d, LayerNorm, Dropout, ReLU, Sigmoid, Tanh, LeakyReLU,
                      Identity, Flatten, Sequential, _Pair])
