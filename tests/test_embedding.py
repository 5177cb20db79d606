"""nn.Embedding and its kernel family (fastreg._kernels.embedding).

Kernels: every CPU backend x float32/float64 x int32/int64 indices x awkward sizes against the
float64 twins of tests/reference.py; the scatter-add is deterministic (same bits for 1 and 2
threads, and on both backends). Module: against torch 2.13 (forward, backward with duplicates,
padding_idx, scale_grad_by_freq, max_norm, from_pretrained, init, repr) and in a model that
trains, saves, loads and compiles (the layer contract, tests/test_layer_contract.py, runs the
registry-wide checks).
"""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import tol

import fastreg as fr
from fastreg import inference, nn
from fastreg import io as frio
from fastreg._kernels import embedding as E

SIZES = (1, 2, 7, 33, 257)
INDEX_DTYPES = (np.int64, np.int32)


def _idt(n):
    """Both index dtypes over the sizes, without doubling the cases."""
    return INDEX_DTYPES[n % 2]


def _table(V, D, dt, seed=0):
    return np.random.default_rng(seed).standard_normal((V, D)).astype(dt)


def _indices(n, V, idt, seed=1):
    """n indices in [0, V) with duplicates whenever n > 1 (shape (n,), or (n//2, 2)-ish)."""
    g = np.random.default_rng(seed)
    idx = g.integers(0, max(1, min(V, n // 2 + 1)), n).astype(idt)   # few distinct rows
    return idx.reshape(n // 2, 2) if n % 2 == 0 and n > 2 else idx


# ---------------------------------------------------------------------------------------------
# kernels against the float64 twins
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_forward_gathers_rows_exactly(backend, dtype, n):
    idt = _idt(n)
    V, D = 7 if n < 33 else 33, 257 if n == 2 else 7
    W = _table(V, D, dtype)
    idx = _indices(n, V, idt)
    out = np.full((*idx.shape, D), np.nan, dtype)
    E.embedding_forward(W, idx, out, backend=backend)
    np.testing.assert_array_equal(out, ref.embedding_forward(W, idx).astype(dtype))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", ["plain", "padding", "freq+padding"])
def test_backward_scatter_adds_like_the_reference(backend, dtype, n, variant):
    idt = _idt(n + (variant == "padding"))
    V, D = 7 if n < 33 else 33, 33 if n == 7 else 2
    idx = _indices(n, V, idt)
    dy = np.random.default_rng(2).standard_normal((*idx.shape, D)).astype(dtype)
    pad = None if variant == "plain" else int(idx.reshape(-1)[0])
    freq = variant == "freq+padding"
    old = _table(V, D, dtype, seed=3)                 # accumulates into what is there
    gw = old.copy()
    E.embedding_backward(dy, idx, gw, padding_idx=pad, scale_grad_by_freq=freq, backend=backend)
    want = old.astype(np.float64) + ref.embedding_backward(dy, idx, V, pad, freq)
    rtol, atol = tol(dtype, f32=1e-5, f64=1e-13)
    np.testing.assert_allclose(gw, want, rtol=rtol, atol=atol)
    if pad is not None:
        np.testing.assert_array_equal(gw[pad], old[pad])      # padding row: no gradient


@pytest.mark.parametrize("n", (1, 7, 257))
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, np.inf])
def test_renorm_rescales_only_looked_up_rows_over_max_norm(backend, dtype, n, p):
    V, D = 33, 7
    W = _table(V, D, dtype) * 2
    idx = _indices(n, V, np.int64)
    max_norm = float(np.median(np.linalg.norm(W.astype(np.float64), ord=p, axis=1)))
    want = ref.embedding_renorm_(W, idx, max_norm, p)
    E.embedding_renorm_(W, idx, max_norm, p, backend=backend)
    rtol, atol = tol(dtype, f32=1e-6, f64=1e-14)
    np.testing.assert_allclose(W, want, rtol=rtol, atol=atol)


def test_backward_is_deterministic_across_threads_and_backends(dtype):
    """Each row sums in input order whatever the chunking: the same bits every way."""
    V, D, n = 5, 33, 4000                        # many duplicates per row
    g = np.random.default_rng(4)
    idx = g.integers(0, V, n)
    dy = (g.standard_normal((n, D)) * 10.0 ** g.integers(-4, 4, (n, 1))).astype(dtype)
    results = []
    for backend in ("numba", "cython"):
        for threads in (1, 2):
            fr.set_num_threads(threads)
            gw = np.zeros((V, D), dtype)
            E.embedding_backward(dy, idx, gw, backend=backend)
            results.append(gw)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    serial = np.zeros((V, D), dtype)
    for i in range(n):                               # the serial loop in input order
        serial[idx[i]] += dy[i]
    np.testing.assert_array_equal(results[0], serial)


def test_kernel_arguments_are_checked_before_any_kernel_runs():
    W = _table(5, 3, np.float64)
    out = np.empty((2, 3))
    with pytest.raises(IndexError, match=r"in \[0, 5\).*got 5"):
        E.embedding_forward(W, np.array([0, 5]), out)
    with pytest.raises(IndexError, match="got -1"):
        E.embedding_forward(W, np.array([-1, 0]), out)
    with pytest.raises(TypeError, match="int64 or int32.*float64"):
        E.embedding_forward(W, np.array([0.0, 1.0]), out)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        E.embedding_forward(W, np.array([0, 1]), np.empty((2, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64"):
        E.embedding_forward(W, np.array([0, 1]), np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="padding_idx must be in"):
        E.embedding_backward(np.ones((2, 3)), np.array([0, 1]), np.zeros((5, 3)), padding_idx=5)
    with pytest.raises(ValueError, match="norm_type"):
        E.embedding_renorm_(W, np.array([0]), 1.0, norm_type=0)
    with pytest.raises(ValueError, match="max_norm"):
        E.embedding_renorm_(W, np.array([0]), -1.0)


# ---------------------------------------------------------------------------------------------
# the module against torch
# ---------------------------------------------------------------------------------------------

torch_cases = pytest.mark.parametrize("kwargs", [
    {},
    {"padding_idx": 2},
    {"padding_idx": -1, "scale_grad_by_freq": True},
    {"max_norm": 1.0},
    {"max_norm": 0.5, "norm_type": 1.0, "padding_idx": 0},
], ids=["plain", "padding", "neg_padding+freq", "max_norm", "max_norm_l1+padding"])


@torch_cases
def test_forward_backward_and_renorm_equal_torch(backend, dtype, kwargs):
    torch = pytest.importorskip("torch")
    fr.set_backend(backend)
    tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    V, D = 7, 5
    ours = nn.Embedding(V, D, dtype=dtype, **kwargs)
    theirs = torch.nn.Embedding(V, D, dtype=tdt, **kwargs)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(_table(V, D, np.float64, seed=5)))
    ours.load_state_dict({"weight": theirs.weight.detach().numpy()})
    idx = np.array([[0, 2, 6, 2], [6, 6, 1, 0], [3, 2, 2, 2]])       # duplicates, padding
    dy = np.random.default_rng(6).standard_normal((3, 4, D)).astype(dtype)
    for step in range(2):                        # the second call accumulates into .grad
        yt = theirs(torch.tensor(idx))
        yt.backward(torch.tensor(dy))
        y = ours(idx)
        assert ours.backward(dy) is None
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(),
                                   rtol=rtol, atol=rtol)
        np.testing.assert_allclose(ours.weight.data, theirs.weight.detach().numpy(),
                                   rtol=rtol, atol=rtol)        # max_norm renormalized both
    if "padding_idx" in kwargs:
        assert not ours.weight.grad[ours.padding_idx].any()


def test_index_input_of_any_shape_and_int32(dtype):
    torch = pytest.importorskip("torch")
    m = nn.Embedding(4, 3, dtype=dtype)
    t = torch.nn.Embedding(4, 3)
    t.weight.data = torch.tensor(m.weight.data)
    for idx in (np.array(2), np.array([3]), np.arange(24).reshape(2, 3, 4) % 4,
                np.array([[1, 0]], np.int32), np.zeros((0, 5), np.int64),
                np.arange(8).reshape(2, 4)[:, ::2] % 4):            # non-contiguous
        y = m(idx)
        want = t(torch.tensor(idx)).detach().numpy()
        assert y.shape == want.shape == (*idx.shape, 3) and y.dtype == dtype
        np.testing.assert_array_equal(y, want)
        m.backward(np.ones_like(y))


def test_bad_input_is_refused_naming_the_value():
    m = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match=r"\[0, 5\).*got 7"):
        m(np.array([[0, 7]]))
    with pytest.raises(IndexError, match="got -2"):
        m(np.array([-2]))
    with pytest.raises(TypeError, match="int64 or int32.*float32"):
        m(np.array([1.0], np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray.*list"):
        m([1, 2])
    m(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"grad_output has shape \(3, 2\)"):
        m.backward(np.ones((3, 2), np.float32))


def test_constructor_checks_as_torch():
    with pytest.raises(ValueError, match="no sparse gradients"):
        nn.Embedding(5, 2, sparse=True)
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        nn.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        nn.Embedding(5, 2, padding_idx=-6)
    with pytest.raises(ValueError, match="num_embeddings must be a positive integer"):
        nn.Embedding(0, 2)
    with pytest.raises(ValueError, match="max_norm"):
        nn.Embedding(5, 2, max_norm=-1.0)
    with pytest.raises(ValueError, match="norm_type"):
        nn.Embedding(5, 2, norm_type=-2.0)
    assert nn.Embedding(5, 2, padding_idx=-2).padding_idx == 3                  # as torch


def test_init_is_standard_normal_with_the_padding_row_zeroed():
    fr.manual_seed(0)
    m = nn.Embedding(2000, 50, padding_idx=7, dtype=np.float64)
    w = np.delete(m.weight.data, 7, axis=0)
    assert not m.weight.data[7].any()
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
    fr.manual_seed(0)
    np.testing.assert_array_equal(nn.Embedding(2000, 50, padding_idx=7,
                                               dtype=np.float64).weight.data, m.weight.data)
    assert m.weight.regularize and m.weight.requires_grad


def test_repr_is_torchs():
    torch = pytest.importorskip("torch")
    for kw in ({}, {"padding_idx": 1, "max_norm": 2.0, "norm_type": 1.0,
                    "scale_grad_by_freq": True}):
        assert repr(nn.Embedding(5, 3, **kw)) == repr(torch.nn.Embedding(5, 3, **kw))


def test_from_pretrained_freezes_and_copies(dtype):
    torch = pytest.importorskip("torch")
    w = _table(4, 3, dtype)
    m = nn.Embedding.from_pretrained(w, padding_idx=1)
    t = torch.nn.Embedding.from_pretrained(torch.tensor(w), padding_idx=1)
    np.testing.assert_array_equal(m.weight.data, t.weight.detach().numpy())    # padding kept
    assert m.weight.data is not w and m.weight.dtype == dtype
    assert m.weight.requires_grad is t.weight.requires_grad is False
    m(np.array([0, 1]))
    m.backward(np.ones((2, 3), dtype))
    assert m.weight.grad is None                                 # frozen: no gradient
    m2 = nn.Embedding.from_pretrained(w, freeze=False)
    assert m2.weight.requires_grad and (m2.num_embeddings, m2.embedding_dim) == (4, 3)
    with pytest.raises(ValueError, match="2-dimensional"):
        nn.Embedding.from_pretrained(np.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Embedding.from_pretrained(np.ones((3, 2), np.int64))


# ---------------------------------------------------------------------------------------------
# in a model: training against torch, save / load, compile
# ---------------------------------------------------------------------------------------------

def _model(dt):
    return nn.Sequential(nn.Embedding(9, 4, padding_idx=0, dtype=dt), nn.Flatten(),
                         nn.Linear(12, 3, dtype=dt))


def test_a_model_with_an_embedding_trains_as_torch():
    torch = pytest.importorskip("torch")
    fr.manual_seed(0)
    ours = _model(np.float64)
    theirs = torch.nn.Sequential(torch.nn.Embedding(9, 4, padding_idx=0), torch.nn.Flatten(),
                                 torch.nn.Linear(12, 3)).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    opt = fr.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    g = np.random.default_rng(0)
    for _ in range(3):
        x, y = g.integers(0, 9, (8, 3)), g.integers(0, 3, 8)
        opt.zero_grad()
        topt.zero_grad()
        loss = loss_fn(ours(x), y)
        assert ours.backward(loss_fn.backward()) is None
        opt.step()
        tloss = tloss_fn(theirs(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-12, atol=1e-12)


def test_save_load_and_compile_run_the_lookup(tmp_path):
    fr.manual_seed(1)
    m = _model(np.float32).eval()
    frio.save(m, tmp_path / "e.fr")
    loaded = frio.load(tmp_path / "e.fr")
    x = np.array([[1, 0, 8], [2, 2, 3]])
    np.testing.assert_array_equal(loaded(x), m(x))
    pred = inference.compile(loaded)
    assert pred.stages[0] == "module EmbeddingLookup"
    np.testing.assert_allclose(pred(x), m(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pred.predict(x[0]), m(x[:1])[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="whole numbers, got 0.5"):
        pred(np.array([[1.0, 0.5, 2.0]]))
    with pytest.raises(IndexError, match="got 9"):
        pred(np.array([[1, 9, 2]]))


def test_max_norm_and_inf_norm_survive_a_model_file(tmp_path):
    m = nn.Sequential(nn.Embedding(6, 2, max_norm=1.0, norm_type=float("inf"),
                                   scale_grad_by_freq=True))
    frio.save(m, tmp_path / "n.fr")
    e = frio.load(tmp_path / "n.fr")[0]
    assert (e.max_norm, e.norm_type, e.scale_grad_by_freq) == (1.0, float("inf"), True)


# ---------------------------------------------------------------------------------------------
# CUDA (numba's simulator unless FASTREG_TEST_REAL_CUDA=1)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", (1, 2, 7, 33))
def test_cuda_kernels_equal_the_reference(dev, dtype, n):
    V, D = 7, 3 if n < 33 else 2
    W = _table(V, D, dtype)
    idx = _indices(n, V, _idt(n))
    out = dev(np.zeros((*idx.shape, D), dtype))
    E.embedding_forward(dev(W), dev(idx), out)
    np.testing.assert_array_equal(out.copy_to_host(), ref.embedding_forward(W, idx))
    dy = np.random.default_rng(2).standard_normal((*idx.shape, D)).astype(dtype)
    old = _table(V, D, dtype, seed=3)
    for pad, freq in ((None, False), (int(idx.reshape(-1)[0]), True)):
        gw = dev(old)
        E.embedding_backward(dev(dy), dev(idx), gw, padding_idx=pad, scale_grad_by_freq=freq)
        want = old.astype(np.float64) + ref.embedding_backward(dy, idx, V, pad, freq)
        rtol, atol = tol(dtype, f32=1e-5, f64=1e-13)
        np.testing.assert_allclose(gw.copy_to_host(), want, rtol=rtol, atol=atol)
    w = dev(W)
    E.embedding_renorm_(w, dev(idx), 1.0, 3.0)
    rtol, atol = tol(dtype, f32=1e-6, f64=1e-14)
    np.testing.assert_allclose(w.copy_to_host(), ref.embedding_renorm_(W, idx, 1.0, 3.0),
                               rtol=rtol, atol=atol)


def test_cuda_backward_equals_the_cpu_bits(dev):
    """Sort-based on the GPU, row ranges on the CPU: both sum each row in input order."""
    g = np.random.default_rng(4)
    idx = g.integers(0, 5, 300)
    dy = g.standard_normal((300, 4)) * 10.0 ** g.integers(-4, 4, (300, 1))
    cpu = np.zeros((5, 4))
    E.embedding_backward(dy, idx, cpu, padding_idx=2, backend="numba")
    gpu = dev(np.zeros((5, 4)))
    E.embedding_backward(dev(dy), dev(idx), gpu, padding_idx=2)
    np.testing.assert_array_equal(gpu.copy_to_host(), cpu)


def test_cuda_module_trains_as_the_host_module(cuda):
    fr.manual_seed(0)
    host = nn.Embedding(6, 3, padding_idx=1, max_norm=1.5, scale_grad_by_freq=True,
                        dtype=np.float64)
    fr.manual_seed(0)
    gpu = nn.Embedding(6, 3, padding_idx=1, max_norm=1.5, scale_grad_by_freq=True,
                       dtype=np.float64).to("cuda")
    x = np.array([[0, 1, 5], [5, 5, 2]])
    dy = np.random.default_rng(0).standard_normal((2, 3, 3))
    y = gpu(x)
    np.testing.assert_allclose(y.copy_to_host(), host(x), rtol=1e-14)
    assert gpu.backward(dy) is None and host.backward(dy) is None
    np.testing.assert_allclose(gpu.weight.grad.copy_to_host(), host.weight.grad, rtol=1e-14)
    np.testing.assert_allclose(gpu.weight.data.copy_to_host(), host.weight.data, rtol=1e-14)
    with pytest.raises(IndexError, match="got 6"):
        gpu(np.array([6]))
    with pytest.raises(ValueError, match="module is on the CPU"):
        host(cuda.to_device(x))
