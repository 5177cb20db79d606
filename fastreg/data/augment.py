"""Data augmentation: random rotation, shift and flip of image batches; word dropout, swap and
move for tokenized text.

Images are ``(N, H, W)`` or ``(N, H, W, C)`` arrays (channels last). Every image transform is
vectorized over the batch: the per-image parameters are drawn as arrays and the output is one
gather with NumPy advanced indexing, not a Python loop over images. Inputs are never modified;
outputs have the input's dtype (integer images are rounded and clipped to the dtype's range).

Text is a list of sentences, each a list of tokens (any objects). The text transforms return new
lists and keep the multiset of tokens (swap, move) or their order (dropout).

Randomness: every function takes ``rng`` - None (fastreg's default generator, seeded by
``fastreg.manual_seed``), an int seed, a ``numpy.random.Generator`` or a ``fastreg.Generator``.
"""
from __future__ import annotations

import numpy as np

from .loader import _numpy_rng

__all__ = [
    "random_flip",
    "random_rotation",
    "random_shift",
    "rotate",
    "shift",
    "word_dropout",
    "word_move",
    "word_swap",
]

#: Pixels per chunk of whole images. Small on purpose: the ~10 float64 temporaries of a chunk
#: (128 KiB each) stay in L2 and are recycled by malloc; multi-MB temporaries are returned to the
#: OS and page-faulted back in on every call, which made rotation 5x slower (measured).
_CHUNK_PIXELS = 1 << 14
#: |cos| or |sin| below this is snapped to 0, so that rotations by multiples of 90 degrees are
#: exact permutations of the pixels (cos(pi/2) is 6e-17, not 0).
_SNAP = 1e-9


# --------------------------------------------------------------------------------------------
# argument checks

def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype.kind not in "fiu":
        raise TypeError(f"images must have a real numeric dtype, got {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images must have H >= 1 and W >= 1, got shape {images.shape}")
    return images


def _check_real(name: str, value, low=None, high=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return v


def _check_fill(fill) -> float:
    return _check_real("fill", fill)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to the image dtype (round + clip for integer images)."""
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def _chunks(n: int, pixels_per_image: int):
    step = max(1, _CHUNK_PIXELS // max(1, pixels_per_image))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _padded(images: np.ndarray, fill: float, dtype: np.dtype) -> np.ndarray:
    """Images framed by ``fill`` (1 pixel before, 2 after), flattened to (N·(H+3)·(W+3), *C).

    Source coordinates are clipped into [-1, H] × [-1, W] before indexing; everything outside
    the image then reads the frame (``fill``), so each gather is one ``take`` with no masks. The
    second trailing pixel holds the (r0 + 1, c0 + 1) neighbour of a coordinate clipped to H / W.
    """
    n, H, W = images.shape[:3]
    P = np.empty((n, H + 3, W + 3, *images.shape[3:]), dtype=dtype)
    P[...] = _cast_like(np.asarray(fill, dtype=np.float64), dtype)
    P[:, 1:H + 1, 1:W + 1] = images
    return P.reshape(n * (H + 3) * (W + 3), *images.shape[3:])


def _flat_index(rows: np.ndarray, cols: np.ndarray, n: int, H: int, W: int) -> np.ndarray:
    """Index into :func:`_padded` of (image b, rows, cols) for ``rows``/``cols`` of shape
    (n, H, W) (or broadcastable), already clipped to [-1, H] × [-1, W]; computed in the float or
    int dtype of ``rows`` (exact: every value is an integer far below 2**53) and cast once."""
    base = ((np.arange(n)[:, None, None] * (H + 3) + 1) * (W + 3) + 1).astype(rows.dtype)
    idx = np.add(np.multiply(rows, W + 3), np.add(cols, base))
    return idx.astype(np.intp, copy=False)


def _lerp_into(b: np.ndarray, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``b := a + t * (b - a)`` in place."""
    np.subtract(b, a, out=b)
    np.multiply(b, t, out=b)
    return np.add(b, a, out=b)


# --------------------------------------------------------------------------------------------
# rotation

def rotate(images: np.ndarray, degrees, interpolation: str = "bilinear",
           fill: float = 0.0) -> np.ndarray:
    r"""Rotate each image counter-clockwise by ``degrees`` about its centre.

    Inverse mapping: output pixel (r, c) samples the input at the point obtained by rotating
    its offset from the centre :math:`(c_y, c_x) = ((H-1)/2, (W-1)/2)` by :math:`-\theta`. With
    :math:`x = c - c_x`, :math:`y = c_y - r` (y up, as the image is displayed),

    .. math:: x_s = x\cos\theta + y\sin\theta,\quad y_s = -x\sin\theta + y\cos\theta,
              \quad (r_s, c_s) = (c_y - y_s,\ c_x + x_s).

    Samples falling outside the image take ``fill``. ``rotate(img, 90, "nearest")`` of a square
    image equals ``np.rot90(img)`` (axes 1, 2).

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
    degrees : float or array of shape (N,)
        Angle per image (one for all when scalar), counter-clockwise.
    interpolation : {"bilinear", "nearest"}
        Bilinear interpolation computes in float64 for float64 images, float32 otherwise.
    fill : float
        Value of pixels whose source lies outside the image.

    Returns
    -------
    ndarray of the same shape and dtype.
    """
    images = _check_images(images)
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    fill = _check_fill(fill)
    n, H, W = images.shape[:3]
    try:
        deg = np.asarray(degrees, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"degrees must be a number or an array of numbers, got {degrees!r}") \
            from None
    if deg.ndim == 0:
        deg = np.full(n, float(deg))
    if deg.shape != (n,):
        raise ValueError(f"degrees must be a scalar or have shape ({n},), got {deg.shape}")
    if not np.all(np.isfinite(deg)):
        raise ValueError("degrees must be finite")

    nearest = interpolation == "nearest"
    work = images.dtype if nearest else np.result_type(images.dtype, np.float32)
    theta = np.deg2rad(deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # Exact quarter turns: cos(pi/2) is 6e-17, not 0; snapping it makes 90/180/270 degrees an
    # exact permutation of the pixels.
    cos[np.abs(cos) < _SNAP] = 0.0
    sin[np.abs(sin) < _SNAP] = 0.0
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    y = (cy - np.arange(H, dtype=np.float64))[None, :, None]  # (1, H, 1)
    x = (np.arange(W, dtype=np.float64) - cx)[None, None, :]  # (1, 1, W)
    out = np.empty_like(images)
    chan = (slice(None),) * 3 + (None,) * (images.ndim - 3)  # weights (B,H,W) -> channels
    for sl in _chunks(n, H * W):
        flat = _padded(images[sl], fill, work)
        c = cos[sl, None, None]
        s = sin[sl, None, None]
        # source coordinates (B, H, W): r_s = c_y + x sin - y cos, c_s = c_x + x cos + y sin
        rows = (cy + x * s) - y * c
        cols = (cx + x * c) + y * s
        np.clip(rows, -1, H, out=rows)
        np.clip(cols, -1, W, out=cols)
        if nearest:
            out[sl] = flat.take(_flat_index(np.rint(rows), np.rint(cols), rows.shape[0], H, W),
                                axis=0)
            continue
        r0, c0 = np.floor(rows), np.floor(cols)
        fr = np.subtract(rows, r0, out=rows).astype(work, copy=False)[chan]
        fc = np.subtract(cols, c0, out=cols).astype(work, copy=False)[chan]
        i00 = _flat_index(r0, c0, rows.shape[0], H, W)
        # top = v00 + fc (v01 - v00), bottom likewise one row down, out = top + fr (bottom - top).
        # Written with out= ufunc calls: `a + b * (c - d)` on large temporaries costs ms in
        # NumPy's temporary-elision check.
        top, v01 = flat.take(i00, axis=0), flat.take(i00 + 1, axis=0)
        _lerp_into(v01, top, fc)  # v01 := top + fc * (v01 - top)
        i00 += W + 3  # next row
        bottom, v11 = flat.take(i00, axis=0), flat.take(i00 + 1, axis=0)
        _lerp_into(v11, bottom, fc)
        _lerp_into(v11, v01, fr)
        out[sl] = _cast_like(v11, images.dtype)
    return out


def random_rotation(images: np.ndarray, max_degrees, rng=None, interpolation: str = "bilinear",
                    fill: float = 0.0, return_params: bool = False):
    """Rotate each image by an angle drawn uniformly from ``[-max_degrees, max_degrees]``.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
    max_degrees : float >= 0, or (low, high)
        Range of the counter-clockwise angle in degrees.
    rng : None, int, numpy.random.Generator or fastreg.Generator
    interpolation : {"bilinear", "nearest"}
    fill : float
        Value of pixels rotated in from outside the image.
    return_params : bool
        Also return the drawn angles (shape (N,), degrees).

    Returns
    -------
    ndarray (and the angles when ``return_params``).
    """
    images = _check_images(images)
    if isinstance(max_degrees, (tuple, list)):
        if len(max_degrees) != 2:
            raise ValueError(f"max_degrees must be a number or (low, high), got {max_degrees!r}")
        lo = _check_real("max_degrees[0]", max_degrees[0])
        hi = _check_real("max_degrees[1]", max_degrees[1])
        if lo > hi:
            raise ValueError(f"max_degrees must have low <= high, got {max_degrees!r}")
    else:
        hi = _check_real("max_degrees", max_degrees, low=0.0)
        lo = -hi
    gen = _numpy_rng(rng)
    angles = gen.uniform(lo, hi, size=images.shape[0])
    out = rotate(images, angles, interpolation=interpolation, fill=fill)
    return (out, angles) if return_params else out


# --------------------------------------------------------------------------------------------
# shift

def shift(images: np.ndarray, dy, dx, fill: float = 0.0) -> np.ndarray:
    """Translate each image by an integer number of pixels: content moves ``dy`` rows down and
    ``dx`` columns right; pixels shifted in take ``fill``.

    ``out[n, r, c] = images[n, r - dy[n], c - dx[n]]`` where that index is inside the image.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
    dy, dx : int or integer array of shape (N,)
    fill : float
    """
    images = _check_images(images)
    fill = _check_fill(fill)
    n, H, W = images.shape[:3]
    shifts = []
    for name, d in (("dy", dy), ("dx", dx)):
        a = np.asarray(d)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer or an integer array, got dtype {a.dtype}")
        a = np.broadcast_to(a.astype(np.intp), (n,)) if a.ndim == 0 else a.astype(np.intp)
        if a.shape != (n,):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), got {a.shape}")
        shifts.append(a)
    dy, dx = shifts
    out = np.empty_like(images)
    for sl in _chunks(n, H * W):
        flat = _padded(images[sl], fill, images.dtype)
        rows = np.clip(np.arange(H)[None, :, None] - dy[sl, None, None], -1, H)  # (B, H, 1)
        cols = np.clip(np.arange(W)[None, None, :] - dx[sl, None, None], -1, W)  # (B, 1, W)
        out[sl] = flat.take(_flat_index(rows, cols, rows.shape[0], H, W), axis=0)
    return out


def _max_pixels(name: str, value, size: int) -> int:
    """int -> pixels; float in [0, 1] -> fraction of ``size`` (floored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be an int (pixels) or a float fraction, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 pixels, got {value!r}")
        return int(value)
    return int(np.floor(_check_real(name, value, low=0.0, high=1.0) * size))


def random_shift(images: np.ndarray, max_shift, rng=None, fill: float = 0.0,
                 return_params: bool = False):
    """Shift each image by integers drawn uniformly from ``[-max, max]`` along each axis.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
    max_shift : int, float or (max_dy, max_dx)
        An int is a number of pixels; a float in [0, 1] a fraction of the height (rows) and
        width (columns), floored to whole pixels.
    rng : None, int, numpy.random.Generator or fastreg.Generator
    fill : float
    return_params : bool
        Also return the drawn shifts, an int array of shape (N, 2) holding (dy, dx).
    """
    images = _check_images(images)
    H, W = images.shape[1], images.shape[2]
    if isinstance(max_shift, (tuple, list)):
        if len(max_shift) != 2:
            raise ValueError(f"max_shift must be a number or (max_dy, max_dx), got {max_shift!r}")
        my = _max_pixels("max_shift[0]", max_shift[0], H)
        mx = _max_pixels("max_shift[1]", max_shift[1], W)
    else:
        my = _max_pixels("max_shift", max_shift, H)
        mx = _max_pixels("max_shift", max_shift, W)
    gen = _numpy_rng(rng)
    n = images.shape[0]
    shifts = np.stack([gen.integers(-my, my + 1, size=n), gen.integers(-mx, mx + 1, size=n)],
                      axis=1)
    out = shift(images, shifts[:, 0], shifts[:, 1], fill=fill)
    return (out, shifts) if return_params else out


# --------------------------------------------------------------------------------------------
# flip

def random_flip(images: np.ndarray, horizontal: bool = True, vertical: bool = False,
                p: float = 0.5, rng=None, return_params: bool = False):
    """Mirror each image left-right (``horizontal``) and/or top-bottom (``vertical``), each
    independently with probability ``p``.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
    horizontal, vertical : bool
        Which flips may happen.
    p : float in [0, 1]
        Probability of each enabled flip, per image.
    rng : None, int, numpy.random.Generator or fastreg.Generator
    return_params : bool
        Also return the boolean masks ``(flipped_horizontally, flipped_vertically)``, shape (N,).
    """
    images = _check_images(images)
    p = _check_real("p", p, low=0.0, high=1.0)
    gen = _numpy_rng(rng)
    n = images.shape[0]
    out = images.copy()
    h = gen.random(n) < p if horizontal else np.zeros(n, dtype=bool)
    v = gen.random(n) < p if vertical else np.zeros(n, dtype=bool)
    if h.any():
        out[h] = out[h][:, :, ::-1]
    if v.any():
        out[v] = out[v][:, ::-1]
    return (out, (h, v)) if return_params else out


# --------------------------------------------------------------------------------------------
# text

def _check_tokens(tokens) -> list[list]:
    if not isinstance(tokens, (list, tuple)):
        raise TypeError(f"tokens must be a list of token lists, got {type(tokens).__name__}")
    for i, sentence in enumerate(tokens):
        if not isinstance(sentence, (list, tuple)):
            raise TypeError(f"tokens[{i}] must be a list of tokens, got "
                            f"{type(sentence).__name__} (split strings into tokens first)")
    return [list(s) for s in tokens]


def _ops_per_sentence(lengths: np.ndarray, n, p, n_name: str) -> np.ndarray:
    """Number of operations per sentence: ``n`` each, or ``max(1, int(p * len))`` (as EDA)."""
    if n is not None and p is not None:
        raise ValueError(f"give {n_name} or p, not both")
    if p is not None:
        p = _check_real("p", p, low=0.0, high=1.0)
        counts = np.maximum(1, (p * lengths).astype(np.int64)) if p > 0 else \
            np.zeros_like(lengths)
    else:
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{n_name} must be an integer, got {n!r}")
        if n < 0:
            raise ValueError(f"{n_name} must be >= 0, got {n!r}")
        counts = np.full(lengths.shape, int(n), dtype=np.int64)
    return np.where(lengths >= 2, counts, 0)  # nothing to swap/move in 0- or 1-token sentences


def _pairs(gen: np.random.Generator, lengths: np.ndarray, counts: np.ndarray):
    """For every operation of every sentence, two distinct positions (i, j) in [0, len)."""
    L = np.repeat(lengths, counts)
    i = (gen.random(L.size) * L).astype(np.int64)
    j = (gen.random(L.size) * (L - 1)).astype(np.int64)
    j += j >= i  # skip i: uniform over the other positions
    bounds = np.concatenate(([0], np.cumsum(counts)))
    return i, j, bounds


def word_dropout(tokens, p: float, rng=None) -> list[list]:
    """Drop each token independently with probability ``p``, keeping the order of the rest.

    A non-empty sentence never becomes empty: if every token was dropped, one of them, chosen
    at random, is kept (as in EDA's random deletion).
    """
    sentences = _check_tokens(tokens)
    p = _check_real("p", p, low=0.0, high=1.0)
    gen = _numpy_rng(rng)
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    keep = gen.random(int(lengths.sum())) >= p
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    out = []
    for k, s in enumerate(sentences):
        mask = keep[bounds[k]:bounds[k + 1]]
        kept = [t for t, m in zip(s, mask) if m]
        if s and not kept:
            kept = [s[int(gen.integers(len(s)))]]
        out.append(kept)
    return out


def word_swap(tokens, n_swaps: int | None = None, p: float | None = None,
              rng=None) -> list[list]:
    """Swap two distinct random positions ``n_swaps`` times per sentence (default 1), or
    ``max(1, int(p * len))`` times when ``p`` is given. Sentences shorter than 2 are unchanged.
    """
    sentences = _check_tokens(tokens)
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    counts = _ops_per_sentence(lengths, n_swaps, p, "n_swaps")
    gen = _numpy_rng(rng)
    i, j, bounds = _pairs(gen, lengths, counts)
    for k, s in enumerate(sentences):
        for a, b in zip(i[bounds[k]:bounds[k + 1]], j[bounds[k]:bounds[k + 1]]):
            s[a], s[b] = s[b], s[a]
    return sentences


def word_move(tokens, n_moves: int | None = None, p: float | None = None,
              rng=None) -> list[list]:
    """Move a random token to a different random position, ``n_moves`` times per sentence
    (default 1) or ``max(1, int(p * len))`` times when ``p`` is given.

    Each move removes the token at position i and re-inserts it so that it ends at position
    j != i. Sentences shorter than 2 are unchanged.
    """
    sentences = _check_tokens(tokens)
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    counts = _ops_per_sentence(lengths, n_moves, p, "n_moves")
    gen = _numpy_rng(rng)
    i, j, bounds = _pairs(gen, lengths, counts)
    for k, s in enumerate(sentences):
        for a, b in zip(i[bounds[k]:bounds[k + 1]], j[bounds[k]:bounds[k + 1]]):
            s.insert(int(b), s.pop(int(a)))
    return sentences
