"""Every registered layer honours its one description (``layer_spec`` + ``inference_ops``).

For each layer in ``fastreg.nn._spec.LAYERS``: the declared state equals its ``state_dict``, a
save/load round trip gives the same module, the compiled predictor equals the eval model (alone
and between Linears, both dtypes), and the state_dict keys are torch's. A layer added to the
registry without an entry in ``EXAMPLES`` fails ``test_every_registered_layer_has_examples``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from conftest import tol

import fastreg as fr
from fastreg import inference, nn
from fastreg import io as frio
from fastreg.nn import _spec

F = 6          # input features of every example
V = 11         # Embedding examples: table rows (their input is (N, F) int64 indices)
#: Layers whose input is integer indices, not (N, F) floats.
INDEX_INPUT = {"Embedding"}
#: Leaf layers that run their own forward under compile, with the reason.
FORWARD_PATH = {"Embedding": "a table lookup on integer indices: no typed inference op"}
#: Batch sizes for fold equivalence (>= 2: BatchNorm1d without running stats needs two rows).
BATCHES = (2, 7, 33)


def _examples(dt) -> dict[str, list]:
    """Type name -> modules covering the branches of its arguments (input (N, F))."""
    return {
        "Linear": [nn.Linear(F, 5, dtype=dt), nn.Linear(F, 4, bias=False, dtype=dt)],
        "BatchNorm1d": [nn.BatchNorm1d(F, dtype=dt),
                        nn.BatchNorm1d(F, momentum=None, affine=False, dtype=dt),
                        nn.BatchNorm1d(F, track_running_stats=False, dtype=dt),
                        nn.BatchNorm1d(F, bias=False, dtype=dt)],
        "LayerNorm": [nn.LayerNorm(F, dtype=dt),
                      nn.LayerNorm(F, eps=1e-3, elementwise_affine=False, dtype=dt),
                      nn.LayerNorm(F, bias=False, dtype=dt)],
        "Dropout": [nn.Dropout(0.3), nn.Dropout(0.3, mode="classic"),
                    nn.Dropout(0.0, mode="classic"), nn.Dropout(1.0, inplace=True)],
        "ReLU": [nn.ReLU()],
        "Sigmoid": [nn.Sigmoid()],
        "Tanh": [nn.Tanh()],
        "LeakyReLU": [nn.LeakyReLU(0.2), nn.LeakyReLU(-0.3)],
        "Identity": [nn.Identity()],
        "Flatten": [nn.Flatten(), nn.Flatten(1, 1)],
        "Embedding": [nn.Embedding(V, 4, dtype=dt),
                      nn.Embedding(V, 3, padding_idx=-1, max_norm=1.5, norm_type=1.0,
                                   scale_grad_by_freq=True, dtype=dt)],
        "Sequential": [nn.Sequential(nn.Linear(F, 5, dtype=dt), nn.ReLU()),
                       _unfused(nn.Sequential(OrderedDict(
                           fc=nn.Linear(F, F, dtype=dt), act=nn.Tanh(),
                           inner=nn.Sequential(nn.BatchNorm1d(F, dtype=dt)))))],
    }


def _unfused(seq):
    seq.fuse = False
    return seq


def _randomize(model, seed=0):
    """Non-trivial statistics and affine parameters (the defaults are 0/1)."""
    g = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
            m.running_mean[...] = g.standard_normal(m.num_features)
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
            m.num_batches_tracked[...] = 3
        if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) and m.weight is not None:
            m.weight.data[...] = g.uniform(0.5, 1.5, m.weight.shape)
            if m.bias is not None:
                m.bias.data[...] = g.standard_normal(m.bias.shape)
    return model


CASES = [(name, i) for name, mods in _examples(np.float32).items() for i in range(len(mods))]
IDS = [f"{name}-{i}" for name, i in CASES]


def _example(name: str, i: int, dt):
    fr.manual_seed(i)
    return _randomize(_examples(dt)[name][i], seed=i)


def _x(n: int, dt, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, F)).astype(dt)


def _input(name: str, n: int, dt, seed=1) -> np.ndarray:
    """A batch for layer type ``name``: (n, F) floats, or (n, F) int64 indices in [0, V)."""
    if name in INDEX_INPUT:
        return np.random.default_rng(seed).integers(0, V, (n, F))
    return _x(n, dt, seed)


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------

def test_every_registered_layer_has_examples():
    assert set(_spec.LAYERS) == set(_examples(np.float32))
    for name, cls in _spec.LAYERS.items():
        assert cls.__name__ == name and getattr(nn, name) is cls, name
        assert _spec.spec_of(cls) is cls.layer_spec


def test_io_registry_is_derived_from_the_descriptions():
    assert set(frio.REGISTRY) == set(_spec.LAYERS)
    for name, (cls_name, args) in frio.REGISTRY.items():
        assert cls_name == name and args == tuple(_spec.LAYERS[name].layer_spec.args)


def test_leaf_layers_with_default_arguments_fold_without_the_forward_path():
    """A registered layer must not silently take the slow path at its defaults."""
    for name, cls in _spec.LAYERS.items():
        spec = cls.layer_spec
        if spec.container:
            continue
        m = _examples(np.float32)[name][0]
        ops = _spec.fold(m)
        assert all(type(op) in _spec.OPS for op in ops), name
        if name in FORWARD_PATH:
            assert [type(op) for op in ops] == [_spec.ForwardOp], name
            continue
        assert not any(type(op) is _spec.ForwardOp for op in ops), name


# ---------------------------------------------------------------------------------------------
# per layer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_declared_state_matches_state_dict(name, i, dtype):
    m = _example(name, i, dtype)
    spec = type(m).layer_spec
    sd = m.state_dict()
    if spec.container:
        shapes = frio.tree.check_tree(frio.architecture(m), "<test>")
    else:
        shapes = spec.state(spec.read_args(m))
    assert list(shapes) == list(sd)
    for k, (shape, dt) in shapes.items():
        assert tuple(sd[k].shape) == tuple(shape) and sd[k].dtype == np.dtype(dt), k


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_save_load_round_trip(name, i, dtype, tmp_path):
    m = _example(name, i, dtype)
    frio.save(m, tmp_path / "m.fr")
    loaded = frio.load(tmp_path / "m.fr")
    assert type(loaded) is type(m) and repr(loaded) == repr(m)
    assert frio.architecture(loaded) == frio.architecture(m)
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and np.array_equal(sd2[k], sd[k]), k
    m.eval()
    x = _input(name, 5, dtype)
    np.testing.assert_array_equal(loaded(x), m(x))


def _contexts(m, dt):
    """The layer alone, after a Linear, and between Linear+ReLU and a Linear (BatchNorm and
    scales fold backwards into the first, forwards into the last); an index layer alone and
    before Flatten + Linear."""
    if type(m).__name__ in INDEX_INPUT:
        yield "alone", m
        D = m.eval()(_input(type(m).__name__, 2, dt)).shape[-1]
        yield "before_linear", nn.Sequential(m, nn.Flatten(), nn.Linear(F * D, 3, dtype=dt))
        return
    out_f = m.eval()(_x(2, dt)).shape[1]
    yield "alone", m
    yield "after_linear", nn.Sequential(nn.Linear(F, F, dtype=dt), m)
    yield "between", nn.Sequential(nn.Linear(F, F, dtype=dt), nn.ReLU(), m,
                                   nn.Linear(out_f, 3, dtype=dt))


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_compiled_equals_eval(name, i, dtype):
    rtol, atol = tol(dtype, f32=2e-4, f64=1e-10)
    for where, model in _contexts(_example(name, i, dtype), dtype):
        model.eval()
        pred = inference.compile(model, dtype=dtype)
        for n in BATCHES:
            x = _input(name, n, dtype, seed=n)
            got = pred(x)
            assert got.dtype == dtype, where
            np.testing.assert_allclose(got, model(x), rtol=rtol, atol=atol, err_msg=where)


def _to_torch(m, torch):
    """The torch.nn equivalent of a fastreg module, from its description."""
    spec = type(m).layer_spec
    if spec.container:
        return torch.nn.Sequential(OrderedDict((k, _to_torch(c, torch))
                                               for k, c in m.named_children()))
    args = {k: v for k, v in spec.read_args(m).items() if k not in ("dtype", "mode")}
    return getattr(torch.nn, type(m).__name__)(**args)


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_state_dict_keys_and_shapes_are_torchs(name, i):
    torch = pytest.importorskip("torch")
    m = _example(name, i, np.float32)
    tsd = _to_torch(m, torch).state_dict()
    sd = m.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert tuple(sd[k].shape) == tuple(tsd[k].shape), k
    frio.from_torch_state_dict(m, tsd)           # and torch's values load as they are


# ---------------------------------------------------------------------------------------------
# the mechanism: registration, unregistered modules, a new layer
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def scratch_registry():
    """Registrations made in a test are removed afterwards."""
    before = dict(_spec.LAYERS), dict(_spec._SPECS)
    yield
    _spec.LAYERS.clear()
    _spec.LAYERS.update(before[0])
    _spec._SPECS.clear()
    _spec._SPECS.update(before[1])


def test_register_layer_refuses_incomplete_descriptions(scratch_registry):
    class NoSpec(nn.Module):
        def inference_ops(self):
            return ()

    class NoFold(nn.Module):
        layer_spec = _spec.LayerSpec()

    class Linear(nn.Module):                    # a second class under a taken name
        layer_spec = _spec.LayerSpec()

        def inference_ops(self):
            return ()

    with pytest.raises(TypeError, match="layer_spec"):
        _spec.register_layer(NoSpec)
    with pytest.raises(TypeError, match="inference_ops"):
        _spec.register_layer(NoFold)
    with pytest.raises(ValueError, match="already registered"):
        _spec.register_layer(Linear)
    assert _spec.LAYERS["Linear"] is nn.Linear and "NoFold" not in _spec.LAYERS


def test_subclasses_and_custom_modules_run_their_own_forward():
    class MyLinear(nn.Linear):
        def forward(self, x, **kwargs):
            return super().forward(x) * 2

    class Custom(nn.Module):
        def forward(self, x):
            return x + 1

    fr.manual_seed(0)
    model = nn.Sequential(MyLinear(F, 4), nn.ReLU(), Custom(), nn.Linear(4, 2)).eval()
    assert [act for _, act in model._steps()] == [None, None, None, None]    # not fused
    pred = inference.compile(model)
    assert pred.stages == ["module MyLinear", "act 1", "module Custom", "linear 4->2"]
    x = _x(5, np.float32)
    np.testing.assert_allclose(pred(x), model(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="cannot save module"):
        frio.architecture(model)


class Scale(nn.Module):
    r""":math:`y = w \odot x` per feature: a layer added by describing it once."""

    layer_spec = _spec.LayerSpec(
        args={"features": _spec.Arg(_spec.is_dim),
              "dtype": _spec.Arg(_spec.is_dtype, lambda m: m.weight.data.dtype.name)},
        state=lambda a: {"weight": ((a["features"],), a["dtype"])})

    def __init__(self, features: int, dtype="float32"):
        super().__init__()
        self.features = features
        self.weight = nn.Parameter(np.linspace(0.5, 2.0, features).astype(dtype))

    def inference_ops(self):
        return (_spec.AffineOp(_spec.f64(self.weight.data), np.zeros(self.features)),)

    def forward(self, x):
        return x * self.weight.data

    def backward(self, grad_output, *, input_grad: bool = True):
        raise NotImplementedError


def test_a_new_layer_needs_only_its_description(scratch_registry, tmp_path):
    """Save/load, compile's folding and the file checks pick up a registered layer at once."""
    _spec.register_layer(Scale)
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(F, 4), Scale(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    frio.save(model, tmp_path / "s.fr")
    loaded = frio.load(tmp_path / "s.fr")
    assert type(loaded[1]) is Scale
    np.testing.assert_array_equal(loaded[1].weight.data, model[1].weight.data)
    pred = inference.compile(loaded)
    assert pred.stages == ["linear+relu 6->4", "linear 4->2"]       # folded, then fused
    x = _x(5, np.float32)
    np.testing.assert_allclose(pred(x), model(x), rtol=1e-5, atol=1e-6)


def test_compile_refuses_an_op_it_has_no_stage_for(scratch_registry):
    class Odd(nn.Module):
        layer_spec = _spec.LayerSpec()

        def inference_ops(self):
            return (object(),)

    _spec.register_layer(Odd)
    with pytest.raises(TypeError, match="no stage for inference op"):
        inference.compile(nn.Sequential(nn.Linear(F, 2), Odd()))
