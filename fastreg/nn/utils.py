"""Gradient clipping and flat parameter vectors, as ``torch.nn.utils``.

Every function takes a :class:`~fastreg.nn.Parameter` or an iterable of them (``model.parameters()``)
and works where the arrays live (host or CUDA), through the placement seam
(:mod:`fastreg._kernels.placement`). Parameters whose ``grad`` is None are skipped, as torch.
"""
from __future__ import annotations

import math

import numpy as np

from .._checks import check_scalar
from .._kernels import placement
from .parameter import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector",
           "vector_to_parameters"]


def _params(parameters, fn: str) -> list[Parameter]:
    if isinstance(parameters, Parameter):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{fn}: parameters must be a fastreg.nn.Parameter or an iterable of "
                        f"them, got {type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{fn}: parameters[{i}] must be a fastreg.nn.Parameter, got "
                            f"{type(p).__name__}")
    return params


def _check_foreach(foreach) -> None:
    if foreach is not None and not isinstance(foreach, (bool, np.bool_)):
        raise TypeError(f"foreach must be None or a bool, got {foreach!r}")


def _norm_type(norm_type) -> float:
    """p as a float: a real > 0, inf, or a string float() reads ("inf"), as torch's float()."""
    if isinstance(norm_type, str):
        try:
            norm_type = float(norm_type)
        except ValueError:
            raise ValueError(f"norm_type must be a number > 0 or 'inf', got {norm_type!r}") \
                from None
    return check_scalar("norm_type", norm_type, low=0.0, low_open=True, finite=False)


def _power_sum(g, p: float) -> float:
    """sum |g|^p (p finite) or max |g| (p = inf), in float64, as a Python float."""
    place = placement.of(g)
    if p == 2.0:
        return place.sum_squares(g)
    if p == 1.0:
        return place.sum_abs(g)
    a = np.abs(place.to_host(g).astype(np.float64, copy=False))   # (a device copy comes back)
    if not a.size:
        return 0.0
    return float(a.max()) if math.isinf(p) else float(np.sum(a ** p))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> float:
    r"""Scale all gradients together so that their joint p-norm is at most ``max_norm``.

    .. math::
        \|g\|_p = \Big(\sum_{\text{params}} \sum_i |g_i|^p\Big)^{1/p}
        \;(\max_i |g_i| \text{ for } p = \infty), \qquad
        g \leftarrow g \cdot \min\!\Big(1, \frac{\text{max\_norm}}{\|g\|_p + 10^{-6}}\Big)

    in place, on every parameter whose ``grad`` is not None (the others are skipped), as
    ``torch.nn.utils.clip_grad_norm_``. The norm is accumulated in float64; the factor is
    applied in each gradient's dtype.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
    max_norm : float >= 0 (inf: never clip)
        torch accepts a negative value (and then flips the gradients); fastreg refuses it.
    norm_type : float > 0 or inf (or the string "inf")
    error_if_nonfinite : bool
        Raise RuntimeError when the total norm is NaN or inf (else the gradients are scaled
        by the non-finite factor anyway, as torch).
    foreach : None or bool
        Accepted for torch compatibility; there is one implementation.

    Returns
    -------
    float
        The total norm of the gradients before clipping, as a Python float (torch returns a
        0-d tensor); 0.0 when no parameter has a gradient.
    """
    params = _params(parameters, "clip_grad_norm_")
    max_norm = check_scalar("max_norm", max_norm, low=0.0, finite=False)
    p = _norm_type(norm_type)
    if not isinstance(error_if_nonfinite, (bool, np.bool_)):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}")
    _check_foreach(foreach)
    grads = [q.grad for q in params if q.grad is not None]
    if not grads:
        return 0.0
    if math.isinf(p):
        total = max(_power_sum(g, p) for g in grads)
    else:
        total = math.fsum(_power_sum(g, p) for g in grads)
        total = math.sqrt(total) if p == 2.0 else total ** (1.0 / p)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from `parameters` is non-finite, so it "
            "cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")
    coef = max_norm / (total + 1e-6)
    coef = coef if coef < 1.0 or math.isnan(coef) else 1.0
    if coef != 1.0:                                # torch multiplies by 1.0: a no-op
        with np.errstate(invalid="ignore"):        # inf * 0 -> nan under a non-finite norm
            for g in grads:
                placement.of(g).scale(g, g, coef)
    return total


def clip_grad_value_(parameters, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place (parameters
    whose ``grad`` is None are skipped), as ``torch.nn.utils.clip_grad_value_``.

    ``clip_value`` must be >= 0 (torch silently sets every element to ``clip_value`` when it
    is negative). NaN gradient elements stay NaN. On a CUDA gradient the clamp runs on a host
    copy (there is no device clamp kernel); that is a copy out and back per parameter.
    """
    params = _params(parameters, "clip_grad_value_")
    c = check_scalar("clip_value", clip_value, low=0.0, finite=False)
    _check_foreach(foreach)
    for q in params:
        g = q.grad
        if g is None:
            continue
        if isinstance(g, np.ndarray):
            np.clip(g, -c, c, out=g)
        else:
            place = placement.of(g)
            h = place.to_host(g)
            np.clip(h, -c, c, out=h)
            place.copy_into(g, h)


def parameters_to_vector(parameters) -> np.ndarray:
    """The parameters' values flattened and concatenated into one new 1-D array (C order, in
    iteration order), as ``torch.nn.utils.parameters_to_vector``. A host array, also for CUDA
    parameters (their values are copied to the host)."""
    params = _params(parameters, "parameters_to_vector")
    if not params:
        raise ValueError("parameters_to_vector needs at least one parameter (numpy cannot "
                         "concatenate nothing)")
    return np.concatenate([placement.HOST.to_host(p.data).reshape(-1) for p in params])


def vector_to_parameters(vec: np.ndarray, parameters) -> None:
    """Copy consecutive slices of the 1-D ``vec`` into the parameters' values, in place, as
    ``torch.nn.utils.vector_to_parameters`` (which re-points each parameter at a view of
    ``vec``; fastreg copies, so optimizers holding the arrays stay valid). Values are cast to
    each parameter's dtype; ``vec`` must have exactly as many elements as the parameters."""
    if not isinstance(vec, np.ndarray) and placement.of(vec) is None:
        raise TypeError(f"expected a numpy.ndarray, but got: {type(vec).__name__}")
    params = _params(parameters, "vector_to_parameters")
    host = placement.HOST.to_host(vec)
    if host.ndim != 1:
        raise ValueError(f"vec must be 1-dimensional, got shape {host.shape}")
    need = sum(p.data.size for p in params)
    if host.shape[0] != need:
        raise ValueError(f"vec has {host.shape[0]} elements, the parameters have {need}")
    pointer = 0
    for p in params:
        n = p.data.size
        chunk = np.ascontiguousarray(host[pointer:pointer + n].reshape(p.data.shape),
                                     dtype=p.data.dtype)
        placement.of(p.data).copy_into(p.data, chunk)
        pointer += n
