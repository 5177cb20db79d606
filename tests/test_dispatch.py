"""The dispatcher: backend resolution, and numba as the fallback of "auto" without the Cython
extensions."""
import numpy as np
import pytest

from fastreg._kernels import _dispatch, matmul


@pytest.fixture
def no_cython(monkeypatch):
    """Pretend the compiled extensions were not built (an install without a C compiler)."""
    monkeypatch.setitem(_dispatch._MODULE_PATTERN, "cython", "fastreg._kernels.{op}.not_built")
    monkeypatch.setattr(_dispatch, "_cache", {})
    monkeypatch.setattr(_dispatch, "_default", {})
    monkeypatch.setattr(_dispatch, "AUTO", dict(_dispatch.AUTO))


def test_auto_falls_back_to_numba_with_a_warning(no_cython):
    with pytest.warns(RuntimeWarning, match="not built.*numba"):
        fn = _dispatch.kernel("matmul", "linear_forward")
    assert fn.__module__ == "fastreg._kernels.matmul.numba"
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    w = np.ones((4, 3))
    out = np.empty((2, 4))
    matmul.linear_forward(x, w, None, out)      # runs (on numba), same result as NumPy
    np.testing.assert_allclose(out, x @ w.T)


def test_explicit_cython_without_the_extension_is_a_clear_error(no_cython):
    with pytest.raises(ImportError, match="Cython extension .* is not built"):
        _dispatch.kernel("matmul", "linear_forward", "cython")


def test_auto_resolves_to_the_measured_choice():
    assert {_dispatch.resolve(op, "auto") for op in _dispatch.OPS} <= {"cython", "numba"}
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.resolve("matmul", "fortran")
