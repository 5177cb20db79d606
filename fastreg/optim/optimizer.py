"""Optimizer base class: param groups, flat buffers, state_dict in torch's layout, penalties.

Layout: for every param group the optimizer owns three kinds of flat, contiguous buffers of the
group's dtype, each of length n = total size of the group's parameters (frozen ones included):

    data   the parameter values; every ``p.data`` is re-pointed at its view (reshaped)
    grad   the gradients; every ``p.grad`` is re-pointed at its view (modules accumulate into it)
    state  one buffer per state name (``exp_avg``, ``momentum_buffer``, ...), created on first use

plus one step count per parameter (torch keeps one per parameter too). A step updates the
parameters that require a gradient *at that step*, as runs of consecutive such parameters with
equal step counts: one fused kernel call per run (fastreg/_kernels/optim/__init__.py), i.e. one
per group in the usual case where nothing was frozen or unfrozen. A parameter frozen
(``requires_grad=False``) when the optimizer is built keeps its place in the buffers, so once
unfrozen it is stepped from a fresh state (step 1, zero moments), as torch does.
``state_dict()`` slices the flat state back into per-parameter arrays keyed by parameter index
with torch's state names (parameters never stepped have no entry, as in torch), so a torch
optimizer's state_dict (tensors converted with ``.numpy()``) loads, and ours loads into torch
after ``torch.as_tensor``.

On the GPU: when the parameters are CUDA device arrays (``model.to("cuda")``) the flat buffers are
device arrays and the step is one CUDA kernel per run. A model moved after the optimizer was
built is followed: the next step (or ``zero_grad``) moves the group's buffers and state across.
"""
from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .._checks import check_scalar
from .._kernels import placement
from .._kernels.placement import HOST
from ..nn.parameter import Parameter


def _alloc(n: int, dtype, place, fill: float | None = None):
    """A flat buffer of n elements where ``place`` says, optionally filled."""
    buf = place.empty(n, dtype)
    if fill is not None:
        place.fill(buf, fill)
    return buf


class _Required:
    """Marker for a hyper-parameter without default (torch's ``required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


_REQUIRES_GRAD = operator.attrgetter("requires_grad")


class _FlatGroup:
    """The flat buffers of one param group, the views its parameters point at, and one step
    count per parameter.

    It is also the :class:`_Run` of the whole group (same attributes: ``data``, ``grad``,
    ``buffer``, ``has_buffer``, ``place``, ``step``, ``first``), which is what a step hands the
    kernel in the steady state (``uniform``: every parameter has the same step count)."""

    __slots__ = (
        "data",
        "data_views",
        "dtype",
        "first",
        "fresh",
        "grad",
        "grad_views",
        "params",
        "place",
        "slices",
        "state",
        "steps",
        "uniform",
    )

    def __init__(self, params: list[Parameter]):
        # Frozen parameters (requires_grad False) get their place too: they are skipped while
        # frozen and stepped once unfrozen (torch steps whatever has a gradient).
        self.params = list(params)
        dtypes = {p.data.dtype for p in self.params}
        if len(dtypes) > 1:
            raise TypeError("all parameters of a param group must have one dtype (the group is "
                            f"one flat buffer), got {sorted(str(d) for d in dtypes)}; put each "
                            "dtype in its own param group")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"parameters must have dtype float32 or float64, got {self.dtype}")
        self.place = self._placement()
        self.slices, n = [], 0
        for p in self.params:
            self.slices.append((n, n + p.data.size))
            n += p.data.size
        self.state: dict[str, np.ndarray] = {}
        self.steps = [0] * len(self.params)
        # True until a parameter's first step: torch creates its state (e.g. SGD's momentum
        # buffer as a copy of the gradient) then.
        self.fresh = [True] * len(self.params)
        self.uniform, self.first = True, True
        self._build(n, None)

    @property
    def step(self) -> int:
        """The largest per-parameter step count (all equal unless parameters were frozen)."""
        steps = self.steps
        return steps[0] if self.uniform and steps else max(steps, default=0)

    @step.setter
    def step(self, value: int) -> None:
        """Give every parameter the same step count, as a loaded state_dict does; the loaded
        state buffers then count as created (nothing is fresh)."""
        self.steps = [int(value)] * len(self.params)
        self.fresh = [False] * len(self.params)
        self.uniform = True

    def all_active(self) -> bool:
        """Whether every parameter requires a gradient now (the steady state)."""
        return all(map(_REQUIRES_GRAD, self.params))

    def advance(self) -> None:
        """Count one step of every parameter (uniform groups: the whole group is one run)."""
        n = len(self.steps)
        self.first = self.fresh[0]
        self.steps = [self.steps[0] + 1] * n
        self.fresh = [False] * n

    def runs(self) -> list[tuple[int, int]]:
        """Index ranges ``[i, j)`` of the parameters a step updates now: consecutive parameters
        with ``requires_grad`` True and equal step counts (one range in the usual case)."""
        steps = self.steps
        flags = [p.requires_grad for p in self.params]
        if all(flags) and (not steps or steps.count(steps[0]) == len(steps)):
            return [(0, len(steps))]            # the steady state: one kernel call
        out, start = [], -1
        for i, active in enumerate(flags):
            if not active:
                if start >= 0:
                    out.append((start, i))
                    start = -1
            elif start < 0:
                start = i
            elif steps[i] != steps[start]:
                out.append((start, i))
                start = i
        if start >= 0:
            out.append((start, len(flags)))
        return out

    def _placement(self):
        """Where the group's parameters live (all of them must agree)."""
        places = {placement.of(p.data) for p in self.params}
        if len(places) > 1:
            raise ValueError("the parameters of one param group are partly on the GPU and partly "
                             "on the CPU; move the whole model with model.to(...)")
        return places.pop() if places else HOST

    def _build(self, n: int, old_grad) -> None:
        """(Re)create the flat data/grad buffers where ``self.place`` says, copy every
        parameter's current values in, and point the parameters at views of them.

        ``old_grad``: the previous flat gradient (another place) for parameters whose ``grad``
        is still a view of it."""
        place = self.place
        self.data = _alloc(n, self.dtype, place)
        self.grad = _alloc(n, self.dtype, place, fill=0.0)
        old_views = getattr(self, "grad_views", None) if old_grad is not None else None
        self.data_views, self.grad_views = [], []
        for i, (p, (lo, hi)) in enumerate(zip(self.params, self.slices)):
            dv = self.data[lo:hi].reshape(p.data.shape)
            gv = self.grad[lo:hi].reshape(p.data.shape)
            self._copy_in(dv, p, p.data, "data")
            if old_views is not None and p.grad is old_views[i]:
                place.copy_into(gv, old_grad[lo:hi].reshape(p.data.shape))
            elif p.grad is not None:
                self._copy_in(gv, p, p.grad, "grad")
            p.data, p.grad = dv, gv
            self.data_views.append(dv)
            self.grad_views.append(gv)

    def _migrate(self) -> None:
        """Follow parameters moved by ``Module.to``: rebuild the buffers on their side and move
        the optimizer state along."""
        self.place = self._placement()
        self._build(self.data.shape[0], self.grad)
        self.state = {k: self.place.put(v) for k, v in self.state.items()}

    @property
    def n(self) -> int:
        return self.data.shape[0]

    def _copy_in(self, view, p, arr, what):
        """Copy ``arr`` (host or device, the parameter's size) into the flat-buffer view."""
        if placement.of(arr) is None:
            arr = np.asarray(arr)
        if arr.size != view.size:
            raise ValueError(f"{what} of {p!r} has shape {arr.shape}, expected the parameter's "
                             f"shape {view.shape}")
        self.place.copy_into(view, arr.reshape(view.shape))

    def adopt(self, zero_grad: bool = False) -> None:
        """Take back arrays that user code re-bound (``p.data = ...``, ``p.grad = None``).

        The contract (fastreg/nn/parameter.py) is to write in place, so this is normally a
        cheap identity check per parameter; a re-bound array is copied into the flat buffer and
        the parameter re-pointed at its view.
        """
        dvs, gvs = self.data_views, self.grad_views
        if not zero_grad:               # the flat gradient is read next: no stale views in it
            for p in self.params:
                if p._stale:
                    p._write_zeros()
        if all(p._data is dvs[i] and p._grad is gvs[i] for i, p in enumerate(self.params)):
            return                              # the steady state: nothing was re-bound
        if any(placement.of(p.data) is not self.place for p in self.params):
            self._migrate()                     # the model was moved to / from the GPU
            dvs, gvs = self.data_views, self.grad_views
        for i, p in enumerate(self.params):
            dv, gv = dvs[i], gvs[i]
            if p.data is not dv:
                self._copy_in(dv, p, p.data, "data")
                p.data = dv
            if p.grad is not gv:
                if p.grad is None or zero_grad:
                    self.place.fill(gv, 0.0)
                else:
                    self._copy_in(gv, p, p.grad, "grad")
                p.grad = gv

    def buffer(self, name: str, fill: float = 0.0) -> np.ndarray:
        """State buffer ``name``, created filled with ``fill`` the first time it is asked for."""
        buf = self.state.get(name)
        if buf is None:
            buf = _alloc(self.n, self.dtype, self.place, fill=fill)
            self.state[name] = buf
        return buf

    def has_buffer(self, name: str) -> bool:
        return name in self.state


class _Run:
    """Parameters ``[i, j)`` of a flat group that take one step together (one kernel call):
    contiguous views of the data, grad and state buffers, and their common step count."""

    __slots__ = ("data", "first", "flat", "grad", "hi", "lo", "place", "step", "whole")

    def __init__(self, flat: _FlatGroup, i: int, j: int):
        self.flat, self.place = flat, flat.place
        steps = flat.steps
        self.whole = i == 0 and j == len(steps)
        if self.whole:
            self.lo, self.hi = 0, flat.data.shape[0]
            self.data, self.grad = flat.data, flat.grad
        else:
            self.lo, self.hi = lo, hi = flat.slices[i][0], flat.slices[j - 1][1]
            self.data, self.grad = flat.data[lo:hi], flat.grad[lo:hi]
        self.first = flat.fresh[i]          # no state yet: torch creates it on this step
        self.step = steps[i] + 1
        steps[i:j] = [self.step] * (j - i)
        flat.fresh[i:j] = [False] * (j - i)

    def buffer(self, name: str, fill: float = 0.0) -> np.ndarray:
        """The run's view of state buffer ``name`` (see :meth:`_FlatGroup.buffer`)."""
        buf = self.flat.buffer(name, fill)
        return buf if self.whole else buf[self.lo:self.hi]

    def has_buffer(self, name: str) -> bool:
        return name in self.flat.state


def _as_param_list(params, what: str) -> list[Parameter]:
    if isinstance(params, Parameter):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(f"{what} need to be organized in ordered collections, but the ordering "
                        "of a set changes between runs; use a list instead")
    if isinstance(params, np.ndarray) or not isinstance(params, Iterable):
        raise TypeError(f"{what} should be an iterable of fastreg.nn.Parameter or dicts, "
                        f"got {type(params).__name__}")
    out = list(params)
    for p in out:
        if not isinstance(p, Parameter):
            raise TypeError("optimizer can only optimize fastreg.nn.Parameter objects, but one "
                            f"of the params is {type(p).__name__}")
    return out


class Optimizer:
    """Base class of fastreg's optimizers, shaped like ``torch.optim.Optimizer``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters to optimize, or param groups: dicts with a ``"params"`` entry and per-group
        hyper-parameters that override ``defaults``.
    defaults : dict
        Default hyper-parameters (torch's keys, plus fastreg's ``l1`` and ``l2`` penalties).

    Notes
    -----
    Each group's parameters are copied into one flat buffer at construction and every
    ``p.data``/``p.grad`` is re-pointed at its view, so ``step()`` is one kernel call per group
    (per run of parameters with equal step counts once some were frozen or unfrozen). A group
    therefore has one dtype and a parameter belongs to one group (duplicates within a group are
    dropped with torch's warning; across groups they raise, as in torch).

    Which parameters a step updates: those with ``requires_grad`` True at that step. torch
    updates those whose ``grad`` is not None, which is the same set in a loop that calls
    ``zero_grad()`` (set_to_none) and ``backward()``: a parameter frozen when the optimizer was
    built and unfrozen later is stepped from then on, from a fresh state, and one frozen later
    is skipped (its state kept). What remains different: a parameter that requires a gradient
    but received none still steps with a zero gradient (weight decay and momentum act on it;
    torch skips it unless ``zero_grad(set_to_none=False)``), a frozen parameter that still holds
    an old gradient is not stepped (torch would step it), and a frozen parameter's ``grad`` is a
    zero view rather than None. LR schedulers read and write ``group["lr"]``,
    ``group["momentum"]``, ``group["betas"]`` and ``group["initial_lr"]``; every step reads the
    current values.

    Subclasses implement ``_check_group`` and ``_update(group, run)`` (one fused kernel call
    over a :class:`_Run`: its ``data``, ``grad``, ``buffer(name)`` views and ``step``).
    """

    #: Whether the per-parameter state holds a "step" entry (torch: all but SGD).
    _has_step = True
    #: Whether torch creates the state of every parameter when its group is added (Adagrad)
    #: rather than at the parameter's first step.
    _eager_state = False

    def __init__(self, params, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.defaults.setdefault("l1", 0.0)
        self.defaults.setdefault("l2", 0.0)
        self.param_groups: list[dict[str, Any]] = []
        self._flat: list[_FlatGroup] = []
        if isinstance(params, dict):
            params = [params]
        if isinstance(params, Parameter):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Parameters or dicts, but got Parameter")
        if isinstance(params, np.ndarray) or not isinstance(params, Iterable):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Parameters or dicts, but got {type(params).__name__}")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ----------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (a dict with ``"params"`` and optional hyper-parameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        group = dict(param_group)
        params = _as_param_list(group["params"], "optimizer parameters")
        unique = list({id(p): p for p in params}.values())
        if len(unique) != len(params):
            # torch's warning; torch then updates such a parameter once per occurrence, fastreg
            # (one place per parameter in the flat buffer) once per step.
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error; "
                          "see github.com/pytorch/pytorch/issues/40967 for more information",
                          stacklevel=3)
        group["params"] = unique
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        self._check_group(group)
        for key in ("l1", "l2"):
            if check_scalar(key, group[key]) < 0:          # a finite real, then torch's message
                raise ValueError(f"Invalid {key} value: {group[key]}")
        ids = {id(p) for p in group["params"]}
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if seen & ids:
            raise ValueError("some parameters appear in more than one parameter group")
        flat = _FlatGroup(group["params"])
        self.param_groups.append(group)
        self._flat.append(flat)

    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - overridden
        pass

    # ----------------------------------------------------------------- steps
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient (lazily: no memory is written here).

        ``set_to_none`` is accepted for torch compatibility but the gradient buffers are kept
        (zeroed): the flat layout is what makes the step one kernel call, and modules accumulate
        into ``p.grad`` in place. Each gradient is marked stale (``Parameter``): it reads as
        zeros, the first backward that writes a whole gradient (Linear's weight GEMM) overwrites
        it instead of adding to zeros, and whatever was not written is zeroed when ``step``
        (or any reader) gets to it -- the same numbers as zeroing here, without the pass over
        the flat buffer.
        """
        for flat in self._flat:
            flat.adopt(zero_grad=True)
            for p in flat.params:
                p._stale = True

    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step (one fused kernel call per param group).

        closure : callable, optional
            Re-evaluates the model and returns the loss (which ``step`` returns).
        """
        self._opt_called = True     # read by the lr schedulers' step-order warning
        loss = closure() if closure is not None else None
        for group, flat in zip(self.param_groups, self._flat):
            if flat.n == 0:
                continue
            flat.adopt()
            if flat.uniform and flat.all_active():
                flat.advance()
                self._update(group, flat)       # one kernel call over the whole group
                continue
            for i, j in flat.runs():            # some frozen, or step counts differ
                self._update(group, _Run(flat, i, j))
            steps = flat.steps
            flat.uniform = steps.count(steps[0]) == len(steps)
        return loss

    def _update(self, group: dict[str, Any], run: _Run | _FlatGroup) -> None:  # pragma: no cover
        """One fused kernel call over ``run`` (its data, grad, state views and step count)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- penalties
    def penalty(self) -> float:
        """Σ over groups of l1·Σ|w| + l2·Σw², the regularization term to add to a reported loss
        (over the parameters that require a gradient: frozen ones are not stepped).

        The matching gradient is added inside the fused update, so a training loop never
        differentiates this term itself.
        """
        total = 0.0
        for group, flat in zip(self.param_groups, self._flat):
            l1, l2 = float(group["l1"]), float(group["l2"])
            if flat.n == 0 or (l1 == 0 and l2 == 0):
                continue
            flat.adopt()
            for i, j in flat.runs():         # the parameters the step would update
                lo, hi = flat.slices[i][0], flat.slices[j - 1][1]
                w = flat.data if (lo, hi) == (0, flat.n) else flat.data[lo:hi]
                if l1:
                    total += l1 * flat.place.sum_abs(w)
                if l2:
                    total += l2 * flat.place.sum_squares(w)
        return total

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> dict[Parameter, dict[str, Any]]:
        """Per-parameter state as live views of the flat buffers (``"step"`` as a float)."""
        out: dict[Parameter, dict[str, Any]] = {}
        for flat in self._flat:
            if not flat.state and not self._has_step:
                continue
            eager = self._eager_state and bool(flat.state)
            for p, (lo, hi), step, fresh in zip(flat.params, flat.slices, flat.steps,
                                                flat.fresh):
                if not eager and (fresh or (step == 0 and not flat.state)):
                    continue                # never stepped: torch has no state for it yet
                st: dict[str, Any] = {"step": float(step)} if self._has_step else {}
                for name, buf in flat.state.items():
                    st[name] = buf[lo:hi].reshape(p.data.shape)
                out[p] = st
        return out

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state in torch's layout (arrays are host copies, also on the GPU).

        ``{"state": {index: {"step": float, <torch state names>: ndarray}}, "param_groups":
        [{<hyper-parameters>, "params": [indices]}]}``, indices numbering the parameters of all
        groups in order.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for p, st in self.state.items():
            state[index[id(p)]] = {k: (v if placement.of(v) is None else HOST.copy(v))
                                   for k, v in st.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state produced by :meth:`state_dict` or by a torch optimizer of the same kind.

        Tensors must be convertible with ``numpy.asarray`` (CPU tensors are). Each parameter
        keeps its saved ``step``; parameters without saved state (torch skips parameters that
        never had a gradient) start from the initial state, fresh.
        """
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping) \
                or not isinstance(state_dict.get("param_groups"), (list, tuple)) or not all(
                    isinstance(g, Mapping) and isinstance(g.get("params"), (list, tuple))
                    for g in state_dict["param_groups"]):
            raise TypeError("state_dict must be {'state': {index: {name: value}}, "
                            "'param_groups': [{..., 'params': [indices]}]}, got "
                            f"{str(state_dict)[:80]}")
        # Nothing below touches the optimizer until every group's new state is built.
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, sg in zip(self.param_groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        saved_state = state_dict["state"]
        new_groups = []
        for g, sg in zip(self.param_groups, saved_groups):
            ng = dict(g)
            ng.update({k: copy.deepcopy(v) for k, v in sg.items()
                       if k not in ("params", "param_names")})
            self._check_group(ng)
            new_groups.append(ng)
        # Build every group's new state before touching the optimizer (all or nothing).
        loaded = []
        for gi, (g, sg, flat) in enumerate(zip(self.param_groups, saved_groups, self._flat)):
            ids = dict(zip((id(p) for p in g["params"]), sg["params"]))
            steps, bufs = [0] * len(flat.params), {}
            fresh = [True] * len(flat.params)
            for i, (p, (lo, hi)) in enumerate(zip(flat.params, flat.slices)):
                try:
                    st = saved_state.get(ids[id(p)])
                except TypeError:       # an unhashable index
                    raise ValueError(f"param group {gi}: bad parameter index "
                                     f"{str(ids[id(p)])[:80]}") from None
                if not st:
                    continue
                if not isinstance(st, Mapping):
                    raise TypeError(f"state of parameter {ids[id(p)]} must be a dict, got "
                                    f"{type(st).__name__}")
                fresh[i] = False
                for name, value in st.items():
                    if value is None:
                        continue
                    if name == "step":
                        v = float(np.asarray(value))
                        if not (math.isfinite(v) and v >= 0 and v == int(v)):
                            raise ValueError(f"state 'step' of parameter {ids[id(p)]} must be a "
                                             f"non-negative integer, got {value!r}")
                        steps[i] = int(v)
                        continue
                    arr = np.asarray(HOST.to_host(value))
                    if arr.size != hi - lo:
                        raise ValueError(f"state {name!r} of parameter {ids[id(p)]} has shape "
                                         f"{arr.shape}, expected {p.data.shape}")
                    if name not in bufs:
                        bufs[name] = self._initial_buffer(new_groups[gi], flat, name)
                    bufs[name][lo:hi] = arr.ravel()
            loaded.append((steps, fresh, bufs))
        for gi, (flat, (steps, fresh, bufs)) in enumerate(zip(self._flat, loaded)):
            flat.adopt()
            flat.state = {k: flat.place.put(v) for k, v in bufs.items()}
            # per-parameter step counts (a parameter unfrozen mid-run has fewer steps); one
            # without saved state starts fresh, as torch's
            flat.steps, flat.fresh = list(steps), list(fresh)
            flat.uniform = len(set(steps)) <= 1
            new_groups[gi]["params"] = self.param_groups[gi]["params"]
        self.param_groups[:] = new_groups

    def _initial_buffer(self, group: dict[str, Any], flat: _FlatGroup, name: str) -> np.ndarray:
        """A fresh state buffer as the algorithm would create it (zeros unless overridden)."""
        return np.zeros(flat.n, dtype=flat.dtype)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def param_groups(params_or_model, weight_decay: float = 0.0, l1: float = 0.0,
                 l2: float = 0.0) -> list[dict[str, Any]]:
    """Split parameters into a regularized group and an unregularized one.

    Parameters with ``p.regularize`` True (Linear weights) get ``weight_decay``, ``l1`` and
    ``l2``; the others (biases, normalization parameters) get 0 for all three, the usual practice
    of not decaying biases and norm scales.

    Parameters
    ----------
    params_or_model : Module or iterable of Parameter
        Anything with a ``parameters()`` method, or the parameters themselves.
    weight_decay, l1, l2 : float
        Coefficients for the regularized group (≥ 0).

    Returns
    -------
    list of dict
        ``[{"params": weights, "weight_decay": ..., "l1": ..., "l2": ...},
        {"params": others, "weight_decay": 0.0, "l1": 0.0, "l2": 0.0}]``, ready to pass to any
        optimizer (either list may be empty).

    Examples
    --------
    >>> opt = fr.optim.SGD(fr.optim.param_groups(model, l2=1e-4), lr=0.1)  # doctest: +SKIP
    """
    for name, v in (("weight_decay", weight_decay), ("l1", l1), ("l2", l2)):
        check_scalar(name, v, low=0.0)
    src = params_or_model
    if not isinstance(src, Parameter) and callable(getattr(src, "parameters", None)):
        src = src.parameters()
    params = _as_param_list(src, "params_or_model")
    reg = [p for p in params if p.regularize]
    other = [p for p in params if not p.regularize]
    return [{"params": reg, "weight_decay": float(weight_decay), "l1": float(l1),
             "l2": float(l2)},
            {"params": other, "weight_decay": 0.0, "l1": 0.0, "l2": 0.0}]
