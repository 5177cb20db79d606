"""nn.ModuleList and nn.ModuleDict behave as torch's: list / dict operations, registration
(state_dict keys "layers.0.weight"), renumbering after del / insert, name checks, repr."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn

torch = pytest.importorskip("torch")


def _pair(n=4):
    """The same list of Linear(i+1, i+2) built in fastreg and in torch (shapes tell them apart)."""
    return ([nn.Linear(i + 1, i + 2) for i in range(n)],
            [torch.nn.Linear(i + 1, i + 2) for i in range(n)])


def _shapes(ml):
    return [tuple(m.weight.shape) for m in ml]


def test_module_list_operations_match_torch():
    ours, theirs = _pair(9)          # distinct modules (state_dict dedup differs, see below)
    a, b = nn.ModuleList(ours[:4]), torch.nn.ModuleList(theirs[:4])
    ops = [
        lambda ml, mods: ml.append(mods[4]) and None,
        lambda ml, mods: ml.extend(mods[5:7]) and None,
        lambda ml, mods: ml.insert(1, mods[7]),
        lambda ml, mods: ml.__delitem__(0),
        lambda ml, mods: ml.__delitem__(slice(1, None, 2)),
        lambda ml, mods: ml.__setitem__(-1, mods[8]),
        lambda ml, mods: ml.pop(1) and None,
    ]
    for op in ops:
        op(a, ours)
        op(b, theirs)
        assert _shapes(a) == [tuple(m.weight.shape) for m in b]
        assert list(a.state_dict()) == list(b.state_dict())
        assert [k for k, _ in a.named_children()] == [str(i) for i in range(len(a))]
    assert len(a) == len(b) and a[-1] is a[len(a) - 1]
    assert "0" not in dir(a) and "append" in dir(a)
    assert _shapes(a[1:]) == [tuple(m.weight.shape) for m in b[1:]]
    assert isinstance(a[1:], nn.ModuleList) and a[1:][0] is a[1]
    c = a + nn.ModuleList(ours[:1])
    assert isinstance(c, nn.ModuleList) and _shapes(c) == _shapes(a) + [(2, 1)]
    a += [ours[0]]
    assert _shapes(a)[-1] == (2, 1)


def test_module_list_index_errors_as_torch():
    a = nn.ModuleList(_pair(2)[0])
    with pytest.raises(IndexError, match="index 2 is out of range"):
        a[2]
    with pytest.raises(IndexError, match="index -3 is out of range"):
        a[-3]
    with pytest.raises(TypeError, match="integers or slices"):
        a["0"]
    with pytest.raises(TypeError, match="extend should be called with an iterable"):
        a.extend(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="is not a fastreg.nn.Module"):
        a.append(torch.nn.Linear(1, 1))
    with pytest.raises(NotImplementedError, match="forward"):
        a(np.zeros((1, 1), np.float32))
    a.insert(-1, nn.Identity())                  # as list.insert (torch: KeyError)
    assert isinstance(a[1], nn.Identity) and len(a) == 3


def test_registration_reaches_parameters_modes_and_state_dict_keys():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 3), nn.BatchNorm1d(3)])
            self.heads = nn.ModuleDict({"cls": nn.Linear(3, 2), "reg": nn.Linear(3, 1)})

    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)])
            self.heads = torch.nn.ModuleDict({"cls": torch.nn.Linear(3, 2),
                                              "reg": torch.nn.Linear(3, 1)})

    net, tnet = Net(), TNet()
    assert list(net.state_dict()) == list(tnet.state_dict())
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    net.eval()
    assert not net.layers[1].training and not net.heads["cls"].training
    fr.io.from_torch_state_dict(net, tnet.state_dict())
    np.testing.assert_array_equal(net.heads["reg"].weight.data, tnet.heads.reg.weight.detach())


def test_module_dict_operations_match_torch():
    ours, theirs = _pair(4)
    a = nn.ModuleDict({"b": ours[0], "a": ours[1]})
    b = torch.nn.ModuleDict({"b": theirs[0], "a": theirs[1]})
    a.update([("c", ours[2]), ("b", ours[3])])
    b.update([("c", theirs[2]), ("b", theirs[3])])
    a["d"] = ours[0]
    b["d"] = theirs[0]
    assert list(a) == list(b) == list(a.keys()) == ["b", "a", "c", "d"]     # insertion order
    assert [tuple(m.weight.shape) for m in a.values()] == \
        [tuple(m.weight.shape) for m in b.values()]
    assert [k for k, _ in a.items()] == list(b.keys())
    assert list(a.state_dict()) == list(b.state_dict())
    assert "c" in a and "z" not in a and len(a) == 4
    assert a.pop("a") is ours[1] and "a" not in a
    del a["c"]
    assert list(a) == ["b", "d"]
    a.update(nn.ModuleDict({"e": ours[1]}))
    assert list(a) == ["b", "d", "e"]
    a.clear()
    assert len(a) == 0 and list(a.state_dict()) == []


def test_module_dict_refuses_what_torch_refuses():
    a = nn.ModuleDict()
    with pytest.raises(KeyError, match="attribute 'train' already exists"):
        a["train"] = nn.ReLU()
    with pytest.raises(KeyError, match=r'contain "\.", got: x.y'):
        a["x.y"] = nn.ReLU()
    with pytest.raises(KeyError, match="empty string"):
        a[""] = nn.ReLU()
    with pytest.raises(TypeError, match="should be a string. Got int"):
        a[1] = nn.ReLU()
    with pytest.raises(TypeError, match="iterable of key/value pairs"):
        a.update(3)
    with pytest.raises(ValueError, match="element #0 has length 3"):
        a.update([("a", nn.ReLU(), 1)])
    with pytest.raises(TypeError, match="element #0 should be Iterable"):
        a.update([3])
    with pytest.raises(KeyError):
        a["missing"]


def test_repr_is_torchs():
    a = nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.Tanh(), nn.ModuleList([nn.ReLU()])])
    b = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.Tanh(),
                             torch.nn.ModuleList([torch.nn.ReLU()])])
    assert repr(a) == repr(b)
    assert repr(nn.ModuleList()) == repr(torch.nn.ModuleList())
    d = nn.ModuleDict(OrderedDict(act=nn.ReLU(), out=nn.Tanh()))
    td = torch.nn.ModuleDict(OrderedDict(act=torch.nn.ReLU(), out=torch.nn.Tanh()))
    assert repr(d) == repr(td)
