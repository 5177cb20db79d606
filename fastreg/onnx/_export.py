"""``fastreg.onnx.export``: a fastreg model as an ONNX graph (eval mode).

The model is walked as a chain: a ``Sequential`` (nested ones too, and subclasses that keep
``Sequential.forward``) contributes its children in order, every other module must be one of the
built-in layers. Each layer becomes (N: the batch, dynamic by default)::

    Linear               Gemm(x, W, b, transB=1) on 2-D input; MatMul(x, W^T) [+ Add(b)] on
                         other ranks (below opset 11, a bias-free Gemm gets a zero C)
    BatchNorm1d          BatchNormalization(x, gamma, beta, running_mean, running_var, epsilon)
                         -- kept as its own node, not folded into the Linear, so the graph shows
                         the model's layers and fr.onnx.load gives back a BatchNorm1d;
                         track_running_stats=False (batch statistics at eval too) is written as
                         the ReduceMean decomposition over axis 0
    LayerNorm            LayerNormalization(x, gamma, beta, axis=-1, epsilon) at opset >= 17;
                         below 17 the decomposition  d = x - mean(x), y = d / sqrt(mean(d*d) + eps)
                         * gamma + beta  (ReduceMean, Sub, Mul, Add, Sqrt, Div), which
                         fr.onnx.load matches back into a LayerNorm
    ReLU / LeakyReLU / Sigmoid / Tanh   Relu / LeakyRelu(alpha) / Sigmoid / Tanh
    Dropout              omitted (inverted mode, the identity at eval); classic mode: Mul(x, 1-p)
    Flatten              Flatten(axis=1) for (1, -1); other dimension ranges: Reshape
    Identity             omitted

The ONNX graph computes the model's **eval-mode** function whatever mode the model is in (the
model itself is not changed). Initializers keep the state_dict names (``"0.weight"``, ...) and the
model's dtype (float32 or float64; one dtype per model).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._common import encode_metadata, require

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export"]

#: Opset written when none is given (LayerNormalization exists from 17).
DEFAULT_OPSET = 17
#: Oldest opset written (BatchNormalization without the ``spatial`` attribute).
MIN_OPSET = 9


def _one_name(value, what: str, default: str) -> str:
    """``input_names`` / ``output_names``: None, a string, or a list of exactly one string."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{what} must name exactly one tensor (the model has one {what[:-6]}"
                             f"), got {list(value)!r}")
        value = value[0]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string or a list of one, got {value!r}")
    return value


def _check_args(model, path, opset, dynamic_batch, batch_size, input_shape, metadata, onnx):
    from ..nn import Module
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastreg.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, {newest}] (the installed "
                         f"onnx package's newest), got {opset!r}")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be True or False, got {dynamic_batch!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if input_shape is not None:
        if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
            input_shape = (input_shape,)
        if not isinstance(input_shape, (tuple, list)) or not input_shape or any(
                isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                for d in input_shape):
            raise ValueError("input_shape must be the shape of one sample (without the batch "
                             f"dimension) as a tuple of positive ints, got {input_shape!r}")
        input_shape = tuple(int(d) for d in input_shape)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return int(opset), input_shape


def _leaves(module, path: str) -> list:
    """[(path, layer)] in execution order; refuses what cannot be traced to a chain."""
    from ..nn import Sequential
    from ..nn._spec import spec_of
    where = repr(path) if path else "the model"
    if isinstance(module, Sequential):
        if type(module).forward is not Sequential.forward:
            raise TypeError(
                f"fastreg.onnx.export: {where} ({type(module).__qualname__}) is a Sequential "
                "with its own forward, which cannot be traced to an ONNX graph; only chains "
                "of built-in layers (nested Sequentials included) are exported")
        out = []
        for name, child in module._modules.items():
            if child is not None:
                out.extend(_leaves(child, f"{path}.{name}" if path else name))
        return out
    spec = spec_of(type(module))
    if spec is None or spec.container:
        raise TypeError(
            f"fastreg.onnx.export: {where} ({type(module).__qualname__}) is not a built-in "
            "layer; a custom forward cannot be traced to an ONNX graph. Exportable: Linear, "
            "BatchNorm1d, LayerNorm, Dropout, ReLU, LeakyReLU, Sigmoid, Tanh, Identity, "
            "Flatten and (nested) Sequentials of them")
    return [(path, module)]


def _model_dtype(model) -> np.dtype:
    from .. import _config
    dts = {np.dtype(p.data.dtype) for p in model.parameters()}
    dts |= {np.dtype(b.dtype) for b in model.buffers() if np.dtype(b.dtype).kind == "f"}
    if len(dts) > 1:
        raise TypeError(f"fastreg.onnx.export: the model mixes dtypes {sorted(d.name for d in dts)}"
                        "; an ONNX graph has one float type (cast the model's layers to one)")
    return dts.pop() if dts else _config.get_default_dtype()


def _infer_sample_shape(leaves) -> tuple | None:
    """The per-sample input shape the first shape-fixing layer implies (None: unknown)."""
    from ..nn import BatchNorm1d, Flatten, LayerNorm, Linear
    for _, m in leaves:
        t = type(m)
        if t is Linear:
            return (m.in_features,)
        if t is BatchNorm1d:
            return (m.num_features,)
        if t is LayerNorm:
            return (m.normalized_shape[0],)
        if t is Flatten:
            return None
    return None


class _Builder:
    """Nodes and initializers of one chain; ``x`` is the name of the current tensor and
    ``shape`` its shape (``shape[0]`` is the batch, None)."""

    def __init__(self, onnx, dtype: np.dtype, opset: int, x: str, shape: list):
        self.onnx, self.helper = onnx, onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.dtype, self.opset = dtype, opset
        self.nodes: list = []
        self.inits: list = []
        self.names: set = {x}
        self.x, self.shape = x, shape

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def const(self, name: str, array, dtype=None) -> str:
        from .._kernels.runtime.cuda import to_host
        arr = np.ascontiguousarray(to_host(array), dtype=self.dtype if dtype is None else dtype)
        name = self.unique(name)
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list, where: str, **attrs) -> str:
        """Append ``op(current, *inputs)``-style node named ``/where/op``; the output becomes
        the current tensor."""
        name = self.unique(f"/{where}/{op}")
        out = self.unique(f"{name}_output_0")
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, **attrs))
        self.x = out
        return out

    def reduce_mean(self, x: str, axes: list, where: str) -> str:
        if self.opset >= 18:     # axes became an input in opset 18
            a = self.const(f"{where}.axes", np.array(axes), np.int64)
            return self.node("ReduceMean", [x, a], where, keepdims=1)
        return self.node("ReduceMean", [x], where, axes=axes, keepdims=1)

    def normalize(self, axes: list, eps: float, gamma, beta, where: str) -> None:
        """``(x - mean) / sqrt(var + eps) * gamma + beta`` over ``axes`` (biased variance)."""
        x = self.x
        mean = self.reduce_mean(x, axes, where)
        d = self.node("Sub", [x, mean], where)
        sq = self.node("Mul", [d, d], where)
        var = self.reduce_mean(sq, axes, where)
        e = self.const(f"{where}.eps", np.array(eps))
        den = self.node("Sqrt", [self.node("Add", [var, e], where)], where)
        y = self.node("Div", [d, den], where)
        if gamma is not None:
            y = self.node("Mul", [y, self.const(f"{where}.weight", gamma)], where)
            self.node("Add", [y, self.const(f"{where}.bias", beta)], where)


def _shape_error(path, m, shape, expected) -> ValueError:
    dims = ("N", *shape[1:])
    return ValueError(f"fastreg.onnx.export: {path!r} ({type(m).__name__}) expects input "
                      f"{expected} but receives ({', '.join(map(str, dims))}) in this chain; "
                      "check input_shape and the layer sizes")


def _emit(b: _Builder, path: str, m) -> None:
    """The node(s) of one layer (the table in the module docstring)."""
    from ..nn import layers as L
    t, shape = type(m), b.shape
    if t is L.Linear:
        if shape[-1] != m.in_features:
            raise _shape_error(path, m, shape, f"(*, {m.in_features})")
        has_bias = m.bias is not None
        if len(shape) == 2:
            inputs = [b.x, b.const(f"{path}.weight", m.weight.data)]
            if has_bias:
                inputs.append(b.const(f"{path}.bias", m.bias.data))
            elif b.opset < 11:       # C became optional in opset 11
                inputs.append(b.const(f"{path}.bias", np.zeros(m.out_features)))
            b.node("Gemm", inputs, path, transB=1)
        else:
            from .._kernels.runtime.cuda import to_host
            w = b.const(f"{path}.weight_transposed", np.asarray(to_host(m.weight.data)).T)
            b.node("MatMul", [b.x, w], path)
            if has_bias:
                b.node("Add", [b.x, b.const(f"{path}.bias", m.bias.data)], path)
        b.shape = [*shape[:-1], m.out_features]
    elif t is L.BatchNorm1d:
        C = m.num_features
        if len(shape) != 2 or shape[1] != C:
            raise _shape_error(path, m, shape, f"(N, {C})")
        gamma = m.weight.data if m.affine else np.ones(C)
        beta = m.bias.data if m.affine else np.zeros(C)
        if m.track_running_stats:
            b.node("BatchNormalization",
                   [b.x, b.const(f"{path}.weight", gamma), b.const(f"{path}.bias", beta),
                    b.const(f"{path}.running_mean", m.running_mean),
                    b.const(f"{path}.running_var", m.running_var)], path, epsilon=m.eps)
        else:
            b.normalize([0], m.eps, gamma, beta, path)
    elif t is L.LayerNorm:
        C = m.normalized_shape[0]
        if shape[-1] != C:
            raise _shape_error(path, m, shape, f"(*, {C})")
        affine = m.elementwise_affine
        if b.opset >= 17:
            inputs = [b.x, b.const(f"{path}.weight", m.weight.data if affine else np.ones(C))]
            if affine:
                inputs.append(b.const(f"{path}.bias", m.bias.data))
            b.node("LayerNormalization", inputs, path, axis=-1, epsilon=m.eps)
        else:
            b.normalize([-1], m.eps, m.weight.data if affine else None,
                        m.bias.data if affine else None, path)
    elif t is L.Dropout:
        if m.mode == "classic" and m.p != 0.0:       # eval: y = (1 - p) x
            b.node("Mul", [b.x, b.const(f"{path}.scale", np.array(1.0 - m.p))], path)
    elif t in (L.ReLU, L.Sigmoid, L.Tanh):
        b.node({L.ReLU: "Relu", L.Sigmoid: "Sigmoid", L.Tanh: "Tanh"}[t], [b.x], path)
    elif t is L.LeakyReLU:
        b.node("LeakyRelu", [b.x], path, alpha=m.negative_slope)
    elif t is L.Flatten:
        nd = len(shape)
        s = m.start_dim + nd if m.start_dim < 0 else m.start_dim
        e = m.end_dim + nd if m.end_dim < 0 else m.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise _shape_error(path, m, shape, f"a tensor with dims {m.start_dim}..{m.end_dim}")
        if s == 0:
            raise ValueError(f"fastreg.onnx.export: {path!r} (Flatten(start_dim={m.start_dim})) "
                             "merges the batch dimension into the features; only flattens "
                             "that keep the batch dimension are exported")
        if s == e:
            return                                  # flattening one dimension: a no-op
        if e == nd - 1 and s == 1:
            b.node("Flatten", [b.x], path, axis=1)
        else:   # Reshape: 0 copies the batch dimension, the others are known
            dims = [0, *shape[1:s], math.prod(shape[s:e + 1]), *shape[e + 1:]]
            b.node("Reshape", [b.x, b.const(f"{path}.shape", np.array(dims), np.int64)], path)
        b.shape = [None, *shape[1:s], math.prod(shape[s:e + 1]), *shape[e + 1:]]
    elif t is L.Identity:
        return
    else:       # pragma: no cover - _leaves lets only the layers above through
        raise TypeError(f"fastreg.onnx.export: no ONNX mapping for {t.__name__} at {path!r}")


def export(model, path: str | os.PathLike, opset: int = DEFAULT_OPSET, *,
           input_names=None, output_names=None, dynamic_batch: bool = True,
           batch_size: int = 1, input_shape=None, metadata: dict | None = None):
    """Write ``model`` (its eval-mode function) to ``path`` as an ONNX model.

    The graph is built with ``onnx.helper`` (``make_node``, ``make_graph``, ``make_model``) and
    ``onnx.numpy_helper.from_array``, checked with ``onnx.checker.check_model(full_check=True)``
    and written atomically. The layer-to-operator table is in :mod:`fastreg.onnx._export`'s
    docstring; BatchNorm1d is written as a BatchNormalization node (not folded).

    Parameters
    ----------
    model : fastreg.nn.Module
        A built-in layer or a (nested) ``Sequential`` of them. A module with a custom
        ``forward`` cannot be traced and raises a ``TypeError`` naming it.
    path : str or os.PathLike
        Conventionally ``*.onnx``.
    opset : int, default 17
        Default-domain opset, from 9 to the installed onnx's newest. Below 17 LayerNorm is
        written as its decomposition.
    input_names, output_names : str or list of one str, optional
        Default ``"input"`` / ``"output"``.
    dynamic_batch : bool, default True
        The first dimension of input and output is the symbolic ``"batch"``; False fixes it to
        ``batch_size``.
    batch_size : int, default 1
        The fixed batch dimension when ``dynamic_batch=False``.
    input_shape : tuple of int, optional
        One sample's shape, without the batch dimension. Inferred from the first Linear /
        BatchNorm1d / LayerNorm when no Flatten comes before it; required otherwise.
    metadata : dict, optional
        Written to the model's ``metadata_props`` (strings as they are, other values as JSON;
        :func:`fastreg.onnx.load` decodes them). Default: the model's own ``metadata`` (what
        :func:`fastreg.save`'s ``metadata`` argument stored: feature names, classes...), if any.

    Returns
    -------
    onnx.ModelProto
        The model that was written.
    """
    onnx = require("onnx", "fastreg.onnx.export")
    opset, input_shape = _check_args(model, path, opset, dynamic_batch, batch_size,
                                     input_shape, metadata, onnx)
    in_name = _one_name(input_names, "input_names", "input")
    out_name = _one_name(output_names, "output_names", "output")
    if in_name == out_name:
        raise ValueError(f"input_names and output_names must differ, both are {in_name!r}")
    if metadata is None:
        own = getattr(model, "metadata", None)
        metadata = own if isinstance(own, dict) else {}
    props = encode_metadata(metadata)

    leaves = _leaves(model, "")
    dtype = _model_dtype(model)
    sample = input_shape if input_shape is not None else _infer_sample_shape(leaves)
    if sample is None:
        raise ValueError("fastreg.onnx.export: cannot infer the input's shape (the chain starts "
                         "with a Flatten or has no Linear / BatchNorm1d / LayerNorm); pass "
                         "input_shape=(one sample's shape, without the batch dimension)")
    b = _Builder(onnx, dtype, opset, in_name, [None, *sample])
    b.names.add(out_name)
    in_shape = list(b.shape)
    for where, m in leaves:
        _emit(b, where or type(m).__name__, m)
    if not b.nodes or b.x == in_name:            # nothing but identities: y = x
        b.node("Identity", [b.x], "output")
    b.nodes[-1].output[0] = out_name             # the chain's last node writes the output

    batch = "batch" if dynamic_batch else int(batch_size)
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    graph = onnx.helper.make_graph(
        b.nodes, "fastreg", [onnx.helper.make_tensor_value_info(in_name, elem,
                                                                [batch, *in_shape[1:]])],
        [onnx.helper.make_tensor_value_info(out_name, elem, [batch, *b.shape[1:]])],
        initializer=b.inits)
    from .. import __version__
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fastreg",
                                   producer_version=__version__)
    # the oldest IR version that carries this opset: readers (ONNX Runtime) lag onnx's newest
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    if props:
        onnx.helper.set_model_props(proto, dict(props))
    onnx.checker.check_model(proto, full_check=True)
    from ..io.atomic import atomic_write
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return proto
