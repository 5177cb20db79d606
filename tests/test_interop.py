"""fastreg.set_blas_interop: OpenBLAS's threads on fastreg's OpenMP pool.

What must hold: the switch leaves the user's thread-pool settings (threadpoolctl's view)
exactly as they were, in both directions and when a kernel raises; "off" puts back the callback
that was installed before; NumPy's results are bitwise the same either way (OpenBLAS splits the
work as before), including from two Python threads at once and on the pthread fallback. The
speed-up itself is measured by benchmarks/bench_interop.py, not timed here.
"""
import ctypes
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastreg
from fastreg._kernels import matmul as mm
from fastreg._kernels import runtime

threadpoolctl = pytest.importorskip("threadpoolctl")


def _pool():
    runtime.load_pool("cython")
    return sys.modules["fastreg._kernels.runtime.cy"]


def _routable():
    """Paths of loaded OpenBLAS libraries that take a threads callback."""
    fastreg.set_blas_interop("auto")
    _pool()
    fastreg.set_blas_interop("auto")
    return fastreg.get_blas_interop()["routed"]


@pytest.fixture
def routed():
    if not _pool().HAVE_OPENMP:
        pytest.skip("fastreg was built without OpenMP")
    paths = _routable()
    if not paths:
        pytest.skip(f"no OpenBLAS >= 0.3.27 loaded: {fastreg.get_blas_interop()['skipped']}")
    yield paths
    fastreg.set_blas_interop("auto")


def _callback(path):
    return ctypes.c_void_p.in_dll(ctypes.CDLL(path), "openblas_threads_callback_").value


def _info():
    return sorted((i["filepath"], i["num_threads"], i.get("user_api")) for i in
                  threadpoolctl.threadpool_info())


def _kernels_and_numpy(rng):
    x = rng.standard_normal((256, 300)).astype(np.float32)
    w = rng.standard_normal((200, 300)).astype(np.float32)
    y = np.empty((256, 200), np.float32)
    mm.linear_forward(x, w, None, y, "relu", backend="cython")
    return x @ w.T


@pytest.mark.parametrize("mode", ["on", "", None, 1, "AUTO "])
def test_set_blas_interop_rejects_bad_modes(mode):
    with pytest.raises(ValueError, match=r"mode must be one of \('auto', 'off'\), got"):
        fastreg.set_blas_interop(mode)


def test_switch_restores_threadpool_settings_and_callback(routed):
    path = routed[0]
    fastreg.set_blas_interop("off")
    before_cb = _callback(path)
    before = _info()
    rng = np.random.default_rng(0)
    fastreg.set_blas_interop("auto")
    assert _callback(path) == _pool().blas_callback_address() != before_cb
    _kernels_and_numpy(rng)
    assert _info() == before
    # a kernel that raises (bad shape) leaves the settings and the routing alone
    with pytest.raises(ValueError):
        mm.linear_forward(np.ones((3, 4), np.float32), np.ones((5, 6), np.float32), None,
                          np.empty((3, 5), np.float32), backend="cython")
    assert _info() == before
    assert fastreg.get_blas_interop()["routed"] == routed
    fastreg.set_blas_interop("off")
    assert _callback(path) == before_cb
    assert _info() == before
    assert fastreg.get_blas_interop() == {"mode": "off", "routed": [], "skipped": {}}


def test_user_limits_are_kept_under_the_switch(routed):
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        inside = _info()
        fastreg.set_blas_interop("off")
        fastreg.set_blas_interop("auto")
        _kernels_and_numpy(np.random.default_rng(1))
        assert _info() == inside
        assert all(n == 1 for _, n, api in inside if api == "blas")


def test_unloadable_library_is_skipped_with_a_reason(routed, monkeypatch):
    fastreg.set_blas_interop("off")
    monkeypatch.setattr(runtime, "_openblas_paths", lambda: ["/nonexistent/libopenblas.so"])
    before = _info()
    fastreg.set_blas_interop("auto")
    state = fastreg.get_blas_interop()
    assert state["routed"] == []
    assert "cannot open" in state["skipped"]["/nonexistent/libopenblas.so"]
    assert _info() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_results_bitwise_equal_and_run_on_the_pool(routed, dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((257, 700)).astype(dtype)
    b = rng.standard_normal((700, 333)).astype(dtype)
    m = rng.standard_normal((2048, 1024)).astype(dtype)
    v = rng.standard_normal(1024).astype(dtype)
    s = a[:, :257] @ a[:, :257].T + 257 * np.eye(257, dtype=dtype)

    def work():  # GEMM, GEMV, and LAPACK (whose blocked steps call threaded BLAS from C)
        return (a @ b, m @ v, m.T @ m[:, :65], np.linalg.solve(s, a[:, :9]),
                np.linalg.eigh(s)[0])

    fastreg.set_blas_interop("off")
    ref = work()
    fastreg.set_blas_interop("auto")
    omp0, _ = _pool().blas_callback_calls()
    got = work()
    omp1, _ = _pool().blas_callback_calls()
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g, r)
    if threadpoolctl.threadpool_info() and max(
            i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i.get("internal_api") == "openblas") > 1:
        assert omp1 > omp0  # the threaded calls went through fastreg's pool


def test_two_python_threads_calling_numpy_at_once(routed):
    rng = np.random.default_rng(3)
    mats = [rng.standard_normal((300, 400)).astype(np.float32) for _ in range(4)]
    fastreg.set_blas_interop("off")
    refs = [m @ m.T for m in mats]
    fastreg.set_blas_interop("auto")
    errors = []

    def work(k):
        for _ in range(5):
            for m, r in zip(mats[k::2], refs[k::2]):
                if not np.array_equal(m @ m.T, r):
                    errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pthread_fallback_when_no_team_can_be_had(routed):
    # OMP_THREAD_LIMIT=1: libgomp cannot give OpenBLAS's jobs a team of their size, so the
    # callback runs them on its own pthreads; the result must still be exact
    code = (
        "import numpy as np, sys, fastreg\n"
        "from fastreg._kernels import runtime\n"
        "runtime.load_pool('cython'); fastreg.set_blas_interop('auto')\n"
        "assert fastreg.get_blas_interop()['routed'], fastreg.get_blas_interop()\n"
        "rng = np.random.default_rng(4)\n"
        "a = rng.standard_normal((300, 500)); got = a @ a.T\n"
        "fastreg.set_blas_interop('off'); ref = a @ a.T\n"
        "cy = sys.modules['fastreg._kernels.runtime.cy']\n"
        "print(np.array_equal(got, ref), *cy.blas_callback_calls())\n"
    )
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    equal, omp_calls, thread_calls = out.stdout.split()
    assert equal == "True"
    assert int(omp_calls) == 0 and int(thread_calls) >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_numpy_in_a_forked_child_does_not_hang(routed):
    # libgomp's pool does not survive fork(): the child must get OpenBLAS's own threads back
    # (multiprocessing's "fork" start method, forked data-loader workers)
    code = (
        "import os, numpy as np, fastreg\n"
        "from fastreg._kernels import runtime\n"
        "runtime.load_pool('cython'); fastreg.set_blas_interop('auto')\n"
        "from fastreg._kernels import matmul as mm\n"
        "a = np.random.default_rng(5).standard_normal((300, 500)).astype(np.float32)\n"
        "y = np.empty((300, 300), np.float32)\n"
        "mm.linear_forward(a, a, None, y, backend='cython'); ref = a @ a.T\n"
        "assert fastreg.get_blas_interop()['routed']\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    fastreg.set_blas_interop('auto')\n"
        "    ok = np.array_equal(a @ a.T, ref) and not fastreg.get_blas_interop()['routed']\n"
        "    os._exit(0 if ok else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), bool(fastreg.get_blas_interop()['routed']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"]
