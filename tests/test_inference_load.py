"""``fr.inference.load(path)``: a model file straight into a predictor, without the modules.

The predictor it builds must be bit-identical to ``fr.inference.compile(fr.load(path))`` for
every built-in layer kind, keep the loader's hardening (same errors), fall back transparently for
what the light descriptions do not cover, and import neither ``fastreg.nn`` nor numba.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastreg as fr
from fastreg import inference, nn
from fastreg.io import ModelFileError, ops_file


def _randomize(model, seed=0):
    """Non-trivial parameters and running statistics (fresh ones fold to near-identities)."""
    g = np.random.default_rng(seed)
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                p.data[...] = g.standard_normal(p.data.shape)
        if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
            m.running_mean[...] = g.normal(0, 0.5, m.num_features)
            m.running_var[...] = g.uniform(0.3, 2.0, m.num_features)
    return model.eval()


def _models(dt):
    """name -> (model, input shape without N); every built-in layer kind the light path folds."""
    return {
        # BatchNorm folded into the preceding Linear, Dropout dropped, ReLU fused
        "linear_bn_relu_dropout": (nn.Sequential(
            nn.Linear(7, 33, dtype=dt), nn.BatchNorm1d(33, dtype=dt), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(33, 2, bias=False, dtype=dt)), (7,)),
        # BatchNorm after the activation (folded into the next Linear: W diag(s), b + W t),
        # BatchNorm first (an unfused affine stage), no-bias and non-affine BatchNorm
        "bn_between_and_first": (nn.Sequential(
            nn.BatchNorm1d(5, dtype=dt), nn.Linear(5, 9, dtype=dt), nn.LeakyReLU(0.2),
            nn.BatchNorm1d(9, bias=False, dtype=dt), nn.Linear(9, 4, dtype=dt), nn.Tanh(),
            nn.BatchNorm1d(4, affine=False, dtype=dt)), (5,)),
        # classic Dropout (a constant scale), LayerNorm, Sigmoid, Identity, nested Sequential
        "layernorm_classic_dropout": (nn.Sequential(
            nn.Linear(6, 8, dtype=dt), nn.Dropout(0.25, mode="classic"),
            nn.Sequential(nn.LayerNorm(8, dtype=dt), nn.Sigmoid(), nn.Identity()),
            nn.LayerNorm(8, elementwise_affine=False, dtype=dt),
            nn.Linear(8, 3, dtype=dt)), (6,)),
        # LayerNorm without bias, Flatten (the predictor takes (N, K) input)
        "layernorm_flatten": (nn.Sequential(
            nn.LayerNorm(6, bias=False, dtype=dt), nn.Flatten(), nn.Linear(6, 2, dtype=dt)),
            (6,)),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_is_bit_identical_to_compile_of_the_loaded_model(tmp_path, dtype):
    g = np.random.default_rng(1)
    for name, (model, shape) in _models(dtype).items():
        path = tmp_path / f"{name}.fr"
        fr.save(_randomize(model), path, metadata={"classes": ["a", "b"]})
        assert ops_file.read_ops(path) is not None, name        # the light path, no fallback
        fast = inference.load(path)
        ref = inference.compile(fr.load(path))
        assert fast.dtype == ref.dtype == np.dtype(dtype)
        assert fast.stages == ref.stages, name
        assert fast.metadata == {"classes": ["a", "b"]}
        for n in (1, 7):
            x = g.standard_normal((n, *shape))
            np.testing.assert_array_equal(fast(x), ref(x), err_msg=name)
        other = np.float64 if dtype == np.float32 else np.float32       # dtype= override
        x = g.standard_normal((2, *shape))
        np.testing.assert_array_equal(inference.load(path, dtype=other)(x),
                                      inference.compile(fr.load(path), dtype=other)(x))


def test_light_descriptions_agree_with_the_layer_registry():
    # ops_file.BUILTIN restates the built-in layers' file arguments and state (it must not
    # import fastreg.nn): the two descriptions must agree, argument for argument
    from fastreg.nn import _spec
    models = {name: m for name, (m, _) in _models(np.float32).items()}
    models["bn_plain"] = nn.BatchNorm1d(3, track_running_stats=False, momentum=None)
    seen = set()
    for model in models.values():
        for m in model.modules():
            spec = _spec.spec_of(type(m))
            light = ops_file.BUILTIN[type(m).__name__].spec
            assert list(light.args) == list(spec.args), type(m).__name__
            assert [a.default for a in light.args.values()] == \
                [a.default for a in spec.args.values()]
            args = spec.read_args(m)
            assert all(light.args[k].check(v) for k, v in args.items())
            assert light.state(args) == spec.state(args), type(m).__name__
            assert light.container == spec.container
            seen.add(type(m).__name__)
    assert seen == set(ops_file.BUILTIN)
    assert set(ops_file.BUILTIN) < set(_spec.LAYERS)


def test_layers_without_a_light_form_fall_back_to_the_full_path(tmp_path):
    g = np.random.default_rng(2)
    cases = [
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False)), (4,)),
        (nn.Sequential(nn.Flatten(1, 1), nn.Linear(6, 2)), (6,)),
        (nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(6, 2)), None),
    ]
    for i, (model, shape) in enumerate(cases):
        path = tmp_path / f"m{i}.fr"
        fr.save(_randomize(model), path)
        assert ops_file.read_ops(path) is None
        x = g.integers(0, 10, (3, 2)) if shape is None else g.standard_normal((3, *shape))
        np.testing.assert_array_equal(inference.load(path)(x),
                                      inference.compile(fr.load(path))(x))


def test_quantized_predictor_files_load_as_saved(tmp_path):
    model = _randomize(_models(np.float32)["linear_bn_relu_dropout"][0])
    x = np.random.default_rng(3).standard_normal((7, 7)).astype(np.float32)
    for weights in ("int8", "bf16"):
        path = tmp_path / f"{weights}.fr"
        fr.save(inference.compile(model, weights=weights), path)
        pred = inference.load(path)
        np.testing.assert_array_equal(pred(x), fr.load(path)(x))
        with pytest.raises(ValueError, match="without dtype= and weights="):
            inference.load(path, dtype=np.float64)
    pred = inference.load(tmp_path / "int8.fr")
    assert pred.weights == "int8"
    # weights= on a model file quantizes it as compile does
    path = tmp_path / "float.fr"
    fr.save(model, path)
    np.testing.assert_array_equal(inference.load(path, weights="int8")(x),
                                  inference.compile(fr.load(path), weights="int8")(x))


def test_damaged_files_raise_the_loaders_errors(tmp_path):
    model = _randomize(_models(np.float32)["linear_bn_relu_dropout"][0])
    path = tmp_path / "m.fr"
    fr.save(model, path)
    data = bytearray(path.read_bytes())
    bad = []
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        bad.append(bytes(data[:cut]))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("0.weight.npy")
    flipped = bytearray(data)
    flipped[info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 4] ^= 0xFF
    bad.append(bytes(flipped))
    for i, content in enumerate(bad):
        p = tmp_path / f"bad{i}.fr"
        p.write_bytes(content)
        with pytest.raises(ModelFileError) as full:
            fr.load(p)
        with pytest.raises(ModelFileError) as light:
            inference.load(p)
        assert str(light.value) == str(full.value)
    assert "CRC" in str(light.value) or "corrupted" in str(light.value)
    with pytest.raises(FileNotFoundError):
        inference.load(tmp_path / "missing.fr")


def test_widths_that_do_not_chain_are_refused(tmp_path):
    # a crafted file: valid layers whose widths do not chain (Linear(3, 4) then Linear(5, 2))
    import json
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    path = tmp_path / "m.fr"
    fr.save(src, path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(members["fastreg.json"])
    header["architecture"]["children"][1][1]["args"]["in_features"] = 5
    header["tensors"]["1.weight"]["shape"] = [2, 5]
    members["fastreg.json"] = json.dumps(header).encode()
    w = np.zeros((2, 5), np.float32)
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, w)
    members["1.weight.npy"] = buf.getvalue()
    bad = tmp_path / "bad.fr"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(ModelFileError, match="inconsistent.*expects 5 features"):
        inference.load(bad)
    with pytest.raises(ModelFileError, match="inconsistent"):
        fr.load(bad)


def test_custom_module_file_says_how_to_load_it(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    path = tmp_path / "c.fr"
    fr.save(nn.Sequential(nn.Linear(2, 2), Custom()), path)
    with pytest.raises(ModelFileError, match=r"fastreg.inference.compile\(fastreg.load\(path, "
                                             r"model=instance\)\)"):
        inference.load(path)


def test_load_and_predict_import_no_layers_numba_or_optional_extra(tmp_path):
    path = tmp_path / "mlp.fr"
    model = nn.Sequential(nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
                          nn.LayerNorm(64), nn.Linear(64, 10))
    fr.save(_randomize(model), path)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import fastreg
        p = fastreg.inference.load({str(path)!r})
        y = p(np.zeros((3, 784), np.float32))
        assert y.shape == (3, 10), y.shape
        heavy = ("fastreg.nn", "fastreg.nn.layers", "numba", "onnx", "onnxruntime", "pandas",
                 "sklearn", "torch", "mpi4py", "numpy.random", "fastreg._random")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saved_float_predictor_loads_bit_identically_with_nothing_to_fold(tmp_path, dtype):
    # fr.save(predictor) writes its folded stages as an ordinary model file; loading it gives
    # the same stages (BatchNorm already folded, an unfused affine stage kept exactly)
    g = np.random.default_rng(4)
    for name, (model, shape) in _models(dtype).items():
        pred = inference.compile(_randomize(model))
        pred.metadata = {"features": ["a"]}
        path = tmp_path / f"{name}.fr"
        fr.save(pred, path)
        again = inference.load(path)
        assert again.stages == pred.stages, name
        assert again.metadata == {"features": ["a"]}
        x = g.standard_normal((7, *shape))
        np.testing.assert_array_equal(again(x), pred(x), err_msg=name)
        assert not any(type(op).__name__ == "AffineOp" and type(prev).__name__ == "LinearOp"
                       for prev, op in zip(ops_file.read_ops(path)[0][:-1],
                                           ops_file.read_ops(path)[0][1:]))


def test_predictor_with_a_custom_stage_cannot_be_saved(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="custom module"):
        fr.save(inference.compile(nn.Sequential(nn.Linear(2, 2), Custom())), tmp_path / "c.fr")
