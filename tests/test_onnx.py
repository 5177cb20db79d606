"""fastreg.onnx: export checked by onnx.checker and run in ONNX Runtime, import of graphs written
by fastreg, torch and skl2onnx, the errors at both edges, and the lazy import."""
from __future__ import annotations

import csv
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn

# ---------------------------------------------------------------------------------------------
# lazy import (runs without the onnx packages)
# ---------------------------------------------------------------------------------------------


def test_import_fastreg_load_and_predict_never_import_onnx(tmp_path):
    path = tmp_path / "m.fr"
    fr.save(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), path)
    code = (
        "import sys, numpy as np, fastreg\n"
        f"m = fastreg.load({str(path)!r}); m.predict(np.ones((2, 3), np.float32))\n"
        "fastreg.onnx  # the submodule itself is light too\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('onnx', 'onnxruntime', 'skl2onnx'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_onnx_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)           # import onnx -> ImportError
    with pytest.raises(ImportError, match=r"fastreg.onnx.export needs the 'onnx' package.*"
                                          r"pip install 'fastreg\[onnx\]'"):
        fr.onnx.export(nn.Linear(2, 2), tmp_path / "m.onnx")
    with pytest.raises(ImportError, match="fastreg.onnx.load needs the 'onnx' package"):
        fr.onnx.load(tmp_path / "m.onnx")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="the onnx package (fastreg[onnx]) is not installed")
    return pytest.importorskip("onnxruntime",
                               reason="onnxruntime (fastreg[onnx]) is not installed")


def _run(ort, path, x, name="input"):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def _randomize(model, seed=0):
    """Non-trivial norm parameters and running statistics (a fresh BatchNorm is the identity)."""
    g = np.random.default_rng(seed)
    for m in model.modules():
        if type(m) in (nn.BatchNorm1d, nn.LayerNorm):
            for p in m.parameters():
                p.data[...] = g.uniform(0.5, 1.5, p.data.shape)
            if getattr(m, "track_running_stats", False):
                m.running_mean[...] = g.normal(size=m.num_features)
                m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
    return model


def _every_layer(dt):
    """Each built-in layer once (nested Sequential, both dropout modes, bias-free Linear)."""
    return _randomize(nn.Sequential(
        nn.Linear(7, 33, dtype=dt), nn.BatchNorm1d(33, dtype=dt), nn.ReLU(),
        nn.Sequential(nn.Dropout(0.2), nn.Linear(33, 9, dtype=dt), nn.LayerNorm(9, dtype=dt),
                      nn.LeakyReLU(0.25)),
        nn.Dropout(0.3, mode="classic"), nn.Tanh(), nn.Identity(),
        nn.Linear(9, 3, bias=False, dtype=dt), nn.Sigmoid())).eval()


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [9, 13, 17, 18])
def test_export_every_layer_float32_matches_onnxruntime(ort, tmp_path, opset):
    import onnx
    fr.manual_seed(0)
    model = _every_layer(np.float32)
    path = tmp_path / "m.onnx"
    proto = fr.onnx.export(model, path, opset)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Gemm") == 3 and "BatchNormalization" in ops and "Dropout" not in ops
    assert ("LayerNormalization" in ops) == (opset >= 17)
    g = np.random.default_rng(1)
    for n in (1, 2, 7, 33):               # one file, every batch size (dynamic batch axis)
        x = g.normal(size=(n, 7)).astype(np.float32)
        np.testing.assert_allclose(_run(ort, path, x), model(x), rtol=1e-5, atol=1e-6)


def test_export_float64_matches_onnxruntime_in_double(ort, tmp_path):
    fr.manual_seed(1)
    model = _every_layer(np.float64)
    path = tmp_path / "m.onnx"
    fr.onnx.export(model, path, 17)
    x = np.random.default_rng(2).normal(size=(33, 7))
    y = _run(ort, path, x)
    assert y.dtype == np.float64
    # float64 all through; the attributes (LayerNorm/BatchNorm epsilon) are float32 in ONNX
    np.testing.assert_allclose(y, model(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("opset", [10, 17])
def test_export_layer_variants(ort, tmp_path, opset):
    """No affine / no running statistics (batch statistics at eval), bias-free Gemm below
    opset 11, a 3-D input through Linear (MatMul) and Flatten ranges (Flatten, Reshape)."""
    fr.manual_seed(2)
    model = _randomize(nn.Sequential(
        nn.Flatten(2, 3), nn.Linear(20, 6, bias=False), nn.LayerNorm(6, elementwise_affine=False),
        nn.Flatten(), nn.Linear(18, 5), nn.BatchNorm1d(5, affine=False), nn.Sigmoid(),
        nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 4, bias=False))).eval()
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="input_shape"):
        fr.onnx.export(model, path, opset)
    proto = fr.onnx.export(model, path, opset, input_shape=(3, 4, 5))
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:3] == ["Reshape", "MatMul", "LayerNormalization" if opset >= 17 else "ReduceMean"]
    assert "Flatten" in ops and ops.count("BatchNormalization") == 1
    x = np.random.default_rng(3).normal(size=(7, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(ort, path, x), model(x), rtol=1e-5, atol=1e-6)


def test_export_names_batch_axis_and_metadata(ort, tmp_path):
    import onnx
    model = nn.Sequential(nn.Linear(4, 3))
    path = tmp_path / "m.onnx"
    meta = {"features": ["a", "b", "c", "d"], "classes": [0, 1, 2], "task": "classification"}
    fr.onnx.export(model, path, input_names=["x"], output_names="logits", metadata=meta)
    p = onnx.load(path)
    assert [i.name for i in p.graph.input] == ["x"] and [o.name for o in p.graph.output] == [
        "logits"]
    dims = p.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    props = {q.key: q.value for q in p.metadata_props}
    assert props["task"] == "classification" and props["features"] == '["a", "b", "c", "d"]'
    assert p.producer_name == "fastreg"
    assert fr.onnx.load(path).metadata == meta                       # decoded back
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(_run(ort, path, x, "x"), model(x), rtol=1e-6)
    fr.onnx.export(model, path, dynamic_batch=False, batch_size=5)
    p = onnx.load(path)
    assert p.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 5
    assert p.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 5


def test_export_takes_metadata_from_a_loaded_model_and_exports_eval_mode(ort, tmp_path):
    fr.manual_seed(3)
    model = _randomize(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Dropout(0.5)))
    fr.save(model, tmp_path / "m.fr", metadata={"features": ["p", "q", "r", "s"]})
    loaded = fr.load(tmp_path / "m.fr", eval=False)          # training mode
    fr.onnx.export(loaded, tmp_path / "m.onnx")
    assert loaded.training                                    # the model is left as it was
    assert fr.onnx.load(tmp_path / "m.onnx").metadata == {"features": ["p", "q", "r", "s"]}
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(ort, tmp_path / "m.onnx", x), loaded.eval()(x),
                               rtol=1e-5, atol=1e-6)


def test_export_identity_only_model(ort, tmp_path):
    path = tmp_path / "m.onnx"
    fr.onnx.export(nn.Sequential(nn.Identity(), nn.Dropout(0.1)), path, input_shape=3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_run(ort, path, x), x)


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) + x


class _SeqWithForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


class _PlainSeq(nn.Sequential):
    pass


def test_export_errors_name_the_argument_or_module(ort, tmp_path):
    path = tmp_path / "m.onnx"
    ok = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"'1' \(_Custom\) is not a built-in layer"):
        fr.onnx.export(nn.Sequential(nn.ReLU(), _Custom()), path)
    with pytest.raises(TypeError, match=r"'0' \(_SeqWithForward\) is a Sequential with its own"):
        fr.onnx.export(nn.Sequential(_SeqWithForward(nn.Linear(3, 2))), path)
    fr.onnx.export(_PlainSeq(nn.Linear(3, 2)), path)          # Sequential-shaped: fine
    with pytest.raises(ValueError, match=r"'1' \(Linear\) expects input \(\*, 5\)"):
        fr.onnx.export(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), path)
    with pytest.raises(ValueError, match="opset must be an integer in"):
        fr.onnx.export(ok, path, 8)
    with pytest.raises(TypeError, match="model must be a fastreg.nn.Module"):
        fr.onnx.export("model", path)
    with pytest.raises(ValueError, match="input_names must name exactly one"):
        fr.onnx.export(ok, path, input_names=["a", "b"])
    with pytest.raises(ValueError, match="must differ"):
        fr.onnx.export(ok, path, input_names="x", output_names="x")
    with pytest.raises(TypeError, match="mixes dtypes"):
        fr.onnx.export(nn.Sequential(nn.Linear(3, 2, dtype=np.float64),
                                     nn.Linear(2, 2, dtype=np.float32)), path)
    with pytest.raises(ValueError, match="merges the batch dimension"):
        fr.onnx.export(nn.Sequential(nn.Flatten(0)), path, input_shape=(3,))
    with pytest.raises(TypeError, match=r"metadata\['f'\] must be a string or JSON"):
        fr.onnx.export(ok, path, metadata={"f": object()})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fr.onnx.export(ok, path, dynamic_batch=False, batch_size=0)


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17])
def test_round_trip_gives_back_the_layers_and_the_function(ort, tmp_path, opset):
    """(Below opset 17 the LayerNorm decomposition is matched back into a LayerNorm.)"""
    fr.manual_seed(4)
    for dt in (np.float32, np.float64):
        model = _every_layer(dt)
        path = tmp_path / "m.onnx"
        fr.onnx.export(model, path, opset)
        back = fr.onnx.load(path)
        assert [type(m).__name__ for m in back] == [
            "Linear", "BatchNorm1d", "ReLU", "Linear", "LayerNorm", "LeakyReLU", "Dropout",
            "Tanh", "Linear", "Sigmoid"]
        assert back[1].eps == 1e-5 and back[5].negative_slope == 0.25 and back[6].mode == \
            "classic" and back[8].bias is None and not back.training
        assert back[0].weight.data.dtype == dt
        x = np.random.default_rng(5).normal(size=(257, 7)).astype(dt)
        tight = 1e-6 if dt == np.float32 else 1e-12
        np.testing.assert_allclose(back.predict(x), model(x), rtol=tight, atol=tight)
        np.testing.assert_allclose(back(x), model(x), rtol=tight, atol=tight)


def _mlp_graph(onnx, nodes, inits, out="y", in_shape=("N", 4), extra_outputs=()):
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", f, list(in_shape))],
                         [h.make_tensor_value_info(o, f, ["N", None]) for o in (out, *extra_outputs)],
                         initializer=[onnx.numpy_helper.from_array(np.asarray(v), k)
                                      for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_imported_model_serves_without_numba(ort, tmp_path):
    """fastreg.onnx.load + predict is the light inference path: numba is never imported."""
    path = tmp_path / "m.onnx"
    fr.onnx.export(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()), path)
    code = ("import sys, numpy as np, fastreg\n"
            f"m = fastreg.onnx.load({str(path)!r}); m.predict(np.ones((2, 3), np.float32))\n"
            "print('numba' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


def test_import_gemm_attributes_and_reshape_flatten(ort, tmp_path):
    import onnx
    h = onnx.helper
    g = np.random.default_rng(6)
    B = g.normal(size=(12, 5)).astype(np.float32)         # transB = 0: (K, M)
    C = g.normal(size=(1, 5)).astype(np.float32)
    W2 = g.normal(size=(3, 5)).astype(np.float32)
    nodes = [h.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "B", "C"], ["g1"], name="fc1", alpha=0.5, beta=2.0),
             h.make_node("Relu", ["g1"], ["r"], name="act"),
             h.make_node("MatMul", ["r", "W2T"], ["m"], name="fc2"),
             h.make_node("Add", ["b2", "m"], ["y"], name="bias2")]
    inits = {"shape": np.array([-1, 12], np.int64), "B": B, "C": C, "W2T": W2.T.copy(),
             "b2": np.float32(0.25)}
    proto = _mlp_graph(onnx, nodes, inits, in_shape=("N", 3, 4))
    path = tmp_path / "g.onnx"
    onnx.save(proto, path)
    model = fr.onnx.load(path)
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear", "ReLU", "Linear"]
    x = g.normal(size=(7, 3, 4)).astype(np.float32)
    want = _run(ort, path, x, "x")
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
    # (the compiled predictor takes 2-D input: its first stage is the flatten)
    np.testing.assert_allclose(model.predict(x.reshape(7, 12)), want, rtol=1e-5, atol=1e-6)
    # [-1, K] is a flatten only where the per-sample size is known to be K
    bad = _mlp_graph(onnx, nodes, {**inits, "shape": np.array([-1, 6], np.int64)},
                     in_shape=("N", 3, 4))
    with pytest.raises(ValueError, match=r"Reshape 'flat' reshapes to \[-1, 6\]"):
        fr.onnx.load(bad)


def test_import_refuses_clearly(ort):
    import onnx
    h = onnx.helper
    W = np.ones((4, 4), np.float32)
    # an unsupported operator in the middle: named with its node name, all of them at once
    nodes = [h.make_node("MatMul", ["x", "W"], ["a"], name="fc"),
             h.make_node("Softplus", ["a"], ["b"], name="soft"),
             h.make_node("Erf", ["b"], ["y"], name="erf")]
    with pytest.raises(ValueError, match=r"unsupported ONNX operator\(s\).*Softplus 'soft', "
                                         r"Erf 'erf'.*output='a'"):
        fr.onnx.load(_mlp_graph(onnx, nodes, {"W": W}))
    # branching: a residual Add
    nodes = [h.make_node("Relu", ["x"], ["r"], name="act"),
             h.make_node("Add", ["x", "r"], ["y"], name="residual")]
    with pytest.raises(ValueError, match="branching graph: Add 'residual' combines 2 tensors"):
        fr.onnx.load(_mlp_graph(onnx, nodes, {}))
    # Gemm transA, input as the second operand, a shape computed in the graph
    gemm = [h.make_node("Gemm", ["x", "W"], ["y"], name="g", transA=1)]
    with pytest.raises(ValueError, match="Gemm 'g' has transA=1"):
        fr.onnx.load(_mlp_graph(onnx, gemm, {"W": W}))
    with pytest.raises(ValueError, match="MatMul 'm' multiplies a constant by the input"):
        fr.onnx.load(_mlp_graph(onnx, [h.make_node("MatMul", ["W", "x"], ["y"], name="m")],
                                {"W": W}))
    nodes = [h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    with pytest.raises(ValueError, match="Reshape 'rs': its target shape is computed"):
        fr.onnx.load(_mlp_graph(onnx, nodes, {}))
    # several outputs: choose one; a tensor that is not there
    nodes = [h.make_node("Relu", ["x"], ["y"], name="a"),
             h.make_node("Sigmoid", ["x"], ["z"], name="b")]
    with pytest.raises(ValueError, match=r"2 outputs \['y', 'z'\]; choose one with output="):
        fr.onnx.load(_mlp_graph(onnx, nodes, {}, extra_outputs=("z",)))
    m = fr.onnx.load(_mlp_graph(onnx, nodes, {}, extra_outputs=("z",)), output="z")
    assert [type(x).__name__ for x in m] == ["Sigmoid"]
    with pytest.raises(ValueError, match="no tensor 'nope'"):
        fr.onnx.load(_mlp_graph(onnx, nodes, {}, extra_outputs=("z",)), output="nope")
    nodes = [h.make_node("Cast", ["x"], ["y"], name="c", to=onnx.TensorProto.INT32)]
    with pytest.raises(ValueError, match="Cast 'c' casts to int32"):
        fr.onnx.load(_mlp_graph(onnx, nodes, {}))


def test_import_file_errors(ort, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ValueError, match="bad.onnx: not"):
        fr.onnx.load(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        fr.onnx.load(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path must be"):
        fr.onnx.load(3)


def test_import_torch_export(ort, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8),
        torch.nn.LeakyReLU(0.2), torch.nn.Dropout(0.3), torch.nn.Linear(8, 6),
        torch.nn.LayerNorm(6), torch.nn.Tanh(), torch.nn.Linear(6, 3, bias=False),
        torch.nn.Sigmoid())
    with torch.no_grad():
        net[2].running_mean.normal_()
        net[2].running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(33, 3, 4)
    path = tmp_path / "t.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folding in (True, False):      # False: Transpose of a weight, Identity-shared buffers
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                              do_constant_folding=folding)
            model = fr.onnx.load(path)
            assert [type(m).__name__ for m in model] == [
                "Flatten", "Linear", "BatchNorm1d", "LeakyReLU", "Linear", "LayerNorm", "Tanh",
                "Linear", "Sigmoid"]
            xs = x.numpy()
            with torch.no_grad():
                want = net(x).numpy()
            np.testing.assert_allclose(model(xs), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(model.predict(xs.reshape(33, 12)[:1]), want[:1],
                                       rtol=1e-5, atol=1e-6)
        # below opset 17 torch writes LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add: matched
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13)
    model = fr.onnx.load(path)
    assert type(model[5]) is nn.LayerNorm and model[5].eps == 1e-5
    np.testing.assert_allclose(model(x.numpy()), want, rtol=1e-5, atol=1e-6)


def test_import_skl2onnx_mlps(ort, tmp_path):
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    g = np.random.default_rng(7)
    X = g.normal(size=(120, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = MLPRegressor(hidden_layer_sizes=(9, 4), activation="tanh", max_iter=20,
                           random_state=0).fit(X, X[:, 0] - X[:, 1])
        reg2 = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, X[:, :2])
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)
    path = tmp_path / "reg.onnx"
    with open(path, "wb") as f:
        f.write(skl2onnx.to_onnx(reg, X[:1]).SerializeToString())
    np.testing.assert_allclose(fr.onnx.load(path).predict(X)[:, 0], reg.predict(X), rtol=1e-5,
                               atol=1e-6)
    # two targets: skl2onnx ends with Reshape(-1, 1), (N, 2) -> (2N, 1), not a flatten: refused
    with open(path, "wb") as f:
        f.write(skl2onnx.to_onnx(reg2, X[:1]).SerializeToString())
    with pytest.raises(ValueError, match=r"Reshape 'Reshape' reshapes to \[-1, 1\] \(per-sample "
                                         r"size 2\)"):
        fr.onnx.load(path)
    np.testing.assert_allclose(fr.onnx.load(path, output="add_result1").predict(X),
                               reg2.predict(X), rtol=1e-5, atol=1e-6)
    path = tmp_path / "clf.onnx"
    with open(path, "wb") as f:
        f.write(skl2onnx.to_onnx(clf, X[:1]).SerializeToString())
    # label + probabilities, and Softmax / ArgMax / ZipMap after the network: the error says
    # which tensor ends the importable part (the logits)
    with pytest.raises(ValueError, match=r"2 outputs.*output='add_result1'"):
        fr.onnx.load(path)
    model = fr.onnx.load(path, output="add_result1")
    # the logits feed skl2onnx's Softmax: the class labels come along (fastreg predict uses them)
    assert model.metadata == {"task": "classification", "classes": [0, 1, 2]}
    logits = model.predict(X)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(p, clf.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.classes_[logits.argmax(1)], clf.predict(X))
    # the same through the command line
    from fastreg import cli
    data, preds = tmp_path / "X.csv", tmp_path / "p.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([[f"f{j}" for j in range(5)], *X.tolist()])
    argv = ["predict", str(path), str(data), "--out", str(preds)]
    assert cli.main(argv) == 2                                   # which output? (the error says)
    assert cli.main([*argv, "--onnx-output", "add_result1"]) == 0
    with open(preds, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", "p_0", "p_1", "p_2"]
    np.testing.assert_array_equal([int(r[0]) for r in rows[1:]], clf.predict(X))
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows[1:]],
                               clf.predict_proba(X), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# fastreg predict model.onnx
# ---------------------------------------------------------------------------------------------

def test_cli_predicts_from_an_onnx_file_like_from_the_fastreg_file(ort, tmp_path, capsys):
    from fastreg import cli
    fr.manual_seed(5)
    model = _randomize(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(),
                                     nn.Linear(4, 2))).eval()
    meta = {"features": ["a", "b", "c"], "task": "classification", "classes": ["no", "yes"]}
    fr.save(model, tmp_path / "m.fr", metadata=meta)
    fr.onnx.export(fr.load(tmp_path / "m.fr"), tmp_path / "m.onnx")
    data = tmp_path / "d.csv"
    rows = np.random.default_rng(8).normal(size=(7, 3))
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["c", "b", "a"])
        w.writerows([[f"{v:.6f}" for v in r] for r in rows])
    outs = []
    for name in ("m.fr", "m.onnx"):
        out = tmp_path / f"{name}.csv"
        assert cli.main(["predict", str(tmp_path / name), str(data), "--out", str(out)]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].startswith("prediction,p_no,p_yes")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert cli.main(["predict", str(bad), str(data)]) == 2
    assert "bad.onnx: not" in capsys.readouterr().err
