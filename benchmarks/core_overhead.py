"""Python overhead of the core per training step and per batch-1 Linear call (issue 9).

Counts, for one training step of a 784-512-256-10 MLP with BatchNorm, Dropout and AdamW at batch
256 (after warm-up), how often fastreg asks where an array lives ("placement": is_device_array /
on_device / the placement seam's lookups), checks an array (check_array), and tests memory
overlap (may_share_memory), plus the total number of Python function calls inside fastreg.
Then times a batch-1 784->512 float32 Linear: the backend call, the public kernel function and
the module call (median of many calls), and prints the module / backend ratio.

    python benchmarks/core_overhead.py          # run from the repository root
"""
from __future__ import annotations

import collections
import statistics
import sys
import time

import numpy as np

import fastreg as fr
from fastreg import nn

#: Function names that decide where arrays live, before (is_device_array, on_device) and after
#: the placement seam (Module._place_input, placement.of / of_arrays / for_device, owns).
PLACEMENT = {"is_device_array", "on_device", "_on_device", "_place_input", "of", "of_arrays",
             "for_device", "owns"}
CHECKS = {"check_array", "_check_device_array", "float_dtype", "_check_input", "_check_grad",
          "_check_logits"}
OVERLAP = {"may_share_memory", "no_overlap", "_check_outputs_apart", "same_memory", "_apart"}


def _model():
    fr.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(512, 256, bias=False), nn.BatchNorm1d(256),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))


def count_step() -> dict:
    model = _model()
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256)

    def step():
        opt.zero_grad()
        out = model(x)
        loss_fn(out, y)
        model.backward(loss_fn.backward())
        opt.step()

    for _ in range(3):
        step()
    calls: collections.Counter = collections.Counter()

    def prof(frame, event, arg):
        if event == "call":
            g = frame.f_globals.get("__name__", "")
            if g.startswith("fastreg"):
                calls[frame.f_code.co_name] += 1

    sys.setprofile(prof)
    step()
    sys.setprofile(None)
    return {"placement": sum(calls[k] for k in PLACEMENT),
            "check_array": sum(calls[k] for k in CHECKS),
            "may_share_memory": sum(calls[k] for k in OVERLAP),
            "python calls in fastreg": sum(calls.values())}


def _median_us(fn, n=2000, rounds=7) -> float:
    for _ in range(200):
        fn()
    res = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        res.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(res)


def time_linear() -> dict:
    from fastreg._kernels import _dispatch, matmul
    fr.manual_seed(0)
    lin = nn.Linear(784, 512)
    lin.eval()
    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    out = np.empty((1, 512), np.float32)
    w, b = lin.weight.data, lin.bias.data
    be = _dispatch.kernel("matmul", "linear_forward")
    t_backend = _median_us(lambda: be(x, w, b, out, 0, 0.01))
    t_public = _median_us(lambda: matmul.linear_forward(x, w, b, out))
    t_module = _median_us(lambda: lin(x))
    return {"backend us": t_backend, "public us": t_public, "module us": t_module,
            "module/backend": t_module / t_backend}


if __name__ == "__main__":
    fr.set_num_threads(2)
    for k, v in count_step().items():
        print(f"{k:26s} {v}")
    for k, v in time_linear().items():
        print(f"{k:26s} {v:.2f}")
