"""nn.init: torch's gains and fans, empirical moments against the formulas, seeding, errors."""
import math

import numpy as np
import pytest

import fastreg
from fastreg.nn import init
from fastreg.nn.parameter import Parameter

NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]
FAN_SHAPES = [(3, 5), (7, 1), (1, 1), (4, 3, 2, 2), (2, 6, 5), (1, 1, 5)]
BIG = (1000, 800)  # 800k draws: sample std within ~0.2% of the truth


def expected_gain(name, param=None):
    """torch's table, written out."""
    table = {"tanh": 5 / 3, "relu": math.sqrt(2), "selu": 0.75}
    if name == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2 / (1 + slope ** 2))
    return table.get(name, 1.0)


@pytest.mark.parametrize("name", NONLINEARITIES)
def test_gain_table(name):
    assert init.calculate_gain(name) == pytest.approx(expected_gain(name), rel=1e-15)


@pytest.mark.parametrize("name, param", [(n, None) for n in NONLINEARITIES]
                         + [("leaky_relu", p) for p in (0, 0.2, 1, 3, math.sqrt(5))])
def test_gain_equals_torch(name, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param)


def test_gain_errors():
    with pytest.raises(ValueError, match="Unsupported nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
    for bad in ("x", True, [0.1]):
        with pytest.raises(ValueError, match="negative_slope"):
            init.calculate_gain("leaky_relu", bad)


@pytest.mark.parametrize("shape", FAN_SHAPES)
def test_fans(shape):
    receptive = int(np.prod(shape[2:]))
    expected = (shape[1] * receptive, shape[0] * receptive)
    assert init._calculate_fan_in_and_fan_out(np.zeros(shape)) == expected
    torch = pytest.importorskip("torch")
    assert init._calculate_fan_in_and_fan_out(np.zeros(shape)) == \
        torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(5,), ()])
def test_fans_undefined_below_2d_as_torch(shape):
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(np.zeros(shape))
    for fn in (init.xavier_uniform_, init.xavier_normal_, init.kaiming_uniform_,
               init.kaiming_normal_):
        with pytest.raises(ValueError, match="fewer than 2 dimensions"):
            fn(np.zeros(shape) if shape else np.zeros((1,)))


# ---------------------------------------------------------------------------------------------
# distributions

CASES = [
    # (initializer, kwargs, kind, scale: bound for uniform / std for normal) for BIG = (1000, 800)
    (init.xavier_uniform_, {}, "uniform", math.sqrt(6 / 1800)),
    (init.xavier_uniform_, {"gain": 5 / 3}, "uniform", 5 / 3 * math.sqrt(6 / 1800)),
    (init.xavier_normal_, {}, "normal", math.sqrt(2 / 1800)),
    (init.xavier_normal_, {"gain": 2.0}, "normal", 2 * math.sqrt(2 / 1800)),
    (init.kaiming_uniform_, {}, "uniform",
     math.sqrt(3) * expected_gain("leaky_relu", 0) / math.sqrt(800)),
    (init.kaiming_uniform_, {"a": math.sqrt(5)}, "uniform", 1 / math.sqrt(800)),
    (init.kaiming_uniform_, {"mode": "fan_out", "nonlinearity": "relu"}, "uniform",
     math.sqrt(3) * math.sqrt(2) / math.sqrt(1000)),
    (init.kaiming_normal_, {}, "normal", math.sqrt(2 / 800)),
    (init.kaiming_normal_, {"mode": "FAN_OUT", "nonlinearity": "tanh"}, "normal",
     5 / 3 / math.sqrt(1000)),
    (init.uniform_, {"a": -0.5, "b": 1.5}, "uniform01", (-0.5, 1.5)),
    (init.normal_, {"mean": 2.0, "std": 0.3}, "normal", 0.3),
]


@pytest.mark.parametrize("fn, kw, kind, scale", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_empirical_moments_match_the_formula(fn, kw, kind, scale, dtype):
    w = np.full(BIG, np.nan, dtype=dtype)
    out = fn(w, generator=fastreg.Generator(1), **kw)
    assert out is w and w.dtype == dtype and np.all(np.isfinite(w))
    if kind == "uniform":
        assert np.abs(w).max() <= scale * (1 + 1e-6) and np.abs(w).max() > 0.999 * scale
        assert np.std(w, dtype=np.float64) == pytest.approx(scale / math.sqrt(3), rel=5e-3)
        assert abs(np.mean(w, dtype=np.float64)) < 5e-3 * scale
    elif kind == "uniform01":
        lo, hi = scale
        assert w.min() >= lo and w.max() <= hi and w.min() < lo + 1e-3 and w.max() > hi - 1e-3
        assert np.mean(w, dtype=np.float64) == pytest.approx((lo + hi) / 2, abs=5e-3)
    else:
        mean = kw.get("mean", 0.0)
        assert np.std(w, dtype=np.float64) == pytest.approx(scale, rel=5e-3)
        assert abs(np.mean(w, dtype=np.float64) - mean) < 5e-3 * scale


@pytest.mark.parametrize("name, kw", [("kaiming_uniform_", {"a": math.sqrt(5)}),
                                      ("xavier_uniform_", {"gain": 2.0}),
                                      ("kaiming_normal_", {"mode": "fan_out"}),
                                      ("xavier_normal_", {})])
def test_scale_matches_torch_empirically(name, kw):
    torch = pytest.importorskip("torch")
    shape = (300, 200, 3)
    t = torch.empty(shape, dtype=torch.float64)
    getattr(torch.nn.init, name)(t, generator=torch.Generator().manual_seed(0), **kw)
    w = getattr(init, name)(np.empty(shape), generator=fastreg.Generator(0), **kw)
    assert np.std(w) == pytest.approx(t.std().item(), rel=1e-2)
    if "uniform" in name:
        assert np.abs(w).max() == pytest.approx(t.abs().max().item(), rel=1e-3)


def test_constant_zeros_ones_on_parameter_views():
    flat = np.full(20, 7.0, dtype=np.float32)
    p = Parameter(flat[:12].reshape(3, 4))
    p.data = flat[:12].reshape(3, 4)  # an optimizer may re-point data at its flat buffer
    assert init.zeros_(p) is p and np.all(flat[:12] == 0) and np.all(flat[12:] == 7)
    init.ones_(p)
    assert np.all(p.data == 1) and np.all(flat[:12] == 1)
    init.constant_(p, -2.5)
    assert np.all(flat[:12] == -2.5)
    init.normal_(p, generator=fastreg.Generator(3))
    assert np.all(flat[:12] != -2.5) and np.all(flat[12:] == 7)


# ---------------------------------------------------------------------------------------------
# seeding

@pytest.mark.parametrize("fn", [init.uniform_, init.normal_, init.xavier_uniform_,
                                init.xavier_normal_, init.kaiming_uniform_, init.kaiming_normal_])
def test_seeding_repeatability(fn):
    def draw(**kw):
        return fn(np.empty((33, 7)), **kw)

    fastreg.manual_seed(10)
    a = draw()
    fastreg.manual_seed(10)
    assert np.array_equal(a, draw())
    assert not np.array_equal(a, draw())  # the global stream advanced
    assert np.array_equal(draw(generator=fastreg.Generator(4)),
                          draw(generator=fastreg.Generator(4)))
    assert not np.array_equal(draw(generator=fastreg.Generator(4)),
                              draw(generator=fastreg.Generator(5)))
    assert np.array_equal(draw(generator=np.random.default_rng(2)),
                          draw(generator=np.random.default_rng(2)))
    f32 = fn(np.empty((33, 7), np.float32), generator=fastreg.Generator(6))
    f64 = fn(np.empty((33, 7)), generator=fastreg.Generator(6))
    assert np.array_equal(f32, f64.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("call, exc, match", [
    (lambda: init.zeros_([1.0, 2.0]), TypeError, "Parameter or a numpy.ndarray"),
    (lambda: init.ones_(np.zeros((2, 2), np.int64)), TypeError, "floating dtype"),
    (lambda: init.normal_(np.zeros(3), std=-1.0), ValueError, "std"),
    (lambda: init.uniform_(np.zeros(3), a=2.0, b=1.0), ValueError, "a <= b"),
    (lambda: init.constant_(np.zeros(3), "1"), TypeError, "val"),
    (lambda: init.kaiming_uniform_(np.zeros((2, 2)), mode="fan_avg"), ValueError,
     "mode.*'fan_avg'"),
    (lambda: init.kaiming_normal_(np.zeros((2, 2)), nonlinearity="swish"), ValueError,
     "swish"),
    (lambda: init.xavier_uniform_(np.zeros((2, 2)), generator=0), TypeError, "generator"),
    (lambda: init.xavier_normal_(np.zeros((2, 2)), gain=math.inf), ValueError, "gain"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_array_is_refused():
    w = np.zeros((3, 3))
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.xavier_uniform_(w)


def test_zero_element_kaiming_warns_and_is_a_no_op():
    w = np.zeros((0, 5))
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_uniform_(w) is w
