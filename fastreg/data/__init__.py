"""Data pipeline: mini-batch loading, train/validation/test split, augmentation.

* :class:`DataLoader` - shuffled mini-batches without replacement, resumable shuffling state.
* :func:`train_valid_test_split` - disjoint splits, stratified by class for integer labels.
* :func:`read_table` - CSV (sniffed separator, decimal commas, missing markers) or Parquet into
  a pandas DataFrame; :class:`TablePreprocessor` - impute, one-hot, standardize (pandas: an extra).
* :mod:`fastreg.data.augment` - image rotation / shift / flip and text word dropout / swap / move.
"""
from . import augment
from .loader import DataLoader
from .preprocess import TablePreprocessor
from .split import train_valid_test_split
from .table import TableError, read_table

__all__ = ["DataLoader", "TableError", "TablePreprocessor", "augment", "read_table",
           "train_valid_test_split"]
