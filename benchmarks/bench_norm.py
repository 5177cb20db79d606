"""asv benchmarks of the norm kernels: batch norm and layer norm, forward and backward.

    asv run --python=same --quick --bench Norm

One class per op, parameterized by backend, dtype and (N, C): MLP-sized (256 x 200; 256 x 512,
the batch norm of issue 15's 784-512-256-10 training step) and large (4096 x 1024). Outputs are preallocated in setup, as the nn layers do.
"""
from typing import ClassVar

import numpy as np

from fastreg._kernels import norm

BACKENDS = ["numba", "cython"]
DTYPES = ["float32", "float64"]
SIZES = ["256x200", "256x512", "4096x1024"]


class _NormBench:
    params: ClassVar[list] = [BACKENDS, DTYPES, SIZES]
    param_names: ClassVar[list] = ["backend", "dtype", "size"]
    warmup_time = 0.2

    def setup(self, backend, dtype, size):
        N, C = (int(s) for s in size.split("x"))
        rng = np.random.default_rng(0)
        dt = np.dtype(dtype)
        self.x = rng.standard_normal((N, C)).astype(dt)
        self.dy = rng.standard_normal((N, C)).astype(dt)
        self.w = rng.standard_normal(C).astype(dt)
        self.b = rng.standard_normal(C).astype(dt)
        self.rm, self.rv = np.zeros(C, dt), np.ones(C, dt)
        self.out, self.dx = np.empty((N, C), dt), np.empty((N, C), dt)
        self.dw, self.db = np.zeros(C, dt), np.zeros(C, dt)
        self.bn_mean, self.bn_rstd = np.empty(C, dt), np.empty(C, dt)
        self.ln_mean, self.ln_rstd = np.empty(N, dt), np.empty(N, dt)
        self.backend = backend
        # compile / load the backend outside the timed region, and fill the saved statistics
        norm.batchnorm_forward_train(self.x, self.w, self.b, self.rm, self.rv, self.out,
                                     self.bn_mean, self.bn_rstd, backend=backend)
        norm.batchnorm_forward_eval(self.x, self.w, self.b, self.rm, self.rv, self.out,
                                    backend=backend)
        norm.batchnorm_backward(self.dy, self.x, self.w, self.bn_mean, self.bn_rstd, self.dx,
                                self.dw, self.db, backend=backend)
        norm.layernorm_forward(self.x, self.w, self.b, self.out, self.ln_mean, self.ln_rstd,
                               backend=backend)
        norm.layernorm_backward(self.dy, self.x, self.w, self.ln_mean, self.ln_rstd, self.dx,
                                self.dw, self.db, backend=backend)


class BatchNorm(_NormBench):
    def time_forward_train(self, backend, dtype, size):
        norm.batchnorm_forward_train(self.x, self.w, self.b, self.rm, self.rv, self.out,
                                     self.bn_mean, self.bn_rstd, backend=backend)

    def time_forward_eval(self, backend, dtype, size):
        norm.batchnorm_forward_eval(self.x, self.w, self.b, self.rm, self.rv, self.out,
                                    backend=backend)

    def time_backward(self, backend, dtype, size):
        norm.batchnorm_backward(self.dy, self.x, self.w, self.bn_mean, self.bn_rstd, self.dx,
                                self.dw, self.db, backend=backend)


class LayerNorm(_NormBench):
    def time_forward(self, backend, dtype, size):
        norm.layernorm_forward(self.x, self.w, self.b, self.out, self.ln_mean, self.ln_rstd,
                               backend=backend)

    def time_backward(self, backend, dtype, size):
        norm.layernorm_backward(self.dy, self.x, self.w, self.ln_mean, self.ln_rstd, self.dx,
                                self.dw, self.db, backend=backend)
