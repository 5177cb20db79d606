"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s semantics.

A scheduler talks to its optimizer only through ``optimizer.param_groups`` (a list of dicts with
torch's keys: ``"lr"``, and ``"momentum"`` or ``"betas"`` for :class:`OneCycleLR` and
:class:`CyclicLR`), so it drives any fastreg optimizer, or any object shaped like one.
:class:`SequentialLR` (one scheduler after another, at milestones) and :class:`ChainedScheduler`
(several at once, factors multiplied) compose the others.

Conventions copied from torch 2.x so that sequences match number for number:

* Constructing a scheduler records ``group["initial_lr"]`` (when ``last_epoch == -1``) and takes
  one step (``last_epoch`` goes from -1 to 0), which sets the epoch-0 learning rate.
* ``step()`` uses the *chainable* form (the new lr is computed from the group's current lr), so
  schedulers compose; ``step(epoch)`` (deprecated in torch, kept for compatibility) uses the
  *closed* form (lr as a function of ``base_lrs`` and ``epoch``) where one exists.
* ``get_last_lr()`` is the list of lrs the last step wrote; ``state_dict()`` is every attribute
  but the optimizer (composites: their children's state_dicts; functions are not saved);
  :class:`ReduceLROnPlateau` takes ``step(metric)`` and takes no step at construction.
* The first ``scheduler.step()`` warns (torch's UserWarning and text) if the optimizer has not
  stepped yet: fastreg's optimizers record their steps; another object's ``step`` method is
  wrapped as torch wraps it; an object without one is not checked.

Typical use, once per epoch (or per batch for :class:`OneCycleLR`)::

    sched = StepLR(opt, step_size=50, gamma=0.5)
    for epoch in range(epochs):
        train_one_epoch(...)        # calls opt.step()
        sched.step()
"""
from __future__ import annotations

import functools
import math
import types
import warnings
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import check_int, check_scalar
from .optimizer import Optimizer

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

_EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` is deprecated (as in torch); call "
    "`scheduler.step()` without it. With an epoch, the closed form is used where available.")


# torch 2.13's texts, word for word (tests and users grep for them).
_STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate")
_STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate")

_REAL = (int, float, np.integer, np.floating)
_INT = (int, np.integer)

# --------------------------------------------------------------------------------------------
# argument checks (one place for each rule; messages name the argument and the value)

def _check_optimizer(optimizer) -> None:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"optimizer must have a `param_groups` list of dicts, "
                        f"got {type(optimizer).__name__}")
    for i, g in enumerate(groups):
        if "lr" not in g:
            raise KeyError(f"optimizer.param_groups[{i}] has no 'lr' key")


def _check_real(name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    """A real in the interval (inf allowed, NaN not); the value itself is returned."""
    check_scalar(name, value, low=low, high=high, low_open=low_open, high_open=high_open,
                 finite=False)
    return value


def _check_int(name: str, value, *, low: int) -> int:
    return check_int(name, value, low)


def _format_param(name: str, optimizer, param) -> list:
    """One value per param group: broadcast a scalar, check a list's length."""
    n = len(optimizer.param_groups)
    if isinstance(param, (list, tuple)):
        if len(param) != n:
            raise ValueError(f"{name} must have one value per param group ({n}), "
                             f"got {len(param)} values")
        return list(param)
    return [param] * n


def _group_values(optimizer, key: str) -> list:
    return [group[key] for group in optimizer.param_groups]


def _track_optimizer_step(optimizer) -> None:
    """Let the scheduler see whether ``optimizer.step()`` ran (for the step-order warning).

    fastreg's optimizers record it themselves (``Optimizer.step`` sets ``_opt_called``). Any
    other object with a ``step`` method gets its bound ``step`` wrapped, as torch does; an
    object without one (only ``param_groups``) is not tracked and never warned about.
    """
    if isinstance(optimizer, Optimizer):
        return
    step = getattr(optimizer, "step", None)
    if not callable(step) or getattr(step, "_wrapped_by_lr_sched", False):
        return
    func = getattr(step, "__func__", None)
    if func is None:
        return
    opt_ref = weakref.ref(optimizer)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        opt = opt_ref()
        opt._opt_called = True
        return func.__get__(opt, opt.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    try:
        optimizer.step = wrapper
    except AttributeError:      # __slots__ or a read-only attribute: leave it untracked
        pass


def _warn_if_stepped_before_optimizer(optimizer) -> None:
    """torch's warnings for the first ``scheduler.step()`` of a schedule (see LRScheduler.step)."""
    if isinstance(optimizer, Optimizer):
        called = getattr(optimizer, "_opt_called", False)
    else:
        step = getattr(optimizer, "step", None)
        if not callable(step):
            return
        if not getattr(step, "_wrapped_by_lr_sched", False):
            warnings.warn(_STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=3)
            return
        called = getattr(optimizer, "_opt_called", False)
    if not called:
        warnings.warn(_STEP_ORDER_WARNING, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# base class

class LRScheduler:
    """Base class: holds ``optimizer``, ``base_lrs``, ``last_epoch`` and steps the lrs.

    Subclasses implement ``get_lr()`` (chainable form, called inside ``step()`` after
    ``last_epoch`` was incremented) and optionally ``_get_closed_form_lr()``.

    Parameters
    ----------
    optimizer : object with ``param_groups``
        The optimizer whose ``group["lr"]`` values are scheduled.
    last_epoch : int, default -1
        Index of the last epoch; -1 starts a fresh schedule. A value >= 0 resumes one and
        requires ``"initial_lr"`` in every group (as written by a previous scheduler).
    """

    _is_initial: bool = False

    def __init__(self, optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming a scheduler with last_epoch={last_epoch}")
        self.base_lrs: list[float] = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """The step every scheduler takes at construction (sets the epoch-0 lr)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (as torch)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict` (checked first: all or nothing)."""
        if not isinstance(state_dict, Mapping) or not all(isinstance(k, str)
                                                          for k in state_dict):
            raise TypeError(f"state_dict must be a mapping of attribute names, got "
                            f"{type(state_dict).__name__}")
        if "optimizer" in state_dict:
            raise ValueError("state_dict must not hold 'optimizer'")
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list[float]:
        """The learning rates the last :meth:`step` wrote, one per param group."""
        return self._last_lr

    def get_lr(self) -> list[float]:
        """Chainable form of the schedule: the lrs for ``last_epoch`` (called by ``step``)."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (or jump to ``epoch``, deprecated) and write the new lrs.

        Call it after ``optimizer.step()``: the first call warns (torch's ``UserWarning``) when
        the optimizer has not stepped yet, because the schedule's first value would be skipped.
        """
        if self._step_count == 1:
            _warn_if_stepped_before_optimizer(self.optimizer)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(_EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed = getattr(self, "_get_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = _group_values(self.optimizer, "lr")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(last_epoch={getattr(self, 'last_epoch', None)}, "
                f"lr={self.get_last_lr()})")


# --------------------------------------------------------------------------------------------
# schedules defined by a multiplicative factor

class LambdaLR(LRScheduler):
    r"""Learning rate ``base_lr * lr_lambda(epoch)``.

    .. math:: \eta_t = \eta_0 \cdot \lambda(t)

    Parameters
    ----------
    lr_lambda : callable or list of callables
        ``epoch -> factor``; one per param group, or one for all.
    """

    def __init__(self, optimizer, lr_lambda: Callable[[int], float] | Sequence[Callable],
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"lr_lambda must have one function per param group ({n}), "
                                 f"got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """As torch: plain functions are not saved; callable objects save their ``__dict__``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not all(isinstance(k, str)
                                                          for k in state_dict):
            raise TypeError(f"state_dict must be a mapping of attribute names, got "
                            f"{type(state_dict).__name__}")
        state = dict(state_dict)
        lr_lambdas = state.pop("lr_lambdas", None)
        if not isinstance(lr_lambdas, (list, tuple)) or len(lr_lambdas) != len(self.lr_lambdas) \
                or not all(v is None or isinstance(v, Mapping) for v in lr_lambdas):
            raise ValueError(f"state_dict['lr_lambdas'] must be a list of {len(self.lr_lambdas)} "
                             f"dicts or None, got {str(lr_lambdas)[:80]}")
        if "optimizer" in state:
            raise ValueError("state_dict must not hold 'optimizer'")
        self.__dict__.update(state)
        for fn, saved in zip(self.lr_lambdas, lr_lambdas):
            if saved is not None:
                fn.__dict__.update(saved)

    def get_lr(self) -> list[float]:
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]


class MultiplicativeLR(LambdaLR):
    r"""Multiply the lr by ``lr_lambda(epoch)`` at every step (from epoch 1 on).

    .. math:: \eta_t = \eta_{t-1} \cdot \lambda(t) \quad (t \ge 1),\qquad \eta_0 = \eta_{init}

    Parameters
    ----------
    lr_lambda : callable or list of callables
        ``epoch -> factor``; one per param group, or one for all. Saved in ``state_dict`` as
        :class:`LambdaLR` saves its functions (callable objects by their ``__dict__``, plain
        functions not at all).
    """

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return _group_values(self.optimizer, "lr")
        return [g["lr"] * fn(self.last_epoch)
                for fn, g in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)]


class ConstantLR(LRScheduler):
    r"""Multiply the lr by ``factor`` until epoch ``total_iters``, then restore it.

    .. math:: \eta_t = \eta_0 \cdot (\text{factor if } t < T \text{ else } 1)
    """

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        # torch allows factor == 0, but its chainable form then divides by zero at total_iters.
        _check_real("factor", factor, low=0.0, high=1.0, low_open=True)
        self.factor = factor
        self.total_iters = _check_int("total_iters", total_iters, low=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] * self.factor for g in groups]
        if self.last_epoch != self.total_iters:
            return _group_values(self.optimizer, "lr")
        return [g["lr"] * (1.0 / self.factor) for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    r"""Linearly change the factor from ``start_factor`` to ``end_factor`` over ``total_iters``.

    .. math:: \eta_t = \eta_0 \left(s + (e - s)\,\frac{\min(t, T)}{T}\right)
    """

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        _check_real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)
        _check_real("end_factor", end_factor, low=0.0, high=1.0)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _check_int("total_iters", total_iters, low=1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] * self.start_factor for g in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _group_values(self.optimizer, "lr")
        d = self.end_factor - self.start_factor
        return [g["lr"] * (1.0 + d / (self.total_iters * self.start_factor
                                      + (self.last_epoch - 1) * d))
                for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class StepLR(LRScheduler):
    r"""Decay the lr by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{\lfloor t / s \rfloor}

    ``StepLR(opt, step_size=50, gamma=0.5)`` halves the lr every 50 epochs.
    """

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _check_int("step_size", step_size, low=1)
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _group_values(self.optimizer, "lr")
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""Decay the lr by ``gamma`` at each milestone epoch.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{|\{m \in \text{milestones} : m \le t\}|}
    """

    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        milestones = list(milestones)
        for m in milestones:
            _check_int("milestones entry", m, low=0)
        self.milestones = Counter(int(m) for m in milestones)
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return _group_values(self.optimizer, "lr")
        k = self.milestones[self.last_epoch]
        return [g["lr"] * self.gamma ** k for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""Decay the lr by ``gamma`` every epoch: :math:`\eta_t = \eta_0 \gamma^t`."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return _group_values(self.optimizer, "lr")
        return [g["lr"] * self.gamma for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    r"""Decay the lr polynomially to 0 over ``total_iters`` epochs, then keep it there.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{p}

    ``step()`` applies the ratio :math:`\left(\frac{1 - t/T}{1 - (t-1)/T}\right)^p` to the
    current lr (torch's chainable form), so it composes with other schedulers.
    """

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> None:
        # torch accepts total_iters=0 but its closed form then divides by zero.
        self.total_iters = _check_int("total_iters", total_iters, low=1)
        self.power = _check_real("power", power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial or self.last_epoch > self.total_iters:
            return _group_values(self.optimizer, "lr")
        decay = ((1.0 - self.last_epoch / self.total_iters)
                 / (1.0 - (self.last_epoch - 1) / self.total_iters)) ** self.power
        return [g["lr"] * decay for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters)
                ** self.power for base_lr in self.base_lrs]


# --------------------------------------------------------------------------------------------
# cosine schedules

class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the initial lr down to ``eta_min`` over ``T_max`` epochs.

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})
              \left(1 + \cos\frac{\pi t}{T_{max}}\right)

    As in torch, ``step()`` uses the recursive form, so past ``T_max`` the lr rises again
    (period ``2 T_max``) rather than staying at ``eta_min``.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _check_int("T_max", T_max, low=1)
        self.eta_min = _check_real("eta_min", eta_min, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return _group_values(self.optimizer, "lr")
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [g["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, g in zip(self.base_lrs, groups, strict=True)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (g["lr"] - self.eta_min) + self.eta_min
                for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR): period ``T_0``, multiplied by ``T_mult``
    after each restart.

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})
              \left(1 + \cos\frac{\pi T_{cur}}{T_i}\right)

    ``step()`` may be called with a fractional ``epoch`` (e.g. ``epoch + i / iters``) to anneal
    within an epoch, as in torch.
    """

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_0 = _check_int("T_0", T_0, low=1)
        self.T_i = self.T_0
        self.T_mult = _check_int("T_mult", T_mult, low=1)
        self.eta_min = _check_real("eta_min", eta_min, low=0.0)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or set the (possibly fractional) ``epoch`` directly."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"epoch must be non-negative, got {epoch!r}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = _group_values(self.optimizer, "lr")


# --------------------------------------------------------------------------------------------
# cyclical

class CyclicLR(LRScheduler):
    r"""Cyclical learning rate (Smith 2017): the lr moves between ``base_lr`` and ``max_lr``
    in triangles, stepped once per **batch**.

    With :math:`S = s_{up} + s_{down}` and :math:`t` = ``last_epoch``:

    .. math::
        c = \lfloor 1 + t / S \rfloor,\quad x = 1 + t/S - c,\quad
        h = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & x > r \end{cases}
        \;(r = s_{up}/S),\qquad
        \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, h\, \sigma

    where the amplitude scale :math:`\sigma` is 1 (``"triangular"``), :math:`2^{1-c}`
    (``"triangular2"``: halved every cycle), :math:`\gamma^t` (``"exp_range"``), or
    ``scale_fn(c)`` / ``scale_fn(t)`` (``scale_mode`` "cycle" / "iterations").

    With ``cycle_momentum`` (default, as torch) the momentum moves the other way,
    :math:`\mu_t = \mu_{max} - (\mu_{max} - \mu_{base})\, h\, \sigma`, written to
    ``group["momentum"]`` (SGD, RMSprop) or ``group["betas"][0]`` (Adam, AdamW); for an optimizer
    with neither (Adagrad, Adadelta) it raises: pass ``cycle_momentum=False``. Note SGD then
    runs with momentum even if it was built with ``momentum=0``, as in torch.

    Construction sets every group's lr to ``base_lr`` (and the momentum to ``max_momentum``).
    """

    def __init__(self, optimizer, base_lr: float | list[float], max_lr: float | list[float],
                 step_size_up: int = 2000, step_size_down: int | None = None,
                 mode: str = "triangular", gamma: float = 1.0,
                 scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.8,
                 max_momentum: float | list[float] = 0.9, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _format_param("base_lr", optimizer, base_lr)
        self.max_lrs = _format_param("max_lr", optimizer, max_lr)
        for name, values in (("base_lr", base_lrs), ("max_lr", self.max_lrs)):
            for v in values:
                _check_real(name, v, low=0.0)
        up = float(_check_int("step_size_up", step_size_up, low=1))
        down = up if step_size_down is None else float(
            _check_int("step_size_down", step_size_down, low=1))
        if scale_fn is None and mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError("mode must be 'triangular', 'triangular2' or 'exp_range' when no "
                             f"scale_fn is given, got {mode!r}")
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable or None, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        self.gamma = _check_real("gamma", gamma, low=0.0)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                group["lr"] = lr
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode = mode
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()

        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            # torch looks at optimizer.defaults; a stand-in may only have param_groups.
            keys = getattr(optimizer, "defaults", None) or optimizer.param_groups[0]
            if "momentum" not in keys and "betas" not in keys:
                raise ValueError(f"{type(optimizer).__name__} has no momentum or beta1 (a "
                                 "'momentum' or 'betas' param-group key) for CyclicLR to cycle; "
                                 "pass cycle_momentum=False")
            self.use_beta1 = "betas" in keys
            self.base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            self.max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            for name, values in (("base_momentum", self.base_momentums),
                                 ("max_momentum", self.max_momentums)):
                for v in values:
                    _check_real(name, v, low=0.0, high=1.0, high_open=self.use_beta1)
            if last_epoch == -1:
                for m_mom, b_mom, group in zip(self.max_momentums, self.base_momentums,
                                               optimizer.param_groups, strict=True):
                    if self.use_beta1:
                        group["betas"] = (m_mom, *group["betas"][1:])
                    else:
                        group["momentum"] = m_mom
                    group["max_momentum"] = m_mom
                    group["base_momentum"] = b_mom
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        """Pick the built-in amplitude scale of ``mode`` (not stored in ``state_dict``)."""
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref = self._triangular_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref = self._triangular2_scale_fn
            self.scale_mode = "cycle"
        else:
            self._scale_fn_ref = functools.partial(self._exp_range_scale_fn, self.gamma)
            self.scale_mode = "iterations"

    def scale_fn(self, x: float) -> float:
        """The amplitude scale σ at ``x`` (the cycle number or the iteration)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    @staticmethod
    def _triangular_scale_fn(x: float) -> float:
        return 1.0

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        return 1 / (2.0 ** (x - 1))

    @staticmethod
    def _exp_range_scale_fn(gamma: float, x: float) -> float:
        return gamma ** x

    def get_lr(self) -> list[float]:
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        sigma = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)
        lrs = [base_lr + (max_lr - base_lr) * scale_factor * sigma
               for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True)]
        if self.cycle_momentum:
            for group, b_mom, m_mom in zip(self.optimizer.param_groups, self.base_momentums,
                                           self.max_momentums, strict=True):
                mom = m_mom - (m_mom - b_mom) * scale_factor * sigma
                if self.use_beta1:
                    group["betas"] = (mom, *group["betas"][1:])
                else:
                    group["momentum"] = mom
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """As torch: the built-in scale function is not saved (``mode`` rebuilds it); a custom
        ``scale_fn`` is saved as its ``__dict__`` if it is a callable object, else as None."""
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = (None if fn is None or isinstance(fn, types.FunctionType)
                                     else fn.__dict__.copy())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore through :meth:`LRScheduler.load_state_dict`, then the scale function."""
        state = dict(state_dict)
        fn = state.pop("_scale_fn_custom", None)
        super().load_state_dict(state)
        if fn is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(fn)
        self._init_scale_fn()


# --------------------------------------------------------------------------------------------
# one-cycle

class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin): warm up to ``max_lr``, then anneal far below the start.

    Stepped once per **batch**. Phases (two, or three with ``three_phase=True``), each annealed
    from its start to its end value by ``anneal_strategy`` ("cos" or "linear"):

    * up:   ``initial_lr = max_lr / div_factor`` → ``max_lr`` over ``pct_start · total_steps``
    * (three_phase: back down to ``initial_lr`` over the same number of steps)
    * down: → ``min_lr = initial_lr / final_div_factor`` at step ``total_steps - 1``

    With ``cycle_momentum`` the momentum (``group["momentum"]``, or ``group["betas"][0]`` for
    Adam-like optimizers) moves inversely, between ``max_momentum`` and ``base_momentum``.
    ``cos`` annealing: :math:`f(a, b, p) = b + \tfrac{a - b}{2}(1 + \cos \pi p)`.
    """

    def __init__(self, optimizer, max_lr: float | list[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.85,
                 max_momentum: float | list[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            self.total_steps = _check_int("total_steps", total_steps, low=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_check_int("epochs", epochs, low=1)
                                * _check_int("steps_per_epoch", steps_per_epoch, low=1))
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        _check_real("pct_start", pct_start, low=0.0, high=1.0)
        pct_start = float(pct_start)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy
        _check_real("div_factor", div_factor, low=0.0, low_open=True)
        _check_real("final_div_factor", final_div_factor, low=0.0, low_open=True)
        T = self.total_steps
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * T) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum",
                 "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * T) - 2, "start_lr": "max_lr",
                 "end_lr": "initial_lr", "start_momentum": "base_momentum",
                 "end_momentum": "max_momentum"},
                {"end_step": T - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * T) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum",
                 "end_momentum": "base_momentum"},
                {"end_step": T - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]

        max_lrs = _format_param("max_lr", optimizer, max_lr)
        for v in max_lrs:
            _check_real("max_lr", v, low=0.0)
        if last_epoch == -1:
            for group, m in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            # torch looks at optimizer.defaults; a stand-in may only have param_groups.
            keys = getattr(optimizer, "defaults", None) or optimizer.param_groups[0]
            if "momentum" not in keys and "betas" not in keys:
                raise ValueError("optimizer must support momentum or beta1 (a 'momentum' or "
                                 "'betas' param-group key) with `cycle_momentum` enabled")
            self.use_beta1 = "betas" in keys
            max_ms = _format_param("max_momentum", optimizer, max_momentum)
            base_ms = _format_param("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for m_mom, b_mom, group in zip(max_ms, base_ms, optimizer.param_groups):
                    if self.use_beta1:
                        group["betas"] = (m_mom, *group["betas"][1:])
                    else:
                        group["momentum"] = m_mom
                    group["max_momentum"] = m_mom
                    group["base_momentum"] = b_mom
        super().__init__(optimizer, last_epoch)

    def _anneal_func(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(f"Tried to step {step_num} times. The specified number of total "
                             f"steps is {self.total_steps}")
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == last:
                    pct = (step_num - start_step) / (end_step - start_step)
                    lr = self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        mom = self._anneal_func(group[phase["start_momentum"]],
                                                group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (mom, *group["betas"][1:])
                else:
                    group["momentum"] = mom
        return lrs


# --------------------------------------------------------------------------------------------
# metric-driven

class ReduceLROnPlateau(LRScheduler):
    r"""Reduce the lr by ``factor`` when a metric has stopped improving for ``patience`` epochs.

    ``step(metric)`` after each validation. The metric improves when, for ``mode="min"``,

    * ``threshold_mode="rel"``: :math:`m < \text{best}\,(1 - \text{threshold})`
    * ``threshold_mode="abs"``: :math:`m < \text{best} - \text{threshold}`

    (mirrored for ``"max"``). After more than ``patience`` bad epochs each group's lr becomes
    :math:`\max(\eta \cdot \text{factor}, \text{min\_lr})` (skipped when the change is below
    ``eps``) and ``cooldown`` epochs follow in which bad epochs are not counted.
    """

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | list[float] = 0, eps: float = 1e-8) -> None:
        _check_optimizer(optimizer)
        _check_real("factor", factor, low=0.0, high=1.0, high_open=True)
        self.factor = factor
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"min_lr must have one value per param group ({n}), "
                                 f"got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * n
        for v in self.min_lrs:
            _check_real("min_lr", v, low=0.0)
        self.patience = _check_int("patience", patience, low=0)
        self.cooldown = _check_int("cooldown", cooldown, low=0)
        self.eps = _check_real("eps", eps, low=0.0)
        self.last_epoch = 0
        self._last_lr = _group_values(optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record the monitored value of this epoch and reduce the lr if it has plateaued."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a real number, got {metrics!r}") from None
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(_EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _group_values(self.optimizer, "lr")

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"the optimizer has {len(groups)} param groups but "
                                   f"ReduceLROnPlateau was given {len(self.min_lrs)} min_lr "
                                   "values; update `min_lrs` to match")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        _check_real("threshold", threshold, low=0.0)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not all(isinstance(k, str)
                                                          for k in state_dict):
            raise TypeError(f"state_dict must be a mapping of attribute names, got "
                            f"{type(state_dict).__name__}")
        if "optimizer" in state_dict:
            raise ValueError("state_dict must not hold 'optimizer'")
        merged = {**self.__dict__, **state_dict}
        saved = {k: self.__dict__[k] for k in ("mode", "threshold", "threshold_mode",
                                                 "mode_worse") if k in self.__dict__}
        try:        # the comparison settings are checked before anything is replaced
            self._init_is_better(mode=merged.get("mode"), threshold=merged.get("threshold"),
                                 threshold_mode=merged.get("threshold_mode"))
        finally:
            self.__dict__.update(saved)
        self.__dict__.update(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold,
                             threshold_mode=self.threshold_mode)


# --------------------------------------------------------------------------------------------
# composition

def _check_schedulers(kind: str, schedulers, optimizer) -> list:
    if isinstance(schedulers, LRScheduler) or not isinstance(schedulers, Iterable):
        raise TypeError(f"{kind} expects a sequence of schedulers, got "
                        f"{type(schedulers).__name__}")
    schedulers = list(schedulers)
    if len(schedulers) < 1:
        raise ValueError(f"{kind} expects at least one scheduler, but got no scheduler.")
    optimizer = schedulers[0].optimizer if optimizer is None and hasattr(
        schedulers[0], "optimizer") else optimizer
    for i, sched in enumerate(schedulers):
        if not hasattr(sched, "optimizer"):
            raise TypeError(f"{kind}: the scheduler at index {i} should have `optimizer` as its "
                            f"attribute, got {type(sched).__name__}")
        if isinstance(sched, ReduceLROnPlateau):
            raise ValueError(f"{kind} does not support `ReduceLROnPlateau` scheduler as it "  # noqa: TRY004 (torch)
                             "requires additional kwargs to be specified when calling `step`, "
                             f"but got one at index {i} in the given schedulers sequence.")
        if sched.optimizer is not optimizer:
            raise ValueError(f"{kind} expects all schedulers to belong to the same optimizer, "
                             f"but the scheduler {type(sched).__name__} at index {i} has "
                             "another one")
    return schedulers


class _Composite(LRScheduler):
    """state_dict / load_state_dict of a scheduler made of ``_schedulers`` (as torch)."""

    _schedulers: list

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer; the children as their own ``state_dict()``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore through :meth:`LRScheduler.load_state_dict`, then each child's state."""
        state = dict(state_dict)
        children = state.pop("_schedulers")
        if len(children) != len(self._schedulers):
            raise ValueError(f"the state holds {len(children)} schedulers, this "
                             f"{type(self).__name__} has {len(self._schedulers)}")
        super().load_state_dict(state)
        for sched, child in zip(self._schedulers, children):
            sched.load_state_dict(child)


class SequentialLR(_Composite):
    r"""Run ``schedulers[i]`` from epoch ``milestones[i-1]`` up to ``milestones[i]``.

    At a milestone the next scheduler starts from its epoch 0 (its closed form at 0, e.g.
    ``base_lr`` for an ExponentialLR), e.g. a warm-up then a decay::

        warm = LinearLR(opt, start_factor=0.1, total_iters=5)
        decay = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, [warm, decay], milestones=[5])

    Construction resets every group's lr to ``initial_lr``, undoes the construction step of
    every child and takes the epoch-0 step of the one active at epoch 0 (torch's order).
    """

    def __init__(self, optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        schedulers = _check_schedulers("SequentialLR", schedulers, optimizer)
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("Sequential Schedulers expects number of schedulers provided to be "
                             "one more than the number of milestone points, but got number of "
                             f"schedulers {len(schedulers)} and the number of milestones to be "
                             f"equal to {len(milestones)}")
        for m in milestones:
            _check_int("milestones entry", m, low=0)
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be in increasing order, got {milestones}")
        for i, sched in enumerate(schedulers[1:], 1):
            if isinstance(sched, _Composite):
                # it would be restarted with _update_lr(0), which a composite cannot do
                # (torch 2.13 raises NotImplementedError there, at the milestone)
                raise TypeError(f"SequentialLR cannot start the {type(sched).__name__} at "
                                 f"index {i} at its milestone; only the first scheduler may "
                                 "be a SequentialLR or ChainedScheduler")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        self._schedulers = schedulers
        self._milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}]; "
                               "build the schedulers on this optimizer first")
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Undo the construction step of every (nested) child: ``last_epoch -= 1``."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """Advance one epoch: step the active child, or start the next one at a milestone."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_Composite):
    r"""Step several chainable schedulers together: each ``step()`` calls every child's
    ``step()`` in order, so their factors multiply (e.g. ``ConstantLR`` warm-up times
    ``ExponentialLR`` decay).

    Parameters
    ----------
    schedulers : sequence of LRScheduler
        Built on the same optimizer (not ``ReduceLROnPlateau``).
    optimizer : optional
        Defaults to the first scheduler's.
    """

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer=None) -> None:
        schedulers = _check_schedulers("ChainedScheduler", schedulers, optimizer)
        self._schedulers = schedulers
        self.optimizer = schedulers[0].optimizer if optimizer is None else optimizer
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")

    def step(self) -> None:  # type: ignore[override]
        """Step every child once, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")
