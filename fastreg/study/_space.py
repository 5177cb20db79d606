"""The techniques of a ``--compare`` study, their strength grids, and the joint space of a
``--search`` study.

Every trial trains the same MLP (``hidden`` layers, ReLU) with Adam (AdamW for weight decay) at
learning rate ``lr``, batch ``batch_size``, for at most ``epochs`` epochs, and keeps the weights
of its best validation epoch. A technique changes one thing:

===============  ==============================================  =====================
technique        what changes                                    strength (grid)
===============  ==============================================  =====================
none             nothing (the baseline)                          --
L2               penalty ``l2 * sum w^2`` on the Linear weights   ``l2``
L1               penalty ``l1 * sum |w|``                         ``l1``
weight decay     AdamW, decoupled decay ``weight_decay``          ``weight_decay``
dropout          Dropout(p) after each hidden ReLU                ``dropout``
batch norm       BatchNorm1d after each hidden Linear            --
layer norm       LayerNorm after each hidden ReLU                --
early stopping   stop when the validation metric has not         ``patience``
                 improved for ``patience`` epochs
lr schedule      OneCycleLR (warm-up, cosine decay) to peak      ``lr``
                 rate ``lr``
augmentation     random rotation (``augment`` x 10 degrees) and  ``augment``
(images only)    shift (``augment`` x H/16 pixels) each epoch
===============  ==============================================  =====================

The grids are fixed lists (``GRIDS[grid][technique]``), so the set of configurations never
depends on the number of workers. "none", "batch norm" and "layer norm" have no strength and
run once in the strength phase.
"""
from __future__ import annotations

#: Technique names in table order (the contract's names).
TECHNIQUES = ("none", "L2", "L1", "weight decay", "dropout", "batch norm", "layer norm",
              "early stopping", "lr schedule", "augmentation")
IMAGE_ONLY = ("augmentation",)

#: technique -> (param name, grid) for grid "full" (default), "small" and "tiny" (tests, demo).
GRIDS = {
    "full": {"L2": ("l2", [1e-5, 1e-4, 1e-3, 1e-2]),
             "L1": ("l1", [1e-6, 1e-5, 1e-4, 1e-3]),
             "weight decay": ("weight_decay", [1e-3, 1e-2, 1e-1, 1.0]),
             "dropout": ("dropout", [0.1, 0.2, 0.3, 0.5]),
             "early stopping": ("patience", [2, 5, 10]),
             "lr schedule": ("lr", [1e-3, 3e-3, 1e-2]),
             "augmentation": ("augment", [0.5, 1.0, 2.0])},
    "small": {"L2": ("l2", [1e-4, 1e-3, 1e-2]),
              "L1": ("l1", [1e-5, 1e-4, 1e-3]),
              "weight decay": ("weight_decay", [1e-2, 1e-1, 1.0]),
              "dropout": ("dropout", [0.1, 0.3, 0.5]),
              "early stopping": ("patience", [2, 5]),
              "lr schedule": ("lr", [3e-3, 1e-2]),
              "augmentation": ("augment", [0.5, 1.0])},
    "tiny": {"L2": ("l2", [1e-4, 1e-2]),
             "L1": ("l1", [1e-5, 1e-3]),
             "weight decay": ("weight_decay", [1e-2, 1.0]),
             "dropout": ("dropout", [0.1, 0.4]),
             "early stopping": ("patience", [1, 2]),
             "lr schedule": ("lr", [3e-3, 1e-2]),
             "augmentation": ("augment", [0.5, 1.0])},
}

#: What each param does to the base configuration (the config key it sets).
PARAM_KEYS = ("l2", "l1", "weight_decay", "dropout", "patience", "lr", "augment", "norm",
              "schedule", "flip")


def base_config(hidden=(256, 128), lr=1e-3, batch_size=64, epochs=30) -> dict:
    """The baseline: no regularization at all."""
    return {"technique": "none", "hidden": list(hidden), "lr": float(lr),
            "batch_size": int(batch_size), "epochs": int(epochs), "optimizer": "adam",
            "l1": 0.0, "l2": 0.0, "weight_decay": 0.0, "dropout": 0.0, "norm": None,
            "patience": None, "schedule": None, "augment": 0.0, "flip": 0}


def apply(base: dict, technique: str, params: dict) -> dict:
    """The full configuration of ``technique`` at ``params`` (a dict of param -> value)."""
    c = dict(base)
    c["technique"] = technique
    if technique == "batch norm":
        c["norm"] = "batch"
    elif technique == "layer norm":
        c["norm"] = "layer"
    elif technique == "lr schedule":
        c["schedule"] = "onecycle"
    elif technique == "weight decay":
        c["optimizer"] = "adamw"
    for k, v in params.items():
        if k in ("technique", "seed"):
            continue
        c[k] = v
        if k == "weight_decay" and v:
            c["optimizer"] = "adamw"
        if k == "lr" and technique not in ("search",):
            c["schedule"] = c["schedule"] or "onecycle"
    return c


def techniques_for(kind: str) -> list[str]:
    return [t for t in TECHNIQUES if kind == "images" or t not in IMAGE_ONLY]


def strength_configs(technique: str, grid: str) -> list[dict]:
    """The params of each grid point of ``technique`` ([{}] for a technique without one)."""
    g = GRIDS[grid].get(technique)
    if g is None:
        return [{}]
    name, values = g
    return [{name: v} for v in values]


def strength_of(technique: str, params: dict):
    """The contract's ``strength``: {"name", "value"} or None."""
    for name, _ in [GRIDS["full"][technique]] if technique in GRIDS["full"] else []:
        if name in params:
            return {"name": name, "value": float(params[name])}
    return None


def combine(base: dict, chosen: dict[str, tuple[dict, float]], none_value: float,
            maximize: bool) -> tuple[dict, list[str]]:
    """The recommended combination: each technique whose strength-phase validation metric beats
    the baseline's ("none"), at its chosen strength; early stopping when it is not worse (it
    saves epochs at no validation cost, every trial keeping its best epoch anyway); of batch
    norm / layer norm only the better one. Returns (params, the techniques used)."""
    def better(v, strict=True):
        if v is None:
            return False
        if maximize:
            return v > none_value if strict else v >= none_value
        return v < none_value if strict else v <= none_value

    params: dict = {}
    used: list[str] = []
    norms = [(t, chosen[t][1]) for t in ("batch norm", "layer norm") if t in chosen
             and better(chosen[t][1])]
    if norms:
        t = (max if maximize else min)(norms, key=lambda tv: tv[1])[0]
        params["norm"] = "batch" if t == "batch norm" else "layer"
        used.append(t)
    for t, (p, v) in chosen.items():
        if t in ("none", "batch norm", "layer norm"):
            continue
        if better(v, strict=(t != "early stopping")):
            params.update(p)
            used.append(t)
    return params, used


def search_space(kind: str, epochs: int):
    """The joint space of ``--search`` (optuna distributions by name)."""
    import optuna.distributions as D
    space = {
        "lr": D.FloatDistribution(1e-4, 3e-2, log=True),
        "l2": D.FloatDistribution(1e-7, 1e-1, log=True),
        "l1": D.FloatDistribution(1e-8, 1e-2, log=True),
        "weight_decay": D.FloatDistribution(1e-6, 1.0, log=True),
        "dropout": D.FloatDistribution(0.0, 0.6),
        "norm": D.CategoricalDistribution(["none", "batch", "layer"]),
        "patience": D.IntDistribution(1, max(2, epochs)),
        "schedule": D.CategoricalDistribution(["none", "onecycle"]),
    }
    if kind == "images":
        space["augment"] = D.FloatDistribution(0.0, 2.0)
        space["flip"] = D.IntDistribution(0, 1)
    return space


def search_config(base: dict, params: dict) -> dict:
    c = dict(base)
    c.update(params)
    c["technique"] = "search"
    c["optimizer"] = "adamw"
    c["norm"] = None if params.get("norm") in (None, "none") else params["norm"]
    c["schedule"] = None if params.get("schedule") in (None, "none") else params["schedule"]
    return c
