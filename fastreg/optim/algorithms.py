"""SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta: torch.optim's algorithms over flat buffers.

Each class only validates its hyper-parameters (torch's messages) and maps a param group onto one
call of the fused kernel family in fastreg/_kernels/optim/__init__.py, which holds the maths. Every group
also takes fastreg's ``l1`` and ``l2`` penalty coefficients: the gradient of
l1·Σ|w| + l2·Σw² is added to the loss gradient inside the same sweep (see ``Optimizer.penalty``
for the matching loss term).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_scalar
from .._kernels import optim as _k
from .optimizer import Optimizer, _FlatGroup, _Run

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "RMSprop"]


def _real(name: str, value) -> float:
    """A finite real: hyper-parameters are checked here, when a param group is built, and
    trusted by every step (fastreg._kernels.optim's run_* entry points)."""
    return check_scalar(name, value)


def _check_nonneg(group: dict[str, Any], key: str, label: str) -> None:
    v = _real(key, group[key])
    if not 0.0 <= v:
        raise ValueError(f"Invalid {label}: {group[key]}")   # torch's message


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum and Nesterov (``torch.optim.SGD``).

    .. math::
        g_t &= \nabla f(\theta_{t-1}) \;(\text{negated if maximize}) + \lambda\theta_{t-1} \\
        b_t &= g_t \;(t = 1),\quad \mu b_{t-1} + (1-\tau) g_t \;(t > 1) \\
        \theta_t &= \theta_{t-1} - \gamma\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    (without momentum, θ_t = θ_{t−1} − γ g_t). Parameters as in torch: ``lr`` γ,
    ``momentum`` μ, ``dampening`` τ, ``weight_decay`` λ, ``nesterov``, ``maximize``; plus
    ``l1``, ``l2`` penalties.
    """

    _has_step = False   # torch's SGD keeps no step count in its state

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 l1: float = 0.0, l2: float = 0.0):
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
                    "l1": l1, "l2": l2}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, g):
        _check_nonneg(g, "lr", "learning rate")
        _check_nonneg(g, "momentum", "momentum value")
        _check_nonneg(g, "weight_decay", "weight_decay value")
        _real("dampening", g["dampening"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, g, run: _Run | _FlatGroup):
        mom = g["momentum"]
        buf, first = None, False
        if mom != 0:
            # torch: buf = g.clone() where a parameter has no momentum buffer yet
            first = run.first or not run.has_buffer("momentum_buffer")
            buf = run.buffer("momentum_buffer")
        _k.run_sgd_step(run.data, run.grad, buf, lr=g["lr"], momentum=mom,
                        dampening=g["dampening"], weight_decay=g["weight_decay"],
                        nesterov=bool(g["nesterov"]), maximize=bool(g["maximize"]),
                        first_step=first, l1=g["l1"], l2=g["l2"],
                        device=run.place.is_device)


class Adam(Optimizer):
    r"""Adam (``torch.optim.Adam``); ``decoupled_weight_decay=True`` makes it AdamW.

    .. math::
        g_t &= \nabla f(\theta_{t-1}) \;(\text{negated if maximize});\quad
        \text{Adam: } g_t \mathrel{+}= \lambda\theta_{t-1},\quad
        \text{AdamW: } \theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2
        \qquad (\hat v_t = \max(\hat v_{t-1}, v_t) \text{ if amsgrad}) \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{m_t / (1-\beta_1^t)}
            {\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    Parameters as in torch: ``lr`` γ, ``betas`` (β₁, β₂), ``eps`` ε, ``weight_decay`` λ,
    ``amsgrad``, ``maximize``, ``decoupled_weight_decay``; plus ``l1``, ``l2`` penalties.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, decoupled_weight_decay: bool = False, l1: float = 0.0,
                 l2: float = 0.0):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize,
                    "decoupled_weight_decay": decoupled_weight_decay, "l1": l1, "l2": l2}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, g):
        _check_nonneg(g, "lr", "learning rate")
        _check_nonneg(g, "eps", "epsilon value")
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not 0.0 <= _real(f"betas[{i}]", b) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        _check_nonneg(g, "weight_decay", "weight_decay value")

    def _update(self, g, run: _Run | _FlatGroup):
        beta1, beta2 = g["betas"]
        amsgrad = bool(g["amsgrad"])
        _k.run_adam_step(run.data, run.grad, run.buffer("exp_avg"),
                         run.buffer("exp_avg_sq"),
                         run.buffer("max_exp_avg_sq") if amsgrad else None, step=run.step,
                         lr=g["lr"], beta1=beta1, beta2=beta2, eps=g["eps"],
                         weight_decay=g["weight_decay"],
                         decoupled_weight_decay=bool(g.get("decoupled_weight_decay", False)),
                         amsgrad=amsgrad, maximize=bool(g["maximize"]), l1=g["l1"], l2=g["l2"],
                         device=run.place.is_device)


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, default λ = 1e-2.

    θ ← θ·(1 − γλ) before the Adam update instead of adding λθ to the gradient; the ``l2``
    penalty, by contrast, is part of the loss and goes through the adaptive scaling.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, l2: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         l1=l1, l2=l2)


class RMSprop(Optimizer):
    r"""RMSprop (``torch.optim.RMSprop``), optionally centered and with momentum.

    .. math::
        g_t &= \nabla f(\theta_{t-1}) \;(\text{negated if maximize}) + \lambda\theta_{t-1},\qquad
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2 \\
        \tilde v_t &= v_t - \bar g_t^2 \text{ with }
            \bar g_t = \alpha\bar g_{t-1} + (1-\alpha) g_t \text{ (centered), else } v_t \\
        b_t &= \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon),\qquad
        \theta_t = \theta_{t-1} - \gamma b_t \quad(\mu = 0: \theta_t = \theta_{t-1}
            - \gamma g_t / (\sqrt{\tilde v_t} + \epsilon))

    Parameters as in torch: ``lr`` γ, ``alpha`` α, ``eps`` ε, ``weight_decay`` λ,
    ``momentum`` μ, ``centered``, ``maximize``; plus ``l1``, ``l2`` penalties.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, l2: float = 0.0):
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                    "momentum": momentum, "centered": centered, "maximize": maximize,
                    "l1": l1, "l2": l2}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, g):
        _check_nonneg(g, "lr", "learning rate")
        _check_nonneg(g, "eps", "epsilon value")
        _check_nonneg(g, "momentum", "momentum value")
        _check_nonneg(g, "weight_decay", "weight_decay value")
        _check_nonneg(g, "alpha", "alpha value")

    def _update(self, g, run: _Run | _FlatGroup):
        centered, mom = bool(g["centered"]), g["momentum"]
        _k.run_rmsprop_step(run.data, run.grad, run.buffer("square_avg"),
                            run.buffer("grad_avg") if centered else None,
                            run.buffer("momentum_buffer") if mom > 0 else None,
                            lr=g["lr"], alpha=g["alpha"], eps=g["eps"],
                            weight_decay=g["weight_decay"], momentum=mom, centered=centered,
                            maximize=bool(g["maximize"]), l1=g["l1"], l2=g["l2"],
                            device=run.place.is_device)


class Adagrad(Optimizer):
    r"""Adagrad (``torch.optim.Adagrad``).

    .. math::
        g_t &= \nabla f(\theta_{t-1}) \;(\text{negated if maximize}) + \lambda\theta_{t-1},\qquad
        \tilde\gamma = \gamma / (1 + (t-1)\eta) \\
        s_t &= s_{t-1} + g_t^2 \;(s_0 = \text{initial\_accumulator\_value}),\qquad
        \theta_t = \theta_{t-1} - \tilde\gamma\, g_t / (\sqrt{s_t} + \epsilon)

    Parameters as in torch: ``lr`` γ, ``lr_decay`` η, ``weight_decay`` λ,
    ``initial_accumulator_value``, ``eps`` ε, ``maximize``; plus ``l1``, ``l2`` penalties.
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, l1: float = 0.0,
                 l2: float = 0.0):
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "maximize": maximize, "l1": l1, "l2": l2}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, g):
        _check_nonneg(g, "lr", "learning rate")
        _check_nonneg(g, "lr_decay", "lr_decay value")
        _check_nonneg(g, "weight_decay", "weight_decay value")
        _check_nonneg(g, "initial_accumulator_value", "initial_accumulator_value value")
        _check_nonneg(g, "eps", "epsilon value")

    _eager_state = True   # torch creates every parameter's state (step 0, sum) up front

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        # torch creates Adagrad's state (step 0, sum) when a group is added, not on first step.
        self._flat[-1].buffer("sum", float(self.param_groups[-1]["initial_accumulator_value"]))

    def _initial_buffer(self, group, flat, name):
        if name == "sum":
            return np.full(flat.n, float(group["initial_accumulator_value"]), dtype=flat.dtype)
        return super()._initial_buffer(group, flat, name)

    def _update(self, g, run: _Run | _FlatGroup):
        _k.run_adagrad_step(run.data, run.grad,
                            run.buffer("sum", float(g["initial_accumulator_value"])),
                            step=run.step, lr=g["lr"], lr_decay=g["lr_decay"],
                            weight_decay=g["weight_decay"], eps=g["eps"],
                            maximize=bool(g["maximize"]), l1=g["l1"], l2=g["l2"],
                            device=run.place.is_device)


class Adadelta(Optimizer):
    r"""Adadelta (``torch.optim.Adadelta``).

    .. math::
        g_t &= \nabla f(\theta_{t-1}) \;(\text{negated if maximize}) + \lambda\theta_{t-1},\qquad
        v_t = \rho v_{t-1} + (1-\rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t,\qquad
        u_t = \rho u_{t-1} + (1-\rho)\Delta_t^2,\qquad \theta_t = \theta_{t-1} - \gamma\Delta_t

    Parameters as in torch: ``lr`` γ, ``rho`` ρ, ``eps`` ε, ``weight_decay`` λ, ``maximize``;
    plus ``l1``, ``l2`` penalties.
    """

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False, l1: float = 0.0,
                 l2: float = 0.0):
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize, "l1": l1, "l2": l2}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, g):
        _check_nonneg(g, "lr", "learning rate")
        if not 0.0 <= _real("rho", g["rho"]) <= 1.0:
            raise ValueError(f"Invalid rho value: {g['rho']}")
        _check_nonneg(g, "eps", "epsilon value")
        _check_nonneg(g, "weight_decay", "weight_decay value")

    def _update(self, g, run: _Run | _FlatGroup):
        _k.run_adadelta_step(run.data, run.grad, run.buffer("square_avg"),
                             run.buffer("acc_delta"), lr=g["lr"], rho=g["rho"], eps=g["eps"],
                             weight_decay=g["weight_decay"], maximize=bool(g["maximize"]),
                             l1=g["l1"], l2=g["l2"], device=run.place.is_device)
