"""bf16 mixed precision (fastreg.autocast): speed of a training step, and accuracy vs float32.

    python benchmarks/bench_autocast.py step [--rounds 5] [--threads 2]
    python benchmarks/bench_autocast.py accuracy [--epochs 3] [--png docs/autocast_loss.png]

``step``: one training step of the 784-512-256-10 MLP (BatchNorm1d + ReLU + Dropout(0.2) after
each hidden layer, cross-entropy, AdamW, batch 256) in four configurations -- fastreg float32,
fastreg bf16 (``fr.autocast("bf16")``), torch float32, torch bf16
(``torch.autocast("cpu", dtype=torch.bfloat16)``) -- each in its own process (no library's idle
threads compete with another's), the four alternated round by round; each process reports the
median of 7 timed loops of >= 0.3 s. The table gives the median ratio over the rounds and its
range (a shared machine is noisy: read the range).

``accuracy``: float32 vs bf16 with the same seeds (same initial weights, batch order, dropout
masks) on scikit-learn's bundled digits (fastreg.train.fit, ``precision=``) and on a synthetic
60000 x 784 task (10 classes from a random two-layer teacher network); prints the final losses
and test accuracies and plots the loss curves (bf16 against float32) into a PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = ("fastreg-f32", "fastreg-bf16", "torch-f32", "torch-bf16")
SIZES = (784, 512, 256, 10)


# ---------------------------------------------------------------------------------------------
# step timing (one configuration per process)
# ---------------------------------------------------------------------------------------------

def _fastreg_step(bf16: bool, threads: int):
    import fastreg as fr
    from fastreg import nn
    fr.set_num_threads(threads)
    fr.manual_seed(0)
    d0, d1, d2, d3 = SIZES
    model = nn.Sequential(nn.Linear(d0, d1), nn.BatchNorm1d(d1), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(d1, d2), nn.BatchNorm1d(d2), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(d2, d3))
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = np.random.default_rng(0)
    x = g.standard_normal((256, d0)).astype(np.float32)
    y = g.integers(0, d3, 256)
    amp = fr.autocast("bf16", enabled=bf16)

    def step():
        with amp:
            out = model(x)
        loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return step


def _torch_step(bf16: bool, threads: int):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d0, d1, d2, d3 = SIZES
    model = torch.nn.Sequential(
        torch.nn.Linear(d0, d1), torch.nn.BatchNorm1d(d1), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d1, d2), torch.nn.BatchNorm1d(d2), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(d2, d3))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = np.random.default_rng(0)
    x = torch.tensor(g.standard_normal((256, d0)).astype(np.float32))
    y = torch.tensor(g.integers(0, d3, 256))

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def _time_one(config: str, threads: int) -> float:
    lib, prec = config.split("-")
    step = (_fastreg_step if lib == "fastreg" else _torch_step)(prec == "bf16", threads)
    for _ in range(5):
        step()
    n, loops = 1, []
    while True:                      # a loop of >= 0.3 s
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if time.perf_counter() - t0 >= 0.3:
            break
        n *= 2
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        loops.append((time.perf_counter() - t0) / n)
    return statistics.median(loops)


def bench_step(rounds: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times = {c: [] for c in CONFIGS}
    for r in range(rounds):
        order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]      # alternate who goes first
        for c in order:
            res = subprocess.run([sys.executable, __file__, "_one", c, str(threads)], env=env,
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            times[c].append(float(res.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}: " + ", ".join(f"{c} {times[c][-1] * 1e3:.2f} ms" for c in CONFIGS),
              flush=True)
    ours = np.array(times["fastreg-bf16"])
    rows = {}
    for peer in ("torch-f32", "torch-bf16", "fastreg-f32"):
        ratio = np.array(times[peer]) / ours
        rows[f"{peer} / fastreg-bf16"] = (float(np.median(ratio)), float(ratio.min()),
                                          float(ratio.max()))
    print(f"\nmedian step time over {rounds} rounds ({threads} threads):")
    for c in CONFIGS:
        print(f"  {c:14s} {np.median(times[c]) * 1e3:7.2f} ms  "
              f"(range {min(times[c]) * 1e3:.2f}-{max(times[c]) * 1e3:.2f})")
    print("speed-up of fastreg bf16 (peer time / fastreg-bf16 time), median [range]:")
    for k, (med, lo, hi) in rows.items():
        print(f"  {k:28s} {med:5.2f}x  [{lo:.2f}-{hi:.2f}]")
    return {"times": times, "ratios": rows}


# ---------------------------------------------------------------------------------------------
# asv (benchmarks/ is the asv suite): the step and the three products, float32 vs bf16
# ---------------------------------------------------------------------------------------------

class AutocastTrainStep:
    """One training step of the 784-512-256-10 model, float32 vs under fr.autocast("bf16")."""
    params = (["float32", "bf16"],)
    param_names = ("precision",)
    timeout = 120

    def setup(self, precision):
        import fastreg as fr
        self.step = _fastreg_step(precision == "bf16", fr.get_num_threads())
        self.step()

    def time_step(self, precision):
        self.step()


class AutocastLinear:
    """The Linear products of the step's first layer (256 x 784 x 512), float32 vs bf16."""
    params = (["float32", "bf16"],)
    param_names = ("precision",)

    def setup(self, precision):
        from fastreg._kernels import matmul as mm
        g = np.random.default_rng(0)
        self.x = g.standard_normal((256, 784)).astype(np.float32)
        self.w = g.standard_normal((512, 784)).astype(np.float32)
        self.b = g.standard_normal(512).astype(np.float32)
        self.dy = g.standard_normal((256, 512)).astype(np.float32)
        self.out = np.empty((256, 512), np.float32)
        self.dx = np.empty((256, 784), np.float32)
        self.dw = np.zeros((512, 784), np.float32)
        self.db = np.zeros(512, np.float32)
        bf16 = precision == "bf16"
        self.fwd = mm.run_linear_forward_bf16 if bf16 else mm.run_linear_forward
        self.bwi = mm.run_linear_backward_input_bf16 if bf16 else mm.run_linear_backward_input
        self.bww = mm.run_linear_backward_weight_bf16 if bf16 else mm.run_linear_backward_weight

    def time_forward(self, precision):
        self.fwd(self.x, self.w, self.b, self.out, 0, 0.0)

    def time_backward_input(self, precision):
        self.bwi(self.dy, self.w, self.dx)

    def time_backward_weight(self, precision):
        self.bww(self.dy, self.x, self.dw, self.db, True)


# ---------------------------------------------------------------------------------------------
# accuracy: float32 vs bf16, same seeds
# ---------------------------------------------------------------------------------------------

def _mlp(d_in: int, hidden: tuple, d_out: int, p: float = 0.2):
    from fastreg import nn
    layers, d = [], d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(p)]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def _digits(epochs: int) -> dict:
    import fastreg as fr
    from fastreg.demo import load_digits_data
    X, y, source = load_digits_data(0)
    g = np.random.default_rng(0)
    idx = g.permutation(len(X))
    tr, te = idx[:1400], idx[1400:]
    out = {"source": source}
    for prec in ("float32", "bf16"):
        fr.manual_seed(0)
        m = _mlp(X.shape[1], (128,), 10)
        opt = fr.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=1e-2)
        h = fr.train.fit(m, fr.nn.CrossEntropyLoss(), opt, train=(X[tr], y[tr]),
                         valid=(X[te], y[te]), epochs=epochs, batch_size=64, progress=False,
                         seed=0, precision=prec)
        out[prec] = {"loss": h.history["loss"], "val_loss": h.history["val_loss"],
                     "val_accuracy": h.history["val_accuracy"]}
    return out


def _synthetic(epochs: int, n: int = 60000, n_test: int = 10000) -> dict:
    """10 classes from a random teacher MLP 784-64-10 on Gaussian inputs (learnable, not
    separable by a linear model alone); a manual loop recording every step's loss."""
    import fastreg as fr
    g = np.random.default_rng(0)
    X = g.standard_normal((n + n_test, 784)).astype(np.float32)
    T1 = g.standard_normal((784, 64)) / np.sqrt(784)
    T2 = g.standard_normal((64, 10)) / np.sqrt(64)
    y = np.argmax(np.maximum(X @ T1, 0) @ T2 + 0.1 * g.standard_normal((n + n_test, 10)), 1)
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    out = {}
    for prec in ("float32", "bf16"):
        fr.manual_seed(0)
        m = _mlp(784, (512, 256), 10)
        loss_fn = fr.nn.CrossEntropyLoss()
        opt = fr.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2)
        loader = fr.data.DataLoader(Xtr, ytr, batch_size=256, shuffle=True, seed=0)
        amp = fr.autocast("bf16", enabled=prec == "bf16")
        losses, accs = [], []
        t0 = time.perf_counter()
        for _ in range(epochs):
            m.train()
            for xb, yb in loader:
                with amp:
                    o = m(xb)
                losses.append(loss_fn(o, yb))
                opt.zero_grad()
                m.backward(loss_fn.backward(), input_grad=False)
                opt.step()
            m.eval()
            accs.append(float(np.mean(m(Xte).argmax(1) == yte)))
        out[prec] = {"step_loss": losses, "test_accuracy": accs,
                     "seconds": time.perf_counter() - t0}
    return out


def bench_accuracy(epochs_digits: int, epochs_synth: int, png: str | None) -> dict:
    res = {"digits": _digits(epochs_digits), "synthetic": _synthetic(epochs_synth)}
    d, s = res["digits"], res["synthetic"]
    print(f"digits ({d['source']}), {epochs_digits} epochs:")
    for p in ("float32", "bf16"):
        print(f"  {p:8s} final loss {d[p]['loss'][-1]:.4f}  val loss {d[p]['val_loss'][-1]:.4f}"
              f"  val accuracy {d[p]['val_accuracy'][-1]:.4f}")
    print(f"synthetic 60000x784 (teacher MLP, 10 classes), {epochs_synth} epochs:")
    for p in ("float32", "bf16"):
        last = np.mean(s[p]["step_loss"][-50:])
        print(f"  {p:8s} mean loss of the last 50 steps {last:.4f}  test accuracy per epoch "
              f"{[round(a, 4) for a in s[p]['test_accuracy']]}  ({s[p]['seconds']:.1f} s)")
    if png:
        _plot(res, png)
        print(f"wrote {png}")
    return res


def _plot(res: dict, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    d = res["digits"]
    for p, style in (("float32", "-"), ("bf16", "--")):
        ep = np.arange(1, len(d[p]["loss"]) + 1)
        a1.plot(ep, d[p]["loss"], style, color="C0", label=f"train {p}")
        a1.plot(ep, d[p]["val_loss"], style, color="C1", label=f"valid {p}")
    a1.set(title="digits (1400 train / 397 valid)", xlabel="epoch", ylabel="cross-entropy",
           yscale="log")
    a1.legend()
    s = res["synthetic"]
    k = 20
    for p, color in (("float32", "C0"), ("bf16", "C3")):
        loss = np.asarray(s[p]["step_loss"])
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        a2.plot(np.arange(k, len(loss) + 1), smooth, color=color, alpha=0.9,
                label=f"{p} (test acc {s[p]['test_accuracy'][-1]:.3f})")
    a2.set(title="synthetic 60000 x 784, MLP 512-256 BN+ReLU+Dropout, AdamW, batch 256",
           xlabel="step", ylabel=f"train loss (mean of {k} steps)")
    a2.title.set_fontsize(9)
    a2.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--json")
    a = sub.add_parser("accuracy")
    a.add_argument("--epochs-digits", type=int, default=30)
    a.add_argument("--epochs", type=int, default=3, help="epochs of the synthetic task")
    a.add_argument("--png", default=os.path.join(ROOT, "docs", "autocast_loss.png"))
    a.add_argument("--json")
    one = sub.add_parser("_one")            # internal: time one configuration in this process
    one.add_argument("config", choices=CONFIGS)
    one.add_argument("threads", type=int)
    args = ap.parse_args(argv)
    if args.cmd == "_one":
        print(_time_one(args.config, args.threads))
        return
    res = bench_step(args.rounds, args.threads) if args.cmd == "step" else \
        bench_accuracy(args.epochs_digits, args.epochs, args.png)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=float)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)        # this checkout's fastreg, not an installed one
    main()
