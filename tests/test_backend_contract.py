"""The backend calling convention: every backend module of a family implements the same kernels
with the same positional parameters (fastreg/_kernels/_dispatch.py: "backends share one
signature per kernel").

The rule, as the code stands (derived from the modules, except the few exceptions declared
below with their reason):

* A family's kernels are the public functions its Numba backend (``numba.py``) defines.
* Every CPU backend (``numba.py``, ``cy.pyx``, and ``blas.py`` for matmul) defines exactly those
  kernels, each with the Numba kernel's parameter names, all positional, without defaults
  (the public layer passes every argument positionally).
* The CUDA backend (``cuda.py``) defines every kernel too, with the same parameters, except in
  the families listed in ``CUDA_TAKES_PUBLIC_ARGUMENTS``, whose CUDA launchers take the public
  function's validated arguments instead (no CPU scratch buffers). Its other public functions
  are device paths of public functions that have no compiled CPU kernel (the host path is
  NumPy: the elementwise device utilities, ``batchnorm_backward_eval``); each takes exactly the
  public function's parameters, less ``backend``.
* Every kernel name the public layer dispatches to exists in the backends it dispatches to.

inspect.signature works on Numba dispatchers (through ``py_func``), Cython 3 ``def`` functions
(plain and fused) and the CUDA launchers (plain Python functions).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re

import pytest

FAMILIES = ("matmul", "norm", "dropout", "optim", "elementwise", "embedding")
CPU_MODULES = {"numba": "numba", "cython": "cy", "blas": "blas"}
#: Public helpers of a backend module that are not kernels, with the reason.
HELPERS = {("matmul", "blas"): {"epilogue": "the NumPy bias + activation epilogue of the BLAS "
                                            "backend (numba.py imports it for its GEMV path)"},
           # Cython-only entry points: the numba backend has other paths for these (bf16.py
           # rounds copies; the predictor falls back to per-layer kernels without Cython)
           ("matmul", "cy"): {
               "linear_forward_bf16": "bf16 autocast product (tests/test_autocast.py)",
               "linear_backward_input_bf16": "bf16 autocast product (tests/test_autocast.py)",
               "linear_backward_weight_bf16": "bf16 autocast product (tests/test_autocast.py)",
               "linear_forward_packed": "pre-packed inference GEMM (tests/test_matmul.py)",
               "linear_backward_input_act": "dx GEMM with the activation's backward in its "
                                            "epilogue; the other backends run the GEMM then "
                                            "the activation pass (tests/test_step_fusion.py)",
               "pack_weight": "packs a weight for linear_forward_packed / LinearChain",
               "packed_size": "size arithmetic of pack_weight",
               "set_chain_parallel_min_flops": "LinearChain's batch-1 thread-split threshold",
               "peak_probe": "the FMA-throughput probe the GEMM floors are read against"},
           ("norm", "cy"): {"bandwidth_probe": "the streaming-bandwidth floor of the norm "
                                               "benchmarks, not a kernel"}}
#: Families whose CUDA launchers take the public function's arguments (norm/__init__.py: "each
#: function runs the kernel of the same name in norm/cuda.py, which takes the validated
#: arguments of the public function (no CPU scratch)").
CUDA_TAKES_PUBLIC_ARGUMENTS = {"norm"}


def _module(fam, mod):
    name = f"fastreg._kernels.{fam}.{mod}"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _defined_functions(mod):
    """Public callables defined in ``mod`` (not imported into it): name -> Python function."""
    out = {}
    for name, obj in vars(mod).items():
        if name.startswith("_") or isinstance(obj, type) or not callable(obj):
            continue
        fn = getattr(obj, "py_func", obj)            # a Numba dispatcher's Python function
        if getattr(fn, "__module__", None) == mod.__name__:
            out[name] = fn
    return out


def _params(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()]


def _family_kernels(fam):
    return _defined_functions(_module(fam, "numba"))


def _public(fam):
    pkg = importlib.import_module(f"fastreg._kernels.{fam}")
    return {n: f for n, f in vars(pkg).items() if not n.startswith("_")
            and inspect.isfunction(f) and f.__module__ == pkg.__name__}


def _cpu_backends(fam):
    return [(be, m) for be, mod in CPU_MODULES.items() if (m := _module(fam, mod)) is not None]


@pytest.mark.parametrize("fam", FAMILIES)
def test_kernels_are_plain_positional(fam):
    for name, fn in _family_kernels(fam).items():
        for p in inspect.signature(fn).parameters.values():
            assert p.kind is p.POSITIONAL_OR_KEYWORD, (fam, name, p)
            assert p.default is p.empty, f"{fam}.numba.{name}: {p.name} has a default"


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_cpu_backend_implements_the_same_kernels(fam):
    kernels = _family_kernels(fam)
    assert kernels, f"{fam}/numba.py defines no kernel"
    backends = _cpu_backends(fam)
    assert [b for b, _ in backends][:2] == ["numba", "cython"], \
        f"{fam}: the Cython extension is not built"
    for be, mod in backends:
        defined = _defined_functions(mod)
        helpers = set(HELPERS.get((fam, CPU_MODULES[be]), {}))
        assert helpers <= set(defined), f"stale HELPERS entry for {fam}/{be}"
        assert set(defined) - helpers == set(kernels), \
            f"{fam}/{be}: kernels {sorted(set(defined) - helpers)} != numba's {sorted(kernels)}"
        for name, fn in kernels.items():
            assert _params(defined[name]) == _params(fn), f"{fam}/{be}.{name}"


@pytest.mark.parametrize("fam", FAMILIES)
def test_cuda_backend_implements_every_kernel_and_only_device_paths(fam):
    mod = _module(fam, "cuda")
    assert mod is not None, f"{fam} has no CUDA backend"
    defined = _defined_functions(mod)
    kernels = _family_kernels(fam)
    public = _public(fam)
    missing = set(kernels) - set(defined)
    assert not missing, f"{fam}/cuda.py lacks kernels {sorted(missing)}"
    for name, fn in defined.items():
        if name in kernels and fam not in CUDA_TAKES_PUBLIC_ARGUMENTS:
            assert _params(fn) == _params(kernels[name]), f"{fam}/cuda.{name}"
            continue
        assert name in public, (f"{fam}/cuda.{name} is neither a kernel nor the device path of "
                                f"a public function")
        want = [p for p in _params(public[name]) if p != "backend"]
        assert _params(fn) == want, f"{fam}/cuda.{name} vs the public {name}"


@pytest.mark.parametrize("fam", FAMILIES)
def test_public_layer_dispatches_only_to_existing_kernels(fam):
    src = inspect.getsource(importlib.import_module(f"fastreg._kernels.{fam}"))
    calls = re.findall(rf'_dispatch\.kernel\(\s*"{fam}",\s*"(\w+)"([^)]*)\)', src)
    assert calls, f"no dispatch call found in {fam}/__init__.py"
    on_cpu = {name for name, rest in calls if "device=True" not in rest}
    device_only = {name for name, rest in calls if "device=True" in rest}
    device_only |= set(re.findall(r'_cuda\("(\w+)"\)', src))
    cuda_defined = _defined_functions(_module(fam, "cuda"))
    for name in on_cpu:
        for be, mod in _cpu_backends(fam):
            assert name in _defined_functions(mod), f"{fam}/{be} lacks the dispatched {name}"
    for name in on_cpu | device_only:
        assert name in cuda_defined, f"{fam}/cuda lacks the dispatched {name}"
