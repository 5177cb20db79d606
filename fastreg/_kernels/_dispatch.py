"""The one dispatch point between the public kernel functions and their backends.

Each op family is a package ``fastreg/_kernels/<op>/`` whose backends share one signature per
kernel: ``numba.py`` (Numba), ``cy.pyx`` (Cython), ``cuda.py`` (numba.cuda, for device arrays)
and, for matmul only, ``blas.py`` (the BLAS that NumPy ships). Backend modules are imported on
first use, so ``import fastreg`` never imports numba.

Backend calling convention (as it is; the functions of ``<op>/__init__.py`` are the only
callers: the public ones check every argument, trusted entry points rely on a caller that did)
----------------------------------------------------------------------------------------------
* Positional arguments only: the validated arrays first (inputs, then outputs, then scratch),
  then the scalars. A kernel trusts its arguments: shapes, dtypes, contiguity, writeability and
  non-overlap were checked before the call, and the kernel writes its outputs in place.
* Arrays are C-contiguous and of one float dtype per call (integer arrays: dropout's uint8 mask
  and uint32 Philox blocks, the int64 class targets). Elementwise-shaped kernels get flat views
  (``x.reshape(-1)``: dropout, activations, optim); matmul, norm and softmax + cross-entropy get
  their 2-D arrays. On "cuda" every array of the call is a device array.
* Scalars: counts are ``np.int64``; dropout's key halves are ``np.uint32`` and its offset and
  threshold ``np.uint64`` (Numba and CUDA widen the key to uint64 inside); dropout's scale
  arrives in the data dtype (``dt.type(scale)``), while the activation ``slope`` and the
  cross-entropy backward's ``eps``/``grad_scale`` arrive as Python floats that each backend
  converts to the data dtype itself (Numba ``x.dtype.type(slope)``, CUDA on the host before the
  launch, Cython through a C ``double`` parameter cast per dtype; the forward's ``eps`` stays
  float64, like its loss). The optimizer's coefficients arrive as one host ndarray ``hp`` in the
  parameter dtype (the CUDA launcher unpacks it into kernel arguments). Flags are Python
  bools/ints; activation codes and optimizer kinds are ints from the family's ``codes.py``.
* Optional arrays differ per family (this is where the backends disagree):

  - optim: an unused state buffer is a **length-0 placeholder** of the call's kind (a host
    ndarray, or a device array on "cuda"), never ``None``, on every backend; the flags say which
    buffers are used.
  - norm: the CPU backends (numba, cython) take a **length-0 placeholder plus an explicit
    ``has_*`` bool** for each optional vector, and scratch arrays (``partial``, ``block``,
    ``coef``) the public function allocates; the CUDA backend has a different positional
    signature: optional vectors are ``None`` and it needs no scratch (its reductions use
    module-owned device buffers).
  - matmul: ``bias``/``dbias`` are ``None`` when absent, on every backend (Numba swaps in a
    placeholder internally, Cython and BLAS test for None).
  - elementwise (CUDA-only loss helpers): absent ``pos_weight``/``weight`` are ``None``; the
    CUDA launcher substitutes a 1-element float64 device dummy plus a ``has_*`` flag.
  - embedding: ``counts`` (int64 scratch of the CPU backends) is a length-0 host placeholder
    unless ``scale_by_freq``, and always on "cuda", whose sort-based backward ignores it and
    ``nchunks``; integer index arrays are int32 or int64.

* Returns: in-place kernels return None, except matmul's ``linear_forward`` and
  ``linear_backward_input``, which return their output array; reductions return a float
  (``softmax_xent_forward``: the loss summed over rows, which the public function divides).
"""
from __future__ import annotations

import importlib
import warnings

from .. import _config
from . import runtime

OPS = ("matmul", "norm", "dropout", "optim", "elementwise", "embedding")

#: Backend modules per backend name; "{op}" is replaced by the op family.
_MODULE_PATTERN = {
    "numba": "fastreg._kernels.{op}.numba",
    "cython": "fastreg._kernels.{op}.cy",
    "blas": "fastreg._kernels.{op}.blas",
    "cuda": "fastreg._kernels.{op}.cuda",
}

#: What "auto" picks per op family on the machine this was measured on (see README, "Backends").
#: The Cython kernels everywhere; numba is the fallback when they are not built (``kernel``).
AUTO = {
    "matmul": "cython",
    "norm": "cython",
    "dropout": "cython",
    "optim": "cython",
    "elementwise": "cython",
    "embedding": "cython",
}

_cache: dict[tuple[str, str, str], object] = {}


def resolve(op: str, backend: str | None = None, device: bool = False) -> str:
    """Concrete backend name for ``op`` given an explicit choice or the global setting.

    ``device``: the call's arrays are CUDA device arrays, which only the "cuda" backend takes
    (kernels run where the data is). Host arrays never go to "cuda": under the global "cuda"
    setting they use the CPU's "auto" choice.
    """
    if device:
        if backend is not None and backend not in ("cuda", "auto"):
            raise ValueError(f"backend {backend!r} runs on the CPU but the arrays are CUDA "
                             f"device arrays; use backend='cuda' (or None)")
        return "cuda"
    name = _config.get_backend() if backend is None else backend
    if name == "cuda":
        if backend is not None:
            raise ValueError("backend='cuda' needs CUDA device arrays (fastreg.cuda.to_device), "
                             "got host numpy arrays")
        name = "auto"
    if name == "auto":
        return AUTO[op]
    if name not in _MODULE_PATTERN:
        raise ValueError(f"backend must be one of {_config.BACKENDS}, got {name!r}")
    return name


def _load(op: str, backend: str):
    modname = _MODULE_PATTERN[backend].format(op=op)
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        if backend == "cython":
            raise ImportError(
                f"fastreg's Cython extension {modname} is not built; reinstall fastreg with "
                f"'pip install .' (needs a C compiler), or use fastreg.set_backend('numba')"
            ) from exc
        raise
    runtime.load_pool(backend)
    return mod


def _load_cuda(op: str):
    from .runtime import cuda as cuda_runtime
    cuda_runtime.require()
    return importlib.import_module(_MODULE_PATTERN["cuda"].format(op=op))


#: (op, name, device) -> implementation under the global setting (the trusted entry points'
#: case: one dict lookup per call); cleared by fastreg.set_backend.
_default: dict[tuple[str, str, bool], object] = {}


def kernel(op: str, name: str, backend: str | None = None, device: bool = False):
    """Return the implementation of kernel ``name`` of family ``op`` for the chosen backend
    (``device=True``: the arrays are CUDA device arrays, see :func:`resolve`)."""
    if backend is None:
        fn = _default.get((op, name, device))
        if fn is None:
            fn = _default[(op, name, device)] = kernel(op, name, "default", device)
        return fn
    if backend == "default":           # the global setting, resolved (and cached) above
        backend = None
    be = resolve(op, backend, device)
    key = (op, name, be)
    fn = _cache.get(key)
    if fn is None:
        try:
            mod = _load_cuda(op) if be == "cuda" else _load(op, be)
        except ImportError:
            requested = _config.get_backend() if backend is None else backend
            if be != "cython" or requested not in ("auto", "cuda"):
                raise
            # "auto" without the compiled extensions (no C compiler at install): numba is the
            # portable fallback, with the same kernels and results
            warnings.warn(f"fastreg's Cython kernels for {op!r} are not built; 'auto' uses the "
                          "numba backend instead (reinstall fastreg with a C compiler for the "
                          "faster kernels)", RuntimeWarning, stacklevel=2)
            AUTO[op] = "numba"
            return kernel(op, name, backend, device)
        fn = _cache[key] = getattr(mod, name)
    return fn
