"""The ``fastreg`` command line (also ``python -m fastreg``).

    fastreg demo [--out DIR] [--epochs N] [--seed S] [--seeds K] [--jobs N] [--quick]
    fastreg study data.csv --target COL [--compare | --search N] [--timeout S] [--seeds 3]
                  [--cv K] [--epochs N] [--jobs N] [--dask ADDR|local:N] [--storage URL]
                  [--study-name NAME] [--out DIR] [--report-only DIR] [--no-progress] ...
                  (see fastreg.study)
    fastreg train data.csv|data.parquet --target COL [--sep ';'] [--drop COL...]
                  [--features COL...] [--impute median|mean|none] [--task ...]
                  [--hidden 256,128] [--dropout 0.2]
                  [--batch-norm | --layer-norm] [--l1 X] [--l2 X] [--optimizer adamw] [--lr X]
                  [--scheduler onecycle|cosine|step|plateau] [--epochs N] [--patience N]
                  [--out model.fr]
    fastreg predict model.fr|model.onnx data.csv [--out preds.csv] [--keep COL...]
                  [--target COL] [--sep ';'] [--onnx-output T]

Tables are read by :func:`fastreg.data.read_table` (separator sniffed, decimal commas, missing
markers, Parquet); ``train`` fits a :class:`fastreg.data.TablePreprocessor` (impute, one-hot
text columns, standardize) on the training split only and stores it in the model file, and
``predict`` applies it to the raw rows.
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
IMPUTE = ("median", "mean", "none")
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


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers, got "
                                         f"{text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _sep(text: str) -> str:
    sep = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}.get(text, text)
    if len(sep) != 1:
        raise argparse.ArgumentTypeError(f"--sep must be one character (',' ';' tab), got "
                                         f"{text!r}")
    return sep


def _table_options(parser) -> None:
    parser.add_argument("--sep", type=_sep, default=None,
                        help="field separator: ',' ';' 'tab' (None: sniffed)")
    parser.add_argument("--decimal", choices=(".", ","), default=None,
                        help="decimal mark (None: ',' when the separator is not ',' and cells "
                             "look like 12,5)")
    parser.add_argument("--encoding", default="utf-8-sig", help="text encoding of a CSV")
    parser.add_argument("--na", nargs="+", default=None, metavar="TEXT",
                        help="extra missing-value markers (besides '', NA, N/A, null, ?, ...)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastreg", description="fastreg: train and serve "
                                 "regularized MLPs on the CPU")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="a fast regularization study (--compare) on the bundled "
                       "digits")
    d.add_argument("--out", default="fastreg_demo",
                   help="folder of the study (storage, report, best model)")
    d.add_argument("--epochs", type=int, default=None, help="max epochs per trial (default 8; "
                   "--quick: 3)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seeds", type=int, default=None, help="seeds per technique (default 2; "
                   "--quick: 1)")
    d.add_argument("--jobs", type=int, default=1, help="local worker processes")
    d.add_argument("--quick", action="store_true", help="a smoke test: 3 epochs, 1 seed")
    d.add_argument("--no-plot", action="store_true", help="no report (the table only)")
    d.add_argument("--no-progress", action="store_true")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser("train", help="train an MLP on a CSV/Parquet table and save it",
                       formatter_class=fmt)
    t.add_argument("data", help="CSV (header row; separator sniffed) or Parquet file")
    t.add_argument("--target", required=True, help="name of the target column")
    t.add_argument("--task", choices=TASKS, default="auto",
                   help="auto: classification for text or few integer targets")
    _table_options(t)
    t.add_argument("--drop", nargs="+", default=[], metavar="COL",
                   help="columns not used as features (IDs, leaks)")
    t.add_argument("--features", nargs="+", default=None, metavar="COL",
                   help="the feature columns (default: all but the target and --drop)")
    t.add_argument("--impute", choices=IMPUTE, default="median",
                   help="fill of missing numeric cells (training split's statistic); none: "
                        "missing cells are an error")
    t.add_argument("--hidden", type=_parse_hidden, default=(256, 128),
                   help="hidden layer sizes, e.g. 256,128")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    norm = t.add_mutually_exclusive_group()
    norm.add_argument("--batch-norm", action="store_true", help="BatchNorm1d after each Linear")
    norm.add_argument("--layer-norm", action="store_true", help="LayerNorm after each ReLU")
    t.add_argument("--l1", type=float, default=0.0, help="L1 penalty on the weights")
    t.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the weights")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled/optimizer weight decay (None: 1e-2 for AdamW, else 0)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    t.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning-rate schedule")
    t.add_argument("--epochs", type=int, default=50, help="maximum number of epochs")
    t.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    t.add_argument("--patience", type=int, default=10, help="early-stopping patience")
    t.add_argument("--valid", type=float, default=0.15, help="validation fraction")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--out", default="model.fr", help="model file to write")
    t.add_argument("--quiet", action="store_true", help="do not print the history")

    p = sub.add_parser("predict", help="predict with a saved model", formatter_class=fmt)
    p.add_argument("model", help="a fastreg model file, or an .onnx file (fastreg[onnx])")
    p.add_argument("data", help="CSV or Parquet table with the model's feature columns (raw "
                                "values: the model file's preprocessing is applied)")
    p.add_argument("--out", default=None, help="CSV to write (None: standard output)")
    p.add_argument("--keep", nargs="+", default=[], metavar="COL",
                   help="columns copied to the predictions file (IDs)")
    p.add_argument("--target", default=None,
                   help="target column: metrics are printed when it is present (None: the "
                        "model's target, when the table has it)")
    _table_options(p)
    p.add_argument("--onnx-output", default=None, metavar="TENSOR",
                   help="for an .onnx file: the tensor to import up to (fastreg.onnx.load's "
                        "output=, e.g. a skl2onnx classifier's logits)")

    st = sub.add_parser("study", help="the regularization study (Optuna) on a table or images",
                        formatter_class=fmt)
    st.add_argument("data", nargs="?", default=None,
                    help="CSV/Parquet table (with --target), .npy images (N,H,W[,C]) with "
                         "--labels, or .npz holding X and y")
    st.add_argument("--target", default=None, help="target column of a table")
    st.add_argument("--labels", default=None, help=".npy of labels for .npy images")
    st.add_argument("--task", choices=TASKS, default="auto",
                    help="auto: classification for text or few integer targets")
    mode = st.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true",
                      help="(default) every technique alone at a searched strength, and the "
                           "combination, over --seeds seeds")
    mode.add_argument("--search", type=int, default=None, metavar="N",
                      help="TPE search of the joint space for N trials")
    st.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="stop starting trials after S seconds (--search)")
    st.add_argument("--seeds", type=int, default=3, help="seeds per technique (compare)")
    st.add_argument("--cv", type=int, default=None, metavar="K",
                    help="K-fold cross-validation instead of one validation split")
    st.add_argument("--epochs", type=int, default=30, help="max epochs per trial")
    st.add_argument("--hidden", type=_parse_hidden, default=(256, 128),
                    help="hidden layer sizes")
    st.add_argument("--lr", type=float, default=1e-3, help="base learning rate (Adam)")
    st.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    st.add_argument("--grid", choices=("full", "small", "tiny"), default="full",
                    help="strength grid points per technique: 4, 3, 2")
    st.add_argument("--quick", action="store_true",
                    help="smoke test: --grid tiny, 3 epochs, 1 seed")
    st.add_argument("--techniques", nargs="+", default=None, metavar="NAME",
                    help="compare only these techniques (and 'none'), e.g. L2 dropout "
                         "'early stopping'")
    st.add_argument("--jobs", type=int, default=1,
                    help="local worker processes (each cores/N threads)")
    st.add_argument("--dask", default=None, metavar="ADDR|local:N",
                    help="run trials on a Dask cluster (scheduler address, or local:N)")
    st.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna storage, an SQLAlchemy URL (default sqlite:///OUT/study.db)")
    st.add_argument("--study-name", default=None, help="study name prefix (default: the "
                    "data file's name)")
    st.add_argument("--out", default="study_out", help="output folder")
    st.add_argument("--report-only", default=None, metavar="DIR",
                    help="only (re)write the report of the study in DIR from its storage")
    st.add_argument("--seed", type=int, default=0, help="split seed and first trial seed")
    st.add_argument("--heartbeat", type=int, default=None, metavar="S",
                    help="trial heartbeat (s); a silent trial is failed and retried after 4*S")
    st.add_argument("--no-progress", action="store_true")
    _table_options(st)
    st.add_argument("--drop", nargs="+", default=[], metavar="COL",
                    help="columns not used as features (IDs, leaks)")
    st.add_argument("--features", nargs="+", default=None, metavar="COL",
                    help="the feature columns (default: all but the target and --drop)")
    st.add_argument("--impute", choices=IMPUTE, default="median",
                    help="fill of missing numeric cells")

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
        if args.command == "study":
            return _study(args)
        if args.command == "predict":
            return _predict(args)
    except (CSVError, UsageError) as exc:
        _error(args.command, exc)
        return 2
    except KeyboardInterrupt:         # Ctrl-C outside the study's trials (loading, startup)
        print(f"fastreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:           # e.g. `fastreg predict m.fr d.csv | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except (ValueError, TypeError, OSError) as exc:
        if type(exc).__name__ in ("ModelFileError", "TableError", "StudyError") or \
                isinstance(exc, OSError):
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
    """A fast --compare study on the bundled digits (8x8 images, so augmentation is in)."""
    from .demo import run_demo
    for name in ("epochs", "seeds", "jobs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"fastreg demo: error: --{name} must be >= 1, got {v}", file=sys.stderr)
            return 2
    res = run_demo(out_dir=args.out, epochs=args.epochs, seed=args.seed, quick=args.quick,
                   progress=not args.no_progress, plot=not args.no_plot, seeds=args.seeds,
                   jobs=args.jobs)
    return 130 if res.interrupted else 0


def _study(args) -> int:
    import fastreg.study as S
    if args.report_only is not None:
        files = S.report_only(args.report_only, storage=args.storage,
                              study_name=args.study_name)
        for k, p in files.items():
            print(f"{k}: {p}")
        return 0
    if args.data is None:
        raise UsageError("DATA is required (a CSV/Parquet table, .npy images or .npz), or "
                         "--report-only DIR")
    epochs, seeds, grid = args.epochs, args.seeds, args.grid
    if args.quick:
        epochs, seeds, grid = min(epochs, 3), 1, "tiny"
    hb = None
    if args.heartbeat is not None:
        if args.heartbeat < 1:
            raise UsageError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
        hb = (args.heartbeat, 4 * args.heartbeat)
    read = {"sep": args.sep, "decimal": args.decimal, "encoding": args.encoding,
            "na": args.na}
    res = S.study(args.data, target=args.target, labels=args.labels, task=args.task,
                  mode="search" if args.search is not None or (
                      args.timeout is not None and not args.compare) else "compare",
                  n_trials=args.search, timeout=args.timeout, seeds=seeds, cv=args.cv,
                  epochs=epochs, hidden=args.hidden, lr=args.lr, batch_size=args.batch_size,
                  grid=grid, jobs=args.jobs, dask=args.dask, storage=args.storage,
                  study_name=args.study_name, out=args.out, seed=args.seed,
                  progress=not args.no_progress, read_options=read, impute=args.impute,
                  drop=args.drop, features=args.features, heartbeat=hb,
                  techniques=args.techniques)
    return 130 if res.interrupted else 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("fastreg._bench")
    except ImportError as exc:
        print(f"fastreg bench: the benchmark driver (fastreg._bench) is not available: {exc}",
              file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


def _target(path: str, col, rownums, column: str, task: str):
    """(y, task, classes): class indices with the label names, or float targets, from the
    target Series ``col`` of a read_table frame (``rownums``: file row of each row)."""
    import numpy as np
    numeric = col.dtype.kind in "biuf"
    values = col.to_numpy(dtype=np.float64, na_value=np.nan) if numeric else None
    for i, v in enumerate(col):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise CSVError(f"{path}: row {rownums[i]}, column {column!r}: empty target")
    if not numeric and task == "regression":
        for i, v in enumerate(col):
            try:
                float(v)
            except ValueError:
                raise CSVError(f"{path}: row {rownums[i]}, column {column!r}: {v!r} is not a "
                               "number (regression needs numeric targets)") from None
    if task == "auto":
        if not numeric:
            task = "classification"
        else:
            integral = bool(np.all(values == np.round(values)))
            task = "classification" if integral and len(set(values.tolist())) <= \
                MAX_AUTO_CLASSES else "regression"
    if task == "regression":
        if values is None:
            values = np.asarray([float(v) for v in col])
        return values.astype(np.float64), task, None
    if numeric:   # numeric labels sort numerically, keep their text ("3" not "3.0")
        labels = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values]
        classes = sorted(set(labels), key=float)
    else:
        labels = [str(v) for v in col]
        classes = sorted(set(labels))
    index = {k: i for i, k in enumerate(classes)}
    if len(classes) < 2:
        raise CSVError(f"{path}: column {column!r}: a classification target needs at least 2 "
                       f"classes, found {classes}")
    return np.asarray([index[s] for s in labels], dtype=np.int64), task, classes


def _read_table(path: str, args):
    from .data.table import DEFAULT_NA_VALUES, read_table
    na = DEFAULT_NA_VALUES + tuple(args.na or ())
    return read_table(path, sep=args.sep, decimal=args.decimal, na_values=na,
                      encoding=args.encoding)


def _columns_exist(path: str, header, wanted, what: str) -> None:
    from .data.table import _names
    have = set(header)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise CSVError(f"{path}: {what} column(s) {_names(missing)} not found (columns: "
                       f"{', '.join(map(str, header[:20]))}"
                       f"{f', ... ({len(header) - 20} more)' if len(header) > 20 else ''})")


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
    df = _read_table(args.data, args)
    header = [str(c) for c in df.columns]
    if args.target not in header:
        from .data.table import _names
        raise CSVError(f"{args.data}: column {args.target!r} not found (columns: "
                       f"{_names(header)[1:-1].replace(chr(39), '')})")
    _columns_exist(args.data, header, args.drop, "--drop")
    if args.features is not None:
        _columns_exist(args.data, header, args.features, "--features")
        if args.target in args.features:
            raise CSVError(f"--features must not include the target {args.target!r}")
        features = list(dict.fromkeys(args.features))
    else:
        dropped = set(args.drop)
        features = [h for h in header if h != args.target and h not in dropped]
    if not features:
        raise CSVError(f"{args.data}: no feature columns besides the target {args.target!r}")
    from .data.table import row_numbers
    rownums = row_numbers(df)
    if len(df) < 4:
        raise CSVError(f"{args.data}: only {len(df)} data rows; need at least 4")
    y, task, classes = _target(args.data, df[args.target], rownums, args.target, args.task)
    fr.manual_seed(args.seed)
    stratify = task == "classification" and np.bincount(y).min() >= 2
    idx = np.arange(len(df)).reshape(-1, 1)
    (itr, ytr), (iva, yva), _ = fr.data.train_valid_test_split(
        idx, y, valid=args.valid, test=0.0, stratify=stratify, seed=args.seed)
    itr, iva = itr[:, 0], iva[:, 0]
    # preprocessing fitted on the training rows only
    pre = fr.data.TablePreprocessor(impute=args.impute)
    try:
        pre.fit(df.iloc[itr][features], y=ytr if task == "regression" else None)
        Xtr = pre.transform(df.iloc[itr][features]).astype(np.float32)
        Xva = pre.transform(df.iloc[iva][features]).astype(np.float32)
    except ValueError as exc:
        raise CSVError(f"{args.data}: {exc}") from None
    if task == "regression":
        ytr = pre.transform_target(ytr).astype(np.float32).reshape(-1, 1)
        yva = pre.transform_target(yva).astype(np.float32).reshape(-1, 1)
    n_out = len(classes) if task == "classification" else 1
    norm = "batch" if args.batch_norm else "layer" if args.layer_norm else None
    model = build_mlp(Xtr.shape[1], n_out, hidden=args.hidden, dropout=args.dropout,
                      norm=norm)
    wd = args.weight_decay if args.weight_decay is not None else (
        1e-2 if args.optimizer == "adamw" else 0.0)
    groups = fr.optim.param_groups(model, weight_decay=wd, l1=args.l1, l2=args.l2)
    opt = _make_optimizer(fr, args.optimizer, groups, args.lr)
    steps = -(-len(Xtr) // args.batch_size)
    sched = _make_scheduler(fr, args.scheduler, opt, args, steps)
    loss_fn = fr.nn.CrossEntropyLoss() if task == "classification" else fr.nn.MSELoss()
    stopper = fr.train.EarlyStopping(monitor="val_loss", patience=args.patience)
    text = f", {len(pre.text_)} text one-hot to {Xtr.shape[1]} inputs" if pre.text_ else ""
    print(f"{args.data}: {len(df)} rows, {len(features)} features{text}, target "
          f"{args.target!r} ({task}{f', {n_out} classes' if classes else ''}); train "
          f"{len(Xtr)}, valid {len(Xva)}")
    hist = fr.train.fit(model, loss_fn, opt, train=(Xtr, ytr), valid=(Xva, yva),
                        epochs=args.epochs, batch_size=args.batch_size, scheduler=sched,
                        callbacks=[stopper], progress=False, seed=args.seed)
    if not args.quiet:
        for i in range(len(hist)):
            print(hist.format_epoch(i))
    print(f"{hist.stop_reason}; best epoch {hist.best_epoch} (val_loss {hist.best_value:.5g}, "
          "weights restored)")
    if hist.best_epoch == len(hist) and len(hist) == args.epochs:
        print(f"fastreg train: warning: the best epoch is the last one ({len(hist)}): still "
              "improving: raise --epochs", file=sys.stderr)
    # the file's model takes imputed/one-hot but unscaled features and predicts raw targets
    pre.fold_into(model)
    model.eval()
    meta = {"features": features, "target": args.target, "task": task, "classes": classes,
            "preprocessor": pre.to_json()}
    frio.save(model, args.out, metadata=meta)
    print(f"saved {args.out}")
    return 0


def _load_model(path: str, onnx_output: str | None = None):
    """A fastreg model file as a predictor (``fastreg.inference.load``: no modules built, with
    ``.metadata``), or an ``.onnx`` file through ``fastreg.onnx.load`` (an ONNX file it cannot
    import, or a missing onnx package, is reported as a ModelFileError)."""
    from . import io as frio
    if not path.lower().endswith(".onnx"):
        if onnx_output is not None:
            raise frio.ModelFileError(f"{path}: --onnx-output applies to .onnx files only")
        from .inference import load as load_predictor
        return load_predictor(path)
    from .onnx import load as load_onnx
    try:
        return load_onnx(path, output=onnx_output)
    except (ValueError, ImportError) as exc:
        raise frio.ModelFileError(str(exc)) from None


def _predict(args) -> int:
    import numpy as np

    model = _load_model(args.model, args.onnx_output)
    meta = model.metadata or {}
    df = _read_table(args.data, args)
    header = [str(c) for c in df.columns]
    _columns_exist(args.data, header, args.keep, "--keep")
    if args.target is not None:
        _columns_exist(args.data, header, [args.target], "--target")
    target = args.target or meta.get("target")
    features = meta.get("features")
    if isinstance(features, list) and all(isinstance(f, str) for f in features):
        missing = [f for f in features if f not in set(header)]
        if missing:
            from .data.table import _names
            raise CSVError(f"{args.data}: missing feature column(s) {_names(missing)} the "
                           "model was trained on")
    else:
        features = [h for h in header if h != target and h not in set(args.keep)]
    state = meta.get("preprocessor")
    if state is not None:
        from .data.preprocess import TablePreprocessor
        try:
            pre = TablePreprocessor.from_json(state)
        except ValueError as exc:
            from . import io as frio
            raise frio.ModelFileError(f"{args.model}: {exc}") from None
        try:
            X = pre.transform(df, what=args.data)
        except ValueError as exc:
            raise CSVError(str(exc)) from None
    else:                           # a file without preprocessing: numeric columns as they are
        sub = df[features]
        text = [c for c in features if sub[c].dtype.kind not in "biuf"]
        if text:
            from .data.table import _names
            raise CSVError(f"{args.data}: column(s) {_names(text)} are not numeric (this "
                           "model file has no preprocessing for text columns)")
        X = sub.to_numpy(dtype=np.float64)
        if np.isnan(X).any():
            cols = [features[j] for j in np.flatnonzero(np.isnan(X).any(axis=0))]
            raise CSVError(f"{args.data}: missing values in column(s) {cols} (this model "
                           "file has no imputation)")
    try:
        scores = model.predict(X)       # cast once to the model's dtype by the predictor
    except ValueError as exc:           # the columns do not fit the model's input
        raise UsageError(f"{args.data}: {X.shape[1]} feature column(s) do not fit the "
                         f"model {args.model} ({exc}); a model saved without feature names "
                         "uses every column but the target (--target) and --keep columns, so "
                         "remove other extra columns") from None
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores.reshape(-1, 1)
    classes = meta.get("classes")
    if meta.get("task") == "classification" and isinstance(classes, list) \
            and len(classes) != scores.shape[1]:
        raise UsageError(f"{args.model}: its metadata lists {len(classes)} class(es) but the "
                         f"model gives {scores.shape[1]} output(s)")
    keep = [df[c].tolist() for c in args.keep]
    is_cls = meta.get("task") == "classification" and isinstance(classes, list)
    if is_cls:
        z = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        w = csv.writer(out)
        if is_cls:
            w.writerow(list(args.keep) + ["prediction"] + [f"p_{c}" for c in classes])
            body = ([classes[k]] + [f"{v:.6g}" for v in row]
                    for row, k in zip(p, scores.argmax(axis=1)))
        elif scores.ndim == 2 and scores.shape[1] == 1:
            w.writerow(list(args.keep) + ["prediction"])
            body = ([f"{v:.9g}"] for v in scores[:, 0])
        else:
            w.writerow(list(args.keep) + [f"output_{j}" for j in range(scores.shape[1])])
            body = ([f"{v:.9g}" for v in row] for row in scores)
        for i, cells in enumerate(body):
            w.writerow([_cell(k[i]) for k in keep] + cells)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(scores)} predictions to {args.out}", file=sys.stderr)
    if target and target in header:
        _print_metrics(args.data, df[target], scores, meta, classes if is_cls else None,
                       p if is_cls else None)
    return 0


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _print_metrics(path, col, scores, meta, classes, proba) -> None:
    """Metrics on stderr (stdout may hold the predictions): accuracy and log loss, or RMSE,
    MAE and R^2, over the rows whose target is present."""
    import numpy as np
    name = col.name
    if classes is not None:
        labels = [_cell(v) for v in col]
        index = {c: i for i, c in enumerate(classes)}
        rows = [i for i, t in enumerate(labels) if t != ""]
        known = [i for i in rows if labels[i] in index]
        if not rows:
            return
        t = np.asarray([index[labels[i]] for i in known], dtype=np.int64)
        acc = float(np.mean(scores[known].argmax(axis=1) == t)) * len(known) / len(rows)
        ll = float(-np.mean(np.log(np.clip(proba[known, t], 1e-15, 1.0)))) if known else \
            float("nan")
        unknown = f", {len(rows) - len(known)} rows with unseen labels" if \
            len(known) < len(rows) else ""
        print(f"{path}: target {name!r}: accuracy {acc:.4f}, log loss {ll:.4f} over "
              f"{len(rows)} rows{unknown}", file=sys.stderr)
        return
    if col.dtype.kind not in "biuf" or scores.ndim != 2 or scores.shape[1] != 1:
        return
    t = col.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = ~np.isnan(t)
    if not ok.any():
        return
    e = scores[ok, 0].astype(np.float64) - t[ok]
    ss = float(((t[ok] - t[ok].mean()) ** 2).sum())
    r2 = 1.0 - float((e ** 2).sum()) / ss if ss > 0 else float("nan")
    print(f"{path}: target {name!r}: RMSE {np.sqrt(np.mean(e ** 2)):.6g}, MAE "
          f"{np.mean(np.abs(e)):.6g}, R^2 {r2:.4f} over {int(ok.sum())} rows", file=sys.stderr)


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
