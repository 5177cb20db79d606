"""asv benchmarks of the dropout kernels (fastreg._kernels.dropout).

    asv run --python=same --quick --bench Dropout

One class per kernel, parameterized by backend, dtype and size: an MLP activation (256x512) and a
large one (4096x1024), p = 0.5.
"""
import numpy as np

from fastreg._kernels import dropout as D

SIZES = ["256x512", "4096x1024"]
BACKENDS = ["cython", "numba"]
DTYPES = ["float32", "float64"]
P = 0.5


class _Dropout:
    params = (BACKENDS, DTYPES, SIZES)
    param_names = ("backend", "dtype", "size")
    timeout = 120

    def setup(self, backend, dtype, size):
        shape = tuple(map(int, size.split("x")))
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(shape).astype(dtype)
        self.out = np.empty_like(self.x)
        self.mask = np.empty(D.mask_nbytes(self.x.size), np.uint8)
        self.backend = backend
        D.dropout_forward(self.x, self.out, self.mask, P, 1 / (1 - P), 7, 0, backend=backend)
        self.run()  # compile (numba) outside the timing

    def run(self):
        raise NotImplementedError


class DropoutForward(_Dropout):
    def run(self):
        D.dropout_forward(self.x, self.out, self.mask, P, 1 / (1 - P), 7, 0,
                          backend=self.backend)

    def time_dropout_forward(self, backend, dtype, size):
        self.run()


class DropoutBackward(_Dropout):
    def run(self):
        D.dropout_backward(self.x, self.mask, self.out, 1 / (1 - P), backend=self.backend)

    def time_dropout_backward(self, backend, dtype, size):
        self.run()


class DropoutMask(_Dropout):
    def run(self):
        D.dropout_mask(self.mask, self.x.size, P, 7, 0, backend=self.backend)

    def time_dropout_mask(self, backend, dtype, size):
        self.run()
