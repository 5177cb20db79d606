"""torch 2.13's loss and norm options (issue 10, item 4) against torch itself, float64, on both
CPU backends: CrossEntropyLoss ignore_index / reduction / probability and unbatched targets,
MSELoss and BCEWithLogitsLoss reduction="none" and 0-d inputs, MSELoss broadcasting, the
upstream gradient of ``loss.backward(g)``; BatchNorm1d (N, C, L) input, bias=False and eps;
LayerNorm multi-dimensional normalized_shape and bias=False; 0-d activations and Dropout;
Dropout(p=1) and inplace=; model files and inference.compile for the new arguments."""
import json
import warnings

import numpy as np
import pytest

import fastreg as fr
from fastreg import inference, nn

torch = pytest.importorskip("torch")

RTOL = 1e-10


@pytest.fixture(autouse=True)
def _use_backend(backend):
    fr.set_backend(backend)


def T(a):
    return torch.tensor(np.asarray(a))


def close(ours, theirs, rtol=RTOL, atol=1e-13):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert np.shape(ours) == theirs.shape
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=rtol, atol=atol)


def loss_pair(ours, theirs, x, target, g, t_target=None):
    """Loss value and dL/dx of ``ours`` vs ``theirs`` with upstream gradient ``g``."""
    xt = T(x).requires_grad_()
    lt = theirs(xt, T(target) if t_target is None else t_target)
    v = ours(x, target)
    if ours.reduction == "none":
        assert isinstance(v, np.ndarray) and v.dtype == x.dtype
    else:
        assert type(v) is float
    close(v, lt)
    lt.backward(T(g))
    close(ours.backward(g), xt.grad)


# ---------------------------------------------------------------------------------------------
# CrossEntropyLoss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_ignore_index_and_reductions_match_torch(rng, reduction, weighted,
                                                               ignore_index):
    N, C = 7, 5
    z = rng.standard_normal((N, C)) * 3
    t = rng.integers(0, C, N)
    t[[1, 4]] = ignore_index                    # ignored samples (default -100: out of range)
    w = rng.uniform(0.2, 2.0, C) if weighted else None
    kw = {"reduction": reduction, "label_smoothing": 0.2, "ignore_index": ignore_index}
    ours = nn.CrossEntropyLoss(weight=w, **kw)
    theirs = torch.nn.CrossEntropyLoss(weight=None if w is None else T(w), **kw)
    g = rng.standard_normal(N) if reduction == "none" else 1.7
    loss_pair(ours, theirs, z, t, g)
    if reduction == "none":
        assert ours(z, t)[1] == 0.0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_cross_entropy_probability_targets_match_torch(rng, reduction, eps):
    N, C = 7, 4
    z = rng.standard_normal((N, C)) * 2
    p = rng.dirichlet(np.ones(C), N)
    w = rng.uniform(0.2, 2.0, C)
    kw = {"reduction": reduction, "label_smoothing": eps}
    g = rng.standard_normal(N) if reduction == "none" else 0.5
    loss_pair(nn.CrossEntropyLoss(weight=w, **kw),
              torch.nn.CrossEntropyLoss(weight=T(w), **kw), z, p, g)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cross_entropy_unbatched_input_matches_torch(rng, reduction):
    z = rng.standard_normal(6)
    kw = {"reduction": reduction, "label_smoothing": 0.1}
    g = np.array(0.7) if reduction == "none" else 0.7
    loss_pair(nn.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw), z, np.int64(3), g,
              t_target=torch.tensor(3))
    p = rng.dirichlet(np.ones(6))
    loss_pair(nn.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw), z, p, g)


def test_cross_entropy_every_sample_ignored_is_nan_as_torch():
    z = np.zeros((2, 3))
    assert np.isnan(nn.CrossEntropyLoss(ignore_index=1)(z, np.array([1, 1])))
    assert np.isnan(torch.nn.CrossEntropyLoss(ignore_index=1)(T(z), T([1, 1])).item())
    with pytest.raises(ValueError, match="target 7 is out of bounds"):
        nn.CrossEntropyLoss()(z, np.array([-100, 7]))


def test_default_mean_paths_run_the_fused_kernels(rng, monkeypatch):
    """The speed of the default path: mean over class indices without ignored samples, and
    same-shape MSE / BCE, still go through the fused kernels (the NumPy paths never run)."""
    from fastreg.nn import loss as loss_mod
    calls = []
    monkeypatch.setattr(loss_mod, "_host64", lambda a: calls.append(a))
    z = rng.standard_normal((7, 3))
    nn.CrossEntropyLoss()(z, rng.integers(0, 3, 7))
    nn.CrossEntropyLoss(weight=np.ones(3), label_smoothing=0.1)(z, rng.integers(0, 3, 7))
    nn.MSELoss()(z, z * 0.5)
    nn.BCEWithLogitsLoss(reduction="sum")(z, np.ones_like(z))
    assert calls == []


# ---------------------------------------------------------------------------------------------
# MSELoss, BCEWithLogitsLoss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("xshape,tshape", [((), ()), ((2, 3), (2, 3)), ((2, 3), (3,)),
                                           ((4, 1), (4,)), ((3,), (2, 3))])
def test_mse_reductions_0d_and_broadcasting_match_torch(rng, reduction, xshape, tshape):
    x = np.asarray(rng.standard_normal(xshape))
    t = np.asarray(rng.standard_normal(tshape))
    ours, theirs = nn.MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction)
    with warnings.catch_warnings(record=True) as w_ours:
        warnings.simplefilter("always")
        ours(x, t)
    with warnings.catch_warnings(record=True) as w_torch:
        warnings.simplefilter("always")
        out_shape = theirs(T(x), T(t)).shape
    assert [type(w.message) for w in w_ours] == [type(w.message) for w in w_torch]
    if xshape != tshape:
        assert "different to the input size" in str(w_ours[0].message)
    g = rng.standard_normal(tuple(out_shape)) if reduction == "none" else 1.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss_pair(ours, theirs, x, t, g)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(), (7, 3)])
def test_bce_with_logits_reductions_and_0d_match_torch(rng, reduction, shape):
    x = np.asarray(rng.standard_normal(shape) * 4)
    t = np.asarray(rng.uniform(0, 1, shape))
    w = np.asarray(rng.uniform(0.5, 2, shape))
    pw = rng.uniform(0.5, 3, 3) if shape else None
    kw = {"reduction": reduction}
    ours = nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, **kw)
    theirs = torch.nn.BCEWithLogitsLoss(weight=T(w), pos_weight=None if pw is None else T(pw),
                                        **kw)
    g = np.asarray(rng.standard_normal(shape)) if reduction == "none" else 0.4
    loss_pair(ours, theirs, x, t, g)


def test_loss_backward_checks_the_upstream_gradient(rng):
    z = rng.standard_normal((4, 3))
    loss = nn.CrossEntropyLoss(reduction="none")
    loss(z, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(loss.backward(), loss.backward(np.ones(4)))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        loss.backward(np.ones(3))
    mse = nn.MSELoss()
    mse(z, z * 0)
    twice = mse.backward(2.0).copy()             # (the gradient buffer is reused)
    np.testing.assert_allclose(twice, 2 * mse.backward())
    with pytest.raises(ValueError, match="finite scalar"):
        mse.backward(np.ones(4))


# ---------------------------------------------------------------------------------------------
# BatchNorm1d, LayerNorm
# ---------------------------------------------------------------------------------------------

def _sync(ours, theirs, rng):
    """Random affine parameters, the same in both."""
    for name, p in ours.named_parameters():
        p.data[...] = rng.uniform(0.5, 2.0, p.shape)
        getattr(theirs, name).data = T(p.data.copy())


def _step_pair(ours, theirs, x, rng):
    dy = rng.standard_normal(x.shape)
    xt = T(x).requires_grad_()
    yt = theirs(xt)
    close(ours(x), yt, atol=1e-12)
    yt.backward(T(dy))
    close(ours.backward(dy), xt.grad, atol=1e-11)


@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 1), (7, 3)])
@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"affine": False, "momentum": None},
                                {"track_running_stats": False}])
def test_batchnorm_ncl_and_bias_false_match_torch(rng, shape, kw):
    ours = nn.BatchNorm1d(3, dtype=np.float64, **kw)
    theirs = torch.nn.BatchNorm1d(3, dtype=torch.float64, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _sync(ours, theirs, rng)
    for _ in range(2):
        _step_pair(ours, theirs, rng.standard_normal(shape) * 2 + 1, rng)
    for name, p in ours.named_parameters():
        close(p.grad, getattr(theirs, name).grad, rtol=1e-9, atol=1e-11)
    for k, v in theirs.state_dict().items():
        close(ours.state_dict()[k], v)
    ours.eval()
    theirs.eval()
    _step_pair(ours, theirs, rng.standard_normal(shape), rng)


@pytest.mark.parametrize("training,track", [(True, True), (True, False), (False, True),
                                            (False, False)])
def test_batchnorm_eps_zero_raises_where_torch_does(training, track):
    x = np.ones((4, 3))
    ours, theirs = (nn.BatchNorm1d(3, eps=0.0, track_running_stats=track, dtype=np.float64),
                    torch.nn.BatchNorm1d(3, eps=0.0, track_running_stats=track,
                                         dtype=torch.float64))
    ours.train(training)
    theirs.train(training)
    try:
        theirs(T(x))
    except ValueError as exc:
        with pytest.raises(ValueError, match="eps must be positive during training"):
            ours(x)
        assert "eps must be positive" in str(exc)
    else:
        ours(x)


@pytest.mark.parametrize("normalized_shape,xshape", [((3, 4), (2, 3, 4)), ((2, 3, 4), (2, 3, 4)),
                                                     ((3, 4), (3, 4)), (5, (2, 2, 5))])
@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"elementwise_affine": False}])
def test_layernorm_multidim_and_bias_false_match_torch(rng, normalized_shape, xshape, kw):
    ours = nn.LayerNorm(normalized_shape, dtype=np.float64, **kw)
    theirs = torch.nn.LayerNorm(normalized_shape, dtype=torch.float64, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _sync(ours, theirs, rng)
    _step_pair(ours, theirs, rng.standard_normal(xshape), rng)
    for name, p in ours.named_parameters():
        close(p.grad, getattr(theirs, name).grad, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="normalized_shape"):
        ours(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="normalized_shape must be"):
        nn.LayerNorm((3, 0))


# ---------------------------------------------------------------------------------------------
# activations and Dropout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"])
def test_activations_accept_0d_input_as_torch(name):
    for v in (-1.5, 0.7):
        ours, theirs = getattr(nn, name)(), getattr(torch.nn, name)()
        x = np.array(v)
        xt = T(x).requires_grad_()
        yt = theirs(xt)
        close(ours(x), yt)
        yt.backward(T(2.0))
        close(ours.backward(np.array(2.0)), xt.grad)
    neg = nn.LeakyReLU(-0.5)                     # the input-based backward
    neg(np.array(-2.0))
    assert neg.backward(np.array(1.0)) == -0.5


def test_dropout_0d_p1_and_inplace():
    fr.manual_seed(0)
    d = nn.Dropout(0.5)
    y = d(np.array(3.0))
    assert y.shape == () and float(y) in (0.0, 6.0)
    assert float(d.backward(np.array(1.0))) == float(y) / 3.0
    x = np.ones((3, 4))
    for mode in ("inverted", "classic"):
        d = nn.Dropout(1.0, mode=mode)
        xt = T(x).requires_grad_()
        torch.nn.Dropout(1.0)(xt).sum().backward()
        close(d(x), torch.zeros(3, 4))
        close(d.backward(np.ones((3, 4))), xt.grad)
    d.eval()
    close(d(x), torch.zeros(3, 4))               # classic evaluation scales by 1 - p = 0
    d = nn.Dropout(0.5, inplace=True)
    assert repr(d) == repr(torch.nn.Dropout(0.5, inplace=True))
    d(x)
    np.testing.assert_array_equal(x, 1.0)         # documented: the input is never overwritten
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


# ---------------------------------------------------------------------------------------------
# model files and inference.compile
# ---------------------------------------------------------------------------------------------

def test_new_arguments_round_trip_through_model_files_and_compile(rng, tmp_path):
    model = nn.Sequential(nn.Linear(6, 12, dtype=np.float64),
                          nn.LayerNorm(12, bias=False, dtype=np.float64),
                          nn.BatchNorm1d(12, bias=False, dtype=np.float64),
                          nn.Dropout(0.3, inplace=True))
    bn = model[2]
    bn.running_mean[...] = rng.standard_normal(12)
    bn.weight.data[...] = rng.uniform(1, 2, 12)
    model.eval()
    fr.save(model, tmp_path / "m.fr")
    back = fr.load(tmp_path / "m.fr")
    assert back[1].bias is None and back[2].bias is None and back[3].inplace
    x = rng.standard_normal((5, 6))
    np.testing.assert_allclose(back(x), model(x), rtol=1e-12)
    np.testing.assert_allclose(inference.compile(model)(x), model(x), rtol=1e-10)

    ln = nn.LayerNorm((3, 4), dtype=np.float64)
    _sync(ln, torch.nn.LayerNorm((3, 4)), rng)
    fr.save(ln, tmp_path / "ln.fr")
    x3 = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(fr.load(tmp_path / "ln.fr")(x3), ln(x3), rtol=1e-12)

    class ToGrid(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], 3, 4)

    seq = nn.Sequential(ToGrid(), ln, nn.Flatten())
    pred = inference.compile(seq)
    assert pred.stages == ["module ToGrid", "layernorm (3, 4)", "flatten"]
    x = rng.standard_normal((3, 12))
    np.testing.assert_allclose(pred(x), seq(x), rtol=1e-10)


def test_files_without_the_new_arguments_still_load():
    """Architecture nodes written before bias= / inplace= existed read as their defaults."""
    from fastreg.io import tree
    old = {"type": "Sequential", "args": {}, "fuse": True, "children": [
        ["0", {"type": "BatchNorm1d", "args": {"num_features": 3, "eps": 1e-5, "momentum": 0.1,
                                               "affine": True, "track_running_stats": True,
                                               "dtype": "float32"}}],
        ["1", {"type": "LayerNorm", "args": {"normalized_shape": 3, "eps": 1e-5,
                                             "elementwise_affine": True, "dtype": "float32"}}],
        ["2", {"type": "Dropout", "args": {"p": 0.1, "mode": "inverted"}}]]}
    shapes = tree.check_tree(json.loads(json.dumps(old)), "<old>")
    assert "0.bias" in shapes and "1.bias" in shapes
    m = tree.build(old)
    assert m[0].bias is not None and m[1].bias is not None and m[2].inplace is False
    bad = json.loads(json.dumps(old))
    bad["children"][2][1]["args"]["inplace"] = "yes"
    with pytest.raises(fr.ModelFileError, match="invalid inplace"):
        tree.check_tree(bad, "<bad>")


def test_a_bias_assigned_to_a_bias_false_norm_must_have_the_weights_shape():
    for m in (nn.BatchNorm1d(3, bias=False), nn.LayerNorm((2, 3), bias=False)):
        with pytest.raises(ValueError, match="must keep shape"):
            m.bias = nn.Parameter(np.zeros(5, np.float32))
        m.bias = nn.Parameter(np.zeros(m.weight.shape, np.float32))
        assert "bias" in m.state_dict() and fr.io.architecture(m)["args"]["bias"] is True


def test_new_loss_paths_on_a_device_input_equal_the_host(cuda, rng):
    """reduction="none", ignored samples and probability targets run in NumPy on the host: a
    device input gets device results back (the CUDA simulator unless a GPU is used)."""
    z = rng.standard_normal((5, 4))
    t = np.array([0, -100, 3, 1, 2])
    for make, target in ((lambda: nn.CrossEntropyLoss(reduction="none"), t),
                         (lambda: nn.CrossEntropyLoss(), t),
                         (lambda: nn.CrossEntropyLoss(), rng.dirichlet(np.ones(4), 5)),
                         (lambda: nn.MSELoss(reduction="none"), z * 0.3),
                         (lambda: nn.BCEWithLogitsLoss(reduction="none"), np.abs(z) / 3)):
        host, dev = make(), make().to("cuda")
        v_host = host(z, target)
        v_dev = dev(fr.cuda.to_device(z), target)
        if isinstance(v_host, float):
            assert v_dev == pytest.approx(v_host, rel=1e-12)
        else:
            assert fr.cuda.is_device_array(v_dev)
            np.testing.assert_allclose(fr.cuda.to_host(v_dev), v_host, rtol=1e-12)
        g_dev = dev.backward()
        assert fr.cuda.is_device_array(g_dev)
        np.testing.assert_allclose(fr.cuda.to_host(g_dev), host.backward(), rtol=1e-12)
