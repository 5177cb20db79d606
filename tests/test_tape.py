"""Automatic backward (fastreg.nn._tape): gradients of custom modules equal torch autograd's
(float64, rtol 1e-10) and finite differences; unsupported operations raise; eval / no_grad
record nothing; one saved context per module call."""
import pickle
import threading

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.nn import functional as F

torch = pytest.importorskip("torch")
tnn = torch.nn
f64 = np.float64
RTOL = 1e-10


def _rng(seed=0):
    return np.random.default_rng(seed)


def _copy_weights(frm, tm):
    tm.load_state_dict({k: torch.tensor(v) for k, v in frm.state_dict().items()})


def _compare(frm, tm, inputs, grad=None, input_grad=True):
    """Forward + backward through both; assert outputs, input grads, param grads agree."""
    _copy_weights(frm, tm)
    out = frm(*inputs)
    g = _rng(99).standard_normal(out.shape) if grad is None else grad
    dx = frm.backward(g, input_grad=input_grad)
    tins = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    tout = tm(*tins)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=RTOL, atol=1e-12)
    tparams = dict(tm.named_parameters())
    names = [k for k, _ in frm.named_parameters()]
    assert sorted(names) == sorted(tparams)
    for k, p in frm.named_parameters():
        tg = tparams[k].grad
        if tg is None:
            assert p.grad is None or not np.any(p.grad), k
            continue
        np.testing.assert_allclose(p.grad, tg.numpy(), rtol=RTOL, atol=1e-12, err_msg=k)
    if input_grad:
        dxs = dx if isinstance(dx, tuple) else (dx,)
        fl = [t for t in tins if t.requires_grad]
        assert len(dxs) == len(inputs)
        for d, t, a in zip(dxs, tins, inputs):
            if a.dtype.kind == "f":
                np.testing.assert_allclose(d, t.grad.numpy(), rtol=RTOL, atol=1e-12)
            else:
                assert d is None
        assert fl
    else:
        assert dx is None
    return out


# ---------------------------------------------------------------------------------------------
# the models of the issue: residual MLP, weight tying, multi-input with slicing and concat
# ---------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """Gorishniy et al. 2021: x + Dropout(Linear(ReLU(Linear(BatchNorm(x)))))."""

    def __init__(self, d, hidden, p=0.0):
        super().__init__()
        self.norm = nn.BatchNorm1d(d, dtype=f64)
        self.fc1 = nn.Linear(d, hidden, dtype=f64)
        self.fc2 = nn.Linear(hidden, d, dtype=f64)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return x + self.drop(self.fc2(F.relu(self.fc1(self.norm(x)))))


class ResMLP(nn.Module):
    def __init__(self, d_in, d, n_blocks, d_out, p=0.0):
        super().__init__()
        self.inp = nn.Linear(d_in, d, dtype=f64)
        self.blocks = nn.Sequential(*[ResBlock(d, 2 * d, p) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.BatchNorm1d(d, dtype=f64), nn.ReLU(),
                                  nn.Linear(d, d_out, dtype=f64))

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


class TResBlock(tnn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm = tnn.BatchNorm1d(d).double()
        self.fc1 = tnn.Linear(d, hidden).double()
        self.fc2 = tnn.Linear(hidden, d).double()
        self.drop = tnn.Dropout(0.0)

    def forward(self, x):
        return x + self.drop(self.fc2(torch.relu(self.fc1(self.norm(x)))))


class TResMLP(tnn.Module):
    def __init__(self, d_in, d, n_blocks, d_out):
        super().__init__()
        self.inp = tnn.Linear(d_in, d).double()
        self.blocks = tnn.Sequential(*[TResBlock(d, 2 * d) for _ in range(n_blocks)])
        self.head = tnn.Sequential(tnn.BatchNorm1d(d).double(), tnn.ReLU(),
                                   tnn.Linear(d, d_out).double())

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


@pytest.mark.parametrize("n", [2, 7, 33])
def test_residual_mlp_matches_torch(n):
    fr.manual_seed(n)
    m = ResMLP(5, 8, 2, 3)
    t = TResMLP(5, 8, 2, 3)
    x = _rng(n).standard_normal((n, 5))
    _compare(m, t, [x])
    # a second step (buffers reused) gives the same as a fresh torch step
    for p in m.parameters():
        p.grad = None
    t.zero_grad()
    _compare(m, t, [x * 0.5])


class Tied(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d, dtype=f64)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.fc(self.act(self.fc(x)))


class TTied(tnn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = tnn.Linear(d, d).double()

    def forward(self, x):
        return self.fc(torch.tanh(self.fc(x)))


def test_weight_tying_same_layer_twice():
    """The silent wrong gradient of the issue (analytic - numeric 7e-2): each call keeps its
    own context now."""
    fr.manual_seed(1)
    m, t = Tied(4), TTied(4)
    x = _rng(1).standard_normal((7, 4))
    _compare(m, t, [x])


class TwoCalls(nn.Module):
    """fc's first output is still in use when fc runs again (sum of two calls)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3, dtype=f64)
        self.seq = nn.Sequential(nn.Linear(3, 3, dtype=f64), nn.ReLU())

    def forward(self, x):
        a = self.fc(x)
        b = self.fc(x * 2.0)
        c = self.seq(a) * self.seq(b)
        return a + b + c


class TTwoCalls(tnn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(3, 3).double()
        self.seq = tnn.Sequential(tnn.Linear(3, 3).double(), tnn.ReLU())

    def forward(self, x):
        a = self.fc(x)
        b = self.fc(x * 2.0)
        c = self.seq(a) * self.seq(b)
        return a + b + c


def test_repeated_calls_keep_their_outputs_and_contexts():
    fr.manual_seed(2)
    m, t = TwoCalls(), TTwoCalls()
    x = _rng(2).standard_normal((33, 3))
    out = _compare(m, t, [x])
    # eval: repeated calls still get separate outputs (no tape)
    m.eval()
    t.eval()
    np.testing.assert_allclose(m(x), t(torch.tensor(x)).detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(m(x), out, rtol=RTOL)


class Entity(nn.Module):
    """Numeric columns and a categorical column (one-hot via indexing a Parameter table)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(_rng(5).standard_normal((4, 2)))
        self.fc = nn.Linear(5, 3, dtype=f64)
        self.scale = nn.Parameter(np.array([1.5]))

    def forward(self, x, idx):
        e = self.table[idx]                        # advanced indexing: scatter-add backward
        h = fr.cat([x[:, :3] / 2.0, e], dim=1)    # slicing, scalar division, concat
        y = self.fc(h) * self.scale - x[:, 1:2]
        return y - y.mean(axis=1, keepdims=True) + y.sum(axis=1, keepdims=True) * 0.1


class TEntity(tnn.Module):
    def __init__(self):
        super().__init__()
        self.table = tnn.Parameter(torch.zeros(4, 2, dtype=torch.float64))
        self.fc = tnn.Linear(5, 3).double()
        self.scale = tnn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, idx):
        e = self.table[idx]
        h = torch.cat([x[:, :3] / 2.0, e], dim=1)
        y = self.fc(h) * self.scale - x[:, 1:2]
        return y - y.mean(dim=1, keepdim=True) + y.sum(dim=1, keepdim=True) * 0.1


def test_multi_input_slicing_concat_scalars_parameters():
    fr.manual_seed(3)
    m, t = Entity(), TEntity()
    x = _rng(3).standard_normal((7, 4))
    idx = np.array([0, 3, 3, 1, 0, 0, 2])         # duplicates accumulate
    _compare(m, t, [x, idx])


# ---------------------------------------------------------------------------------------------
# every supported operation, one at a time, against torch
# ---------------------------------------------------------------------------------------------

_OPS = {
    "add_broadcast": (lambda x, w: x + w[0], lambda x, w: x + w[0]),
    "radd_scalar": (lambda x, w: 2.0 + x, lambda x, w: 2.0 + x),
    "sub": (lambda x, w: x - x * w[1], lambda x, w: x - x * w[1]),
    "rsub": (lambda x, w: 1.0 - x, lambda x, w: 1.0 - x),
    "mul_param": (lambda x, w: x * w, lambda x, w: x * w),
    "div_scalar": (lambda x, w: x / 3.0, lambda x, w: x / 3.0),
    "div_recorded": (lambda x, w: x / (w * w + 1.0), lambda x, w: x / (w * w + 1.0)),
    "rdiv": (lambda x, w: 1.0 / (x * x + 1.0), lambda x, w: 1.0 / (x * x + 1.0)),
    "neg": (lambda x, w: -x, lambda x, w: -x),
    "matmul": (lambda x, w: x @ w.T, lambda x, w: x @ w.T),
    "rmatmul_vec": (lambda x, w: x @ w[0], lambda x, w: x @ w[0]),
    "pow": (lambda x, w: (x * x + 1.0) ** 1.5, lambda x, w: (x * x + 1.0) ** 1.5),
    "exp": (lambda x, w: np.exp(x), lambda x, w: torch.exp(x)),
    "log": (lambda x, w: np.log(x * x + 1.0), lambda x, w: torch.log(x * x + 1.0)),
    "sqrt": (lambda x, w: np.sqrt(x * x + 1.0), lambda x, w: torch.sqrt(x * x + 1.0)),
    "square": (lambda x, w: np.square(x), lambda x, w: torch.square(x)),
    "abs": (lambda x, w: np.abs(x), lambda x, w: torch.abs(x)),
    "np_tanh": (lambda x, w: np.tanh(x), lambda x, w: torch.tanh(x)),
    "maximum": (lambda x, w: np.maximum(x, w), lambda x, w: torch.maximum(x, w)),
    "minimum_scalar": (lambda x, w: np.minimum(x, 0.1), lambda x, w: torch.clamp(x, max=0.1)),
    "getitem_basic": (lambda x, w: x[1:, ::2] * 2.0, lambda x, w: x[1:, ::2] * 2.0),
    "getitem_int": (lambda x, w: x[:, 1] + 0.0, lambda x, w: x[:, 1] + 0.0),
    "getitem_fancy": (lambda x, w: x[[0, 0, 2]], lambda x, w: x[[0, 0, 2]]),
    "sum_all": (lambda x, w: (x * w).sum(), lambda x, w: (x * w).sum()),
    "sum_axis0": (lambda x, w: np.sum(x * w, axis=0), lambda x, w: (x * w).sum(dim=0)),
    "mean_axis1": (lambda x, w: (x * w).mean(axis=1), lambda x, w: (x * w).mean(dim=1)),
    "reshape": (lambda x, w: (x * w).reshape(-1), lambda x, w: (x * w).reshape(-1)),
    "transpose": (lambda x, w: (x * w).T @ x, lambda x, w: (x * w).T @ x),
    "concatenate0": (lambda x, w: np.concatenate([x, w], axis=0),
                     lambda x, w: torch.cat([x, w], dim=0)),
    "stack": (lambda x, w: np.stack([x, w * x], axis=1), lambda x, w: torch.stack([x, w * x], 1)),
    "relu": (lambda x, w: F.relu(x * w), lambda x, w: torch.relu(x * w)),
    "leaky_relu": (lambda x, w: F.leaky_relu(x, 0.2), lambda x, w: tnn.functional.leaky_relu(x, 0.2)),
    "leaky_relu_neg": (lambda x, w: F.leaky_relu(x, -0.3),
                       lambda x, w: tnn.functional.leaky_relu(x, -0.3)),
    "sigmoid": (lambda x, w: F.sigmoid(x), lambda x, w: torch.sigmoid(x)),
    "tanh": (lambda x, w: F.tanh(x), lambda x, w: torch.tanh(x)),
    "dropout_eval_arg": (lambda x, w: F.dropout(x * w, 0.5, training=False),
                         lambda x, w: x * w),
    "astype_int_detaches": (lambda x, w: x * (x.astype(np.int64) + 1.0),
                            lambda x, w: x * (x.detach().long() + 1.0)),
    "comparison_mask": (lambda x, w: x * (x > 0), lambda x, w: x * (x > 0)),
}


class _Op(nn.Module):
    def __init__(self, fn, w):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(w.copy())

    def forward(self, x):
        return self.fn(x, self.w)


class _TOp(tnn.Module):
    def __init__(self, fn, w):
        super().__init__()
        self.fn = fn
        self.w = tnn.Parameter(torch.tensor(w))

    def forward(self, x):
        return self.fn(x, self.w)


@pytest.mark.parametrize("name", sorted(_OPS))
def test_each_operation_matches_torch(name):
    fn, tfn = _OPS[name]
    x = _rng(4).standard_normal((3, 3)) * 1.5
    w = _rng(5).standard_normal((3, 3))
    m, t = _Op(fn, w), _TOp(tfn, w)
    out = m(x)
    g = _rng(6).standard_normal(np.shape(out))
    dx = m.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    tout = t(tx)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=RTOL, atol=1e-12)
    tg = t.w.grad
    np.testing.assert_allclose(m.w.grad if m.w.grad is not None else 0.0,
                               0.0 if tg is None else tg.numpy(), rtol=RTOL, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# finite differences (dropout included: the same seed gives the same masks)
# ---------------------------------------------------------------------------------------------

def _fd_check(m, x, seed=0, eps=1e-6):
    def loss():
        fr.manual_seed(seed)
        out = m(x)
        return float((out * wts).sum())
    fr.manual_seed(seed)
    out = m(x)
    wts = _rng(7).standard_normal(out.shape)
    m.zero_grad()
    for p in m.parameters():
        p.grad = None
    fr.manual_seed(seed)
    m(x)
    dx = m.backward(wts)
    for name, p in list(m.named_parameters())[:4]:
        flat = p.data.reshape(-1)
        for i in range(0, flat.size, max(1, flat.size // 5)):
            old = flat[i]
            flat[i] = old + eps
            lp = loss()
            flat[i] = old - eps
            lm = loss()
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(num - p.grad.reshape(-1)[i]) <= 1e-5 * max(1.0, abs(num)), (name, i)
    xf = x.reshape(-1)
    for i in range(0, xf.size, max(1, xf.size // 7)):
        old = xf[i]
        xf[i] = old + eps
        lp = loss()
        xf[i] = old - eps
        lm = loss()
        xf[i] = old
        num = (lp - lm) / (2 * eps)
        assert abs(num - dx.reshape(-1)[i]) <= 1e-5 * max(1.0, abs(num)), ("x", i)


def test_finite_differences_residual_mlp_with_dropout():
    fr.manual_seed(0)
    m = ResMLP(4, 6, 2, 3, p=0.3)
    # BatchNorm running statistics change per call; they do not enter training outputs
    _fd_check(m, _rng(8).standard_normal((9, 4)))


def test_finite_differences_tied_and_functional_dropout():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4, dtype=f64)
            self.ln = nn.LayerNorm(4, dtype=f64)

        def forward(self, x):
            h = F.dropout(F.sigmoid(self.fc(x)), 0.4)
            return self.ln(self.fc(h) + x) * 2.0

    fr.manual_seed(1)
    _fd_check(Net(), _rng(9).standard_normal((5, 4)))


# ---------------------------------------------------------------------------------------------
# errors, modes, nesting
# ---------------------------------------------------------------------------------------------

class _Bad(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc = nn.Linear(3, 3, dtype=f64)
        self.op = op

    def forward(self, x):
        return self.op(self.fc(x))


def _iadd(h):
    h += 1.0
    return h


@pytest.mark.parametrize("op, what", [
    (np.sin, "numpy.sin"),
    (np.asarray, "conversion to a NumPy array"),
    (_iadd, "in-place"),
    (lambda h: h.cumsum(axis=1), "ndarray.cumsum"),
    (lambda h: np.where(np.ones(h.shape, bool), h, 0.0), "numpy.where"),
    (lambda h: np.exp2(h), "numpy.exp2"),
])
def test_unsupported_operation_raises_naming_it(op, what):
    m = _Bad(op)
    x = _rng(0).standard_normal((4, 3))
    with pytest.raises(TypeError, match="supported") as e:
        m(x)
    assert what in str(e.value)
    # eval records nothing: the same forward runs on plain arrays
    m.eval()
    if op is not np.asarray:
        m(x)


def test_eval_and_no_grad_record_nothing():
    fr.manual_seed(0)
    m = Tied(3)
    x = _rng(0).standard_normal((4, 3))
    m.eval()
    y = m(x)
    assert type(y) is np.ndarray
    with pytest.raises(RuntimeError, match="recorded forward"):
        m.backward(np.ones_like(y))
    m.train()
    with fr.no_grad():
        assert not fr.is_grad_enabled()
        y2 = m(x)
        with fr.enable_grad():
            assert fr.is_grad_enabled()
    assert fr.is_grad_enabled()
    np.testing.assert_allclose(y, y2)
    assert m.fc.__dict__.get("_cache") is None          # no caches kept under no_grad
    with pytest.raises(RuntimeError, match="recorded forward"):
        m.backward(np.ones_like(y))

    @fr.no_grad()
    def infer(a):
        return m(a)
    infer(x)
    assert m.__dict__.get("_tape") is None


def test_backward_twice_raises_and_input_grad_false():
    fr.manual_seed(0)
    m = Tied(3)
    x = _rng(0).standard_normal((4, 3))
    y = m(x)
    assert m.backward(np.ones_like(y), input_grad=False) is None
    assert m.fc.weight.grad is not None and np.any(m.fc.weight.grad)
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y))
    m(x)
    with pytest.raises(ValueError, match="shape"):
        m.backward(np.ones((2, 3)))


class HandWritten(nn.Module):
    """backward(self, g) without input_grad, as a user writes it (issue: Sequential/fit passed
    input_grad= and failed)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.array([2.0]))

    def forward(self, x):
        self.x = x
        return x * self.w.data

    def backward(self, g):
        self.w.grad_buffer()[...] += (g * self.x).sum()
        return g * self.w.data


def test_hand_written_backward_in_sequential_and_in_tape():
    fr.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 3, dtype=f64), HandWritten())
    x = _rng(0).standard_normal((4, 3))
    y = seq(x)
    seq.backward(np.ones_like(y), input_grad=False)
    assert seq[1].w.grad[0] == pytest.approx(float((seq[0](x)).sum()))

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = HandWritten()
            self.fc = nn.Linear(3, 2, dtype=f64)

        def forward(self, x):
            return self.fc(self.h(x) + x)

    o = Outer()
    y = o(x)
    dx = o.backward(np.ones_like(y))
    eps = 1e-6
    x2 = x.copy()
    x2[0, 0] += eps
    num = (o(x2).sum() - o(x).sum()) / eps
    assert dx[0, 0] == pytest.approx(num, rel=1e-4)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3, dtype=f64)

    def forward(self, x):
        return F.tanh(self.fc(x)) + x


def test_taped_module_inside_sequential_and_fit():
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, dtype=f64), Inner(), nn.ReLU(),
                          nn.Linear(3, 2, dtype=f64))
    tm = tnn.Sequential(tnn.Linear(4, 3).double(), _TInner(), tnn.ReLU(),
                        tnn.Linear(3, 2).double())
    x = _rng(1).standard_normal((7, 4))
    _compare(model, tm, [x])
    X = _rng(2).standard_normal((64, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    opt = fr.optim.Adam(model.parameters(), lr=1e-2)
    h = fr.train.fit(model, nn.CrossEntropyLoss(), opt, train=(X, y), epochs=3, batch_size=16,
                     progress=False)
    assert len(h.epochs) == 3


class _TInner(tnn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(3, 3).double()

    def forward(self, x):
        return torch.tanh(self.fc(x)) + x


def test_fit_custom_residual_model_learns():
    fr.manual_seed(0)
    m = ResMLP(6, 16, 2, 2, p=0.1)
    X = _rng(3).standard_normal((256, 6))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(np.int64)
    opt = fr.optim.AdamW(m.parameters(), lr=3e-3)
    h = fr.train.fit(m, nn.CrossEntropyLoss(), opt, train=(X, y), epochs=15, batch_size=32,
                     progress=False)
    assert h["loss"][-1] < 0.6 * h["loss"][0]


def test_tuple_output_and_two_array_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, dtype=f64)

        def forward(self, x, z):
            h = self.a(x) * z
            return h, h.sum(axis=1)

    fr.manual_seed(0)
    m = Two()
    x, z = _rng(0).standard_normal((3, 2)), _rng(1).standard_normal((3, 2))
    h, s = m(x, z)
    _gx, gz = m.backward((np.ones_like(h), None))
    np.testing.assert_allclose(gz, m.a(x))
    m(x, z)
    _gx2, gz2 = m.backward((np.ones_like(h), np.ones_like(s)))
    np.testing.assert_allclose(gz2, 2 * gz)


def test_two_threads_training_one_model_raises():
    fr.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    x = _rng(0).standard_normal((512, 512)).astype(np.float32)
    errors = []
    start = threading.Barrier(2)

    def work():
        start.wait()
        try:
            for _ in range(20):
                m(x)
        except RuntimeError as e:
            errors.append(e)
    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors and "another thread" in str(errors[0])
    # forward in one thread, backward in another: refused
    y = m(x)
    err = []
    t = threading.Thread(target=lambda: _catch(err, m.backward, np.ones_like(y)))
    t.start()
    t.join()
    assert err and "different thread" in str(err[0])


def _catch(err, fn, *a):
    try:
        fn(*a)
    except RuntimeError as e:
        err.append(e)


def test_pickle_after_training_forward_and_copy_in_eval():
    fr.manual_seed(0)
    m = ResMLP(3, 4, 1, 2)
    x = _rng(0).standard_normal((5, 3))
    m(x)
    m2 = pickle.loads(pickle.dumps(m))
    m.eval()
    m2.eval()
    np.testing.assert_array_equal(m(x), m2(x))


def test_recorded_array_attributes_and_detach():
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, dtype=f64)

        def forward(self, x):
            h = self.fc(x)
            seen["types"] = (type(h).__name__, h.shape, h.dtype, len(h), h.ndim)
            return h * h.detach()                 # the detached factor is a constant

    fr.manual_seed(0)
    m = Probe()
    x = _rng(0).standard_normal((4, 3))
    y = m(x)
    assert seen["types"] == ("Recorded", (4, 3), np.dtype(f64), 4, 2)
    m.backward(np.ones_like(y))
    h = m.fc(x)
    m.fc.weight.grad[...] = 0
    m.fc.bias.grad[...] = 0
    m.fc(x)
    m.fc.backward(h)                              # d/dh (h * const) = const
    g_ref = m.fc.weight.grad.copy()
    m.zero_grad()
    m(x)
    m.backward(np.ones_like(y))
    np.testing.assert_allclose(m.fc.weight.grad, g_ref, rtol=1e-12)


def test_requires_grad_and_numel():
    m = ResMLP(3, 4, 1, 2)
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    assert all(p.requires_grad for p in m.parameters())
    assert m.inp.weight.numel() == 12
    with pytest.raises(TypeError):
        fr.set_grad_enabled(1)


class EntityNet(nn.Module):
    """The README's entity-embedding model: categorical codes through Embeddings, concatenated
    with the numeric columns."""

    def __init__(self, n_numeric, cards, dim=3, d=8, d_out=2):
        super().__init__()
        self.embs = nn.ModuleList([nn.Embedding(c, dim, dtype=f64) for c in cards])
        self.mlp = nn.Sequential(nn.Linear(n_numeric + dim * len(cards), d, dtype=f64),
                                 nn.ReLU(), nn.Linear(d, d_out, dtype=f64))

    def forward(self, x_num, x_cat):
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embs)]
        return self.mlp(fr.cat(parts, dim=1))


class TEntityNet(tnn.Module):
    def __init__(self, n_numeric, cards, dim=3, d=8, d_out=2):
        super().__init__()
        self.embs = tnn.ModuleList([tnn.Embedding(c, dim).double() for c in cards])
        self.mlp = tnn.Sequential(tnn.Linear(n_numeric + dim * len(cards), d).double(),
                                  tnn.ReLU(), tnn.Linear(d, d_out).double())

    def forward(self, x_num, x_cat):
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embs)]
        return self.mlp(torch.cat(parts, dim=1))


def test_entity_embedding_model_matches_torch():
    fr.manual_seed(4)
    m, t = EntityNet(4, [5, 3, 7]), TEntityNet(4, [5, 3, 7])
    rng = _rng(4)
    x_num = rng.standard_normal((33, 4))
    x_cat = np.stack([rng.integers(0, c, 33) for c in (5, 3, 7)], axis=1)
    _compare(m, t, [x_num, x_cat])


def test_fit_sequential_starting_with_embedding_keeps_integer_input():
    fr.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, dtype=f64), nn.Flatten(),
                          nn.Linear(8, 2, dtype=f64))
    X = _rng(0).integers(0, 10, (64, 2))
    y = (X[:, 0] > 4).astype(np.int64)
    h = fr.train.fit(model, nn.CrossEntropyLoss(), fr.optim.Adam(model.parameters(), lr=0.05),
                     train=(X, y), valid=(X, y), epochs=5, batch_size=16, progress=False)
    assert h["loss"][-1] < h["loss"][0]
