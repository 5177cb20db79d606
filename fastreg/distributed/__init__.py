"""Data-parallel training over MPI (Horovod's model), on mpi4py: ``pip install 'fastreg[mpi]'``.

Every rank holds the whole model and trains on its shard of each global batch; before each
optimizer step the gradients are averaged with one ``Allreduce`` per param group. fastreg keeps a
group's gradients in one flat contiguous buffer (fastreg/optim/optimizer.py), so that is one
message per group per step, in place::

    import fastreg as fr
    fr.distributed.init()                         # world of 1 without MPI
    model = ...; opt = fr.optim.SGD(model.parameters(), lr=0.1)
    fr.distributed.broadcast_parameters(model)    # rank 0's initial weights everywhere
    opt = fr.distributed.DistributedOptimizer(opt)
    loader = fr.data.DataLoader(X, y, batch_size=128, seed=0,
                                shard=(fr.distributed.rank(), fr.distributed.world_size()))

or simply ``fr.train.fit(...)``, which does all of this under ``mpiexec -n N python train.py``.

mpi4py is imported by :func:`init` only; ``import fastreg`` stays NumPy-only. Without mpi4py and
outside a launcher every function here acts on a world of one.
"""
from __future__ import annotations

from ._comm import (
    abort,
    barrier,
    init,
    install_abort_hook,
    is_main,
    launched_world_size,
    rank,
    world_size,
)
from ._parallel import (
    DistributedOptimizer,
    allreduce_sum,
    broadcast_optimizer_state,
    broadcast_parameters,
)

__all__ = [
    "DistributedOptimizer",
    "SyncBatchNorm",
    "abort",
    "allreduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "convert_sync_batchnorm",
    "init",
    "install_abort_hook",
    "is_main",
    "launched_world_size",
    "rank",
    "revert_sync_batchnorm",
    "world_size",
]


def broadcast_object(obj, root: int = 0):
    """Rank ``root``'s ``obj`` (any picklable value) on every rank."""
    from . import _comm
    if world_size() == 1:
        return obj
    return _comm.comm().bcast(obj, root=root)


def __getattr__(name):
    # SyncBatchNorm imports fastreg.nn (and so numba-backed layers): on first use only
    if name in ("SyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm"):
        from . import sync_batchnorm
        value = getattr(sync_batchnorm, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastreg.distributed' has no attribute {name!r}")
