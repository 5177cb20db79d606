"""Inference: compiled predictor vs torch eval mode; import time and cold start vs torch.

Model (both sides): Linear 784-512-256-10 with BatchNorm1d + ReLU + Dropout(0.2) after each hidden
layer, eval mode, float32, the same weights. fastreg runs ``fastreg.inference.compile(model)``
(BatchNorm folded, Dropout dropped, bias + ReLU fused); torch runs the module under
``torch.inference_mode()`` with as many threads as fastreg.

Floors: 2 x N x (784x512 + 512x256 + 256x10) = 1.07 MFLOP per sample at 255 GFLOP/s (4.2 us at
batch 1, which in practice is bounded by streaming the 2.1 MB of float32 weights: 29 us at
~74 GB/s from DRAM, less from L2/L3 where they sit between calls).

The import / cold-start cases time fresh interpreters (``python -c ...``), interpreter start-up
included on both sides: fastreg = ``import fastreg`` / import + ``fastreg.io.load`` + first
``predict``; torch = ``import torch`` / import + build the model + ``load_state_dict`` from a
``torch.save`` file + first forward. Issue goals: import <= 0.15 s, cold start <= 0.3 s, batch-1
predict <= 20 us (torch ~61 us, so ~3x), batch 1024 >= 1.1x torch.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile

import numpy as np

from fastreg._bench._timing import Case

PEAK_FLOPS = 255e9
DIMS = (784, 512, 256, 10)
_TMP = os.path.join(tempfile.gettempdir(), f"fastreg_compare_inference_{os.getpid()}")


def flops(batch: int) -> float:
    return 2.0 * batch * sum(a * b for a, b in itertools.pairwise(DIMS))


def fastreg_model(seed: int = 0):
    import fastreg as fr
    from fastreg import nn
    fr.manual_seed(seed)
    d0, d1, d2, d3 = DIMS
    model = nn.Sequential(
        nn.Linear(d0, d1), nn.BatchNorm1d(d1), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(d1, d2), nn.BatchNorm1d(d2), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(d2, d3))
    g = np.random.default_rng(seed)
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean[...] = g.standard_normal(m.num_features) * 0.1
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
    return model.eval()


def torch_model(model):
    import torch
    d0, d1, d2, d3 = DIMS
    tm = torch.nn.Sequential(
        torch.nn.Linear(d0, d1), torch.nn.BatchNorm1d(d1), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d1, d2), torch.nn.BatchNorm1d(d2), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d2, d3))
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tm.eval()


def predict_cases(batch: int, goal: float | None) -> Case:
    from fastreg import inference
    model = fastreg_model()
    pred = inference.compile(model)
    x = np.random.default_rng(1).standard_normal((batch, DIMS[0])).astype(np.float32)
    peer = None
    try:
        import torch
        tm = torch_model(model)
        tx = torch.from_numpy(x)

        def peer():
            with torch.inference_mode():
                return tm(tx)
        np.testing.assert_allclose(peer().numpy(), pred(x), rtol=1e-3, atol=1e-4)
    except ImportError:
        pass
    return Case("inference", f"predict 784-512-256-10 BN eval b{batch} f32", lambda: pred(x),
                peer, "torch eval", floor_s=flops(batch) / PEAK_FLOPS,
                floor_what=f"{flops(batch) / 1e6:.2f} MFLOP / 255 GFLOP/s", goal=goal)


def _files():
    """Write the benchmark model for both sides once (fastreg .fr and torch state dict)."""
    os.makedirs(_TMP, exist_ok=True)
    fr_path = os.path.join(_TMP, "mlp.fr")
    pt_path = os.path.join(_TMP, "mlp.pt")
    if not os.path.exists(fr_path):
        from fastreg import io as frio
        model = fastreg_model()
        frio.save(model, fr_path)
        try:
            import torch
            torch.save(torch_model(model).state_dict(), pt_path)
        except ImportError:
            pass
    return fr_path, pt_path


def _fresh(code: str):
    def run():
        subprocess.run([sys.executable, "-c", code], check=True)
    return run


FASTREG_COLD = """
import numpy as np
import fastreg
load = getattr(fastreg, "load", None) or __import__("fastreg.io").io.load
m = load({path!r})
m.predict(np.zeros((1, 784), np.float32))
"""

TORCH_COLD = """
import torch
d = (784, 512, 256, 10)
nn = torch.nn
m = nn.Sequential(nn.Linear(d[0], d[1]), nn.BatchNorm1d(d[1]), nn.ReLU(), nn.Dropout(0.2),
                  nn.Linear(d[1], d[2]), nn.BatchNorm1d(d[2]), nn.ReLU(), nn.Dropout(0.2),
                  nn.Linear(d[2], d[3]))
m.load_state_dict(torch.load({path!r}, weights_only=True))
m.eval()
with torch.inference_mode():
    m(torch.zeros(1, 784))
"""


def startup_cases() -> list[Case]:
    fr_path, pt_path = _files()
    try:
        import torch  # noqa: F401
        have_torch = os.path.exists(pt_path)
    except ImportError:
        have_torch = False
    return [
        Case("inference", "import (fresh python, goal <= 0.15 s)", _fresh("import fastreg"),
             _fresh("import torch") if have_torch else None, "torch import"),
        Case("inference", "cold start: import+load+predict (<= 0.3 s)",
             _fresh(FASTREG_COLD.format(path=fr_path)),
             _fresh(TORCH_COLD.format(path=pt_path)) if have_torch else None, "torch"),
    ]


def cases(quick: bool) -> list[Case]:
    out = [predict_cases(1, goal=3.0), predict_cases(1024, goal=1.1)]
    if not quick:
        out.append(predict_cases(64, goal=None))
    out += startup_cases()
    return out
