"""MultiplicativeLR, PolynomialLR, CyclicLR, SequentialLR, ChainedScheduler and the step-order
warning: lr (and momentum / beta1) sequences against torch 2.13 on real optimizers, state_dict
round trips mid-run, known values, bad input."""
import copy
import warnings

import numpy as np
import pytest

import fastreg as fr
from fastreg.io.container import encode_tree
from fastreg.nn.parameter import Parameter
from fastreg.optim import lr_scheduler as S

SHAPES = [(3, 2), (4,)]


def _fr_opt(kind, lrs=(0.1, 0.03)):
    groups = [{"params": [Parameter(np.linspace(-1, 1, int(np.prod(s))).reshape(s))], "lr": lr}
              for s, lr in zip(SHAPES, lrs)]
    if kind == "sgd":
        return fr.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    return fr.optim.Adam(groups, lr=lrs[0])


def _torch_opt(torch, kind, lrs=(0.1, 0.03)):
    groups = [{"params": [torch.linspace(-1, 1, int(np.prod(s)), dtype=torch.float64)
                          .reshape(s).requires_grad_()], "lr": lr}
              for s, lr in zip(SHAPES, lrs)]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9, foreach=False)
    return torch.optim.Adam(groups, lr=lrs[0], foreach=False)


def _momentum(opt, kind):
    return [g["momentum"] if kind == "sgd" else g["betas"][0] for g in opt.param_groups]


# builders take the scheduler module (torch's or fastreg's) and the optimizer
BUILDERS = {
    "multiplicative": lambda M, o: M.MultiplicativeLR(o, lambda e: 0.9 if e % 4 else 1.2),
    "polynomial": lambda M, o: M.PolynomialLR(o, total_iters=23, power=0.7),
    "cyclic-triangular": lambda M, o: M.CyclicLR(o, base_lr=[0.01, 0.002], max_lr=0.1,
                                                 step_size_up=5, step_size_down=8),
    "cyclic-triangular2": lambda M, o: M.CyclicLR(o, base_lr=0.01, max_lr=[0.1, 0.05],
                                                  step_size_up=7, mode="triangular2",
                                                  base_momentum=0.7, max_momentum=0.95),
    "cyclic-exp_range": lambda M, o: M.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4,
                                                step_size_down=3, mode="exp_range",
                                                gamma=0.98),
    "cyclic-scale_fn": lambda M, o: M.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=6,
                                               scale_fn=lambda x: 1 / (1 + 0.1 * x),
                                               scale_mode="iterations"),
    "sequential": lambda M, o: M.SequentialLR(
        o, [M.LinearLR(o, start_factor=0.1, total_iters=6), M.ExponentialLR(o, gamma=0.9),
            M.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2)], milestones=[6, 15]),
    "sequential-nested": lambda M, o: M.SequentialLR(
        o, [M.ChainedScheduler([M.PolynomialLR(o, total_iters=30, power=2.0),
                                M.StepLR(o, step_size=5, gamma=0.7)]),
            M.ExponentialLR(o, gamma=0.9)], milestones=[9]),
    "chained": lambda M, o: M.ChainedScheduler(
        [M.ConstantLR(o, factor=0.2, total_iters=7), M.ExponentialLR(o, gamma=0.95),
         M.MultiplicativeLR(o, lambda e: 1.01)], optimizer=o),
}
STEPS = 60


def _run(M, opt, build, steps, kind, grads=None, params=None):
    sched = build(M, opt)
    lrs, moms = [], []
    for t in range(steps):
        lrs.append(list(sched.get_last_lr()))
        moms.append(_momentum(opt, kind))
        if grads is not None:
            for p, g in zip(params, grads[t]):
                p.grad = g(p) if callable(g) else g
        opt.step()
        sched.step()
    return sched, np.array(lrs, dtype=np.float64), np.array(moms, dtype=np.float64)


# (a ChainedScheduler first in a SequentialLR warns at construction, in torch too)
@pytest.mark.filterwarnings("ignore:Detected call")
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_sequence_matches_torch(name, kind):
    torch = pytest.importorskip("torch")
    build = BUILDERS[name]
    _, t_lr, t_m = _run(torch.optim.lr_scheduler, _torch_opt(torch, kind), build, STEPS, kind)
    _, f_lr, f_m = _run(S, _fr_opt(kind), build, STEPS, kind)
    np.testing.assert_allclose(f_lr, t_lr, rtol=1e-12, atol=0)
    np.testing.assert_allclose(f_m, t_m, rtol=1e-12, atol=0)   # CyclicLR cycles these
    assert np.ptp(t_lr[:, 0]) > 0


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cyclic_momentum_reaches_the_update_like_torch(kind):
    """Same weights, same gradients: the cycled momentum / beta1 is what the step uses."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(25)]
    build = BUILDERS["cyclic-triangular2"]
    topt, fopt = _torch_opt(torch, kind), _fr_opt(kind)
    tparams = [g["params"][0] for g in topt.param_groups]
    fparams = [g["params"][0] for g in fopt.param_groups]
    _run(torch.optim.lr_scheduler, topt, build, 25, kind,
         [[torch.tensor(g) for g in gs] for gs in grads], tparams)
    _run(S, fopt, build, 25, kind, [[(lambda p, g=g: g) for g in gs] for gs in grads], fparams)
    for p, t in zip(fparams, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.filterwarnings("ignore:Detected call")
@pytest.mark.parametrize("name", ["polynomial", "cyclic-triangular2", "cyclic-exp_range",
                                  "sequential", "sequential-nested", "chained"])
def test_state_dict_round_trip_mid_run(name):
    """Stop after k steps, rebuild optimizer and scheduler, load both states, continue: the
    same sequence as without stopping (and the state fits a checkpoint file)."""
    kind, k = "sgd", 17
    build = BUILDERS[name]
    _, ref_lr, ref_m = _run(S, _fr_opt(kind), build, STEPS, kind)
    opt = _fr_opt(kind)
    sched, lr_a, m_a = _run(S, opt, build, k, kind)
    sd, osd = copy.deepcopy(sched.state_dict()), copy.deepcopy(opt.state_dict())
    encode_tree(sd, {})                                 # no functions or bound methods in it
    opt2 = _fr_opt(kind, lrs=(5.0, 5.0))
    sched2 = build(S, opt2)
    opt2.load_state_dict(osd)
    sched2.load_state_dict(sd)
    lr_b, m_b = [], []
    for _ in range(STEPS - k):
        lr_b.append(list(sched2.get_last_lr()))
        m_b.append(_momentum(opt2, kind))
        opt2.step()
        sched2.step()
    np.testing.assert_allclose(np.vstack([lr_a, lr_b]), ref_lr, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.vstack([m_a, m_b]), ref_m, rtol=1e-12, atol=0)


def test_cyclic_state_dict_keeps_a_callable_objects_state_like_torch():
    class Scale:
        def __init__(self):
            self.k = 0.5

        def __call__(self, x):
            return self.k ** x

    opt = _fr_opt("sgd")
    fn = Scale()
    sched = S.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=fn)
    sd = sched.state_dict()
    assert sd["_scale_fn_custom"] == {"k": 0.5} and "_scale_fn_ref" not in sd
    fn2 = Scale()
    fn2.k = 0.9
    other = S.CyclicLR(_fr_opt("sgd"), base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=fn2)
    other.load_state_dict(sd)
    assert fn2.k == 0.5
    plain = S.CyclicLR(_fr_opt("sgd"), base_lr=0.01, max_lr=0.1, mode="exp_range", gamma=0.9)
    sd = plain.state_dict()
    assert sd["_scale_fn_custom"] is None
    plain.load_state_dict(sd)
    assert plain.scale_fn(2) == pytest.approx(0.81, rel=1e-15)


# ---------------------------------------------------------------------------------------------
# known values without torch

def test_cyclic_triangle_known_values():
    opt = _fr_opt("adam", lrs=(0.0,))
    sched = S.CyclicLR(opt, base_lr=1.0, max_lr=3.0, step_size_up=2, step_size_down=4,
                       mode="triangular2", cycle_momentum=False)
    got = [sched.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(12):
            sched.step()
            got.append(sched.get_last_lr()[0])
    # cycle 1 (amplitude 2): up in 2 steps, down in 4; cycle 2 at half the amplitude
    np.testing.assert_allclose(got, [1, 2, 3, 2.5, 2, 1.5, 1, 1.5, 2, 1.75, 1.5, 1.25, 1],
                               rtol=1e-15)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)        # cycle_momentum=False


def test_polynomial_reaches_zero_and_stays():
    opt = _fr_opt("sgd", lrs=(2.0, 1.0))
    sched = S.PolynomialLR(opt, total_iters=4, power=2.0)
    got = [sched.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            sched.step()
            got.append(sched.get_last_lr()[0])
    np.testing.assert_allclose(got, [2.0, 2 * 0.75 ** 2, 2 * 0.25, 2 * 0.0625, 0, 0, 0],
                               rtol=1e-15, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# the step-order warning

def _messages(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_step_before_optimizer_step_warns_with_torchs_text():
    torch = pytest.importorskip("torch")
    tsched = torch.optim.lr_scheduler.StepLR(_torch_opt(torch, "sgd"), step_size=2)
    theirs = _messages(tsched.step)
    assert len(theirs) == 1 and "before `optimizer.step()`" in theirs[0]
    for build in (lambda o: S.StepLR(o, step_size=2), BUILDERS["sequential"],
                  BUILDERS["chained"], BUILDERS["cyclic-triangular"]):
        sched = build(S, _fr_opt("sgd")) if build in BUILDERS.values() else build(_fr_opt("sgd"))
        assert _messages(sched.step)[:1] == theirs
        assert _messages(sched.step) == []                 # only the first step is checked


def test_no_warning_in_the_right_order_or_without_a_step_method():
    opt = _fr_opt("adam")
    sched = S.ExponentialLR(opt, gamma=0.9)
    opt.step()
    assert _messages(sched.step) == []
    opt = _fr_opt("adam")
    opt.step()                                  # stepped before the scheduler existed: fine
    assert _messages(S.ExponentialLR(opt, gamma=0.9).step) == []

    class OnlyGroups:
        def __init__(self):
            self.param_groups = [{"lr": 0.1}]

    assert _messages(S.ExponentialLR(OnlyGroups(), gamma=0.9).step) == []


def test_other_optimizer_objects_are_tracked_as_torch_tracks_them():
    class Custom:
        def __init__(self):
            self.param_groups = [{"lr": 0.1}]
            self.calls = 0

        def step(self):
            self.calls += 1

    opt = Custom()
    sched = S.StepLR(opt, step_size=2)
    opt.step()
    assert opt.calls == 1 and _messages(sched.step) == []
    opt = Custom()
    sched = S.StepLR(opt, step_size=2)
    assert "before `optimizer.step()`" in _messages(sched.step)[0]
    opt = Custom()
    sched = S.StepLR(opt, step_size=2)
    opt.step = lambda: None                     # replaced after the scheduler was built
    assert "has been overridden" in _messages(sched.step)[0]


# ---------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("make, exc, match", [
    (lambda o: S.PolynomialLR(o, total_iters=0), ValueError, "total_iters"),
    (lambda o: S.PolynomialLR(o, power="2"), TypeError, "power"),
    (lambda o: S.MultiplicativeLR(o, lr_lambda=[lambda e: 1.0]), ValueError, "lr_lambda"),
    (lambda o: S.MultiplicativeLR(o, lr_lambda=0.9), TypeError, "callable"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=0), ValueError, "step_size_up"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_down=-2), ValueError, "step_size_down"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, mode="triangle"), ValueError, "mode"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, scale_mode="cycles", scale_fn=abs), ValueError,
     "scale_mode"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, scale_fn=3), TypeError, "scale_fn"),
    (lambda o: S.CyclicLR(o, -0.01, 0.1), ValueError, "base_lr"),
    (lambda o: S.CyclicLR(o, 0.01, [0.1, 0.2, 0.3]), ValueError, "max_lr"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, max_momentum=1.5), ValueError, "max_momentum"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], milestones=[]), ValueError,
     "number of milestones"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)] * 3, milestones=[5, 3]), ValueError,
     "increasing"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(_fr_opt("sgd"), 2)], milestones=[3]),
     ValueError, "same optimizer"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.ReduceLROnPlateau(o)], milestones=[3]),
     ValueError, "ReduceLROnPlateau"),
    (lambda o: S.SequentialLR(o, [], milestones=[]), ValueError, "at least one"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.ChainedScheduler([S.StepLR(o, 3)])],
                              milestones=[3]), TypeError, "milestone"),
    (lambda o: S.ChainedScheduler([]), ValueError, "at least one"),
    (lambda o: S.ChainedScheduler(S.StepLR(o, 2)), TypeError, "sequence of schedulers"),
    (lambda o: S.ChainedScheduler([S.StepLR(o, 2), object()]), TypeError, "index 1"),
])
def test_bad_arguments_name_themselves(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_fr_opt("sgd"))


def test_cycle_momentum_needs_momentum_or_betas():
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="Adagrad has no momentum or beta1.*cycle_momentum=False"):
        S.CyclicLR(fr.optim.Adagrad([p]), base_lr=0.01, max_lr=0.1)
    S.CyclicLR(fr.optim.Adagrad([p]), base_lr=0.01, max_lr=0.1, cycle_momentum=False)
    sgd = fr.optim.SGD([Parameter(np.zeros(3))], lr=0.1)          # momentum=0: cycled anyway,
    S.CyclicLR(sgd, base_lr=0.01, max_lr=0.1)                      # as torch does
    assert sgd.param_groups[0]["momentum"] == 0.9
