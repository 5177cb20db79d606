"""Dropout kernels: Philox4x32-10 masks against an independent reference, on every backend."""
import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastreg
from fastreg._kernels import _dispatch
from fastreg._kernels import dropout as D

KAT = ref.PHILOX_KAT
SIZES = (1, 2, 7, 33, 257, 1000, 4099)


# --- the independent scalar references: tests/reference.py ---------------------------------------
philox_scalar = ref.philox_scalar
keep_scalar = ref.dropout_keep_scalar
packed = ref.packed


def run_forward(x, p, seed, offset, backend, scale=None):
    scale = 1.0 / (1.0 - p) if scale is None else scale
    out = np.empty_like(x)
    mask = np.empty(D.mask_nbytes(x.size), dtype=np.uint8)
    D.dropout_forward(x, out, mask, p, scale, seed, offset, backend=backend)
    return out, mask


# --- the generator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ctr,key,want", KAT)
def test_numpy_philox_reference_matches_random123_known_answers(ctr, key, want):
    assert tuple(D.philox4x32([ctr], key)[0].tolist()) == want
    assert philox_scalar(ctr, key) == want


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_compiled_philox_matches_random123_known_answers(backend, ctr, key, want):
    got = D.philox4x32_kernel(np.array([ctr], dtype=np.uint32), key, backend=backend)
    assert tuple(got[0].tolist()) == want


def test_numpy_philox_reference_matches_scalar_reference_on_random_blocks(rng):
    ctr = rng.integers(0, 2**32, size=(50, 4), dtype=np.uint64)
    key = (int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)))
    ref = [philox_scalar(tuple(int(v) for v in row), key) for row in ctr]
    assert D.philox4x32(ctr, key).tolist() == [list(r) for r in ref]


@pytest.mark.parametrize("p,want", [(0.0, 2**32), (0.5, 2**31), (0.25, 3 * 2**30),
                                    (1e-300, 2**32 - 1), (1 - 2**-40, 0), (0.1, 3865470566)])
def test_keep_threshold_is_exact_floor_of_one_minus_p_times_2_pow_32(p, want):
    assert D.keep_threshold(p) == want


def test_block_and_byte_counts():
    assert [D.mask_nbytes(n) for n in (0, 1, 8, 9, 16)] == [0, 1, 1, 2, 2]
    assert [D.philox_blocks(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


# --- masks against the reference -------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 12345, 2**32 - 1, 2**32 - 3, 2**64 - 2])
def test_mask_bits_match_reference_including_zero_tail_bits(backend, n, offset):
    seed = 0x0123456789ABCDEF
    keep = keep_scalar(n, 0.3, seed, offset) if n <= 257 else \
        D.dropout_keep_reference(n, 0.3, seed, offset)
    mask = np.full(D.mask_nbytes(n), 0xFF, dtype=np.uint8)     # garbage the kernel must clear
    D.dropout_mask(mask, n, 0.3, seed, offset, backend=backend)
    np.testing.assert_array_equal(mask, packed(keep))
    if n % 8:
        assert mask[-1] >> (n % 8) == 0


def test_numpy_reference_agrees_with_scalar_reference():
    for offset in (0, 2**32 - 2, 2**64 - 3):
        np.testing.assert_array_equal(D.dropout_keep_reference(41, 0.6, 2**63 + 5, offset),
                                      keep_scalar(41, 0.6, 2**63 + 5, offset))


def test_offset_carries_into_second_counter_word(backend):
    # blocks at offsets 2**32 - 1 and 2**32 use counters (0xffffffff, 0) and (0, 1)
    n, seed = 8, 99
    mask = np.empty(1, dtype=np.uint8)
    D.dropout_mask(mask, n, 0.5, seed, 2**32 - 1, backend=backend)
    words = [philox_scalar((0xFFFFFFFF, 0, 0, 0), (seed, 0)), philox_scalar((0, 1, 0, 0), (seed, 0))]
    keep = np.array([w < 2**31 for blk in words for w in blk])
    np.testing.assert_array_equal(mask, packed(keep))


def test_offset_wraps_modulo_2_pow_64(backend):
    a = np.empty(2, dtype=np.uint8)
    b = np.empty(1, dtype=np.uint8)
    D.dropout_mask(a, 16, 0.5, 7, 2**64 - 2, backend=backend)   # blocks 2**64-2, 2**64-1, 0, 1
    D.dropout_mask(b, 8, 0.5, 7, 0, backend=backend)
    assert a[1] == b[0]


def test_consecutive_calls_with_reserved_offsets_continue_one_stream(backend):
    whole = np.empty(D.mask_nbytes(64), dtype=np.uint8)
    D.dropout_mask(whole, 64, 0.5, 3, 10, backend=backend)
    first = np.empty(4, dtype=np.uint8)
    second = np.empty(4, dtype=np.uint8)
    D.dropout_mask(first, 32, 0.5, 3, 10, backend=backend)
    D.dropout_mask(second, 32, 0.5, 3, 10 + D.philox_blocks(32), backend=backend)
    np.testing.assert_array_equal(whole, np.concatenate([first, second]))


def test_masks_bitwise_identical_across_backends_threads_and_dtypes(rng):
    n = 100_003
    seed, offset = 2**40 + 17, 2**32 - 100
    masks = []
    for threads in (1, 2):
        fastreg.set_num_threads(threads)
        for backend in ("numba", "cython"):
            for dt in (np.float32, np.float64):
                x = rng.standard_normal(n).astype(dt)
                masks.append(run_forward(x, 0.37, seed, offset, backend)[1])
            m = np.empty(D.mask_nbytes(n), dtype=np.uint8)
            masks.append(D.dropout_mask(m, n, 0.37, seed, offset, backend=backend))
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])
    np.testing.assert_array_equal(masks[0], packed(D.dropout_keep_reference(n, 0.37, seed, offset)))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_keep_fraction_within_4_sigma_of_one_minus_p(backend, p):
    n = 1_000_000
    mask = np.empty(D.mask_nbytes(n), dtype=np.uint8)
    D.dropout_mask(mask, n, p, 20240601, 0, backend=backend)
    frac = np.unpackbits(mask).sum() / n
    assert abs(frac - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)


def test_p_zero_keeps_everything_and_p_near_one_keeps_nothing(backend, dtype, rng):
    x = rng.standard_normal(1001).astype(dtype)
    out, mask = run_forward(x, 0.0, 5, 0, backend)
    np.testing.assert_array_equal(out, x)
    assert np.unpackbits(mask, bitorder="little")[:1001].all()
    out, mask = run_forward(x, 1 - 2**-40, 5, 0, backend, scale=3.0)
    assert not out.any() and not mask.any()


# --- forward / backward values ---------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_forward_scales_kept_and_zeroes_dropped(backend, dtype, rng, n):
    x = rng.standard_normal(n).astype(dtype)
    p, seed, offset = 0.4, 77, 5
    out, mask = run_forward(x, p, seed, offset, backend)
    keep = D.dropout_keep_reference(n, p, seed, offset)
    ref = np.where(keep, x.astype(np.float64) / (1 - p), 0.0)
    rtol, atol = (1e-6, 0) if dtype == np.float32 else (1e-14, 0)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
    assert np.all(out[~keep] == 0) and not np.signbit(out[~keep]).any()
    np.testing.assert_array_equal(mask, packed(keep))


def test_forward_works_in_place_and_on_2d_arrays(backend, dtype, rng):
    x = rng.standard_normal((33, 19)).astype(dtype)
    expected, mask_ref = run_forward(x.copy(), 0.25, 11, 3, backend)
    mask = np.empty(D.mask_nbytes(x.size), dtype=np.uint8)
    D.dropout_forward(x, x, mask, 0.25, 1 / 0.75, 11, 3, backend=backend)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(mask, mask_ref)


def test_forward_zeroes_dropped_inf_and_nan(backend):
    x = np.full(64, np.inf, dtype=np.float32)
    x[::2] = np.nan
    out, mask = run_forward(x, 0.5, 1, 0, backend)
    keep = np.unpackbits(mask, bitorder="little").astype(bool)
    assert np.all(out[~keep] == 0)
    assert np.all(~np.isfinite(out[keep]))


@pytest.mark.parametrize("n", SIZES)
def test_backward_is_zero_exactly_where_forward_dropped(backend, dtype, rng, n):
    x = rng.standard_normal(n).astype(dtype)
    p = 0.6
    scale = 1 / (1 - p)
    _, mask = run_forward(x, p, 123, 0, backend)
    keep = D.dropout_keep_reference(n, p, 123, 0)
    dy = rng.standard_normal(n).astype(dtype)
    dx = np.full_like(dy, np.nan)
    D.dropout_backward(dy, mask, dx, scale, backend=backend)
    assert np.all(dx[~keep] == 0)
    np.testing.assert_array_equal(dx[keep], dy[keep] * dtype.type(scale))
    D.dropout_backward(dy, mask, dy, scale, backend=backend)   # in place
    np.testing.assert_array_equal(dy, dx)


def test_classic_dropout_scale_one_keeps_values(backend, rng):
    x = rng.standard_normal(100).astype(np.float64)
    out, mask = run_forward(x, 0.5, 9, 0, backend, scale=1.0)
    keep = np.unpackbits(mask, bitorder="little")[:100].astype(bool)
    np.testing.assert_array_equal(out, np.where(keep, x, 0.0))


def test_empty_input_is_a_no_op(backend):
    x = np.empty((0, 5), dtype=np.float32)
    out, mask = run_forward(x, 0.5, 1, 0, backend)
    assert out.shape == (0, 5) and mask.size == 0


# --- bad input: clean errors, raised before any compiled code runs -----------------------------------

@pytest.fixture
def no_kernel(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a kernel was reached with bad input")
    monkeypatch.setattr(_dispatch, "kernel", fail)


def _args(n=10, dtype=np.float32):
    x = np.ones(n, dtype=dtype)
    return {"x": x, "out": np.empty_like(x), "mask": np.empty(D.mask_nbytes(n), np.uint8),
            "p": 0.5, "scale": 2.0, "seed": 1, "offset": 0}


@pytest.mark.parametrize("change,exc,msg", [
    ({"p": 1}, ValueError, r"p must be in \[0, 1\), got 1"),
    ({"p": 1.5}, ValueError, r"p must be in \[0, 1\), got 1.5"),
    ({"p": -0.1}, ValueError, r"p must be in \[0, 1\)"),
    ({"p": float("nan")}, ValueError, "p must be finite"),
    ({"p": "0.5"}, TypeError, "p must be a real number"),
    ({"x": np.ones(10, dtype=np.int32)}, TypeError, "x must have dtype float32 or float64"),
    ({"x": [1.0] * 10}, TypeError, "x must be a numpy.ndarray"),
    ({"out": np.empty(10, dtype=np.float64)}, TypeError, "out must have dtype float32"),
    ({"out": np.empty(11, dtype=np.float32)}, ValueError, "out must have shape"),
    ({"mask": np.empty(1, np.uint8)}, ValueError, "mask must have mask_nbytes"),
    ({"mask": np.empty(2, np.int8)}, TypeError, "mask must have dtype uint8"),
    ({"x": np.ones(20, dtype=np.float32)[::2]}, ValueError, "x must be C-contiguous"),
    ({"seed": -1}, ValueError, "seed must be in"),
    ({"seed": 2**64}, ValueError, "seed must be in"),
    ({"seed": 1.0}, TypeError, "seed must be an integer"),
    ({"offset": -5}, ValueError, "offset must be in"),
    ({"scale": float("inf")}, ValueError, "scale must be finite"),
])
def test_forward_rejects_bad_arguments_naming_them(no_kernel, change, exc, msg):
    args = _args()
    args.update(change)
    with pytest.raises(exc, match=msg):
        D.dropout_forward(**args, backend="numba")


def test_read_only_outputs_are_rejected(no_kernel):
    args = _args()
    args["out"].flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        D.dropout_forward(**args)
    args = _args()
    args["mask"].flags.writeable = False
    with pytest.raises(ValueError, match="mask is read-only"):
        D.dropout_forward(**args)
    dy = np.ones(10, np.float32)
    dx = np.empty_like(dy)
    dx.flags.writeable = False
    with pytest.raises(ValueError, match="dx is read-only"):
        D.dropout_backward(dy, np.zeros(2, np.uint8), dx, 2.0)


def test_partially_overlapping_out_is_rejected(no_kernel):
    buf = np.ones(20, dtype=np.float32)
    with pytest.raises(ValueError, match="out must be x itself or not overlap x"):
        D.dropout_forward(buf[:10], buf[1:11], np.empty(2, np.uint8), 0.5, 2.0, 1, 0)


def test_backward_and_mask_reject_bad_arguments(no_kernel):
    dy = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="mask must have mask_nbytes"):
        D.dropout_backward(dy, np.zeros(3, np.uint8), np.empty_like(dy), 2.0)
    with pytest.raises(TypeError, match="dx must have dtype float32"):
        D.dropout_backward(dy, np.zeros(2, np.uint8), np.empty(10, np.float64), 2.0)
    with pytest.raises(TypeError, match="dy must have dtype float32 or float64"):
        D.dropout_backward(dy.astype(np.float16), np.zeros(2, np.uint8), dy, 2.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        D.dropout_mask(np.zeros(0, np.uint8), -1, 0.5, 1, 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        D.dropout_mask(np.zeros(2, np.uint8), 10.0, 0.5, 1, 0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1"):
        D.dropout_mask(np.zeros(2, np.uint8), 10, 1, 1, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 300), dtype=st.sampled_from(["float32", "float64", "int64", "float16"]),
       p=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0])),
       seed=st.integers(-2, 2**64 + 1), offset=st.integers(-2, 2**64 + 1),
       mask_extra=st.sampled_from([0, 0, 0, 1, -1]),
       backend=st.sampled_from(["numba", "cython"]))
def test_hypothesis_forward_is_correct_or_raises_cleanly(n, dtype, p, seed, offset, mask_extra,
                                                         backend):
    x = np.linspace(-1, 1, n).astype(dtype)
    out = np.empty_like(x)
    mask = np.empty(max(0, D.mask_nbytes(n) + mask_extra), dtype=np.uint8)
    try:
        D.dropout_forward(x, out, mask, p, 2.0, seed, offset, backend=backend)
    except (TypeError, ValueError):
        valid = (dtype in ("float32", "float64") and 0 <= p < 1 and 0 <= seed < 2**64
                 and 0 <= offset < 2**64 and mask_extra == 0)
        assert not valid
        return
    keep = D.dropout_keep_reference(n, p, seed, offset)
    np.testing.assert_array_equal(mask, packed(keep))
    np.testing.assert_array_equal(out, np.where(keep, x * x.dtype.type(2.0), 0))
