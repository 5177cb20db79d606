"""Checkpoints: a run resumed from epoch k is bitwise identical to one that never stopped."""
from __future__ import annotations

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.data import DataLoader
from fastreg.io import ModelFileError
from fastreg.train import EarlyStopping, History
from fastreg.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resume,
    resume_trainer,
    save_checkpoint,
)
from fastreg.train.fit import Trainer

EPOCHS = 6
BATCH = 16


def _data():
    g = np.random.default_rng(0)
    X = g.standard_normal((90, 10)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1)
    return X, y


def make_run(init_seed: int):
    """A small MLP with BatchNorm + Dropout, AdamW, OneCycleLR, a shuffling loader."""
    fr.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(10, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(24, 3))
    opt = fr.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    X, y = _data()
    loader = DataLoader(X, y, batch_size=BATCH, shuffle=True)     # seed from manual_seed
    sched = fr.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2,
                                             total_steps=EPOCHS * len(loader))
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, sched, History())
    trainer.loader = loader
    trainer.callbacks = [EarlyStopping(monitor="val_loss", patience=100)]
    return trainer


def train_epochs(trainer, first: int, last: int, checkpoint: Checkpoint | None = None):
    """The fit loop's order of operations: batches, validation, callbacks (checkpoint last)."""
    X, y = _data()
    loss_fn = trainer.loss_fn
    for epoch in range(first, last + 1):
        trainer.epoch = epoch
        trainer.model.train()
        for xb, yb in trainer.loader:
            loss = loss_fn(trainer.model(xb), yb)
            trainer.optimizer.zero_grad()
            trainer.model.backward(loss_fn.backward(), input_grad=False)
            trainer.optimizer.step()
            trainer.scheduler.step()
            trainer.global_step += 1
        trainer.model.eval()
        logs = {"loss": loss, "val_loss": loss_fn(trainer.model(X), y)}
        trainer.history.append(epoch, logs, 0.0)
        for cb in trainer.callbacks:
            cb.on_epoch_end(trainer, epoch, logs)
        if checkpoint is not None:
            checkpoint.on_epoch_end(trainer, epoch, logs)


def _assert_same_run(a, b):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and va.dtype == vb.dtype
        assert np.array_equal(va, vb), f"{ka} differs"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert np.array_equal(v, sb["state"][i][k]), (i, k)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert a.loader.state_dict() == b.loader.state_dict()
    assert fr._random.default_generator.get_state() is not None
    assert a.global_step == b.global_step
    assert a.history.history == b.history.history
    esa, esb = a.callbacks[0], b.callbacks[0]
    assert (esa.best, esa.best_epoch, esa.wait) == (esb.best, esb.best_epoch, esb.wait)


@pytest.mark.parametrize("k", [1, 3])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, k):
    path = tmp_path / "run.ckpt"
    full = make_run(init_seed=1)
    train_epochs(full, 1, EPOCHS)
    rng_full = fr._random.default_generator.get_state()

    first = make_run(init_seed=1)
    train_epochs(first, 1, k, Checkpoint(path))
    fr.manual_seed(12345)                       # a fresh process would have other state
    second = make_run(init_seed=99)             # different init: everything must come back
    for cb in second.callbacks:
        cb.on_train_begin(second)
    assert resume_trainer(path, second) == k
    assert second.epoch == k and second.global_step == k * len(second.loader)
    train_epochs(second, k + 1, EPOCHS)
    _assert_same_run(full, second)
    assert fr._random.default_generator.get_state() == rng_full


def test_without_the_rng_state_the_run_diverges(tmp_path):
    """Guards the test above: dropout masks depend on the restored Philox offset."""
    path = tmp_path / "run.ckpt"
    full = make_run(init_seed=1)
    train_epochs(full, 1, EPOCHS)
    first = make_run(init_seed=1)
    train_epochs(first, 1, 2, Checkpoint(path))
    second = make_run(init_seed=1)
    resume_trainer(path, second)
    fr.manual_seed(777)                          # clobber the restored random state
    train_epochs(second, 3, EPOCHS)
    assert not np.array_equal(full.model[0].weight.data, second.model[0].weight.data)


def test_checkpoint_contents_and_every(tmp_path):
    path = tmp_path / "c.ckpt"
    run = make_run(0)
    cb = Checkpoint(path, every=2)
    train_epochs(run, 1, 3, cb)
    assert cb.last_saved_epoch == 2
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and ckpt["architecture"]["type"] == "Sequential"
    assert set(ckpt["model"]) == set(run.model.state_dict())
    assert ckpt["loader"]["epoch"] == 2
    assert isinstance(ckpt["optimizer"]["param_groups"][0]["betas"], tuple)
    assert ckpt["callbacks"][0]["fields"]["best_epoch"] in (1, 2)
    with pytest.raises(ValueError, match="every"):
        Checkpoint(path, every=0)


def test_checkpoint_write_is_atomic_and_hardened(tmp_path):
    path = tmp_path / "c.ckpt"
    run = make_run(0)
    save_checkpoint(path, run.model, run.optimizer, run.scheduler, 0)
    data = path.read_bytes()
    for cut in (5, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_checkpoint(bad)
    with pytest.raises(ModelFileError, match="format is 'fastreg-model'"):
        fr.io.save(run.model, tmp_path / "model.fr")
        load_checkpoint(tmp_path / "model.fr")
    other = nn.Sequential(nn.Linear(10, 5))
    with pytest.raises(ModelFileError, match="cannot resume"):
        resume(path, other)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unsaveable_state_is_a_clear_error_and_writes_nothing(tmp_path):
    run = make_run(0)
    with pytest.raises(TypeError, match="cannot store a function"):
        save_checkpoint(tmp_path / "c.ckpt", run.model, run.optimizer, run.scheduler, 0,
                        extra={"hook": lambda e: 0.9 ** e})
    assert list(tmp_path.iterdir()) == []


def test_fit_checkpoint_and_resume(tmp_path):
    """``fit(..., checkpoint=path, resume=True)`` continues bitwise where the file left off."""
    X, y = _data()

    def build():
        fr.manual_seed(3)
        model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(),
                              nn.Dropout(0.3), nn.Linear(16, 3))
        opt = fr.optim.AdamW(model.parameters(), lr=1e-2)
        sched = fr.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2,
                                                 total_steps=EPOCHS * -(-len(X) // BATCH))
        return model, opt, sched

    def run(model, opt, sched, epochs, path, resume_flag):
        return fr.train.fit(model, nn.CrossEntropyLoss(), opt, train=(X, y), valid=(X, y),
                            epochs=epochs, batch_size=BATCH, scheduler=sched,
                            callbacks=[EarlyStopping(patience=100,
                                                     restore_best_weights=False)],
                            progress=False, checkpoint=path, resume=resume_flag)

    full = build()
    run(*full, EPOCHS, tmp_path / "a.ckpt", False)
    part = build()
    run(*part, 3, tmp_path / "b.ckpt", False)
    resumed = build()
    fr.manual_seed(999)
    hist = run(*resumed, EPOCHS, tmp_path / "b.ckpt", True)
    assert hist.epochs == list(range(1, EPOCHS + 1))
    for (k, a), (_, b) in zip(full[0].state_dict().items(), resumed[0].state_dict().items()):
        assert np.array_equal(a, b), k
