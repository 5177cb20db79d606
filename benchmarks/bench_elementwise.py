"""asv benchmarks of activations and fused softmax-cross-entropy (fastreg._kernels.elementwise).

    asv run --python=same --quick --bench "Activation|SoftmaxCrossEntropy"

Activations: backend x dtype x activation x size (an MLP activation 256x512, a large 4096x1024).
Softmax-CE: backend x dtype x (N, C) — an MLP head (256, 10) and a large one (4096, 1000).
"""
import numpy as np

from fastreg._kernels import elementwise as E

BACKENDS = ["cython", "numba"]
DTYPES = ["float32", "float64"]
ACTS = ["relu", "leaky_relu", "sigmoid", "tanh"]
SIZES = ["256x512", "4096x1024"]
XENT = ["256x10", "4096x1000"]


class _Activation:
    params = (BACKENDS, DTYPES, ACTS, SIZES)
    param_names = ("backend", "dtype", "activation", "size")
    timeout = 120

    def setup(self, backend, dtype, activation, size):
        shape = tuple(map(int, size.split("x")))
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(shape).astype(dtype)
        self.y = np.empty_like(self.x)
        self.dy = rng.standard_normal(shape).astype(dtype)
        self.dx = np.empty_like(self.x)
        self.backend, self.act = backend, activation
        E.activation_forward(self.x, self.y, activation, backend=backend)
        self.run()

    def run(self):
        raise NotImplementedError


class ActivationForward(_Activation):
    def run(self):
        E.activation_forward(self.x, self.y, self.act, backend=self.backend)

    def time_activation_forward(self, backend, dtype, activation, size):
        self.run()


class ActivationBackward(_Activation):
    def run(self):
        E.activation_backward(self.dy, self.y, self.dx, self.act, backend=self.backend)

    def time_activation_backward(self, backend, dtype, activation, size):
        self.run()


class _SoftmaxCrossEntropy:
    params = (BACKENDS, DTYPES, XENT)
    param_names = ("backend", "dtype", "shape")
    timeout = 120

    def setup(self, backend, dtype, shape):
        N, C = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        self.logits = (2 * rng.standard_normal((N, C))).astype(dtype)
        self.target = rng.integers(0, C, N)
        self.probs = np.empty_like(self.logits)
        self.dl = np.empty_like(self.logits)
        self.backend = backend
        E.softmax_cross_entropy_forward(self.logits, self.target, self.probs, 0.1,
                                        backend=backend)
        self.run()

    def run(self):
        raise NotImplementedError


class SoftmaxCrossEntropyForward(_SoftmaxCrossEntropy):
    def run(self):
        E.softmax_cross_entropy_forward(self.logits, self.target, self.probs, 0.1,
                                        backend=self.backend)

    def time_softmax_cross_entropy_forward(self, backend, dtype, shape):
        self.run()


class SoftmaxCrossEntropyBackward(_SoftmaxCrossEntropy):
    def run(self):
        E.softmax_cross_entropy_backward(self.probs, self.target, self.dl, 0.1,
                                         backend=self.backend)

    def time_softmax_cross_entropy_backward(self, backend, dtype, shape):
        self.run()
