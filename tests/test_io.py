"""Model files: round trips, atomic writes, hostile files, loader fuzzing, PyTorch state dicts."""
from __future__ import annotations

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastreg as fr
from fastreg import io as frio
from fastreg import nn
from fastreg.io import ModelFileError


def _randomize(model, seed=0):
    """Non-trivial running statistics and affine parameters (defaults are 0/1)."""
    g = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
            m.running_mean[...] = g.standard_normal(m.num_features)
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
            m.num_batches_tracked[...] = 7
        if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) and m.weight is not None:
            m.weight.data[...] = g.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = g.standard_normal(m.bias.shape)
    return model


def zoo(dtype=np.float32):
    """A model using every registered layer type, nested."""
    inner = nn.Sequential(nn.Linear(9, 6, bias=False, dtype=dtype), nn.Tanh(),
                          nn.LayerNorm(6, dtype=dtype), nn.Sigmoid())
    return _randomize(nn.Sequential(
        nn.Flatten(), nn.Linear(7, 9, dtype=dtype), nn.BatchNorm1d(9, momentum=None,
                                                                  dtype=dtype),
        nn.LeakyReLU(0.2), nn.Dropout(0.25, mode="classic"), inner,
        nn.BatchNorm1d(6, affine=False, dtype=dtype), nn.Identity(), nn.ReLU(),
        nn.LayerNorm(6, elementwise_affine=False, eps=1e-3, dtype=dtype),
        nn.Dropout(0.1), nn.Linear(6, 3, dtype=dtype)))


@pytest.fixture
def small_model_file(tmp_path):
    fr.manual_seed(0)
    model = _randomize(nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                     nn.Dropout(0.2), nn.Linear(8, 3)))
    path = tmp_path / "small.fr"
    frio.save(model, path)
    return model, path


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

def test_roundtrip_every_layer_type_is_bitwise(tmp_path, dtype):
    fr.manual_seed(1)
    model = zoo(dtype)
    path = tmp_path / "zoo.fr"
    frio.save(model, path)
    loaded = frio.load(path)
    assert repr(loaded) == repr(model)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and np.array_equal(sd2[k], sd[k]), k
    x = np.random.default_rng(2).standard_normal((33, 7)).astype(dtype)
    model.eval()
    assert not loaded.training
    np.testing.assert_array_equal(loaded(x), model(x))


def test_file_is_an_npz_readable_without_pickle(small_model_file):
    model, path = small_model_file
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["0.weight"], model[0].weight.data)
        header = json.loads(bytes(z["fastreg.json"]))
    assert header["format_version"] == frio.FORMAT_VERSION
    assert header["architecture"]["children"][1][1]["type"] == "BatchNorm1d"


def test_load_train_mode_and_metadata(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    frio.save(model, tmp_path / "m.fr", metadata={"classes": ["a", "b"], "n": 3})
    m = frio.load(tmp_path / "m.fr", eval=False)
    assert m.training and m.metadata == {"classes": ["a", "b"], "n": 3}
    assert frio.load(tmp_path / "m.fr").metadata == {"classes": ["a", "b"], "n": 3}


def test_sequential_names_and_fuse_flag_survive(tmp_path):
    from collections import OrderedDict
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act=nn.ReLU(), out=nn.Linear(4, 1)))
    model.fuse = False
    frio.save(model, tmp_path / "m.fr")
    loaded = frio.load(tmp_path / "m.fr")
    assert list(loaded.state_dict()) == ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    assert loaded.fuse is False


def test_load_does_not_move_the_random_stream(small_model_file):
    _, path = small_model_file
    fr.manual_seed(5)
    expected = fr._random.default_generator.numpy.random(3)
    fr.manual_seed(5)
    frio.load(path)
    np.testing.assert_array_equal(fr._random.default_generator.numpy.random(3), expected)


def test_save_overwrites_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.fr"
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    frio.save(a, path)
    frio.save(b, path)
    np.testing.assert_array_equal(frio.load(path).weight.data, b.weight.data)
    assert os.listdir(tmp_path) == ["m.fr"]


def test_custom_module_files_need_an_instance(tmp_path):
    # (issue 10 item 3: custom modules and layer subclasses are saved by state + class name)
    class Custom(nn.Module):
        def forward(self, x):
            return x

    class MyLinear(nn.Linear):
        pass

    for i, model in enumerate((nn.Sequential(nn.Linear(2, 2), Custom()), MyLinear(2, 2))):
        path = tmp_path / f"m{i}.fr"
        frio.save(model, path)
        with pytest.raises(ModelFileError, match="model=instance"):
            frio.load(path)
        header = json.loads(zipfile.ZipFile(path).read("fastreg.json"))
        assert header["architecture"] is None
        assert header["class"].endswith(type(model).__qualname__)
    fresh = MyLinear(2, 2)
    assert frio.load(tmp_path / "m1.fr", model=fresh) is fresh
    np.testing.assert_array_equal(fresh.weight.data, model.weight.data)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        frio.load(tmp_path / "nope.fr")


# ---------------------------------------------------------------------------------------------
# atomic writes: kill a child mid-save
# ---------------------------------------------------------------------------------------------

_SAVER = """
import sys, numpy as np, fastreg as fr
from fastreg import io as frio, nn
m = nn.Linear(2048, 4096, dtype=np.float64)       # 64 MiB of weights
m.weight.data[...] = 1.0
print("ready", flush=True)
while True:
    frio.save(m, sys.argv[1])
"""


def test_killing_a_process_mid_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.fr"
    small = nn.Linear(3, 2)
    frio.save(small, path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while True:                     # wait until a temp file is being written
            tmps = glob.glob(str(tmp_path / ".model.fr.*.tmp"))
            if tmps and os.path.getsize(tmps[0]) > (1 << 20):
                break
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the kill hit a save in progress: the target is the old file or a complete new one
    loaded = frio.load(path)
    if path.read_bytes() == before:
        np.testing.assert_array_equal(loaded.weight.data, small.weight.data)
    else:
        assert loaded.weight.shape == (4096, 2048) and np.all(loaded.weight.data == 1.0)
    assert tmps, "a partial temporary file existed when the process was killed"


# ---------------------------------------------------------------------------------------------
# hostile and damaged files
# ---------------------------------------------------------------------------------------------

def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _craft(path, header, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("fastreg.json", json.dumps(header) if not isinstance(header, bytes)
                    else header)
        for name, data in members.items():
            zf.writestr(name, data)


def _linear_header(in_f=3, out_f=2, **over):
    h = {"format": "fastreg-model", "format_version": 1,
         "architecture": {"type": "Linear", "args": {"in_features": in_f, "out_features": out_f,
                                                     "bias": True, "dtype": "float32"}},
         "tensors": {"weight": {"shape": [out_f, in_f], "dtype": "float32"},
                     "bias": {"shape": [out_f], "dtype": "float32"}}}
    h.update(over)
    return h


def _linear_members(in_f=3, out_f=2):
    return {"weight.npy": _npy(np.ones((out_f, in_f), np.float32)),
            "bias.npy": _npy(np.zeros(out_f, np.float32))}


def test_crafted_valid_file_loads(tmp_path):
    """The crafting helper itself produces loadable files (so the failures below are real)."""
    _craft(tmp_path / "ok.fr", _linear_header(), _linear_members())
    m = frio.load(tmp_path / "ok.fr")
    np.testing.assert_array_equal(m.weight.data, np.ones((2, 3), np.float32))


@pytest.mark.parametrize("case,match", [
    ("wrong_version", "version 99"),
    ("wrong_format", "format is"),
    ("unknown_layer", "unknown layer type 'Conv2d'"),
    ("absurd_shape", "declares .* bytes of tensors but the file has"),
    ("shape_mismatch", "has shape \\(3, 2\\), the architecture declares \\(2, 3\\)"),
    ("dtype_mismatch", "has dtype float64"),
    ("pickle_inside", "object arrays and pickles are refused"),
    ("path_separator", "not allowed"),
    ("parent_dir", "not allowed"),
    ("compressed", "compressed"),
    ("missing_tensor", "do not match the architecture"),
    ("extra_member", "do not match the architecture"),
    ("bad_json", "not valid JSON"),
    ("json_list", "must be a JSON object"),
    ("bad_arg", "invalid in_features"),
    ("extra_arg", "needs arguments"),
    ("bool_as_dim", "invalid in_features"),
    ("deep", "nested deeper"),
    ("bad_child_name", "child entries"),
    ("no_header", "no fastreg.json"),
    ("fortran", "Fortran"),
    ("trailing", "trailing bytes"),
    ("bad_dropout", "cannot build"),
])
def test_hostile_files_raise_model_file_error(tmp_path, case, match):
    path = tmp_path / f"{case}.fr"
    header, members = _linear_header(), _linear_members()
    comp = zipfile.ZIP_STORED
    if case == "wrong_version":
        header["format_version"] = 99
    elif case == "wrong_format":
        header["format"] = "something-else"
    elif case == "unknown_layer":
        header["architecture"]["type"] = "Conv2d"
    elif case == "absurd_shape":
        header = _linear_header(in_f=10**9, out_f=10**9)
        members = {"weight.npy": b"", "bias.npy": b""}
    elif case == "shape_mismatch":
        members["weight.npy"] = _npy(np.ones((3, 2), np.float32))
    elif case == "dtype_mismatch":
        members["weight.npy"] = _npy(np.ones((2, 3), np.float64))
    elif case == "pickle_inside":
        members["weight.npy"] = _npy(np.array([[os.system] * 3] * 2, dtype=object),
                                     allow_pickle=True)
    elif case == "path_separator":
        members["dir/evil.npy"] = _npy(np.zeros(1))
    elif case == "parent_dir":
        members["../evil.npy"] = _npy(np.zeros(1))
    elif case == "compressed":
        comp = zipfile.ZIP_DEFLATED
    elif case == "missing_tensor":
        del members["bias.npy"]
    elif case == "extra_member":
        members["x.npy"] = _npy(np.zeros(1))
    elif case == "bad_json":
        header = b"{not json"
    elif case == "json_list":
        header = b"[1, 2]"
    elif case == "bad_arg":
        header["architecture"]["args"]["in_features"] = -3
    elif case == "extra_arg":
        header["architecture"]["args"]["evil"] = "__import__('os')"
    elif case == "bool_as_dim":
        header["architecture"]["args"]["in_features"] = True
    elif case == "deep":
        node = header["architecture"]
        for _ in range(100):
            node = {"type": "Sequential", "args": {}, "children": [["0", node]]}
        header["architecture"] = node
    elif case == "bad_child_name":
        header["architecture"] = {"type": "Sequential", "args": {},
                                  "children": [["../0", header["architecture"]]]}
    elif case == "no_header":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    elif case == "fortran":
        members["weight.npy"] = _npy(np.asfortranarray(np.ones((2, 3), np.float32)))
    elif case == "trailing":
        members["bias.npy"] = _npy(np.zeros(2, np.float32)) + b"xxxx"
    elif case == "bad_dropout":
        header = {"format": "fastreg-model", "format_version": 1, "tensors": {},
                  "architecture": {"type": "Dropout", "args": {"p": 3.0, "mode": "inverted"}}}
        members = {}
    if case != "no_header":
        _craft(path, header, members, comp)
    with pytest.raises(ModelFileError, match=match):
        frio.load(path)


def test_truncated_files_raise_model_file_error(small_model_file, tmp_path):
    _, path = small_model_file
    data = path.read_bytes()
    for cut in (0, 1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        bad = tmp_path / f"cut{cut}.fr"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            frio.load(bad)


def test_corrupted_tensor_bytes_are_detected(small_model_file, tmp_path):
    _, path = small_model_file
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("0.weight.npy")
    # data of the member starts after its local header (30 bytes + name + extra) and npy header
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 4
    data[pos] ^= 0xFF
    bad = tmp_path / "flip.fr"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="CRC|corrupted"):
        frio.load(bad)


def test_absurd_shape_is_refused_before_allocating(tmp_path, monkeypatch):
    """A header declaring a 4 EB tensor must fail on the size check, not in numpy or MemoryError."""
    _craft(tmp_path / "huge.fr", _linear_header(in_f=2**31 - 1, out_f=2**31 - 1),
           {"weight.npy": b"", "bias.npy": b""})
    built = []
    monkeypatch.setattr(frio.model_file, "build", lambda *a, **k: built.append(a))
    with pytest.raises(ModelFileError, match="declares"):
        frio.load(tmp_path / "huge.fr")
    assert built == []


def test_not_a_zip(tmp_path):
    p = tmp_path / "x.fr"
    p.write_bytes(b"\x80\x04\x95 this could be a pickle" * 10)
    with pytest.raises(ModelFileError, match="not a fastreg file"):
        frio.load(p)
    p.write_bytes(b"")
    with pytest.raises(ModelFileError):
        frio.load(p)


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


# ---------------------------------------------------------------------------------------------
# fuzzing the loader
# ---------------------------------------------------------------------------------------------

_FUZZ_MODEL = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
_FUZZ_BYTES = None


def _fuzz_base() -> bytes:
    global _FUZZ_BYTES
    if _FUZZ_BYTES is None:
        buf = io.BytesIO()
        frio._write_container(buf, {
            "format": "fastreg-model", "format_version": 1,
            "architecture": frio.architecture(_FUZZ_MODEL),
            "tensors": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                        for k, v in _FUZZ_MODEL.state_dict().items()}},
            _FUZZ_MODEL.state_dict())
        _FUZZ_BYTES = buf.getvalue()
    return _FUZZ_BYTES


@st.composite
def mutated(draw):
    data = bytearray(_fuzz_base())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mutated())
def test_fuzz_loader_only_raises_model_file_error(tmp_path, data):
    p = tmp_path / "fuzz.fr"
    p.write_bytes(data)
    try:
        m = frio.load(p)
    except ModelFileError:
        return
    # a mutation the format tolerates (e.g. in the zip comment): the model must still be sane
    assert sum(v.size for v in m.state_dict().values()) == \
        sum(v.size for v in _FUZZ_MODEL.state_dict().values())


# ---------------------------------------------------------------------------------------------
# PyTorch state dicts
# ---------------------------------------------------------------------------------------------

def _pair():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return model


def test_from_torch_state_dict_numpy_arrays():
    src = _randomize(_pair(), seed=3)
    dst = _pair()
    sd = {k: np.asarray(v, dtype=np.float64) if v.dtype.kind == "f" else v
          for k, v in src.state_dict().items()}
    assert frio.from_torch_state_dict(dst, sd) is dst
    for k, v in dst.state_dict().items():
        assert v.dtype == src.state_dict()[k].dtype
        np.testing.assert_array_equal(v, src.state_dict()[k])
    with pytest.raises(RuntimeError, match="Missing"):
        frio.from_torch_state_dict(dst, {"0.weight": sd["0.weight"]})
    with pytest.raises(TypeError, match="mapping"):
        frio.from_torch_state_dict(dst, [1, 2])


def test_from_torch_state_dict_duck_typed_tensors_never_import_torch():
    class FakeTensor:
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    src = _randomize(_pair(), seed=4)
    dst = frio.from_torch_state_dict(_pair(), {k: FakeTensor(v)
                                               for k, v in src.state_dict().items()})
    np.testing.assert_array_equal(dst[1].running_var, src[1].running_var)


def test_from_torch_state_dict_matches_torch_outputs():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                             torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        tm(torch.randn(64, 6, dtype=torch.float64) * 3 + 1)     # non-trivial running stats
    tm.eval()
    model = frio.from_torch_state_dict(
        nn.Sequential(nn.Linear(6, 8, dtype=np.float64), nn.BatchNorm1d(8, dtype=np.float64),
                      nn.ReLU(), nn.Linear(8, 3, dtype=np.float64)), tm.state_dict()).eval()
    x = np.random.default_rng(0).standard_normal((17, 6))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), ref, rtol=1e-10, atol=1e-12)
    assert int(model[1].num_batches_tracked) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False)
    | st.sampled_from(["Linear", "Sequential", "ReLU", "BatchNorm1d", "float32", "0", "../x"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "args", "children", "fuse", "in_features",
                                       "out_features", "bias", "dtype", "p", "mode"]),
                      children, max_size=5),
    max_leaves=25)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=_json, tensors=_json)
def test_fuzz_header_trees_only_raise_model_file_error(tmp_path, arch, tensors):
    path = tmp_path / "h.fr"
    _craft(path, {"format": "fastreg-model", "format_version": 1, "architecture": arch,
                  "tensors": tensors}, {})
    try:
        m = frio.load(path)
    except ModelFileError:
        return
    assert m.state_dict() == {}          # only parameter-free trees can load from no tensors
