"""``fastreg demo``: a fast ``--compare`` regularization study on the 8x8 digits (no download).

It is :func:`fastreg.study.study` on the bundled digits given as 8x8 images (so data
augmentation joins the techniques): every technique alone at the best of a 2-point strength grid
(picked by validation accuracy), then each chosen strength and the combination over 2 seeds
(``--quick``: 1), 8 epochs max (``--quick``: 3), an MLP 64-128-64-10 trained with Adam at
lr 3e-3. The study (its Optuna storage, report, best model) goes to ``out_dir``; re-running it
continues (finished trials are not re-run).

Data: scikit-learn's bundled digits (1797 images); without scikit-learn a generated stand-in of
the same shape is used and a notice is printed. Needs ``fastreg[study]`` (optuna, pandas).
"""
from __future__ import annotations

import numpy as np

#: Hidden sizes of :func:`build_mlp`'s default (``fastreg train --hidden``'s default too).
HIDDEN = (256, 128)
#: The demo study's network and budget.
DEMO_HIDDEN = (128, 64)
DEMO_LR = 3e-3


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


def run_demo(out_dir: str = "fastreg_demo", epochs: int | None = None, seed: int = 0,
             quick: bool = False, progress: bool = True, plot: bool = True,
             seeds: int | None = None, jobs: int = 1, threads: int | None = 1, out=print):
    """Run the demo study; return its :class:`fastreg.study.StudyResult`.

    ``plot=False`` writes no report (the table is printed either way). ``threads`` (default 1:
    these layers are too small to gain from a second thread) applies during the run only (the
    trial processes of ``jobs > 1`` split the cores themselves); None keeps the setting.
    """
    import fastreg as fr
    from fastreg.study import study
    if epochs is None:
        epochs = 3 if quick else 8
    if seeds is None:
        seeds = 1 if quick else 2
    X, y, source = load_digits_data(seed)
    out(f"notice: using a {source}" if source.startswith("generated") else f"data: {source}")
    previous = fr.get_num_threads()
    if threads is not None and threads != previous and jobs == 1:
        fr.set_num_threads(threads)
    try:
        return study((X.reshape(-1, 8, 8), y), mode="compare", seeds=seeds, epochs=epochs,
                     hidden=DEMO_HIDDEN, lr=DEMO_LR, grid="tiny", jobs=jobs, out=out_dir,
                     study_name=f"digits-e{epochs}-s{seed}", seed=seed, progress=progress,
                     report=plot, echo=out)
    finally:
        if fr.get_num_threads() != previous:
            fr.set_num_threads(previous)
