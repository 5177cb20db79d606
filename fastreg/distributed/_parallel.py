"""Data parallelism over the communicator: broadcasts from rank 0 and gradient averaging."""
from __future__ import annotations

import time

import numpy as np

from .._kernels import placement
from . import _comm


def _host_array(what: str, a) -> np.ndarray:
    if placement.of(a).is_device:
        raise TypeError(f"fastreg.distributed: {what} is a GPU array; data-parallel training "
                        "over MPI runs on the CPU (move the model with model.to('cpu'))")
    return a


def _model_items(model) -> list[tuple[str, np.ndarray]]:
    if not callable(getattr(model, "named_parameters", None)):
        raise TypeError(f"model must be a fastreg.nn.Module, got {type(model).__name__}")
    items = [(name, p.data) for name, p in model.named_parameters()]
    items += [(name, b) for name, b in model.named_buffers() if b is not None]
    return items


def _first_difference(mine: list, ref: list) -> str:
    ref_d, mine_d = {n: (s, d) for n, s, d in ref}, {n: (s, d) for n, s, d in mine}
    for name, shape, dtype in ref:
        if name not in mine_d:
            return f"{name!r} (shape {shape}, {dtype}) is missing"
        if mine_d[name] != (shape, dtype):
            s, d = mine_d[name]
            return f"{name!r} has shape {s}, {d} instead of {shape}, {dtype}"
    extra = [n for n in mine_d if n not in ref_d]
    if extra:
        return f"{extra[0]!r} is not in rank 0's model"
    return "the parameters are in a different order"


def broadcast_parameters(model, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers (running statistics) into every rank's model,
    in place (``MPI.Bcast`` per array; the optimizer's flat buffers the parameters view follow).

    Every rank first compares the names, shapes and dtypes of its model with rank ``root``'s
    (one ``allgather`` of the descriptions): any difference raises ValueError on **every** rank,
    naming the first rank and array that differ, instead of a silent mismatch or a hang.
    """
    items = _model_items(model)
    comm = _comm.comm()
    if _comm.world_size() == 1:
        return
    sig = [(name, tuple(int(d) for d in a.shape), str(a.dtype)) for name, a in items]
    sigs = comm.allgather(sig)
    bad = [r for r, s in enumerate(sigs) if s != sigs[root]]
    if bad:
        r = bad[0]
        raise ValueError(f"broadcast_parameters: the model on rank {r} does not match rank "
                         f"{root}'s: {_first_difference(sigs[r], sigs[root])} (ranks that "
                         f"differ: {bad}); every rank must build the same architecture")
    for name, a in items:
        a = _host_array(name, a)
        if not a.flags.c_contiguous:
            raise ValueError(f"broadcast_parameters: {name!r} is not contiguous")
        comm.Bcast(a, root=root)


def broadcast_optimizer_state(optimizer, root: int = 0) -> None:
    """Load rank ``root``'s ``optimizer.state_dict()`` (hyper-parameters, step counts, moment
    buffers) on every other rank. The layouts (groups, parameters per group, sizes) are compared
    first, and a difference raises ValueError on every rank."""
    if not callable(getattr(optimizer, "state_dict", None)) or \
            not hasattr(optimizer, "param_groups"):
        raise TypeError(f"optimizer must be a fastreg.optim optimizer, got "
                        f"{type(optimizer).__name__}")
    comm = _comm.comm()
    if _comm.world_size() == 1:
        return
    sig = [[tuple(p.data.shape) for p in g["params"]] for g in optimizer.param_groups]
    sigs = comm.allgather(sig)
    bad = [r for r, s in enumerate(sigs) if s != sigs[root]]
    if bad:
        raise ValueError(f"broadcast_optimizer_state: the optimizer on rank {bad[0]} has "
                         f"parameter groups of shapes {sigs[bad[0]]}, rank {root} has "
                         f"{sigs[root]}")
    state = comm.bcast(optimizer.state_dict() if _comm.rank() == root else None, root=root)
    if _comm.rank() != root:
        optimizer.load_state_dict(state)


class _DistributedStep:
    """Mixed into the optimizer's class by :func:`DistributedOptimizer`."""

    _fr_distributed = True

    def allreduce_gradients(self) -> None:
        """Average every flat gradient buffer across the ranks, in place: one
        ``Allreduce(IN_PLACE, SUM)`` per param group, then a scale by 1/world."""
        size = _comm.world_size()
        if size == 1:
            return
        comm, MPI = _comm.comm(), _comm.mpi()
        t0 = time.perf_counter()
        inv = 1.0 / size
        for flat in self._flat:
            if flat.n == 0:
                continue
            flat.adopt()
            g = _host_array("the gradient buffer", flat.grad)
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            g *= g.dtype.type(inv)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.allreduce_gradients()
        super().step()
        return loss


_CLASSES: dict[type, type] = {}


def DistributedOptimizer(optimizer):          # named like a class, as Horovod's
    """Make ``optimizer.step()`` average the gradients across the ranks before its update.

    Before the fused per-group update, each param group's flat gradient buffer (the one
    contiguous array every ``p.grad`` views) is summed over the ranks with one
    ``Allreduce(MPI.IN_PLACE, ..., SUM)`` and scaled by 1/world: with equal per-rank batches of
    k samples and a mean loss, that is the gradient of the mean loss over the global batch of
    world·k samples. No per-parameter messages, no copies: MPI works on the buffer in place.

    The optimizer object itself is returned with its class swapped for a subclass of the same
    name (isinstance checks, schedulers, ``state_dict`` and checkpoints are unchanged); calling
    it twice is harmless. ``optimizer.allreduce_seconds`` / ``allreduce_calls`` accumulate the
    time spent in the allreduce. In a world of one the step is the optimizer's own.
    """
    from ..optim.optimizer import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastreg.optim optimizer, got "
                        f"{type(optimizer).__name__}")
    _comm.init()
    cls = type(optimizer)
    if not getattr(cls, "_fr_distributed", False):
        sub = _CLASSES.get(cls)
        if sub is None:
            sub = type(cls.__name__, (_DistributedStep, cls),
                       {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
            _CLASSES[cls] = sub
        optimizer.__class__ = sub
        optimizer.allreduce_seconds = 0.0
        optimizer.allreduce_calls = 0
    return optimizer


def allreduce_sum(values) -> np.ndarray:
    """Sum a float64 vector over the ranks and return the same result on every rank (reduced to
    rank 0, then broadcast, so decisions taken on it agree bit for bit)."""
    buf = np.ascontiguousarray(values, dtype=np.float64)
    if _comm.world_size() == 1:
        return buf.copy()
    comm, MPI = _comm.comm(), _comm.mpi()
    out = np.empty_like(buf)
    comm.Reduce(buf, out, op=MPI.SUM, root=0)
    comm.Bcast(out, root=0)
    return out
