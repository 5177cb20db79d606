"""A model file read straight into inference ops, without building modules.

:func:`read_ops` is what :func:`fastreg.inference.load` runs: the file is opened and checked by
the same hardened container (:mod:`fastreg.io.container`: regular file, stored members, CRC of
every member, header caps, ``.npy`` headers against the expected shapes and dtypes, total size
within the file's length), the architecture by the same :func:`fastreg.io.tree.check_tree`,
but against the light descriptions of the built-in layers below (:data:`BUILTIN`) instead of
the registry of :mod:`fastreg.nn`, and each layer is folded from its saved arguments and tensors
into the typed ops of :mod:`fastreg._infer_spec` -- exactly the ops its ``inference_ops()``
gives after ``fastreg.load`` (same float64 arithmetic, so the predictor is bit-identical). No
module is instantiated (no random initialisation), and neither ``fastreg.nn`` nor numba is
imported.

A file the light descriptions do not cover -- a layer type without one (Embedding), a layer
whose eval-mode fold is its own ``forward`` (BatchNorm1d without running statistics, Flatten
of other dimensions), an argument the constructor would refuse -- gives ``None``: the caller
then takes the full path (``fastreg.load`` + ``compile``), which also produces the canonical
error for a bad argument.

The argument checks and state shapes here describe the same layers as their ``layer_spec`` in
:mod:`fastreg.nn.layers`; ``tests/test_inference_load.py`` checks that the two agree.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .._infer_spec import (
    ActivationOp,
    AffineOp,
    Arg,
    FlattenOp,
    LayerNormOp,
    LayerSpec,
    LinearOp,
    ScaleOp,
    f64,
    is_bool,
    is_dim,
    is_dtype,
    is_real,
    is_real_or_none,
    is_shape,
    is_small_int,
    is_str,
)
from .._kernels.common import codes as _codes
from .container import ModelFileError, open_container

__all__ = ["BUILTIN", "FileLayer", "read_ops"]


# ---------------------------------------------------------------------------------------------
# the built-in layers as a file holds them: {type: (arguments + state, fold)}
# ---------------------------------------------------------------------------------------------

def _linear_state(a) -> dict:
    M, K, dt = a["out_features"], a["in_features"], a["dtype"]
    return {"weight": ((M, K), dt), **({"bias": ((M,), dt)} if a["bias"] else {})}


def _batchnorm_state(a) -> dict:
    C, dt = (a["num_features"],), a["dtype"]
    s = {}
    if a["affine"]:
        s["weight"] = (C, dt)
        if a["bias"]:
            s["bias"] = (C, dt)
    if a["track_running_stats"]:
        s["running_mean"] = (C, dt)
        s["running_var"] = (C, dt)
        s["num_batches_tracked"] = ((), "int64")
    return s


def _layernorm_state(a) -> dict:
    if not a["elementwise_affine"]:
        return {}
    v = a["normalized_shape"]
    shape, dt = ((v,) if type(v) is int else tuple(v)), a["dtype"]
    return {"weight": (shape, dt), **({"bias": (shape, dt)} if a["bias"] else {})}


def _eps_ok(eps) -> bool:
    return eps >= 0            # (is_real already: finite)


def _fold_linear(a, t):
    # W as stored (read-only, not widened): every fold multiplies it by float64 factors,
    # which widens it exactly (float32 -> float64 is exact), so the folded values equal those
    # of f64(W); an unfolded W is cast to the compute dtype once, as f64(W) would be.
    W = t["weight"]
    b = np.zeros(W.shape[0]) if "bias" not in t else f64(t["bias"])
    return (LinearOp(W, b),)


def _fold_batchnorm(a, t):
    r""":math:`s = \gamma/\sqrt{\mathrm{var}+\epsilon}`, :math:`t = \beta - \mathrm{mean}\,s`
    (as ``BatchNorm1d.inference_ops``, operation for operation)."""
    m = a["momentum"]
    if not a["track_running_stats"] or not _eps_ok(a["eps"]) or \
            (m is not None and not 0.0 <= m <= 1.0):
        return None
    s = 1.0 / np.sqrt(f64(t["running_var"]) + float(a["eps"]))
    shift = -f64(t["running_mean"]) * s
    if a["affine"]:
        g = f64(t["weight"])
        s, shift = s * g, shift * g
        if "bias" in t:
            shift = shift + f64(t["bias"])
    return (AffineOp(s, shift),)


def _fold_layernorm(a, t):
    if not _eps_ok(a["eps"]):
        return None
    v = a["normalized_shape"]
    shape = (v,) if type(v) is int else tuple(v)
    multi = len(shape) > 1
    w, b = t.get("weight"), t.get("bias")
    return (LayerNormOp(None if w is None else f64(w).reshape(-1),
                        None if b is None else f64(b).reshape(-1), float(a["eps"]),
                        math.prod(shape), shape if multi else ()),)


def _fold_dropout(a, t):
    p, mode = a["p"], a["mode"]
    if not 0.0 <= p <= 1.0 or mode not in ("inverted", "classic"):
        return None
    if mode == "inverted" or p == 0.0:
        return ()
    return (ScaleOp(1.0 - float(p)),)


def _fold_flatten(a, t):
    return (FlattenOp(),) if a["start_dim"] == 1 and a["end_dim"] == -1 else None


def _activation(code: int):
    return lambda a, t: (ActivationOp(code, 0.01),)


class FileLayer:
    """A built-in layer as a file holds it: ``spec`` (arguments with their checks, the state
    they imply) and ``fold(args, tensors) -> ops`` (None: not foldable from the file alone)."""
    __slots__ = ("fold", "spec")

    def __init__(self, spec: LayerSpec, fold):
        self.spec, self.fold = spec, fold


_DT = Arg(is_dtype)
#: Type name -> :class:`FileLayer`, for every layer the light path builds.
BUILTIN: dict[str, FileLayer] = {
    "Sequential": FileLayer(LayerSpec(container=True), None),
    "Linear": FileLayer(LayerSpec(
        args={"in_features": Arg(is_dim), "out_features": Arg(is_dim), "bias": Arg(is_bool),
              "dtype": _DT}, state=_linear_state), _fold_linear),
    "BatchNorm1d": FileLayer(LayerSpec(
        args={"num_features": Arg(is_dim), "eps": Arg(is_real), "momentum": Arg(is_real_or_none),
              "affine": Arg(is_bool), "track_running_stats": Arg(is_bool), "dtype": _DT,
              "bias": Arg(is_bool, default=True)}, state=_batchnorm_state), _fold_batchnorm),
    "LayerNorm": FileLayer(LayerSpec(
        args={"normalized_shape": Arg(is_shape), "eps": Arg(is_real),
              "elementwise_affine": Arg(is_bool), "dtype": _DT,
              "bias": Arg(is_bool, default=True)}, state=_layernorm_state), _fold_layernorm),
    "Dropout": FileLayer(LayerSpec(args={"p": Arg(is_real), "mode": Arg(is_str),
                                         "inplace": Arg(is_bool, default=False)}),
                         _fold_dropout),
    "ReLU": FileLayer(LayerSpec(activation=True), _activation(_codes.ACT_RELU)),
    "Sigmoid": FileLayer(LayerSpec(activation=True), _activation(_codes.ACT_SIGMOID)),
    "Tanh": FileLayer(LayerSpec(activation=True), _activation(_codes.ACT_TANH)),
    "LeakyReLU": FileLayer(LayerSpec(args={"negative_slope": Arg(is_real)}, activation=True),
                           lambda a, t: (ActivationOp(_codes.ACT_LEAKY_RELU,
                                                      float(a["negative_slope"])),)),
    "Identity": FileLayer(LayerSpec(), lambda a, t: ()),
    "Flatten": FileLayer(LayerSpec(args={"start_dim": Arg(is_small_int),
                                         "end_dim": Arg(is_small_int)}), _fold_flatten),
}


def _spec_of(layer: FileLayer) -> LayerSpec:
    return layer.spec


def _types(tree, depth: int = 0) -> bool:
    """Every node of the (untrusted) tree a type with a light description?"""
    if depth > 64 or not isinstance(tree, dict) or tree.get("type") not in BUILTIN:
        return False
    children = tree.get("children", [])
    if not isinstance(children, list):
        return False
    return all(isinstance(c, list) and len(c) == 2 and _types(c[1], depth + 1)
               for c in children)


def _fold_tree(tree, arrays: dict, prefix: str, out: list) -> bool:
    """Append the ops of ``tree`` (checked) to ``out``; False when a layer cannot fold."""
    layer = BUILTIN[tree["type"]]
    pre = f"{prefix}." if prefix else ""
    if layer.spec.container:
        return all(_fold_tree(node, arrays, pre + name, out)
                   for name, node in tree.get("children", []))
    args = layer.spec.complete_args(tree.get("args", {}))
    local = {k: arrays[pre + k] for k in layer.spec.state(args)}
    ops = layer.fold(args, local)
    if ops is None:
        return False
    out.extend(ops)
    return True


def read_ops(path: str | os.PathLike):
    """``(ops, dtype, metadata)`` of the model file at ``path`` -- the float64 inference ops in
    order, the dtype of its first parameter (float32 when it has none, as ``compile``) and its
    metadata -- or None when the light descriptions do not cover it (see the module docstring).

    Raises :class:`ModelFileError` for a damaged, truncated or hostile file, with the messages
    of :func:`fastreg.io.load` (the same container and tree checks run).
    """
    from . import model_file as mf
    from .tree import check_tree
    c, f = open_container(path, mf.MODEL_FORMAT, (mf.FORMAT_VERSION,
                                                   mf.PREDICTOR_FORMAT_VERSION))
    with f:
        p = c.path
        arch = c.header.get("architecture")
        if c.header["format_version"] != mf.FORMAT_VERSION or not _types(arch):
            return None     # a quantized predictor, a custom module, a layer without a light form
        table = mf._tensor_table(c)
        expected = check_tree(arch, p, layers=(BUILTIN, _spec_of))
        if list(table) != list(expected) or any(
                table[k] != (shape, np.dtype(dt)) for k, (shape, dt) in expected.items()):
            raise ModelFileError(f"{p}: the tensor table does not match the architecture "
                                 f"(expected {sorted(expected)[:20]})")
        arrays = mf._read_tensors(c, table, "architecture")
        metadata = c.header.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ModelFileError(f"{p}: metadata must be a JSON object")
    ops: list = []
    if not _fold_tree(arch, arrays, "", ops):
        return None
    params = [k for k in table if k.rsplit(".", 1)[-1] in ("weight", "bias")]
    dtype = table[params[0]][1] if params else np.dtype(np.float32)
    return ops, dtype, metadata
