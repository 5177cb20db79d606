"""The CUDA backend's public face: is a GPU usable, and moving arrays to and from it.

fastreg runs a model on an NVIDIA GPU when its parameters live there::

    import fastreg as fr
    model = fr.nn.Sequential(fr.nn.Linear(784, 256), fr.nn.ReLU(), fr.nn.Linear(256, 10))
    model.to("cuda")                    # or fr.set_backend("cuda"): models move on first call
    opt = fr.optim.Adam(model.parameters())   # flat optimizer buffers on the device too
    logits = model(x_batch)             # host batch copied in; logits is a device array
    loss = loss_fn(logits, y_batch)     # a Python float (the one scalar copied out)
    model.backward(loss_fn.backward()); opt.step()
    probs = fr.cuda.to_host(model(x_val))     # predictions out, at your request

Parameters, gradients, optimizer state and every activation stay on the device across layers
and steps; the only copies are the input batch in, the loss scalar out, and what you ask for.
The kernels are numba.cuda kernels (``fastreg/_kernels/<op>/cuda.py``); install the CUDA target
with ``pip install "fastreg[cuda]"``. Without a GPU, export ``NUMBA_ENABLE_CUDASIM=1`` to run
them in numba's simulator (slow; meant for tests).
"""
from __future__ import annotations

import numpy as np

from ._kernels.runtime import cuda as _cuda_runtime

__all__ = ["device_count", "is_available", "is_device_array", "synchronize", "to_device",
           "to_host"]


def is_available() -> bool:
    """True if a CUDA GPU (or numba's CUDA simulator) can run fastreg's CUDA kernels."""
    return _cuda_runtime.available()


def device_count() -> int:
    """Number of visible CUDA devices (0 without a GPU; 1 in the simulator)."""
    if not _cuda_runtime.available():
        return 0
    return len(_cuda_runtime.cuda().gpus)


def is_device_array(a) -> bool:
    """True if ``a`` is a numba CUDA device array."""
    return _cuda_runtime.is_device_array(a)


def to_device(a, dtype=None):
    """Copy ``a`` (array-like) to a new C-contiguous device array; device arrays pass through.

    Raises RuntimeError (no CUDA device found) without a GPU or the simulator.
    """
    if _cuda_runtime.is_device_array(a):
        if dtype is not None and np.dtype(dtype) != a.dtype:
            raise TypeError(f"a is a {a.dtype} device array; cast it on the host "
                            f"(dtype={np.dtype(dtype)} requested)")
        return a
    return _cuda_runtime.to_device(a, dtype=dtype)


def to_host(a) -> np.ndarray:
    """Copy a device array to a new numpy array; numpy arrays are returned unchanged."""
    return _cuda_runtime.to_host(a)


def synchronize() -> None:
    """Block until every queued CUDA kernel has finished (for timing)."""
    _cuda_runtime.require()
    _cuda_runtime.synchronize()
