"""CUDA dropout kernels (numba's simulator without a GPU): masks bit-identical to the CPU masks;
launch geometry and device-specific behaviour.

Small n (1, 2, 7, 33), the Random123 known answers, counters that carry into the second word or
wrap modulo 2**64, and every p / seed extreme on small n run in tests/test_kernels_reference.py
(against tests/reference.py and, bit for bit, the CPU backend). Here: n not a multiple of 128,
more mask bytes than one block of threads, more forward tiles (2048 elements) than the
simulator's 2 blocks (so the grid-stride tile loop runs).
"""
import numpy as np
import pytest
import reference as ref

from fastreg._kernels import dropout as D
from fastreg._kernels.dropout import cuda as _dropout_cuda

DTYPES = (np.float32, np.float64)
MASK_SIZES = (130, 257, 4500)
OFFSETS = (0, 2**32 - 3, 2**64 - 5)
PS = (0.1, 0.5, 0.9)
SEED = 0x0123456789ABCDEF


philox_scalar = ref.philox_scalar
packed = ref.packed


def cpu_mask(n, p, seed, offset):
    mask = np.empty(D.mask_nbytes(n), dtype=np.uint8)
    return D.dropout_mask(mask, n, p, seed, offset, backend="numba")


def garbage_mask(dev, n):
    return dev(np.full(D.mask_nbytes(n), 0xA5, dtype=np.uint8))   # bits the kernel must clear


# --- the generator ---------------------------------------------------------------------------------

def test_philox_launcher_matches_reference_on_many_random_blocks(dev, cuda):
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**32, size=(600, 4), dtype=np.uint64).astype(np.uint32)
    key = (0xDEADBEEF, 0x01234567)
    out = dev(np.zeros_like(ctr))
    _dropout_cuda.philox4x32_10_blocks(dev(ctr), out, np.uint32(key[0]), np.uint32(key[1]))
    got = out.copy_to_host()
    np.testing.assert_array_equal(got, D.philox4x32(ctr, key))
    assert tuple(got[599].tolist()) == philox_scalar(tuple(int(c) for c in ctr[599]), key)


# --- masks: bit for bit equal to the CPU backend and the spec ---------------------------------------

@pytest.mark.parametrize("n", MASK_SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_mask_equals_cpu_mask_and_reference_bit_for_bit(dev, n, offset):
    for p in PS:
        mask = garbage_mask(dev, n)
        D.dropout_mask(mask, n, p, SEED, offset)
        got = mask.copy_to_host()
        np.testing.assert_array_equal(got, cpu_mask(n, p, SEED, offset))
        np.testing.assert_array_equal(got, packed(D.dropout_keep_reference(n, p, SEED, offset)))
        if n % 8:
            assert got[-1] >> (n % 8) == 0


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**64 - 1])
def test_mask_equals_cpu_for_extreme_seeds_and_p(dev, seed):
    for p in (0.0, 1e-12, 0.3, 1 - 2**-33):         # keep all, threshold 2**32 - 1, ..., keep none
        mask = garbage_mask(dev, 77)
        D.dropout_mask(mask, 77, p, seed, 12345)
        np.testing.assert_array_equal(mask.copy_to_host(), cpu_mask(77, p, seed, 12345))


def test_consecutive_calls_with_reserved_offsets_continue_one_stream(dev):
    whole, first, second = garbage_mask(dev, 64), garbage_mask(dev, 32), garbage_mask(dev, 32)
    D.dropout_mask(whole, 64, 0.5, 3, 10)
    D.dropout_mask(first, 32, 0.5, 3, 10)
    D.dropout_mask(second, 32, 0.5, 3, 10 + D.philox_blocks(32))
    np.testing.assert_array_equal(
        whole.copy_to_host(), np.concatenate([first.copy_to_host(), second.copy_to_host()]))


# --- forward / backward against the CPU backend and the NumPy reference ------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,p,offset", [(257, 0.5, 2**32 - 40), (4500, 0.3, 2**64 - 600)])
def test_forward_equals_cpu_and_reference(dev, dtype, n, p, offset):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    scale = 1.0 / (1.0 - p)
    out, mask = dev(np.full(n, 7.0, dtype)), garbage_mask(dev, n)
    assert D.dropout_forward(dev(x), out, mask, p, scale, SEED, offset) is out
    cpu_out, cpu_m = np.empty_like(x), np.empty(D.mask_nbytes(n), np.uint8)
    D.dropout_forward(x, cpu_out, cpu_m, p, scale, SEED, offset, backend="numba")
    np.testing.assert_array_equal(mask.copy_to_host(), cpu_m)
    np.testing.assert_array_equal(out.copy_to_host(), cpu_out)        # same ops: bitwise equal
    keep = D.dropout_keep_reference(n, p, SEED, offset)
    want = np.where(keep, x.astype(np.float64) * scale, 0.0)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_in_place_on_2d_array_and_dropped_inf_nan_give_zero(dev, dtype):
    x = np.random.default_rng(2).standard_normal((9, 37)).astype(dtype)
    x[0, :8] = [np.inf, -np.inf, np.nan, np.inf, np.nan, -np.inf, np.inf, np.nan]
    d = dev(x)
    mask = garbage_mask(dev, x.size)
    assert D.dropout_forward(d, d, mask, 0.5, 2.0, 11, 3) is d
    cpu_out, cpu_m = np.empty_like(x), np.empty(D.mask_nbytes(x.size), np.uint8)
    D.dropout_forward(x, cpu_out, cpu_m, 0.5, 2.0, 11, 3, backend="cython")
    got = d.copy_to_host()
    assert got.shape == (9, 37)
    np.testing.assert_array_equal(mask.copy_to_host(), cpu_m)
    np.testing.assert_array_equal(got, cpu_out)
    keep = D.dropout_keep_reference(x.size, 0.5, 11, 3).reshape(x.shape)
    assert (~keep[0, :8]).any() and keep[0, :8].any()
    assert np.all(got[~keep] == 0) and not np.signbit(got[~keep]).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_p_zero_keeps_everything_scaled(dev, dtype):
    x = np.linspace(-3, 3, 45).astype(dtype)
    out, mask = dev(np.zeros_like(x)), garbage_mask(dev, 45)
    D.dropout_forward(dev(x), out, mask, 0.0, 1.5, 1, 0)
    np.testing.assert_array_equal(out.copy_to_host(), x * dtype(1.5))
    assert mask.copy_to_host().tolist() == [255] * 5 + [0b11111]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1000])
def test_backward_equals_cpu_and_reference(dev, dtype, n):
    rng = np.random.default_rng(n + 1)
    dy = rng.standard_normal(n).astype(dtype)
    m = cpu_mask(n, 0.4, SEED, 77)
    dx = dev(np.full(n, 7.0, dtype))
    assert D.dropout_backward(dev(dy), dev(m), dx, 1 / 0.6) is dx
    cpu_dx = D.dropout_backward(dy, m, np.empty_like(dy), 1 / 0.6, backend="numba")
    np.testing.assert_array_equal(dx.copy_to_host(), cpu_dx)
    keep = D.dropout_keep_reference(n, 0.4, SEED, 77)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(dx.copy_to_host(), np.where(keep, dy / 0.6, 0.0), rtol=rtol)


def test_backward_in_place(dev):
    dy = np.random.default_rng(3).standard_normal((5, 13))
    m = cpu_mask(dy.size, 0.5, 4, 0)
    d = dev(dy)
    D.dropout_backward(d, dev(m), d, 2.0)
    np.testing.assert_array_equal(d.copy_to_host(),
                                  D.dropout_backward(dy, m, np.empty_like(dy), 2.0))


def test_empty_input_is_a_no_op(dev):
    x = dev(np.empty((0, 5), np.float32))
    mask = dev(np.empty(0, np.uint8))
    assert D.dropout_forward(x, x, mask, 0.5, 2.0, 1, 0) is x
    assert D.dropout_mask(mask, 0, 0.5, 1, 0) is mask


# --- bad input ------------------------------------------------------------------------------------

def test_host_device_mix_is_rejected(dev):
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="CUDA device array but .* host"):
        D.dropout_forward(dev(x), np.empty_like(x), dev(np.zeros(2, np.uint8)), 0.5, 2.0, 1, 0)
    with pytest.raises(ValueError, match="CUDA device array but .* host"):
        D.dropout_forward(x, np.empty_like(x), dev(np.zeros(2, np.uint8)), 0.5, 2.0, 1, 0)
    with pytest.raises(ValueError, match="CUDA device array but .* host"):
        D.dropout_backward(dev(x), np.zeros(2, np.uint8), dev(x), 2.0)


def test_wrong_dtype_and_shape_device_arrays_are_rejected(dev):
    x = dev(np.ones(10, np.float32))
    mask = dev(np.zeros(2, np.uint8))
    with pytest.raises(TypeError, match="out must have dtype float32, got float64"):
        D.dropout_forward(x, dev(np.ones(10)), mask, 0.5, 2.0, 1, 0)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int32"):
        D.dropout_forward(dev(np.ones(10, np.int32)), x, mask, 0.5, 2.0, 1, 0)
    with pytest.raises(TypeError, match="mask must have dtype uint8"):
        D.dropout_backward(x, dev(np.zeros(2, np.int8)), x, 2.0)
    with pytest.raises(ValueError, match="out must have shape"):
        D.dropout_forward(x, dev(np.ones(11, np.float32)), mask, 0.5, 2.0, 1, 0)
    with pytest.raises(ValueError, match="mask must have mask_nbytes"):
        D.dropout_mask(dev(np.zeros(3, np.uint8)), 10, 0.5, 1, 0)
    with pytest.raises(ValueError, match="counters must have shape"):
        D.philox4x32_kernel(dev(np.zeros((2, 3), np.uint32)), (0, 0))


def test_overlaps_and_cpu_backend_names_are_rejected_on_device(dev):
    buf = dev(np.ones(20, np.float32))
    with pytest.raises(ValueError, match="out must be x itself or not overlap x"):
        D.dropout_forward(buf[:10], buf[1:11], dev(np.zeros(2, np.uint8)), 0.5, 2.0, 1, 0)
    x = dev(np.ones(16, np.float32))
    with pytest.raises(ValueError, match="mask and x must not share memory"):
        D.dropout_forward(x, dev(np.ones(16, np.float32)), x.view(np.uint8)[:2], 0.5, 2.0, 1, 0)
    with pytest.raises(ValueError, match="backend 'numba' runs on the CPU"):
        D.dropout_forward(x, x, dev(np.zeros(2, np.uint8)), 0.5, 2.0, 1, 0, backend="numba")
