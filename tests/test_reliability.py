"""Issue 13 (reliability): one test per numbered defect, each failing before its fix.

Silent wrong results and half-applied state (1-5), bounded resources (6-9), permissions (10),
one error type for bad files and clean CLI errors (11-14). The fuzzing of item 11 is in
tests/test_fuzz_files.py.
"""
from __future__ import annotations

import json
import os
import stat
import struct
import threading
import time
import zipfile

import numpy as np
import pytest

import fastreg as fr
from fastreg import cli, nn
from fastreg import io as frio
from fastreg.io import ModelFileError
from fastreg.train import EarlyStopping, fit
from fastreg.train.checkpoint import load_checkpoint, resume, save_checkpoint


def _mlp(seed=0, dtype="float64"):
    fr.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16, dtype=dtype), nn.ReLU(),
                         nn.Linear(16, 16, dtype=dtype), nn.Tanh(),
                         nn.Linear(16, 3, dtype=dtype))


def _data(n=40, k=6, seed=0):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, k))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y


def _rewrite_header(path, out, edit):
    """Copy the container at ``path`` to ``out`` with ``edit(header)`` applied."""
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "fastreg.json":
                header = json.loads(data)
                edit(header)
                data = json.dumps(header).encode()
            zout.writestr(info.filename, data)


# ---------------------------------------------------------------------------------------------
# 1. concurrent predict

class _Residual(nn.Module):
    """A custom module (forward only) holding foldable Sequentials."""

    def __init__(self, k=6, h=16, m=3, dtype="float64"):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(k, h, dtype=dtype), nn.BatchNorm1d(h, dtype=dtype),
                                   nn.ReLU(), nn.Linear(h, k, dtype=dtype))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(k, m, dtype=dtype))

    def forward(self, x):
        return self.head(x + self.inner(x))


@pytest.mark.parametrize("kind", ["sequential", "custom"])
def test_concurrent_predict_matches_single_threaded(tmp_path, kind):
    fr.manual_seed(1)
    if kind == "sequential":
        model = nn.Sequential(nn.Linear(6, 128, dtype="float64"), nn.ReLU(),
                              nn.Linear(128, 128, dtype="float64"), nn.Tanh(),
                              nn.Linear(128, 3, dtype="float64"))
    else:
        model = _Residual(h=128)
        model.inner[1].running_mean[...] = 0.3
    frio.save(model, tmp_path / "m.fr")
    loaded = (frio.load(tmp_path / "m.fr") if kind == "sequential"
              else frio.load(tmp_path / "m.fr", model=_Residual(h=128)))
    g = np.random.default_rng(0)
    # one batch size: before the fix every thread wrote the same cached buffers
    inputs = [g.standard_normal((48, 6)) for _ in range(8)]
    expected = [loaded.predict(x) for x in inputs]
    barrier = threading.Barrier(4)
    bad = []

    def worker(t):
        barrier.wait()
        for i in range(100):
            j = (i + t) % len(inputs)
            out = loaded.predict(inputs[j])
            if not np.array_equal(out, expected[j]):
                bad.append((t, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert bad == []
    np.testing.assert_allclose(expected[0], model.eval()(inputs[0]), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 2. resuming a finished run trains no further

def test_resume_after_early_stop_returns_the_history_without_training(tmp_path):
    X, y = _data()
    ck = tmp_path / "ck.fr"

    def run():
        model = _mlp()
        opt = fr.optim.SGD(model.parameters(), lr=0.1)
        stopper = EarlyStopping(monitor="loss", patience=1, min_delta=1e9,
                                restore_best_weights=False)
        h = fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=10, batch_size=8,
                callbacks=[stopper], progress=False, seed=3, checkpoint=ck, resume=True)
        return model, h

    m1, h1 = run()
    assert h1.stopped_early and len(h1) == 2
    m2, h2 = run()                      # same call again: resumes the finished run
    assert len(h2) == 2 and h2.stopped_early
    assert h2.history["loss"] == h1.history["loss"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert load_checkpoint(ck)["stop_training"] is True


# ---------------------------------------------------------------------------------------------
# 3. load_state_dict / resume are all or nothing

def test_module_load_state_dict_is_all_or_nothing():
    model = _mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: np.full(v.shape, 7.0) for k, v in before.items()}
    state["4.bias"] = np.array(["a", "b", "c"])        # the last key cannot be cast
    with pytest.raises(RuntimeError, match="4.bias"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_scheduler_load_state_dict_is_all_or_nothing():
    opt = fr.optim.SGD(_mlp().parameters(), lr=0.1)
    sched = fr.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=3)
    sd = sched.state_dict()
    with pytest.raises(ValueError, match="mode"):
        sched.load_state_dict({**sd, "patience": 99, "mode": "sideways"})
    assert sched.patience == 3 and sched.mode == "min"
    with pytest.raises(TypeError, match="mapping"):
        sched.load_state_dict([("patience", 99), "junk"])
    assert sched.patience == 3


def test_optimizer_load_state_dict_malformed_is_a_clear_error():
    opt = fr.optim.Adam(_mlp().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="state_dict must be"):
        opt.load_state_dict({"state": [], "param_groups": opt.state_dict()["param_groups"]})


def test_resume_failure_rolls_everything_back(tmp_path):
    model = _mlp()
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "ck.fr", model, opt, epoch=1)
    other = _mlp(seed=5)
    before = {k: v.copy() for k, v in other.state_dict().items()}
    wrong = fr.optim.SGD([{"params": list(other.parameters())[:2]},
                          {"params": list(other.parameters())[2:]}], lr=0.1)
    rng = fr._random.default_generator.get_state()
    with pytest.raises(ModelFileError, match="cannot resume"):
        resume(tmp_path / "ck.fr", other, wrong)       # the optimizer does not fit
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert fr._random.default_generator.get_state()["seed"] == rng["seed"]


# ---------------------------------------------------------------------------------------------
# 4. an architecture whose widths do not chain does not load

@pytest.mark.parametrize("second", [lambda: nn.Linear(3, 2), lambda: nn.LayerNorm(5),
                                    lambda: nn.BatchNorm1d(5)])
def test_architecture_that_does_not_chain_is_refused(tmp_path, second):
    frio.save(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), second()), tmp_path / "m.fr")
    with pytest.raises(ModelFileError, match="expects .* features"):
        frio.load(tmp_path / "m.fr")


# ---------------------------------------------------------------------------------------------
# 5. saving through a symlink writes its target

def test_save_through_a_symlink_writes_the_target(tmp_path):
    target, link = tmp_path / "real.fr", tmp_path / "link.fr"
    frio.save(nn.Linear(3, 2), target)
    os.symlink(target.name, link)                      # relative link
    new = nn.Linear(3, 2)
    frio.save(new, link)
    assert os.path.islink(link)
    np.testing.assert_array_equal(frio.load(target).weight.data, new.weight.data)
    assert sorted(os.listdir(tmp_path)) == ["link.fr", "real.fr"]


# ---------------------------------------------------------------------------------------------
# 6. a stored array referenced many times is refused

def test_checkpoint_reusing_one_array_is_refused(tmp_path):
    model = _mlp()
    save_checkpoint(tmp_path / "ck.fr", model, epoch=1)

    def edit(h):
        items = h["state"]["__items__"]
        for item in items:
            if item[0] == "extra":
                ref = {"__array__": "a0", "scalar": False}
                item[1] = [ref] * 50                      # 50 references to one member

    _rewrite_header(tmp_path / "ck.fr", tmp_path / "bad.fr", edit)
    with pytest.raises(ModelFileError, match="referenced more than once"):
        load_checkpoint(tmp_path / "bad.fr")


# ---------------------------------------------------------------------------------------------
# 7. only regular files are read

@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_files_and_fifos_are_refused(tmp_path):
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match="not a regular file"):
        frio.load("/dev/zero")
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_checkpoint("/dev/zero")
    fifo = tmp_path / "fifo.fr"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="fifo.fr: not a regular file"):
        frio.load(fifo)                                # does not wait for a writer
    with pytest.raises(ModelFileError, match=str(tmp_path)):
        frio.load(tmp_path)                            # a directory
    assert time.perf_counter() - t < 5


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc")
def test_proc_files_are_model_file_errors_naming_the_path():
    with pytest.raises(ModelFileError, match="/proc/self/status"):
        frio.load("/proc/self/status")


# ---------------------------------------------------------------------------------------------
# 8. stale temporaries of killed saves are cleaned up

def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".m.fr.ab_cd123.tmp"           # the pattern fastreg's saves use
    fresh = tmp_path / ".m.fr.zz9_yy88.tmp"           # newer than this process: kept
    other = tmp_path / ".n.fr.ab_cd123.tmp"           # another target: kept
    foreign = tmp_path / ".m.fr.backup.tmp"           # not fastreg's pattern: kept
    for p in (stale, fresh, other, foreign):
        p.write_bytes(b"x" * 100)
    for p in (stale, other, foreign):
        os.utime(p, (1e9, 1e9))                      # 2001: before this process started
    frio.save(nn.Linear(3, 2), tmp_path / "m.fr")
    assert not stale.exists()
    assert fresh.exists() and other.exists() and foreign.exists()


# ---------------------------------------------------------------------------------------------
# 9. fit(batch_size=1)

def test_fit_batch_size_one_trains_and_batchnorm_is_refused():
    X, y = _data(n=12)
    model = _mlp()
    before = model[0].weight.data.copy()
    h = fit(model, nn.CrossEntropyLoss(), fr.optim.SGD(model.parameters(), lr=0.05), (X, y),
            epochs=2, batch_size=1, progress=False, seed=0)
    assert len(h) == 2 and np.isfinite(h.history["loss"]).all()
    assert not np.array_equal(model[0].weight.data, before)
    bn = nn.Sequential(nn.Linear(6, 4, dtype="float64"), nn.BatchNorm1d(4, dtype="float64"),
                       nn.Linear(4, 3, dtype="float64"))
    w = bn[0].weight.data.copy()
    with pytest.raises(ValueError, match="batch_size=1 cannot train BatchNorm1d 1"):
        fit(bn, nn.CrossEntropyLoss(), fr.optim.SGD(bn.parameters(), lr=0.05), (X, y),
            epochs=1, batch_size=1, progress=False)
    np.testing.assert_array_equal(bn[0].weight.data, w)


# ---------------------------------------------------------------------------------------------
# 10. file modes

@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_new_files_follow_the_umask_and_overwrites_keep_the_mode(tmp_path):
    old = os.umask(0o022)
    try:
        frio.save(nn.Linear(3, 2), tmp_path / "m.fr")
        assert stat.S_IMODE(os.stat(tmp_path / "m.fr").st_mode) == 0o644
        save_checkpoint(tmp_path / "ck.fr", nn.Linear(3, 2), epoch=0)
        assert stat.S_IMODE(os.stat(tmp_path / "ck.fr").st_mode) == 0o644
        os.umask(0o077)
        frio.save(nn.Linear(3, 2), tmp_path / "p.fr")
        assert stat.S_IMODE(os.stat(tmp_path / "p.fr").st_mode) == 0o600
        os.chmod(tmp_path / "m.fr", 0o640)
        frio.save(nn.Linear(3, 2), tmp_path / "m.fr")     # overwrite keeps 0640
        assert stat.S_IMODE(os.stat(tmp_path / "m.fr").st_mode) == 0o640
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------
# 11. every damaged file is a ModelFileError (crafted cases; the fuzzing is separate)

def _set_extract_version(path, version=84):
    """Set 'version needed to extract' of every central-directory entry (zipfile raises
    NotImplementedError('zip file version 8.4') on open)."""
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        struct.pack_into("<H", data, i + 6, version)
        i = data.find(b"PK\x01\x02", i + 4)
    path.write_bytes(bytes(data))


def test_zip_version_flips_are_model_file_errors(tmp_path):
    frio.save(_mlp(), tmp_path / "m.fr")
    save_checkpoint(tmp_path / "ck.fr", _mlp(), epoch=1)
    for p in (tmp_path / "m.fr", tmp_path / "ck.fr"):
        _set_extract_version(p)
    with pytest.raises(ModelFileError, match="m.fr"):
        frio.load(tmp_path / "m.fr")
    with pytest.raises(ModelFileError, match="ck.fr"):
        load_checkpoint(tmp_path / "ck.fr")


def test_crafted_checkpoints_are_model_file_errors(tmp_path):
    model = _mlp()
    opt = fr.optim.SGD(model.parameters(), lr=0.1)
    stopper = EarlyStopping(monitor="loss")
    save_checkpoint(tmp_path / "ck.fr", model, opt, epoch=1, callbacks=[stopper])

    def set_field(name, value):
        def edit(h):
            for item in h["state"]["__items__"]:
                if item[0] == name:
                    item[1] = value
        return edit

    unhashable = {"__items__": [[{"__tuple__": [[1, 2]]}, 1]]}
    cases = {
        "unhashable_key": ("extra", unhashable, "unhashable"),
        "callbacks_list": ("callbacks", [[1]], "cannot resume"),
        "rng_list": ("rng", [1, 2], "cannot resume"),
        "optimizer_list": ("optimizer", [1], "cannot resume"),
        "huge_epoch": ("global_step", -5, "global_step"),
    }
    for case, (field, value, match) in cases.items():
        bad = tmp_path / f"{case}.fr"
        _rewrite_header(tmp_path / "ck.fr", bad, set_field(field, value))
        with pytest.raises(ModelFileError, match=match):
            resume(bad, _mlp(), fr.optim.SGD(model.parameters(), lr=0.1),
                   callbacks=[EarlyStopping(monitor="loss")])


def _npy(shape, data=b""):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + data


@pytest.mark.parametrize("shape", [(0, -1), (-1, 6), (2**40, 2**40)])
def test_negative_or_oversized_npy_shapes_are_model_file_errors(tmp_path, shape):
    save_checkpoint(tmp_path / "ck.fr", _mlp(), epoch=1)
    with zipfile.ZipFile(tmp_path / "ck.fr") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["a0.npy"] = _npy(shape)
    with zipfile.ZipFile(tmp_path / "bad.fr", "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    with pytest.raises(ModelFileError, match="a0"):
        load_checkpoint(tmp_path / "bad.fr")


# ---------------------------------------------------------------------------------------------
# 12. save errors name the caller's path

def test_save_errors_name_the_target_not_the_temporary(tmp_path):
    path = tmp_path / "missing_dir" / "m.fr"
    with pytest.raises(FileNotFoundError) as info:
        frio.save(nn.Linear(3, 2), path)
    assert info.value.filename == str(path)
    assert ".tmp" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# 13. the CLI reports user errors in one line

def _one_error_line(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0], err
    return err[0]


def test_cli_predict_user_errors_are_one_line(tmp_path, capsys):
    X, y = _data(n=5, k=3)
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,c,target\n" + "\n".join(
        ",".join(f"{v:.3f}" for v in row) + f",{t}" for row, t in zip(X, y)) + "\n")
    frio.save(nn.Linear(3, 2), tmp_path / "plain.fr")          # no metadata: every column
    assert "feature column" in _one_error_line(capsys, ["predict", str(tmp_path / "plain.fr"),
                                                         str(csv)])
    frio.save(nn.Linear(4, 3), tmp_path / "cls.fr",
              metadata={"task": "classification", "classes": ["x", "y"]})
    assert "2 class" in _one_error_line(capsys, ["predict", str(tmp_path / "cls.fr"), str(csv)])
    frio.save(nn.Linear(4, 3), tmp_path / "bad.fr")
    _set_extract_version(tmp_path / "bad.fr")
    assert "bad.fr" in _one_error_line(capsys, ["predict", str(tmp_path / "bad.fr"), str(csv)])


# ---------------------------------------------------------------------------------------------
# 14. lists and tuples are arrays

def test_predict_accepts_lists_and_tuples(tmp_path):
    frio.save(nn.Linear(3, 2, dtype="float64"), tmp_path / "m.fr")
    m = frio.load(tmp_path / "m.fr")
    row = [0.5, -1.0, 2.0]
    expected = m.predict(np.array(row))
    assert expected.shape == (2,)
    np.testing.assert_array_equal(m.predict(row), expected)
    np.testing.assert_array_equal(m.predict(tuple(row)), expected)
    np.testing.assert_array_equal(m.predict([row, row]), np.stack([expected, expected]))
    with pytest.raises(ValueError, match="expects 3"):
        m.predict([1.0, 2.0])
