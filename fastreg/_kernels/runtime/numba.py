"""Numba runtime glue: imported by the dispatcher the first time a numba kernel is needed."""
import numba


def set_num_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def get_num_threads() -> int:
    return numba.get_num_threads()
