"""DataLoader gathers shuffled batches into reused buffers, and never overwrites a batch that
someone still holds (fastreg/data/loader.py, DataLoader's Notes)."""
import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.data import DataLoader


def _data(n=1000, d=5, dtype=np.float32):
    g = np.random.default_rng(0)
    return g.standard_normal((n, d)).astype(dtype), g.integers(0, 3, n)


def _expected(loader, X, y, epoch):
    order = loader.permutation(epoch)
    k = loader.batch_size
    return [(X[order[s:s + k]], y[order[s:s + k]]) for s in range(0, len(X), k)]


def test_a_plain_loop_reuses_two_buffers_and_sees_the_right_rows():
    X, y = _data(1000)
    loader = DataLoader(X, y, batch_size=64, seed=3)
    want = _expected(loader, X, y, 0)
    addresses = set()
    for i, (xb, yb) in enumerate(loader):
        np.testing.assert_array_equal(xb, want[i][0])
        np.testing.assert_array_equal(yb, want[i][1])
        assert xb.flags.c_contiguous and xb.dtype == X.dtype
        addresses.add(xb.__array_interface__["data"][0])
    assert i == 15
    assert len(addresses) == 2          # the last, short batch is a view of a buffer's first rows


def test_kept_batches_and_views_of_batches_are_never_overwritten():
    X, y = _data(500)
    loader = DataLoader(X, y, batch_size=32, seed=1)
    kept = list(loader)                 # every batch held at once
    for (xb, yb), (wx, wy) in zip(kept, _expected(loader, X, y, 0)):
        np.testing.assert_array_equal(xb, wx)
        np.testing.assert_array_equal(yb, wy)
    heads, want = [], _expected(loader, X, y, 1)
    for xb, _ in loader:
        heads.append(xb[:2])            # a view keeps its buffer alive
    for h, (wx, _) in zip(heads, want):
        np.testing.assert_array_equal(h, wx[:2])


def test_a_model_cache_holding_a_batch_keeps_it_intact():
    X, y = _data(300, 4)
    fr.manual_seed(0)
    lin = nn.Linear(4, 2, dtype=np.float32)
    loader = DataLoader(X, y, batch_size=20, seed=2)
    seen = None
    for i, (xb, _) in enumerate(loader):
        if seen is not None:            # the cached input of two or three batches ago
            np.testing.assert_array_equal(lin._cache[0], seen)
        if i % 3 == 0:                  # the model sees every third batch only
            lin(xb)
            seen = xb.copy()
        del xb


@pytest.mark.parametrize("shuffle", [True, False])
def test_dtype_casts_each_batch_as_it_is_gathered(shuffle):
    X, y = _data(130, 3, np.float64)
    loader = DataLoader(X, y, batch_size=32, shuffle=shuffle, seed=0, dtype=np.float32)
    got = list(loader)
    order = loader.permutation(0)
    for i, (xb, yb) in enumerate(got):
        idx = order[32 * i:32 * (i + 1)]
        assert xb.dtype == np.float32
        np.testing.assert_array_equal(xb, X[idx].astype(np.float32))
        np.testing.assert_array_equal(yb, y[idx])


def test_sharded_and_weighted_batches_match_fancy_indexing():
    X, y = _data(203, 2)
    w = np.linspace(1, 2, 203)
    for rank in range(3):
        loader = DataLoader(X, y, batch_size=16, seed=4, shard=(rank, 3), sample_weight=w)
        order = loader.permutation(0)
        for step, (xb, yb, wb) in enumerate(loader):
            g = np.array_split(order[48 * step:48 * (step + 1)], 3)[rank]
            np.testing.assert_array_equal(xb, X[g])
            np.testing.assert_array_equal(yb, y[g])
            np.testing.assert_array_equal(wb, w[g])


def test_dtype_argument_is_checked():
    X, y = _data(10)
    with pytest.raises(TypeError, match="dtype"):
        DataLoader(X, y, dtype="not a dtype")
    with pytest.raises(TypeError, match="dtype"):
        DataLoader(X, y, dtype=np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(257, 64), (1000, 7, 33), (33, 1000)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_wide_rows_go_through_the_row_gather_kernel_and_match_fancy_indexing(dtype, shape,
                                                                            threads):
    from fastreg.data import loader as L
    g = np.random.default_rng(5)
    X = g.standard_normal(shape).astype(dtype)
    y = g.integers(0, 3, shape[0])
    assert L._row_gather(X) is not None          # the kernel path, not np.take
    old = fr.get_num_threads()
    fr.set_num_threads(threads)
    try:
        loader = DataLoader(X, y, batch_size=10, seed=2)
        want = _expected(loader, X, y, 0)
        got = [(xb.copy(), yb.copy()) for xb, yb in loader]
        cast = [xb.copy() for xb, _ in DataLoader(X, y, batch_size=10, seed=2,
                                                  dtype=np.float64 if dtype == np.float32
                                                  else np.float32)]
    finally:
        fr.set_num_threads(old)
    assert len(got) == len(want)
    for (xb, yb), (wx, wy), c in zip(got, want, cast):
        assert xb.dtype == X.dtype and xb.shape == wx.shape
        np.testing.assert_array_equal(xb, wx)       # the same bytes as X[idx]
        np.testing.assert_array_equal(yb, wy)
        np.testing.assert_array_equal(c, wx.astype(c.dtype))


def test_the_row_gather_kernel_is_used_only_where_it_applies():
    from fastreg.data import loader as L
    X = np.zeros((10, 64), np.float32)
    assert L._row_gather(X) is not None
    assert L._row_gather(X[:, ::2]) is None                      # not C-contiguous
    assert L._row_gather(X.astype(">f4")) is None                # not a native float
    assert L._row_gather(X.astype(np.int32)) is None
    assert L._row_gather(np.zeros((10, 8), np.float32)) is None  # narrow rows: np.take
    assert L._row_gather(np.zeros(640, np.float32)) is None      # 1-D (labels, weights)
    # an index array the kernel does not take (int16, strided) falls back to np.take
    gx = L._Gather(np.arange(640, dtype=np.float32).reshape(10, 64), 4)
    for idx in (np.array([3, 1, 9], np.int16), np.array([3, 0, 1, 0, 9, 0])[::2]):
        np.testing.assert_array_equal(gx(idx), np.arange(640, dtype=np.float32)
                                      .reshape(10, 64)[[3, 1, 9]])
