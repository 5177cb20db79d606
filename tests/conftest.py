"""Shared fixtures: every kernel test runs on every CPU backend and both float dtypes.

The CUDA tests (tests/cuda/) run in numba's CUDA simulator unless FASTREG_TEST_REAL_CUDA=1 is
set (on a machine with a GPU): the variable must be set before numba is first imported.
"""
import os

if os.environ.get("FASTREG_TEST_REAL_CUDA", "0") in ("", "0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest

CPU_BACKENDS = ("numba", "cython")
DTYPES = (np.float32, np.float64)
#: Sizes that catch off-by-one blocking and remainder loops.
AWKWARD_SIZES = (1, 2, 7, 33, 257, 1000)


_PTX_TEST = "test_cuda_compile.py::test_every_kernel_compiles_to_ptx"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Run the CUDA PTX compile check last, its minutes of compiling started now in a
    background process, so that it overlaps with the rest of the suite."""
    ptx = [it for it in items if it.nodeid.endswith(_PTX_TEST)]
    if not ptx or len(items) == 1:
        return
    for it in ptx:
        items.remove(it)
        items.append(it)
        if not any(m.name == "skip" for m in it.iter_markers()) and not config.option.collectonly:
            skipif = [m for m in it.iter_markers("skipif") if m.args and m.args[0]]
            if not skipif:
                it.module.start()
                config._fastreg_ptx_module = it.module


def pytest_sessionfinish(session, exitstatus):
    """Stop a background compile whose test never ran (-x stop, interrupt)."""
    mod = getattr(session.config, "_fastreg_ptx_module", None)
    p = mod._RUN.pop("proc", None) if mod is not None else None
    if p is not None and p.poll() is None:
        mod.kill(p)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tol(dtype, f32=1e-4, f64=1e-10):
    """(rtol, atol) for comparing a kernel in ``dtype`` against a float64 reference."""
    return (f32, f32) if np.dtype(dtype) == np.float32 else (f64, f64)


@pytest.fixture(autouse=True)
def _restore_fastreg_settings():
    import fastreg
    backend, threads = fastreg.get_backend(), fastreg.get_num_threads()
    dt = fastreg.get_default_dtype()
    yield
    fastreg.set_backend(backend)
    fastreg.set_default_dtype(dt)
    if fastreg.get_num_threads() != threads:
        fastreg.set_num_threads(threads)


# -- CUDA backend (tests/cuda; one conftest for the whole tree: test modules import names from
# "conftest", so a second file of that name would shadow this one) ----------------------------

@pytest.fixture
def cuda():
    """numba.cuda (the simulator unless FASTREG_TEST_REAL_CUDA=1); skips without either."""
    from fastreg._kernels.runtime import cuda as _cuda_runtime
    if not _cuda_runtime.available():
        pytest.skip("no CUDA device and the simulator is off")
    return _cuda_runtime.cuda()


@pytest.fixture
def dev(cuda):
    """``dev(a)``: host array -> new C-contiguous device array."""
    return lambda a: cuda.to_device(np.ascontiguousarray(a))


@pytest.fixture
def backward_gemm_calls(monkeypatch):
    """{"input": n, "weight": n}: the Linear backward GEMM calls (dL/dx and dL/dW) made while
    the test runs, counted at the trusted kernel entry points (an input-gradient GEMM with the
    previous activation's backward fused in, run_linear_backward_input_act, counts as one)."""
    from fastreg._kernels import matmul
    calls = {"input": 0, "weight": 0}

    def counting(key, f):
        def counted(*a, **k):
            calls[key] += 1
            return f(*a, **k)
        return counted

    for key, name in (("input", "run_linear_backward_input"),
                      ("input", "run_linear_backward_input_act"),
                      ("weight", "run_linear_backward_weight")):
        monkeypatch.setattr(matmul, name, counting(key, getattr(matmul, name)))
    return calls
