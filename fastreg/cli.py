"""The ``fastreg`` command line (also ``python -m fastreg``).

    fastreg demo [--out DIR] [--epochs N] [--seed S] [--quick]
    fastreg train data.csv --target COL [--hidden 256,128] [--dropout 0.2]
                  [--batch-norm | --layer-norm] [--l1 X] [--l2 X] [--optimizer adamw] [--lr X]
                  [--scheduler onecycle|cosine|step|plateau] [--epochs N] [--patience N]
                  [--out model.fr]
    fastreg predict model.fr|model.onnx data.csv [--out preds.csv] [--onnx-output T]
    fastreg bench [options of the comparison driver]

Imports are lazy: ``fastreg predict`` never imports numba, ``fastreg --help`` imports nothing
heavy.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import sys

__all__ = ["CSVError", "main", "read_csv"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
SCHEDULERS = ("none", "onecycle", "cosine", "step", "plateau")
TASKS = ("auto", "classification", "regression")
#: Integer-valued targets with at most this many distinct values count as class labels.
MAX_AUTO_CLASSES = 100


class CSVError(ValueError):
    """A CSV file that cannot be used; the message names the file, row and column."""


class UsageError(ValueError):
    """A user error the command reports as one ``error:`` line (exit status 2)."""


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows of strings). Rows are numbered as in the file (the header is row 1)."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CSVError(f"{path}: cannot open ({exc.strerror or exc})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CSVError(f"{path}: the file is empty (a header row is needed)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CSVError(f"{path}: row 1: {exc}") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise CSVError(f"{path}: row 1: duplicate column name(s) {dup}")
        rows = []
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    rows.append(None)          # blank line: skipped, keeps row numbers
                    continue
                if len(row) != len(header):
                    raise CSVError(f"{path}: row {reader.line_num}: {len(row)} cells, the "
                                   f"header has {len(header)} columns")
                rows.append(row)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CSVError(f"{path}: row {reader.line_num}: {exc}") from None
    return header, rows


def _numeric_columns(path: str, header, rows, columns: list[str]):
    """Float64 matrix of ``columns`` and the file row number of each kept row."""
    import numpy as np
    idx = [header.index(c) for c in columns]
    kept = [(i + 2, r) for i, r in enumerate(rows) if r is not None]
    X = np.empty((len(kept), len(idx)), dtype=np.float64)
    for n, (rownum, r) in enumerate(kept):
        for j, c in enumerate(idx):
            cell = r[c].strip()
            try:
                v = float(cell)
            except ValueError:
                raise CSVError(f"{path}: row {rownum}, column {header[c]!r}: {cell!r} is not "
                               "a number") from None
            if not math.isfinite(v):
                raise CSVError(f"{path}: row {rownum}, column {header[c]!r}: {cell!r} is not "
                               "a finite number")
            X[n, j] = v
    return X, [k for k, _ in kept]


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, got "
                                         f"{text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastreg", description="fastreg: train and serve "
                                 "regularized MLPs on the CPU")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="regularization study on the digits dataset")
    d.add_argument("--out", default=".", help="folder for the loss-curve PNG (default .)")
    d.add_argument("--epochs", type=int, default=None, help="max epochs per variant")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    d.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    d.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", help="train an MLP on a CSV file and save it")
    t.add_argument("data", help="CSV with a header row")
    t.add_argument("--target", required=True, help="name of the target column")
    t.add_argument("--task", choices=TASKS, default="auto",
                   help="auto: classification for text or few integer targets")
    t.add_argument("--hidden", type=_parse_hidden, default=(256, 128),
                   help="hidden layer sizes, e.g. 256,128")
    t.add_argument("--dropout", type=float, default=0.0)
    norm = t.add_mutually_exclusive_group()
    norm.add_argument("--batch-norm", action="store_true")
    norm.add_argument("--layer-norm", action="store_true")
    t.add_argument("--l1", type=float, default=0.0, help="L1 penalty on the weights")
    t.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the weights")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled/optimizer weight decay (AdamW default 1e-2, else 0)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--scheduler", choices=SCHEDULERS, default="none")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--patience", type=int, default=10, help="early-stopping patience")
    t.add_argument("--valid", type=float, default=0.15, help="validation fraction")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="model.fr")
    t.add_argument("--quiet", action="store_true", help="do not print the history")

    p = sub.add_parser("predict", help="predict with a saved model")
    p.add_argument("model", help="a fastreg model file, or an .onnx file (fastreg[onnx])")
    p.add_argument("data", help="CSV with a header row (the model's feature columns)")
    p.add_argument("--out", default=None, help="CSV to write (default: standard output)")
    p.add_argument("--onnx-output", default=None, metavar="TENSOR",
                   help="for an .onnx file: the tensor to import up to (fastreg.onnx.load's "
                        "output=, e.g. a skl2onnx classifier's logits)")

    b = sub.add_parser("bench", help="fastreg : peer speed-up table (torch, scikit-learn)",
                       add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastreg`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:                 # everything after "bench" belongs to the driver
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "train":
            return _train(args)
        if args.command == "predict":
            return _predict(args)
    except (CSVError, UsageError) as exc:
        _error(args.command, exc)
        return 2
    except BrokenPipeError:           # e.g. `fastreg predict m.fr d.csv | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except (ValueError, TypeError, OSError) as exc:
        if type(exc).__name__ == "ModelFileError" or isinstance(exc, OSError):
            _error(args.command, exc)
            return 2
        raise
    return 2      # pragma: no cover - argparse requires a command


def _error(command: str, exc: BaseException) -> None:
    """One line on stderr: ``fastreg <command>: error: <message>``."""
    text = " ".join(str(exc).split())
    if len(text) > 2000:
        text = text[:2000] + " ..."
    print(f"fastreg {command}: error: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

def _demo(args) -> int:
    from .demo import run_demo
    if args.epochs is not None and args.epochs < 1:
        print("fastreg demo: error: --epochs must be >= 1", file=sys.stderr)
        return 2
    run_demo(out_dir=args.out, epochs=args.epochs, seed=args.seed, quick=args.quick,
             progress=not args.no_progress, plot=not args.no_plot)
    return 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("fastreg._bench")
    except ImportError as exc:
        print(f"fastreg bench: the benchmark driver (fastreg._bench) is not available: {exc}",
              file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


def _target(path: str, header, rows, column: str, task: str):
    """(y, task, classes): class indices with the label names, or float targets."""
    import numpy as np
    c = header.index(column)
    cells = [(i + 2, r[c].strip()) for i, r in enumerate(rows) if r is not None]
    values = []
    numeric = True
    for rownum, cell in cells:
        if cell == "":
            raise CSVError(f"{path}: row {rownum}, column {column!r}: empty target")
        try:
            v = float(cell)
            if not math.isfinite(v):
                raise ValueError
            values.append(v)
        except ValueError:
            numeric = False
            if task == "regression":
                raise CSVError(f"{path}: row {rownum}, column {column!r}: {cell!r} is not a "
                               "number (regression needs numeric targets)") from None
    if task == "auto":
        if not numeric:
            task = "classification"
        else:
            integral = all(v == int(v) for v in values)
            task = "classification" if integral and len(set(values)) <= MAX_AUTO_CLASSES \
                else "regression"
    if task == "regression":
        return np.asarray(values, dtype=np.float32).reshape(-1, 1), task, None
    labels = [cell for _, cell in cells]
    if numeric:   # numeric labels sort numerically, keep their text ("3" not "3.0")
        classes = sorted(set(labels), key=lambda s: float(s))
    else:
        classes = sorted(set(labels))
    index = {k: i for i, k in enumerate(classes)}
    if len(classes) < 2:
        raise CSVError(f"{path}: column {column!r}: a classification target needs at least 2 "
                       f"classes, found {classes}")
    return np.asarray([index[s] for s in labels], dtype=np.int64), task, classes


def _make_optimizer(fr, name: str, groups, lr: float):
    cls = {"sgd": fr.optim.SGD, "adam": fr.optim.Adam, "adamw": fr.optim.AdamW,
           "rmsprop": fr.optim.RMSprop, "adagrad": fr.optim.Adagrad,
           "adadelta": fr.optim.Adadelta}[name]
    return cls(groups, lr=lr)


def _make_scheduler(fr, name: str, opt, args, steps_per_epoch: int):
    S = fr.optim.lr_scheduler
    if name == "none":
        return None
    if name == "onecycle":
        return S.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    if name == "cosine":
        return S.CosineAnnealingLR(opt, T_max=args.epochs)
    if name == "step":          # halve the rate four times over the run
        return S.StepLR(opt, step_size=max(1, args.epochs // 4), gamma=0.5)
    return S.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=max(1, args.patience // 2))


def _fold_standardization(model, mean, std) -> None:
    """Make the first Linear take raw features: W' = W / std, b' = b - W' mean (float64)."""
    import numpy as np

    from .nn._spec import LAYERS
    first = next(m for m in model.modules() if type(m) is LAYERS["Linear"])
    W = first.weight.data.astype(np.float64)
    W2 = W / std
    b = first.bias.data.astype(np.float64) - W2 @ mean
    first.weight.data[...] = W2
    first.bias.data[...] = b


def _train(args) -> int:
    import numpy as np

    import fastreg as fr

    from . import io as frio
    from .demo import build_mlp
    for name in ("epochs", "batch_size", "patience"):
        if getattr(args, name) < (0 if name == "patience" else 1):
            raise CSVError(f"--{name.replace('_', '-')} must be positive, "
                           f"got {getattr(args, name)}")
    if not 0.0 <= args.dropout < 1.0:
        raise CSVError(f"--dropout must be in [0, 1), got {args.dropout}")
    header, rows = read_csv(args.data)
    if args.target not in header:
        raise CSVError(f"{args.data}: column {args.target!r} not found (columns: "
                       f"{', '.join(header)})")
    features = [h for h in header if h != args.target]
    if not features:
        raise CSVError(f"{args.data}: no feature columns besides the target {args.target!r}")
    X, _ = _numeric_columns(args.data, header, rows, features)
    if len(X) < 4:
        raise CSVError(f"{args.data}: only {len(X)} data rows; need at least 4")
    y, task, classes = _target(args.data, header, rows, args.target, args.task)
    fr.manual_seed(args.seed)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    Xs = ((X - mean) / std).astype(np.float32)
    stratify = task == "classification" and np.bincount(y).min() >= 2
    (Xtr, ytr), (Xva, yva), _ = fr.data.train_valid_test_split(
        Xs, y, valid=args.valid, test=0.0, stratify=stratify, seed=args.seed)
    n_out = len(classes) if task == "classification" else 1
    norm = "batch" if args.batch_norm else "layer" if args.layer_norm else None
    model = build_mlp(X.shape[1], n_out, hidden=args.hidden, dropout=args.dropout, norm=norm)
    wd = args.weight_decay if args.weight_decay is not None else (
        1e-2 if args.optimizer == "adamw" else 0.0)
    groups = fr.optim.param_groups(model, weight_decay=wd, l1=args.l1, l2=args.l2)
    opt = _make_optimizer(fr, args.optimizer, groups, args.lr)
    steps = -(-len(Xtr) // args.batch_size)
    sched = _make_scheduler(fr, args.scheduler, opt, args, steps)
    loss_fn = fr.nn.CrossEntropyLoss() if task == "classification" else fr.nn.MSELoss()
    stopper = fr.train.EarlyStopping(monitor="val_loss", patience=args.patience)
    print(f"{args.data}: {len(X)} rows, {len(features)} features, target {args.target!r} "
          f"({task}{f', {n_out} classes' if classes else ''}); train {len(Xtr)}, "
          f"valid {len(Xva)}")
    hist = fr.train.fit(model, loss_fn, opt, train=(Xtr, ytr), valid=(Xva, yva),
                        epochs=args.epochs, batch_size=args.batch_size, scheduler=sched,
                        callbacks=[stopper], progress=False, seed=args.seed)
    if not args.quiet:
        for i in range(len(hist)):
            print(hist.format_epoch(i))
    print(f"{hist.stop_reason}; best epoch {hist.best_epoch} (val_loss {hist.best_value:.5g}, "
          "weights restored)")
    _fold_standardization(model, mean, std)
    model.eval()
    meta = {"features": features, "target": args.target, "task": task, "classes": classes}
    frio.save(model, args.out, metadata=meta)
    print(f"saved {args.out}")
    return 0


def _load_model(path: str, onnx_output: str | None = None):
    """A fastreg model file, or an ``.onnx`` file through ``fastreg.onnx.load`` (an ONNX file it
    cannot import, or a missing onnx package, is reported as a ModelFileError)."""
    from . import io as frio
    if not path.lower().endswith(".onnx"):
        if onnx_output is not None:
            raise frio.ModelFileError(f"{path}: --onnx-output applies to .onnx files only")
        return frio.load(path)
    from .onnx import load as load_onnx
    try:
        return load_onnx(path, output=onnx_output)
    except (ValueError, ImportError) as exc:
        raise frio.ModelFileError(str(exc)) from None


def _predict(args) -> int:
    import numpy as np

    model = _load_model(args.model, args.onnx_output)
    meta = model.metadata or {}
    header, rows = read_csv(args.data)
    features = meta.get("features")
    if isinstance(features, list) and all(isinstance(f, str) for f in features):
        missing = [f for f in features if f not in header]
        if missing:
            raise CSVError(f"{args.data}: missing feature column(s) {missing} the model was "
                           "trained on")
    else:
        features = header
    X, _ = _numeric_columns(args.data, header, rows, features)
    try:
        scores = model.predict(X)       # cast once to the model's dtype by the predictor
    except ValueError as exc:           # the columns do not fit the model's input
        raise UsageError(f"{args.data}: {len(features)} feature column(s) do not fit the "
                         f"model {args.model} ({exc}); a model saved without feature names "
                         "uses every column, so remove the target and other extra "
                         "columns") from None
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores.reshape(-1, 1)
    classes = meta.get("classes")
    if meta.get("task") == "classification" and isinstance(classes, list) \
            and len(classes) != scores.shape[1]:
        raise UsageError(f"{args.model}: its metadata lists {len(classes)} class(es) but the "
                         f"model gives {scores.shape[1]} output(s)")
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        w = csv.writer(out)
        if meta.get("task") == "classification" and isinstance(classes, list):
            z = scores - scores.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            w.writerow(["prediction"] + [f"p_{c}" for c in classes])
            for row, k in zip(p, scores.argmax(axis=1)):
                w.writerow([classes[k]] + [f"{v:.6g}" for v in row])
        elif scores.ndim == 2 and scores.shape[1] == 1:
            w.writerow(["prediction"])
            for v in scores[:, 0]:
                w.writerow([f"{v:.9g}"])
        else:
            w.writerow([f"output_{j}" for j in range(scores.shape[1])])
            for row in scores:
                w.writerow([f"{v:.9g}" for v in row])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(scores)} predictions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
