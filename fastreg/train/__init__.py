"""fastreg.train: the ``fit`` loop, its ``History`` and the training callbacks."""
from __future__ import annotations

from .callbacks import Callback, EarlyStopping
from .fit import Trainer, accuracy_count, evaluate, fit
from .history import History

__all__ = [
           "Callback",
           "EarlyStopping",
           "History",
           "Trainer",
           "accuracy_count",
           "evaluate",
           "fit",
]
