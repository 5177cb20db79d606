"""Freezing and unfreezing on the GPU (numba's simulator without one): a step over part of a
group slices the device buffers (data, grad, state, penalty), and follows the CPU bit for bit."""
import numpy as np

import fastreg as fr


def _mlp():
    return fr.nn.Sequential(fr.nn.Linear(5, 6, dtype=np.float64), fr.nn.ReLU(),
                            fr.nn.Linear(6, 3, dtype=np.float64))


def _train(model, x, y, name, kw):
    params = list(model.parameters())
    params[2].requires_grad = False                  # frozen when the optimizer is built
    opt = getattr(fr.optim, name)(model.parameters(), l2=1e-3, **kw)
    loss_fn = fr.nn.CrossEntropyLoss()
    penalties = []
    for step in range(4):
        if step == 1:
            params[2].requires_grad = True           # unfrozen: its own step count from here
        if step == 2:
            params[0].requires_grad = False          # frozen later: skipped, state kept
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        penalties.append(opt.penalty())
    return [fr.cuda.to_host(p.data) for p in params], penalties, opt.state_dict()["state"]


def test_partial_steps_on_device_match_the_host(cuda):
    name, kw = "Adam", {"lr": 0.05, "amsgrad": True}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
    host = _mlp()
    gpu = _mlp()
    gpu.load_state_dict(host.state_dict())
    gpu.to("cuda")
    w_host, pen_host, st_host = _train(host, x, y, name, kw)
    w_gpu, pen_gpu, st_gpu = _train(gpu, x, y, name, kw)
    for a, b in zip(w_gpu, w_host):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pen_gpu, pen_host, rtol=1e-12)
    assert sorted(st_gpu) == sorted(st_host)
    for i in st_host:
        for k, v in st_host[i].items():
            np.testing.assert_allclose(np.asarray(st_gpu[i][k]), np.asarray(v), rtol=1e-12,
                                       atol=1e-14)
