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
