"""The cold-start path of ``fr.inference.load`` (issue 14): what it does less of must not change
what it computes or what it refuses.

* folds applied block by block into the compute dtype give the bits of the eager float64 folds;
* the one-``preadv``-per-tensor reader gives the arrays ``np.load`` gives, and any member not in
  the canonical form NumPy writes (another ``.npy`` version, a damaged byte) goes through the
  full reader and its errors;
* the header parser (json's C scanner, used directly) gives ``json.loads``'s values and refuses
  what it refuses;
* a fresh serving process imports neither ``json`` nor the element-wise kernels nor the layers,
  and leaves the OpenBLAS routing pending until something that can use BLAS asks for it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

# every parameter and running statistic non-trivial, as for test_inference_load's model files
from test_inference_load import _randomize

import fastreg as fr
from fastreg import inference, nn
from fastreg.inference import _fold, _ops, _weight
from fastreg.io import ModelFileError
from fastreg.io.container import Container, parse_json


def _fold_models(dt):
    """Row folds (BatchNorm / classic Dropout after a Linear, several in a row), column folds
    (BatchNorm before a Linear), scalars, and awkward widths."""
    return [
        nn.Sequential(nn.Linear(7, 33, dtype=dt), nn.BatchNorm1d(33, dtype=dt),
                      nn.Dropout(0.3, mode="classic"), nn.BatchNorm1d(33, dtype=dt), nn.ReLU(),
                      nn.BatchNorm1d(33, dtype=dt), nn.Dropout(0.1, mode="classic"),
                      nn.Linear(33, 257, dtype=dt), nn.BatchNorm1d(257, dtype=dt)),
        nn.Sequential(nn.BatchNorm1d(1000, dtype=dt), nn.Linear(1000, 2, dtype=dt),
                      nn.Dropout(0.5, mode="classic")),
        nn.Sequential(nn.Linear(1, 1, dtype=dt), nn.BatchNorm1d(1, dtype=dt),
                      nn.Dropout(0.2, mode="classic")),
        nn.Sequential(nn.Linear(1000, 7, dtype=dt), nn.BatchNorm1d(7, dtype=dt)),
    ]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_blockwise_folds_give_the_bits_of_the_eager_float64_folds(dt):
    for i, model in enumerate(_fold_models(dt)):
        ops = _ops(_randomize(model, i))
        eager, lazy = _fold(ops), _fold(ops, lazy=True)
        assert len(eager) == len(lazy)
        folded = 0
        for a, b in zip(eager, lazy):
            if type(a).__name__ != "LinearOp":
                continue
            folded += type(b.weight).__name__ == "_Scaled"
            for out in (np.float32, np.float64):
                want = np.ascontiguousarray(a.weight, out)
                got = _weight(b.weight, out)
                assert got.dtype == out and got.flags.c_contiguous
                assert want.tobytes() == got.tobytes(), (i, dt, out)
                if type(b.weight).__name__ == "_Scaled":    # over a private copy of the base
                    own = type(b.weight)(b.weight.base.copy(), b.weight.factors)
                    got = _weight(own, out, owned=True)
                    assert want.tobytes() == got.tobytes(), (i, dt, out, "in place")
                    assert (got is own.base) == (len(own.factors) == 1 and own.base.dtype == out)
            assert np.array_equal(a.bias, b.bias)
        assert folded, "no fold was exercised"


def _mlp_file(tmp_path, dt=np.float32, layernorm=True):
    """A model file; without the LayerNorm the folded model is one LinearChain (the serving
    case the bench times)."""
    model = _randomize(nn.Sequential(
        nn.Linear(33, 257, dtype=dt), nn.BatchNorm1d(257, dtype=dt), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(257, 7, dtype=dt), *([nn.LayerNorm(7, dtype=dt)] if layernorm else []),
        nn.Linear(7, 2, dtype=dt)))
    path = tmp_path / "m.fr"
    fr.save(model, path)
    return model, path


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_canonical_members_are_read_in_one_call_each_and_equal_np_load(tmp_path, dt,
                                                                        monkeypatch):
    # (also: the folds written over the tensors just read give compile's bits)
    model, path = _mlp_file(tmp_path, dt)
    ref = dict(np.load(path))
    x = np.random.default_rng(1).standard_normal((5, 33)).astype(dt)
    want = inference.compile(model)(x)

    def no_slow_path(self, key, *a, **k):
        raise AssertionError(f"{key} took the slow path")

    monkeypatch.setattr(Container, "read_array", no_slow_path)
    pred = inference.load(path)
    assert np.array_equal(pred(x), want)
    loaded = fr.load(path)
    for k, v in loaded.state_dict().items():
        assert np.array_equal(np.asarray(v), ref[k]), k


def _rewrite_member(src, dst, name, transform):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, transform(data) if info.filename == name else data)


def test_other_npy_versions_take_the_full_reader_with_the_same_result(tmp_path):
    _, path = _mlp_file(tmp_path)
    v2 = tmp_path / "v2.fr"

    def as_version_2(data):
        import io
        arr = np.load(io.BytesIO(data))
        f = io.BytesIO()
        np.lib.format.write_array(f, arr, version=(2, 0))
        return f.getvalue()

    _rewrite_member(path, v2, "0.weight.npy", as_version_2)
    x = np.random.default_rng(2).standard_normal((3, 33)).astype(np.float32)
    assert np.array_equal(inference.load(v2)(x), inference.load(path)(x))


@pytest.mark.parametrize("where", ["data", "npy_header"])
def test_a_damaged_member_raises_the_full_readers_error(tmp_path, where):
    _, path = _mlp_file(tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("0.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + (200 if where == "data" else 20)] ^= 0x55
    bad = tmp_path / "bad.fr"
    bad.write_bytes(bytes(raw))
    for load in (inference.load, fr.load):
        with pytest.raises(ModelFileError, match="0.weight"):
            load(bad)


@pytest.mark.parametrize("text", [
    '{"a": 1}', ' \n{"a": [1, 2.5, -3e10, null, true, false, "x\\u00e9"]}\t ',
    '{"x": NaN, "y": -Infinity, "z": Infinity}', '{"a":1,"a":2}', '"s"', '1', '{"a": 1e400}',
    '{"a": 12345678901234567890}', '{"a":"\\ud800"}'])
def test_header_parser_gives_json_loads_values(text):
    assert repr(parse_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ["", " ", '{"a": 1} x', '{"a": 1}{', "[1,]", "\ufeff{}",
                                  "nul", '{"a": -}', "[1 2]", '{"a": "\x01"}', "{'a': 1}"])
def test_header_parser_refuses_what_json_loads_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        parse_json(text)


def test_header_parser_refuses_deep_nesting_like_json_loads():
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(RecursionError):
        parse_json(text)


def test_serving_process_imports_little_and_defers_the_blas_routing(tmp_path):
    _, path = _mlp_file(tmp_path, layernorm=False)
    script = textwrap.dedent(f"""
        import sys, numpy as np, fastreg as fr
        from fastreg._kernels import runtime
        calls = []
        route = runtime._blas_route
        runtime._blas_route = lambda pool: calls.append(1) or route(pool)
        pred = fr.inference.load({str(path)!r})
        pred(np.zeros((1, 33), np.float32))
        heavy = ["json", "fastreg.nn", "numba", "fastreg._kernels.elementwise.cy",
                 "fastreg._kernels.norm.cy", "fastreg.io.atomic", "encodings.cp437"]
        print(" ".join(sorted(m for m in heavy if m in sys.modules)) or "-")
        print(runtime._blas["pending"], len(calls))
        pred(np.zeros((64, 33), np.float32))
        print(runtime._blas["pending"], len(calls))
        fr.get_blas_interop()                   # asks: the routing is done first
        print(runtime._blas["pending"], len(calls))
        pred(np.zeros((64, 33), np.float32))
        print(runtime._blas["pending"], len(calls))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    # (json / encodings.cp437 may be loaded at start-up by an interpreter's site hooks: only
    # fastreg's own modules and numba are asserted absent)
    assert not [m for m in lines[0].split() if m.startswith("fastreg") or m == "numba"], lines
    assert lines[1:] == ["True 0", "True 0", "False 1", "False 1"]


def test_a_training_kernel_load_does_the_pending_blas_routing(tmp_path):
    _, path = _mlp_file(tmp_path, layernorm=False)
    script = textwrap.dedent(f"""
        import numpy as np, fastreg as fr
        from fastreg._kernels import runtime, _dispatch
        calls = []
        route = runtime._blas_route
        runtime._blas_route = lambda pool: calls.append(1) or route(pool)
        pred = fr.inference.load({str(path)!r})
        pred(np.zeros((64, 33), np.float32))    # serving: any batch size, no routing
        print(runtime._blas["pending"], len(calls))
        _dispatch.kernel("dropout", "dropout_forward", "cython")   # a training kernel
        print(runtime._blas["pending"], len(calls))
        _dispatch.kernel("matmul", "linear_backward_input", "cython")
        print(runtime._blas["pending"], len(calls))
        fr.set_blas_interop("off")
        runtime.load_pool("cython", route_blas=False)
        print(runtime._blas["pending"], len(calls), fr.get_blas_interop()["routed"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["True 0", "False 1", "False 1", "False 1 []"]


@pytest.mark.parametrize("name", ["0.weight\n.npy", "a\n.npy", "0.weight.npy\n"])
def test_member_names_with_a_trailing_newline_are_refused(name):
    from fastreg.io.container import check_member_name
    with pytest.raises(ModelFileError, match="not allowed"):
        check_member_name(name)


def test_child_names_with_a_trailing_newline_are_refused():
    from fastreg.io.tree import check_tree
    tree = {"type": "Sequential", "args": {}, "fuse": True,
            "children": [["0\n", {"type": "ReLU", "args": {}}]]}
    with pytest.raises(ModelFileError, match="identifier name"):
        check_tree(tree, "<test>")
    tree["children"][0][0] = "0"
    assert check_tree(tree, "<test>") == {}


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_folding_in_place_never_touches_the_users_model_or_a_second_load(tmp_path, dt):
    # load() folds BatchNorm over the tensors it just read (owned=True); compile(model) must not:
    # its ops hold f64() snapshots, so the model's own weights stay bit for bit (fails if the
    # snapshot became a view while an in-place fold ran), and a second load starts from the file
    for i, model in enumerate(_fold_models(dt)):
        model = _randomize(model, i)
        before = {k: v.copy() for k, v in model.state_dict().items()}
        x = np.random.default_rng(i).standard_normal((5, model[0].weight.shape[1]
                                                      if isinstance(model[0], nn.Linear)
                                                      else model[0].num_features)).astype(dt)
        want = model(x)
        got = inference.compile(model)(x)
        for k, v in model.state_dict().items():
            assert v.tobytes() == before[k].tobytes(), (i, k)
        path = tmp_path / f"m{i}.fr"
        fr.save(model, path)
        a, b = inference.load(path)(x), inference.load(path)(x)
        assert a.tobytes() == b.tobytes() == got.tobytes(), i
        np.testing.assert_allclose(got, want, rtol=1e-4 if dt == np.float32 else 1e-10,
                                   atol=1e-4 if dt == np.float32 else 1e-10)
