"""Timing helpers shared by the comparison script (not by asv, which times on its own).

fastreg and its peer are timed in the same process, interleaved round by round, so a noisy
neighbour slows both. Each round times a loop long enough to be above timer noise; we report the
best round of each (as timeit advises: on a shared machine, slower rounds measure the neighbours)
and the ratio of the two.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class Case:
    """One comparison: a fastreg callable vs a peer callable doing the same work."""
    group: str                       # op family, e.g. "matmul"
    name: str                        # what is timed, e.g. "linear fwd 256x784x512 f32"
    fastreg: Callable[[], object]
    peer: Callable[[], object] | None
    peer_name: str                   # "numpy/OpenBLAS", "torch", ...
    floor_s: float | None = None     # lower bound from FLOPs/peak or bytes/bandwidth
    floor_what: str = ""             # how the floor was counted
    goal: float | None = None        # goal for peer_time / fastreg_time (speed-up), if any


def _per_call(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call, from a loop long enough to be above timer noise."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n
        n *= 2 if dt < min_time / 4 else 1 + int(min_time / max(dt, 1e-9))


def compare(case: Case, rounds: int = 7, min_time: float = 0.05) -> dict:
    """Time ``case`` interleaved; return best-round times and speed-up (peer / fastreg)."""
    case.fastreg()
    if case.peer is not None:
        case.peer()
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_per_call(case.fastreg, min_time))
        if case.peer is not None:
            theirs.append(_per_call(case.peer, min_time))
    t_ours = min(ours)
    t_peer = min(theirs) if theirs else None
    return {
        "group": case.group, "name": case.name, "peer": case.peer_name,
        "fastreg_s": t_ours, "peer_s": t_peer,
        "speedup": (t_peer / t_ours) if t_peer else None,
        "floor_ratio": (t_ours / case.floor_s) if case.floor_s else None,
        "floor_what": case.floor_what, "goal": case.goal,
    }
