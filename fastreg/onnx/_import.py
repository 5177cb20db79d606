"""``fastreg.onnx.load``: an MLP-shaped ONNX graph as a fastreg ``Sequential``.

The graph is read as a **chain**: starting from the chosen output tensor, each node is followed
back through its one input that depends on the graph input (its other inputs must be constants:
initializers, ``Constant`` nodes, or ``Identity`` / ``Transpose`` / ``Cast`` of constants, which
are folded first; decomposed LayerNorms are matched into one node first too). A node with two
inputs that depend on the graph input (a residual ``Add``, a ``Concat``, a ``Reshape`` whose
shape is computed from ``Shape(x)``) makes the graph branching: refused. Nodes that do not lead
to the chosen output are ignored.

Operators (default domain) and the layers they become::

    Gemm(x, B, C; alpha, beta, transB)    Linear: W = alpha * (B if transB else B^T),
                                          b = beta * C (C of shape (), (1,), (M,) or (1, M));
                                          transA = 1 or the input in B: refused
    MatMul(x, B) [+ Add(., c)]            Linear(bias=False) with W = B^T; an Add of a constant
                                          right after a Gemm / MatMul becomes (adds to) its bias
    BatchNormalization                    BatchNorm1d (eval, running statistics = mean, var);
                                          training_mode = 1: refused
    LayerNormalization (axis = -1)        LayerNorm (B absent: bias zeros)
    the LayerNorm decomposition below     LayerNorm: d = Sub(x, ReduceMean(x)), y = Div(d, Sqrt(
    opset 17 (torch's, fastreg's)         Add(ReduceMean(Pow(d, 2) | Mul(d, d)), eps))) over the
                                          last axis, then Mul(gamma), Add(beta) when present
    Relu, LeakyRelu(alpha), Sigmoid, Tanh ReLU, LeakyReLU, Sigmoid, Tanh
    Flatten(axis = 1)                     Flatten()
    Reshape(x, [0, -1]) or (x, [-1, K])   Flatten() -- the second only where the per-sample size
                                          of x is known to be K (else refused)
    Mul(x, c), scalar 0 < c <= 1          Dropout(1 - c, mode="classic") (c at eval; what
                                          fastreg.onnx.export writes for classic dropout)
    Dropout, Identity, Cast to float/double   nothing (inference identity; fastreg computes in the
                                          initializers' float type)

The layers' dtype is the graph's float initializers' (float32 or float64). Attribute floats
(epsilon, alpha) are float32 in ONNX; they are read back as the shortest decimal of that float32
(``1e-5``, not ``9.99999974738e-06``), which is what exporters write.
"""
from __future__ import annotations

import os

import numpy as np

from ._common import decode_metadata, require

__all__ = ["SUPPORTED_OPS", "load"]

#: Operators a chain may contain (default ONNX domain).
SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "BatchNormalization", "LayerNormalization", "Relu",
                 "LeakyRelu", "Sigmoid", "Tanh", "Flatten", "Reshape", "Mul", "Dropout",
                 "Identity", "Cast")
#: Operators folded when all their inputs are constants.
_FOLDABLE = ("Identity", "Transpose", "Cast")
_SKIPPED = ("Dropout", "Identity", "Cast")


def _f32_decimal(v) -> float:
    """The shortest decimal of a float32 attribute (``1e-05`` for float32(1e-5))."""
    return float(str(np.float32(v)))


def _label(node) -> str:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    return f"{op} {node.name!r}" if node.name else op


def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """The graph's constants (folded), producers and the one dynamic input."""

    def __init__(self, onnx, proto, where: str):
        self.onnx, self.where = onnx, where
        g = proto.graph
        nh = onnx.numpy_helper
        self.consts: dict[str, np.ndarray] = {t.name: nh.to_array(t) for t in g.initializer}
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{where}: fastreg.onnx.load imports graphs with one input, this "
                             f"one has {len(inputs)}: {[i.name for i in inputs]}")
        self.input = inputs[0]
        self.dynamic_nodes = []
        for node in g.node:
            default = node.domain in ("", "ai.onnx")
            if default and node.op_type == "Constant" and len(node.output) == 1:
                value = self._constant_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
                    continue
            ins = [i for i in node.input if i]
            if default and node.op_type in _FOLDABLE and ins and len(node.output) == 1 \
                    and all(i in self.consts for i in ins):
                self.consts[node.output[0]] = self._fold(node, self.consts[ins[0]])
                continue
            self.dynamic_nodes.append(node)
        self.outputs = [o.name for o in g.output]
        self._fuse_layernorms()
        self.producer = {o: n for n in self.dynamic_nodes for o in n.output if o}

    # -- the LayerNorm decomposition (opset < 17 exporters: torch, fastreg.onnx.export) ------
    def _fuse_layernorms(self) -> None:
        """Replace each decomposed LayerNorm over the last axis by one LayerNormalization node:
        ``d = Sub(x, ReduceMean(x)); y = Div(d, Sqrt(Add(ReduceMean(Pow(d, 2) | Mul(d, d)),
        eps)))``, then optionally ``Mul(y, gamma)`` and ``Add(., beta)`` with constant vectors.
        A match whose intermediate tensors are used elsewhere is left alone (and then refused
        as a branching graph)."""
        producer = {o: n for n in self.dynamic_nodes for o in n.output if o}
        users: dict[str, list] = {}
        for n in self.dynamic_nodes:
            for i in n.input:
                users.setdefault(i, []).append(n)
        divs = [n for n in self.dynamic_nodes
                if n.op_type == "Div" and n.domain in ("", "ai.onnx")]
        for div in divs:
            found = self._match_layernorm(div, producer, users)
            if found is None:
                continue
            matched, x, out, eps, gamma, beta = found
            inner = {o for n in matched for o in n.output if o} - {out}
            if any(u not in matched for t in inner for u in users.get(t, [])) \
                    or inner & set(self.outputs):
                continue
            key = f"{div.name or div.output[0]}.layernorm"
            if gamma is not None:
                self.consts[key + ".weight"] = gamma
                self.consts[key + ".bias"] = beta
            names = [key + ".weight", key + ".bias"] if gamma is not None else ["", ""]
            fused = self.onnx.helper.make_node(
                "LayerNormalization", [x, *names], [out],
                name=f"{div.name} (decomposed LayerNorm)", axis=-1, epsilon=eps)
            at = self.dynamic_nodes.index(matched[-1])
            self.dynamic_nodes[at] = fused
            self.dynamic_nodes = [n for n in self.dynamic_nodes if n not in matched]
            producer = {o: n for n in self.dynamic_nodes for o in n.output if o}

    def _last_axis_mean(self, node) -> bool:
        if node is None or node.op_type != "ReduceMean":
            return False
        at = _attrs(self.onnx, node)
        axes = at.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in self.consts:
            axes = self.consts[node.input[1]].reshape(-1).tolist()
        return list(axes or []) == [-1] and at.get("keepdims", 1) == 1

    def _match_layernorm(self, div, producer, users):
        c = self.consts
        d_name, s_name = (div.input[0], div.input[1]) if len(div.input) == 2 else (None, None)
        sub, sqrt = producer.get(d_name), producer.get(s_name)
        if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
            return None
        x, mean_name = sub.input
        mean = producer.get(mean_name)
        if not self._last_axis_mean(mean) or mean.input[0] != x:
            return None
        add = producer.get(sqrt.input[0])
        if add is None or add.op_type != "Add":
            return None
        var_name, eps_name = (add.input if add.input[1] in c else add.input[::-1])
        if eps_name not in c or c[eps_name].size != 1:
            return None
        var = producer.get(var_name)
        if not self._last_axis_mean(var):
            return None
        sq = producer.get(var.input[0])
        if sq is None or not (
                (sq.op_type == "Mul" and list(sq.input) == [d_name, d_name]) or
                (sq.op_type == "Pow" and sq.input[0] == d_name and sq.input[1] in c
                 and float(c[sq.input[1]].reshape(-1)[0]) == 2.0)):
            return None
        matched = [mean, sub, sq, var, add, sqrt, div]
        out, eps = div.output[0], float(c[eps_name].reshape(-1)[0])
        gamma = beta = None
        nxt = users.get(out, [])
        if len(nxt) == 1 and nxt[0].op_type == "Mul" and out in nxt[0].input:
            other = [i for i in nxt[0].input if i != out]
            if len(other) == 1 and other[0] in c and c[other[0]].ndim == 1:
                gamma = c[other[0]]
                matched.append(nxt[0])
                out = nxt[0].output[0]
                nxt = users.get(out, [])
                if len(nxt) == 1 and nxt[0].op_type == "Add" and out in nxt[0].input:
                    other = [i for i in nxt[0].input if i != out]
                    if len(other) == 1 and other[0] in c and c[other[0]].shape == gamma.shape:
                        beta = c[other[0]]
                        matched.append(nxt[0])
                        out = nxt[0].output[0]
        if gamma is not None and beta is None:
            beta = np.zeros_like(gamma)
        return matched, x, out, eps, gamma, beta

    def _constant_value(self, node):
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            if a.name == "value":
                return self.onnx.numpy_helper.to_array(v)
            if a.name in ("value_float", "value_floats"):
                return np.array(v, dtype=np.float32)
            if a.name in ("value_int", "value_ints"):
                return np.array(v, dtype=np.int64)
        return None

    def _fold(self, node, a: np.ndarray) -> np.ndarray:
        at = _attrs(self.onnx, node)
        if node.op_type == "Transpose":
            return np.transpose(a, at.get("perm"))
        if node.op_type == "Cast":
            return a.astype(self.onnx.helper.tensor_dtype_to_np_dtype(at["to"]))
        return a

    def dynamic_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.consts]

    def const(self, node, i: int, what: str) -> np.ndarray | None:
        """Input ``i`` of ``node`` as a constant array (None when absent)."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.consts:
            raise ValueError(f"{self.where}: {_label(node)}: its {what} ({name!r}) is computed "
                             "from the input; fastreg imports only constant weights")
        return self.consts[name]

    def chain(self, target: str) -> list:
        """The nodes from the input to ``target``, in execution order (see the module doc)."""
        x = self.input.name
        nodes, unsupported, t = [], [], target
        while t != x:
            node = self.producer.get(t)
            if node is None:
                if t in self.consts:
                    raise ValueError(f"{self.where}: tensor {t!r} is a constant; it does not "
                                     f"depend on the input {x!r}")
                raise ValueError(f"{self.where}: no tensor {t!r} in this graph")
            if len(nodes) > len(self.dynamic_nodes):      # pragma: no cover - a cyclic graph
                raise ValueError(f"{self.where}: the graph has a cycle")
            nodes.append(node)
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                unsupported.append(_label(node))
            dyn = self.dynamic_inputs(node)
            if len(dyn) != 1:
                self._refuse_branch(node, dyn, unsupported)
            t = dyn[0]
        if unsupported:
            raise ValueError(
                f"{self.where}: unsupported ONNX operator(s) on the path from {x!r} to "
                f"{target!r}: {', '.join(reversed(unsupported))}. fastreg.onnx.load supports "
                f"{', '.join(SUPPORTED_OPS)} in a chain{self.hint()}")
        return nodes[::-1]

    def _refuse_branch(self, node, dyn, unsupported):
        if not dyn:
            raise ValueError(f"{self.where}: {_label(node)} does not depend on the input "
                             f"{self.input.name!r} (a subgraph fastreg cannot fold)")
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in dyn:
            raise ValueError(f"{self.where}: {_label(node)}: its target shape is computed in the "
                             "graph (Shape/Gather/Concat...); only a constant flatten shape "
                             "([0, -1] or [-1, K]) is supported")
        extra = (f"; unsupported operator(s) on the way: {', '.join(reversed(unsupported))}"
                 if unsupported[:-1] else "")
        raise ValueError(
            f"{self.where}: branching graph: {_label(node)} combines {len(dyn)} tensors that "
            f"depend on the input ({', '.join(map(repr, dyn))}); fastreg.onnx.load imports "
            f"chains (MLP-shaped graphs) only{extra}")

    def last_supported(self) -> str | None:
        """The end of the longest supported chain from the input (for the error hints)."""
        t, seen = self.input.name, 0
        while seen <= len(self.dynamic_nodes):
            users = [n for n in self.dynamic_nodes if t in n.input]
            if len(users) != 1:
                break
            n = users[0]
            if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS \
                    or self.dynamic_inputs(n) != [t] or not n.output:
                break
            t, seen = n.output[0], seen + 1
        return None if t == self.input.name else t

    def hint(self) -> str:
        t = self.last_supported()
        if t is None:
            return ""
        return (f". The graph is importable from {self.input.name!r} up to tensor {t!r}: "
                f"fastreg.onnx.load(path, output={t!r}) imports that part")


def _bias_vector(c: np.ndarray, M: int, node, where: str) -> np.ndarray:
    """A constant added to an (N, M) product, as an (M,) vector (scalar, (M,), (1, M))."""
    if c.size == 1 or c.shape in ((M,), (1, M)):
        return np.broadcast_to(c.reshape(-1), (M,)).astype(np.float64)
    raise ValueError(f"{where}: {_label(node)}: the added constant has shape {c.shape}; only a "
                     f"scalar or a per-output vector of {M} values is supported")


def _sample_size(value_info) -> int | None:
    """prod(dims[1:]) of a graph input when every non-batch dimension is known."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = t.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims])) if dims else None


def _layers(onnx, graph: _Graph, nodes: list, dtype: np.dtype, where: str) -> list:
    """The fastreg layers of a chain (the table in the module docstring)."""
    from ..nn import layers as L
    layers: list = []
    size = _sample_size(graph.input)         # per-sample size of the current tensor, if known
    prev_linear = None                       # the Linear an Add may add its bias to

    def set_(param, value):
        param.data[...] = np.asarray(value, dtype=np.float64)

    for node in nodes:
        op, at = node.op_type, _attrs(onnx, node)
        x = graph.dynamic_inputs(node)[0]
        linear = None
        if op in ("Gemm", "MatMul"):
            if node.input[0] != x:
                raise ValueError(f"{where}: {_label(node)} multiplies a constant by the input "
                                 "(the input is its second operand); only x @ W is supported")
            if op == "Gemm" and at.get("transA", 0):
                raise ValueError(f"{where}: {_label(node)} has transA=1 (it transposes the "
                                 "input); only transA=0 is supported")
            B = graph.const(node, 1, "weight").astype(np.float64)
            if B.ndim != 2:
                raise ValueError(f"{where}: {_label(node)}: the weight has shape {B.shape}; "
                                 "a 2-D weight is required")
            W = B if (op == "Gemm" and at.get("transB", 0)) else B.T
            M, K = W.shape
            C = graph.const(node, 2, "bias") if op == "Gemm" else None
            linear = L.Linear(K, M, bias=C is not None, dtype=dtype)
            set_(linear.weight, W * (_f32_decimal(at["alpha"]) if "alpha" in at else 1.0))
            if C is not None:
                beta = _f32_decimal(at["beta"]) if "beta" in at else 1.0
                set_(linear.bias, beta * _bias_vector(C, M, node, where))
            layers.append(linear)
            size = M
        elif op == "Add":
            c = graph.const(node, 1 if node.input[0] == x else 0, "addend")
            if prev_linear is None:
                raise ValueError(f"{where}: {_label(node)} adds a constant that does not follow "
                                 "a Gemm / MatMul; only a Linear's bias is supported")
            M = prev_linear.out_features
            vec = _bias_vector(c, M, node, where)
            if prev_linear.bias is None:
                new = L.Linear(prev_linear.in_features, M, bias=True, dtype=dtype)
                set_(new.weight, prev_linear.weight.data)
                set_(new.bias, vec)
                layers[-1] = linear = new
            else:
                set_(prev_linear.bias, prev_linear.bias.data.astype(np.float64) + vec)
                linear = prev_linear
        elif op == "BatchNormalization":
            if at.get("training_mode", 0):
                raise ValueError(f"{where}: {_label(node)} has training_mode=1 (batch "
                                 "statistics); only inference BatchNormalization is supported")
            if at.get("spatial", 1) != 1:
                raise ValueError(f"{where}: {_label(node)} has spatial=0; not supported")
            scale, bias, mean, var = (graph.const(node, i, w).astype(np.float64).reshape(-1)
                                      for i, w in ((1, "scale"), (2, "bias"), (3, "mean"),
                                                   (4, "variance")))
            C = scale.size
            if not (bias.size == mean.size == var.size == C):
                raise ValueError(f"{where}: {_label(node)}: scale, bias, mean and variance "
                                 "have different sizes")
            eps = _f32_decimal(at["epsilon"]) if "epsilon" in at else 1e-5
            bn = L.BatchNorm1d(C, eps=eps, dtype=dtype)
            set_(bn.weight, scale)
            set_(bn.bias, bias)
            bn.running_mean[...] = mean
            bn.running_var[...] = var
            layers.append(bn)
        elif op == "LayerNormalization":
            if at.get("axis", -1) != -1:
                raise ValueError(f"{where}: {_label(node)} normalizes from axis "
                                 f"{at['axis']}; only the last axis (axis=-1) is supported")
            scale = graph.const(node, 1, "scale")
            if scale is None:       # a decomposed LayerNorm without gamma: C from the chain
                if size is None:
                    raise ValueError(f"{where}: {_label(node)}: the number of features is "
                                     "unknown (no scale, no preceding Linear)")
                scale = np.ones(size)
            scale = scale.astype(np.float64).reshape(-1)
            bias = graph.const(node, 2, "bias")
            C = scale.size
            bias = np.zeros(C) if bias is None else bias.astype(np.float64).reshape(-1)
            if bias.size != C:
                raise ValueError(f"{where}: {_label(node)}: scale and bias sizes differ")
            eps = _f32_decimal(at["epsilon"]) if "epsilon" in at else 1e-5
            ln = L.LayerNorm(C, eps=eps, dtype=dtype)
            set_(ln.weight, scale)
            set_(ln.bias, bias)
            layers.append(ln)
        elif op in ("Relu", "Sigmoid", "Tanh"):
            layers.append({"Relu": L.ReLU, "Sigmoid": L.Sigmoid, "Tanh": L.Tanh}[op]())
        elif op == "LeakyRelu":
            layers.append(L.LeakyReLU(_f32_decimal(at["alpha"]) if "alpha" in at else 0.01))
        elif op == "Flatten":
            if at.get("axis", 1) != 1:
                raise ValueError(f"{where}: {_label(node)} flattens from axis {at['axis']}; "
                                 "only axis=1 ((N, ...) -> (N, -1)) is supported")
            layers.append(L.Flatten())
        elif op == "Reshape":
            shape = graph.const(node, 1, "shape").reshape(-1).tolist()
            zero_ok = not at.get("allowzero", 0)
            if not ((shape == [0, -1] and zero_ok) or
                    (len(shape) == 2 and shape[0] == -1 and shape[1] > 0 and size == shape[1])):
                known = "" if size is None else f" (per-sample size {size})"
                raise ValueError(f"{where}: {_label(node)} reshapes to {shape}{known}; only a "
                                 "flatten (N, ...) -> (N, -1) is supported ([0, -1], or "
                                 "[-1, K] with K the known per-sample size)")
            layers.append(L.Flatten())
        elif op == "Mul":
            c = graph.const(node, 1 if node.input[0] == x else 0, "factor")
            f = float(c.reshape(-1)[0]) if c.size == 1 else None
            if f is None or not 0.0 < f <= 1.0:
                raise ValueError(f"{where}: {_label(node)}: only a multiplication by a scalar "
                                 "in (0, 1] (classic dropout at inference) is supported, got "
                                 f"a constant of shape {c.shape}")
            layers.append(L.Dropout(1.0 - f, mode="classic"))
        elif op == "Dropout":
            mode = graph.const(node, 2, "training_mode") if len(node.input) > 2 else None
            if (mode is not None and bool(mode.reshape(-1)[0])) or at.get("is_test", 1) == 0:
                raise ValueError(f"{where}: {_label(node)} is in training mode; only inference "
                                 "Dropout (the identity) is supported")
        elif op == "Cast":
            to = onnx.helper.tensor_dtype_to_np_dtype(at["to"])
            if to not in (np.float32, np.float64):
                raise ValueError(f"{where}: {_label(node)} casts to {np.dtype(to).name}; only "
                                 "casts to float32 / float64 are supported")
        prev_linear = linear
    return layers


def _model_dtype(onnx, graph: _Graph, nodes: list, where: str) -> np.dtype:
    used = {i for n in nodes for i in n.input if i in graph.consts}
    dts = {graph.consts[i].dtype for i in used if graph.consts[i].dtype.kind == "f"}
    if not dts:
        elem = graph.input.type.tensor_type.elem_type
        dts = {np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))} if elem else set()
        dts &= {np.dtype(np.float32), np.dtype(np.float64)}
        dts = dts or {np.dtype(np.float32)}
    if len(dts) > 1 or not dts <= {np.dtype(np.float32), np.dtype(np.float64)}:
        raise ValueError(f"{where}: the weights are {sorted(d.name for d in dts)}; fastreg "
                         "imports float32 or float64 weights (one type per model)")
    return dts.pop()


def _classifier_labels(onnx, proto, graph: _Graph, output: str, model) -> dict:
    """``{"task": "classification", "classes": [...]}`` when the imported output is the logits a
    ``Softmax`` turns into class probabilities and the graph names the classes (skl2onnx: a
    ``ZipMap``'s labels, or the constant an ``ArrayFeatureExtractor`` picks the label from), one
    label per output column; else {}. ``fastreg predict`` then prints labels and probabilities."""
    users = [n for n in graph.dynamic_nodes if output in n.input]
    if len(users) != 1 or users[0].op_type != "Softmax" \
            or _attrs(onnx, users[0]).get("axis", -1) not in (-1, 1):
        return {}
    labels = None
    for n in proto.graph.node:
        if n.op_type == "ZipMap":
            at = _attrs(onnx, n)
            labels = at.get("classlabels_int64s") or at.get("classlabels_strings")
        elif n.op_type == "ArrayFeatureExtractor" and n.input and n.input[0] in graph.consts:
            labels = graph.consts[n.input[0]].reshape(-1).tolist()
        if labels is not None:
            break
    widths = [m.out_features for m in model if type(m).__name__ == "Linear"]
    if not labels or not widths or widths[-1] != len(labels):
        return {}
    labels = [v.decode() if isinstance(v, bytes) else v for v in labels]
    return {"task": "classification", "classes": labels}


def load(path, *, output: str | None = None):
    """Import an MLP-shaped ONNX model as a fastreg ``Sequential`` (eval mode).

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
        The ONNX file (or a loaded model).
    output : str, optional
        Name of the tensor to import up to: a graph output or any intermediate tensor. Default:
        the graph's only output. A graph with several outputs, or with unsupported operators
        after the network (skl2onnx's classifiers end with Softmax / ArgMax / ZipMap), needs it:
        the error message names the last tensor of the importable chain (for an
        ``MLPClassifier`` the logits before the Softmax, for an ``MLPRegressor`` the graph's
        own output).

    Returns
    -------
    fastreg.nn.Sequential
        In eval mode, with ``model.metadata`` (the ONNX ``metadata_props``, decoded as
        :func:`fastreg.onnx.export` encoded them; when ``output`` is the logits before a
        ``Softmax`` and the graph names the classes, as skl2onnx's classifiers do, also
        ``task="classification"`` and ``classes``) and ``model.predict(x)`` (the compiled
        predictor, as for :func:`fastreg.load`).

    Raises
    ------
    ValueError
        Not a valid ONNX model; unsupported operators (named, with their node names); a
        branching graph; weights that are not float32 / float64.
    """
    onnx = require("onnx", "fastreg.onnx.load")
    if isinstance(path, onnx.ModelProto):
        proto, where = path, "ONNX model"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, os.PathLike or onnx.ModelProto, got "
                            f"{type(path).__name__}")
        where = os.fspath(path)
        if not os.path.exists(where):
            raise FileNotFoundError(f"{where}: no such file")
        try:
            proto = onnx.load(where)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, and more on odd bytes
            raise ValueError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") \
                from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"{where}: not a valid ONNX model: {exc}") from None
    if output is not None and not isinstance(output, str):
        raise TypeError(f"output must be a tensor name (str) or None, got {output!r}")
    graph = _Graph(onnx, proto, where)
    if output is None:
        if len(graph.outputs) != 1:
            raise ValueError(f"{where}: the graph has {len(graph.outputs)} outputs "
                             f"{graph.outputs}; choose one with output=<tensor name>"
                             f"{graph.hint()}")
        output = graph.outputs[0]
    elif output == graph.input.name:
        raise ValueError(f"{where}: output={output!r} is the graph's input")
    nodes = graph.chain(output)
    dtype = _model_dtype(onnx, graph, nodes, where)
    from ..nn import Sequential
    model = Sequential(*_layers(onnx, graph, nodes, dtype, where))
    model.eval()
    metadata = decode_metadata(proto.metadata_props)
    if "classes" not in metadata:
        metadata.update(_classifier_labels(onnx, proto, graph, output, model))
    object.__setattr__(model, "metadata", metadata)
    from ..io.model_file import attach_predict
    attach_predict(model)
    return model
