"""fastreg.nn layers against NumPy float64 references and finite differences (torch-free).

Every layer runs on every backend and both dtypes; references below are written independently
of the kernels (plain NumPy, float64).
"""
import numpy as np
import pytest
from reference import assert_model_gradients_match_central_differences

import fastreg as fr
from fastreg import nn
from tests.conftest import tol

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(autouse=True)
def _use_backend(backend):
    fr.set_backend(backend)


# ---------------------------------------------------------------------------------------------
# NumPy float64 references
# ---------------------------------------------------------------------------------------------

def act_ref(z, kind, slope=0.01):
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    return z


def act_grad_ref(z, kind, slope=0.01):
    if kind == "relu":
        return (z > 0).astype(float)
    if kind == "leaky_relu":
        return np.where(z > 0, 1.0, slope)
    if kind == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s)
    if kind == "tanh":
        return 1 - np.tanh(z) ** 2
    return np.ones_like(z)


def bn_ref(x, g, b, eps):
    mu = x.mean(0)
    var = x.var(0)
    xhat = (x - mu) / np.sqrt(var + eps)
    return xhat * g + b, mu, var, xhat


def bn_backward_ref(dy, x, g, eps):
    N = x.shape[0]
    _, _mu, var, xhat = bn_ref(x, g, 0, eps)
    dbeta = dy.sum(0)
    dgamma = (dy * xhat).sum(0)
    dx = g / np.sqrt(var + eps) / N * (N * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def ln_ref(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def ln_backward_ref(dy, x, g, eps):
    C = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    gd = dy * g
    dx = r * (gd - gd.mean(-1, keepdims=True) - xhat * (gd * xhat).sum(-1, keepdims=True) / C)
    return dx, (dy * xhat).reshape(-1, C).sum(0), dy.reshape(-1, C).sum(0)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def close(a, ref, dtype, scale=1.0):
    rt, at = tol(dtype, f32=2e-4, f64=1e-9)
    np.testing.assert_allclose(f64(a), ref, rtol=rt, atol=at * scale)


# ---------------------------------------------------------------------------------------------
# Linear (alone and fused with an activation)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,K,M", [(1, 3, 2), (7, 33, 5), (257, 20, 9)])
def test_linear_forward_backward_matches_numpy(dtype, rng, N, K, M):
    layer = nn.Linear(K, M, dtype=dtype)
    x = rng.standard_normal((N, K)).astype(dtype)
    dy = rng.standard_normal((N, M)).astype(dtype)
    y = layer(x)
    W, b = f64(layer.weight.data), f64(layer.bias.data)
    close(y, f64(x) @ W.T + b, dtype, scale=K)
    dx = layer.backward(dy)
    close(dx, f64(dy) @ W, dtype, scale=M)
    close(layer.weight.grad, f64(dy).T @ f64(x), dtype, scale=N)
    close(layer.bias.grad, f64(dy).sum(0), dtype, scale=N)
    layer.backward(dy)                       # gradients accumulate
    close(layer.bias.grad, 2 * f64(dy).sum(0), dtype, scale=N)


def test_linear_without_bias_and_nd_input(dtype, rng):
    layer = nn.Linear(6, 4, bias=False, dtype=dtype)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    close(y, f64(x) @ f64(layer.weight.data).T, dtype, scale=6)
    dx = layer.backward(np.ones((2, 3, 4), dtype))
    assert dx.shape == x.shape
    close(dx, np.ones((2, 3, 4)) @ f64(layer.weight.data), dtype, scale=4)


ACTS = [("relu", nn.ReLU, {}), ("leaky_relu", nn.LeakyReLU, {"negative_slope": 0.2}),
        ("sigmoid", nn.Sigmoid, {}), ("tanh", nn.Tanh, {})]


@pytest.mark.parametrize("kind,cls,kw", ACTS, ids=[a[0] for a in ACTS])
def test_activation_forward_backward_matches_numpy(dtype, rng, kind, cls, kw):
    slope = kw.get("negative_slope", 0.01)
    layer = cls(**kw)
    x = rng.standard_normal((33, 7)).astype(dtype)
    dy = rng.standard_normal((33, 7)).astype(dtype)
    close(layer(x), act_ref(f64(x), kind, slope), dtype)
    close(layer.backward(dy), f64(dy) * act_grad_ref(f64(x), kind, slope), dtype)


def test_leaky_relu_with_negative_slope_uses_the_input(dtype, rng):
    layer = nn.LeakyReLU(-0.5)
    x = rng.standard_normal((7, 5)).astype(dtype)
    dy = rng.standard_normal((7, 5)).astype(dtype)
    close(layer(x), act_ref(f64(x), "leaky_relu", -0.5), dtype)
    close(layer.backward(dy), f64(dy) * np.where(f64(x) > 0, 1, -0.5), dtype)
    assert not layer.fusable()


@pytest.mark.parametrize("kind,cls,kw", ACTS, ids=[a[0] for a in ACTS])
def test_fused_linear_activation_equals_unfused(dtype, rng, kind, cls, kw):
    def build():
        fr.manual_seed(3)
        return nn.Sequential(nn.Linear(33, 17, dtype=dtype), cls(**kw),
                             nn.Linear(17, 5, dtype=dtype), cls(**kw))
    fused, plain = build(), build()
    plain.fuse = False
    assert all(a is not None for _, a in fused._steps())
    assert all(a is None for _, a in plain._steps())
    x = rng.standard_normal((257, 33)).astype(dtype)
    dy = rng.standard_normal((257, 5)).astype(dtype)
    yf, yp = fused(x), plain(x)
    rt, at = tol(dtype, f32=1e-5, f64=1e-12)
    np.testing.assert_allclose(yf, yp, rtol=rt, atol=at)
    np.testing.assert_allclose(fused.backward(dy), plain.backward(dy), rtol=rt, atol=at)
    for pf, pp in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_allclose(pf.grad, pp.grad, rtol=rt, atol=at * 10)


def test_fused_leaky_relu_negative_slope_is_not_fused():
    seq = nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(-0.1), nn.Linear(3, 3), nn.LeakyReLU(0.0))
    assert [a is not None for _, a in seq._steps()] == [False, False, False, False]


# ---------------------------------------------------------------------------------------------
# BatchNorm1d / LayerNorm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,C", [(2, 1), (7, 33), (257, 9)])
def test_batchnorm_train_matches_numpy(dtype, rng, N, C):
    bn = nn.BatchNorm1d(C, momentum=0.3, dtype=dtype)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, C)
    bn.bias.data[...] = rng.standard_normal(C)
    x = (rng.standard_normal((N, C)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal((N, C)).astype(dtype)
    g, b = f64(bn.weight.data), f64(bn.bias.data)
    y_ref, mu, var, _ = bn_ref(f64(x), g, b, 1e-5)
    close(bn(x), y_ref, dtype, scale=10)
    close(bn.running_mean, 0.3 * mu, dtype)
    close(bn.running_var, 0.7 + 0.3 * var * N / (N - 1), dtype, scale=10)
    assert int(bn.num_batches_tracked) == 1
    dx_ref, dg_ref, db_ref = bn_backward_ref(f64(dy), f64(x), g, 1e-5)
    close(bn.backward(dy), dx_ref, dtype, scale=10)
    close(bn.weight.grad, dg_ref, dtype, scale=N)
    close(bn.bias.grad, db_ref, dtype, scale=N)


def test_batchnorm_eval_and_cumulative_momentum(dtype, rng):
    bn = nn.BatchNorm1d(5, momentum=None, dtype=dtype)
    xs = [rng.standard_normal((9, 5)).astype(dtype) * (i + 1) for i in range(3)]
    for x in xs:
        bn(x)
    assert int(bn.num_batches_tracked) == 3
    # momentum=None: running stats are the plain average of the batch statistics
    close(bn.running_mean, np.mean([f64(x).mean(0) for x in xs], axis=0), dtype)
    close(bn.running_var, np.mean([f64(x).var(0, ddof=1) for x in xs], axis=0), dtype, 10)
    bn.eval()
    x = rng.standard_normal((4, 5)).astype(dtype)
    rm, rv = f64(bn.running_mean), f64(bn.running_var)
    y_ref = (f64(x) - rm) / np.sqrt(rv + 1e-5)
    close(bn(x), y_ref, dtype)
    dy = rng.standard_normal((4, 5)).astype(dtype)
    close(bn.backward(dy), f64(dy) / np.sqrt(rv + 1e-5), dtype)
    close(bn.weight.grad, (f64(dy) * y_ref).sum(0), dtype, scale=10)
    one = bn(x[:1])                     # eval works for a batch of one
    assert one.shape == (1, 5)
    assert int(bn.num_batches_tracked) == 3


def test_batchnorm_without_running_stats_or_affine(dtype, rng):
    bn = nn.BatchNorm1d(4, affine=False, track_running_stats=False, dtype=dtype)
    assert list(bn.state_dict()) == [] and list(bn.parameters()) == []
    x = rng.standard_normal((6, 4)).astype(dtype)
    y_ref = bn_ref(f64(x), 1.0, 0.0, 1e-5)[0]
    close(bn(x), y_ref, dtype)
    bn.eval()                           # torch: eval without running stats uses batch stats
    close(bn(x), y_ref, dtype)
    dy = rng.standard_normal((6, 4)).astype(dtype)
    close(bn.backward(dy), bn_backward_ref(f64(dy), f64(x), 1.0, 1e-5)[0], dtype, scale=10)


@pytest.mark.parametrize("shape", [(1, 7), (33, 2), (257, 40), (2, 3, 5)])
def test_layernorm_matches_numpy(dtype, rng, shape):
    C = shape[-1]
    ln = nn.LayerNorm(C, dtype=dtype)
    ln.weight.data[...] = rng.uniform(0.5, 1.5, C)
    ln.bias.data[...] = rng.standard_normal(C)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g, b = f64(ln.weight.data), f64(ln.bias.data)
    close(ln(x), ln_ref(f64(x), g, b, 1e-5), dtype, scale=10)
    dx_ref, dg_ref, db_ref = ln_backward_ref(f64(dy), f64(x), g, 1e-5)
    close(ln.backward(dy), dx_ref, dtype, scale=10)
    close(ln.weight.grad, dg_ref, dtype, scale=shape[0])
    close(ln.bias.grad, db_ref, dtype, scale=shape[0])


def test_layernorm_without_affine_same_in_eval(dtype, rng):
    ln = nn.LayerNorm((6,), elementwise_affine=False, dtype=dtype)
    x = rng.standard_normal((5, 6)).astype(dtype)
    y = ln(x).copy()
    close(y, ln_ref(f64(x), 1.0, 0.0, 1e-5), dtype)
    np.testing.assert_array_equal(ln.eval()(x), y)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_uses_the_philox_mask_and_scales(dtype, rng, mode):
    from fastreg._kernels.dropout import dropout_keep_reference
    p = 0.3
    d = nn.Dropout(p, mode=mode)
    x = rng.standard_normal((33, 31)).astype(dtype) + 5     # no zeros in x
    fr.manual_seed(11)
    seed, offset = fr._random.default_generator.seed, fr._random.default_generator.philox_offset
    y = d(x)
    keep = dropout_keep_reference(x.size, p, seed, offset).reshape(x.shape)
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    close(y, np.where(keep, f64(x) * scale, 0.0), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = d.backward(dy)
    assert np.all(dx[~keep] == 0)
    close(dx, np.where(keep, f64(dy) * scale, 0.0), dtype)
    y2 = d(x)                                            # a fresh mask next call
    assert not np.array_equal(y2 != 0, keep)
    fr.manual_seed(11)                                   # reseeding reproduces the mask
    np.testing.assert_array_equal(d(x) != 0, keep)
    d.eval()
    if mode == "inverted":
        assert d(x) is x
        assert d.backward(dy) is dy
    else:
        close(d(x), f64(x) * (1 - p), dtype)
        close(d.backward(dy), f64(dy) * (1 - p), dtype)


def test_dropout_p0_is_identity_without_rng(dtype, rng):
    d = nn.Dropout(0.0)
    x = rng.standard_normal((7, 3)).astype(dtype)
    before = fr._random.default_generator.philox_offset
    assert d(x) is x
    assert fr._random.default_generator.philox_offset == before


def test_dropout_keep_fraction(rng):
    d = nn.Dropout(0.25)
    x = np.ones((1000, 1000), np.float32)
    kept = np.count_nonzero(d(x)) / x.size
    assert abs(kept - 0.75) < 4 * np.sqrt(0.75 * 0.25 / x.size)


# ---------------------------------------------------------------------------------------------
# whole-model gradient check (float64, finite differences)
# ---------------------------------------------------------------------------------------------

def _mlp64():
    fr.manual_seed(5)
    return nn.Sequential(
        nn.Linear(6, 8, dtype=np.float64), nn.BatchNorm1d(8, dtype=np.float64), nn.Tanh(),
        nn.Dropout(0.25), nn.Linear(8, 7, dtype=np.float64), nn.LeakyReLU(0.1),
        nn.LayerNorm(7, dtype=np.float64), nn.Linear(7, 5, dtype=np.float64), nn.Sigmoid(),
        nn.Linear(5, 3, dtype=np.float64))


def test_whole_model_backward_matches_finite_differences(rng):
    model = _mlp64()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = rng.standard_normal((9, 6))
    t = rng.integers(0, 3, 9)

    def loss_at():
        fr.manual_seed(99)          # the same dropout mask at every evaluation
        return loss_fn(model(x), t)

    loss_at()
    model.zero_grad()
    dx = model.backward(loss_fn.backward()).copy()
    assert_model_gradients_match_central_differences(loss_at, model, x, dx, rng, per_param=4,
                                                     x_indices=[(0, 0), (3, 2), (8, 5)])


# ---------------------------------------------------------------------------------------------
# buffer ownership
# ---------------------------------------------------------------------------------------------

def test_returned_output_is_not_overwritten_by_the_next_call(dtype, rng):
    model = nn.Sequential(nn.Linear(5, 4, dtype=dtype), nn.ReLU(), nn.Linear(4, 3, dtype=dtype))
    x1 = rng.standard_normal((7, 5)).astype(dtype)
    y1 = model(x1)
    keep = y1.copy()
    model(rng.standard_normal((7, 5)).astype(dtype))
    np.testing.assert_array_equal(y1, keep)


def test_layers_reuse_their_buffers_across_calls(dtype, rng):
    lin = nn.Linear(5, 4, dtype=dtype)
    x = rng.standard_normal((8, 5)).astype(dtype)
    a = lin.forward(x)
    b = lin.forward(x)
    assert np.shares_memory(a, b)
    c = lin.forward(x[:3].copy())            # a smaller batch reuses the same storage
    assert np.shares_memory(a, c) and c.flags.c_contiguous


def test_backward_uses_the_latest_forward_not_a_stale_buffer(dtype, rng):
    def model():
        fr.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5, dtype=dtype), nn.BatchNorm1d(5, dtype=dtype),
                             nn.Identity(), nn.ReLU(), nn.Flatten(), nn.Linear(5, 2, dtype=dtype))
    a, b = model(), model()
    x1 = rng.standard_normal((9, 6)).astype(dtype)
    x2 = rng.standard_normal((4, 6)).astype(dtype)
    dy = rng.standard_normal((4, 2)).astype(dtype)
    a(x1)
    a(x2)                                   # second call, smaller batch, same buffers
    b(x2)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.grad, pb.grad)


def test_same_instance_twice_in_sequential_is_rejected():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="same ReLU instance appears twice"):
        nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [nn.Linear(3, 2), nn.BatchNorm1d(3), nn.LayerNorm(3),
                                   nn.ReLU(), nn.Dropout(0.5), nn.Sequential(nn.Linear(3, 2))],
                         ids=lambda m: type(m).__name__)
def test_backward_before_forward_is_a_clear_error(layer):
    with pytest.raises(RuntimeError, match="backward.*before forward"):
        layer.backward(np.ones((4, 3), np.float32))


def test_mismatched_feature_count_names_layer_and_shapes():
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*\(3, 4\).*\(N, 5\)"):
        model(np.ones((3, 10), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4.*\(3, 5\)"):
        nn.BatchNorm1d(4)(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(3, 5\)"):
        nn.LayerNorm(4)(np.ones((3, 5), np.float32))


def test_batchnorm_training_on_batch_of_one_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(4)(np.ones((1, 4), np.float32))


def test_wrong_dtype_or_type_names_the_layer():
    lin = nn.Linear(3, 2, dtype=np.float32)
    with pytest.raises(TypeError, match=r"Linear\(.*float64.*float32"):
        lin(np.ones((2, 3)))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        lin([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="ReLU"):
        nn.ReLU()(np.ones((2, 3), np.int64))
    lin(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="grad_output has shape"):
        lin.backward(np.ones((2, 5), np.float32))


def test_non_contiguous_input_is_accepted(rng):
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = rng.standard_normal((3, 6))[:, ::2]
    np.testing.assert_allclose(lin(x), x @ lin.weight.data.T + lin.bias.data)


@pytest.mark.parametrize("kw,exc", [({"p": 1.5}, ValueError), ({"p": -0.1}, ValueError),
                                    ({"p": "a"}, TypeError), ({"p": 0.5, "mode": "x"}, ValueError)])
def test_dropout_rejects_bad_arguments(kw, exc):
    with pytest.raises(exc):
        nn.Dropout(**kw)


def test_constructors_reject_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm1d(3, momentum=2.0)
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm((2, -3))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(())
    with pytest.raises(ValueError, match="eps"):
        nn.LayerNorm(3, eps=-1)


# ---------------------------------------------------------------------------------------------
# random shapes and dtypes: a correct answer or a clean TypeError/ValueError
# ---------------------------------------------------------------------------------------------

_DT = [np.float32, np.float64, np.int32]


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["linear", "bn", "ln", "relu", "dropout"]),
       n=st.integers(0, 5), c=st.integers(1, 6), c_layer=st.integers(1, 6),
       xdt=st.sampled_from(_DT), ldt=st.sampled_from(_DT[:2]), ndim=st.integers(1, 3))
def test_random_inputs_give_answer_or_clean_error(kind, n, c, c_layer, xdt, ldt, ndim):
    layer = {"linear": lambda: nn.Linear(c_layer, 3, dtype=ldt),
             "bn": lambda: nn.BatchNorm1d(c_layer, dtype=ldt),
             "ln": lambda: nn.LayerNorm(c_layer, dtype=ldt),
             "relu": nn.ReLU, "dropout": lambda: nn.Dropout(0.5)}[kind]()
    shape = (n, c) if ndim == 2 else ((c,) if ndim == 1 else (n, 2, c))
    x = np.ones(shape, dtype=xdt)
    try:
        y = layer(x)
    except (TypeError, ValueError):
        return
    assert isinstance(y, np.ndarray) and np.all(np.isfinite(y))
    if kind == "linear":
        np.testing.assert_allclose(y, x.astype(np.float64) @ layer.weight.data.T.astype(float)
                                   + layer.bias.data, rtol=1e-4, atol=1e-4)
    g = layer.backward(np.ones(y.shape, y.dtype))
    assert g.shape == x.shape


def test_parameter_free_layer_follows_input_dtype_between_calls(rng):
    relu = nn.ReLU()
    a = relu(rng.standard_normal((3, 4)).astype(np.float32))
    b = relu(rng.standard_normal((3, 4)))
    assert a.dtype == np.float32 and b.dtype == np.float64
    assert relu.backward(np.ones((3, 4))).dtype == np.float64


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 6), lambda: nn.ReLU(),
                                  lambda: nn.LayerNorm(6), lambda: nn.BatchNorm1d(6),
                                  lambda: nn.Dropout(0.5)], ids=["linear", "relu", "layernorm",
                                                                 "batchnorm", "dropout"])
def test_a_layer_fed_its_own_output_buffer_raises_instead_of_computing_garbage(make):
    # the kernels write a layer's output buffer while reading its input: a custom forward that
    # calls one layer on its own result must get a clear error (torch would allocate anew)
    layer = make()
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    y = layer.forward(x)             # inner call: the layer's own buffer, not a copy
    with pytest.raises(ValueError, match="own output buffer"):
        layer.forward(y)
    with pytest.raises(ValueError, match="own output buffer"):
        layer.forward(y[1:3])        # a view of it too
    layer.forward(y.copy())          # a copy is fine
