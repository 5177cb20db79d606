"""Mini-batch iteration: :class:`DataLoader` over in-memory NumPy arrays.

Mini-batch SGD draws k samples without replacement per update and visits every sample once per
epoch: an epoch is one permutation of ``range(N)`` cut into ⌈N/k⌉ batches (⌊N/k⌋ with
``drop_last``, which drops the short remainder batch).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

from .._checks import check_int as _check_int
from .._random import Generator, default_generator

__all__ = ["DataLoader", "check_sample_weight"]

_MASK64 = (1 << 64) - 1


def _numpy_rng(rng, name: str = "rng") -> np.random.Generator:
    """Resolve the ``rng``/``seed`` argument every data function takes.

    None: fastreg's default generator (seeded by ``fastreg.manual_seed``); an int: a fresh
    generator with that seed; a ``numpy.random.Generator`` or ``fastreg.Generator``: itself.
    """
    if rng is None:
        return default_generator.numpy
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, Generator):
        return rng.numpy
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"{name} as a seed must be >= 0, got {rng!r}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name} must be None, an int seed, a numpy.random.Generator or a "
                    f"fastreg.Generator, got {type(rng).__name__}")


class DataLoader:
    """Iterate over ``(xb, yb)`` mini-batches of in-memory arrays, reshuffled every epoch.

    Each epoch visits every sample exactly once (sampling without replacement). With
    ``shuffle=True`` the order of epoch ``e`` is a permutation drawn from a generator seeded by
    ``(seed, e)``: it depends only on the seed and the epoch number, so a run resumed from
    :meth:`state_dict` (or after :meth:`set_epoch`) sees the same batches as an uninterrupted one.

    Parameters
    ----------
    X : ndarray, shape (N, ...)
        Inputs; batches are taken along axis 0.
    y : ndarray, shape (N, ...), optional
        Targets. Without them the loader yields ``(xb, None)``.
    batch_size : int, default 256
        Samples per batch k.
    shuffle : bool, default True
        Draw a new permutation each epoch; False keeps the stored order.
    drop_last : bool, default False
        Drop the last batch when it is shorter than ``batch_size``.
    seed : int, optional
        Seed of the shuffling. None draws one from fastreg's default generator at construction
        (so ``fastreg.manual_seed`` makes runs repeatable).
    shard : (rank, world), optional
        Data parallelism: this loader yields rank ``rank``'s part of every global batch of
        ``world * batch_size`` samples. Every rank computes the same global order of the epoch
        (same ``seed``), cuts it into global batches, and takes the ``rank``-th of ``world``
        near-equal contiguous pieces of each (``numpy.array_split``: exactly ``batch_size``
        rows for a full batch). Each sample is seen exactly once per epoch across the ranks, all
        ranks run the same number of steps, and the union of the ranks' step-i batches is the
        step-i batch of an unsharded loader with ``batch_size * world``. A final global batch
        of fewer than ``world`` samples is dropped (a rank cannot train on nothing).
        :meth:`global_batch_size` gives the global size of each step.
    sample_weight : array-like, shape (N,), optional
        Per-sample weights (finite, >= 0, positive sum); the loader then yields
        ``(xb, yb, wb)`` triples, the weights of the batch's samples.
    dtype : numpy dtype, optional
        The dtype of the ``xb`` batches (e.g. the model's ``float32`` for ``float64`` data): each
        batch is cast as it is gathered, without a float32 copy of the whole dataset. None keeps
        ``X``'s dtype.

    Notes
    -----
    Batches are C-contiguous arrays. Unshuffled batches (in ``X``'s dtype) are views of the
    (contiguous) dataset, so a consumer must not write into them. Shuffled batches are gathered
    (``X[idx]``, one pass) into buffers the loader reuses, two per array, used in turn: the
    buffer of batch ``i`` is written again for batch ``i + 2`` only if nothing outside the loader
    references it any more (no variable, list, view or model cache: Python's reference count
    says so); otherwise batch ``i + 2`` goes into a fresh buffer. So a plain loop allocates
    nothing per batch, and a batch that is kept (``batches.append(xb)``) is never overwritten:
    every batch a user can still see holds its own data, as with fresh copies.

    Examples
    --------
    >>> loader = DataLoader(X, y, batch_size=256, seed=0)
    >>> for epoch in range(epochs):
    ...     for xb, yb in loader:
    ...         ...
    """

    def __init__(self, X: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256,
                 shuffle: bool = True, drop_last: bool = False, seed: int | None = None,
                 shard: tuple[int, int] | None = None,
                 sample_weight: np.ndarray | None = None, dtype=None) -> None:
        if not isinstance(X, np.ndarray):
            raise TypeError(f"X must be a numpy.ndarray, got {type(X).__name__}")
        if X.ndim < 1:
            raise ValueError(f"X must have a sample axis (ndim >= 1), got shape {X.shape}")
        if y is not None:
            if not isinstance(y, np.ndarray):
                raise TypeError(f"y must be a numpy.ndarray or None, got {type(y).__name__}")
            if y.ndim < 1 or y.shape[0] != X.shape[0]:
                raise ValueError(f"X and y must have the same number of samples, got "
                                 f"X.shape={X.shape} and y.shape={y.shape}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.rank, self.world = _check_shard(shard)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if seed is None:
            seed = int(default_generator.numpy.integers(0, 2**63))
        else:
            seed = _check_int("seed", seed, 0)
        self.seed = seed & _MASK64
        self.epoch = 0
        # Contiguous once here, so unshuffled batches are contiguous views.
        self.X = np.ascontiguousarray(X)
        self.y = None if y is None else np.ascontiguousarray(y)
        self.sample_weight = None if sample_weight is None else \
            check_sample_weight(sample_weight, X.shape[0])
        if dtype is not None:
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise TypeError(f"dtype must be a numpy dtype or None, got {dtype!r}") from None
            if not np.can_cast(self.X.dtype, dtype, casting="same_kind"):
                raise TypeError(f"dtype: cannot cast X's {self.X.dtype} batches to {dtype}")
        self.dtype = self.X.dtype if dtype is None else dtype

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    def __len__(self) -> int:
        """Batches per epoch: ⌊N/k⌋ with ``drop_last``, else ⌈N/k⌉ (with ``shard``, k is the
        global batch ``world * batch_size``, and a last global batch of fewer than ``world``
        samples is not counted)."""
        n, k = self.num_samples, self.batch_size * self.world
        if self.drop_last:
            return n // k
        full, rest = divmod(n, k)
        return full + (1 if rest >= self.world else 0)

    def global_batch_size(self, step: int) -> int:
        """Samples in global batch ``step`` (0-based) summed over the ranks."""
        k = self.batch_size * self.world
        return min(k, self.num_samples - step * k)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce the order of epoch ``epoch``."""
        self.epoch = _check_int("epoch", epoch, 0)

    def state_dict(self) -> dict:
        """The shuffling state: ``{"seed", "epoch"}`` (the next epoch's order follows from it)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`."""
        missing = {"seed", "epoch"} - set(state)
        if missing:
            raise KeyError(f"DataLoader state is missing {sorted(missing)}")
        self.seed = _check_int("state['seed']", state["seed"], 0) & _MASK64
        self.epoch = _check_int("state['epoch']", state["epoch"], 0)

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of epoch ``epoch`` (identity when ``shuffle=False``)."""
        n = self.num_samples
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        # The epoch advances when iteration starts, so an abandoned epoch is not replayed.
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int):
        if self.world > 1:
            yield from self._shard_batches(epoch)
            return
        n, k = self.num_samples, self.batch_size
        stop = len(self) * k
        X, y, w = self.X, self.y, self.sample_weight
        if not self.shuffle and self.dtype == X.dtype:
            for start in range(0, min(stop, n), k):
                idx = slice(start, start + k)
                if w is None:
                    yield X[idx], (None if y is None else y[idx])
                else:
                    yield X[idx], (None if y is None else y[idx]), w[idx]
            return
        order = self.permutation(epoch)
        gx = _Gather(X, k, self.dtype)
        gy = None if y is None else _Gather(y, k)
        gw = None if w is None else _Gather(w, k)
        for start in range(0, min(stop, n), k):
            idx = order[start:start + k]
            if gw is None:
                yield gx(idx), (None if gy is None else gy(idx))
            else:
                yield gx(idx), (None if gy is None else gy(idx)), gw(idx)

    def _shard_batches(self, epoch: int):
        order = self.permutation(epoch)
        k, w, r = self.batch_size * self.world, self.world, self.rank
        X, y = self.X, self.y
        views = not self.shuffle and self.dtype == X.dtype
        b = self.batch_size                     # a rank's piece has at most batch_size rows
        gx = _Gather(X, b, self.dtype)
        gy = None if y is None else _Gather(y, b)
        sw = self.sample_weight
        gw = None if sw is None else _Gather(sw, b)
        for step in range(len(self)):
            g = order[step * k:(step + 1) * k]
            lo = (len(g) // w) * r + min(r, len(g) % w)     # numpy.array_split's pieces
            hi = lo + len(g) // w + (1 if r < len(g) % w else 0)
            idx = g[lo:hi]
            if views:
                idx = slice(int(idx[0]), int(idx[-1]) + 1)   # contiguous: views
                xb, yb = X[idx], (None if y is None else y[idx])
                wb = None if sw is None else sw[idx]
            else:
                xb, yb = gx(idx), (None if gy is None else gy(idx))
                wb = None if gw is None else gw(idx)
            if sw is None:
                yield xb, yb
            else:
                yield xb, yb, wb

    def __repr__(self) -> str:
        shard = "" if self.world == 1 else f", shard=({self.rank}, {self.world})"
        return (f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}{shard})")


#: Whether reference counts can tell that a batch buffer is no longer used (CPython).
_REFCOUNTS = hasattr(sys, "getrefcount")


class _Gather:
    """``arr[idx]`` (cast to ``dtype``) into reused buffers, safely (DataLoader's Notes).

    Two buffers of ``rows`` rows are used in turn; the one due is reused only when its reference
    count shows that nothing but this object holds it -- no yielded batch, view of one, or model
    cache still sees it -- else it is replaced by a fresh buffer (the old one stays with whoever
    holds it). A batch is the buffer itself, or a view of its first rows for a short batch.

    Rows of a C-contiguous float32/float64 ``arr`` with >= 2 dimensions are copied by the
    Cython row-gather kernel (``embedding_forward``: one ``memcpy`` a row, rows split over
    fastreg's OpenMP threads), everything else by ``np.take``; both copy the same bytes. The
    kernel trusts its indices: callers pass positions they drew themselves (the loader's
    permutation, the estimator's shuffled ``arange``), never user input.
    """

    __slots__ = ("arr", "bufs", "dtype", "rowgather", "rows", "scratch", "turn")

    def __init__(self, arr: np.ndarray, rows: int, dtype=None):
        self.arr, self.rows = arr, rows
        self.dtype = arr.dtype if dtype is None else np.dtype(dtype)
        self.bufs = [None, None]
        self.scratch = None             # arr's dtype, for a cast gather (never handed out)
        self.turn = 0
        self.rowgather = _row_gather(arr)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        t = self.turn
        self.turn = t ^ 1
        buf = self.bufs[t]
        # references to a free buffer: self.bufs, the local ``buf``, getrefcount's argument
        if buf is None or not _REFCOUNTS or sys.getrefcount(buf) > 3:
            buf = self.bufs[t] = np.empty((self.rows, *self.arr.shape[1:]), self.dtype)
        m = len(idx)
        out = buf if m == self.rows else buf[:m]
        cast = self.dtype != self.arr.dtype
        if cast:
            if self.scratch is None:
                self.scratch = np.empty((self.rows, *self.arr.shape[1:]), self.arr.dtype)
            tmp = self.scratch[:m]
        else:
            tmp = out
        if (self.rowgather is not None and m and type(idx) is np.ndarray
                and idx.dtype in _INDEX_DTYPES and idx.flags.c_contiguous):
            self.rowgather(self.arr.reshape(self.arr.shape[0], -1), idx,
                           tmp.reshape(m, -1))
        else:
            np.take(self.arr, idx, axis=0, out=tmp, mode="clip")   # (indices are in range)
        if cast:
            np.copyto(out, tmp, casting="same_kind")
        return out


def _row_gather(arr: np.ndarray):
    """The Cython row-gather kernel for ``arr``'s rows, or None where ``np.take`` does it (not
    C-contiguous float32/float64 rows, rows too small to be worth threads, no Cython build)."""
    if (arr.ndim < 2 or arr.dtype not in _ROW_DTYPES or not arr.flags.c_contiguous
            or arr.size // max(arr.shape[0], 1) < 64):
        return None
    try:
        from .._kernels import runtime
        from .._kernels.embedding import cy
    except ImportError:
        return None
    runtime.load_pool("cython", route_blas=False)   # fastreg's thread count; BLAS untouched
    return cy.embedding_forward


_ROW_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


def check_sample_weight(w, n: int, name: str = "sample_weight") -> np.ndarray:
    """``w`` as a float64 (n,) array of finite, non-negative weights with a positive sum."""
    try:
        a = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, got {type(w).__name__}") from None
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per sample), got "
                         f"shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        bad = np.flatnonzero(~np.isfinite(a) | (a < 0))
        raise ValueError(f"{name} must be finite and >= 0; sample {int(bad[0])} has "
                         f"{a[bad[0]]!r} ({bad.size} such samples)")
    if not a.sum() > 0:
        raise ValueError(f"{name} must have a positive sum")
    return a


def _check_shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise TypeError(f"shard must be a tuple (rank, world) or None, got {shard!r}")
    world = _check_int("shard world", shard[1], 1)
    rank = _check_int("shard rank", shard[0], 0)
    if rank >= world:
        raise ValueError(f"shard rank must be in [0, world), got shard={tuple(shard)!r}")
    return rank, world
