"""The communicator: mpi4py's ``COMM_WORLD`` when MPI is there, a world of one otherwise.

mpi4py is imported lazily (by :func:`init`), so ``import fastreg`` stays NumPy-only.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

from .. import _random

#: Environment variables an MPI launcher sets to the world size (MPICH/Hydra and Slurm's PMI,
#: Open MPI, MVAPICH).
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

_state = {"initialized": False, "comm": None, "MPI": None, "rank": 0, "size": 1,
          "hook": None}


def launched_world_size() -> int:
    """The world size an MPI launcher announced in the environment (1 when none did)."""
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return 1


def init(comm=None, abort_on_error: bool = True) -> int:
    """Join the MPI job (idempotent) and return the world size.

    Without mpi4py and outside a launcher this is a world of size 1 (every collective is a
    no-op). Under ``mpiexec -n N`` (N > 1) without mpi4py it raises ImportError rather than
    letting N processes train N unrelated models.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator (default ``MPI.COMM_WORLD``). Only the first call's is used.
    abort_on_error : bool, default True
        With more than one rank, install a ``sys.excepthook`` that prints the traceback with the
        rank and calls ``comm.Abort(1)``: an uncaught exception on one rank ends the whole job
        instead of leaving the others waiting in a collective forever.

    Side effect: the dropout counter stream is set to the rank (``fastreg._random``), so
    masks differ across ranks and stay reproducible.
    """
    if _state["initialized"]:
        return _state["size"]
    try:
        from mpi4py import MPI
    except ImportError:
        n = launched_world_size()
        if n > 1 or comm is not None:
            raise ImportError(
                f"fastreg.distributed: this process was launched as one of {n} MPI ranks but "
                "mpi4py is not installed; install the extra: pip install 'fastreg[mpi]' "
                "(mpi4py + the mpich wheel)") from None
        MPI = None
    if MPI is not None:
        comm = MPI.COMM_WORLD if comm is None else comm
        rank, size = int(comm.Get_rank()), int(comm.Get_size())
    else:
        comm, rank, size = None, 0, 1
    _state.update(initialized=True, comm=comm, MPI=MPI, rank=rank, size=size)
    _random.set_philox_stream(rank)
    if size > 1 and abort_on_error:
        install_abort_hook()
    return size


def install_abort_hook() -> None:
    """Make an uncaught exception on this rank abort the job (see :func:`init`)."""
    if _state["hook"] is not None:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
        finally:
            abort(f"{exc_type.__name__}: {exc}", print_traceback=False)

    _state["hook"] = previous
    sys.excepthook = hook


def abort(reason: str, code: int = 1, print_traceback: bool = True) -> None:
    """Print ``reason`` naming this rank, then ``comm.Abort(code)``: every rank of the job ends
    (mpiexec exits non-zero). In a world of one, raise SystemExit(code) instead."""
    if print_traceback and sys.exc_info()[0] is not None:
        traceback.print_exc()
    sys.stderr.write(f"fastreg.distributed: rank {_state['rank']} of {_state['size']} failed "
                     f"({reason}); aborting the MPI job\n")
    sys.stderr.flush()
    sys.stdout.flush()
    comm = _state["comm"]
    if comm is not None and _state["size"] > 1:
        # give the launcher time to forward what this rank printed: Abort kills every process
        # of the job at once, and on a loaded machine the message was sometimes lost
        time.sleep(0.5)
        comm.Abort(code)
    raise SystemExit(code)


def comm():
    """The communicator (None in a world of one without MPI); calls :func:`init` first."""
    init()
    return _state["comm"]


def mpi():
    init()
    return _state["MPI"]


def rank() -> int:
    """This process's rank (0 without MPI)."""
    init()
    return _state["rank"]


def world_size() -> int:
    """The number of ranks (1 without MPI)."""
    init()
    return _state["size"]


def is_main() -> bool:
    """True on rank 0, the rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op in a world of one)."""
    if world_size() > 1:
        _state["comm"].Barrier()
