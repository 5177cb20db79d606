"""Run under ``mpiexec -n 2``: 2 ranks x batch k train exactly as 1 process x batch 2k.

Rank 0 also trains the single-process reference in the same process (same initial weights, same
global batches) and compares. Checks: plain MLP (float32 and float64), SyncBatchNorm vs
BatchNorm1d, and that mismatched models are refused by broadcast_parameters on every rank.
Prints "OK <check>" lines; any failure raises (and aborts the job).
"""
import sys

import numpy as np

import fastreg as fr
from fastreg import distributed as dist
from fastreg import nn

STEPS, K = 20, 128          # per-rank batch K (the exactness holds at any size)


def build(dtype, bn, seed=0):
    fr.manual_seed(seed)
    # before a BatchNorm the bias has a zero gradient (rounding noise, which Adam would
    # amplify to steps of size lr): no bias there, as usual
    layers = [nn.Linear(7, 33, bias=not bn, dtype=dtype)]
    if bn:
        layers.append(nn.BatchNorm1d(33, dtype=dtype))
    layers += [nn.ReLU(), nn.Linear(33, 3, bias=not bn, dtype=dtype)]
    if bn:
        layers.append(nn.BatchNorm1d(3, affine=False, momentum=None, dtype=dtype))
    return nn.Sequential(*layers)


def train(model, opt, loader):
    loss_fn = nn.CrossEntropyLoss()
    it, steps = iter(loader), 0
    while steps < STEPS:
        for xb, yb in it:
            out = model(xb)
            loss_fn(out, yb)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            steps += 1
            if steps == STEPS:
                break
        it = iter(loader)


def state(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def check(dtype, bn, rtol):
    rank, world = dist.rank(), dist.world_size()
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((5 * K * world, 7)) * 3 + 1).astype(dtype)
    y = rng.integers(0, 3, X.shape[0])
    model = build(dtype, bn, seed=100 + rank)       # different weights: broadcast must fix them
    if bn:
        model = dist.convert_sync_batchnorm(model)
    dist.broadcast_parameters(model)
    opt = dist.DistributedOptimizer(fr.optim.Adam(model.parameters(), lr=1e-2))
    train(model, opt, fr.data.DataLoader(X, y, batch_size=K, seed=5, shard=(rank, world)))
    got = state(model)
    others = dist.broadcast_object(got, root=1) if world > 1 else got
    if rank == 0:
        ref = build(dtype, bn, seed=100)
        ropt = fr.optim.Adam(ref.parameters(), lr=1e-2)
        train(ref, ropt, fr.data.DataLoader(X, y, batch_size=K * world, seed=5))
        want = state(ref)
        worst = max(float(np.max(np.abs(got[n] - w) / (np.abs(w) + 1e-3))) for n, w in
                    want.items() if w.dtype.kind == "f")
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, rtol=rtol, atol=rtol,
                                       err_msg=f"{name} ({dtype.__name__}, bn={bn})")
            # every rank holds the same model, bit for bit
            np.testing.assert_array_equal(others[name], got[name], err_msg=name)
        assert opt.allreduce_calls == STEPS, opt.allreduce_calls
        print(f"OK equivalence {np.dtype(dtype).name} bn={bn} steps={STEPS} "
              f"max rel diff {worst:.2e}", flush=True)


def check_mismatch():
    rank = dist.rank()
    model = nn.Sequential(nn.Linear(4, 5 + rank), nn.ReLU())
    try:
        dist.broadcast_parameters(model)
    except ValueError as exc:
        msg = str(exc)
        assert "rank 1" in msg and "0.weight" in msg, msg
        print(f"OK mismatch rank {rank}: {msg}", flush=True)
    else:
        raise AssertionError("a mismatched model was not refused")


def check_optimizer_state():
    # rank 0's moments, step count and hyper-parameters everywhere
    rank = dist.rank()
    fr.manual_seed(0)
    m = nn.Linear(3, 4)
    opt = fr.optim.Adam(m.parameters(), lr=0.1)
    if rank == 0:
        m.backward(np.ones((2, 4), np.float32) - m(np.ones((2, 3), np.float32)))
        opt.step()
        opt.param_groups[0]["lr"] = 0.05
    dist.broadcast_optimizer_state(opt)
    mine = opt.state_dict()
    theirs = dist.broadcast_object(mine, root=0)
    assert mine["param_groups"][0]["lr"] == 0.05
    for i, st in theirs["state"].items():
        for name, v in st.items():
            np.testing.assert_array_equal(mine["state"][i][name], v, err_msg=name)
    assert mine["state"][0]["step"] == 1.0
    if rank == 0:
        print("OK optimizer state broadcast", flush=True)


def check_dropout():
    # masks differ per rank, and are the single-process sequence on rank 0
    fr.manual_seed(3)
    d = nn.Dropout(0.5)
    m = d(np.ones((4, 64)))
    masks = fr.distributed.broadcast_object(m, root=1)
    if dist.rank() == 0:
        assert not np.array_equal(masks, m), "ranks drew the same dropout mask"
        print("OK dropout streams differ", flush=True)


if __name__ == "__main__":
    assert dist.init() == 2, "run under mpiexec -n 2"
    fr.set_num_threads(1)
    check(np.float64, False, 1e-12)
    check(np.float32, False, 5e-5)
    check(np.float64, True, 1e-12)
    check(np.float32, True, 5e-5)
    check_mismatch()
    check_optimizer_state()
    check_dropout()
    dist.barrier()
    sys.exit(0)
