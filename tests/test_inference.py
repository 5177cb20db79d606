"""compile(model): folded BatchNorm / dropped Dropout / fused activations equal the eval model."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import AWKWARD_SIZES, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import fastreg as fr
from fastreg import inference, nn
from fastreg import io as frio


def _randomize(model, seed=0):
    g = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
            m.running_mean[...] = g.standard_normal(m.num_features)
            m.running_var[...] = g.uniform(0.3, 3.0, m.num_features)
        if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) and m.weight is not None:
            m.weight.data[...] = g.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = g.standard_normal(m.bias.shape)
    return model


# -- an independent float64 reference of eval-mode semantics ---------------------------------

def reference_eval(model, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for m in inference._leaves(model):
        t = type(m)
        if t is nn.Linear:
            h = h @ m.weight.data.astype(np.float64).T
            if m.bias is not None:
                h = h + m.bias.data
        elif t is nn.BatchNorm1d:
            if m.track_running_stats:
                mu, var = m.running_mean.astype(np.float64), m.running_var.astype(np.float64)
            else:
                mu, var = h.mean(0), h.var(0)
            h = (h - mu) / np.sqrt(var + m.eps)
            if m.affine:
                h = h * m.weight.data + m.bias.data
        elif t is nn.LayerNorm:
            mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
            h = (h - mu) / np.sqrt(var + m.eps)
            if m.elementwise_affine:
                h = h * m.weight.data + m.bias.data
        elif t is nn.Dropout:
            if m.mode == "classic":
                h = h * (1 - m.p)
        elif t is nn.ReLU:
            h = np.maximum(h, 0)
        elif t is nn.LeakyReLU:
            h = np.where(h >= 0, h, m.negative_slope * h)
        elif t is nn.Sigmoid:
            h = 1 / (1 + np.exp(-h))
        elif t is nn.Tanh:
            h = np.tanh(h)
        elif t is nn.Flatten:
            h = h.reshape(h.shape[0], -1)
        elif t is not nn.Identity:
            raise AssertionError(t)
    return h


def mlp(dtype, d_in=784, hidden=(512, 256), d_out=10, bn=True, dropout=0.2):
    layers, d = [], d_in
    for h in hidden:
        layers += [nn.Linear(d, h, dtype=dtype)]
        if bn:
            layers += [nn.BatchNorm1d(h, dtype=dtype)]
        layers += [nn.ReLU()]
        if dropout:
            layers += [nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, d_out, dtype=dtype))
    return _randomize(nn.Sequential(*layers))


MODELS = {
    "bn_before_act": lambda dt: mlp(dt, 12, (16, 9), 4),
    "bn_after_act": lambda dt: _randomize(nn.Sequential(
        nn.Linear(12, 10, dtype=dt), nn.ReLU(), nn.BatchNorm1d(10, dtype=dt), nn.Dropout(0.3),
        nn.Linear(10, 5, dtype=dt), nn.Tanh(), nn.BatchNorm1d(5, affine=False, dtype=dt),
        nn.Linear(5, 3, dtype=dt))),
    "leading_bn_classic_dropout": lambda dt: _randomize(nn.Sequential(
        nn.BatchNorm1d(12, dtype=dt), nn.Dropout(0.25, mode="classic"),
        nn.Linear(12, 6, bias=False, dtype=dt), nn.Dropout(0.5, mode="classic"),
        nn.LeakyReLU(-0.3), nn.Linear(6, 2, dtype=dt), nn.Sigmoid())),
    "layernorm_nested": lambda dt: _randomize(nn.Sequential(
        nn.Flatten(), nn.Sequential(nn.Linear(12, 8, dtype=dt), nn.LeakyReLU(0.1)),
        nn.LayerNorm(8, dtype=dt), nn.Identity(), nn.Linear(8, 8, dtype=dt), nn.Sigmoid(),
        nn.LayerNorm(8, elementwise_affine=False, dtype=dt), nn.Linear(8, 3, dtype=dt))),
    "trailing_norm_and_scale": lambda dt: _randomize(nn.Sequential(
        nn.Linear(12, 7, dtype=dt), nn.Tanh(), nn.BatchNorm1d(7, dtype=dt),
        nn.Dropout(0.4, mode="classic"))),
    "activation_first": lambda dt: _randomize(nn.Sequential(
        nn.Tanh(), nn.Linear(12, 4, dtype=dt), nn.ReLU(), nn.ReLU())),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_equals_float64_reference_and_eval_model(name, dtype):
    fr.manual_seed(0)
    model = MODELS[name](dtype)
    model.eval()
    pred = inference.compile(model)
    rtol, atol = tol(dtype, f32=2e-4, f64=1e-10)
    g = np.random.default_rng(1)
    for n in AWKWARD_SIZES:
        x = g.standard_normal((n, 12)).astype(dtype)
        got = pred(x)
        assert got.dtype == dtype and got.shape == (n, got.shape[1])
        np.testing.assert_allclose(got, reference_eval(model, x), rtol=rtol, atol=atol)
        np.testing.assert_allclose(got, model(x), rtol=rtol, atol=atol)


def test_folding_removes_batchnorm_and_dropout_and_fuses_activations():
    model = mlp(np.float32, 784, (512, 256), 10).eval()
    pred = inference.compile(model)
    assert pred.stages == ["linear+relu 784->512", "linear+relu 512->256", "linear 256->10"]
    assert pred.in_features == 784 and pred.out_features == 10


def test_mlp_784_512_256_10_within_float32_rounding():
    model = mlp(np.float32).eval()
    pred = inference.compile(model)
    x = np.random.default_rng(0).standard_normal((64, 784)).astype(np.float32)
    ref = reference_eval(model, x)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(pred(x), ref, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(pred(x), model(x), rtol=0, atol=2e-5 * scale)


def test_model_mode_is_unchanged_and_weights_are_a_snapshot():
    model = mlp(np.float64, 6, (5,), 2)
    model.train()
    pred = inference.compile(model)
    assert model.training
    x = np.random.default_rng(0).standard_normal((3, 6))
    before = pred(x)
    model[0].weight.data[...] = 0
    np.testing.assert_array_equal(pred(x), before)


def test_batch_size_buffers_are_reused_and_results_are_fresh():
    # a stage outside the linear chain (LayerNorm) keeps the per-batch-size plans in use
    model = nn.Sequential(mlp(np.float32, 8, (6,), 3), nn.LayerNorm(3)).eval()
    pred = inference.compile(model)
    assert pred._fast is None
    x = np.ones((4, 8), np.float32)
    a = pred(x)
    plan = pred._plans[4]
    b = pred(2 * x)
    assert pred._plans[4] is plan
    assert not np.shares_memory(a, b)
    assert not np.array_equal(a, b)
    for n in range(1, 2 * inference.MAX_CACHED_BATCH_SIZES):
        pred(np.ones((n, 8), np.float32))
    assert len(pred._plans) <= inference.MAX_CACHED_BATCH_SIZES


def test_linear_chain_fast_path_results_are_fresh_and_exact():
    # a model that folds into linear stages only runs as one pre-packed chain: no per-batch
    # plans, fresh outputs, equal to the per-layer kernels and to the float64 reference
    model = mlp(np.float32, 9, (7, 33), 2).eval()
    pred = inference.compile(model)
    assert pred._fast is not None
    g = np.random.default_rng(0)
    for n in (1, 2, 5, 33):
        x = g.standard_normal((n, 9)).astype(np.float32)
        a = pred(x)
        b = pred(x)
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, reference_eval(model, x), rtol=2e-5, atol=2e-5)
        np.testing.assert_array_equal(pred(x[0]), a[0])   # batch-independent rounding
    assert not pred._plans                      # never needed a Python plan
    # out= that overlaps the input goes the slow way (through a copy), still right
    model1 = nn.Sequential(nn.Linear(4, 4)).eval()
    p1 = inference.compile(model1)
    x = g.standard_normal((3, 4)).astype(np.float32)
    want = p1(x)
    assert p1(x, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_predictor_is_thread_safe_across_batch_sizes():
    import threading
    model = nn.Sequential(mlp(np.float32, 40, (33, 17), 5)).eval()
    with_ln = nn.Sequential(mlp(np.float32, 40, (33,), 5), nn.LayerNorm(5)).eval()
    for m in (model, with_ln):
        pred = inference.compile(m)
        g = np.random.default_rng(1)
        xs = [g.standard_normal((n, 40)).astype(np.float32) for n in (1, 2, 7, 64)]
        refs = [pred(x).copy() for x in xs]
        errors = []

        def work(i, pred=pred, xs=xs, refs=refs, errors=errors):
            for r in range(60):
                j = (i + r) % len(xs)
                if not np.array_equal(pred(xs[j]), refs[j]):
                    errors.append((i, r, j))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors


def test_single_sample_out_argument_and_casting():
    model = mlp(np.float32, 8, (6,), 3).eval()
    pred = inference.compile(model)
    x = np.random.default_rng(0).standard_normal((5, 8))
    full = pred(x.astype(np.float32))
    np.testing.assert_array_equal(pred(x[2].astype(np.float32)), full[2])
    np.testing.assert_allclose(pred(x), full, rtol=1e-6)           # float64 input is cast
    np.testing.assert_array_equal(pred(np.asfortranarray(x).astype(np.float32)), full)
    out = np.empty((5, 3), np.float32)
    assert pred.predict(x.astype(np.float32), out=out) is out
    np.testing.assert_array_equal(out, full)
    assert pred(np.empty((0, 8), np.float32)).shape == (0, 3)


@pytest.mark.parametrize("bad,exc,match", [
    (np.ones((4, 7), np.float32), ValueError, "7 features"),
    (np.ones((2, 2, 8), np.float32), ValueError, "shape"),
    (np.array([["a"] * 8]), TypeError, "numeric"),
    ("nope", TypeError, "numeric"),
])
def test_bad_input_is_rejected_before_the_kernels(bad, exc, match):
    pred = inference.compile(mlp(np.float32, 8, (6,), 3).eval())
    with pytest.raises(exc, match=match):
        pred(bad)
    with pytest.raises(ValueError, match="out must be"):
        pred(np.ones((2, 8), np.float32), out=np.empty((3, 3), np.float32))


def test_matches_torch_eval_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.BatchNorm1d(16),
                             torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 4))
    with torch.no_grad():
        tm(torch.randn(128, 20) * 2 + 0.5)
    tm.eval()
    model = frio.from_torch_state_dict(mlp(np.float32, 20, (16,), 4), tm.state_dict())
    x = np.random.default_rng(0).standard_normal((33, 20)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(inference.compile(model)(x), ref, rtol=1e-4, atol=1e-5)


def test_loaded_model_predict(tmp_path):
    model = mlp(np.float32, 10, (8,), 3)
    frio.save(model, tmp_path / "m.fr")
    loaded = frio.load(tmp_path / "m.fr")
    x = np.random.default_rng(0).standard_normal((7, 10)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    loaded[0].weight.data[...] = 0
    loaded.predict.recompile()
    np.testing.assert_allclose(loaded.predict(x), loaded(x), rtol=1e-5, atol=1e-6)


def test_inference_script_imports_no_heavy_or_optional_module(tmp_path):
    # fr.load + predict: numpy and fastreg's own load path only (no numba, no optional extra)
    path = tmp_path / "mlp.fr"
    frio.save(mlp(np.float32), path)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import fastreg
        load = getattr(fastreg, "load", None)
        if load is None:                  # until the top-level export is wired
            import fastreg.io
            load = fastreg.io.load
        m = load({str(path)!r})
        y = m.predict(np.zeros((1, 784), np.float32))
        assert y.shape == (1, 10), y.shape
        heavy = ("numba", "onnx", "onnxruntime", "pandas", "sklearn", "torch", "mpi4py",
                 "fastreg.onnx", "fastreg.train", "fastreg.optim", "fastreg._kernels._numba")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), k=st.sampled_from([3, 4, 5]),
       dt=st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "U1"]),
       ndim=st.integers(0, 3))
def test_hypothesis_predict_answers_or_raises_cleanly(n, k, dt, ndim):
    model = _randomize(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(),
                                     nn.Linear(3, 2))).eval()
    pred = inference.compile(model)
    shape = {0: (), 1: (k,), 2: (n, k), 3: (n, k, 2)}[ndim]
    x = np.ones(shape, dtype=dt) if dt != "U1" else np.full(shape, "a")
    try:
        y = pred(x)
    except (TypeError, ValueError):
        assert not (dt in ("float32", "float64", "int64", "bool") and k == 4 and ndim in (1, 2))
        return
    assert k == 4 and ndim in (1, 2)
    ref = reference_eval(model, np.asarray(x, np.float64).reshape(-1, 4))
    np.testing.assert_allclose(y.reshape(-1, 2), ref, rtol=1e-4, atol=1e-5)


class _Widen(nn.Module):
    """A custom module (no layer description: compiled as an opaque ForwardOp)."""

    def forward(self, x):
        return np.concatenate([x, x], axis=1)


def test_compiled_typed_stage_after_an_opaque_module_checks_its_input():
    # the kernels after a custom module trust nothing about its output: a wrong width is a
    # clear error, never an out-of-bounds read
    good = nn.Sequential(_Widen(), nn.Linear(8, 3), nn.LayerNorm(3)).eval()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(fr.inference.compile(good)(x), good(x), rtol=1e-5, atol=1e-6)
    bad = nn.Sequential(_Widen(), nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match=r"Linear stage: expected a \(5, 4\)"):
        fr.inference.compile(bad)(x)
    bad_ln = nn.Sequential(_Widen(), nn.LayerNorm(4)).eval()
    with pytest.raises(ValueError, match=r"LayerNorm stage: expected a \(5, 4\)"):
        fr.inference.compile(bad_ln)(x)


def test_pickle_loaded_model_after_predict_and_compiled_predictor(tmp_path):
    """A loaded model that has predicted (its lazy predictor compiled) and a compiled predictor
    pickle, and predict the same after unpickling (kernels, per-thread buffers and the lock are
    rebuilt)."""
    import pickle
    fr.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = tmp_path / "m.fr"
    fr.save(m, path)
    loaded = fr.load(path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = loaded.predict(x)
    again = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(again.predict(x), y)
    p = fr.inference.compile(m)
    p2 = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(p2(x), p(x))


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_split_small_batches_gives_the_same_bits_and_is_restored(weights):
    """A batch <= 4 chain on 2 threads splits its layers on the split pool (this model is above
    the default thresholds, below set_split_small_batches(False)'s); the outputs must be the bits
    of the one-thread run, on both precisions, with the split on or off, also while another
    Python thread predicts at the same time (one of the two runs its tasks inline)."""
    import threading

    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    pred = inference.compile(model, weights=weights)
    xs = [rng.standard_normal((n, 512)).astype(np.float32) for n in (1, 2, 3, 4)]
    before = fr.get_num_threads()
    try:
        fr.set_num_threads(1)
        ref = [pred(x) for x in xs]
        fr.set_num_threads(2)
        split = [pred(x) for x in xs]
        assert inference.set_split_small_batches(False) is True
        plain = [pred(x) for x in xs]
        assert inference.set_split_small_batches(True) is False
        bad = []

        def worker():
            for _ in range(200):
                for x, r in zip(xs, ref):
                    if not np.array_equal(pred(x), r):
                        bad.append(1)

        ts = [threading.Thread(target=worker) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        inference.set_split_small_batches(True)
        fr.set_num_threads(before)
    for r, s, p in zip(ref, split, plain):
        assert np.array_equal(r, s) and np.array_equal(r, p)
    assert not bad
    with pytest.raises(TypeError, match="enabled must be True or False, got 1"):
        inference.set_split_small_batches(1)
