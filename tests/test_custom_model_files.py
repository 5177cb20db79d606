"""Model files for custom modules (issue 10, item 3): state + class name, filled into an
instance with every check done before anything is copied; compile/predict on custom modules."""
from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import pytest

import fastreg as fr
from fastreg import inference, nn
from fastreg import io as frio
from fastreg.io import ModelFileError


class ResBlock(nn.Module):
    """x + Linear(ReLU(Linear(BatchNorm(x)))), forward only."""

    def __init__(self, d=5, h=8, dtype="float64"):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm1d(d, dtype=dtype), nn.Linear(d, h, dtype=dtype),
                                  nn.ReLU(), nn.Dropout(0.3), nn.Linear(h, d, dtype=dtype))

    def forward(self, x):
        return x + self.body(x)


class Net(nn.Module):
    def __init__(self, dtype="float64"):
        super().__init__()
        self.stem = nn.Linear(7, 5, dtype=dtype)
        self.block = ResBlock(dtype=dtype)
        self.head = nn.Sequential(nn.LayerNorm(5, dtype=dtype), nn.Linear(5, 2, dtype=dtype))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class Other(Net):
    pass


def _trained_net(seed=0):
    fr.manual_seed(seed)
    net = Net()
    g = np.random.default_rng(seed)
    bn = net.block.body[0]
    bn.running_mean[...] = g.standard_normal(5)
    bn.running_var[...] = g.uniform(0.5, 2, 5)
    net.head[0].weight.data[...] = g.uniform(0.5, 1.5, 5)
    return net


def test_custom_module_round_trip_and_predict(tmp_path):
    net = _trained_net()
    frio.save(net, tmp_path / "net.fr", metadata={"note": "x"})
    header = json.loads(zipfile.ZipFile(tmp_path / "net.fr").read("fastreg.json"))
    assert header["class"] == f"{__name__}.Net" and header["architecture"] is None
    assert list(header["tensors"]) == list(net.state_dict())         # torch key names
    with pytest.raises(ModelFileError, match="model=instance"):
        fr.load(tmp_path / "net.fr")
    fresh = Net()
    out = fr.load(tmp_path / "net.fr", model=fresh)
    assert out is fresh and fresh.metadata == {"note": "x"} and not fresh.training
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v, err_msg=k)
    x = np.random.default_rng(1).standard_normal((33, 7))
    expected = net.eval()(x)
    np.testing.assert_allclose(fresh.predict(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fresh.predict(x[0]), expected[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 257])
def test_compile_custom_module_containing_sequentials(n):
    net = _trained_net(3).eval()
    pred = inference.compile(net)
    x = np.random.default_rng(n).standard_normal((n, 7))
    np.testing.assert_allclose(pred(x), net(x), rtol=1e-12, atol=1e-12)
    # a Sequential around the custom module: the Linear/LayerNorm stages fold around it
    seq = nn.Sequential(nn.Linear(7, 7, dtype="float64"), nn.ReLU(), net,
                        nn.Linear(2, 3, dtype="float64")).eval()
    pred = inference.compile(seq)
    assert pred.stages[0] == "linear+relu 7->7" and pred.stages[1] == "module Net"
    np.testing.assert_allclose(pred(x), seq(x), rtol=1e-12, atol=1e-12)


def _mismatch_cases():
    def wrong_class():
        return Other()

    def wrong_shape():
        m = Net()
        m.head = nn.Sequential(nn.LayerNorm(5, dtype="float64"),
                               nn.Linear(5, 3, dtype="float64"))
        return m

    def wrong_dtype():
        return Net(dtype="float32")

    def missing_key():
        m = Net()
        m.head = nn.Sequential(nn.LayerNorm(5, dtype="float64"))
        return m

    return [(wrong_class, "holds a .*Net, the model given is a .*Other"),
            (wrong_shape, r"head.1.weight: shape \(2, 5\) in the file, \(3, 5\)"),
            (wrong_dtype, "dtype float64 in the file, float32 in the model"),
            (missing_key, "unexpected key")]


@pytest.mark.parametrize("make,match", _mismatch_cases(),
                         ids=["class", "shape", "dtype", "keys"])
def test_load_into_instance_checks_everything_before_copying(tmp_path, make, match):
    frio.save(_trained_net(), tmp_path / "net.fr")
    target = make()
    before = {k: v.copy() for k, v in target.state_dict().items()}
    with pytest.raises(ModelFileError, match=match):
        fr.load(tmp_path / "net.fr", model=target)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)       # nothing copied
    assert not hasattr(target, "metadata")


def test_class_named_in_a_file_is_never_imported(tmp_path):
    frio.save(_trained_net(), tmp_path / "net.fr")
    with zipfile.ZipFile(tmp_path / "net.fr") as zin, \
            zipfile.ZipFile(tmp_path / "evil.fr", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "fastreg.json":
                h = json.loads(data)
                h["class"] = "fastreg_never_imported_module.Evil"
                data = json.dumps(h).encode()
            zout.writestr(info.filename, data)
    with pytest.raises(ModelFileError, match="fastreg_never_imported_module.Evil"):
        fr.load(tmp_path / "evil.fr")
    with pytest.raises(ModelFileError, match="the model given is a"):
        fr.load(tmp_path / "evil.fr", model=Net())
    assert "fastreg_never_imported_module" not in sys.modules
    with pytest.raises(TypeError, match="model must be a fastreg.nn.Module instance, got type"):
        fr.load(tmp_path / "net.fr", model=Net)              # the class, not an instance


def test_builtin_model_file_can_fill_an_instance(tmp_path):
    fr.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    frio.save(seq, tmp_path / "s.fr")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    fr.load(tmp_path / "s.fr", model=fresh)
    np.testing.assert_array_equal(fresh[2].weight.data, seq[2].weight.data)
    with pytest.raises(ModelFileError, match="missing key"):
        fr.load(tmp_path / "s.fr", model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
                                                       nn.Linear(4, 1), nn.Linear(1, 1)))
