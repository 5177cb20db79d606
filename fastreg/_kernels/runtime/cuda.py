"""The CUDA backend's runtime: device discovery, device arrays, launch geometry.

The CUDA kernels (``fastreg/_kernels/<op>/cuda.py``) are written with ``numba.cuda``. The
package that provides it is optional (``pip install "fastreg[cuda]"`` installs NVIDIA's
``numba-cuda``, which replaces the deprecated target built into numba under the same import
name). Nothing here imports numba until a CUDA function is called, so ``import fastreg`` and
every CPU path stay free of it.

Without a GPU the kernels still run in numba's CUDA simulator: export ``NUMBA_ENABLE_CUDASIM=1``
before Python starts (the test-suite does; it is slow, for correctness checks on small sizes).

Device arrays are numba's (``numba.cuda.cudadrv.devicearray.DeviceNDArray``, or the simulator's
``FakeCUDAArray``): ``fastreg.cuda.to_device`` makes one, ``.copy_to_host()`` or
``numpy.asarray`` brings one back.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

NO_DEVICE_MESSAGE = (
    "no CUDA device was found{why}. fastreg's CUDA backend needs an NVIDIA GPU with its driver "
    "and the numba CUDA target (pip install \"fastreg[cuda]\"). To run the CUDA kernels without "
    "a GPU (slowly, for testing), start Python with the environment variable "
    "NUMBA_ENABLE_CUDASIM=1 to use numba's CUDA simulator."
)

_state: dict = {}


def simulator() -> bool:
    """True when numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    if "numba" in sys.modules:
        from numba.core import config
        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda():
    """The ``numba.cuda`` module, imported on first use (ImportError explains the extra)."""
    mod = _state.get("cuda")
    if mod is None:
        try:
            from numba import cuda as mod
        except ImportError as exc:  # pragma: no cover - numba is a dependency
            raise ImportError("fastreg's CUDA backend needs numba's CUDA target: "
                              "pip install \"fastreg[cuda]\"") from exc
        _state["cuda"] = mod
    return mod


def available() -> bool:
    """True if CUDA kernels can run here: a working GPU, or the simulator."""
    ok = _state.get("available")
    if ok is None:
        try:
            ok = bool(cuda().is_available())
        except Exception:  # noqa: BLE001 - any driver failure means "no device"
            ok = False
        _state["available"] = ok
    return ok


def require() -> None:
    """Raise a RuntimeError that says no CUDA device was found (and how to simulate one)."""
    if available():
        return
    why = ""
    try:
        mod = cuda()
        if not simulator():
            try:
                len(mod.gpus)  # touches the driver; its error says why
            except Exception as exc:  # noqa: BLE001
                detail = " ".join(str(exc).split())
                detail = detail if len(detail) <= 160 else detail[:157] + "..."
                why = f" ({type(exc).__name__}: {detail})"
    except ImportError as exc:
        why = f" ({exc})"
    raise RuntimeError(NO_DEVICE_MESSAGE.format(why=why))


def is_device_array(a) -> bool:
    """Is ``a`` a numba CUDA device array (real or simulated)? Never imports numba."""
    if a is None or isinstance(a, np.ndarray):
        return False
    mod = type(a).__module__
    return ("cuda" in mod) and hasattr(a, "copy_to_host")


def device_pointer_range(a) -> tuple[int, int]:
    """[start, end) of the device memory ``a`` spans (its host buffer in the simulator)."""
    if simulator():
        host = a._ary  # the simulator wraps a numpy array
        start = host.__array_interface__["data"][0]
    else:
        start = a.__cuda_array_interface__["data"][0]
    return start, start + a.nbytes


def may_share_memory(a, b) -> bool:
    """Conservative overlap test for two device arrays (by their address ranges)."""
    if a is None or b is None or a.nbytes == 0 or b.nbytes == 0:
        return False
    a0, a1 = device_pointer_range(a)
    b0, b1 = device_pointer_range(b)
    return a0 < b1 and b0 < a1


def max_blocks() -> int:
    """Upper bound on blocks for grid-stride kernels: 32 per SM on a GPU, 2 in the simulator
    (each simulated thread is a Python thread, so fewer blocks is the difference between
    seconds and minutes; grid-stride loops give the same result for any grid)."""
    n = _state.get("max_blocks")
    if n is None:
        if simulator():
            n = 2
        else:
            try:
                n = 32 * int(cuda().get_current_device().MULTIPROCESSOR_COUNT)
            except Exception:  # noqa: BLE001
                n = 1024
        _state["max_blocks"] = n
    return n


def blocks_for(n: int, threads: int) -> int:
    """Blocks for a grid-stride loop over ``n`` items with ``threads`` per block (>= 1)."""
    return max(1, min(math.ceil(n / threads), max_blocks()))


def to_device(a, dtype=None):
    """Copy a host array (or anything numpy.asarray takes) to a new C-contiguous device array."""
    require()
    host = np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype=dtype))
    return cuda().to_device(host)


def to_host(a) -> np.ndarray:
    """A device array copied to a new host ndarray; host arrays are returned unchanged."""
    return a.copy_to_host() if is_device_array(a) else a


def empty(shape, dtype):
    """Uninitialized device array."""
    return cuda().device_array(shape, dtype=np.dtype(dtype))


def synchronize() -> None:
    """Wait for every launched kernel to finish (for timing)."""
    if not simulator():
        cuda().synchronize()


def copy_into(dst, src) -> None:
    """Copy ``src`` into ``dst`` (same shape), wherever each lives: host<->device, device<->device.

    Host sources are cast to ``dst``'s dtype first; device sources must already match it.
    """
    if is_device_array(dst):
        if is_device_array(src):
            if src.dtype != dst.dtype:
                raise TypeError(f"cannot copy a {src.dtype} device array into a {dst.dtype} one")
            dst.copy_to_device(src)
        else:
            dst.copy_to_device(np.ascontiguousarray(np.asarray(src), dtype=dst.dtype))
    elif is_device_array(src):
        if src.dtype == dst.dtype and dst.flags.c_contiguous:
            src.copy_to_host(dst)
        else:
            dst[...] = src.copy_to_host()
    else:
        dst[...] = np.asarray(src).astype(dst.dtype, copy=False)
