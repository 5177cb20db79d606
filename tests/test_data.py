"""DataLoader and train_valid_test_split: coverage, counts, determinism, stratification."""
import math

import numpy as np
import pytest
from conftest import AWKWARD_SIZES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastreg
from fastreg.data import DataLoader, train_valid_test_split


def ids_dataset(n, features=3, dtype=np.float64):
    """Row i of X holds i everywhere, y[i] = 10 i: a batch tells which samples it holds."""
    X = np.repeat(np.arange(n, dtype=dtype)[:, None], features, axis=1)
    return X, 10 * np.arange(n)


def epoch_ids(loader):
    batches = list(loader)
    return batches, (np.concatenate([xb[:, 0] for xb, _ in batches]).astype(np.int64)
                     if batches else np.array([], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# DataLoader

@pytest.mark.parametrize("n", AWKWARD_SIZES)
@pytest.mark.parametrize("k", [1, 7, 32, 256])
def test_every_sample_exactly_once_per_epoch(n, k):
    X, y = ids_dataset(n)
    loader = DataLoader(X, y, batch_size=k, seed=0)
    assert len(loader) == math.ceil(n / k)
    for _ in range(2):
        batches, ids = epoch_ids(loader)
        assert len(batches) == len(loader)
        assert np.array_equal(np.sort(ids), np.arange(n))
        assert all(len(xb) == k for xb, _ in batches[:-1])
        for xb, yb in batches:
            assert np.array_equal(yb, 10 * xb[:, 0].astype(np.int64))


@pytest.mark.parametrize("n", AWKWARD_SIZES)
@pytest.mark.parametrize("k", [1, 7, 32, 256])
def test_drop_last_gives_floor_n_over_k_full_batches(n, k):
    X, y = ids_dataset(n)
    loader = DataLoader(X, y, batch_size=k, drop_last=True, seed=1)
    assert len(loader) == n // k
    batches, ids = epoch_ids(loader)
    assert len(batches) == n // k
    assert all(len(xb) == k for xb, _ in batches)
    assert len(np.unique(ids)) == len(ids) == (n // k) * k  # without replacement


def test_new_permutation_each_epoch_and_shuffled():
    X, y = ids_dataset(1000)
    loader = DataLoader(X, y, batch_size=100, seed=3)
    _, e0 = epoch_ids(loader)
    _, e1 = epoch_ids(loader)
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, np.arange(1000))


def test_shuffle_false_keeps_order():
    X, y = ids_dataset(33)
    batches, ids = epoch_ids(DataLoader(X, y, batch_size=7, shuffle=False))
    assert np.array_equal(ids, np.arange(33))
    assert [len(xb) for xb, _ in batches] == [7, 7, 7, 7, 5]


def test_batches_are_c_contiguous_and_keep_dtype():
    X = np.asfortranarray(np.random.default_rng(0).random((50, 6)).astype(np.float32))
    y = np.arange(50, dtype=np.int32)
    for shuffle in (True, False):
        for xb, yb in DataLoader(X, y, batch_size=16, shuffle=shuffle, seed=0):
            assert xb.flags.c_contiguous and yb.flags.c_contiguous
            assert xb.dtype == np.float32 and yb.dtype == np.int32
            assert xb.shape[1:] == (6,)


def test_images_and_no_targets():
    X = np.zeros((10, 4, 4, 3))
    out = list(DataLoader(X, batch_size=4, seed=0))
    assert [xb.shape for xb, _ in out] == [(4, 4, 4, 3), (4, 4, 4, 3), (2, 4, 4, 3)]
    assert all(yb is None for _, yb in out)


def test_same_seed_same_batches_and_manual_seed_controls_default():
    X, y = ids_dataset(257)
    a = [epoch_ids(DataLoader(X, y, batch_size=32, seed=5))[1] for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    fastreg.manual_seed(123)
    b = epoch_ids(DataLoader(X, y, batch_size=32))[1]
    fastreg.manual_seed(123)
    c = epoch_ids(DataLoader(X, y, batch_size=32))[1]
    assert np.array_equal(b, c)


def test_state_dict_resumes_the_same_epoch_sequence():
    X, y = ids_dataset(100)
    ref = DataLoader(X, y, batch_size=10, seed=9)
    epochs = [epoch_ids(ref)[1] for _ in range(4)]

    run = DataLoader(X, y, batch_size=10, seed=9)
    epoch_ids(run)
    epoch_ids(run)
    state = run.state_dict()
    assert state == {"seed": 9, "epoch": 2}
    resumed = DataLoader(X, y, batch_size=10, seed=777)
    resumed.load_state_dict(state)
    assert np.array_equal(epoch_ids(resumed)[1], epochs[2])
    assert np.array_equal(epoch_ids(resumed)[1], epochs[3])
    resumed.set_epoch(1)
    assert np.array_equal(epoch_ids(resumed)[1], epochs[1])


@pytest.mark.parametrize("make, exc, match", [
    (lambda: DataLoader([[1.0]]), TypeError, "X must be a numpy.ndarray"),
    (lambda: DataLoader(np.float64(1.0)), TypeError, "X"),
    (lambda: DataLoader(np.array(1.0)), ValueError, "X must have a sample axis"),
    (lambda: DataLoader(np.zeros((5, 2)), np.zeros(4)), ValueError, r"\(5, 2\).*\(4,\)"),
    (lambda: DataLoader(np.zeros((5, 2)), [1, 2, 3, 4, 5]), TypeError, "y"),
    (lambda: DataLoader(np.zeros((5, 2)), batch_size=0), ValueError, "batch_size.*0"),
    (lambda: DataLoader(np.zeros((5, 2)), batch_size=2.5), TypeError, "batch_size"),
    (lambda: DataLoader(np.zeros((5, 2)), seed=-1), ValueError, "seed"),
    (lambda: DataLoader(np.zeros((5, 2)), seed="a"), TypeError, "seed"),
    (lambda: DataLoader(np.zeros((5, 2))).set_epoch(-1), ValueError, "epoch"),
    (lambda: DataLoader(np.zeros((5, 2))).load_state_dict({"seed": 1}), KeyError, "epoch"),
])
def test_loader_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 300), k=st.integers(1, 70), shuffle=st.booleans(),
       drop_last=st.booleans(), feat=st.sampled_from([(), (3,), (2, 2)]),
       dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]))
def test_loader_hypothesis(n, k, shuffle, drop_last, feat, dtype):
    X = np.broadcast_to((np.arange(n) % 250).reshape((n,) + (1,) * len(feat)),
                        (n, *feat)).astype(dtype)
    y = np.arange(n)
    loader = DataLoader(X, y, batch_size=k, shuffle=shuffle, drop_last=drop_last, seed=n)
    batches = list(loader)
    assert len(batches) == len(loader) == (n // k if drop_last else -(-n // k))
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], int)
    assert len(np.unique(seen)) == len(seen)
    assert len(seen) == ((n // k) * k if drop_last else n)
    for xb, yb in batches:
        assert xb.dtype == dtype and xb.shape == (len(yb), *feat) and xb.flags.c_contiguous
        assert np.array_equal(xb.reshape(len(yb), -1)[:, 0] if feat else xb,
                              (yb % 250).astype(dtype))


# ---------------------------------------------------------------------------------------------
# train_valid_test_split

def check_partition(splits, n):
    ids = np.concatenate([s[0][:, 0] for s in splits]).astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(n))  # disjoint and covering
    for Xs, ys in splits:
        assert np.array_equal(ys, 10 * Xs[:, 0].astype(np.int64) if ys.dtype.kind == "i"
                              else ys)  # rows stay aligned
        assert Xs.flags.c_contiguous


@pytest.mark.parametrize("n", [10, 33, 257, 1000])
def test_plain_split_sizes_disjoint_covering(n):
    X, y = ids_dataset(n)
    splits = train_valid_test_split(X, y, valid=0.2, test=0.1, stratify=False, seed=0)
    check_partition(splits, n)
    (Xtr, _), (Xva, _), (Xte, _) = splits
    assert len(Xva) == round(0.2 * n) and len(Xte) == round(0.1 * n)
    assert len(Xtr) == n - len(Xva) - len(Xte)


def test_stratified_split_keeps_class_proportions():
    counts = np.array([500, 300, 150, 40, 7, 3])
    labels = np.repeat(np.arange(6), counts)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(labels))
    labels = labels[perm]
    n = len(labels)
    X = np.repeat(np.arange(n, dtype=np.float64)[:, None], 2, axis=1)
    splits = train_valid_test_split(X, labels, valid=0.15, test=0.1, seed=4)
    ids = np.concatenate([s[0][:, 0] for s in splits]).astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(n))
    (_, ytr), (_, yva), (_, yte) = splits
    for Xs, ys in splits:
        assert np.array_equal(ys, labels[Xs[:, 0].astype(np.int64)])
    n_va, n_te = round(0.15 * n), round(0.1 * n)
    assert (len(yva), len(yte)) == (n_va, n_te)
    for frac_n, ys in ((n_va, yva), (n_te, yte)):
        got = np.bincount(ys, minlength=6)
        assert np.all(np.abs(got - counts * frac_n / n) <= 1), (got, counts * frac_n / n)
    assert np.all(np.bincount(ytr, minlength=6) > 0)  # even the 3-sample class trains


def test_string_labels_are_stratified():
    labels = np.array(["cat"] * 90 + ["dog"] * 10)
    X, _ = ids_dataset(100)
    (_, ytr), (_, yva), (_, yte) = train_valid_test_split(X, labels, valid=0.2, test=0.2, seed=1)
    assert (yva == "dog").sum() == 2 and (yte == "dog").sum() == 2 and (ytr == "dog").sum() == 6


def test_float_targets_fall_back_to_plain_split():
    X, _ = ids_dataset(100)
    y = np.linspace(0, 1, 100)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train_valid_test_split(X, y, seed=0)
    assert (len(Xtr), len(Xva), len(Xte)) == (80, 10, 10)
    for Xs, ys in ((Xtr, ytr), (Xva, yva), (Xte, yte)):
        assert np.allclose(ys, Xs[:, 0] / 99)


def test_integer_counts_and_seeding():
    X, y = ids_dataset(50)
    a = train_valid_test_split(X, y % 3, valid=5, test=7, seed=11)
    b = train_valid_test_split(X, y % 3, valid=5, test=7, seed=11)
    c = train_valid_test_split(X, y % 3, valid=5, test=7, seed=12)
    assert [len(s[0]) for s in a] == [38, 5, 7]
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_no_targets():
    X, _ = ids_dataset(20)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train_valid_test_split(X, None, seed=0)
    assert ytr is None and yva is None and yte is None
    assert len(Xtr) + len(Xva) + len(Xte) == 20


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"valid": 1.2}, ValueError, "valid.*1.2"),
    ({"test": -0.1}, ValueError, "test"),
    ({"valid": 0.6, "test": 0.4}, ValueError, "no training samples"),
    ({"valid": "0.1"}, TypeError, "valid"),
    ({"test": 10}, ValueError, "test"),
    ({"seed": "x"}, TypeError, "seed"),
])
def test_split_bad_input(kwargs, exc, match):
    X, y = ids_dataset(10)
    with pytest.raises(exc, match=match):
        train_valid_test_split(X, y, **kwargs)


def test_split_bad_arrays():
    with pytest.raises(TypeError, match="X"):
        train_valid_test_split([1, 2, 3], np.arange(3))
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(9,\)"):
        train_valid_test_split(np.zeros((10, 3)), np.arange(9))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 400), n_classes=st.integers(1, 8), valid=st.floats(0, 0.45),
       test=st.floats(0, 0.45), stratify=st.booleans(), seed=st.integers(0, 2**32))
def test_split_hypothesis(n, n_classes, valid, test, stratify, seed):
    X, _ = ids_dataset(n, features=1)
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    n_va, n_te = round(valid * n), round(test * n)
    if n - n_va - n_te < 1:
        with pytest.raises(ValueError):
            train_valid_test_split(X, labels, valid=valid, test=test, seed=seed)
        return
    splits = train_valid_test_split(X, labels, valid=valid, test=test, stratify=stratify,
                                    seed=seed)
    ids = np.concatenate([s[0][:, 0] for s in splits]).astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(n))
    assert (len(splits[1][1]), len(splits[2][1])) == (n_va, n_te)
    for Xs, ys in splits:
        assert np.array_equal(ys, labels[Xs[:, 0].astype(np.int64)])
    if stratify:
        counts = np.bincount(labels, minlength=n_classes)
        for size, (_, ys) in ((n_va, splits[1]), (n_te, splits[2])):
            dev = np.abs(np.bincount(ys, minlength=n_classes) - counts * size / n)
            assert np.all(dev < 2), dev
