"""asv benchmarks of the fused optimizer updates (fastreg._kernels.optim) and Optimizer.step.

    asv run --python=same --quick --bench Optim

``OptimKernel``: one in-place step of each algorithm over one flat buffer, parameterized by
backend, dtype and size (535k = the 784-512-256-10 MLP, 10M = large). ``OptimizerStep``: the
public ``fr.optim`` class stepping the MLP's six parameter tensors (one kernel call + Python).
"""
import numpy as np

import fastreg as fr
from fastreg._kernels import optim as K
from fastreg.nn.parameter import Parameter

BACKENDS = ["cython", "numba"]
DTYPES = ["float32", "float64"]
SIZES = [535_818, 10_000_000]
MLP_SHAPES = [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]


class OptimKernel:
    params = (BACKENDS, DTYPES, SIZES)
    param_names = ("backend", "dtype", "n")
    timeout = 120

    def setup(self, backend, dtype, n):
        rng = np.random.default_rng(0)
        self.w = rng.standard_normal(n).astype(dtype)
        self.g = (rng.standard_normal(n) * 1e-3).astype(dtype)
        self.b0, self.b1, self.b2 = (np.zeros(n, dtype) for _ in range(3))
        self.b1 += 1.0                  # positive second moments / accumulators
        self.be = backend
        for name in ("time_sgd_momentum", "time_adam", "time_adamw_amsgrad", "time_rmsprop",
                     "time_adagrad", "time_adadelta"):
            getattr(self, name)(backend, dtype, n)  # compile (numba) outside the timing

    def time_sgd_momentum(self, backend, dtype, n):
        K.sgd_step(self.w, self.g, self.b0, lr=1e-6, momentum=0.9, weight_decay=1e-4,
                   backend=self.be)

    def time_adam(self, backend, dtype, n):
        K.adam_step(self.w, self.g, self.b0, self.b1, None, step=10, lr=1e-6, backend=self.be)

    def time_adamw_amsgrad(self, backend, dtype, n):
        K.adam_step(self.w, self.g, self.b0, self.b1, self.b2, step=10, lr=1e-6,
                    weight_decay=1e-2, decoupled_weight_decay=True, amsgrad=True,
                    backend=self.be)

    def time_rmsprop(self, backend, dtype, n):
        K.rmsprop_step(self.w, self.g, self.b1, None, None, lr=1e-6, backend=self.be)

    def time_adagrad(self, backend, dtype, n):
        K.adagrad_step(self.w, self.g, self.b1, step=10, lr=1e-6, backend=self.be)

    def time_adadelta(self, backend, dtype, n):
        K.adadelta_step(self.w, self.g, self.b0, self.b1, lr=1e-6, backend=self.be)


class OptimizerStep:
    params = (BACKENDS, ["SGD", "Adam", "AdamW"])
    param_names = ("backend", "optimizer")

    def setup(self, backend, optimizer):
        rng = np.random.default_rng(0)
        self.params_ = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in MLP_SHAPES]
        kw = {"lr": 1e-6, "momentum": 0.9} if optimizer == "SGD" else {"lr": 1e-6}
        self.opt = getattr(fr.optim, optimizer)(self.params_, **kw)
        for p in self.params_:
            p.grad[...] = 1e-3
        fr.set_backend(backend)
        self.opt.step()

    def teardown(self, backend, optimizer):
        fr.set_backend("auto")

    def time_step(self, backend, optimizer):
        self.opt.step()
