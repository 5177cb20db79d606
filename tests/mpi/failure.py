"""Run under ``mpiexec -n 2`` with a mode: rank 1 raises while rank 0 goes on communicating.

mode "fit": the loss function raises on rank 1 at its 3rd call in the middle of an epoch of
``fit(distributed=True)``; mode "script": an uncaught exception on rank 1 outside fit while
rank 0 waits in a barrier. Either way the job must end (non-zero exit), never hang.
"""
import sys

import numpy as np

import fastreg as fr
from fastreg import distributed as dist
from fastreg import nn


class FailingLoss(nn.CrossEntropyLoss):
    calls = 0

    def __call__(self, out, target):
        FailingLoss.calls += 1
        if dist.rank() == 1 and FailingLoss.calls == 3:
            raise RuntimeError("injected failure on rank 1")
        return super().__call__(out, target)


def main(mode):
    dist.init()
    if mode == "fit":
        fr.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 2, 64)
        fr.train.fit(m, FailingLoss(), fr.optim.SGD(m.parameters(), lr=0.1), (X, y), epochs=3,
                     batch_size=8, progress=False, distributed=True)
    else:
        if dist.rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        dist.barrier()
    print("UNREACHABLE: the job went on after a rank failed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
