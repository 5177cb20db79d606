"""Optimizers and requires_grad / duplicate parameters, against torch.optim on the same weights.

torch steps a parameter when its ``grad`` is not None; in the usual loop (``zero_grad()`` with
set_to_none, then ``backward()``) that is exactly the parameters with ``requires_grad`` True at
that step, which is what fastreg's flat buffers step. These tests drive both libraries with that
loop through freezing and unfreezing, and compare weights after every step and the state_dicts.
"""
import warnings

import numpy as np
import pytest

import fastreg as fr
from fastreg.nn.parameter import Parameter

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (3,), (7,), (2, 5)]
CONFIGS = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.2}),
    ("Adadelta", {"lr": 0.5, "weight_decay": 0.1}),
]
# requires_grad of the four parameters during each phase of 4 steps: parameters 1 and 3 frozen
# when the optimizer is built; 1 unfrozen, then 2 frozen, then 2 unfrozen again (kept state).
PHASES = [(True, False, True, False), (True, True, True, False), (True, True, False, False),
          (True, True, True, False)]


def _pair(name, kw, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s) for s in SHAPES]
    ours = [Parameter(v.copy(), requires_grad=rg) for v, rg in zip(values, PHASES[0])]
    theirs = [torch.tensor(v.copy(), requires_grad=rg) for v, rg in zip(values, PHASES[0])]
    return (ours, getattr(fr.optim, name)(ours, **kw),
            theirs, getattr(torch.optim, name)(theirs, foreach=False, **kw))


def _step_both(ours, opt, theirs, topt, grads):
    opt.zero_grad()
    topt.zero_grad()                          # set_to_none: frozen parameters get no grad
    for p, t, g in zip(ours, theirs, grads):
        if p.requires_grad:                   # what a module's backward writes
            p.grad[...] += g
            t.grad = torch.tensor(g)
    opt.step()
    topt.step()


@pytest.mark.parametrize("name, kw", CONFIGS, ids=[c[0] + str(i) for i, c in enumerate(CONFIGS)])
def test_freezing_and_unfreezing_steps_like_torch(name, kw):
    ours, opt, theirs, topt = _pair(name, kw)
    rng = np.random.default_rng(1)
    start = [p.data.copy() for p in ours]
    for phase in PHASES:
        for p, t, rg in zip(ours, theirs, phase):
            p.requires_grad = rg
            t.requires_grad_(rg)
        for _ in range(4):
            _step_both(ours, opt, theirs, topt, [rng.standard_normal(s) for s in SHAPES])
            for p, t in zip(ours, theirs):
                np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert not np.array_equal(ours[1].data, start[1])     # stepped once unfrozen
    np.testing.assert_array_equal(ours[3].data, start[3])  # never unfrozen: never stepped
    # the state: torch's entries (none for the never-stepped parameter), steps per parameter
    mine, theirs_sd = opt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(mine) == sorted(theirs_sd)
    for i, st in theirs_sd.items():
        assert sorted(mine[i]) == sorted(st)
        for key, value in st.items():
            np.testing.assert_allclose(np.asarray(mine[i][key]), value.numpy(), rtol=1e-12,
                                       atol=1e-14, err_msg=f"state[{i}][{key!r}]")


def test_unfrozen_linear_weight_trains_like_torch():
    """The issue's case: a layer frozen before the optimizer is built, unfrozen later."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((33, 7)), rng.standard_normal((33, 2))
    ours = fr.nn.Linear(7, 2, dtype=np.float64)
    theirs = torch.nn.Linear(7, 2, dtype=torch.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.weight.requires_grad = False
    theirs.weight.requires_grad_(False)
    opt = fr.optim.Adam(ours.parameters(), lr=0.05)
    topt = torch.optim.Adam(theirs.parameters(), lr=0.05)
    loss_fn, tloss_fn = fr.nn.MSELoss(), torch.nn.MSELoss()
    w0 = ours.weight.data.copy()
    for step in range(6):
        if step == 3:
            ours.weight.requires_grad = True
            theirs.weight.requires_grad_(True)
        opt.zero_grad()
        topt.zero_grad()
        loss_fn(ours(x), y)
        ours.backward(loss_fn.backward())
        tloss_fn(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        opt.step()
        topt.step()
        np.testing.assert_allclose(ours.weight.data, theirs.weight.detach().numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.bias.data, theirs.bias.detach().numpy(), rtol=1e-10)
    assert not np.array_equal(ours.weight.data, w0)


def test_one_kernel_call_per_group_until_something_is_frozen():
    ps = [Parameter(np.ones(s)) for s in SHAPES]
    opt = fr.optim.Adam(ps)
    flat = opt._flat[0]
    assert flat.runs() == [(0, 4)]
    ps[1].requires_grad = False
    assert flat.runs() == [(0, 1), (2, 4)]
    opt.step()
    ps[1].requires_grad = True
    assert flat.runs() == [(0, 1), (1, 2), (2, 4)]   # step counts 1, 0, 1: three calls
    opt.step()
    assert flat.steps == [2, 1, 2, 2]


def test_penalty_counts_only_parameters_that_are_stepped():
    a, b = Parameter(np.full(3, 2.0)), Parameter(np.full(2, 5.0), requires_grad=False)
    opt = fr.optim.SGD([a, b], lr=0.1, l1=0.5, l2=0.25)
    assert opt.penalty() == pytest.approx(0.5 * 6 + 0.25 * 12, rel=1e-15)
    b.requires_grad = True
    assert opt.penalty() == pytest.approx(0.5 * 16 + 0.25 * 62, rel=1e-15)


def test_duplicate_parameters_in_a_group_warn_as_torch_and_step_once():
    p = Parameter(np.ones(3))
    tp = torch.ones(3, requires_grad=True)
    with pytest.warns(UserWarning) as ours:
        opt = fr.optim.SGD([p, p, p], lr=0.1)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        torch.optim.SGD([tp, tp], lr=0.1)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert opt.param_groups[0]["params"] == [p] and opt._flat[0].n == 3
    p.grad[...] = 1.0
    opt.step()
    # once per step (torch 2.13 applies the update once per occurrence: 0.7 here)
    np.testing.assert_allclose(p.data, 0.9)


def test_a_parameter_in_two_groups_raises_as_torch():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    msg = "some parameters appear in more than one parameter group"
    with pytest.raises(ValueError, match=msg):
        fr.optim.Adam([{"params": [p, q]}, {"params": [q]}])
    t = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=msg):
        torch.optim.Adam([{"params": [t]}, {"params": [t]}])
    opt = fr.optim.Adam([p])
    with pytest.raises(ValueError, match=msg):
        opt.add_param_group({"params": [q, p]})
    assert len(opt.param_groups) == 1 and len(opt._flat) == 1      # nothing half-added


def test_state_dict_round_trip_after_unfreezing_mid_run():
    """Per-parameter step counts (a parameter unfrozen later has fewer) survive
    state_dict/load_state_dict: the loaded optimizer continues bit for bit."""
    import fastreg as fr
    from fastreg import nn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    runs = []
    for reload in (False, True):
        fr.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(),
                          nn.Linear(4, 2, dtype=np.float64))
        m[2].weight.requires_grad = False
        opt = fr.optim.Adam(m.parameters(), lr=0.01)
        for step in range(6):
            if step == 3:
                m[2].weight.requires_grad = True
            if step == 4 and reload:
                sd = opt.state_dict()
                assert len({int(np.asarray(v["step"])) for v in sd["state"].values()}) == 2
                opt = fr.optim.Adam(m.parameters(), lr=0.01)
                opt.load_state_dict(sd)
            opt.zero_grad()
            y = m(x)
            m.backward(y, input_grad=False)
            opt.step()
        runs.append([p.data.copy() for p in m.parameters()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
