"""Run under ``mpiexec -n 2`` with a scratch directory argument: ``fit(distributed=True)``.

Checks (prints "OK <check>" lines; any failure raises and aborts the job):
  early stopping (and ReduceLROnPlateau) decide on the same epoch on every rank, from the same
  (reduced) logs;
  the checkpoint is written by rank 0 only, once per epoch;
  a run resumed from an epoch-2 checkpoint ends bit for bit as the uninterrupted run, and one
  with another number of steps per epoch (world size, batch size) is refused;
  2 ranks x batch k with a short last global batch train as 1 process x batch 2k.
"""
import os
import sys

import numpy as np

import fastreg as fr
from fastreg import distributed as dist
from fastreg import nn
from fastreg.train import checkpoint as ckpt_mod

rank = None


def data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)                      # random labels: validation loss soon rises
    return X, y


def model_opt(dropout=0.3, seed=1):
    fr.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Dropout(dropout), nn.Linear(48, 3))
    return m, fr.optim.Adam(m.parameters(), lr=3e-2)


def run(epochs, path=None, resume=False, patience=None, seed=1, distributed=True):
    m, opt = model_opt(seed=seed)
    cbs = [fr.train.EarlyStopping(patience=patience)] if patience is not None else []
    sched = None if patience is None else \
        fr.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    h = fr.train.fit(m, nn.CrossEntropyLoss(), opt, data(64, 0), valid=data(37, 1),
                     epochs=epochs, batch_size=8, seed=4, callbacks=cbs, scheduler=sched,
                     progress=False,
                     checkpoint=path, resume=resume, distributed=distributed)
    return m, h


def main(tmp):
    global rank
    assert dist.init() == 2, "run under mpiexec -n 2"
    rank = dist.rank()
    fr.set_num_threads(1)

    # --- early stopping + checkpoint written once -----------------------------------------
    calls = []
    real_save = ckpt_mod.save_checkpoint
    ckpt_mod.save_checkpoint = lambda *a, **k: (calls.append(1), real_save(*a, **k))
    path = os.path.join(tmp, "es.ckpt")
    _, h = run(40, path=path, patience=2, distributed=None)   # None: on under mpiexec
    ckpt_mod.save_checkpoint = real_save
    everyone = dist.broadcast_object((len(h), h.history, len(calls)), root=1)
    if rank == 0:
        assert h.stopped_early and len(h) < 40, (len(h), h.stop_reason)
        assert everyone[0] == len(h), f"rank 1 stopped after {everyone[0]}, rank 0 {len(h)}"
        assert everyone[1] == h.history, "the ranks logged different numbers"
        assert h.history["lr"][-1] < h.history["lr"][0], h.history["lr"]   # plateau: lowered
        assert len(calls) == len(h) and everyone[2] == 0, (len(calls), everyone[2])
        assert os.path.exists(path)
        print(f"OK early stopping: both ranks stopped after epoch {len(h)} (lr "
              f"{h.history['lr']} on both); checkpoint written "
              f"{len(calls)}x by rank 0, {everyone[2]}x by rank 1", flush=True)

    # --- resume continues identically ----------------------------------------------------
    full, hf = run(5, path=os.path.join(tmp, "full.ckpt"))
    part_path = os.path.join(tmp, "part.ckpt")
    run(2, path=part_path)
    dist.barrier()
    resumed, hr = run(5, path=part_path, resume=True, seed=99)   # other init: resume replaces it
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=f"rank {rank}: {name} after resume")
    assert hr.history == hf.history, (hr.history, hf.history)
    if rank == 0:
        print("OK resume: epochs 3-5 after a restart equal the uninterrupted run, bit for bit",
              flush=True)
    # a checkpoint of a run with another number of steps per epoch is refused on every rank
    m, opt = model_opt()
    try:
        fr.train.fit(m, nn.CrossEntropyLoss(), opt, data(64, 0), epochs=5, batch_size=16,
                     seed=4, progress=False, checkpoint=part_path, resume=True,
                     distributed=True)
    except ValueError as exc:
        assert "resume with the world size" in str(exc), exc
        if rank == 0:
            print(f"OK resume refused: {exc}", flush=True)
    else:
        raise AssertionError("a checkpoint with another steps-per-epoch was accepted")

    # a training set too small to give every rank a sample is refused on every rank
    try:
        fr.train.fit(m, nn.CrossEntropyLoss(), opt, data(1, 0), epochs=1, progress=False,
                     distributed=True)
    except ValueError as exc:
        assert "not one batch for each of the 2 ranks" in str(exc), exc
    else:
        raise AssertionError("an empty shard was accepted")

    # --- fit: 2 ranks x 8 equals 1 process x 16, with a short last global batch (51 = 3x16 + 2 + 1)
    m2, opt2 = model_opt(dropout=0.0)
    X, y = data(51, 7)
    fr.train.fit(m2, nn.CrossEntropyLoss(), opt2, (X, y), epochs=2, batch_size=8, seed=4,
                 progress=False, distributed=True)
    if rank == 0:
        m1, opt1 = model_opt(dropout=0.0)
        fr.train.fit(m1, nn.CrossEntropyLoss(), opt1, (X, y), epochs=2, batch_size=16, seed=4,
                     progress=False, distributed=False)
        for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
            np.testing.assert_allclose(b, a, rtol=5e-5, atol=5e-5, err_msg=name)
        print("OK fit equivalence with a short last global batch", flush=True)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
