"""asv: one training step of a BatchNorm + ReLU + Dropout MLP (forward, loss, backward, AdamW).

Parameterized by backend, dtype and size: "mlp" is the 784-512-256-10 benchmark model at batch
256 (822 MFLOP per step); "large" is 1024-2048-2048-10 at batch 1024 (~23 GFLOP per step).
"""
import numpy as np

import fastreg as fr
from fastreg import nn

SIZES = {"mlp": ((784, 512, 256, 10), 256), "large": ((1024, 2048, 2048, 10), 1024)}


def _model(dims, dtype):
    d0, d1, d2, d3 = dims
    return nn.Sequential(
        nn.Linear(d0, d1, dtype=dtype), nn.BatchNorm1d(d1, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d1, d2, dtype=dtype), nn.BatchNorm1d(d2, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d2, d3, dtype=dtype))


class TrainStep:
    params = (["numba", "cython"], ["float32", "float64"], ["mlp", "large"])
    param_names = ("backend", "dtype", "size")
    timeout = 120

    def setup(self, backend, dtype, size):
        fr.set_backend(backend)
        fr.manual_seed(0)
        dims, batch = SIZES[size]
        self.model = _model(dims, np.dtype(dtype))
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = fr.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-2)
        g = np.random.default_rng(0)
        self.x = g.standard_normal((batch, dims[0])).astype(dtype)
        self.y = g.integers(0, dims[-1], batch)
        self.time_step()                    # compile / warm the buffers

    def teardown(self, backend, dtype, size):
        fr.set_backend("auto")

    def time_step(self, *args):
        out = self.model(self.x)
        self.loss_fn(out, self.y)
        self.opt.zero_grad()
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.opt.step()

    def time_forward_eval(self, *args):
        self.model.eval()
        self.model(self.x)
        self.model.train()


class ReluDropout:
    """ReLU -> Dropout(0.2) on a 256 x 512 float32 batch, forward + backward: the fused pair
    (one ``relu_dropout_forward`` / ``relu_dropout_backward`` pass each way) vs ``fuse=False``."""
    params = (["fused", "unfused"],)
    param_names = ("path",)

    def setup(self, path):
        fr.manual_seed(0)
        self.model = nn.Sequential(nn.ReLU(), nn.Dropout(0.2))
        self.model.fuse = path == "fused"
        g = np.random.default_rng(0)
        self.x = g.standard_normal((256, 512)).astype(np.float32)
        self.dy = g.standard_normal((256, 512)).astype(np.float32)
        self.time_forward_backward()

    def time_forward_backward(self, *args):
        self.model.forward(self.x)
        self.model.backward(self.dy)
