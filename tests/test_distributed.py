"""fastreg.distributed: data-parallel training over MPI.

The multi-rank tests start ``mpiexec -n 2 python tests/mpi/<script>`` as subprocesses with a
timeout (a hang is a failure) and skip where mpi4py or mpiexec is missing
(``pip install 'fastreg[mpi]'``). The rest runs in-process, in a world of one.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastreg as fr
from fastreg import _random, nn
from fastreg import distributed as dist
from fastreg.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "mpi")
TIMEOUT = 180            # generous: the first run in a fresh checkout compiles numba kernels


@pytest.fixture(autouse=True)
def _no_mpi_in_this_process(monkeypatch):
    """The in-process tests run in a world of one without initializing MPI in the pytest
    process (``from mpi4py import MPI`` would; the mpiexec tests only import the package)."""
    from fastreg.distributed import _comm
    monkeypatch.setattr(_comm, "_state", dict(_comm._state, initialized=False, comm=None,
                                              MPI=None, rank=0, size=1))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    yield
    _random.set_philox_stream(0)


def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'fastreg[mpi]')")
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.path.exists(here) else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec not found (pip install mpich, or an MPI library)")
    return exe


def _run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [_mpiexec(), "-n", "2", sys.executable, os.path.join(SCRIPTS, script), *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                           cwd=ROOT, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} {args}: no result after {TIMEOUT} s (hang?)\n{exc.stdout}\n"
                    f"{exc.stderr}")
    return p, p.stdout + p.stderr, time.perf_counter() - t0


# ---------------------------------------------------------------- mpiexec -n 2


def test_two_ranks_equal_one_process_with_double_batch():
    p, out, _ = _run("equivalence.py")
    assert p.returncode == 0, out
    for line in ("OK equivalence float64 bn=False", "OK equivalence float32 bn=False",
                 "OK equivalence float64 bn=True", "OK equivalence float32 bn=True",
                 "OK mismatch rank 0", "OK mismatch rank 1", "OK optimizer state broadcast",
                 "OK dropout streams differ"):
        assert line in out, out


def test_fit_distributed_early_stopping_checkpoint_resume(tmp_path):
    p, out, _ = _run("fit_run.py", str(tmp_path))
    assert p.returncode == 0, out
    for line in ("OK early stopping", "OK resume:", "OK resume refused", "OK fit equivalence"):
        assert line in out, out
    assert sorted(os.listdir(tmp_path)) == ["es.ckpt", "full.ckpt", "part.ckpt"]


@pytest.mark.parametrize("mode", ["fit", "script"])
def test_a_failing_rank_ends_the_job(mode):
    p, out, seconds = _run("failure.py", mode)
    assert p.returncode != 0, out
    assert "UNREACHABLE" not in out
    assert "injected failure on rank 1" in out and "rank 1 of 2 failed" in out, out
    assert seconds < 60, f"the job took {seconds:.0f} s to end"


# ---------------------------------------------------------------- a world of one


def test_world_of_one():
    assert dist.init() == dist.world_size() == 1
    assert dist.rank() == 0 and dist.is_main()
    dist.barrier()
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    np.testing.assert_array_equal(dist.allreduce_sum([1.5, 2.0]), [1.5, 2.0])
    m = nn.Linear(3, 2)
    w = m.weight.data.copy()
    dist.broadcast_parameters(m)
    np.testing.assert_array_equal(m.weight.data, w)
    with pytest.raises(TypeError, match="model must be a fastreg.nn.Module"):
        dist.broadcast_parameters("model")


def test_distributed_optimizer_in_a_world_of_one_is_the_optimizer():
    def run(wrap):
        fr.manual_seed(0)
        m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
        opt = fr.optim.Adam(m.parameters(), lr=0.1)
        if wrap:
            opt = dist.DistributedOptimizer(opt)
            assert dist.DistributedOptimizer(opt) is opt          # idempotent
            assert isinstance(opt, fr.optim.Adam) and type(opt).__name__ == "Adam"
        x = np.random.default_rng(0).standard_normal((9, 5)).astype(np.float32)
        for _ in range(3):
            opt.zero_grad()
            m.backward(np.ones((9, 2), np.float32) - m(x))
            opt.step()
        return m.state_dict(), opt.state_dict()

    (a, sa), (b, sb) = run(False), run(True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for i, st in sa["state"].items():
        for name, v in st.items():
            np.testing.assert_array_equal(sb["state"][i][name], v)
    with pytest.raises(TypeError, match="fastreg.optim optimizer"):
        dist.DistributedOptimizer(object())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batchnorm_in_a_world_of_one_is_batchnorm(dtype, tmp_path):
    fr.manual_seed(0)
    bn = nn.BatchNorm1d(7, dtype=dtype)
    model = nn.Sequential(nn.Linear(3, 7, dtype=dtype), bn)
    ref = {k: v.copy() for k, v in model.state_dict().items()}
    model = dist.convert_sync_batchnorm(model)
    sync = model[1]
    assert isinstance(sync, dist.SyncBatchNorm) and isinstance(sync, nn.BatchNorm1d)
    assert sync.weight is bn.weight and sync.running_mean is bn.running_mean   # shared
    fr.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 7, dtype=dtype), nn.BatchNorm1d(7, dtype=dtype))
    plain.load_state_dict(ref)
    x = np.random.default_rng(1).standard_normal((33, 3)).astype(dtype)
    np.testing.assert_array_equal(model(x), plain(x))
    g = np.random.default_rng(2).standard_normal((33, 7)).astype(dtype)
    np.testing.assert_array_equal(model.backward(g), plain.backward(g))
    assert "SyncBatchNorm(7" in repr(model)
    model.eval()
    np.testing.assert_array_equal(fr.inference.compile(model)(x), model(x))   # folds as BN
    # SyncBatchNorm is not a registered layer: the file stores the state and the class name
    # (as for any custom module), and loads into a given instance
    path = os.path.join(tmp_path, "sync.fr")
    fr.save(model, path)
    with pytest.raises(fr.ModelFileError, match="model="):
        fr.load(path)
    fresh = dist.convert_sync_batchnorm(
        nn.Sequential(nn.Linear(3, 7, dtype=dtype), nn.BatchNorm1d(7, dtype=dtype)))
    loaded = fr.load(path, model=fresh)
    np.testing.assert_array_equal(loaded(x), model(x))
    back = dist.revert_sync_batchnorm(model)
    assert type(back[1]) is nn.BatchNorm1d and back[1].weight is bn.weight


def test_dataloader_shard_splits_each_global_batch():
    X = np.arange(37.0)[:, None]
    y = np.arange(37)
    for world in (1, 2, 3):
        ref = list(DataLoader(X, y, batch_size=4 * world, seed=3))
        shards = [list(DataLoader(X, y, batch_size=4, seed=3, shard=(r, world)))
                  for r in range(world)]
        steps = len(shards[0])
        assert all(len(s) == steps for s in shards)          # every rank: the same steps
        seen = []
        for i in range(steps):
            union = np.concatenate([s[i][1] for s in shards])
            np.testing.assert_array_equal(union, ref[i][1])   # = the unsharded 4*world batch
            seen.extend(union)
        # each sample at most once; only a last global batch smaller than world is dropped
        assert len(seen) == len(set(seen)) == (36 if world == 3 else 37)
    loader = DataLoader(X, y, batch_size=4, shard=(1, 2), shuffle=False)
    assert len(loader) == 5 and loader.global_batch_size(4) == 5
    assert [len(b) for b, _ in loader] == [4, 4, 4, 4, 2]
    assert "shard=(1, 2)" in repr(loader)


@pytest.mark.parametrize("shard, err", [((2, 2), ValueError), ((0, 0), ValueError),
                                        ((-1, 2), ValueError), (3, TypeError),
                                        ((0, 1, 2), TypeError)])
def test_dataloader_shard_is_checked(shard, err):
    with pytest.raises(err, match="shard"):
        DataLoader(np.zeros((4, 1)), batch_size=2, shard=shard)


def test_dropout_stream_offsets_the_counter():
    x = np.ones((8, 40))
    masks = []
    try:
        for stream in (0, 1, 0):
            _random.set_philox_stream(stream)
            fr.manual_seed(5)
            masks.append(nn.Dropout(0.5)(x).copy())
    finally:
        _random.set_philox_stream(0)
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], masks[2])         # reproducible per stream
    with pytest.raises(ValueError, match="stream"):
        _random.set_philox_stream(-1)


def test_launched_without_mpi4py_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("PMI_SIZE", "4")
    assert dist.launched_world_size() == 4
    with pytest.raises(ImportError, match="fastreg\\[mpi\\]"):
        dist.init()


def test_fit_distributed_flag_is_checked():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="distributed"):
        fr.train.fit(m, nn.MSELoss(), fr.optim.SGD(m.parameters(), lr=0.1),
                     (np.zeros((4, 2)), np.zeros((4, 2))), epochs=1, distributed="yes",
                     progress=False)
