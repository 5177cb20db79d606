"""Augmentation: invariants, an independent float64 reference for rotation, seeding, bad input."""
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastreg
from fastreg.data import augment as A

IMAGE_DTYPES = [np.float32, np.float64, np.uint8]


def make_images(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape) * 200
    return x.astype(dtype) if np.dtype(dtype).kind == "f" else np.rint(x).astype(dtype)


def rotate_reference(img, degrees, nearest, fill):
    """Per-pixel loop: inverse-map each output pixel, sample with padding = fill (float64)."""
    H, W = img.shape[:2]
    th = math.radians(degrees)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    out = np.zeros(img.shape, dtype=np.float64)

    def pix(r, c):
        if 0 <= r < H and 0 <= c < W:
            return img[r, c].astype(np.float64)
        return np.full(img.shape[2:], fill, dtype=np.float64)

    for r in range(H):
        for c in range(W):
            x, y = c - cx, cy - r
            xs = x * math.cos(th) + y * math.sin(th)
            ys = -x * math.sin(th) + y * math.cos(th)
            rs, cs = cy - ys, cx + xs
            if nearest:
                out[r, c] = pix(round(rs), round(cs))
            else:
                r0, c0 = math.floor(rs), math.floor(cs)
                fr, fc = rs - r0, cs - c0
                out[r, c] = ((1 - fr) * (1 - fc) * pix(r0, c0) + (1 - fr) * fc * pix(r0, c0 + 1)
                             + fr * (1 - fc) * pix(r0 + 1, c0) + fr * fc * pix(r0 + 1, c0 + 1))
    return out


# ---------------------------------------------------------------------------------------------
# rotation

@pytest.mark.parametrize("shape", [(3, 7, 9), (2, 8, 5, 3), (1, 1, 1), (2, 2, 7)])
@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_rotate_matches_independent_reference(shape, interp):
    img = make_images(shape)
    degrees = np.array([17.0, -133.5, 61.0][:shape[0]])
    out = A.rotate(img, degrees, interpolation=interp, fill=-1.0)
    for i in range(shape[0]):
        ref = rotate_reference(img[i], degrees[i], interp == "nearest", -1.0)
        np.testing.assert_allclose(out[i], ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_rotation_by_zero_is_identity(dtype, interp):
    img = make_images((33, 7, 7, 2), dtype)
    assert np.array_equal(A.rotate(img, 0.0, interpolation=interp), img)
    out = A.random_rotation(img, 0.0, rng=1, interpolation=interp)
    assert np.array_equal(out, img) and out.dtype == img.dtype


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_equal_rot90(interp, k):
    img = make_images((5, 6, 6, 3))
    out = A.rotate(img, 90.0 * k, interpolation=interp)
    assert np.array_equal(out, np.rot90(img, k, axes=(1, 2)))
    out, angles = A.random_rotation(img, (90.0 * k, 90.0 * k), rng=0, interpolation=interp,
                                    return_params=True)
    assert np.all(angles == 90.0 * k)
    assert np.array_equal(out, np.rot90(img, k, axes=(1, 2)))


def test_random_rotation_draws_within_range_and_applies_them():
    img = make_images((257, 9, 9), np.float32)
    out, angles = A.random_rotation(img, 30, rng=3, return_params=True)
    assert angles.shape == (257,) and np.all(np.abs(angles) <= 30)
    assert angles.min() < -20 and angles.max() > 20  # uniform over the range
    np.testing.assert_array_equal(out, A.rotate(img, angles))
    assert out.dtype == np.float32


def test_rotation_of_integer_images_rounds_and_clips():
    img = np.full((2, 5, 5), 255, dtype=np.uint8)
    out = A.rotate(img, 45.0, fill=300.0)  # fill beyond the dtype range is clipped
    assert out.dtype == np.uint8 and np.all(out == 255)


# ---------------------------------------------------------------------------------------------
# shift

@pytest.mark.parametrize("channels", [None, 2])
def test_shift_moves_a_single_bright_pixel_by_the_drawn_amount(channels):
    n, H, W = 257, 11, 13
    shape = (n, H, W) if channels is None else (n, H, W, channels)
    img = np.zeros(shape)
    img[:, 5, 6] = 1.0
    out, shifts = A.random_shift(img, 3, rng=5, return_params=True)
    assert shifts.shape == (n, 2) and np.abs(shifts).max() == 3
    assert set(np.unique(shifts[:, 0])) == set(range(-3, 4))
    for i in range(n):
        pos = np.argwhere(out[i] == 1.0)[:, :2]
        assert np.array_equal(np.unique(pos, axis=0), [[5 + shifts[i, 0], 6 + shifts[i, 1]]])
        assert out[i].sum() == (1 if channels is None else channels)


def test_shift_semantics_and_fill():
    img = np.arange(12.0).reshape(1, 3, 4)
    out = A.shift(img, 1, -2, fill=-1)
    ref = np.full((3, 4), -1.0)
    ref[1:, :2] = img[0, :2, 2:]
    assert np.array_equal(out[0], ref)
    assert np.array_equal(A.shift(img, 5, 0), np.zeros_like(img))  # shifted out entirely


def test_shift_fraction_and_per_axis_limits():
    img = make_images((300, 8, 12))
    _, s = A.random_shift(img, 0.25, rng=0, return_params=True)
    assert np.abs(s[:, 0]).max() == 2 and np.abs(s[:, 1]).max() == 3
    _, s = A.random_shift(img, (0, 4), rng=0, return_params=True)
    assert np.all(s[:, 0] == 0) and np.abs(s[:, 1]).max() == 4


# ---------------------------------------------------------------------------------------------
# flip

@pytest.mark.parametrize("shape", [(257, 5, 6), (33, 4, 7, 3)])
@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_flip_twice_with_same_seed_is_identity(shape, dtype):
    img = make_images(shape, dtype)
    once = A.random_flip(img, horizontal=True, vertical=True, rng=7)
    assert not np.array_equal(once, img)
    assert np.array_equal(A.random_flip(once, horizontal=True, vertical=True, rng=7), img)


def test_flip_masks_say_which_images_were_flipped():
    img = make_images((1000, 4, 5))
    out, (h, v) = A.random_flip(img, p=0.3, rng=2, return_params=True)
    assert not v.any() and 200 < h.sum() < 400
    assert np.array_equal(out[h], img[h][:, :, ::-1])
    assert np.array_equal(out[~h], img[~h])
    out, (h, v) = A.random_flip(img, horizontal=False, vertical=True, p=1.0, rng=2,
                                return_params=True)
    assert v.all() and np.array_equal(out, img[:, ::-1])
    assert np.array_equal(A.random_flip(img, vertical=True, p=0.0, rng=2), img)


# ---------------------------------------------------------------------------------------------
# common: purity, seeding

@pytest.mark.parametrize("fn", [
    lambda x, r: A.random_rotation(x, 40, rng=r),
    lambda x, r: A.random_rotation(x, 40, rng=r, interpolation="nearest"),
    lambda x, r: A.random_shift(x, 2, rng=r),
    lambda x, r: A.random_flip(x, vertical=True, rng=r),
])
def test_image_transforms_are_pure_and_seeded(fn):
    img = make_images((7, 6, 5, 2))
    before = img.copy()
    a = fn(img, 42)
    assert np.array_equal(img, before)  # input untouched
    assert np.array_equal(a, fn(img, 42))
    assert np.array_equal(a, fn(img, np.random.default_rng(42)))
    assert np.array_equal(fn(img, fastreg.Generator(5)), fn(img, fastreg.Generator(5)))
    fastreg.manual_seed(9)
    b = fn(img, None)
    fastreg.manual_seed(9)
    assert np.array_equal(b, fn(img, None))
    assert a.shape == img.shape and a.dtype == img.dtype


@pytest.mark.parametrize("chunk", [1, 50, 130])
def test_chunking_does_not_change_results(monkeypatch, chunk):
    img = make_images((7, 6, 5, 2))
    angles = np.linspace(-170, 170, 7)
    dy, dx = np.arange(-3, 4), np.arange(3, -4, -1)
    whole = [A.rotate(img, angles), A.rotate(img, angles, "nearest"), A.shift(img, dy, dx)]
    monkeypatch.setattr(A, "_CHUNK_PIXELS", chunk)  # 1 image per chunk, 1-2, 4 + remainder
    parts = [A.rotate(img, angles), A.rotate(img, angles, "nearest"), A.shift(img, dy, dx)]
    for w, p in zip(whole, parts):
        assert np.array_equal(w, p)


def test_empty_batch():
    img = np.zeros((0, 4, 4))
    for out in (A.random_rotation(img, 10, rng=0), A.random_shift(img, 1, rng=0),
                A.random_flip(img, rng=0)):
        assert out.shape == (0, 4, 4)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: A.random_flip([[[1.0]]]), TypeError, "images must be a numpy.ndarray"),
    (lambda: A.random_flip(np.zeros((4, 4))), ValueError, r"images must have shape.*\(4, 4\)"),
    (lambda: A.random_flip(np.zeros((1, 2, 2, 2, 2))), ValueError, "images"),
    (lambda: A.random_flip(np.zeros((1, 2, 2), bool)), TypeError, "dtype"),
    (lambda: A.random_flip(np.zeros((1, 0, 2))), ValueError, "H >= 1"),
    (lambda: A.random_flip(np.zeros((1, 2, 2)), p=1.5), ValueError, "p.*1.5"),
    (lambda: A.random_flip(np.zeros((1, 2, 2)), rng="seed"), TypeError, "rng"),
    (lambda: A.random_rotation(np.zeros((1, 2, 2)), -5), ValueError, "max_degrees"),
    (lambda: A.random_rotation(np.zeros((1, 2, 2)), (10, 5)), ValueError, "low <= high"),
    (lambda: A.random_rotation(np.zeros((1, 2, 2)), 5, interpolation="cubic"), ValueError,
     "interpolation.*'cubic'"),
    (lambda: A.rotate(np.zeros((3, 2, 2)), [1.0, 2.0]), ValueError, r"degrees.*\(3,\)"),
    (lambda: A.rotate(np.zeros((1, 2, 2)), np.nan), ValueError, "finite"),
    (lambda: A.rotate(np.zeros((1, 2, 2)), 5, fill=np.inf), ValueError, "fill"),
    (lambda: A.random_shift(np.zeros((1, 2, 2)), -1), ValueError, "max_shift"),
    (lambda: A.random_shift(np.zeros((1, 2, 2)), 1.5), ValueError, "max_shift"),
    (lambda: A.random_shift(np.zeros((1, 2, 2)), "2"), TypeError, "max_shift"),
    (lambda: A.shift(np.zeros((1, 2, 2)), 0.5, 0), TypeError, "dy"),
    (lambda: A.shift(np.zeros((2, 2, 2)), [1, 2, 3], 0), ValueError, "dy"),
])
def test_image_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@settings(max_examples=60, deadline=None)
@given(ndim=st.integers(1, 5), n=st.integers(0, 4), h=st.integers(0, 6), w=st.integers(1, 6),
       c=st.integers(1, 3), dtype=st.sampled_from(["float32", "float64", "uint8", "int16", "bool",
                                                    "complex64"]),
       op=st.sampled_from(["rot", "rot_nearest", "shift", "flip"]),
       amount=st.one_of(st.floats(-2, 100), st.just(math.nan)), seed=st.integers(0, 100))
def test_image_hypothesis(ndim, n, h, w, c, dtype, op, amount, seed):
    shape = (n, h, w, c)[:ndim] if ndim <= 4 else (n, h, w, c, 2)
    img = np.ones(shape, dtype=dtype)
    try:
        if op == "rot":
            out = A.random_rotation(img, amount, rng=seed)
        elif op == "rot_nearest":
            out = A.random_rotation(img, amount, rng=seed, interpolation="nearest")
        elif op == "shift":
            out = A.random_shift(img, int(amount) if amount >= 1.5 else amount, rng=seed)
        else:
            out = A.random_flip(img, vertical=True, p=amount, rng=seed)
    except (TypeError, ValueError):
        return
    assert ndim in (3, 4) and h >= 1 and dtype not in ("bool", "complex64")
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.all((out == 0) | (out == 1)) or op == "rot"  # values come from the image or fill


# ---------------------------------------------------------------------------------------------
# text

SENTS = [["the", "cat", "sat", "on", "the", "mat"], ["a", "b"], ["solo"], [],
         list(range(20))]


def is_subsequence(sub, seq):
    it = iter(seq)
    return all(any(t == s for s in it) for t in sub)


def test_word_dropout_keeps_order_and_drops_about_p():
    out = A.word_dropout(SENTS, 0.3, rng=0)
    assert len(out) == len(SENTS)
    for o, s in zip(out, SENTS):
        assert is_subsequence(o, s) and (len(o) >= 1 or not s)
    big = [list(range(50))] * 200
    kept = sum(len(s) for s in A.word_dropout(big, 0.3, rng=1)) / (50 * 200)
    assert abs(kept - 0.7) < 0.02
    assert A.word_dropout(SENTS, 0.0, rng=0) == SENTS
    assert [len(s) for s in A.word_dropout(SENTS, 1.0, rng=0)] == [1, 1, 1, 0, 1]


@pytest.mark.parametrize("fn", [A.word_swap, A.word_move])
def test_swap_and_move_preserve_the_token_multiset(fn):
    for kwargs in ({}, {"p": 0.5}, {fn.__code__.co_varnames[1]: 3}):
        out = fn(SENTS, rng=4, **kwargs)
        assert [Counter(o) for o in out] == [Counter(s) for s in SENTS]
        assert out[4] != SENTS[4]  # distinct tokens: the order did change
        assert out[2:4] == [["solo"], []]


def test_single_swap_changes_exactly_two_positions():
    s = [list("abcdefgh")] * 100
    for o in A.word_swap(s, n_swaps=1, rng=2):
        diff = [i for i in range(8) if o[i] != s[0][i]]
        assert len(diff) == 2 and o[diff[0]] == s[0][diff[1]] and o[diff[1]] == s[0][diff[0]]


def test_single_move_is_one_removal_and_one_insertion():
    s = list("abcdefgh")
    for o in A.word_move([s] * 100, n_moves=1, rng=3):
        assert o != s
        assert any(o[:j] + o[j + 1:] == [t for t in s if t != o[j]] for j in range(8))


@pytest.mark.parametrize("fn, kw", [(A.word_dropout, {"p": 0.4}), (A.word_swap, {"n_swaps": 2}),
                                    (A.word_move, {"p": 0.3})])
def test_text_transforms_are_pure_and_seeded(fn, kw):
    inp = [list(s) for s in SENTS]
    a = fn(inp, rng=11, **kw)
    assert inp == SENTS
    assert a == fn(inp, rng=11, **kw)
    assert a is not inp and all(x is not y for x, y in zip(a, inp))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: A.word_dropout("the cat", 0.1), TypeError, "tokens"),
    (lambda: A.word_dropout(["the cat"], 0.1), TypeError, r"tokens\[0\].*str"),
    (lambda: A.word_dropout(SENTS, 1.5), ValueError, "p"),
    (lambda: A.word_swap(SENTS, n_swaps=1, p=0.1), ValueError, "not both"),
    (lambda: A.word_swap(SENTS, n_swaps=-1), ValueError, "n_swaps"),
    (lambda: A.word_move(SENTS, n_moves=1.5), TypeError, "n_moves"),
    (lambda: A.word_move(SENTS, p=-0.1), ValueError, "p"),
])
def test_text_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
