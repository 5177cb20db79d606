"""fit(): the training loop, History, scheduler stepping rule, callbacks, errors."""
import math

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.train import Callback, EarlyStopping, History, evaluate, fit


def blobs(n=240, d=5, k=3, seed=0):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((k, d)) * 3
    y = g.integers(0, k, n)
    X = centers[y] + g.standard_normal((n, d))
    return X.astype(np.float32), y


def mlp(d=5, k=3):
    fr.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))


def test_fit_learns_and_records_history():
    X, y = blobs()
    model = mlp()
    opt = fr.optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, nn.CrossEntropyLoss(), opt, (X[:200], y[:200]), (X[200:], y[200:]),
            epochs=8, batch_size=32, progress=False, seed=1)
    assert isinstance(h, History) and len(h) == 8 and h.epochs == list(range(1, 9))
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert h["loss"][-1] < h["loss"][0]
    assert h["val_accuracy"][-1] > 0.9
    assert h.stop_reason == "completed 8 epochs" and not h.stopped_early
    assert h.best_epoch == 1 + int(np.argmin(h["val_loss"])) and h.monitor == "val_loss"
    assert h.wall_time > 0 and len(h.epoch_times) == 8
    assert h["lr"] == [1e-2] * 8
    assert model.training                        # fit leaves the model in training mode
    res = evaluate(model, nn.CrossEntropyLoss(), X[200:], y[200:])
    assert res["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-6)


def test_fit_is_reproducible_with_seeds():
    X, y = blobs()
    runs = []
    for _ in range(2):
        model = mlp()
        opt = fr.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs.append(fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=3, batch_size=50,
                        progress=False, seed=7)["loss"])
    assert runs[0] == runs[1]


def test_train_loss_includes_optimizer_penalty():
    X, y = blobs()
    model = mlp()

    class Penalized:
        def __init__(self, inner):
            self.inner = inner
            self.param_groups = inner.param_groups

        def zero_grad(self):
            self.inner.zero_grad()

        def step(self):
            self.inner.step()

        def penalty(self):
            return 100.0

    opt = Penalized(fr.optim.SGD(model.parameters(), lr=0.0))
    h = fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=1, progress=False)
    base = evaluate(model.train(), nn.CrossEntropyLoss(), X, y)["loss"]   # lr 0: fixed model
    assert h["loss"][0] == pytest.approx(base + 100.0, rel=1e-5)


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_begin(self, trainer):
        self.calls.append("begin")

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(epoch)
        assert {"loss", "lr", "val_loss"} <= set(logs)
        if epoch == self.stop_at:
            trainer.stop_training = True

    def on_train_end(self, trainer):
        self.calls.append("end")


def test_callbacks_are_called_and_can_stop():
    X, y = blobs()
    rec = Recorder(stop_at=2)
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), fr.optim.SGD(model.parameters(), lr=0.1), (X, y),
            (X, y), epochs=5, callbacks=[rec], progress=False)
    assert rec.calls == ["begin", 1, 2, "end"]
    assert len(h) == 2 and h.stopped_early and "stopped by a callback" in h.stop_reason


def _sched_run(make_sched, epochs=3, n=100, bs=25, **kw):
    X, y = blobs(n)
    model = mlp()
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    sched = make_sched(opt)
    h = fit(model, nn.CrossEntropyLoss(), opt, (X, y), (X, y), epochs=epochs, batch_size=bs,
            scheduler=sched, progress=False, **kw)
    return sched, h


def test_scheduler_stepping_rule():
    from fastreg.optim import lr_scheduler as S
    sched, h = _sched_run(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=12))
    assert sched.last_epoch == 12                     # per optimizer step: 3 epochs x 4 steps
    sched, h = _sched_run(lambda o: S.StepLR(o, step_size=1, gamma=0.5))
    assert sched.last_epoch == 3                      # per epoch
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025])
    sched, h = _sched_run(lambda o: S.StepLR(o, step_size=4, gamma=0.5),
                          scheduler_interval="step")
    assert sched.last_epoch == 12
    seen = []
    sched, h = _sched_run(lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5))
    orig = S.ReduceLROnPlateau.step

    def spy(self, metrics, epoch=None):
        seen.append(metrics)
        return orig(self, metrics, epoch)
    S.ReduceLROnPlateau.step = spy
    try:
        sched, h = _sched_run(lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5))
    finally:
        S.ReduceLROnPlateau.step = orig
    assert seen == h["val_loss"]                      # stepped with the validation loss
    with pytest.raises(ValueError, match="scheduler_interval"):
        _sched_run(lambda o: S.StepLR(o, step_size=1), scheduler_interval="batch")


def test_nan_loss_stops_with_epoch_and_step():
    X, y = blobs()
    X[130, 0] = np.nan
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 3\b"):
        fit(model, nn.CrossEntropyLoss(), fr.optim.SGD(model.parameters(), lr=0.1), (X, y),
            epochs=2, batch_size=64, shuffle=False, progress=False)


def test_fit_rejects_bad_arguments():
    X, y = blobs()
    model = mlp()
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match="train must be a tuple"):
        fit(model, loss, opt, X, progress=False)
    with pytest.raises(ValueError, match="same number of samples"):
        fit(model, loss, opt, (X, y[:-1]), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, loss, opt, (X, y), epochs=0, progress=False)
    with pytest.raises(ValueError, match="metrics"):
        fit(model, loss, opt, (X, y), metrics=["f1"], progress=False)
    with pytest.raises(KeyError, match="val_loss"):   # early stopping needs validation data
        fit(model, loss, opt, (X, y), callbacks=[EarlyStopping()], progress=False)


def test_float64_data_trains_float32_model_and_regression_skips_accuracy(rng):
    X = rng.standard_normal((64, 3))
    t = X @ np.array([[1.0], [-2.0], [0.5]])
    fr.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 1))
    h = fit(model, nn.MSELoss(), fr.optim.SGD(model.parameters(), lr=0.1), (X, t), epochs=30,
            batch_size=16, progress=False)
    assert "accuracy" not in h and h["loss"][-1] < 1e-3


def test_progress_output_and_plot(tmp_path, capsys, monkeypatch):
    X, y = blobs()
    model = mlp()
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    h = fit(model, nn.CrossEntropyLoss(), opt, (X, y), (X, y), epochs=2, progress=True)
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "epoch   1" in out and "val_loss" in out
    pytest.importorskip("matplotlib")
    path = tmp_path / "history.png"
    fig = h.plot(path)
    assert path.stat().st_size > 0 and len(fig.axes) == 2
    assert math.isfinite(h.to_dict()["wall_time"])


def test_single_sample_last_batch_is_dropped_by_default_for_batchnorm():
    X, y = blobs(65)
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    h = fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=2, batch_size=32, progress=False)
    assert len(h) == 2 and int(model[1].num_batches_tracked) == 4       # 2 x (32 + 32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=1, batch_size=32,
            drop_last=False, progress=False)
    fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=1, batch_size=30, drop_last=True,
        progress=False)
    assert int(model[1].num_batches_tracked) == 4 + 2 + 2   # failed run: 2, then 2 x 30


def test_tqdm_progress_bar_runs():
    pytest.importorskip("tqdm")
    X, y = blobs()
    model = mlp()
    h = fit(model, nn.CrossEntropyLoss(), fr.optim.SGD(model.parameters(), lr=0.1), (X, y),
            epochs=2, progress=True)
    assert len(h) == 2


def test_fit_skips_the_data_gradient_gemm_of_the_first_layer(backward_gemm_calls):
    # the loop never needs dL/d(data): a 2-Linear model runs 2 weight-gradient GEMMs per batch
    # and 1 input-gradient GEMM (the second layer's), as torch does for data without grad
    calls = backward_gemm_calls
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    fit(model, nn.CrossEntropyLoss(), fr.optim.Adam(model.parameters()), train=(X, y), epochs=2,
        batch_size=16, progress=False, seed=0)
    batches = 2 * 4
    assert calls == {"input": batches, "weight": 2 * batches}
