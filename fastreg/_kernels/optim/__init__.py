"""In-place optimizer updates over flat buffers: one fused kernel family for five algorithms.

Every function updates ``param`` and its state buffers in place, in one sweep over memory, exactly
as ``torch.optim`` documents the algorithm (single-tensor order of operations). All arrays are flat
(1-D), C-contiguous, of one float dtype and one length ``n``; optional state buffers are ``None``
when the option that needs them is off. Arithmetic happens in the parameter dtype. The arrays may
be CUDA device arrays (all of them): the update then runs on the GPU (optim/cuda.py).

Common to all five: the gradient of the fastreg penalties is added first, because the penalty is
part of the loss,

    g ← ∇f(θ) + l1·sign(θ) + 2·l2·θ ;   g ← −g if maximize ;

then each algorithm adds its own ``weight_decay`` (θ·λ added to g) or, for AdamW, decays θ.

Buffers each backend kernel receives (``fused_step(kind, flags, param, grad, b0, b1, b2, hp)``):

    kind      b0               b1            b2
    SGD       momentum_buffer  -             -
    ADAM      exp_avg          exp_avg_sq    max_exp_avg_sq
    RMSPROP   square_avg       grad_avg      momentum_buffer
    ADAGRAD   state_sum        -             -
    ADADELTA  square_avg       acc_delta     -

``hp`` holds the step's coefficients, precomputed here in the parameter dtype (layout: HP_*).
"""
from __future__ import annotations

import numpy as np

from ..._checks import check_array, check_scalar, float_dtype, no_overlap, on_device
from .. import _dispatch
from ..runtime import cuda as _cuda_runtime
from .codes import (  # noqa: F401  (re-exported: the public codes)
    ADADELTA,
    ADAGRAD,
    ADAM,
    AMSGRAD,
    CENTERED,
    DECOUPLED,
    FIRST_STEP,
    HP_A,
    HP_B,
    HP_C,
    HP_D,
    HP_E,
    HP_F,
    HP_G,
    HP_L1,
    HP_L2X2,
    HP_LEN,
    HP_LR,
    HP_WD,
    MAXIMIZE,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    SGD,
)

_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}
#: Length-0 CUDA device arrays standing in for unused buffers on the device (made on first use).
_EMPTY_DEVICE: dict = {}


def _empty(dt: np.dtype, dev: bool):
    """The length-0 placeholder for an unused buffer, where the call's arrays live."""
    if not dev:
        return _EMPTY[dt]
    e = _EMPTY_DEVICE.get(dt)
    if e is None:
        e = _EMPTY_DEVICE[dt] = _cuda_runtime.empty(0, dt)
    return e

__all__ = ["adadelta_step", "adagrad_step", "adam_step", "rmsprop_step", "sgd_step"]


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_buffers(param, grad, **buffers):
    """Check param/grad and the state buffers a call needs; return True for CUDA device arrays.

    ``buffers`` maps name -> (array or None, required). Buffers not required are ignored (the
    trusted entry point replaces them by an empty array the kernel never touches). The arrays
    may all be host ndarrays or all CUDA device arrays (the placeholders then are device arrays
    too).
    """
    dt = float_dtype("param", param)
    check_array("param", param, ndim=1, writeable=True)
    n = param.shape[0]
    check_array("grad", grad, dtype=dt, shape=(n,))
    out, named = [], {"param": param, "grad": grad}
    for name, (arr, required) in buffers.items():
        if not required:
            out.append(None)
            continue
        check_array(name, arr, dtype=dt, shape=(n,), writeable=True)
        out.append(arr)
        named[name] = arr
    no_overlap(**named)
    return on_device(**named)


def _bufs(dt: np.dtype, device: bool, *buffers) -> list:
    """The three state-buffer slots of a kernel call: unused ones are length-0 placeholders."""
    empty = _empty(dt, device)
    out = [empty if b is None else b for b in buffers]
    while len(out) < 3:
        out.append(empty)
    return out


def _common(lr, weight_decay, l1, l2):
    return (check_scalar("lr", lr, low=0.0), check_scalar("weight_decay", weight_decay, low=0.0),
            check_scalar("l1", l1, low=0.0), check_scalar("l2", l2, low=0.0))


_HP_GAP = [0.0] * (HP_A - 4)
_HP_ZEROS = [0.0] * HP_LEN


def _hp(dt, lr, wd, l1, l2, *rest) -> np.ndarray:
    # one array from one list (np.zeros and two slice stores cost ~3x this, every step)
    vals = [lr, wd, l1, 2.0 * l2, *_HP_GAP, *rest]
    vals += _HP_ZEROS[:HP_LEN - len(vals)]
    return np.array(vals, dtype=dt)


def _run(kind, flags, param, grad, bufs, hp, device, backend):
    if param.shape[0] == 0:
        return
    fn = _dispatch.kernel("optim", "fused_step", backend, device)
    fn(kind, flags, param, grad, bufs[0], bufs[1], bufs[2], hp)


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None, *,
             lr: float, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             first_step: bool = False, l1: float = 0.0, l2: float = 0.0,
             backend: str | None = None) -> None:
    r"""One SGD step in place (``torch.optim.SGD``), with optional momentum and Nesterov.

    .. math::
        g &\leftarrow \nabla f + l_1\,\mathrm{sign}(\theta) + 2 l_2 \theta
            \;(\text{negated if maximize}),\qquad g \leftarrow g + \lambda\theta \\
        b &\leftarrow g \text{ on the first step, else } \mu b + (1-\tau) g \\
        g &\leftarrow g + \mu b \text{ (nesterov) or } b,\qquad \theta \leftarrow \theta - \gamma g

    Parameters
    ----------
    param, grad : ndarray, shape (n,)
        Flat parameters (updated in place) and their gradient (read only).
    momentum_buffer : ndarray, shape (n,) or None
        Velocity ``b``, updated in place; required when ``momentum != 0``.
    lr, momentum, dampening, weight_decay : float
        γ ≥ 0, μ ≥ 0, τ, λ ≥ 0 as in torch.
    nesterov, maximize : bool
        As in torch; Nesterov needs ``momentum > 0`` and ``dampening == 0``.
    first_step : bool
        True on the optimizer's first step: the buffer is set to g (torch's ``buf = g.clone()``).
    l1, l2 : float
        Penalty coefficients of l1·Σ|θ| + l2·Σθ² (their gradient joins g first).
    backend : {"numba", "cython", "auto", "cuda"} or None
        None uses ``fastreg.get_backend()``. CUDA device arrays (all arrays of the call, never a
        mix) run on "cuda"; for them only None, "auto" or "cuda" are valid.
    """
    lr, wd, l1, l2 = _common(lr, weight_decay, l1, l2)
    mu = check_scalar("momentum", momentum, low=0.0)
    damp = check_scalar("dampening", dampening)
    nesterov, maximize = _flag("nesterov", nesterov), _flag("maximize", maximize)
    first_step = _flag("first_step", first_step)
    if nesterov and (mu <= 0 or damp != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    dev = _check_buffers(param, grad, momentum_buffer=(momentum_buffer, mu != 0))
    run_sgd_step(param, grad, momentum_buffer, lr=lr, momentum=mu, dampening=damp,
                 weight_decay=wd, nesterov=nesterov, maximize=maximize, first_step=first_step,
                 l1=l1, l2=l2, device=dev, backend=backend)


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              max_exp_avg_sq: np.ndarray | None, *, step: int, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
              amsgrad: bool = False, maximize: bool = False, l1: float = 0.0, l2: float = 0.0,
              backend: str | None = None) -> None:
    r"""One Adam (or AdamW, ``decoupled_weight_decay=True``) step in place, as ``torch.optim``.

    .. math::
        g &\leftarrow \nabla f + l_1\,\mathrm{sign}(\theta) + 2 l_2 \theta
            \;(\text{negated if maximize}) \\
        &\text{Adam: } g \leftarrow g + \lambda\theta \qquad
         \text{AdamW: } \theta \leftarrow \theta (1 - \gamma\lambda) \\
        m &\leftarrow m + (1-\beta_1)(g - m),\qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad \hat v = \max(\hat v, v) \text{ (amsgrad) or } v \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    param, grad : ndarray, shape (n,)
        Flat parameters (updated in place) and gradient.
    exp_avg, exp_avg_sq : ndarray, shape (n,)
        First and second moment estimates m, v (updated in place).
    max_exp_avg_sq : ndarray, shape (n,) or None
        Running maximum of v; required when ``amsgrad``.
    step : int
        t ≥ 1, the step being taken (after incrementing), for the bias corrections.
    lr, beta1, beta2, eps, weight_decay : float
        γ ≥ 0, β₁, β₂ in [0, 1), ε ≥ 0, λ ≥ 0.
    decoupled_weight_decay, amsgrad, maximize : bool
        As in torch (``decoupled_weight_decay=True`` is AdamW).
    l1, l2 : float
        Penalty coefficients (gradient added to g first).
    backend : str or None
        Kernel backend; None uses the global setting.
    """
    lr, wd, l1, l2 = _common(lr, weight_decay, l1, l2)
    t = check_scalar("step", step, low=1, integer=True)
    b1 = check_scalar("beta1", beta1, low=0.0, high=1.0, high_open=True)
    b2 = check_scalar("beta2", beta2, low=0.0, high=1.0, high_open=True)
    eps = check_scalar("eps", eps, low=0.0)
    decoupled = _flag("decoupled_weight_decay", decoupled_weight_decay)
    amsgrad, maximize = _flag("amsgrad", amsgrad), _flag("maximize", maximize)
    dev = _check_buffers(param, grad, exp_avg=(exp_avg, True), exp_avg_sq=(exp_avg_sq, True),
                         max_exp_avg_sq=(max_exp_avg_sq, amsgrad))
    run_adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=t, lr=lr, beta1=b1,
                  beta2=b2, eps=eps, weight_decay=wd, decoupled_weight_decay=decoupled,
                  amsgrad=amsgrad, maximize=maximize, l1=l1, l2=l2, device=dev, backend=backend)


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 grad_avg: np.ndarray | None, momentum_buffer: np.ndarray | None, *,
                 lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, l1: float = 0.0, l2: float = 0.0,
                 backend: str | None = None) -> None:
    r"""One RMSprop step in place (``torch.optim.RMSprop``).

    .. math::
        g &\leftarrow \nabla f + l_1\,\mathrm{sign}(\theta) + 2 l_2 \theta
            \;(\text{negated if maximize}),\qquad g \leftarrow g + \lambda\theta \\
        v &\leftarrow \alpha v + (1-\alpha) g^2,\qquad
        \bar g \leftarrow \bar g + (1-\alpha)(g - \bar g) \text{ (centered)} \\
        d &= \sqrt{v - \bar g^2} \text{ (centered) or } \sqrt{v},\; + \epsilon \\
        b &\leftarrow \mu b + g/d,\; \theta \leftarrow \theta - \gamma b \text{ if } \mu > 0,
        \text{ else } \theta \leftarrow \theta - \gamma g / d

    Parameters
    ----------
    param, grad : ndarray, shape (n,)
    square_avg : ndarray, shape (n,)
        v, updated in place.
    grad_avg : ndarray, shape (n,) or None
        ḡ, required when ``centered``.
    momentum_buffer : ndarray, shape (n,) or None
        b, required when ``momentum > 0``.
    lr, alpha, eps, weight_decay, momentum : float
        γ, α, ε, λ, μ, all ≥ 0.
    centered, maximize : bool
    l1, l2 : float
        Penalty coefficients.
    backend : str or None
    """
    lr, wd, l1, l2 = _common(lr, weight_decay, l1, l2)
    alpha = check_scalar("alpha", alpha, low=0.0)
    eps = check_scalar("eps", eps, low=0.0)
    mu = check_scalar("momentum", momentum, low=0.0)
    centered, maximize = _flag("centered", centered), _flag("maximize", maximize)
    dev = _check_buffers(param, grad, square_avg=(square_avg, True),
                         grad_avg=(grad_avg, centered), momentum_buffer=(momentum_buffer, mu > 0))
    run_rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr=lr, alpha=alpha,
                     eps=eps, weight_decay=wd, momentum=mu, centered=centered, maximize=maximize,
                     l1=l1, l2=l2, device=dev, backend=backend)


def adagrad_step(param: np.ndarray, grad: np.ndarray, state_sum: np.ndarray, *, step: int,
                 lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False, l1: float = 0.0, l2: float = 0.0,
                 backend: str | None = None) -> None:
    r"""One Adagrad step in place (``torch.optim.Adagrad``).

    .. math::
        g &\leftarrow \nabla f + l_1\,\mathrm{sign}(\theta) + 2 l_2 \theta
            \;(\text{negated if maximize}),\qquad g \leftarrow g + \lambda\theta \\
        \tilde\gamma &= \gamma / (1 + (t-1)\eta),\qquad s \leftarrow s + g^2,\qquad
        \theta \leftarrow \theta - \tilde\gamma\, g / (\sqrt{s} + \epsilon)

    Parameters
    ----------
    param, grad : ndarray, shape (n,)
    state_sum : ndarray, shape (n,)
        s, the accumulated squared gradients (start at ``initial_accumulator_value``).
    step : int
        t ≥ 1 (after incrementing).
    lr, lr_decay, weight_decay, eps : float
        γ, η, λ, ε, all ≥ 0.
    maximize : bool
    l1, l2 : float
    backend : str or None
    """
    lr, wd, l1, l2 = _common(lr, weight_decay, l1, l2)
    t = check_scalar("step", step, low=1, integer=True)
    lr_decay = check_scalar("lr_decay", lr_decay, low=0.0)
    eps = check_scalar("eps", eps, low=0.0)
    maximize = _flag("maximize", maximize)
    dev = _check_buffers(param, grad, state_sum=(state_sum, True))
    run_adagrad_step(param, grad, state_sum, step=t, lr=lr, lr_decay=lr_decay, weight_decay=wd,
                     eps=eps, maximize=maximize, l1=l1, l2=l2, device=dev, backend=backend)


def adadelta_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                  acc_delta: np.ndarray, *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                  weight_decay: float = 0.0, maximize: bool = False, l1: float = 0.0,
                  l2: float = 0.0, backend: str | None = None) -> None:
    r"""One Adadelta step in place (``torch.optim.Adadelta``).

    .. math::
        g &\leftarrow \nabla f + l_1\,\mathrm{sign}(\theta) + 2 l_2 \theta
            \;(\text{negated if maximize}),\qquad g \leftarrow g + \lambda\theta \\
        v &\leftarrow \rho v + (1-\rho) g^2,\qquad
        \Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g,\qquad
        u \leftarrow \rho u + (1-\rho)\Delta^2,\qquad \theta \leftarrow \theta - \gamma\Delta

    Parameters
    ----------
    param, grad : ndarray, shape (n,)
    square_avg, acc_delta : ndarray, shape (n,)
        v and u, updated in place.
    lr, rho, eps, weight_decay : float
        γ ≥ 0, ρ in [0, 1], ε ≥ 0, λ ≥ 0.
    maximize : bool
    l1, l2 : float
    backend : str or None
    """
    lr, wd, l1, l2 = _common(lr, weight_decay, l1, l2)
    rho = check_scalar("rho", rho, low=0.0, high=1.0)
    eps = check_scalar("eps", eps, low=0.0)
    maximize = _flag("maximize", maximize)
    dev = _check_buffers(param, grad, square_avg=(square_avg, True), acc_delta=(acc_delta, True))
    run_adadelta_step(param, grad, square_avg, acc_delta, lr=lr, rho=rho, eps=eps,
                      weight_decay=wd, maximize=maximize, l1=l1, l2=l2, device=dev,
                      backend=backend)


# ---------------------------------------------------------------------------------------------
# Trusted entry points: for callers that checked the arrays when they built them and the
# hyper-parameters when a param group was built (fastreg.optim). Same keywords as the checked
# functions plus ``device`` (True: CUDA device arrays); they only compute the flag bits and the
# coefficient vector ``hp`` and launch the kernel. A buffer the options do not use may be None.
# ---------------------------------------------------------------------------------------------

def run_sgd_step(param, grad, momentum_buffer, *, lr, momentum, dampening, weight_decay,
                 nesterov, maximize, first_step, l1, l2, device=False, backend=None) -> None:
    """Trusted :func:`sgd_step`."""
    mu = momentum
    flags = ((MAXIMIZE if maximize else 0) | (MOMENTUM if mu != 0 else 0)
             | (NESTEROV if nesterov else 0) | (FIRST_STEP if first_step else 0))
    dt = param.dtype
    bufs = _bufs(dt, device, momentum_buffer if mu != 0 else None)
    _run(SGD, flags, param, grad, bufs, _hp(dt, lr, weight_decay, l1, l2, mu, 1.0 - dampening),
         device, backend)


def run_adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1, beta2,
                  eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, l1, l2,
                  device=False, backend=None) -> None:
    """Trusted :func:`adam_step`."""
    flags = ((MAXIMIZE if maximize else 0) | (AMSGRAD if amsgrad else 0)
             | (DECOUPLED if decoupled_weight_decay else 0))
    step_size = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt = 1.0 / (1.0 - beta2 ** step) ** 0.5
    # Both backends use g + wd·θ and θ·decay unconditionally: (wd, 1) for Adam, (0, 1-γλ) AdamW.
    wd_g, decay = (0.0, 1.0 - lr * weight_decay) if decoupled_weight_decay \
        else (weight_decay, 1.0)
    dt = param.dtype
    hp = _hp(dt, lr, wd_g, l1, l2, 1.0 - beta1, beta2, 1.0 - beta2, eps, step_size,
             inv_bc2_sqrt, decay)
    bufs = _bufs(dt, device, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None)
    _run(ADAM, flags, param, grad, bufs, hp, device, backend)


def run_rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps,
                     weight_decay, momentum, centered, maximize, l1, l2, device=False,
                     backend=None) -> None:
    """Trusted :func:`rmsprop_step`."""
    mu = momentum
    flags = ((MAXIMIZE if maximize else 0) | (CENTERED if centered else 0)
             | (MOMENTUM if mu > 0 else 0))
    dt = param.dtype
    hp = _hp(dt, lr, weight_decay, l1, l2, alpha, 1.0 - alpha, eps, mu)
    bufs = _bufs(dt, device, square_avg, grad_avg if centered else None,
                 momentum_buffer if mu > 0 else None)
    _run(RMSPROP, flags, param, grad, bufs, hp, device, backend)


def run_adagrad_step(param, grad, state_sum, *, step, lr, lr_decay, weight_decay, eps, maximize,
                     l1, l2, device=False, backend=None) -> None:
    """Trusted :func:`adagrad_step`."""
    clr = lr / (1.0 + (step - 1) * lr_decay)
    dt = param.dtype
    hp = _hp(dt, lr, weight_decay, l1, l2, clr, eps)
    _run(ADAGRAD, MAXIMIZE if maximize else 0, param, grad, _bufs(dt, device, state_sum), hp,
         device, backend)


def run_adadelta_step(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay,
                      maximize, l1, l2, device=False, backend=None) -> None:
    """Trusted :func:`adadelta_step`."""
    dt = param.dtype
    hp = _hp(dt, lr, weight_decay, l1, l2, rho, 1.0 - rho, eps)
    _run(ADADELTA, MAXIMIZE if maximize else 0, param, grad,
         _bufs(dt, device, square_avg, acc_delta), hp, device, backend)
