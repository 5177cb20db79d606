"""CUDA ReLU -> dropout fused kernels (numba's simulator without a GPU): the same bits as the CPU
fused kernels, which tests/test_step_fusion.py ties to the unfused pair. n spans more forward
tiles (2048 elements) than the simulator's 2 blocks, with NaN, infinities and signed zeros."""
import numpy as np
import pytest

from fastreg._kernels import dropout as D


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_cuda_relu_dropout_equals_the_cpu_kernels_bitwise(dev, cuda, dt):
    n = 4500
    g = np.random.default_rng(3)
    x = g.standard_normal(n).astype(dt)
    x[:6] = (np.nan, np.inf, -np.inf, 0.0, -0.0, -1e-30)
    dy = g.standard_normal(n).astype(dt)
    out, mask, dx = np.empty_like(x), np.empty(D.mask_nbytes(n), np.uint8), np.empty_like(x)
    D.run_relu_dropout_forward(x, out, mask, 0.3, 1 / 0.7, 77, 2**32 - 3, backend="numba")
    D.run_relu_dropout_backward(dy, out, dx, 1 / 0.7, backend="numba")
    d_out, d_mask, d_dx = dev(np.zeros_like(x)), dev(np.zeros_like(mask)), dev(np.zeros_like(x))
    D.run_relu_dropout_forward(dev(x), d_out, d_mask, 0.3, 1 / 0.7, 77, 2**32 - 3, device=True)
    D.run_relu_dropout_backward(dev(dy), d_out, d_dx, 1 / 0.7, device=True)
    assert d_mask.copy_to_host().tobytes() == mask.tobytes()
    assert d_out.copy_to_host().tobytes() == out.tobytes()
    assert d_dx.copy_to_host().tobytes() == dx.tobytes()
