"""Train a regularized MLP on the 8x8 digits and print the per-epoch history and test accuracy.

    python examples/train_digits.py [--epochs 40] [--patience 5] [--plot history.png]

BatchNorm1d + ReLU + Dropout after each hidden layer, AdamW (decoupled weight decay), a one-cycle
learning-rate schedule and early stopping on the validation loss. Uses scikit-learn's bundled
digits when scikit-learn is installed, else a generated stand-in of the same shape.
"""
from __future__ import annotations

import argparse

import numpy as np

import fastreg as fr
from fastreg import nn


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        # 10 noisy prototypes in 64 dimensions: learnable, same shapes as digits
        g = np.random.default_rng(seed)
        protos = g.uniform(0, 16, (10, 64))
        y = g.integers(0, 10, 1797)
        X = np.clip(protos[y] + g.normal(0, 4, (1797, 64)), 0, 16)
        return (X / 16).astype(np.float32), y, "generated (scikit-learn not installed)"
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y, "scikit-learn digits"


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 10))


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None, help="save the loss/accuracy curves here")
    args = ap.parse_args(argv)

    fr.manual_seed(args.seed)
    X, y, source = load_data(args.seed)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = fr.data.train_valid_test_split(
        X, y, valid=0.15, test=0.2, seed=args.seed)
    print(f"data: {source}; train {len(Xtr)}, valid {len(Xva)}, test {len(Xte)}")

    model = build_model()
    print(model)
    loss_fn = nn.CrossEntropyLoss()
    opt = fr.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * -(-len(Xtr) // args.batch_size)
    sched = fr.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    stopper = fr.train.EarlyStopping(monitor="val_loss", patience=args.patience)
    history = fr.train.fit(model, loss_fn, opt, train=(Xtr, ytr), valid=(Xva, yva),
                           epochs=args.epochs, batch_size=args.batch_size, scheduler=sched,
                           callbacks=[stopper], progress=False, seed=args.seed)
    for i in range(len(history)):
        print(history.format_epoch(i))
    print(f"{history.stop_reason}; best epoch {history.best_epoch} "
          f"(weights restored), {history.wall_time:.2f} s")
    test = fr.train.evaluate(model, loss_fn, Xte, yte)
    print(f"test loss {test['loss']:.4f}  test accuracy {test['accuracy']:.4f}")
    if args.plot:
        history.plot(args.plot)
        print(f"curves saved to {args.plot}")
    return test["accuracy"]


if __name__ == "__main__":
    main()
