"""asv benchmarks of the linear-layer products (fastreg._kernels.matmul).

    asv run --python=same --quick --bench Linear

One class per product, parameterized by backend, dtype and shape (N, K, M): the 784-512-256-10
MLP layers at batch 1 and 256, and one large 2048^3 product; and the machine's float32 FMA peak
(``PeakFlops``), the ceiling to read them against.
"""
import numpy as np

from fastreg._kernels import matmul as mm

SHAPES = ["1x784x512", "256x784x512", "256x512x256", "256x256x10", "2048x2048x2048"]
BACKENDS = ["cython", "numba", "blas"]
DTYPES = ["float32", "float64"]


class _Linear:
    params = (BACKENDS, DTYPES, SHAPES)
    param_names = ("backend", "dtype", "shape")
    timeout = 120

    def setup(self, backend, dtype, shape):
        N, K, M = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((N, K)).astype(dtype)
        self.w = rng.standard_normal((M, K)).astype(dtype)
        self.b = rng.standard_normal(M).astype(dtype)
        self.out = np.empty((N, M), dtype)
        self.dy = rng.standard_normal((N, M)).astype(dtype)
        self.dx = np.empty((N, K), dtype)
        self.dw = np.zeros((M, K), dtype)
        self.db = np.zeros(M, dtype)
        self.backend = backend
        self.run()  # compile (numba) and warm the scratch outside the timing

    def run(self):
        raise NotImplementedError


class LinearForward(_Linear):
    def run(self):
        mm.linear_forward(self.x, self.w, None, self.out, backend=self.backend)

    def time_linear_forward(self, backend, dtype, shape):
        self.run()


class LinearForwardBiasRelu(_Linear):
    def run(self):
        mm.linear_forward(self.x, self.w, self.b, self.out, "relu", backend=self.backend)

    def time_linear_forward_bias_relu(self, backend, dtype, shape):
        self.run()


class LinearBackwardInput(_Linear):
    def run(self):
        mm.linear_backward_input(self.dy, self.w, self.dx, backend=self.backend)

    def time_linear_backward_input(self, backend, dtype, shape):
        self.run()


class LinearBackwardInputRelu(_Linear):
    """dx through the previous layer's ReLU, ``relu'(y) * (dy @ W)`` (Sequential's input-gradient
    fusion): Cython applies it in the GEMM's epilogue, numba / blas run the separate pass after
    their GEMM. Against LinearBackwardInput: what the epilogue costs."""

    def run(self):
        mm.linear_backward_input_act(self.dy, self.w, self.dx, self.y, "relu",
                                     backend=self.backend)

    def setup(self, backend, dtype, shape):
        N, K, _ = map(int, shape.split("x"))
        self.y = np.maximum(np.random.default_rng(1).standard_normal((N, K)), 0).astype(dtype)
        super().setup(backend, dtype, shape)

    def time_linear_backward_input_relu(self, backend, dtype, shape):
        self.run()


class LinearBackwardWeight(_Linear):
    def run(self):
        mm.linear_backward_weight(self.dy, self.x, self.dw, self.db, accumulate=True,
                                  backend=self.backend)

    def time_linear_backward_weight(self, backend, dtype, shape):
        self.run()


class PeakFlops:
    """The machine's float32 FMA peak (GFLOP/s) at 1 and 2 threads, the ceiling the GEMMs above
    are read against (``fastreg._kernels.matmul.cy.peak_probe``)."""
    params = ([1, 2],)
    param_names = ("threads",)
    unit = "GFLOP/s"
    timeout = 60

    def setup(self, threads):
        try:
            from fastreg._kernels.matmul import cy
        except ImportError:
            raise NotImplementedError("the Cython extensions are not built") from None
        self.probe = cy.peak_probe

    def track_peak_f32_gflops(self, threads):
        return self.probe(threads)[0]
