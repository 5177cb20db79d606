"""One trial: one training run of one configuration and seed, with its numbers in the shape of
the trial contract (see :mod:`fastreg.study`)."""
from __future__ import annotations

import math
import os
import time

import numpy as np

from ..train.callbacks import Callback, _copy_state_dict

#: Test hook: when this environment variable names a file that does not exist yet, the first
#: trial to reach the end of its first epoch creates it and kills its own process (SIGKILL) --
#: a worker dying mid-trial, for the resumption and Dask tests.
KILL_HOOK = "FASTREG_STUDY_KILL_ONCE"


class TrialMonitor(Callback):
    """Records the contract's history (training loss WITHOUT the penalty term), tracks the best
    validation epoch (and its weights), and reports the validation metric to Optuna each epoch
    (``trial.report`` / ``trial.should_prune``: the pruner may stop the run)."""

    def __init__(self, prep, optimizer, trial=None):
        self.prep = prep
        self.optimizer = optimizer
        self.trial = trial
        self.metric = prep.metric
        self.maximize = prep.direction == "maximize"
        self.history = {"loss": [], "val_loss": [], self.metric: [], f"val_{self.metric}": []}
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = None
        self.best_weights = None
        self.pruned = False

    def _units(self, loss):           # regression: MSE in target units^2
        return loss * self.prep.target_scale ** 2 if self.prep.task == "regression" else loss

    def on_epoch_end(self, trainer, epoch, logs):
        penalty = getattr(self.optimizer, "penalty", None)
        data_loss = float(logs["loss"]) - (float(penalty()) if callable(penalty) else 0.0)
        loss, vloss = self._units(data_loss), self._units(float(logs["val_loss"]))
        if self.metric == "accuracy":
            m, vm = float(logs["accuracy"]), float(logs["val_accuracy"])
        else:
            m, vm = math.sqrt(max(loss, 0.0)), math.sqrt(max(vloss, 0.0))
        for k, v in (("loss", loss), ("val_loss", vloss), (self.metric, m),
                     (f"val_{self.metric}", vm)):
            self.history[k].append(v)
        if math.isfinite(vm) and (vm > self.best if self.maximize else vm < self.best):
            self.best, self.best_epoch = vm, epoch
            self.best_weights = _copy_state_dict(trainer.model.state_dict())
        hook = os.environ.get(KILL_HOOK)
        if hook and not os.path.exists(hook):
            with open(hook, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), 9)
        if self.trial is not None:
            self.trial.report(vm, epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.stop_training = True
                trainer.stop_reason = f"pruned by optuna after epoch {epoch}"

    def on_train_end(self, trainer):
        if self.best_weights is not None:
            trainer.model.load_state_dict(_copy_state_dict(self.best_weights))


class Augment(Callback):
    """Fresh random rotation / shift (/ flip) of the training images before every epoch, written
    in place into the training array the loader holds; the clean images are put back at the
    end (so the final train metric is on clean data)."""

    def __init__(self, X, shape, strength, flip, seed):
        self.X = X
        self.clean = X.copy()
        self.shape = shape
        self.strength = float(strength)
        self.flip = bool(flip)
        self.rng = np.random.default_rng(seed + 7919)

    def _draw(self):
        from ..data import augment as A
        imgs = self.clean.reshape((-1,) + tuple(self.shape))
        s = self.strength
        if s > 0:
            imgs = A.random_rotation(imgs, 10.0 * s, rng=self.rng)
            imgs = A.random_shift(imgs, max(1, round(s * self.shape[0] / 16)), rng=self.rng)
        if self.flip:
            imgs = A.random_flip(imgs, horizontal=True, rng=self.rng)
        self.X[...] = imgs.reshape(self.X.shape)

    def on_train_begin(self, trainer):
        self._draw()

    def on_epoch_end(self, trainer, epoch, logs):
        self._draw()

    def on_train_end(self, trainer):
        self.X[...] = self.clean


def _build(prep, config, seed, n_steps):
    import fastreg as fr

    from ..demo import build_mlp
    fr.manual_seed(seed)                   # same initial weights for the same shapes and seed
    model = build_mlp(prep.X.shape[1], prep.n_out, hidden=tuple(config["hidden"]),
                      dropout=float(config["dropout"]), norm=config["norm"])
    groups = fr.optim.param_groups(model, weight_decay=float(config["weight_decay"]),
                                   l1=float(config["l1"]), l2=float(config["l2"]))
    cls = fr.optim.AdamW if config["optimizer"] == "adamw" else fr.optim.Adam
    opt = cls(groups, lr=float(config["lr"]))
    sched = None
    if config["schedule"] == "onecycle":
        sched = fr.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(config["lr"]),
                                                 total_steps=int(config["epochs"]) * n_steps)
    elif config["schedule"] == "cosine":
        sched = fr.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(config["epochs"]))
    return model, opt, sched


def _scores(prep, model, loss_fn, rows) -> dict:
    import fastreg as fr
    r = fr.train.evaluate(model, loss_fn, prep.X[rows], prep.y[rows])
    if prep.task == "classification":
        return {"accuracy": float(r["accuracy"]), "loss": float(r["loss"])}
    mse = float(r["loss"]) * prep.target_scale ** 2
    return {"rmse": math.sqrt(mse), "loss": mse}


def run_config(prep, config: dict, seed: int, trial=None, model_path: str | None = None
               ) -> tuple[dict, bool]:
    """Train ``config`` with ``seed`` (on each cv fold); return (the contract's user_attrs,
    pruned). Raises FloatingPointError on a diverged run."""
    import fastreg as fr
    t0 = time.perf_counter()
    loss_fn = fr.nn.CrossEntropyLoss() if prep.task == "classification" else fr.nn.MSELoss()
    folds = prep.splits()
    per_fold = []
    first = None
    for k, (tr, va) in enumerate(folds):
        Xtr = np.ascontiguousarray(prep.X[tr], dtype=fr.get_default_dtype())
        ytr = prep.y[tr]
        bs = int(config["batch_size"])
        n_steps = -(-len(tr) // bs)
        model, opt, sched = _build(prep, config, seed, n_steps)
        mon = TrialMonitor(prep, opt, trial if len(folds) == 1 else None)
        callbacks = [mon]
        if config.get("patience"):
            callbacks.append(fr.train.EarlyStopping(
                monitor=f"val_{'accuracy' if prep.task == 'classification' else 'loss'}",
                mode="max" if prep.task == "classification" else "min",
                patience=int(config["patience"]), restore_best_weights=False))
        if prep.kind == "images" and (config.get("augment") or config.get("flip")):
            callbacks.insert(0, Augment(Xtr, prep.image_shape, config.get("augment") or 0.0,
                                        config.get("flip"), seed))
        hist = fr.train.fit(model, loss_fn, opt, train=(Xtr, ytr),
                            valid=(prep.X[va], prep.y[va]), epochs=int(config["epochs"]),
                            batch_size=bs, scheduler=sched, callbacks=callbacks,
                            progress=False, seed=seed)
        res = {"train": _scores(prep, model, loss_fn, tr),
               "valid": _scores(prep, model, loss_fn, va),
               "test": _scores(prep, model, loss_fn, prep.test),
               "best_epoch": int(mon.best_epoch or len(hist)), "epochs_run": len(hist),
               "stopped_early": bool(hist.stopped_early and not mon.pruned)}
        per_fold.append(res)
        if first is None:
            first = (mon, model)
        if mon.pruned:
            break
    mon, model = first
    metric = prep.metric

    def mean(split, key):
        return float(np.mean([f[split][key] for f in per_fold]))

    attrs = {
        "technique": config["technique"], "seed": int(seed), "config": config,
        "history": mon.history,
        "best_epoch": per_fold[0]["best_epoch"], "epochs_run": per_fold[0]["epochs_run"],
        "stopped_early": per_fold[0]["stopped_early"],
        **{s: {metric: mean(s, metric), "loss": mean(s, "loss")}
           for s in ("valid", "train", "test")},
    }
    gap = attrs["train"][metric] - attrs["test"][metric]
    attrs["gap"] = -gap if metric == "rmse" else gap
    if len(folds) > 1:
        attrs["folds"] = per_fold
    if model_path is not None and not mon.pruned:
        save_model(prep, model, model_path)
        attrs["model_file"] = os.path.abspath(model_path)
    else:
        attrs["model_file"] = None
    attrs["seconds"] = time.perf_counter() - t0
    return attrs, mon.pruned


def save_model(prep, model, path: str) -> None:
    """Save like ``fastreg train``: the preprocessing folded into the first/last Linear (the
    file's model takes raw feature values -- imputed and one-hot by the stored preprocessor --
    or raw flattened pixels, and predicts raw targets), metadata for ``fastreg predict``."""
    import fastreg as fr

    from ..data.preprocess import TablePreprocessor
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {"task": prep.task, "classes": prep.classes, "target": prep.target}
    if prep.kind == "table":
        pre = TablePreprocessor.from_json(prep.preprocessor)
        pre.fold_into(model)
        meta.update(features=prep.features, preprocessor=pre.to_json())
    else:
        lin = [m for m in model.modules() if type(m).__name__ == "Linear"]
        lin[0].weight.data[...] = lin[0].weight.data / prep.pixel_scale
        if prep.task == "regression":
            last = lin[-1]
            last.weight.data[...] = last.weight.data * prep.target_scale
            last.bias.data[...] = last.bias.data * prep.target_scale + prep.target_mean
        meta.update(image_shape=list(prep.image_shape),
                    input="raw pixels flattened to (N, H*W*C)")
    model.eval()
    fr.io.save(model, path, metadata=meta)
