"""fastreg : ONNX Runtime : torch on the same MLP, float32 / bf16 / int8, each side in its own process.

    python benchmarks/bench_onnx.py [--weights float32,bf16,int8] [--batches 1,64,1024]
                                    [--threads 1,2] [--rounds 5] [--min-time 0.2]
                                    [--cold-rounds 15] [--no-torch] [--model FILE.onnx]
                                    [--split-flops F]

The model is the 784-512-256-10 MLP of the README's inference row (Linear, BatchNorm1d, ReLU,
Dropout 0.2, twice, then Linear(256, 10); random weights and running statistics, eval mode),
written with ``fastreg.onnx.export`` (or ``--model``: any file ``fastreg.onnx.load`` imports).
The sides, per precision (``--weights``):

* fastreg: ``fastreg.inference.compile(fastreg.onnx.load(file), weights=w)`` -- BatchNorm folded,
  bias + ReLU fused; bf16 = bfloat16 weights with float32 accumulation, int8 = per-channel int8
  weights with activations quantized per call (dynamic quantization);
* ONNX Runtime: ``InferenceSession`` on the file (CPU provider, default graph optimizations,
  ``intra_op_num_threads`` = threads, ``inter_op_num_threads`` = 1); int8 =
  ``onnxruntime.quantization.quantize_dynamic`` of the file (the same calibration-free scheme);
  bf16 "-": ORT's CPU provider has no bf16 MatMul;
* torch (``--no-torch`` leaves it out): eager ``torch.inference_mode()`` on the BN-folded
  Linear/ReLU stack (the same float32 weights), ``torch.set_num_threads(threads)``; bf16 =
  ``torch.autocast("cpu", torch.bfloat16)``, int8 = ``torch.ao.quantization.quantize_dynamic``
  (Linear -> int8).

Every (side, precision, batch, threads) case is a fresh subprocess; each round runs every case
once per side, the order of the sides rotating between rounds so that a noisy neighbour hits
them alike. A case's time is the median over rounds of the per-call mean in one process (calls
repeated until ``--min-time`` seconds). Before timing, the parent checks every side's output at
batch 64 against fastreg's float32 output within the precision's tolerance (max abs difference /
max abs output: float32 1e-5, bf16 3e-2, int8 0.15 -- ORT quantizes activations per
tensor, fastreg per row; a model that does not match is off by ~1).

Prints markdown tables: median times and the ratios ORT / fastreg and torch / fastreg (> 1:
fastreg is faster), then cold start (fresh interpreter, ``--cold-rounds`` of them, median): the
whole process, and load + first predict with the imports excluded -- fastreg
``fastreg.inference.load(model.fr)`` (the model as ``fastreg.save`` writes it), ORT building the
InferenceSession from the .onnx file, torch building the module and ``load_state_dict`` from a
``torch.save``'d state dict -- and peak RSS; then fastreg's load + first predict from a saved
predictor (``fastreg.save(fastreg.inference.compile(model), path)``: folded, nothing to fold at
load). Each cold-start side runs once untimed first, so that the timed processes find the
``.pyc`` files a deployment has (the bench's children may write them: PYTHONDONTWRITEBYTECODE is
removed from their environment). This file is not an asv benchmark (asv collects
nothing from it): it needs the onnx extra (onnxruntime; torch optional).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
side, weights, path, batch, threads, min_time, out, split = sys.argv[1:9]
batch, threads, min_time = int(batch), int(threads), float(min_time)
x = np.random.default_rng(0).standard_normal((batch, 784)).astype(np.float32)
if side == "fastreg":
    import fastreg as fr
    fr.set_num_threads(threads)
    if float(split) >= 0:   # --split-flops: when a batch<=4 chain forks (default: built-in rule)
        from fastreg._kernels.matmul import cy
        cy.set_chain_parallel_min_flops(float(split))
    pred = fr.inference.compile(fr.onnx.load(path), weights=None if weights == "float32"
                                else weights)
    fn = lambda: pred(x)
elif side == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fn = lambda: sess.run(None, {name: x})[0]
else:
    import contextlib
    import torch
    torch.set_num_threads(threads)
    w = np.load(path)
    n = len(w.files) // 2
    layers = []
    for i in range(n):
        W = torch.from_numpy(w[f"w{i}"])
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(torch.from_numpy(w[f"b{i}"]))
        layers += [lin] + ([torch.nn.ReLU()] if i < n - 1 else [])
    model = torch.nn.Sequential(*layers).eval()
    if weights == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)
    ctx = (torch.autocast("cpu", torch.bfloat16) if weights == "bf16"
           else contextlib.nullcontext())
    xt = torch.from_numpy(x)

    def fn():
        with torch.inference_mode(), ctx:
            return model(xt).float().numpy()
if out != "-":
    np.save(out, fn())
for _ in range(5):
    fn()
n = 1
while True:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t0
    if t >= min_time:
        break
    n *= 2
print(json.dumps(t / n))
"""

SIDES = ("fastreg", "ort", "torch")
NAMES = {"fastreg": "fastreg", "ort": "ORT", "torch": "torch"}
WEIGHTS = ("float32", "bf16", "int8")
#: Max abs difference / max abs output allowed against fastreg's float32 output.
TOLERANCE = {"float32": 1e-5, "bf16": 3e-2, "int8": 0.15}
#: The checkout this script belongs to (imported by the parent and the children).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serving_mlp():
    """The serving benchmarks' model: the 784-512-256-10 MLP with BatchNorm + ReLU + Dropout(0.2),
    ``fr.manual_seed(0)`` weights and random running statistics, in eval mode (the fastreg on
    ``sys.path``: a child process may run another checkout's)."""
    import fastreg as fr
    from fastreg import nn
    fr.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(256, 10))
    g = np.random.default_rng(1)
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean[...] = g.normal(0, 0.1, m.num_features)
            m.running_var[...] = g.uniform(0.5, 2.0, m.num_features)
    return model.eval()


def build_model(path: str) -> None:
    """:func:`serving_mlp`, exported by fastreg to ONNX."""
    sys.path.insert(0, ROOT)
    import fastreg as fr
    fr.onnx.export(serving_mlp(), path)


def write_torch_weights(fr_path: str, out: str) -> None:
    """The BN-folded Linear weights of the fastreg model (float32), for the torch side."""
    import fastreg as fr
    pred = fr.inference.load(fr_path)
    lin = [op for op in pred._ops if op[0] == "linear"]
    if len(lin) != len(pred._ops):
        raise SystemExit("the torch side needs a Linear/ReLU model after folding")
    np.savez(out, **{f"w{i}": op[1] for i, op in enumerate(lin)},
             **{f"b{i}": op[2] for i, op in enumerate(lin)})


COLD = {
    "fastreg": "import numpy as np, fastreg as fr\nt0 = time.perf_counter()\n"
               "p = fr.inference.load(sys.argv[1])\np(np.zeros((1, 784), np.float32))\n",
    "ort": "import numpy as np, onnxruntime as ort\nt0 = time.perf_counter()\n"
           "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
           "s.run(None, {s.get_inputs()[0].name: np.zeros((1, 784), np.float32)})\n",
    "torch": "import numpy as np, torch\nt0 = time.perf_counter()\n"
             "sd = torch.load(sys.argv[1], weights_only=True)\nn = len(sd) // 2\n"
             "layers = []\nfor i in range(n):\n"
             "    w = sd[f'{2 * i}.weight'] if f'{2 * i}.weight' in sd else None\n"
             "    layers += [torch.nn.Linear(w.shape[1], w.shape[0])] + "
             "([torch.nn.ReLU()] if i < n - 1 else [])\n"
             "m = torch.nn.Sequential(*layers).eval()\nm.load_state_dict(sd)\n"
             "with torch.inference_mode():\n    m(torch.zeros((1, 784)))\n",
}
#: Peak RSS from /proc (VmHWM starts afresh at exec; ru_maxrss would count the forked parent).
COLD_TAIL = ("t1 = time.perf_counter()\n"
             "try:\n"
             "    hwm = [int(l.split()[1]) for l in open('/proc/self/status')\n"
             "           if l.startswith('VmHWM:')][0]\n"
             "except OSError:\n"
             "    import resource\n"
             "    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print(json.dumps([t1 - t0, hwm]))\n")


def _env(threads: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)    # cold starts with .pyc, as users have them
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def cold(side: str, path: str) -> tuple[float, float, float]:
    """(whole process s, load + first predict s, peak RSS MB) of a fresh interpreter."""
    import time
    code = "import json, sys, time\n" + COLD[side] + COLD_TAIL
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, path], env=_env(), capture_output=True,
                       text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{side} cold start failed:\n{r.stderr}")
    first, rss_kb = json.loads(r.stdout.strip().splitlines()[-1])
    return wall, first, rss_kb / 1024


SPLIT = [-1.0]


def run(side: str, weights: str, path: str, batch: int, threads: int, min_time: float,
        out: str = "-") -> float:
    r = subprocess.run([sys.executable, "-c", CHILD, side, weights, path, str(batch),
                        str(threads), str(min_time), out, str(SPLIT[0])], env=_env(threads),
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{side} {weights} batch {batch} threads {threads} failed:\n"
                           f"{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _fmt(t) -> str:
    return "–" if t is None else (f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms")


def _ratio(a, b) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="float32,bf16,int8")
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-rounds", type=int, default=15)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--no-torch", action="store_true", help="leave torch out")
    ap.add_argument("--model", default=None, help="an .onnx file (default: the MLP above)")
    ap.add_argument("--split-flops", type=float, default=-1.0,
                    help="fastreg: FLOPs per row from which a batch <= 4 chain splits its GEMVs "
                         "across threads (0: always; default: the built-in rule)")
    args = ap.parse_args()
    SPLIT[0] = args.split_flops
    weights = [w for w in args.weights.split(",") if w]
    bad = sorted(set(weights) - set(WEIGHTS))
    if bad:
        ap.error(f"--weights: unknown {bad} (choose from {', '.join(WEIGHTS)})")
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    sides = [s for s in SIDES if not (s == "torch" and args.no_torch)]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.model or os.path.join(tmp, "mlp.onnx")
        if args.model is None:
            build_model(onnx_path)
        sys.path.insert(0, ROOT)
        import fastreg as fr
        fr_path = os.path.join(tmp, "mlp.fr")
        fr.save(fr.onnx.load(onnx_path), fr_path)     # what the fastreg side loads cold
        paths = {("fastreg", w): onnx_path for w in WEIGHTS}
        paths[("ort", "float32")] = onnx_path
        if "int8" in weights:
            import logging

            from onnxruntime.quantization import QuantType, quantize_dynamic
            logging.getLogger().setLevel(logging.ERROR)     # its "consider pre-processing" note
            paths[("ort", "int8")] = os.path.join(tmp, "mlp.int8.onnx")
            quantize_dynamic(onnx_path, paths[("ort", "int8")], weight_type=QuantType.QInt8)
        cold_paths = {"fastreg": fr_path, "ort": onnx_path}
        pred_path = os.path.join(tmp, "mlp_predictor.fr")
        fr.save(fr.inference.load(fr_path), pred_path)    # the folded stages
        if "torch" in sides:
            npz = os.path.join(tmp, "mlp_folded.npz")
            write_torch_weights(fr_path, npz)
            for w in WEIGHTS:
                paths[("torch", w)] = npz
            import torch
            folded = np.load(npz)
            sd = {}
            for i in range(len(folded.files) // 2):
                sd[f"{2 * i}.weight"] = torch.from_numpy(folded[f"w{i}"])
                sd[f"{2 * i}.bias"] = torch.from_numpy(folded[f"b{i}"])
            cold_paths["torch"] = os.path.join(tmp, "mlp_state.pt")
            torch.save(sd, cold_paths["torch"])
        # the same outputs, within each precision's tolerance, before any timing
        ref_out = os.path.join(tmp, "ref.npy")
        run("fastreg", "float32", onnx_path, 64, 1, 0.0, ref_out)
        ref = np.load(ref_out)
        print(f"model {args.model or '784-512-256-10 MLP (BatchNorm, ReLU, Dropout), exported'}"
              "; outputs vs fastreg float32 (max abs difference / max abs output):")
        cases = []
        for w in weights:
            for s in sides:
                if (s, w) not in paths:
                    continue
                out = os.path.join(tmp, f"{s}_{w}.npy")
                run(s, w, paths[(s, w)], 64, 1, 0.0, out)
                diff = float(np.max(np.abs(np.load(out) - ref)) / max(np.max(np.abs(ref)),
                                                                        1e-30))
                print(f"  {NAMES[s]} {w}: {diff:.1e}")
                if diff > TOLERANCE[w]:
                    raise SystemExit(f"{NAMES[s]} {w} differs from fastreg float32 by {diff:.1e}"
                                     f" > {TOLERANCE[w]:g}: the models do not match")
                cases.append((s, w))
        grid = [(w, t, b_) for w in weights for t in threads for b_ in batches]
        times: dict = {}
        colds: dict = {s: [] for s in sides}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for w, t, b_ in grid:
                for s in order:
                    if (s, w) in cases:
                        times.setdefault((s, w, t, b_), []).append(
                            run(s, w, paths[(s, w)], b_, t, args.min_time))
        print(f"cold starts ({args.cold_rounds} rounds) ...", file=sys.stderr, flush=True)
        pred_colds = []
        if args.cold_rounds:
            for s in sides:             # untimed: compiles and caches whatever is not yet
                cold(s, cold_paths[s])
        for r in range(args.cold_rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for s in order:
                colds[s].append(cold(s, cold_paths[s]))
            pred_colds.append(cold("fastreg", pred_path))
    med = {k: statistics.median(v) for k, v in times.items()}
    cols = [NAMES[s] for s in sides]
    print(f"\n| weights | threads | batch | {' | '.join(cols)} | ORT / fastreg"
          + (" | torch / fastreg |" if "torch" in sides else " |"))
    print("|---" * (3 + len(cols) + len(sides) - 1) + "|")
    for w, t, b_ in grid:
        f = med.get(("fastreg", w, t, b_))
        row = [_fmt(med.get((s, w, t, b_))) for s in sides]
        ratios = [_ratio(med.get((s, w, t, b_)), f) for s in sides if s != "fastreg"]
        print(f"| {w} | {t} | {b_} | {' | '.join(row)} | {' | '.join(ratios)} |")
    if args.cold_rounds:
        print(f"\n| cold start (fresh process, median of {args.cold_rounds}) | "
              + " | ".join(cols) + " |\n" + "|---" * (1 + len(cols)) + "|")
        for i, what in enumerate(("whole process (interpreter + imports + load + predict)",
                                  "load + first predict (imports excluded)")):
            print(f"| {what} | " + " | ".join(
                f"{statistics.median(c[i] for c in colds[s]) * 1e3:.1f} ms" for s in sides) + " |")
        print("| peak RSS | " + " | ".join(
            f"{statistics.median(c[2] for c in colds[s]):.0f} MB" for s in sides) + " |")
        print(f"\nfastreg from a saved predictor (fastreg.save(fastreg.inference.compile(model))): "
              f"load + first predict {statistics.median(c[1] for c in pred_colds) * 1e3:.1f} ms, "
              f"whole process {statistics.median(c[0] for c in pred_colds) * 1e3:.1f} ms")
    print(f"\n{args.rounds} rounds, median; each case in a fresh process, sides alternated. "
          "bf16 for ORT: – (its CPU provider has no bf16 MatMul). "
          f"Command: python benchmarks/bench_onnx.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
