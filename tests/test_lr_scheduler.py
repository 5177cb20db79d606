"""LR schedulers: sequences against torch.optim.lr_scheduler, known values, state, bad input."""
import math
import warnings

import numpy as np
import pytest

from fastreg.optim import lr_scheduler as S


class StandIn:
    """The smallest optimizer a scheduler can drive: just ``param_groups``."""

    def __init__(self, lrs=(0.1,), **extra):
        self.param_groups = [dict(lr=lr, **extra) for lr in lrs]


def lr_of(opt, i=0):
    return opt.param_groups[i]["lr"]


# ---------------------------------------------------------------------------------------------
# torch-free known values

def test_steplr_halves_every_50_epochs():
    opt = StandIn([0.1])
    sched = S.StepLR(opt, step_size=50, gamma=0.5)
    seq = []
    for _ in range(151):
        seq.append(lr_of(opt))
        sched.step()
    assert seq[:50] == [0.1] * 50
    assert seq[50:100] == [0.05] * 50
    assert seq[100:150] == [0.025] * 50
    assert seq[150] == 0.0125
    assert sched.get_last_lr() == [lr_of(opt)]


def test_construction_takes_the_epoch0_step_and_records_initial_lr():
    opt = StandIn([0.2, 0.4])
    sched = S.LinearLR(opt, start_factor=0.5, total_iters=4)
    assert sched.last_epoch == 0
    assert [g["initial_lr"] for g in opt.param_groups] == [0.2, 0.4]
    assert sched.base_lrs == [0.2, 0.4]
    assert sched.get_last_lr() == [0.1, 0.2]
    lrs = []
    for _ in range(6):
        sched.step()
        lrs.append(lr_of(opt))
    np.testing.assert_allclose(lrs, [0.125, 0.15, 0.175, 0.2, 0.2, 0.2], rtol=1e-12)


def test_exponential_and_multistep_closed_forms():
    opt = StandIn([1.0])
    sched = S.ExponentialLR(opt, gamma=0.9)
    for t in range(1, 40):
        sched.step()
        assert lr_of(opt) == pytest.approx(0.9 ** t, rel=1e-12)
    opt = StandIn([1.0])
    sched = S.MultiStepLR(opt, milestones=[3, 7, 7], gamma=0.5)
    got = [lr_of(opt)]
    for _ in range(9):
        sched.step()
        got.append(lr_of(opt))
    assert got == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.125, 0.125, 0.125]


def test_constant_lambda_and_cosine_known_values():
    opt = StandIn([0.3])
    sched = S.ConstantLR(opt, factor=0.5, total_iters=3)
    got = [lr_of(opt)]
    for _ in range(4):
        sched.step()
        got.append(lr_of(opt))
    np.testing.assert_allclose(got, [0.15, 0.15, 0.15, 0.3, 0.3], rtol=1e-12)

    opt = StandIn([2.0])
    sched = S.LambdaLR(opt, lambda e: 1.0 / (e + 1))
    for e in range(1, 10):
        sched.step()
        assert lr_of(opt) == pytest.approx(2.0 / (e + 1), rel=1e-12)

    opt = StandIn([1.0])
    sched = S.CosineAnnealingLR(opt, T_max=10, eta_min=0.1)
    got = [lr_of(opt)]
    for _ in range(10):
        sched.step()
        got.append(lr_of(opt))
    ref = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[5] == pytest.approx(0.55) and got[10] == pytest.approx(0.1)


def test_warm_restarts_period_doubles():
    opt = StandIn([1.0])
    sched = S.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)
    got = [lr_of(opt)]
    for _ in range(10):
        sched.step()
        got.append(lr_of(opt))
    # restarts (lr back to 1) at epochs 0, 3 and 3 + 6 = 9
    assert [i for i, v in enumerate(got) if v == 1.0] == [0, 3, 9]


def test_onecycle_shape_and_momentum():
    opt = StandIn([0.0], momentum=0.0)
    T = 100
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=T, pct_start=0.3, anneal_strategy="linear")
    lrs, moms = [], []
    for t in range(T):
        if t:
            sched.step()
        lrs.append(lr_of(opt))
        moms.append(opt.param_groups[0]["momentum"])
    assert lrs[0] == pytest.approx(1.0 / 25)
    assert int(np.argmax(lrs)) == 29 and lrs[29] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4)
    assert moms[0] == pytest.approx(0.95) and moms[29] == pytest.approx(0.85)
    assert moms[-1] == pytest.approx(0.95)
    sched.step()  # step T is still allowed, as in torch
    with pytest.raises(ValueError, match="Tried to step"):
        sched.step()


def test_onecycle_cycles_beta1_for_adam_like_groups():
    opt = StandIn([0.0], betas=(0.9, 0.999))
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert opt.param_groups[0]["betas"] == (0.95, 0.999)
    for _ in range(3):
        sched.step()
    b1, b2 = opt.param_groups[0]["betas"]
    assert 0.85 <= b1 < 0.95 and b2 == 0.999


def test_reduce_on_plateau_patience_cooldown_min_lr():
    opt = StandIn([1.0])
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.2)
    assert sched.last_epoch == 0 and lr_of(opt) == 1.0  # no step at construction
    metrics = [5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    got = []
    for m in metrics:
        sched.step(m)
        got.append(lr_of(opt))
    # 3 bad epochs (> patience) -> halve; 1 cooldown epoch; then 3 more bad -> halve; min_lr 0.2
    assert got == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    for _ in range(4):
        sched.step(4)
    assert lr_of(opt) == 0.2 and sched.get_last_lr() == [0.2]


def test_reduce_on_plateau_max_mode_abs_threshold():
    opt = StandIn([1.0])
    sched = S.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0, threshold=0.5,
                                threshold_mode="abs")
    sched.step(1.0)   # improvement over -inf
    sched.step(1.4)   # not > 1.0 + 0.5 -> bad epoch, > patience 0 -> reduce
    assert lr_of(opt) == pytest.approx(0.1)
    sched.step(2.0)   # improvement
    assert lr_of(opt) == pytest.approx(0.1) and sched.best == 2.0


# ---------------------------------------------------------------------------------------------
# state

def test_state_dict_round_trip_resumes_identically():
    def run(split):
        opt = StandIn([0.1], momentum=0.9)
        sched = S.OneCycleLR(opt, max_lr=0.5, total_steps=60, three_phase=True)
        seq = []
        for _ in range(split):
            sched.step()
            seq.append(lr_of(opt))
        state = sched.state_dict()
        assert "optimizer" not in state
        opt2 = StandIn([0.1], momentum=0.9)
        opt2.param_groups = [dict(g) for g in opt.param_groups]
        sched2 = S.OneCycleLR(opt2, max_lr=0.5, total_steps=60, three_phase=True)
        sched2.load_state_dict(state)
        for _ in range(59 - split):
            sched2.step()
            seq.append(lr_of(opt2))
        return seq

    assert run(20) == run(59)


def test_resume_with_last_epoch_requires_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(StandIn([0.1]), step_size=3, last_epoch=5)


def test_lambda_state_dict_skips_plain_functions():
    class Factor:
        def __init__(self):
            self.k = 0.5

        def __call__(self, e):
            return self.k ** e

    f = Factor()
    sched = S.LambdaLR(StandIn([0.1, 0.2]), [lambda e: 1.0, f])
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None, {"k": 0.5}]
    f.k = 0.9
    sched.load_state_dict(state)
    assert f.k == 0.5


# ---------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("make, match", [
    (lambda o: S.ReduceLROnPlateau(o, mode="maximum"), "mode.*'maximum'"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="relative"), "threshold_mode"),
    (lambda o: S.ReduceLROnPlateau(o, factor=-0.5), "factor"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "factor"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), "patience"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1, 0.2]), "min_lr"),
    (lambda o: S.StepLR(o, step_size=0), "step_size"),
    (lambda o: S.StepLR(o, step_size=3, gamma=-0.1), "gamma"),
    (lambda o: S.ExponentialLR(o, gamma=-1.0), "gamma"),
    (lambda o: S.ConstantLR(o, factor=1.5), "factor"),
    (lambda o: S.LinearLR(o, start_factor=0.0), "start_factor"),
    (lambda o: S.LinearLR(o, total_iters=0), "total_iters"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), "T_max"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=0), "T_0"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=0), "T_mult"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="cosine"),
     "anneal_strategy.*'cosine'"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1), "total_steps"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), "pct_start"),
    (lambda o: S.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=10), "max_lr"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=0), "total_steps"),
    (lambda o: S.LambdaLR(o, [lambda e: 1, lambda e: 1]), "lr_lambda"),
    (lambda o: S.StepLR(o, step_size=2, last_epoch=-2), "last_epoch"),
])
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make(StandIn([0.1], momentum=0.9))


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="param_groups"):
        S.StepLR(object(), step_size=3)
    with pytest.raises(TypeError, match="step_size"):
        S.StepLR(StandIn(), step_size=2.5)
    with pytest.raises(TypeError, match="callable"):
        S.LambdaLR(StandIn(), lr_lambda=3)
    with pytest.raises(TypeError, match="gamma"):
        S.ExponentialLR(StandIn(), gamma="0.9")
    with pytest.raises(TypeError, match="metrics"):
        S.ReduceLROnPlateau(StandIn()).step("bad")


def test_onecycle_without_momentum_key_needs_cycle_momentum_off():
    with pytest.raises(ValueError, match="momentum"):
        S.OneCycleLR(StandIn([0.1]), max_lr=1.0, total_steps=10)
    S.OneCycleLR(StandIn([0.1]), max_lr=1.0, total_steps=10, cycle_momentum=False)


# ---------------------------------------------------------------------------------------------
# against torch

CASES = [
    ("ConstantLR", {"factor": 0.5, "total_iters": 7}),
    ("ConstantLR", {}),
    ("LambdaLR", {"lr_lambda": lambda e: 0.95 ** e + 0.01 * (e % 3)}),
    ("StepLR", {"step_size": 13, "gamma": 0.5}),
    ("StepLR", {"step_size": 1, "gamma": 0.97}),
    ("MultiStepLR", {"milestones": [5, 20, 20, 60], "gamma": 0.3}),
    ("ExponentialLR", {"gamma": 0.97}),
    ("LinearLR", {"start_factor": 0.2, "end_factor": 0.9, "total_iters": 40}),
    ("LinearLR", {}),
    ("CosineAnnealingLR", {"T_max": 30, "eta_min": 1e-3}),
    ("CosineAnnealingLR", {"T_max": 7}),
    ("CosineAnnealingWarmRestarts", {"T_0": 7, "T_mult": 2, "eta_min": 1e-4}),
    ("CosineAnnealingWarmRestarts", {"T_0": 9}),
    ("OneCycleLR", {"max_lr": 0.5, "total_steps": 100}),
    ("OneCycleLR", {"max_lr": 0.5, "epochs": 4, "steps_per_epoch": 25, "pct_start": 0.25,
                    "three_phase": True, "anneal_strategy": "linear", "div_factor": 10.0,
                    "final_div_factor": 100.0, "base_momentum": 0.8, "max_momentum": 0.9}),
]


def _torch_pair(torch, optim_name, lrs):
    params = [torch.zeros(1, requires_grad=True) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if optim_name == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9), StandIn(lrs, momentum=0.9)
    return (torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.999)),
            StandIn(lrs, betas=(0.9, 0.999)))


def _run_both(torch, name, kwargs, optim_name, lrs=(0.1, 0.03), steps=100):
    topt, fopt = _torch_pair(torch, optim_name, list(lrs))
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    fsched = getattr(S, name)(fopt, **kwargs)
    key = "betas" if optim_name == "adam" else "momentum"
    t_lr, f_lr, t_m, f_m = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            t_lr.append(tsched.get_last_lr())
            f_lr.append(fsched.get_last_lr())
            t_m.append([g[key] for g in topt.param_groups])
            f_m.append([g[key] for g in fopt.param_groups])
            topt.step()
            tsched.step()
            fsched.step()
    return (np.array(t_lr, dtype=np.float64), np.array(f_lr, dtype=np.float64),
            np.array(t_m, dtype=np.float64), np.array(f_m, dtype=np.float64))


@pytest.mark.parametrize("optim_name", ["sgd", "adam"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sequence_matches_torch(name, kwargs, optim_name):
    torch = pytest.importorskip("torch")
    t_lr, f_lr, t_m, f_m = _run_both(torch, name, kwargs, optim_name)
    np.testing.assert_allclose(f_lr, t_lr, rtol=1e-12, atol=0)
    np.testing.assert_allclose(f_m, t_m, rtol=1e-12, atol=0)  # OneCycleLR cycles these
    assert np.ptp(t_lr[:, 0]) > 0 or name == "ConstantLR"  # the schedule does move


@pytest.mark.parametrize("kwargs", [
    {},
    {"mode": "max", "factor": 0.5, "patience": 3, "threshold": 0.01, "threshold_mode": "abs",
     "cooldown": 2},
    {"factor": 0.3, "patience": 1, "cooldown": 1, "min_lr": [0.01, 0.002], "eps": 1e-3},
    {"mode": "min", "factor": 0.0, "patience": 0},
])
def test_reduce_on_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    topt, fopt = _torch_pair(torch, "sgd", [0.1, 0.03])
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    fsched = S.ReduceLROnPlateau(fopt, **kwargs)
    rng = np.random.default_rng(7)
    # a loss that falls, then plateaus with noise (so improvements and bad epochs alternate)
    metrics = np.concatenate([np.linspace(2.0, 1.0, 30), 1.0 + 0.02 * rng.standard_normal(70)])
    if kwargs.get("mode") == "max":
        metrics = -metrics
    t_lr, f_lr = [], []
    for m in metrics:
        topt.step()
        tsched.step(float(m))
        fsched.step(float(m))
        t_lr.append(tsched.get_last_lr())
        f_lr.append(fsched.get_last_lr())
        assert fsched.num_bad_epochs == tsched.num_bad_epochs
    np.testing.assert_allclose(np.array(f_lr), np.array(t_lr), rtol=1e-12, atol=0)
    assert np.array(t_lr).min() < 0.1  # at least one reduction happened


@pytest.mark.parametrize("name, kwargs", [
    ("StepLR", {"step_size": 4, "gamma": 0.5}),
    ("MultiStepLR", {"milestones": [3, 8], "gamma": 0.1}),
    ("ExponentialLR", {"gamma": 0.9}),
    ("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}),
    ("LinearLR", {"start_factor": 0.25, "total_iters": 6}),
    ("ConstantLR", {"factor": 0.5, "total_iters": 4}),
])
def test_step_with_epoch_uses_closed_form_like_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    topt, fopt = _torch_pair(torch, "sgd", [0.1])
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    fsched = getattr(S, name)(fopt, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in [3, 7, 1, 12, 12, 5, 20]:
            topt.step()
            tsched.step(epoch)
            fsched.step(epoch)
            assert fsched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
    with pytest.warns(UserWarning, match="deprecated"):
        fsched.step(3)


def test_warm_restarts_fractional_epochs_match_torch():
    torch = pytest.importorskip("torch")
    topt, fopt = _torch_pair(torch, "sgd", [0.1])
    kw = {"T_0": 4, "T_mult": 3, "eta_min": 0.001}
    tsched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(topt, **kw)
    fsched = S.CosineAnnealingWarmRestarts(fopt, **kw)
    for epoch in range(12):
        for i in range(5):
            topt.step()
            tsched.step(epoch + i / 5)
            fsched.step(epoch + i / 5)
            assert fsched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
            assert fsched.T_i == tsched.T_i


def test_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")
    topt, fopt = _torch_pair(torch, "sgd", [0.1])
    t = torch.optim.lr_scheduler.StepLR(topt, step_size=3)
    f = S.StepLR(fopt, step_size=3)
    for k in ("base_lrs", "last_epoch", "step_size", "gamma", "_last_lr", "_step_count"):
        assert f.state_dict()[k] == t.state_dict()[k]


def test_drives_fastreg_optimizers_when_available():
    torch = pytest.importorskip("torch")
    from fastreg.nn import Parameter
    from fastreg.optim import SGD, Adam
    for cls, tcls, key in ((SGD, torch.optim.SGD, "momentum"), (Adam, torch.optim.Adam, "betas")):
        kw = {"momentum": 0.9} if key == "momentum" else {}
        fopt = cls([Parameter(np.zeros(3))], lr=0.1, **kw)
        topt = tcls([torch.zeros(3, requires_grad=True)], lr=0.1, **kw)
        fs = S.OneCycleLR(fopt, max_lr=0.5, total_steps=50)
        ts = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.5, total_steps=50)
        for _ in range(49):
            topt.step()
            fopt.step()                  # before the scheduler, or it warns as torch does
            ts.step()
            fs.step()
            assert fs.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
            assert np.allclose(fopt.param_groups[0][key], topt.param_groups[0][key], rtol=1e-12)
