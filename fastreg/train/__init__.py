"""fastreg.train: the ``fit`` loop, its ``History`` and the training callbacks."""
from __future__ import annotations

from .callbacks import Callback, EarlyStopping
from .checkpoint import Checkpoint, resume
from .fit import Trainer, accuracy_count, evaluate, fit
from .history import History

__all__ = [
           "Callback",
           "Checkpoint",
           "EarlyStopping",
           "History",
           "Trainer",
           "accuracy_count",
           "evaluate",
           "fit",
           "resume",
]
