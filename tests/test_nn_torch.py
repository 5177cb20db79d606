"""Every layer and loss against PyTorch: forward, backward and parameter gradients, float64 to
1e-6 relative and float32 to 1e-4; a torch state_dict converted to numpy gives the same outputs."""
import numpy as np
import pytest

import fastreg as fr
from fastreg import nn

torch = pytest.importorskip("torch")

TDT = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


@pytest.fixture(autouse=True)
def _use_backend(backend):
    fr.set_backend(backend)


def rtol(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-6


def check(ours, theirs, dtype, scale=1.0):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    r = rtol(dtype)
    np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64),
                               rtol=r, atol=r * scale)


def load_from_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def run_pair(ours, theirs, x, dy, dtype, train=True):
    """Forward + backward through both; compare output, dL/dx and every parameter gradient."""
    ours.train(train)
    theirs.train(train)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(dy))
    y = ours(x)
    check(y, yt, dtype)
    check(ours.backward(dy), xt.grad, dtype)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        check(p.grad, tp[name].grad, dtype, scale=10)
    tb = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        check(b, tb[name], dtype)


LAYERS = {
    "linear": (lambda dt: nn.Linear(33, 7, dtype=dt),
               lambda tdt: torch.nn.Linear(33, 7, dtype=tdt), (257, 33)),
    "batchnorm": (lambda dt: nn.BatchNorm1d(33, momentum=0.2, dtype=dt),
                  lambda tdt: torch.nn.BatchNorm1d(33, momentum=0.2, dtype=tdt), (257, 33)),
    "batchnorm_cumulative": (lambda dt: nn.BatchNorm1d(5, momentum=None, dtype=dt),
                             lambda tdt: torch.nn.BatchNorm1d(5, momentum=None, dtype=tdt),
                             (7, 5)),
    "batchnorm_no_affine": (lambda dt: nn.BatchNorm1d(5, affine=False, dtype=dt),
                            lambda tdt: torch.nn.BatchNorm1d(5, affine=False, dtype=tdt), (2, 5)),
    "layernorm": (lambda dt: nn.LayerNorm(33, dtype=dt),
                  lambda tdt: torch.nn.LayerNorm(33, dtype=tdt), (7, 33)),
    "layernorm_batch1": (lambda dt: nn.LayerNorm(40, dtype=dt),
                         lambda tdt: torch.nn.LayerNorm(40, dtype=tdt), (1, 40)),
    "relu": (lambda dt: nn.ReLU(), lambda tdt: torch.nn.ReLU(), (33, 7)),
    "leaky_relu": (lambda dt: nn.LeakyReLU(0.1), lambda tdt: torch.nn.LeakyReLU(0.1), (33, 7)),
    "sigmoid": (lambda dt: nn.Sigmoid(), lambda tdt: torch.nn.Sigmoid(), (33, 7)),
    "tanh": (lambda dt: nn.Tanh(), lambda tdt: torch.nn.Tanh(), (33, 7)),
    "flatten": (lambda dt: nn.Flatten(), lambda tdt: torch.nn.Flatten(), (3, 4, 5)),
    "identity": (lambda dt: nn.Identity(), lambda tdt: torch.nn.Identity(), (3, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch(dtype, rng, name):
    make_ours, make_theirs, shape = LAYERS[name]
    theirs = make_theirs(TDT[dtype])
    ours = make_ours(dtype)
    with torch.no_grad():                    # non-trivial affine parameters
        for p in theirs.parameters():
            p.copy_(torch.tensor(rng.uniform(0.5, 1.5, tuple(p.shape))))
    load_from_torch(ours, theirs)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    out_shape = tuple(theirs.eval()(torch.tensor(x)).shape)    # eval: no running-stat update
    for step in range(2):                    # twice: running statistics evolve
        dy = rng.standard_normal(out_shape).astype(dtype)
        for p in theirs.parameters():
            p.grad = None
        ours.zero_grad()
        run_pair(ours, theirs, x + step, dy, dtype)
    if name.startswith("batchnorm"):
        dy = rng.standard_normal(out_shape).astype(dtype)
        for p in theirs.parameters():
            p.grad = None
        ours.zero_grad()
        run_pair(ours, theirs, x, dy, dtype, train=False)


def _torch_mlp(tdt):
    return torch.nn.Sequential(torch.nn.Linear(20, 16, dtype=tdt),
                               torch.nn.BatchNorm1d(16, dtype=tdt), torch.nn.ReLU(), torch.nn.Linear(16, 12, dtype=tdt),
                               torch.nn.Tanh(), torch.nn.LayerNorm(12, dtype=tdt),
                               torch.nn.Linear(12, 8, dtype=tdt), torch.nn.LeakyReLU(0.05),
                               torch.nn.Dropout(0.3), torch.nn.Linear(8, 4, dtype=tdt))


def _our_mlp(dt):
    return nn.Sequential(nn.Linear(20, 16, dtype=dt), nn.BatchNorm1d(16, dtype=dt), nn.ReLU(),
                         nn.Linear(16, 12, dtype=dt), nn.Tanh(), nn.LayerNorm(12, dtype=dt),
                         nn.Linear(12, 8, dtype=dt), nn.LeakyReLU(0.05), nn.Dropout(0.3),
                         nn.Linear(8, 4, dtype=dt))


def test_torch_state_dict_loads_and_gives_same_outputs(dtype, rng):
    theirs = _torch_mlp(TDT[dtype])
    x = rng.standard_normal((64, 20)).astype(dtype)
    theirs.train()
    for _ in range(3):                       # non-trivial running statistics
        theirs(torch.tensor(x * 2 + 1))
    theirs.eval()
    ours = _our_mlp(dtype)
    load_from_torch(ours, theirs)
    assert int(ours[1].num_batches_tracked) == 3
    ours.eval()
    check(ours(x), theirs(torch.tensor(x)), dtype, scale=10)
    # and through the fused/unfused training path without dropout randomness
    ours[8].p = 0.0
    theirs[8].p = 0.0
    dy = rng.standard_normal((64, 4)).astype(dtype)
    run_pair(ours, theirs, x, dy, dtype, train=True)


def test_cross_entropy_matches_torch(dtype, rng):
    z = rng.standard_normal((33, 7)).astype(dtype) * 3
    t = rng.integers(0, 7, 33)
    w = rng.uniform(0.2, 2.0, 7)
    cases = [{}, {"label_smoothing": 0.2}, {"reduction": "sum"}, {"weight": w},
             {"weight": w, "label_smoothing": 0.1}]
    for kw in cases:
        tkw = dict(kw)
        if "weight" in tkw:
            tkw["weight"] = torch.tensor(w, dtype=TDT[dtype])
        zt = torch.tensor(z, requires_grad=True)
        lt = torch.nn.CrossEntropyLoss(**tkw)(zt, torch.tensor(t))
        lt.backward()
        ours = nn.CrossEntropyLoss(**kw)
        assert ours(z, t) == pytest.approx(lt.item(), rel=rtol(dtype))
        check(ours.backward(), zt.grad, dtype)


def test_mse_and_bce_with_logits_match_torch(dtype, rng):
    x = rng.standard_normal((33, 3)).astype(dtype) * 4
    target = rng.uniform(0, 1, (33, 3)).astype(dtype)
    pw = rng.uniform(0.5, 2, 3)
    pairs = [(nn.MSELoss(), torch.nn.MSELoss()),
             (nn.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum")),
             (nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()),
             (nn.BCEWithLogitsLoss(pos_weight=pw),
              torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw, dtype=TDT[dtype])))]
    for ours, theirs in pairs:
        xt = torch.tensor(x, requires_grad=True)
        lt = theirs(xt, torch.tensor(target))
        lt.backward()
        assert ours(x, target) == pytest.approx(lt.item(), rel=rtol(dtype))
        check(ours.backward(), xt.grad, dtype)
