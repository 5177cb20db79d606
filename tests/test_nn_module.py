"""The Module API: registration, traversal, modes, state_dict, repr, Sequential, dtypes, init."""
import math
import sys

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn


def small_model(dtype=None):
    return nn.Sequential(nn.Linear(4, 6, dtype=dtype), nn.BatchNorm1d(6, dtype=dtype), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(6, 3, dtype=dtype))


def test_state_dict_uses_torch_key_names():
    sd = small_model().state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                        "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"]
    assert sd["0.weight"].shape == (6, 4)            # (out, in) as torch
    assert sd["1.num_batches_tracked"].dtype == np.int64


def test_state_dict_is_a_copy_and_load_copies_in_place():
    m = small_model()
    sd = m.state_dict()
    w = m[0].weight
    data_before = w.data
    sd["0.weight"][...] = 7.0
    assert not np.any(w.data == 7.0)                 # the state_dict does not alias the model
    m.load_state_dict(sd)
    assert w.data is data_before                    # never rebinds
    assert np.all(w.data == 7.0)


def test_load_state_dict_casts_to_module_dtype():
    src = small_model(np.float64)
    dst = small_model(np.float32)
    for v in src.state_dict().values():
        assert v.dtype in (np.float64, np.int64)
    dst.load_state_dict(src.state_dict())
    assert dst[0].weight.dtype == np.float32
    np.testing.assert_allclose(dst[0].weight.data, src[0].weight.data, rtol=1e-7)


def test_load_state_dict_strict_errors_and_nonstrict_report():
    m = small_model()
    sd = m.state_dict()
    del sd["0.bias"]
    sd["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match="Missing key.*0.bias"):
        m.load_state_dict(sd)
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["0.bias"] and res.unexpected_keys == ["extra"]
    bad = m.state_dict()
    bad["4.weight"] = np.zeros((2, 2))
    with pytest.raises(RuntimeError, match=r"size mismatch for 4.weight.*\(2, 2\)"):
        m.load_state_dict(bad)
    with pytest.raises(TypeError):
        m.load_state_dict([1, 2])


def test_parameters_named_modules_children_buffers():
    m = small_model()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert [p.regularize for p in m.parameters()] == [True, False, False, False, True, False]
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "2", "3", "4"]
    assert len(list(m.children())) == 5
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var",
                                                "1.num_batches_tracked"]


def test_register_buffer_and_custom_module():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("factor", np.full(3, 2.0, np.float32))
            self.register_buffer("tmp", np.zeros(1), persistent=False)
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            self._x = x
            return self.lin(x * self.factor)

        def backward(self, g, *, input_grad=True):
            return self.lin.backward(g) * self.factor

    m = Scale()
    assert list(m.state_dict()) == ["factor", "lin.weight", "lin.bias"]
    assert [n for n, _ in m.named_buffers()] == ["factor", "tmp"]
    x = np.ones((2, 3), np.float32)
    y = m(x)
    np.testing.assert_allclose(y, 2 * x @ m.lin.weight.data.T + m.lin.bias.data, rtol=1e-6)
    assert m.backward(np.ones((2, 3), np.float32)).shape == (2, 3)


def test_train_eval_and_zero_grad():
    m = small_model()
    assert m.training and all(c.training for c in m.modules())
    assert m.eval() is m and not any(c.training for c in m.modules())
    m.train()
    x = np.ones((5, 4), np.float32) + np.arange(5, dtype=np.float32)[:, None]
    m(x)
    m.backward(np.ones((5, 3), np.float32))
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and np.any(g != 0) for g in grads[:2])
    m.zero_grad()
    assert all(p.grad is g and not np.any(g) for p, g in zip(m.parameters(), grads))
    m.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(TypeError):
        m.train("yes")


def test_repr_matches_torch_style():
    m = small_model()
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=6, bias=True)\n"
        "  (1): BatchNorm1d(6, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "  (2): ReLU()\n"
        "  (3): Dropout(p=0.2)\n"
        "  (4): Linear(in_features=6, out_features=3, bias=True)\n"
        ")")
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.LayerNorm(5)) == "LayerNorm((5,), eps=1e-05, elementwise_affine=True)"


def test_sequential_indexing_slicing_len_iter_append():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    m = nn.Sequential(*layers)
    assert len(m) == 3 and list(m) == layers
    assert m[0] is layers[0] and m[-1] is layers[2]
    sub = m[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == layers[1:]
    assert list(sub.state_dict()) == ["2.weight", "2.bias"]    # torch keeps the keys
    with pytest.raises(IndexError):
        m[3]
    with pytest.raises(TypeError):
        m["a"]
    m.append(nn.Sigmoid())
    assert len(m) == 4
    with pytest.raises(TypeError):
        nn.Sequential(nn.Linear(2, 2), lambda x: x)
    from collections import OrderedDict
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.Tanh())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"] and named.fc is named[0]


def test_default_dtype_and_float64_models():
    assert nn.Linear(2, 2).weight.dtype == np.float32
    fr.set_default_dtype(np.float64)
    m = small_model()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m[1].running_mean.dtype == np.float64
    y = m(np.ones((3, 4)) + np.arange(3.0)[:, None])
    assert y.dtype == np.float64


def test_linear_init_is_torch_default_and_seeded():
    fr.manual_seed(0)
    a = nn.Linear(400, 300)
    fr.manual_seed(0)
    b = nn.Linear(400, 300)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / math.sqrt(400)
    w = a.weight.data.astype(np.float64)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound       # uniform(-b, b)
    assert np.abs(a.bias.data).max() <= bound


def test_import_fastreg_nn_does_not_import_numba():
    import subprocess
    code = ("import sys, fastreg.nn, fastreg.train; import fastreg as fr; "
            "fr.nn.Sequential(fr.nn.Linear(2, 2)); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nn_init_is_reachable_lazily():
    assert hasattr(nn.init, "kaiming_uniform_")


def test_replacing_a_parameter_or_buffer_must_keep_its_shape_and_dtype():
    # layers hand their parameters and buffers to kernels that trust their shapes: a wrong-shaped
    # replacement is refused when assigned (never an out-of-bounds read at the next forward)
    lin = nn.Linear(3, 2, bias=False)
    with pytest.raises(ValueError, match=r"Linear.weight must keep shape \(2, 3\)"):
        lin.weight = nn.Parameter(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Linear.weight must keep .* dtype float32"):
        lin.register_parameter("weight", nn.Parameter(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"Linear.bias must keep shape \(2,\)"):
        lin.bias = nn.Parameter(np.ones(7, np.float32))
    lin.bias = nn.Parameter(np.ones(2, np.float32))        # the right shape is fine
    np.testing.assert_allclose(lin(np.zeros((1, 3), np.float32)), [[1.0, 1.0]])
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"BatchNorm1d.running_mean must keep shape \(4,\)"):
        bn.running_mean = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="running_var"):
        bn.register_buffer("running_var", np.ones(5, np.float32))
    bn.running_mean = np.zeros(4, np.float32)
