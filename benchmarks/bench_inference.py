"""asv: inference of a BatchNorm + ReLU + Dropout MLP in eval mode, and model-file I/O.

``Predict`` times the compiled predictor (``fastreg.inference.compile``: BatchNorm folded,
Dropout dropped, bias + ReLU fused, Cython kernels) against the plain eval-mode module on the
numba and cython backends, by dtype, size ("mlp" = 784-512-256-10, "large" =
1024-2048-2048-10) and batch (1 = latency, 1024 = throughput). ``ModelFile`` times save and
load of the mlp, and the predictor's own load path (``fastreg.inference.load`` of the model
file and of a saved predictor: no modules, nothing left to fold); ``PredictorOverhead`` the
per-call cost around the kernels (1x1 model); ``ColdStart`` times fresh interpreters (import;
import + load + first predict; load + first predict with the imports in the untimed setup, and
the same tracked in ms as ``fastreg/benchmarks/bench_onnx.py`` measures it, the issue's goal
being <= 15 ms).
"""
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import fastreg as fr
from fastreg import inference, nn
from fastreg import io as frio

SIZES = {"mlp": (784, 512, 256, 10), "large": (1024, 2048, 2048, 10)}
_DIR = os.path.join(tempfile.gettempdir(), "fastreg_asv_inference")


def _model(dims, dtype, seed=0):
    fr.manual_seed(seed)
    d0, d1, d2, d3 = dims
    model = nn.Sequential(
        nn.Linear(d0, d1, dtype=dtype), nn.BatchNorm1d(d1, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d1, d2, dtype=dtype), nn.BatchNorm1d(d2, dtype=dtype), nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(d2, d3, dtype=dtype))
    g = np.random.default_rng(seed)
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean[...] = g.standard_normal(m.num_features) * 0.1
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
    return model.eval()


class Predict:
    params = (["compiled", "module-numba", "module-cython"], ["float32", "float64"],
              ["mlp", "large"], [1, 64, 1024])
    param_names = ("engine", "dtype", "size", "batch")
    timeout = 120

    def setup(self, engine, dtype, size, batch):
        dims = SIZES[size]
        self.model = _model(dims, np.dtype(dtype))
        self.x = np.random.default_rng(1).standard_normal((batch, dims[0])).astype(dtype)
        if engine == "compiled":
            self.fn = inference.compile(self.model)
        else:
            fr.set_backend(engine.split("-")[1])
            self.fn = self.model
        self.fn(self.x)                      # compile / warm the buffers

    def teardown(self, engine, dtype, size, batch):
        fr.set_backend("auto")

    def time_predict(self, *args):
        self.fn(self.x)


class PredictorOverhead:
    """Per-call cost of an already-compiled predictor around its kernels: a 1x1 Linear at batch
    1 (the product is a few instructions, so this is the input check, the output allocation and
    the calls). Issue goal: <= 2 us of Python per call."""
    params = (["batch", "sample", "out"],)
    param_names = ("call",)

    def setup(self, call):
        fr.set_num_threads(1)
        self.pred = inference.compile(nn.Sequential(nn.Linear(1, 1)).eval())
        self.x = np.ones((1, 1), np.float32) if call != "sample" else np.ones(1, np.float32)
        self.out = np.empty((1, 1), np.float32) if call == "out" else None
        self.pred(self.x, out=self.out)

    def time_call(self, call):
        self.pred(self.x, out=self.out)


class ModelFile:
    timeout = 60

    def setup(self):
        os.makedirs(_DIR, exist_ok=True)
        self.model = _model(SIZES["mlp"], np.float32)
        self.path = os.path.join(_DIR, "mlp.fr")
        frio.save(self.model, self.path)

    def time_save(self):
        frio.save(self.model, self.path)

    def time_load(self):
        frio.load(self.path)

    def time_compile(self):
        inference.compile(self.model)

    def time_inference_load(self):
        inference.load(self.path)


class PredictorFile:
    """A saved float32 predictor (``fr.save(predictor)``: the folded stages as a model file)."""
    timeout = 60

    def setup(self):
        os.makedirs(_DIR, exist_ok=True)
        self.pred = inference.compile(_model(SIZES["mlp"], np.float32))
        self.path = os.path.join(_DIR, "mlp_predictor.fr")
        frio.save(self.pred, self.path)

    def time_save(self):
        frio.save(self.pred, self.path)

    def time_load(self):
        inference.load(self.path)


def _ensure_file(predictor: bool = False) -> str:
    """The mlp's model file (or its saved float32 predictor) for the cold starts."""
    os.makedirs(_DIR, exist_ok=True)
    path = os.path.join(_DIR, "cold_predictor.fr" if predictor else "cold.fr")
    if not os.path.exists(path):
        model = _model(SIZES["mlp"], np.float32)
        frio.save(inference.compile(model) if predictor else model, path)
    return path


_LOAD_PREDICT = ("p = fastreg.inference.load({path!r})\n"
                 "p(np.zeros((1, 784), np.float32))\n")
_SETUP = "import numpy as np, fastreg\n"


class ColdStart:
    """Fresh interpreters (asv ``timeraw``: the code runs in a new process each time)."""
    timeout = 120

    def timeraw_import(self):
        return "import fastreg"

    def timeraw_import_load_predict(self):
        return (f"import numpy as np, fastreg.io\n"
                f"m = fastreg.io.load({_ensure_file()!r})\n"
                f"m.predict(np.zeros((1, 784), np.float32))\n"
                f"import sys\nassert 'numba' not in sys.modules, {sys.executable!r}\n")

    def timeraw_inference_load_predict(self):
        """load + first predict in a fresh process, the imports of numpy and fastreg in the
        untimed setup (what the issue's cold-start goal counts)."""
        return _LOAD_PREDICT.format(path=_ensure_file()), _SETUP

    def timeraw_inference_load_predict_saved_predictor(self):
        return _LOAD_PREDICT.format(path=_ensure_file(predictor=True)), _SETUP

    def track_inference_load_predict_ms(self):
        """Median over 7 fresh processes of load + first predict (ms), imports excluded."""
        code = (_SETUP + "import time\nt0 = time.perf_counter()\n"
                + _LOAD_PREDICT.format(path=_ensure_file())
                + "print((time.perf_counter() - t0) * 1e3)\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     text=True, check=True, env=env).stdout)
                for _ in range(7)]
        return statistics.median(runs)

    track_inference_load_predict_ms.unit = "ms"
