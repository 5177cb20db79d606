"""fastreg.optim: optimizer classes vs torch.optim, flat-buffer contract, regularizers, state."""
import copy

import numpy as np
import pytest

import fastreg as fr
from fastreg.nn.parameter import Parameter

SHAPES = [(5, 3), (3,), (7,), (2, 2, 2)]
N_STEPS = 20


def _params(dtype, seed=0, regularize=(True, False, True, False)):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype), regularize=r)
            for s, r in zip(SHAPES, regularize)]


def _grads(dtype, seed=1, steps=N_STEPS):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _feed(params, grads):
    for p, g in zip(params, grads):
        p.grad[...] = g          # the module contract: write into p.grad in place


def _tol(dtype):
    return (1e-6, 1e-9) if np.dtype(dtype) == np.float64 else (1e-4, 1e-5)


# name, fastreg class, torch class name, group-0 overrides, defaults (shared by both libraries)
CONFIGS = [
    ("SGD", {"lr": 0.1}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}, {"weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.05}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}, {}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "maximize": True}, {}),
    ("Adam", {"lr": 0.01}, {}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}, {"betas": (0.8, 0.9)}),
    ("Adam", {"lr": 0.01, "maximize": True}, {"eps": 1e-6}),
    ("AdamW", {"lr": 0.01}, {}),
    ("AdamW", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.3}, {"maximize": True}),
    ("RMSprop", {"lr": 0.01}, {}),
    ("RMSprop", {"lr": 0.01, "centered": True}, {"weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}, {"alpha": 0.9}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "maximize": True}, {}),
    ("Adagrad", {"lr": 0.1}, {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1},
     {"initial_accumulator_value": 0.5}),
    ("Adagrad", {"lr": 0.1, "maximize": True}, {"eps": 1e-6}),
    ("Adadelta", {}, {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1}, {"maximize": True}),
]


def _cid(c):
    return c[0] + "-" + "-".join(f"{k}={v}" for k, v in {**c[1], **c[2]}.items())


@pytest.mark.parametrize("config", CONFIGS, ids=_cid)
def test_matches_torch_over_20_steps(config, dtype, backend):
    torch = pytest.importorskip("torch")
    name, group0, defaults = config
    fr.set_backend(backend)
    ours = _params(dtype)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    # Two groups: the first overrides some hyper-parameters, the second uses the defaults.
    opt = getattr(fr.optim, name)([{"params": ours[:2], **group0}, {"params": ours[2:]}],
                                  **defaults)
    topt = getattr(torch.optim, name)([{"params": theirs[:2], **group0},
                                       {"params": theirs[2:]}], **defaults)
    rtol, atol = _tol(dtype)
    for t, grads in enumerate(_grads(dtype)):
        if t == 10:              # what an LR scheduler does between steps
            for g in (*opt.param_groups, *topt.param_groups):
                g["lr"] = g["lr"] * 0.5
        opt.zero_grad()
        _feed(ours, grads)
        for tp, g in zip(theirs, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=atol)
    # State too, under torch's names.
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sd["state"].keys() == tsd["state"].keys()
    for i, tst in tsd["state"].items():
        assert sd["state"][i].keys() == tst.keys()
        for k, v in tst.items():
            np.testing.assert_allclose(np.asarray(sd["state"][i][k]), v.numpy(), rtol=rtol,
                                       atol=atol, err_msg=k)


def test_torch_defaults_and_group_keys():
    torch = pytest.importorskip("torch")
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"):
        ours = getattr(fr.optim, name)([Parameter(np.zeros(3))])
        theirs = getattr(torch.optim, name)([torch.zeros(3, requires_grad=True)])
        for k, v in ours.defaults.items():
            if k in ("l1", "l2"):
                assert v == 0.0
                continue
            assert theirs.defaults[k] == v, (name, k)
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- flat layout
def test_params_and_grads_are_views_of_one_flat_buffer():
    ps = _params(np.float32)
    values = [p.data.copy() for p in ps]
    opt = fr.optim.SGD(ps, lr=0.1)
    flat = opt._flat[0]
    assert flat.data.size == sum(int(np.prod(s)) for s in SHAPES)
    for p, v in zip(ps, values):
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad)
        np.testing.assert_array_equal(p.data, v)
        assert p.grad.shape == p.data.shape and not p.grad.any()


def test_zero_grad_zeroes_in_place_and_keeps_the_buffer():
    ps = _params(np.float64)
    opt = fr.optim.Adam(ps)
    grads = [p.grad for p in ps]
    _feed(ps, _grads(np.float64, steps=1)[0])
    opt.zero_grad(set_to_none=True)
    for p, g in zip(ps, grads):
        assert p.grad is g and not p.grad.any()


def test_rebound_arrays_are_taken_back():
    ps = _params(np.float64)
    opt = fr.optim.SGD(ps, lr=1.0)
    ps[0].grad = None                              # as a set_to_none zero_grad would
    ps[1].grad = np.full(ps[1].shape, 2.0)         # a fresh array instead of in-place writes
    ps[2].data = np.zeros(ps[2].shape)             # a rebound parameter
    before = [p.data.copy() for p in ps]
    opt.step()
    np.testing.assert_array_equal(ps[0].data, before[0])
    np.testing.assert_array_equal(ps[1].data, before[1] - 2.0)
    np.testing.assert_array_equal(ps[2].data, 0.0)
    assert all(np.shares_memory(p.data, opt._flat[0].data) for p in ps)


def test_frozen_parameters_are_not_updated():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2), requires_grad=False)
    opt = fr.optim.SGD([a, b], lr=0.1, weight_decay=1.0)
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_array_equal(b.data, 1.0)


# ----------------------------------------------------------------------------- regularizers
def test_param_groups_split_weights_from_biases():
    ps = _params(np.float32)
    reg, other = fr.optim.param_groups(ps, weight_decay=0.1, l1=0.2, l2=0.3)
    assert reg["params"] == [ps[0], ps[2]] and other["params"] == [ps[1], ps[3]]
    assert (reg["weight_decay"], reg["l1"], reg["l2"]) == (0.1, 0.2, 0.3)
    assert (other["weight_decay"], other["l1"], other["l2"]) == (0.0, 0.0, 0.0)

    class Model:
        def parameters(self):
            return iter(ps)

    assert fr.optim.param_groups(Model(), l2=1.0)[0]["params"] == [ps[0], ps[2]]
    with pytest.raises(ValueError, match="l1 must be"):
        fr.optim.param_groups(ps, l1=-1)


def test_sgd_weight_decay_equals_half_l2_penalty():
    """SGD weight_decay=λ and an L2 penalty (λ/2)·Σw² give the same trajectory."""
    lam = 0.2
    a, b = _params(np.float64), _params(np.float64)
    opt_a = fr.optim.SGD(a, lr=0.05, momentum=0.9, weight_decay=lam)
    opt_b = fr.optim.SGD(b, lr=0.05, momentum=0.9, l2=lam / 2)
    for grads in _grads(np.float64):
        for ps, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _feed(ps, grads)
            opt.step()
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[0].data, _params(np.float64)[0].data)


def test_l2_penalty_matches_its_gradient_by_finite_differences():
    w = Parameter(np.array([0.3, -1.2, 2.0]))
    opt = fr.optim.SGD([w], lr=1.0, l1=0.1, l2=0.25)
    w0 = w.data.copy()
    h = 1e-6
    fd = []
    for i in range(3):
        w.data[...] = w0
        w.data[i] += h
        up = opt.penalty()
        w.data[i] -= 2 * h
        fd.append((up - opt.penalty()) / (2 * h))
    w.data[...] = w0
    opt.step()                                     # zero loss gradient: the step is -lr·∇penalty
    np.testing.assert_allclose(w0 - w.data, fd, rtol=1e-6)


def test_l1_drives_small_weights_to_oscillate_around_zero():
    lr, l1 = 0.01, 0.5
    w = Parameter(np.array([0.3, -0.2, 0.001, -0.0004]))
    opt = fr.optim.SGD([w], lr=lr, l1=l1)
    signs = []
    for _ in range(200):
        signs.append(np.sign(w.data.copy()))
        opt.step()                                  # loss gradient 0: only the L1 pull
    # Every weight ends within one step (lr·l1) of zero, flipping sign each step.
    assert np.all(np.abs(w.data) <= lr * l1 + 1e-15)
    last = np.array(signs[-6:])
    assert np.all(last[1:] * last[:-1] <= 0)
    assert opt.penalty() == pytest.approx(l1 * np.abs(w.data).sum())


def test_penalty_sums_groups():
    ps = _params(np.float64)
    opt = fr.optim.Adam(fr.optim.param_groups(ps, l1=0.1, l2=0.2))
    want = sum(0.1 * np.abs(p.data).sum() + 0.2 * (p.data ** 2).sum() for p in (ps[0], ps[2]))
    assert opt.penalty() == pytest.approx(want, rel=1e-12)
    assert fr.optim.SGD(ps, lr=0.1).penalty() == 0.0


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("name,kw", [("SGD", {"lr": 0.1, "momentum": 0.9}),
                                     ("Adam", {"amsgrad": True}), ("Adagrad", {}),
                                     ("RMSprop", {"centered": True, "momentum": 0.5}),
                                     ("Adadelta", {})])
def test_state_dict_round_trip(name, kw):
    grads = _grads(np.float64)
    a = _params(np.float64)
    opt_a = getattr(fr.optim, name)(a, **kw)
    for g in grads[:5]:
        _feed(a, g)
        opt_a.step()
    sd = copy.deepcopy(opt_a.state_dict())
    b = [Parameter(p.data.copy()) for p in a]
    opt_b = getattr(fr.optim, name)(b, lr=123.0)   # hyper-parameters come from the state
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    for g in grads[5:]:
        for ps, opt in ((a, opt_a), (b, opt_b)):
            _feed(ps, g)
            opt.step()
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)


@pytest.mark.parametrize("name,kw", [("SGD", {"lr": 0.1, "momentum": 0.9}),
                                     ("Adam", {"amsgrad": True, "lr": 0.01}),
                                     ("RMSprop", {"centered": True, "momentum": 0.5}),
                                     ("Adagrad", {"lr_decay": 0.1}), ("Adadelta", {})])
def test_loads_a_torch_state_dict(name, kw):
    torch = pytest.importorskip("torch")
    grads = _grads(np.float64)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in _params(np.float64)]
    topt = getattr(torch.optim, name)([{"params": theirs[:1]}, {"params": theirs[1:]}], **kw)
    for g in grads[:5]:
        for tp, gi in zip(theirs, g):
            tp.grad = torch.tensor(gi)
        topt.step()
    tsd = topt.state_dict()
    sd = {"state": {i: {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in s.items()}
                    for i, s in tsd["state"].items()},
          "param_groups": tsd["param_groups"]}
    ours = [Parameter(tp.detach().numpy().copy()) for tp in theirs]
    opt = getattr(fr.optim, name)([{"params": ours[:1]}, {"params": ours[1:]}])
    opt.load_state_dict(sd)
    for g in grads[5:]:
        _feed(ours, g)
        for tp, gi in zip(theirs, g):
            tp.grad = torch.tensor(gi)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-9)


def test_load_state_dict_rejects_mismatches():
    a = _params(np.float64)
    opt = fr.optim.Adam(a)
    _feed(a, _grads(np.float64, steps=1)[0])
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        fr.optim.Adam([{"params": a[:1]}, {"params": a[1:]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size"):
        fr.optim.Adam(_params(np.float64)[:3]).load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["state"][1]["step"] = 7.5
    with pytest.raises(ValueError, match="non-negative integer"):
        fr.optim.Adam(_params(np.float64)).load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = np.zeros(4)
    with pytest.raises(ValueError, match="exp_avg"):
        fr.optim.Adam(_params(np.float64)).load_state_dict(bad)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,kw,match", [
    ("SGD", {"lr": -1}, "Invalid learning rate: -1"),
    ("SGD", {"momentum": -0.5}, "Invalid momentum value: -0.5"),
    ("SGD", {"nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
    ("Adam", {"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0: 1.0"),
    ("Adam", {"eps": -1.0}, "Invalid epsilon value: -1.0"),
    ("AdamW", {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    ("RMSprop", {"alpha": -0.1}, "Invalid alpha value: -0.1"),
    ("Adagrad", {"lr_decay": -1}, "Invalid lr_decay value: -1"),
    ("Adagrad", {"initial_accumulator_value": -1}, "Invalid initial_accumulator_value"),
    ("Adadelta", {"rho": 1.5}, "Invalid rho value: 1.5"),
    ("Adam", {"l1": -1.0}, "Invalid l1 value: -1.0"),
])
def test_bad_hyper_parameters_raise_like_torch(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(fr.optim, name)([Parameter(np.zeros(2))], **kw)


def test_bad_params():
    p, q = Parameter(np.zeros(2)), Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        fr.optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="ndarray"):
        fr.optim.SGD([p, np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="iterable"):
        fr.optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="ordered"):
        fr.optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(TypeError, match="one dtype"):
        fr.optim.SGD([p, q], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        fr.optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        assert fr.optim.SGD([p, p], lr=0.1).param_groups[0]["params"] == [p]
    fr.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1)   # one dtype per group is fine


def test_lr_scheduler_is_exposed_lazily():
    import importlib.util
    if importlib.util.find_spec("fastreg.optim.lr_scheduler") is None:
        with pytest.raises(ModuleNotFoundError):
            fr.optim.lr_scheduler  # noqa: B018
    else:
        assert fr.optim.lr_scheduler.__name__ == "fastreg.optim.lr_scheduler"


def test_importing_and_constructing_does_not_import_numba():
    import subprocess
    import sys
    code = ("import sys, numpy as np, fastreg as fr\n"
            "from fastreg.nn.parameter import Parameter\n"
            "fr.optim.Adam([Parameter(np.zeros(3))])\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
