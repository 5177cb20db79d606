import subprocess
import sys

import numpy as np
import pytest

import fastreg


def test_import_fastreg_does_not_import_numba():
    code = "import sys, fastreg; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["numba", "cython", "auto", "NUMBA"])
def test_set_backend_accepts_known_names(name):
    fastreg.set_backend(name)
    assert fastreg.get_backend() == name.lower()


@pytest.mark.parametrize("name", ["torch", "", None, 3])
def test_set_backend_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="backend must be one of"):
        fastreg.set_backend(name)


def test_backend_env_var_sets_initial_backend():
    code = "import fastreg; print(fastreg.get_backend())"
    env = {"FASTREG_BACKEND": "cython", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "cython"


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fastreg.set_num_threads(n)


def test_set_num_threads_reaches_numba_openmp_and_blas():
    import numba
    from threadpoolctl import threadpool_info

    from fastreg._kernels.runtime import cy as _runtime_cy
    from fastreg._kernels.runtime import numba as _numba_runtime  # noqa: F401  (loads both runtimes)
    fastreg.set_num_threads(1)
    assert fastreg.get_num_threads() == 1
    assert numba.get_num_threads() == 1
    if _runtime_cy.HAVE_OPENMP:
        assert _runtime_cy.get_max_threads() == 1
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)


def test_default_dtype_roundtrip_and_validation():
    fastreg.set_default_dtype(np.float64)
    assert fastreg.get_default_dtype() == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        fastreg.set_default_dtype(np.int32)


def test_manual_seed_makes_streams_repeatable():
    g = fastreg.manual_seed(7)
    a = g.numpy.standard_normal(5)
    assert g.reserve_philox(10) == (7, 0)
    assert g.reserve_philox(3) == (7, 10)
    g = fastreg.manual_seed(7)
    np.testing.assert_array_equal(a, g.numpy.standard_normal(5))
    assert g.philox_offset == 0


_LIMITS_CHILD = r'''
import json, os, resource, time
import numpy as np
from threadpoolctl import threadpool_limits
import fastreg as fr
from fastreg import nn
out = {"default": fr.get_num_threads()}
m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
x = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
m(x)                                      # loads the OpenMP runtime of the Cython kernels
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
with threadpool_limits(1):
    out["inside"] = fr.get_num_threads()
    c0, t0 = cpu(), time.perf_counter()
    for _ in range(20):
        m.backward(m(x))
    out["cpu_per_wall"] = (cpu() - c0) / (time.perf_counter() - t0)
out["after"] = fr.get_num_threads()
fr.set_num_threads(1)
with threadpool_limits(2):
    out["user"] = fr.get_num_threads()
print(json.dumps(out))
'''


def _child(env_extra):
    import json
    import os
    import subprocess
    import sys
    pytest.importorskip("threadpoolctl")
    env = dict(os.environ, **env_extra)
    env.pop("OMP_NUM_THREADS", None) if "OMP_NUM_THREADS" not in env_extra else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _LIMITS_CHILD], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_threads_follow_threadpoolctl_limits_and_user_setting_wins():
    """Inside threadpool_limits(1) (what joblib/scikit-learn workers use) fastreg runs on one
    thread: CPU time <= wall time; fr.set_num_threads overrides every limit."""
    out = _child({})
    assert out["inside"] == 1
    assert out["cpu_per_wall"] < 1.3
    assert out["after"] == out["default"]
    assert out["user"] == 1


def test_threads_follow_omp_num_threads():
    out = _child({"OMP_NUM_THREADS": "1"})
    assert out["default"] == 1 and out["inside"] == 1 and out["after"] == 1
