"""Training step of a residual MLP: automatic backward (tape) vs a hand-written backward vs torch.

    python benchmarks/bench_tape.py [--rounds 7] [--threads 2] [--batch 256]

The model is the ResNet-style tabular MLP of Gorishniy et al. 2021: ``Linear(128 -> 256)``, four
blocks ``x + Dropout(Linear(ReLU(Linear(BatchNorm(x)))))`` (hidden 512, dropout 0.1), then
``BatchNorm, ReLU, Linear(256 -> 10)``; float32, cross-entropy, AdamW; one step = forward, loss,
zero_grad, backward, optimizer step. Three implementations of the same model:

* ``tape``: fastreg Modules that define only ``forward`` (backward from the tape);
* ``hand``: the same fastreg layers with a hand-written ``backward`` per block and for the net;
* ``torch``: ``torch.nn`` with autograd.

Each runs in its own subprocess (so no library's idle threads steal the cores of another),
alternated in every round; the median per-step time over rounds is reported with the ratios
tape/hand (goal <= 1.10) and torch/tape (goal >= 1.5).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time
import numpy as np
kind, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
D_IN, D, H, OUT, BLOCKS, P = 128, 256, 512, 10, 4, 0.1
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, D_IN)).astype(np.float32)
y = rng.integers(0, OUT, batch)

def timeit(fn, min_time=1.0):
    for _ in range(3):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / n
        n *= 2

if kind == "torch":
    import torch
    torch.set_num_threads(threads)
    tnn = torch.nn
    class Block(tnn.Module):
        def __init__(s):
            super().__init__()
            s.norm = tnn.BatchNorm1d(D); s.fc1 = tnn.Linear(D, H); s.fc2 = tnn.Linear(H, D)
            s.drop = tnn.Dropout(P)
        def forward(s, x):
            return x + s.drop(s.fc2(torch.relu(s.fc1(s.norm(x)))))
    m = tnn.Sequential(tnn.Linear(D_IN, D), *[Block() for _ in range(BLOCKS)],
                       tnn.BatchNorm1d(D), tnn.ReLU(), tnn.Linear(D, OUT))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    lossf = tnn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    def step():
        opt.zero_grad(); lossf(m(tx), ty).backward(); opt.step()
else:
    import fastreg as fr
    from fastreg import nn
    fr.set_num_threads(threads)
    fr.manual_seed(0)
    class Block(nn.Module):
        def __init__(s):
            super().__init__()
            s.norm = nn.BatchNorm1d(D); s.fc1 = nn.Linear(D, H); s.act = nn.ReLU()
            s.fc2 = nn.Linear(H, D); s.drop = nn.Dropout(P)
        def forward(s, x):
            return x + s.drop(s.fc2(s.act(s.fc1(s.norm(x)))))
    if kind == "hand":
        class HandBlock(Block):
            def forward(s, x):
                return x + s.drop(s.fc2(s.act(s.fc1(s.norm(x)))))
            def backward(s, g, *, input_grad=True):
                h = s.drop.backward(g); h = s.fc2.backward(h); h = s.act.backward(h)
                h = s.fc1.backward(h); h = s.norm.backward(h)
                return g + h
        blocks = [HandBlock() for _ in range(BLOCKS)]
    else:
        blocks = [Block() for _ in range(BLOCKS)]
    m = nn.Sequential(nn.Linear(D_IN, D), *blocks, nn.BatchNorm1d(D), nn.ReLU(),
                      nn.Linear(D, OUT))
    opt = fr.optim.AdamW(m.parameters(), lr=1e-3)
    lossf = nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(); lossf(m(x), y); m.backward(lossf.backward(), input_grad=False)
        opt.step()
print(json.dumps({"t": timeit(step)}))
'''

KINDS = ("tape", "hand", "torch")


def run(kind: str, threads: int, batch: int) -> float:
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="16",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(threads), str(batch)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["t"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--skip-torch", action="store_true")
    a = ap.parse_args()
    kinds = [k for k in KINDS if not (a.skip_torch and k == "torch")]
    times = {k: [] for k in kinds}
    for r in range(a.rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for k in order:
            times[k].append(run(k, a.threads, a.batch))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in kinds:
        v = times[k]
        print(f"{k:6s} median {med[k] * 1e3:8.3f} ms/step  (range {min(v) * 1e3:.3f}-"
              f"{max(v) * 1e3:.3f}, {a.rounds} rounds)")
    print(f"tape / hand  = {med['tape'] / med['hand']:.3f}  (goal <= 1.10)")
    if "torch" in med:
        print(f"torch / tape = {med['torch'] / med['tape']:.3f}  (goal >= 1.5)")


if __name__ == "__main__":
    main()
