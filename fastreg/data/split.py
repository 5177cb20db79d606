"""Train / validation / test split.

Weights are fitted on the training set, hyper-parameters (epochs, learning rate, penalties) are
chosen on the validation set, and the test set gives the final number, looked at once.
"""
from __future__ import annotations

import numpy as np

from .loader import _numpy_rng

__all__ = ["train_valid_test_split"]

#: dtype kinds treated as class labels: bool, integers, strings.
_LABEL_KINDS = "biuUS"


def _split_size(name: str, value, n: int) -> int:
    """A fraction in [0, 1) of ``n`` (rounded) or an absolute count in [0, n)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a fraction in [0, 1) or a sample count, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if not 0 <= value < max(n, 1):
            raise ValueError(f"{name} as a count must be in [0, {n}), got {value!r}")
        return int(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} as a fraction must be in [0, 1), got {value!r}")
    return round(float(value) * n)


def _allocate(total: int, ideal: np.ndarray, capacity: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Integer counts per class summing to ``total``, each <= capacity, close to ``ideal``.

    Largest-remainder rounding: floor every ideal share, then hand the missing units to the
    classes with the largest fractional parts (random tie-break), never above capacity.
    """
    counts = np.minimum(np.floor(ideal).astype(np.int64), capacity)
    missing = total - int(counts.sum())
    while missing > 0:
        room = np.flatnonzero(counts < capacity)
        # sort by remainder (desc), ties broken by a random key
        order = room[np.lexsort((rng.random(room.size), -(ideal[room] - counts[room])))]
        take = order[:missing]
        counts[take] += 1
        missing -= take.size
    return counts


def train_valid_test_split(X: np.ndarray, y: np.ndarray | None = None, valid: float = 0.1,
                           test: float = 0.1, stratify: bool = True, seed=None):
    r"""Split ``(X, y)`` into disjoint shuffled train, validation and test sets.

    With ``stratify=True`` and 1-D integer (or bool, or string) labels, every class keeps its
    proportion in each split: class c with :math:`n_c` samples gives about
    :math:`n_c \cdot \text{valid}` samples to validation and :math:`n_c \cdot \text{test}` to
    test, rounded so that the split sizes are exactly ``round(valid·N)`` and ``round(test·N)``
    (largest-remainder rounding). Float or multi-dimensional targets fall back to a plain random
    split.

    Parameters
    ----------
    X : ndarray, shape (N, ...)
    y : ndarray, shape (N, ...), optional
        Targets; None returns None in their place.
    valid, test : float in [0, 1) or int
        Fraction of the samples (or number of samples) in the validation and test sets. The
        training set keeps the rest and must not be empty.
    stratify : bool, default True
        Preserve class proportions for integer labels.
    seed : None, int, numpy.random.Generator or fastreg.Generator
        Randomness; None uses fastreg's default generator (seeded by ``fastreg.manual_seed``).

    Returns
    -------
    ((X_train, y_train), (X_valid, y_valid), (X_test, y_test))
        Copies (C-contiguous); each set in random order.
    """
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X must be a numpy.ndarray, got {type(X).__name__}")
    if X.ndim < 1:
        raise ValueError(f"X must have a sample axis (ndim >= 1), got shape {X.shape}")
    n = X.shape[0]
    if y is not None:
        if not isinstance(y, np.ndarray):
            raise TypeError(f"y must be a numpy.ndarray or None, got {type(y).__name__}")
        if y.ndim < 1 or y.shape[0] != n:
            raise ValueError(f"X and y must have the same number of samples, got "
                             f"X.shape={X.shape} and y.shape={y.shape}")
    n_valid = _split_size("valid", valid, n)
    n_test = _split_size("test", test, n)
    if n - n_valid - n_test < 1:
        raise ValueError(f"valid={valid!r} and test={test!r} leave no training samples out of {n}")
    rng = _numpy_rng(seed, "seed")

    perm = rng.permutation(n)
    if stratify and y is not None and y.ndim == 1 and y.dtype.kind in _LABEL_KINDS:
        # Group a random permutation by class (stable sort keeps it random within each class),
        # then give each class's first test_c samples to test and the next valid_c to valid.
        _, inverse, class_counts = np.unique(y, return_inverse=True, return_counts=True)
        order = perm[np.argsort(inverse[perm], kind="stable")]
        test_c = _allocate(n_test, class_counts * (n_test / n), class_counts, rng)
        valid_c = _allocate(n_valid, class_counts * (n_valid / n), class_counts - test_c, rng)
        cls = inverse[order]
        starts = np.concatenate(([0], np.cumsum(class_counts)[:-1]))
        rank = np.arange(n) - starts[cls]
        in_test = rank < test_c[cls]
        in_valid = ~in_test & (rank < (test_c + valid_c)[cls])
        idx_test = rng.permutation(order[in_test])
        idx_valid = rng.permutation(order[in_valid])
        idx_train = rng.permutation(order[~in_test & ~in_valid])
    else:
        idx_test = perm[:n_test]
        idx_valid = perm[n_test:n_test + n_valid]
        idx_train = perm[n_test + n_valid:]

    def take(idx):
        return (np.ascontiguousarray(X[idx]),
                None if y is None else np.ascontiguousarray(y[idx]))

    return take(idx_train), take(idx_valid), take(idx_test)
