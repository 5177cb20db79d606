"""Quantized serving: compile(model, weights="int8" | "bf16"), its kernels, files and threads.

The int8 kernels are checked against a NumPy twin doing the same integer arithmetic (the
activation quantization and the int32 accumulators equal bit for bit; outputs within float32
rounding of the float64 epilogue), the bf16 ones against float64 products with the
bf16-rounded weights; the AVX2 and portable C paths must agree bit for bit.
"""
import threading

import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg._kernels import quant as Q

cy = pytest.importorskip("fastreg._kernels.quant.cy",
                         reason="the Cython kernels are not built (python setup.py build_ext)")

SIZES_K = (1, 2, 7, 33, 257, 1030)
BATCHES = (1, 2, 7, 64)


# ---------------------------------------------------------------------------- NumPy twins

def ref_quantize_rows(x):
    """The kernels' activation quantization, in float32 NumPy (same operations, same order)."""
    lo = np.minimum(np.float32(0), x.min(1))
    hi = np.maximum(np.float32(0), x.max(1))
    s = (hi - lo) / np.float32(127)
    inv = np.float32(1) / s
    z = np.clip(np.rint(-lo * inv), 0, 127).astype(np.int32)
    q = np.clip(np.rint(x * inv[:, None]) + z[:, None], 0, 127).astype(np.uint8)
    return q, s.astype(np.float32), z


def run_int8(x, q, s, b, act=0, slope=0.01, portable=0):
    """(out, acc, xq, sx, zp) of the int8 kernel on float32 x (N, K) with weights q, s."""
    packed, cs, kp = Q.pack_int8(q)
    N, M = x.shape[0], q.shape[0]
    xq = np.empty((N, kp), np.uint8)
    sx = np.empty(N, np.float32)
    zp = np.empty(N, np.int32)
    out = np.empty((N, M), np.float32)
    acc = np.empty((N, M), np.int32)
    cy.q8_linear(x, xq, sx, zp, packed, s, cs, b, out, act, slope, acc, portable)
    return out, acc, xq[:, :x.shape[1]], sx, zp


def run_bf16(x, bits, b, act=0, slope=0.01, portable=0):
    packed, kp = Q.pack_bf16(bits)
    out = np.empty((x.shape[0], bits.shape[0]), np.float32)
    cy.bf16_linear(x, packed, b, out, kp, act, slope, portable)
    return out


# ---------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("N", BATCHES)
def test_int8_kernel_equals_integer_reference_bit_for_bit(N):
    rng = np.random.default_rng(N)
    for K in SIZES_K:
        for M in (1, 7, 33):
            x = (rng.standard_normal((N, K)) * 3 + 0.5).astype(np.float32)
            W = rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal(M).astype(np.float32)
            q, s = Q.quantize_int8(W)
            out, acc, xq, sx, zp = run_int8(x, q, s, b)
            rq, rs, rz = ref_quantize_rows(x)
            assert np.array_equal(xq, rq) and np.array_equal(sx, rs) and np.array_equal(zp, rz)
            racc = rq.astype(np.int64) @ q.astype(np.int64).T
            assert np.array_equal(acc, racc), (N, K, M)
            y = ((racc - rz[:, None] * q.astype(np.int64).sum(1))
                 * (rs.astype(np.float64)[:, None] * s.astype(np.float64)) + b)
            np.testing.assert_allclose(out, y, rtol=1e-6, atol=1e-6 * np.abs(y).max())
            portable = run_int8(x, q, s, b, portable=1)
            for a, c in zip((out, acc, xq, sx, zp), portable):
                assert np.array_equal(a, c), (N, K, M)     # AVX2 == portable C, bit for bit


def _chain_layers(dims, acts, seed):
    """Q8Chain layers (K, M, packed, sw, cs, bias, kp, act, slope) of random weights."""
    rng = np.random.default_rng(seed)
    layers = []
    for K, M, act in zip(dims[:-1], dims[1:], acts):
        q, s = Q.quantize_int8(rng.standard_normal((M, K)).astype(np.float32))
        packed, cs, kp = Q.pack_int8(q)
        b = rng.standard_normal(M).astype(np.float32)
        layers.append((K, M, packed, s, cs, b, kp, act, 0.05, q))
    return layers


@pytest.mark.parametrize("N", (1, 2, 7, 65))
def test_int8_chain_is_the_layers_one_by_one_for_every_thread_count_and_path(N):
    # one C call for the whole run of layers (one OpenMP region, each layer quantizing its
    # input): the same bits as q8_linear layer by layer; parallel_min_macs=0: every N runs on
    # the threads (N <= 4: each thread quantizes the rows itself)
    dims, acts = (1030, 47, 33, 2, 7), (1, 4, 2, 3)     # K = 47: 32 + 8 + 7 in quantize
    layers = _chain_layers(dims, acts, N)
    x = (np.random.default_rng(N).standard_normal((N, dims[0])) * 2 - 0.3).astype(np.float32)
    h = x
    for K, M, packed, s, cs, b, kp, act, slope, q in layers:
        h = run_int8(h, q, s, b, act, slope)[0]
    before = fr.get_num_threads()
    try:
        for portable in (0, 1):
            chain = cy.Q8Chain([lay[:9] for lay in layers], portable, 0.0)
            assert (chain.in_features, chain.out_features) == (dims[0], dims[-1])
            for nt in (1, 2, 3):
                fr.set_num_threads(nt)
                out = np.full((N, dims[-1]), np.nan, np.float32)
                assert chain.run(x, out) is out
                assert np.array_equal(out, h), (portable, nt)
                assert np.array_equal(chain.fast(x), h)
        assert np.array_equal(chain.fast(x[0]), h[0])
        for bad in (x.astype(np.float64), x[:, :-1], np.asfortranarray(x) if N > 1 else x.T,
                    x.tolist()):
            assert chain.fast(bad) is None
        assert chain.fast(x, out=np.empty((N + 1, dims[-1]), np.float32)) is None
    finally:
        fr.set_num_threads(before)
    with pytest.raises(ValueError, match="layer 1 takes 33 features, layer 0 gives 47"):
        cy.Q8Chain([layers[0][:9], layers[2][:9]])


def test_int8_predictor_runs_its_linear_runs_as_chains():
    m = _mlp(5)
    p = fr.inference.compile(m, weights="int8")
    assert sorted((i, j) for i, (j, _) in p._chains.items()) == [(0, 2), (3, 4)]
    x = np.random.default_rng(5).standard_normal((7, 20)).astype(np.float32)
    h = x                     # the stages one by one, without the chains (plan: chain, LN, chain)
    for i, op in enumerate(p._ops):
        ql = p._qlinear.get(i)
        h = ql.stage(7)(h).copy() if ql is not None else p._plan(7)[1](h).copy()
    assert np.array_equal(p(x), h)
    whole = fr.inference.compile(nn.Sequential(nn.Linear(20, 9), nn.ReLU(),
                                               nn.Linear(9, 4)).eval(), weights="int8")
    assert whole._fast is not None and np.array_equal(whole(x), whole(x.copy()))
    assert fr.inference.compile(m, weights="bf16")._chains == {}


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_epilogues_of_simd_and_portable_paths_are_the_same_bits(weights):
    # every activation, full and partial 4-column blocks, a NaN row and -0.0 outputs
    rng = np.random.default_rng(20)
    x = rng.standard_normal((7, 33)).astype(np.float32)
    x[2, 5] = np.nan
    x[4] = 0.0
    W = rng.standard_normal((9, 33)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    b[3] = -0.0
    for act in range(5):
        if weights == "int8":
            q, s = Q.quantize_int8(W)
            a = run_int8(x, q, s, b, act, 0.05)[0]
            c = run_int8(x, q, s, b, act, 0.05, portable=1)[0]
        else:
            bits = Q.to_bf16(W)
            a, c = run_bf16(x, bits, b, act, 0.05), run_bf16(x, bits, b, act, 0.05, portable=1)
        assert np.isnan(a[2]).all()
        np.testing.assert_array_equal(a.view(np.uint32), c.view(np.uint32))


@pytest.mark.parametrize("N", BATCHES)
def test_bf16_kernel_equals_float64_reference_with_rounded_weights(N):
    rng = np.random.default_rng(10 + N)
    for K in SIZES_K:
        for M in (1, 7, 33):
            x = rng.standard_normal((N, K)).astype(np.float32)
            W = rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal(M).astype(np.float32)
            bits = Q.to_bf16(W)
            out = run_bf16(x, bits, b)
            Wr = Q.bf16_to_float32(bits).astype(np.float64)
            y = x.astype(np.float64) @ Wr.T + b
            # float32 accumulation of K products: error <= K * eps32 * sum |x w|
            tol = 4 * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(Wr).T + np.abs(b)) * (
                1 + np.sqrt(K))
            assert (np.abs(out - y) <= tol).all(), (N, K, M)
            assert np.array_equal(out, run_bf16(x, bits, b, portable=1)), (N, K, M)


def test_int8_pair_sums_cannot_saturate():
    # Every product at its extreme: xq = 127 everywhere, |wq| = 127. With 8-bit activations
    # (255) a maddubs pair would be 2 * 255 * 127 = 64770 > 32767 and saturate; with 7-bit
    # ones it is 32258 and the int32 sums are exact.
    K = 1030
    x = np.full((3, K), 5.0, np.float32)
    x[1] = 1e30          # huge but finite: still xq = 127
    x[2, ::2] = -5.0     # both ends of the range: xq in {0, 127}, zero point 63 or 64
    W = np.ones((4, K), np.float32)
    W[1] = -1.0
    W[2, ::2] = -1.0
    W[3] = 1e-3 * np.where(np.arange(K) % 3, 1.0, -1.0)
    q, s = Q.quantize_int8(W)
    assert np.abs(q).max() == 127
    for portable in (0, 1):
        out, acc, xq, _, _ = run_int8(x, q, s, np.zeros(4, np.float32), portable=portable)
        assert xq.max() == 127 and xq[:2].min() == 127
        racc = xq.astype(np.int64) @ q.astype(np.int64).T
        assert np.array_equal(acc, racc)
        assert acc[0, 0] == K * 127 * 127 and acc[0, 1] == -K * 127 * 127
        np.testing.assert_allclose(out[0, :2], [5.0 * K, -5.0 * K], rtol=1e-6)
        np.testing.assert_allclose(out[1, :2], [1e30 * K, -1e30 * K], rtol=1e-6)
        y = x.astype(np.float64) @ (q * s[:, None]).astype(np.float64).T
        np.testing.assert_allclose(out[2], y[2], rtol=0.02, atol=0.02 * np.abs(y[2]).max())


def test_int8_quantization_edge_rows():
    x = np.array([[0.0, 0.0, 0.0], [1.0, np.nan, 2.0], [1.0, np.inf, 0.0],
                  [-1.0, -2.0, -3.0]], np.float32)
    W = np.array([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]], np.float32)
    b = np.array([0.5, -0.25], np.float32)
    q, s = Q.quantize_int8(W)
    assert s[1] == 1.0 and not q[1].any()          # an all-zero weight row
    np.testing.assert_array_equal(q[0], [42, 85, -127])
    out = run_int8(x, q, s, b, act=1)[0]           # relu
    np.testing.assert_array_equal(out[0], [0.5, 0.0])        # zero row: act(bias)
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()  # non-finite input: NaN row
    np.testing.assert_allclose(out[3], [max(0.0, 4.0 + 0.5), 0.0], atol=0.05)


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38, 1e-40,
                        np.inf, -np.inf, np.nan], np.float32)
    ties = (np.arange(64, dtype=np.uint32) << 16 | 0x8000).view(np.float32)   # exact halves
    W = np.concatenate([rng.standard_normal(1000).astype(np.float32), special, ties])
    ours = Q.to_bf16(W)
    theirs = torch.from_numpy(W).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(W)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(Q.bf16_to_float32(ours[nan])).all()


# ---------------------------------------------------------------------------- the predictor

def _mlp(seed=0, K=20):
    fr.manual_seed(seed)
    m = fr.nn.Sequential(fr.nn.Linear(K, 33), fr.nn.BatchNorm1d(33), fr.nn.ReLU(),
                         fr.nn.Dropout(0.2), fr.nn.Linear(33, 7), fr.nn.Tanh(),
                         fr.nn.LayerNorm(7), fr.nn.Linear(7, 3), fr.nn.LeakyReLU(0.1))
    m.eval()
    return m


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_quantized_predictor_is_close_to_float_and_describes_itself(weights):
    m = _mlp()
    x = np.random.default_rng(1).standard_normal((7, 20)).astype(np.float32)
    ref = fr.inference.compile(m)(x)
    p = fr.inference.compile(m, weights=weights)
    y = p(x)
    assert y.dtype == np.float32 and y.shape == (7, 3)
    np.testing.assert_allclose(y, ref, atol=0.05 if weights == "int8" else 5e-3)
    assert not np.array_equal(y, ref)                  # the quantized kernels ran, not float
    np.testing.assert_array_equal(p(x[3]), y[3])       # one sample, (K,) -> (M,)
    assert p.stages == ["linear+relu 20->33 " + weights, "linear+tanh 33->7 " + weights,
                        "layernorm 7", "linear+leaky_relu 7->3 " + weights]
    assert f"weights={weights!r}" in repr(p)
    d = p.describe()
    assert d.count(weights + " weights") == 3 and "layernorm 7: float32" in d


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_all_linear_model_runs_quantized_not_the_float_chain(weights):
    # a model of Linear layers only is one float LinearChain in the float predictor; the
    # quantized predictor must not inherit it (it would serve float32 results silently)
    fr.manual_seed(3)
    m = nn.Sequential(nn.Linear(20, 33), nn.ReLU(), nn.Linear(33, 3)).eval()
    x = np.random.default_rng(4).standard_normal((5, 20)).astype(np.float32)
    p = fr.inference.compile(m, weights=weights)
    for xb in (x, x[:1], x[0]):
        y, ref = p(xb), fr.inference.compile(m)(xb)
        np.testing.assert_allclose(y, ref, atol=0.05 if weights == "int8" else 5e-3)
        assert not np.array_equal(y, ref)


def test_float32_weights_is_the_float_predictor():
    m = _mlp()
    x = np.random.default_rng(2).standard_normal((5, 20)).astype(np.float32)
    np.testing.assert_array_equal(fr.inference.compile(m, weights="float32")(x),
                                  fr.inference.compile(m)(x))


@pytest.mark.parametrize("bad", ["int4", "INT8", 8, None.__class__])
def test_weights_argument_is_validated(bad):
    with pytest.raises(ValueError, match=r"weights must be one of 'float32', 'bf16', 'int8'"):
        fr.inference.compile(_mlp(), weights=bad)


def test_quantized_weights_need_float32():
    with pytest.raises(ValueError, match="dtype must be float32"):
        fr.inference.compile(_mlp(), weights="int8", dtype=np.float64)


class Doubler(fr.nn.Module):
    def forward(self, x):
        return 2.0 * x


def test_custom_module_stage_stays_float32_and_is_said(tmp_path):
    fr.manual_seed(3)
    m = fr.nn.Sequential(fr.nn.Linear(6, 5), fr.nn.ReLU(), Doubler(), fr.nn.Linear(5, 2))
    m.eval()
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    p = fr.inference.compile(m, weights="int8")
    np.testing.assert_allclose(p(x), fr.inference.compile(m)(x), atol=0.05)
    assert "module Doubler: float32: a custom module's own forward (not quantized)" in \
        p.describe()
    with pytest.raises(TypeError, match="custom module"):
        fr.save(p, tmp_path / "p.fr")


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_save_load_round_trip_is_bit_for_bit(tmp_path, weights):
    m = _mlp(4)
    x = np.random.default_rng(4).standard_normal((9, 20)).astype(np.float32)
    p = fr.inference.compile(m, weights=weights)
    y = p(x)
    path = tmp_path / "q.fr"
    from fastreg import _random
    before = _random.default_generator.get_state()
    fr.save(p, path, metadata={"classes": [0, 1, 2]})
    q = fr.load(path)
    assert type(q) is type(p) and q.weights == weights and q.stages == p.stages
    assert q.metadata == {"classes": [0, 1, 2]}
    np.testing.assert_array_equal(q(x), y)
    object.__setattr__(m, "metadata", {"features": ["a"] * 20})   # as fr.load attaches it
    fr.save(fr.inference.compile(m, weights=weights), tmp_path / "m.fr")
    assert fr.load(tmp_path / "m.fr").metadata == {"features": ["a"] * 20}
    assert str(_random.default_generator.get_state()) == str(before)   # saving draws nothing
    # the file is a version-2 model file: a version-1 reader refuses it with a clear error
    from fastreg.io.container import open_container
    with pytest.raises(fr.ModelFileError, match="format version 2 is not supported"):
        open_container(path, "fastreg-model", 1)
    with pytest.raises(fr.ModelFileError, match="load it without model="):
        fr.load(path, model=_mlp())
    # a plain float predictor saves as the model file of its folded stages (see
    # tests/test_inference_load.py)
    fp = fr.inference.compile(m)
    fr.save(fp, tmp_path / "f.fr")
    np.testing.assert_array_equal(fr.inference.load(tmp_path / "f.fr")(x), fp(x))


def test_save_load_keeps_unfolded_stages_bit_for_bit(tmp_path):
    # an affine stage (BatchNorm before an activation), a classic-Dropout scale and a LayerNorm
    # without affine parameters are stored as stand-in layers that fold back to the same values
    nn = fr.nn
    fr.manual_seed(7)
    m = nn.Sequential(nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5), nn.Sigmoid(),
                      nn.Dropout(0.3, mode="classic"), nn.BatchNorm1d(5),
                      nn.LayerNorm(5, elementwise_affine=False), nn.Linear(5, 2))
    rng = np.random.default_rng(7)
    for bn in (m[0], m[5]):
        bn.running_mean[...] = rng.normal(0, 0.5, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 2, bn.num_features)
        bn.weight.data[...] = rng.normal(1, 0.3, bn.num_features)
    m.eval()
    x = rng.standard_normal((5, 6)).astype(np.float32)
    p = fr.inference.compile(m, weights="int8")
    assert p.stages[:4] == ["affine 6", "act 1", "linear+sigmoid 6->5 int8", "scale 0.7"]
    fr.save(p, tmp_path / "p.fr")
    q = fr.load(tmp_path / "p.fr")
    assert q.stages == p.stages
    np.testing.assert_array_equal(q(x), p(x))


def _rewrite(src, dst, edit):
    import json
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            data = edit(info.filename, data)
            zout.writestr(info.filename, data if isinstance(data, bytes) else
                          json.dumps(data))


def test_tampered_quantized_files_are_refused(tmp_path):
    import json
    p = fr.inference.compile(_mlp(5), weights="int8")
    path = tmp_path / "q.fr"
    fr.save(p, path)

    def bump_section(name, data):
        if name == "fastreg.json":
            h = json.loads(data)
            h["quantized"]["version"] = 7
            return h
        return data

    def minus128(name, data):
        if name == "0.weight.npy":
            i = data.index(b"\n") + 1            # first int8 value after the .npy header
            return data[:i] + b"\x80" + data[i + 1:]
        return data

    def drop_scale(name, data):
        if name == "fastreg.json":
            h = json.loads(data)
            h["tensors"]["0.weight_scale"]["shape"] = [34]
            return h
        return data

    for edit, match in ((bump_section, "quantized section version 7 is not supported"),
                        (minus128, "-128"),
                        (drop_scale, "tensor table does not match")):
        bad = tmp_path / f"{edit.__name__}.fr"
        _rewrite(path, bad, edit)
        with pytest.raises(fr.ModelFileError, match=match):
            fr.load(bad)


def test_quantized_predictor_is_thread_safe():
    p = fr.inference.compile(_mlp(6), weights="int8")
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((n, 20)).astype(np.float32) for n in (1, 7, 64, 1, 7, 64)]
    serial = [p(x) for x in xs]
    results: dict = {}
    errors = []

    def work(t):
        try:
            for r in range(30):
                for i, x in enumerate(xs):
                    if (i + t + r) % 2 == 0:
                        y = p(x)
                        if not np.array_equal(y, serial[i]):
                            results[(t, r, i)] = y
        except Exception as exc:       # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not results


def test_digits_accuracy_int8_and_bf16():
    pytest.importorskip("sklearn", reason="the bundled digits come with scikit-learn")
    from fastreg.demo import load_digits_data
    X, y, _ = load_digits_data(0)
    g = np.random.default_rng(0)
    idx = g.permutation(len(X))
    tr, te = idx[:1400], idx[1400:]
    fr.manual_seed(0)
    m = fr.nn.Sequential(fr.nn.Linear(64, 256), fr.nn.ReLU(), fr.nn.Linear(256, 128),
                         fr.nn.ReLU(), fr.nn.Linear(128, 10))
    opt = fr.optim.Adam(m.parameters(), lr=2e-3)
    fr.train.fit(m, fr.nn.CrossEntropyLoss(), opt, train=(X[tr], y[tr]), epochs=8,
                 batch_size=64, progress=False)
    m.eval()
    base = fr.inference.compile(m)(X[te]).argmax(1)
    acc = (base == y[te]).mean()
    assert acc > 0.9
    for weights in ("int8", "bf16"):
        pred = fr.inference.compile(m, weights=weights)(X[te]).argmax(1)
        agree = (pred == base).mean()
        drop = acc - (pred == y[te]).mean()
        assert agree >= 0.995 and drop <= 0.002, (weights, agree, drop)


def test_loading_a_quantized_file_never_imports_numba(tmp_path):
    import subprocess
    import sys
    m = fr.nn.Sequential(fr.nn.Linear(8, 4), fr.nn.ReLU(), fr.nn.Linear(4, 2)).eval()
    path = tmp_path / "q.fr"
    fr.save(fr.inference.compile(m, weights="int8"), path)
    code = ("import sys, numpy as np, fastreg as fr; p = fr.load(sys.argv[1]); "
            "p(np.ones((3, 8), np.float32)); print('numba' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "False"
