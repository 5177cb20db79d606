"""Training: one step of the 784-512-256-10 MLP vs torch, one epoch vs scikit-learn.

Step model (both sides): Linear 784-512-256-10, BatchNorm1d + ReLU + Dropout(0.2) after each
hidden layer, cross-entropy, AdamW, batch 256, float32; torch uses as many threads as fastreg.

Floor: the three GEMMs per Linear (forward, grad weight, grad input) are
3 x 2 x 256 x (784x512 + 512x256 + 256x10) = 822 MFLOP per step; at 255 GFLOP/s that is
3.2 ms (fastreg skips the first layer's grad input, which the data never needs -- as torch does
for an input without requires_grad -- so 616 MFLOP = 2.42 ms are actually done). The bytes a step
must move (AdamW: 7 x 2.15 MB; weights, gradients, the batch twice, each hidden activation ~6
times) are ~26 MB, ~0.35 ms at 74 GB/s: the FLOPs are the floor.

Epoch: 60 000 x 784 random data, MLPClassifier(hidden_layer_sizes=(512, 256), batch_size=256,
max_iter=1) (ReLU, Adam, L2 alpha=1e-4) vs the same plain MLP in fastreg (Linear+ReLU fused, Adam
with l2 penalty); floor = 235 steps x 822 MFLOP / 255 GFLOP/s.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from fastreg._bench._timing import Case

PEAK_FLOPS = 255e9
SIZES = (784, 512, 256, 10)


def step_flops(batch: int, sizes=SIZES) -> float:
    return 3 * 2 * batch * sum(a * b for a, b in itertools.pairwise(sizes))


def fastreg_step(batch: int = 256, dtype=np.float32, seed: int = 0, sizes=SIZES):
    """A closure running one training step of the benchmark model (and the model itself)."""
    import fastreg as fr
    from fastreg import nn
    fr.manual_seed(seed)
    d0, d1, d2, d3 = sizes
    model = nn.Sequential(
        nn.Linear(d0, d1, dtype=dtype), nn.BatchNorm1d(d1, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d1, d2, dtype=dtype), nn.BatchNorm1d(d2, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d2, d3, dtype=dtype))
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = np.random.default_rng(seed)
    x = g.standard_normal((batch, d0)).astype(dtype)
    y = g.integers(0, d3, batch)

    def step():
        out = model(x)
        loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return step, model


def torch_step(batch: int = 256, seed: int = 0):
    import torch
    torch.manual_seed(seed)
    d0, d1, d2, d3 = SIZES
    model = torch.nn.Sequential(
        torch.nn.Linear(d0, d1), torch.nn.BatchNorm1d(d1), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d1, d2), torch.nn.BatchNorm1d(d2), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d2, d3))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = np.random.default_rng(seed)
    x = torch.tensor(g.standard_normal((batch, d0)).astype(np.float32))
    y = torch.tensor(g.integers(0, d3, batch))

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def _epoch_data(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, SIZES[0])).astype(np.float32), g.integers(0, SIZES[-1], n)


def fastreg_epoch(n: int):
    import fastreg as fr
    from fastreg import nn
    X, y = _epoch_data(n)
    d0, d1, d2, d3 = SIZES

    def run():
        fr.manual_seed(0)
        model = nn.Sequential(nn.Linear(d0, d1), nn.ReLU(), nn.Linear(d1, d2), nn.ReLU(),
                              nn.Linear(d2, d3))
        opt = fr.optim.Adam(model.parameters(), lr=1e-3)
        fr.train.fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=1, batch_size=256,
                     metrics=(), progress=False, seed=0)
    return run


def sklearn_epoch(n: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    X, y = _epoch_data(n)

    def run():
        clf = MLPClassifier(hidden_layer_sizes=(512, 256), batch_size=256, max_iter=1,
                            random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
    return run


def cases(quick: bool) -> list[Case]:
    out = []
    step, _ = fastreg_step()
    try:
        peer = torch_step()
    except ImportError:
        peer = None
    out.append(Case("train", "step 784-512-256-10 BN+ReLU+Drop AdamW b256 f32", step, peer,
                    "torch", floor_s=step_flops(256) / PEAK_FLOPS,
                    floor_what="822 MFLOP / 255 GFLOP/s", goal=2.0))
    n = 10000 if quick else 60000
    try:
        peer = sklearn_epoch(n)
    except ImportError:
        peer = None
    steps = -(-n // 256)
    out.append(Case("train", f"epoch {n}x784 MLP 512-256 Adam b256 f32", fastreg_epoch(n), peer,
                    "scikit-learn", floor_s=steps * step_flops(256) / PEAK_FLOPS,
                    floor_what=f"{steps} x 822 MFLOP / 255 GFLOP/s", goal=2.0))
    return out
