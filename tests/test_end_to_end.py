"""End to end on scikit-learn's bundled digits: a regularized MLP (BatchNorm, Dropout, AdamW
weight decay) reaches >= 96% test accuracy; early stopping stops before the cap and restores
the best weights. float32 and float64 models both train."""
import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.data import train_valid_test_split
from fastreg.train import EarlyStopping, evaluate, fit

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    return train_valid_test_split((X / 16.0).astype(np.float32), y, valid=0.15, test=0.2,
                                  seed=0)


def regularized_mlp(dtype=None):
    return nn.Sequential(
        nn.Linear(64, 128, dtype=dtype), nn.BatchNorm1d(128, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 64, dtype=dtype), nn.BatchNorm1d(64, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 10, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_regularized_mlp_reaches_96_percent_on_digits(digits, dtype):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = digits
    fr.manual_seed(0)
    model = regularized_mlp(dtype)
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    h = fit(model, loss_fn, opt, (Xtr, ytr), (Xva, yva), epochs=12, batch_size=128,
            progress=False, seed=0)
    assert h["loss"][-1] < h["loss"][0]
    acc = evaluate(model, loss_fn, Xte.astype(dtype), yte)["accuracy"]
    assert acc >= 0.96, f"test accuracy {acc:.4f}"


def test_early_stopping_stops_before_cap_and_restores_best_weights(digits):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = digits
    fr.manual_seed(0)
    model = regularized_mlp()
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    cap = 200
    h = fit(model, loss_fn, opt, (Xtr, ytr), (Xva, yva), epochs=cap, batch_size=128,
            callbacks=[stopper], progress=False, seed=0)
    assert h.stopped_early and len(h) < cap and "early stopping" in h.stop_reason
    assert stopper.stopped_epoch == len(h)
    assert h.best_epoch == stopper.best_epoch == 1 + int(np.argmin(h["val_loss"]))
    assert h.best_epoch < len(h)
    # the restored model is the best epoch's: its validation loss is the best recorded one
    restored = evaluate(model, loss_fn, Xva, yva, batch_size=1024)["loss"]
    assert restored == pytest.approx(min(h["val_loss"]), rel=1e-6)
    assert restored < h["val_loss"][-1]
    assert evaluate(model, loss_fn, Xte, yte)["accuracy"] >= 0.95
