"""History: what ``fit`` records per epoch (losses, metrics, learning rate) and how it ended."""
from __future__ import annotations

import math


class History:
    """Per-epoch training record returned by :func:`fastreg.train.fit`.

    Epochs are numbered from 1. ``history[key]`` is the list of per-epoch values of ``key``
    ("loss", "val_loss", "accuracy", "val_accuracy", "lr", ...), aligned with ``epochs``.

    Attributes
    ----------
    history : dict[str, list[float]]
    epochs : list[int]
        1, 2, ... for the epochs that ran.
    epoch_times : list[float]
        Seconds per epoch (training + validation).
    best_epoch : int or None
        Epoch with the best monitored value (early stopping's, when an ``EarlyStopping``
        callback ran; else the lowest ``val_loss``, else the lowest ``loss``).
    best_value : float or None
        The monitored value at ``best_epoch``.
    monitor : str or None
        The key ``best_epoch`` refers to.
    stop_reason : str
        Why training ended ("completed 20 epochs", early stopping's reason, ...).
    stopped_early : bool
        True when a callback stopped training before the epoch cap.
    wall_time : float
        Seconds for the whole ``fit`` call.
    """

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self.epoch_times: list[float] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.monitor: str | None = None
        self.stop_reason: str = ""
        self.stopped_early: bool = False
        self.wall_time: float = 0.0

    def append(self, epoch: int, logs: dict, seconds: float) -> None:
        """Record one epoch's logs (keys missing in earlier epochs are padded with NaN)."""
        n = len(self.epochs)
        for key, value in logs.items():
            self.history.setdefault(key, [math.nan] * n).append(float(value))
        for key, values in self.history.items():
            if len(values) == n:
                values.append(math.nan)
        self.epochs.append(int(epoch))
        self.epoch_times.append(float(seconds))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict:
        """Everything as plain Python types (e.g. for json.dump)."""
        return {"history": {k: list(v) for k, v in self.history.items()},
                "epochs": list(self.epochs), "epoch_times": list(self.epoch_times),
                "best_epoch": self.best_epoch, "best_value": self.best_value,
                "monitor": self.monitor, "stop_reason": self.stop_reason,
                "stopped_early": self.stopped_early, "wall_time": self.wall_time}

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return (f"History(epochs={len(self)}, keys=[{keys}], best_epoch={self.best_epoch}, "
                f"stop_reason={self.stop_reason!r}, wall_time={self.wall_time:.3g}s)")

    def format_epoch(self, i: int) -> str:
        """One line for epoch index ``i`` (0-based position in ``epochs``)."""
        parts = [f"epoch {self.epochs[i]:>3d}"]
        for key, values in self.history.items():
            v = values[i]
            parts.append(f"{key} {v:.4g}" if key == "lr" else f"{key} {v:.4f}")
        parts.append(f"{self.epoch_times[i]:.2f}s")
        return "  ".join(parts)

    def plot(self, path=None):
        """Draw train vs validation loss (and accuracy) per epoch; mark the best epoch.

        Needs matplotlib (``pip install fastreg[plot]``), imported only here. ``path`` saves
        the figure there (any format matplotlib knows from the extension). Returns the Figure.
        """
        try:
            import matplotlib
            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as exc:   # pragma: no cover - depends on the environment
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from exc
        panels = [("loss", "val_loss")]
        if "accuracy" in self.history or "val_accuracy" in self.history:
            panels.append(("accuracy", "val_accuracy"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (train_key, valid_key) in zip(axes[0], panels):
            for key, label in ((train_key, "train"), (valid_key, "valid")):
                if key in self.history:
                    ax.plot(self.epochs, self.history[key], marker=".", label=label)
            if self.best_epoch is not None:
                what = "best epoch (weights kept)" if self.stopped_early else "best epoch"
                ax.axvline(self.best_epoch, color="k", linestyle="--", linewidth=1, label=what)
            if self.stopped_early and self.epochs:
                ax.axvline(self.epochs[-1], color="r", linestyle=":", linewidth=1,
                           label="early stop")
            ax.set_xlabel("epoch")
            ax.set_ylabel(train_key)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
            plt.close(fig)
        return fig
