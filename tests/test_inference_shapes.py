"""Predictors of models whose input is not (N, K): a LayerNorm over several dimensions first
(issue 14: LayerNorm((2, 3)) -> Flatten -> Linear refused its (N, 2, 3) input), a Flatten first.

Each is checked against the Module's eval forward (and torch's where it is installed) through
every way a predictor is made: ``compile(model)``, ``load`` of the saved model (the light path,
no modules built) and ``load`` of the saved predictor.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastreg as fr
from fastreg import inference, nn


def _ln_flatten_linear(dt, shape=(2, 3), out=4, seed=0):
    fr.manual_seed(seed)
    model = nn.Sequential(nn.LayerNorm(shape, dtype=dt), nn.Flatten(),
                          nn.Linear(int(np.prod(shape)), out, dtype=dt), nn.ReLU(),
                          nn.Linear(out, 3, dtype=dt))
    g = np.random.default_rng(seed)
    for p in model.parameters():       # gamma/beta away from 1/0: the affine must be applied
        p.data[...] = g.standard_normal(p.data.shape)
    return model.eval()


def _predictors(model, tmp_path):
    fr.save(model, tmp_path / "model.fr")
    fr.save(inference.compile(model), tmp_path / "predictor.fr")
    return {"compile": inference.compile(model),
            "load(model file)": inference.load(tmp_path / "model.fr"),
            "load(saved predictor)": inference.load(tmp_path / "predictor.fr")}


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3), (3, 1, 5)])
@pytest.mark.parametrize("n", [1, 2, 7, 33])
def test_multidim_layernorm_first_takes_its_sample_shape(tmp_path, dt, shape, n):
    model = _ln_flatten_linear(dt, shape)
    x = np.random.default_rng(1).standard_normal((n, *shape)).astype(dt)
    ref = model(x)
    # float64 reference of the same maths (LayerNorm over all of `shape`, per sample)
    x64 = x.reshape(n, -1).astype(np.float64)
    ln = model[0]
    xhat = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + ln.eps)
    h = xhat * ln.weight.data.reshape(-1).astype(np.float64) + ln.bias.data.reshape(-1)
    h = np.maximum(h @ model[2].weight.data.T.astype(np.float64) + model[2].bias.data, 0)
    ref64 = h @ model[4].weight.data.T.astype(np.float64) + model[4].bias.data
    rtol = 1e-4 if dt == np.float32 else 1e-10
    np.testing.assert_allclose(ref, ref64, rtol=rtol, atol=rtol)
    for how, pred in _predictors(model, tmp_path).items():
        assert pred.in_shape == shape and pred.in_features is None, how
        y = pred(x)
        assert y.shape == (n, 3) and y.dtype == dt, how
        np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol, err_msg=how)
        np.testing.assert_allclose(pred(x[0]), ref[0], rtol=rtol, atol=rtol, err_msg=how)
        np.testing.assert_allclose(pred(x.tolist()), ref, rtol=rtol, atol=rtol, err_msg=how)
        assert pred(x[:0]).shape == (0, 3), how
    compiled = inference.compile(model)(x)
    for how, pred in _predictors(model, tmp_path).items():    # the load paths: the same bits
        assert np.array_equal(pred(x), compiled), how


@pytest.mark.parametrize("bad", [(5, 6), (5, 3, 2), (3, 2), (6,), (5, 2, 3, 1)])
def test_multidim_layernorm_refuses_other_shapes_naming_the_expected_one(tmp_path, bad):
    model = _ln_flatten_linear(np.float32)
    for pred in _predictors(model, tmp_path).values():
        with pytest.raises(ValueError, match=r"x must have shape \(N, 2, 3\) or \(2, 3\), got "
                                             rf"shape \({', '.join(map(str, bad))},?\)"):
            pred(np.zeros(bad, np.float32))


def test_multidim_layernorm_alone_keeps_the_sample_shape(tmp_path):
    fr.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm((2, 3))).eval()
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float32)
    for how, pred in _predictors(model, tmp_path).items():
        np.testing.assert_allclose(pred(x), model(x), rtol=1e-5, atol=1e-6, err_msg=how)
        assert pred(x[1]).shape == (2, 3) and pred(x[:0]).shape == (0, 2, 3), how


def test_multidim_layernorm_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    model = _ln_flatten_linear(np.float32)
    tm = torch.nn.Sequential(torch.nn.LayerNorm((2, 3)), torch.nn.Flatten(),
                             torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((9, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm.eval()(torch.from_numpy(x)).numpy()
    for how, pred in _predictors(model, tmp_path).items():
        np.testing.assert_allclose(pred(x), ref, rtol=1e-5, atol=1e-5, err_msg=how)


def test_flatten_first_takes_any_sample_shape_of_the_right_size(tmp_path):
    fr.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU()).eval()
    x = np.random.default_rng(4).standard_normal((5, 2, 3)).astype(np.float32)
    for how, pred in _predictors(model, tmp_path).items():
        np.testing.assert_allclose(pred(x), model(x), rtol=1e-6, atol=1e-6, err_msg=how)
        assert np.array_equal(pred(x), pred(x.reshape(5, 6))), how
        with pytest.raises(ValueError, match="expected a"):
            pred(np.zeros((5, 7), np.float32))
