"""Compile every CUDA kernel to real PTX (libNVVM, no GPU, no simulator).

The rest of tests/cuda/ runs the kernels in numba's CUDA simulator, which never compiles them
for the GPU. benchmarks/cuda_compile_check.py records the argument types of every kernel launch
(under the simulator) and compiles those signatures with libNVVM for sm_90, failing on any
compile error and on float64 arithmetic in kernels meant to compute in float32. Skipped where
no CUDA toolkit (libNVVM) is installed.

The compile takes minutes of one core and needs nothing from the test process, so
tests/conftest.py starts it in the background when the test is collected (``start``) and runs
this test last: it overlaps with the rest of the suite on the second core.
"""
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "cuda_compile_check.py")


def _toolkit():
    spec = importlib.util.spec_from_file_location("_fastreg_cuda_compile_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)          # stdlib imports only: numba is not touched here
    return mod._find_toolkit()


pytestmark = pytest.mark.skipif(_toolkit() is None,
                                reason="no CUDA toolkit with libNVVM (CUDA_HOME, /usr/local/cuda*)")


_RUN = {}


def start():
    """Start the compile check in a background process (once); called at collection time."""
    if "proc" in _RUN or _toolkit() is None:
        return
    # the script starts its own simulator process for recording; the compile process must not
    # inherit NUMBA_ENABLE_CUDASIM (set for this test session by tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # "nice" (lower priority): the test process keeps its core
    _RUN["proc"] = subprocess.Popen(
        ["nice", "-n", "5"] * bool(shutil.which("nice")) +
        [sys.executable, SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=ROOT, process_group=0)


def kill(p) -> None:
    """Kill the check and the recording process it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.communicate()


def test_every_kernel_compiles_to_ptx():
    start()
    p = _RUN.pop("proc")
    try:
        stdout, stderr = p.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        kill(p)
        pytest.fail("cuda_compile_check did not finish in 900 s")
    out = stdout + stderr
    assert p.returncode == 0, out[-8000:]
    assert "cuda_compile_check: OK" in stdout, out[-8000:]
