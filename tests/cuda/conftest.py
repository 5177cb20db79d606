"""Fixtures for the CUDA-backend tests (numba's simulator without a GPU: keep sizes small)."""
import numpy as np
import pytest

from fastreg._kernels import _cuda_runtime



@pytest.fixture
def cuda():
    if not _cuda_runtime.available():
        pytest.skip("no CUDA device and the simulator is off")
    return _cuda_runtime.cuda()


@pytest.fixture
def dev(cuda):
    """``dev(a)``: host array -> new C-contiguous device array."""
    return lambda a: cuda.to_device(np.ascontiguousarray(a))
