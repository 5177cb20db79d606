"""CUDA dropout kernels (numba's simulator without a GPU): masks bit-identical to the CPU masks.

Sizes are small (the simulator runs each GPU thread as a Python thread) but cover: n not a
multiple of 8 / 32 / 128, more mask bytes than one block of threads, more forward tiles (2048
elements) than the simulator's 2 blocks (so the grid-stride tile loop runs), offsets whose
counter carries into the second word or wraps modulo 2**64.
"""
import numpy as np
import pytest

from fastreg._kernels import dropout as D
from fastreg._kernels.dropout import cuda as _dropout_cuda

# Random123 known-answer vectors for Philox4x32-10 (kat_vectors: counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
DTYPES = (np.float32, np.float64)
MASK_SIZES = (1, 7, 33, 130, 257, 4500)
OFFSETS = (0, 2**32 - 3, 2**64 - 5)
PS = (0.1, 0.5, 0.9)
SEED = 0x0123456789ABCDEF


def philox_scalar(ctr, key):
    """Philox4x32-10 in plain Python integers, written from the spec."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF,
                          (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def packed(keep):
    """Mask bytes by the spec: bit j (LSB first) of byte k <-> element 8k+j."""
    bits = np.zeros(D.mask_nbytes(keep.size) * 8, dtype=np.uint8)
    bits[:keep.size] = keep
    return np.packbits(bits, bitorder="little")


def cpu_mask(n, p, seed, offset):
    mask = np.empty(D.mask_nbytes(n), dtype=np.uint8)
    return D.dropout_mask(mask, n, p, seed, offset, backend="numba")


def garbage_mask(dev, n):
    return dev(np.full(D.mask_nbytes(n), 0xA5, dtype=np.uint8))   # bits the kernel must clear


# --- the generator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_matches_random123_known_answers(dev, ctr, key, want):
    got = D.philox4x32_kernel(dev(np.array([ctr], dtype=np.uint32)), key)
    assert tuple(got.copy_to_host()[0].tolist()) == want


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


def test_mask_counter_carries_into_second_word_and_wraps(dev):
    mask = garbage_mask(dev, 12)                  # blocks at counters 2**32-1, 2**32, 2**32+1
    D.dropout_mask(mask, 12, 0.5, 99, 2**32 - 1)
    blocks = [philox_scalar((0xFFFFFFFF, 0, 0, 0), (99, 0)), philox_scalar((0, 1, 0, 0), (99, 0)),
              philox_scalar((1, 1, 0, 0), (99, 0))]
    keep = np.array([w < 2**31 for blk in blocks for w in blk])
    np.testing.assert_array_equal(mask.copy_to_host(), packed(keep))
    a, b = garbage_mask(dev, 16), garbage_mask(dev, 8)
    D.dropout_mask(a, 16, 0.5, 7, 2**64 - 2)      # blocks 2**64-2, 2**64-1, 0, 1
    D.dropout_mask(b, 8, 0.5, 7, 0)
    assert a.copy_to_host()[1] == b.copy_to_host()[0]


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
@pytest.mark.parametrize("n,p,offset", [(1, 0.5, 0), (7, 0.1, 2**64 - 1), (33, 0.9, 5),
                                        (257, 0.5, 2**32 - 40), (4500, 0.3, 2**64 - 600)])
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
@pytest.mark.parametrize("n", [1, 7, 33, 1000])
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
