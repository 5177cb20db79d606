"""EarlyStopping: Keras/Lightning semantics with a fake trainer and model."""
import numpy as np
import pytest

from fastreg.train.callbacks import Callback, EarlyStopping


class FakeModel:
    """state_dict() returns the live arrays (as a module over a flat buffer would)."""

    def __init__(self):
        self.w = np.zeros(4)
        self.steps = 0
        self.loaded = 0

    def state_dict(self):
        return {"0.weight": self.w, "1.num_batches_tracked": self.steps}

    def load_state_dict(self, sd):
        self.w[...] = sd["0.weight"]
        self.steps = sd["1.num_batches_tracked"]
        self.loaded += 1


class FakeTrainer:
    def __init__(self):
        self.model = FakeModel()
        self.stop_training = False
        self.stop_reason = ""


def fit(cb, values, key="val_loss", max_epochs=None):
    """Drive the callback like fit() does; epoch e leaves weights == e. Returns last epoch run."""
    tr = FakeTrainer()
    cb.on_train_begin(tr)
    epoch = -1
    for epoch, v in enumerate(values[:max_epochs]):
        tr.model.w[...] = epoch
        tr.model.steps = 10 * epoch
        cb.on_epoch_end(tr, epoch, {"loss": 1.0, key: v, "lr": 0.1})
        if tr.stop_training:
            break
    cb.on_train_end(tr)
    return tr, epoch


def test_stops_after_patience_epochs_without_improvement_and_restores_best():
    vals = [1.0, 0.8, 0.7, 0.75, 0.72, 0.71, 0.9, 0.6]
    cb = EarlyStopping(patience=3)
    tr, last = fit(cb, vals)
    assert last == 5 and tr.stop_training
    assert cb.stopped_epoch == 5 and cb.best_epoch == 2 and cb.best == 0.7 and cb.wait == 3
    assert "val_loss" in tr.stop_reason and "epoch 2" in tr.stop_reason
    assert np.all(tr.model.w == 2) and tr.model.steps == 20  # best epoch's weights restored


def test_best_weights_are_a_copy_not_a_view():
    cb = EarlyStopping(patience=1)
    tr = FakeTrainer()
    cb.on_train_begin(tr)
    cb.on_epoch_end(tr, 0, {"val_loss": 1.0})
    tr.model.w[...] = 99.0  # training keeps writing into the same buffer
    assert np.all(cb.best_weights["0.weight"] == 0.0)


def test_patience_zero_stops_at_first_non_improving_epoch():
    cb = EarlyStopping(patience=0)
    _tr, last = fit(cb, [3.0, 2.0, 2.0, 1.0])
    assert last == 2 and cb.stopped_epoch == 2 and cb.best_epoch == 1


def test_min_delta_requires_improvement_by_more_than_delta():
    # 0.95 and 0.91 improve on 1.0 by less than 0.1 -> not improvements
    cb = EarlyStopping(patience=2, min_delta=0.1)
    _tr, last = fit(cb, [1.0, 0.95, 0.91, 0.5])
    assert last == 2 and cb.best == 1.0 and cb.best_epoch == 0
    cb = EarlyStopping(patience=2, min_delta=0.1)
    _tr, last = fit(cb, [1.0, 0.85, 0.7, 0.65, 0.62])
    assert cb.best_epoch == 2 and last == 4 and cb.stopped_epoch == 4


def test_max_mode_on_accuracy():
    cb = EarlyStopping(monitor="val_accuracy", mode="max", patience=2)
    tr, last = fit(cb, [0.5, 0.7, 0.69, 0.7, 0.65], key="val_accuracy")
    assert cb.best == 0.7 and cb.best_epoch == 1 and last == 3
    assert np.all(tr.model.w == 1)


def test_restores_at_train_end_even_without_stopping():
    cb = EarlyStopping(patience=10)
    tr, _last = fit(cb, [1.0, 0.5, 0.6, 0.7])
    assert not tr.stop_training and cb.stopped_epoch is None
    assert np.all(tr.model.w == 1) and tr.model.loaded == 1


def test_no_restore_when_disabled():
    cb = EarlyStopping(patience=1, restore_best_weights=False)
    tr, last = fit(cb, [1.0, 2.0, 3.0])
    assert last == 1 and np.all(tr.model.w == 1) and tr.model.loaded == 0
    assert cb.best_weights is None


def test_nan_never_improves():
    cb = EarlyStopping(patience=1)
    _tr, last = fit(cb, [1.0, float("nan"), 0.5])
    assert last == 1 and cb.best == 1.0


def test_state_resets_between_fits():
    cb = EarlyStopping(patience=1)
    fit(cb, [1.0, 2.0])
    _tr, last = fit(cb, [5.0, 4.0, 3.0])
    assert cb.best == 3.0 and cb.stopped_epoch is None and last == 2


def test_missing_monitor_key_is_a_clear_error_at_first_epoch():
    cb = EarlyStopping(monitor="val_loss")
    tr = FakeTrainer()
    cb.on_train_begin(tr)
    with pytest.raises(KeyError, match="val_loss.*available.*loss"):
        cb.on_epoch_end(tr, 0, {"loss": 1.0, "lr": 0.1})


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mode": "minimum"}, ValueError, "mode.*'minimum'"),
    ({"patience": -1}, ValueError, "patience"),
    ({"patience": 2.5}, TypeError, "patience"),
    ({"min_delta": -0.1}, ValueError, "min_delta"),
    ({"min_delta": "0"}, TypeError, "min_delta"),
    ({"monitor": ""}, TypeError, "monitor"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EarlyStopping(**kwargs)


def test_restore_needs_a_model_with_state_dict():
    class T:
        model = object()
    with pytest.raises(TypeError, match="state_dict"):
        EarlyStopping().on_train_begin(T())


def test_base_callback_hooks_are_no_ops():
    cb = Callback()
    tr = FakeTrainer()
    cb.on_train_begin(tr)
    cb.on_epoch_end(tr, 0, {"loss": 1.0})
    cb.on_train_end(tr)
    assert not tr.stop_training
