"""bf16 mixed precision (fastreg.autocast, fit(precision="bf16")).

* the bf16 GEMMs (Cython: rounding while packing; numba: the rounding fallback) against a
  float64 product of the bf16-rounded operands -- tight: float32 accumulation error only -- and
  their result rounding against round_bf16 of the unrounded result (bit-exact);
* round_bf16 against torch's float32 -> bfloat16 conversion (bit-exact);
* autocast against torch.autocast("cpu", dtype=torch.bfloat16) on the same model, weights and
  batch: forward output, loss and every gradient within one bf16 step (2^-8) of each array's
  largest value (fastreg float32 is 20x further away, so the test can fail);
* outside autocast (and with enabled=False) nothing changes, bit for bit; float64 layers are left
  alone; master weights, gradients and optimizer state stay float32;
* nesting, the decorator, thread-locality, argument errors, and fit(precision="bf16") on the
  digits reaching float32's accuracy.
"""
import threading

import numpy as np
import pytest

import fastreg as fr
from fastreg._kernels import matmul as mm
from fastreg._kernels.matmul.bf16 import round_bf16

BACKENDS = ("cython", "numba")
#: (N, K, M): the awkward sizes, each dimension 1, 2, 7, 33 or 257 somewhere
SIZES = [(1, 1, 1), (2, 7, 33), (7, 33, 2), (33, 257, 7), (257, 33, 257)]
EPS32 = 2.0 ** -24


def _r64(a):
    return round_bf16(a).astype(np.float64)


def _within_accumulation(got, ref, absref, depth):
    """|got - ref| <= depth * 2^-24 * (|A| @ |B|): float32 accumulation's error bound."""
    err = np.abs(got.astype(np.float64) - ref)
    bound = depth * EPS32 * absref + 1e-38
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.3g}"
    return bound


def test_round_bf16_is_torchs_conversion():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(
        -140, 127, 20000).astype(np.float32)
    ties = (rng.integers(0, 2**31, 1000, dtype=np.uint32) & np.uint32(0xFFFF0000)) \
        | np.uint32(0x8000)                                   # exactly halfway: ties to even
    special = np.array([np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0, -0.0, 1.0], np.float32)
    a = np.concatenate([a, ties.view(np.float32), special])
    want = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
    got = round_bf16(a)
    nan = np.isnan(a)           # random bits include NaNs: NaN stays NaN (payloads differ)
    assert nan.sum() > 0 and np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_gemms_against_float64_reference(backend):
    rng = np.random.default_rng(1)
    for N, K, M in SIZES:
        x = rng.standard_normal((N, K)).astype(np.float32)
        W = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal(M).astype(np.float32)
        dy = rng.standard_normal((N, M)).astype(np.float32)
        # forward, no result rounding: exactly the float64 product of the rounded operands up
        # to float32 accumulation
        out = np.empty((N, M), np.float32)
        mm.run_linear_forward_bf16(x, W, b, out, 0, 0.0, False, backend=backend)
        ref = _r64(x) @ _r64(W).T + _r64(b)
        bound = _within_accumulation(out, ref, np.abs(_r64(x)) @ np.abs(_r64(W)).T
                                     + np.abs(_r64(b)), K + 1)
        if K >= 33:     # the rounding of the operands is there: float32 operands miss the bound
            ref32 = x.astype(np.float64) @ W.T.astype(np.float64) + b
            assert np.max(np.abs(ref32 - ref) / bound) > 10
        # rounded result, then the activation (ReLU): bit-exact against the rounding above
        out_r = np.empty((N, M), np.float32)
        mm.run_linear_forward_bf16(x, W, b, out_r, 1, 0.0, True, backend=backend)
        assert np.array_equal(out_r, np.maximum(round_bf16(out), 0))
        # dx
        dx = np.empty((N, K), np.float32)
        mm.run_linear_backward_input_bf16(dy, W, dx, False, backend=backend)
        _within_accumulation(dx, _r64(dy) @ _r64(W), np.abs(_r64(dy)) @ np.abs(_r64(W)), M)
        dx_r = np.empty((N, K), np.float32)
        mm.run_linear_backward_input_bf16(dy, W, dx_r, True, backend=backend)
        assert np.array_equal(dx_r, round_bf16(dx))
        # dW, db (overwrite), then accumulate: old + bf16(product)
        dW = np.empty((M, K), np.float32)
        db = np.empty(M, np.float32)
        mm.run_linear_backward_weight_bf16(dy, x, dW, db, False, False, backend=backend)
        _within_accumulation(dW, _r64(dy).T @ _r64(x), np.abs(_r64(dy)).T @ np.abs(_r64(x)), N)
        _within_accumulation(db, _r64(dy).sum(0), np.abs(_r64(dy)).sum(0), N)
        dW_acc = rng.standard_normal((M, K)).astype(np.float32)
        db_acc = rng.standard_normal(M).astype(np.float32)
        dW0, db0 = dW_acc.copy(), db_acc.copy()
        mm.run_linear_backward_weight_bf16(dy, x, dW_acc, db_acc, True, True, backend=backend)
        assert np.array_equal(dW_acc, dW0 + round_bf16(dW))
        assert np.array_equal(db_acc, db0 + round_bf16(db))


# ---------------------------------------------------------------------------------------------
# against torch's autocast
# ---------------------------------------------------------------------------------------------

def _models(torch, dtype=np.float32, seed=0):
    fr.manual_seed(seed)
    m = fr.nn.Sequential(fr.nn.Linear(33, 64, dtype=dtype), fr.nn.BatchNorm1d(64, dtype=dtype),
                         fr.nn.ReLU(), fr.nn.Linear(64, 7, dtype=dtype), fr.nn.ReLU(),
                         fr.nn.Linear(7, 10, dtype=dtype))
    if torch is None:
        return m, None
    t = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                            torch.nn.Linear(64, 7), torch.nn.ReLU(), torch.nn.Linear(7, 10))
    t.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                       for k, v in m.state_dict().items()})
    return m, t


def _batch(dtype=np.float32):
    rng = np.random.default_rng(2)
    return rng.standard_normal((33, 33)).astype(dtype), rng.integers(0, 10, 33)


def _fr_step(m, x, y, **autocast):
    loss_fn = fr.nn.CrossEntropyLoss()
    m.train()
    m.zero_grad()
    with fr.autocast("bf16", **autocast):
        out = m(x).copy()
        loss = loss_fn(out, y)
    m.backward(loss_fn.backward())
    return out, loss, {n: p.grad.copy() for n, p in m.named_parameters()}


def _torch_step(torch, t, x, y, bf16):
    t.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = t(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    loss.backward()
    return (out.float().detach().numpy(), loss.item(),
            {n: p.grad.numpy().copy() for n, p in t.named_parameters()})


def _rel_errors(a, b):
    """Per array: max |a - b| / max |b| (output, loss, each gradient)."""
    (oa, la, ga), (ob, lb, gb) = a, b
    errs = {"output": np.abs(oa - ob).max() / np.abs(ob).max(), "loss": abs(la - lb) / abs(lb)}
    for n in gb:
        errs[n] = np.abs(ga[n] - gb[n]).max() / max(np.abs(gb[n]).max(), 1e-3)
    return errs


@pytest.mark.parametrize("backend", ["cython"])   # numba's bf16 products: the kernel test
def test_autocast_matches_torch_autocast(backend):
    """Tolerance: one bf16 step (2^-8) of each array's largest value. torch's bf16 Linear
    outputs feed bf16 BatchNorm/ReLU, fastreg's float32 ones; the next Linear rounds its input
    to bf16 either way, so the two agree far closer than that (measured ~1e-7)."""
    torch = pytest.importorskip("torch")
    x, y = _batch()
    m, t = _models(torch)
    prev = fr.get_backend()
    fr.set_backend(backend)
    try:
        got = _fr_step(m, x, y, enabled=True)
        got32 = _fr_step(m, x, y, enabled=False)
    finally:
        fr.set_backend(prev)
    want = _torch_step(torch, t, x, y, bf16=True)
    tol = 2.0 ** -8
    errs = _rel_errors(got, want)
    assert max(errs.values()) <= tol, errs
    # float32 is far from torch's bf16 run: the comparison sees the bf16 rounding
    errs32 = _rel_errors(got32, want)
    assert errs32["0.weight"] > 10 * tol, errs32
    assert got[1] != got32[1]


def test_outside_autocast_nothing_changes_and_float64_is_left_alone():
    x, y = _batch()
    m, _ = _models(None)
    before = _fr_step(m, x, y, enabled=False)
    m2, _ = _models(None)
    loss_fn = fr.nn.CrossEntropyLoss()
    m2.train()
    out = m2(x).copy()                   # never under autocast
    loss = loss_fn(out, y)
    m2.backward(loss_fn.backward())
    _fr_step(m, x, y, enabled=True)     # a bf16 step in between
    after = _fr_step(m, x, y, enabled=False)
    for got in (after, (out, loss, {n: p.grad for n, p in m2.named_parameters()})):
        assert np.array_equal(got[0], before[0]) and got[1] == before[1]
        for n in before[2]:
            assert np.array_equal(got[2][n], before[2][n]), n
    # float64: autocast does not touch it (torch autocasts float32 ops only)
    x64 = x.astype(np.float64)
    m64, _ = _models(None, np.float64)
    a = _fr_step(m64, x64, y, enabled=False)
    b = _fr_step(m64, x64, y, enabled=True)
    assert a[0].dtype == np.float64 and np.array_equal(a[0], b[0]) and a[1] == b[1]
    for n in a[2]:
        assert np.array_equal(a[2][n], b[2][n]), n


def test_backward_follows_the_forward_not_the_current_mode():
    """The products of a backward are those of its forward: bf16 if the forward ran under
    autocast (torch's graph keeps the casts), even when backward runs outside it."""
    x, y = _batch()
    m, _ = _models(None)
    inside = _fr_step(m, x, y, enabled=True)
    loss_fn = fr.nn.CrossEntropyLoss()
    m.zero_grad()
    with fr.autocast("bf16"):
        loss_fn(m(x), y)
    m.backward(loss_fn.backward())      # outside the block
    for n, p in m.named_parameters():
        assert np.array_equal(p.grad, inside[2][n]), n


def test_master_weights_grads_and_optimizer_state_stay_float32():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 33)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    m, _ = _models(None)
    opt = fr.optim.AdamW(m.parameters(), lr=1e-3)
    fr.train.fit(m, fr.nn.CrossEntropyLoss(), opt, train=(X, y), epochs=2, batch_size=32,
                 progress=False, seed=0, precision="bf16")
    for n, p in m.named_parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, n
    W = m[0].weight.data
    # updates by lr-sized steps are not bf16 numbers: the weights are not stored rounded
    assert np.count_nonzero(W.view(np.uint32) & np.uint32(0xFFFF)) > W.size // 2
    states = [v for flat in opt._flat for v in flat.state.values()]
    assert states and all(s.dtype == np.float32 for s in states)


def test_nesting_enabled_false_decorator_and_threads():
    assert not fr.is_autocast_enabled()
    fr.manual_seed(0)
    lin = fr.nn.Linear(33, 7)
    x = _batch()[0]
    want32 = lin(x).copy()
    with fr.autocast("bf16"):
        assert fr.is_autocast_enabled()
        with fr.autocast(enabled=False):
            assert not fr.is_autocast_enabled()
            with fr.autocast("bfloat16"):
                assert fr.is_autocast_enabled()
            assert not fr.is_autocast_enabled()
        assert fr.is_autocast_enabled()
        seen = []

        def other_thread():
            seen.append(fr.is_autocast_enabled())
            seen.append(lin(x).copy())
        th = threading.Thread(target=other_thread)
        th.start()
        th.join()
        assert seen[0] is False           # per thread, as torch's: float32 products there
        assert np.array_equal(seen[1], want32)
        assert not np.array_equal(lin(x), want32)     # bf16 here
    assert not fr.is_autocast_enabled()

    @fr.autocast("bf16")
    def inside():
        return fr.is_autocast_enabled()
    assert inside() and not fr.is_autocast_enabled()
    with pytest.raises(RuntimeError), fr.autocast("bf16"):   # the state is restored on errors
        raise RuntimeError("boom")
    assert not fr.is_autocast_enabled()


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="dtype must be one of .* got 'fp16'"):
        fr.autocast("fp16")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fr.autocast("bf16", enabled="yes")
    X = np.zeros((8, 33), np.float32)
    y = np.zeros(8, np.int64)
    m, _ = _models(None)
    opt = fr.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp16'"):
        fr.train.fit(m, fr.nn.CrossEntropyLoss(), opt, train=(X, y), precision="fp16",
                     progress=False)
    m64, _ = _models(None, np.float64)
    with pytest.raises(ValueError, match="precision='bf16' needs a float32 model"):
        fr.train.fit(m64, fr.nn.CrossEntropyLoss(), fr.optim.SGD(m64.parameters(), lr=0.1),
                     train=(X, y), precision="bf16", progress=False)


def test_fit_bf16_reaches_float32_accuracy_on_digits():
    from fastreg.demo import load_digits_data
    X, y, _ = load_digits_data(0)
    Xtr, ytr, Xte, yte = X[:1400], y[:1400], X[1400:], y[1400:]
    acc = {}
    for precision in ("float32", "bf16"):
        fr.manual_seed(0)
        m = fr.nn.Sequential(fr.nn.Linear(X.shape[1], 128), fr.nn.BatchNorm1d(128),
                             fr.nn.ReLU(), fr.nn.Dropout(0.2), fr.nn.Linear(128, 10))
        opt = fr.optim.AdamW(m.parameters(), lr=3e-3)
        h = fr.train.fit(m, fr.nn.CrossEntropyLoss(), opt, train=(Xtr, ytr), epochs=6,
                         batch_size=64, progress=False, seed=0, precision=precision)
        m.eval()
        acc[precision] = float(np.mean(m(Xte).argmax(1) == yte))
        assert np.isfinite(h.history["loss"]).all()
    assert acc["float32"] > 0.9, acc
    assert abs(acc["bf16"] - acc["float32"]) <= 0.02, acc      # 397 test images: ~8 images
