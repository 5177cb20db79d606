"""``fastreg demo``: a regularization study on the 8x8 digits (no download needed).

The same MLP (64-256-128-10, ReLU, Adam, batch 64) is trained seven ways -- no regularization,
L2 penalty, L1 penalty, dropout, batch norm, layer norm, and all of them (L2 + L1 + dropout +
batch norm) with early stopping -- on one train / validation / test split. The table shows
train / valid / test accuracy, the generalization gap (train - test accuracy), epochs run, the
best epoch (lowest validation loss) and seconds; a PNG shows the train/valid loss curves of every
variant with the best epoch and the early stop marked.

Data: scikit-learn's bundled digits (1797 images); without scikit-learn a generated stand-in of
the same shape is used and a notice is printed.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

#: (name, options) of the variants, in table order.
VARIANTS = (
    ("none", {}),
    ("L2", {"l2": 1e-3}),
    ("L1", {"l1": 1e-4}),
    ("dropout", {"dropout": 0.3}),
    ("batch norm", {"norm": "batch"}),
    ("layer norm", {"norm": "layer"}),
    ("all + early stop", {"l2": 1e-3, "l1": 1e-4, "dropout": 0.3, "norm": "batch",
                          "early_stopping": True}),
)
HIDDEN = (256, 128)


def load_digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(X float32 in [0, 1], y int64, description); generated when scikit-learn is absent."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        g = np.random.default_rng(seed)
        protos = g.uniform(0, 16, (10, 64))
        y = g.integers(0, 10, 1797)
        X = np.clip(protos[y] + g.normal(0, 6, (1797, 64)), 0, 16)
        return ((X / 16).astype(np.float32), y.astype(np.int64),
                ("generated stand-in (scikit-learn is not installed: pip install "
                 "scikit-learn for the real digits)"))
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y.astype(np.int64), "scikit-learn digits (1797 8x8)"


def build_mlp(n_in: int, n_out: int, hidden=HIDDEN, dropout: float = 0.0,
              norm: str | None = None):
    """Linear -> [BatchNorm1d] -> ReLU -> [LayerNorm] -> [Dropout] per hidden layer."""
    from . import nn
    layers = []
    d = n_in
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if norm == "layer":
            layers.append(nn.LayerNorm(h))
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="demo", unit="variant", file=sys.stderr)


def run_variant(name: str, opts: dict, data, epochs: int, seed: int, lr: float = 2e-3,
                batch_size: int = 64, patience: int = 5) -> dict:
    """Train one variant; return its row of the table (and its History)."""
    import fastreg as fr
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    fr.manual_seed(seed)            # same initial weights in every variant (same shapes)
    model = build_mlp(Xtr.shape[1], int(max(ytr.max(), yva.max(), yte.max())) + 1,
                      dropout=opts.get("dropout", 0.0), norm=opts.get("norm"))
    loss_fn = fr.nn.CrossEntropyLoss()
    groups = fr.optim.param_groups(model, l1=opts.get("l1", 0.0), l2=opts.get("l2", 0.0))
    opt = fr.optim.Adam(groups, lr=lr)
    callbacks = []
    if opts.get("early_stopping"):
        callbacks.append(fr.train.EarlyStopping(monitor="val_loss", patience=patience))
    t0 = time.perf_counter()
    hist = fr.train.fit(model, loss_fn, opt, train=(Xtr, ytr), valid=(Xva, yva),
                        epochs=epochs, batch_size=batch_size, callbacks=callbacks,
                        progress=False, seed=seed)
    seconds = time.perf_counter() - t0
    acc = {split: fr.train.evaluate(model, loss_fn, X, y)["accuracy"]
           for split, (X, y) in (("train", (Xtr, ytr)), ("valid", (Xva, yva)),
                                 ("test", (Xte, yte)))}
    return {"variant": name, "train_acc": acc["train"], "valid_acc": acc["valid"],
            "test_acc": acc["test"], "gap": acc["train"] - acc["test"],
            "epochs": len(hist), "best_epoch": hist.best_epoch, "seconds": seconds,
            "stopped_early": hist.stopped_early, "history": hist}


def format_table(rows: list[dict]) -> str:
    head = (f"{'variant':<18} {'train':>7} {'valid':>7} {'test':>7} {'gap':>7} "
            f"{'epochs':>6} {'best':>5} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<18} {r['train_acc']:7.4f} {r['valid_acc']:7.4f} "
                     f"{r['test_acc']:7.4f} {r['gap']:7.4f} {r['epochs']:6d} "
                     f"{r['best_epoch'] if r['best_epoch'] is not None else '-':>5} "
                     f"{r['seconds']:8.2f}")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: str) -> bool:
    """Train/valid loss per variant, best epoch and early stop marked. False without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = 4
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        h = r["history"]
        ax.plot(h.epochs, h["loss"], label="train")
        ax.plot(h.epochs, h["val_loss"], label="valid")
        if h.best_epoch is not None:
            ax.axvline(h.best_epoch, color="k", ls="--", lw=1, label=f"best {h.best_epoch}")
        if r["stopped_early"]:
            ax.axvline(h.epochs[-1], color="r", ls=":", lw=1.5, label="early stop")
        ax.set_title(r["variant"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def run_demo(out_dir: str = ".", epochs: int | None = None, seed: int = 0, quick: bool = False,
             progress: bool = True, plot: bool = True, threads: int | None = 1,
             out=print) -> list[dict]:
    """Run the study, print the table, write ``<out_dir>/fastreg_demo_curves.png``.

    ``quick`` trains 6 epochs per variant (a smoke test); the default is 30. ``threads``
    (default 1: these layers are too small to gain from a second thread, and a spinning
    second thread is costly on a busy machine) applies during the run only; None keeps the
    current setting.
    """
    import fastreg as fr
    previous = fr.get_num_threads()
    if threads is not None and threads != previous:
        fr.set_num_threads(threads)
    try:
        return _run(out_dir, epochs, seed, quick, progress, plot, out)
    finally:
        if fr.get_num_threads() != previous:
            fr.set_num_threads(previous)


def _run(out_dir, epochs, seed, quick, progress, plot, out) -> list[dict]:
    import fastreg as fr
    if epochs is None:
        epochs = 6 if quick else 30
    X, y, source = load_digits_data(seed)
    if source.startswith("generated"):
        out(f"notice: using a {source}")
    else:
        out(f"data: {source}")
    data = fr.data.train_valid_test_split(X, y, valid=0.15, test=0.2, seed=seed)
    out(f"split: train {len(data[0][0])}, valid {len(data[1][0])}, test {len(data[2][0])}; "
        f"MLP 64-{'-'.join(map(str, HIDDEN))}-10, Adam, {epochs} epochs max")
    bar = _bar(len(VARIANTS), progress)
    rows = []
    try:
        for name, opts in VARIANTS:
            if bar is not None:
                bar.set_postfix_str(name)
            rows.append(run_variant(name, opts, data, epochs, seed))
            if bar is not None:
                bar.update(1)
            elif progress:
                out(f"  trained {name} ({rows[-1]['seconds']:.1f} s)")
    finally:
        if bar is not None:
            bar.close()
    out(format_table(rows))
    if plot:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "fastreg_demo_curves.png")
        if plot_curves(rows, path):
            out(f"loss curves: {path}")
        else:
            out("notice: matplotlib is not installed, no PNG written "
                "(pip install matplotlib)")
    return rows
