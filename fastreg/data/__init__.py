"""Data pipeline: mini-batch loading, train/validation/test split, augmentation.

* :class:`DataLoader` - shuffled mini-batches without replacement, resumable shuffling state.
* :func:`train_valid_test_split` - disjoint splits, stratified by class for integer labels.
* :mod:`fastreg.data.augment` - image rotation / shift / flip and text word dropout / swap / move.
"""
from . import augment
from .loader import DataLoader
from .split import train_valid_test_split

__all__ = ["DataLoader", "augment", "train_valid_test_split"]
