"""The Module API on the CUDA backend: a model on the GPU trains exactly like on the CPU.

Runs in numba's CUDA simulator (tests/conftest.py), so every model here is tiny. The CPU run is
the reference: the same seed gives the same initial weights and the same dropout masks (the
Philox counters are reserved identically on both sides), so losses, parameters and optimizer
state must agree to rounding.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastreg as fr
from fastreg._kernels.runtime import cuda as _cuda_runtime

pytestmark = pytest.mark.usefixtures("cuda")


def _tol(dt):
    return ({"rtol": 2e-4, "atol": 2e-5} if np.dtype(dt) == np.float32
            else {"rtol": 1e-9, "atol": 1e-11})


def _mlp(dt, p_drop=0.25):
    # no bias before BatchNorm: its gradient is zero up to rounding, and Adam would turn that
    # rounding noise into full-size steps of either sign (CPU and GPU round differently)
    fr.manual_seed(7)
    return fr.nn.Sequential(
        fr.nn.Linear(6, 9, bias=False, dtype=dt), fr.nn.BatchNorm1d(9, dtype=dt), fr.nn.ReLU(),
        fr.nn.Dropout(p_drop),
        fr.nn.Linear(9, 7, dtype=dt), fr.nn.LayerNorm(7, dtype=dt), fr.nn.Tanh(),
        fr.nn.Linear(7, 5, dtype=dt),
    )


def _data(dt, n=11, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype(dt), rng.integers(0, 5, n)


def _train(model, x, y, steps, make_opt=None, loss_fn=None):
    opt = (make_opt or (lambda m: fr.optim.AdamW(fr.optim.param_groups(m, weight_decay=0.1,
                                                                       l2=1e-3), lr=0.05)))(model)
    loss_fn = loss_fn or fr.nn.CrossEntropyLoss(label_smoothing=0.1)
    fr.manual_seed(3)
    losses = []
    for _ in range(steps):
        out = model(x)
        losses.append(loss_fn(out, y) + opt.penalty())
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return losses, opt


def _params(model):
    return [fr.cuda.to_host(p.data) for p in model.parameters()]


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
def test_training_steps_on_cuda_equal_cpu(dt):
    x, y = _data(dt)
    cpu = _mlp(dt)
    gpu = _mlp(dt).to("cuda")
    assert all(p.is_cuda for p in gpu.parameters())
    assert gpu.device == "cuda" and cpu.device == "cpu"
    lc, oc = _train(cpu, x, y, 2)
    lg, og = _train(gpu, x, y, 2)
    np.testing.assert_allclose(lg, lc, **_tol(dt))
    for a, b in zip(_params(gpu), _params(cpu)):
        np.testing.assert_allclose(a, b, **_tol(dt))
    # optimizer state comes back as host arrays in torch's layout
    sg, sc = og.state_dict()["state"], oc.state_dict()["state"]
    assert sg.keys() == sc.keys()
    for k in sc:
        for name in ("exp_avg", "exp_avg_sq"):
            assert isinstance(sg[k][name], np.ndarray)
            np.testing.assert_allclose(sg[k][name], sc[k][name], **_tol(dt))
    # BatchNorm running statistics live on the device and match
    np.testing.assert_allclose(fr.cuda.to_host(gpu[1].running_mean), cpu[1].running_mean,
                               **_tol(dt))
    assert int(gpu[1].num_batches_tracked) == 2


def test_activations_stay_on_device_and_outputs_are_device_arrays():
    x, _ = _data(np.float32)
    gpu = _mlp(np.float32).to("cuda").eval()
    out = gpu(x)                                   # host batch in, device logits out
    assert fr.cuda.is_device_array(out)
    for m in gpu:
        if "out" in m._out_buffers:
            assert fr.cuda.is_device_array(m._out_buffers["out"][1])
    cpu = _mlp(np.float32).eval()
    np.testing.assert_allclose(fr.cuda.to_host(out), cpu(x), **_tol(np.float32))
    # the caller's copy is not overwritten by the next call
    first = fr.cuda.to_host(out)
    gpu(x * 2)
    np.testing.assert_array_equal(fr.cuda.to_host(out), first)


def test_set_backend_cuda_moves_models_on_first_call_and_optimizer_follows():
    dt = np.float32
    x, y = _data(dt)
    cpu = _mlp(dt)
    lc, _ = _train(cpu, x, y, 2)
    gpu = _mlp(dt)
    fr.set_backend("cuda")
    lg, opt = _train(gpu, x, y, 2)        # optimizer built while the model was still on the host
    assert gpu.device == "cuda"
    assert all(fr.cuda.is_device_array(f.data) for f in opt._flat)
    np.testing.assert_allclose(lg, lc, **_tol(dt))
    for a, b in zip(_params(gpu), _params(cpu)):
        np.testing.assert_allclose(a, b, **_tol(dt))


def test_moving_mid_training_keeps_optimizer_state():
    dt = np.float64
    x, y = _data(dt)
    ref = _mlp(dt, p_drop=0.0)
    lr_, _ = _train(ref, x, y, 3, make_opt=lambda m: fr.optim.SGD(m.parameters(), lr=0.1,
                                                                   momentum=0.9))
    model = _mlp(dt, p_drop=0.0)
    opt = fr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = fr.nn.CrossEntropyLoss(label_smoothing=0.1)
    losses = []
    for step in range(3):
        if step == 1:
            model.to("cuda")              # momentum buffers must follow to the device
        losses.append(loss_fn(model(x), y))
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    np.testing.assert_allclose(losses, lr_, **_tol(dt))
    assert fr.cuda.is_device_array(opt._flat[0].state["momentum_buffer"])
    model.to("cpu")
    for a, b in zip(_params(model), _params(ref)):
        np.testing.assert_allclose(a, b, **_tol(dt))


def test_state_dict_save_load_roundtrip(tmp_path):
    dt = np.float32
    x, y = _data(dt)
    gpu = _mlp(dt).to("cuda")
    _train(gpu, x, y, 1)
    sd = gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    path = tmp_path / "m.npz"
    fr.save(gpu, path)
    back = fr.load(path)
    np.testing.assert_allclose(back.eval()(x), fr.cuda.to_host(gpu.eval()(x)), **_tol(dt))
    fresh = _mlp(dt, p_drop=0.5).to("cuda")
    fresh.load_state_dict(sd)
    for a, b in zip(_params(fresh), _params(gpu)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("loss_name", ["mse", "bce", "ce_weighted"])
def test_other_losses_on_cuda_equal_cpu(loss_name):
    dt = np.float64
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 5)).astype(dt)
    if loss_name == "mse":
        make = fr.nn.MSELoss
        t = rng.standard_normal((7, 5))
    elif loss_name == "bce":
        pw = rng.uniform(0.5, 2, 5)
        w = rng.uniform(0.5, 2, (7, 5))
        make = lambda: fr.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw)
        t = rng.uniform(0, 1, (7, 5))
    else:
        cw = rng.uniform(0.5, 2, 5)
        make = lambda: fr.nn.CrossEntropyLoss(weight=cw, label_smoothing=0.2)
        t = rng.integers(0, 5, 7)
    lc, lg = make(), make().to("cuda")
    vc = lc(x, t)
    vg = lg(fr.cuda.to_device(x), t)
    np.testing.assert_allclose(vg, vc, rtol=1e-10)
    gc = lc.backward()
    gg = lg.backward()
    assert fr.cuda.is_device_array(gg)
    np.testing.assert_allclose(fr.cuda.to_host(gg), gc, rtol=1e-10, atol=1e-12)


def test_eval_mode_batchnorm_and_classic_dropout_backward_on_cuda():
    dt = np.float64
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4))
    dy = rng.standard_normal((5, 4))
    for make in (lambda: fr.nn.BatchNorm1d(4, dtype=dt),
                 lambda: fr.nn.Dropout(0.3, mode="classic"),
                 lambda: fr.nn.LeakyReLU(-0.5)):
        c, g = make(), make()
        if isinstance(c, fr.nn.BatchNorm1d):
            c.running_mean[...] = rng.standard_normal(4)
            c.running_var[...] = rng.uniform(0.5, 2, 4)
            c.weight.data[...] = rng.uniform(0.5, 2, 4)
            g.load_state_dict(c.state_dict())
        g.to("cuda")
        c.eval()
        g.eval()
        yc = c.forward(x)
        yg = g.forward(fr.cuda.to_device(x))
        np.testing.assert_allclose(fr.cuda.to_host(yg), yc, rtol=1e-12)
        dc = c.backward(dy)
        dg = g.backward(fr.cuda.to_device(dy))
        np.testing.assert_allclose(fr.cuda.to_host(dg), dc, rtol=1e-12, atol=1e-14)
        for pc, pg in zip(c.parameters(), g.parameters()):
            np.testing.assert_allclose(fr.cuda.to_host(pg.grad), pc.grad, rtol=1e-12)


def test_fit_on_cuda_equals_fit_on_cpu():
    dt = np.float32
    x, y = _data(dt, n=10, seed=4)
    hist = []
    for device in ("cpu", "cuda"):
        model = _mlp(dt).to(device)
        opt = fr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist.append(fr.train.fit(model, fr.nn.CrossEntropyLoss(), opt, (x, y), epochs=2,
                                 batch_size=10, progress=False, seed=1))
    np.testing.assert_allclose(hist[1].history["loss"], hist[0].history["loss"], **_tol(dt))
    np.testing.assert_allclose(hist[1].history["accuracy"], hist[0].history["accuracy"])


def test_device_input_to_cpu_model_is_a_clear_error():
    model = _mlp(np.float32).to("cpu")
    x, _ = _data(np.float32)
    with pytest.raises(ValueError, match="model.to\\('cuda'\\)"):
        model(fr.cuda.to_device(x))
    with pytest.raises(ValueError, match="device must be one of"):
        model.to("tpu")


def test_mixed_host_and_device_kernel_arguments_are_rejected():
    from fastreg._kernels import matmul
    x = np.ones((3, 4), np.float32)
    w = fr.cuda.to_device(np.ones((2, 4), np.float32))
    out = np.empty((3, 2), np.float32)
    with pytest.raises(ValueError, match="same place"):
        matmul.linear_forward(x, w, None, out)


def test_set_backend_cuda_without_device_says_so(monkeypatch):
    monkeypatch.setitem(_cuda_runtime._state, "available", False)
    with pytest.raises(RuntimeError, match="no CUDA device was found.*NUMBA_ENABLE_CUDASIM=1"):
        fr.set_backend("cuda")
    assert fr.get_backend() != "cuda"
    with pytest.raises(RuntimeError, match="no CUDA device was found"):
        _mlp(np.float32).to("cuda")


def test_no_gpu_error_in_a_fresh_process_without_the_simulator():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import fastreg\n"
            "try:\n    fastreg.set_backend('cuda')\n"
            "except RuntimeError as e:\n    print('ERR', e)\n"
            "else:\n    print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    if r.stdout.startswith("OK"):
        pytest.skip("this machine has a CUDA GPU")
    assert r.stdout.startswith("ERR no CUDA device was found"), r.stdout + r.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in r.stdout
    assert 'pip install "fastreg[cuda]"' in r.stdout


def test_gpu_check_script_smoke_in_simulator():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_check.py"),
                        "--smoke"], capture_output=True, text=True, env=env, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    assert r.stdout.count("ok (") >= 14, r.stdout


def test_inference_compile_of_a_gpu_model_gives_a_host_predictor():
    dt = np.float32
    x, y = _data(dt)
    gpu = _mlp(dt).to("cuda")
    _train(gpu, x, y, 1)
    gpu.eval()
    pred = fr.inference.compile(gpu)
    np.testing.assert_allclose(pred(x), fr.cuda.to_host(gpu(x)), **_tol(dt))
