r"""Quantized serving: ``fr.inference.compile(model, weights="int8" | "bf16")``.

The model is compiled as usual (:class:`fastreg.inference.Predictor`: BatchNorm folded into the
Linear layers, Dropout dropped, activations fused), then every folded Linear (+ activation)
stage gets quantized weights and runs on the quantized kernels of
:mod:`fastreg._kernels.quant` (the maths is written there):

* ``"int8"``: per-output-channel symmetric int8 weights (:math:`s_j = \max_k|W_{jk}|/127`);
  activations quantized per call, per row, asymmetric 7-bit with a zero point (the
  calibration-free scheme of ONNX Runtime's ``quantize_dynamic``, which uses 8-bit per-tensor
  activations; 7 bits keep AVX2's int16 pair sums from saturating); int32 accumulation; the
  epilogue dequantizes, adds the bias and applies the activation, in float32; the next
  layer quantizes its input again.
* ``"bf16"``: weights rounded once to bfloat16 (nearest even), float32 activations and
  accumulation (each weight widened on the fly).

With int8 weights, each run of consecutive quantized Linear stages runs as one C call
(:class:`~fastreg._kernels.quant.cy.Q8Chain`: the columns of every layer split over the threads
from 2.5e5 multiply-adds a call (``fastreg.inference.set_split_small_batches``), on the split
pool up to 4 rows and in one OpenMP region above; the same bits as the stages one by one, on
every thread count);
a model that is one such run is served by the chain's checked fast call, without Python per
stage.

Stages that are not Linear layers (LayerNorm, an unfoldable BatchNorm, activations, Flatten)
run in float32 as in the float predictor; a custom module's stage (its own ``forward``) is not
quantized either: :meth:`QuantizedPredictor.describe` lists which stage runs what.

Saving: ``fr.save(predictor, path)`` writes a model file of format version
:data:`PREDICTOR_FORMAT_VERSION` (version-1 readers refuse it with "format version 2 is not
supported"): the architecture of the float model the predictor runs (the folded stages as
layers: each quantized Linear with its activation, an unfolded affine map as a BatchNorm1d
with unit statistics, a constant scale as a classic Dropout), its state without the Linear
weights, and the ``"quantized"`` section ``{"version": 1, "weights": ..., "linears": [names]}``
whose Linears store ``<name>.weight`` as int8 (M, K) plus ``<name>.weight_scale`` float32 (M,),
or as bf16 bits, uint16 (M, K). ``fr.load(path)`` rebuilds the predictor from them, through the
same hardened checks as a model file; it predicts bit for bit what the saved one predicted.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ._kernels import quant as _q
from ._kernels.common import codes as _codes
from .inference import Predictor, _fold, _ops
from .io.model_file import PREDICTOR_FORMAT_VERSION
from .nn._spec import (
    ActivationOp,
    AffineOp,
    FlattenOp,
    ForwardOp,
    LayerNormOp,
    LinearOp,
    ScaleOp,
)

__all__ = ["PREDICTOR_FORMAT_VERSION", "QUANTIZED_SECTION_VERSION", "WEIGHTS",
           "QuantizedLinear", "QuantizedPredictor", "compile_weights", "read_predictor",
           "save_predictor"]

#: The choices of ``compile(weights=)``.
WEIGHTS = ("float32", "bf16", "int8")
#: Version of the file's "quantized" section.
QUANTIZED_SECTION_VERSION = 1
_F32 = np.dtype(np.float32)
#: BatchNorm1d stand-in for an affine stage: running_var + eps == 1 exactly, so the fold at load
#: gives s = weight, t = bias bit for bit.
_BN_EPS = 2.0 ** -10


def check_weights(weights) -> str:
    if not isinstance(weights, str) or weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHTS))}, "
                         f"got {weights!r}")
    return weights


class QuantizedLinear:
    """One folded Linear (+ activation) stage with quantized weights, packed once for the
    kernels. ``q`` (M, K) int8 and ``scale`` (M,) float32 for int8; ``bits`` (M, K) uint16 (the
    bfloat16 values) for bf16; ``bias`` (M,) float32."""

    def __init__(self, weights: str, bias, activation: int, slope: float, *, q=None,
                 scale=None, bits=None):
        self.weights = weights
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.activation = int(activation)
        self.slope = float(slope)
        if weights == "int8":
            self.q = np.ascontiguousarray(q, dtype=np.int8)
            self.scale = np.ascontiguousarray(scale, dtype=np.float32)
            self.out_features, self.in_features = self.q.shape
            if self.in_features > _q.MAX_K_INT8:
                raise ValueError(f"weights='int8': a Linear with {self.in_features} input "
                                 f"features exceeds the int8 kernels' limit {_q.MAX_K_INT8} "
                                 "(int32 accumulators); use weights='bf16'")
            self._packed, self._colsum, self._kp = _q.pack_int8(self.q)
        else:
            self.bits = np.ascontiguousarray(bits, dtype=np.uint16)
            self.out_features, self.in_features = self.bits.shape
            self._packed, self._kp = _q.pack_bf16(self.bits)

    @classmethod
    def from_float(cls, weights: str, W: np.ndarray, bias, activation: int, slope: float):
        """Quantize float32(W) (M, K); W must be finite."""
        W = np.ascontiguousarray(W, dtype=np.float32)
        if not np.isfinite(W).all():
            raise ValueError(f"weights={weights!r}: a Linear's folded weight has non-finite "
                             "values; they cannot be quantized")
        if weights == "int8":
            q, s = _q.quantize_int8(W)
            return cls(weights, bias, activation, slope, q=q, scale=s)
        return cls(weights, bias, activation, slope, bits=_q.to_bf16(W))

    def chain_layer(self) -> tuple:
        """This int8 layer as a :class:`~fastreg._kernels.quant.cy.Q8Chain` layer."""
        return (self.in_features, self.out_features, self._packed, self.scale, self._colsum,
                self.bias, self._kp, self.activation, self.slope)

    def tensors(self) -> dict:
        """What a file stores for the weight: {"weight": ..., ["weight_scale": ...]}."""
        if self.weights == "int8":
            return {"weight": self.q, "weight_scale": self.scale}
        return {"weight": self.bits}

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weights the kernels read per call (+ scales, column sums)."""
        extra = self.scale.nbytes + self._colsum.nbytes if self.weights == "int8" else 0
        return int(self._packed.nbytes + extra)

    def dequantized(self) -> np.ndarray:
        """The float32 weights the kernels effectively use (M, K) (for tests and inspection)."""
        if self.weights == "int8":
            return self.q.astype(np.float32) * self.scale[:, None]
        return _q.bf16_to_float32(self.bits)

    def stage(self, n: int):
        """``h (n, K) float32 -> out (n, M)``, with this plan's buffers (per thread)."""
        cy = _q.backend()
        M, K = self.out_features, self.in_features
        out = np.empty((n, M), np.float32)
        want = (n, K)
        act, slope, packed, b = self.activation, self.slope, self._packed, self.bias

        def check(h):
            if h.shape != want or h.dtype != _F32 or not h.flags.c_contiguous:
                raise ValueError(f"quantized Linear stage: expected a C-contiguous {want} "
                                 f"float32 input from the previous stage, got {h.shape} "
                                 f"{h.dtype}")

        if self.weights == "int8":
            xq = np.empty((n, self._kp), np.uint8)
            sx = np.empty(n, np.float32)
            zp = np.empty(n, np.int32)
            fn, s, cs = cy.q8_linear, self.scale, self._colsum

            def f(h):
                if h.shape != want or h.dtype != _F32 or not h.flags.c_contiguous:
                    check(h)
                fn(h, xq, sx, zp, packed, s, cs, b, out, act, slope)
                return out
        else:
            fn, kp = cy.bf16_linear, self._kp

            def f(h):
                if h.shape != want or h.dtype != _F32 or not h.flags.c_contiguous:
                    check(h)
                fn(h, packed, b, out, kp, act, slope)
                return out
        return f


class QuantizedPredictor(Predictor):
    """A :class:`~fastreg.inference.Predictor` whose Linear stages run with ``weights="int8"``
    or ``"bf16"`` (see :mod:`fastreg._quant`); float32 activations in and out. Thread-safe as
    the float predictor (per-thread buffers). ``weights`` names the scheme; ``describe()``
    says what each stage runs; ``metadata`` is the model's (a loaded model's feature names,
    classes...), saved with it by ``fr.save(predictor, path)`` (see the module docstring)."""

    def __init__(self, model, weights: str, _prepared: list | None = None):
        _q.backend()                        # a clear ImportError before any work
        super().__init__(model, dtype=np.float32)
        self.weights = weights
        meta = getattr(model, "metadata", None)     # what fr.load attached (features, classes)
        self.metadata = dict(meta) if isinstance(meta, dict) else {}
        folded = _fold(_ops(model))
        if len(folded) != len(self._ops):   # one float stage per folded op (inference.py)
            raise RuntimeError("compile: the float predictor's stages do not match the folded "
                               f"ops ({len(self._ops)} vs {len(folded)})")
        self._qlinear: dict[int, QuantizedLinear] = {}
        self._folded: list = []            # typed ops, Linears as QuantizedLinear (for save)
        prepared = list(_prepared) if _prepared is not None else None
        for i, op in enumerate(folded):
            if type(op) is not LinearOp:
                self._folded.append(_f32_op(op))
                continue
            b = np.asarray(op.bias, np.float32)
            if prepared is None:
                ql = QuantizedLinear.from_float(weights, np.asarray(op.weight, np.float32), b,
                                                op.activation, op.slope)
            else:
                ql = QuantizedLinear(weights, b, op.activation, op.slope, **prepared.pop(0))
                if (ql.out_features, ql.in_features) != op.weight.shape:
                    raise ValueError(f"stage {i}: quantized weight of shape "
                                     f"{(ql.out_features, ql.in_features)}, the Linear is "
                                     f"{op.weight.shape}")
            self._qlinear[i] = ql
            self._folded.append(ql)
            self.stages[i] = f"{self.stages[i]} {weights}"
            self._ops[i] = _stub(self._ops[i], op.weight.shape)
        if prepared:
            raise ValueError(f"{len(prepared)} quantized weights left over: the model has "
                             f"fewer Linear layers than the file")
        self._build_chains()

    def _build_chains(self) -> None:
        """No float :class:`LinearChain` (a chain built from the float weights would serve
        float32 results). With int8 weights, each run of consecutive quantized Linear stages
        becomes one :class:`~fastreg._kernels.quant.cy.Q8Chain` (one C call, one OpenMP region
        for the run: the same bits as the stages run one by one); ``_fast`` is its checked
        call when the whole model is one run. bf16 stages run one kernel call each."""
        self._chains = {}
        self._fast = None
        qlin = getattr(self, "_qlinear", None)     # None while Predictor.__init__ runs
        if not qlin or self.weights != "int8":
            return
        cy = _q.backend()
        n_ops, i = len(self._ops), 0
        while i < n_ops:
            if i not in qlin:
                i += 1
                continue
            j = i
            while j < n_ops and j in qlin:
                j += 1
            self._chains[i] = (j, cy.Q8Chain([qlin[t].chain_layer() for t in range(i, j)]))
            i = j
        whole = self._chains.get(0)
        if whole is not None and whole[0] == n_ops and self.in_features is not None:
            self._fast = whole[1].fast

    def _plan(self, n: int) -> list:
        stages = super()._plan(n)       # runs of int8 stages: one entry each (the chain's)
        first, i = [], 0                # the op index of each entry
        while i < len(self._ops):
            first.append(i)
            i = self._chains[i][0] if i in self._chains else i + 1
        for e, i in enumerate(first):
            ql = self._qlinear.get(i)
            if ql is not None and i not in self._chains:
                stages[e] = ql.stage(n)
        return stages

    # pickling: the float stand-ins of the quantized weights travel as shapes
    def __getstate__(self):
        d = super().__getstate__()
        d["_ops"] = [(op[0], ("__shape__", op[1].shape), *op[2:]) if i in self._qlinear
                     and _is_stub(op[1]) else op for i, op in enumerate(d["_ops"])]
        return d

    def __setstate__(self, d):
        ops = d["_ops"]
        d["_ops"] = [(op[0], _zero_view(op[1][1]), *op[2:]) if isinstance(op[1], tuple)
                     and op[1][:1] == ("__shape__",) else op for op in ops]
        super().__setstate__(d)

    def describe(self) -> str:
        """One line per stage: what it runs and in which precision."""
        head = (f"Predictor(weights={self.weights!r}, activations float32): "
                f"{len(self.stages)} stages, {self.in_features} -> {self.out_features}")
        lines = [head]
        for i, name in enumerate(self.stages):
            ql = self._qlinear.get(i)
            if ql is not None and ql.weights == "int8":
                what = (f"int8 weights per output channel ({ql.nbytes} bytes packed), "
                        "activations quantized per row (7-bit, zero point), int32 "
                        "accumulation")
            elif ql is not None:
                what = (f"bf16 weights ({ql.nbytes} bytes packed), float32 activations and "
                        "accumulation")
            elif name.startswith("module "):
                what = "float32: a custom module's own forward (not quantized)"
            else:
                what = "float32 (no weights to quantize)"
            lines.append(f"  {i}: {name}: {what}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Predictor(weights={self.weights!r}, dtype={self.dtype}, stages={self.stages})"


def _f32_op(op):
    """A typed op with float32 arrays (the predictor's precision), for saving."""
    if type(op) is AffineOp:
        return AffineOp(np.asarray(op.scale, np.float32), np.asarray(op.shift, np.float32))
    if type(op) is LayerNormOp:
        return op._replace(
            weight=None if op.weight is None else np.asarray(op.weight, np.float32),
            bias=None if op.bias is None else np.asarray(op.bias, np.float32))
    return op


def _zero_view(shape) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


def _is_stub(a) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == 2 and a.strides == (0, 0)


def _stub(op: tuple, shape) -> tuple:
    """The float stage tuple with its weight replaced by a zero-byte view of the same shape:
    the float copy is not kept (the quantized stage replaces the float one in every plan)."""
    if len(op) > 1 and isinstance(op[1], np.ndarray) and op[1].shape == tuple(shape):
        return (op[0], _zero_view(shape), *op[2:])
    return op


def compile_weights(model, dtype, weights) -> Predictor:
    """``fastreg.inference.compile(model, dtype, weights)`` for an explicit ``weights``."""
    check_weights(weights)
    if dtype is not None and np.dtype(dtype) != _F32:
        raise ValueError(f"weights={weights!r} computes in float32: dtype must be float32 or "
                         f"None, got {np.dtype(dtype)}")
    if weights == "float32":
        return Predictor(model, dtype=np.float32)
    return QuantizedPredictor(model, weights)


# ---------------------------------------------------------------------------------------------
# save / load (called by fastreg.io.model_file)
# ---------------------------------------------------------------------------------------------

_ACT_LAYERS = {_codes.ACT_RELU: "ReLU", _codes.ACT_LEAKY_RELU: "LeakyReLU",
               _codes.ACT_SIGMOID: "Sigmoid", _codes.ACT_TANH: "Tanh"}


def _activation_layer(code: int, slope: float):
    from . import nn
    cls = getattr(nn, _ACT_LAYERS[code])
    return cls(slope) if code == _codes.ACT_LEAKY_RELU else cls()


def _equivalent_model(pred: QuantizedPredictor):
    """(float32 Sequential whose compiled stages are ``pred``'s, {linear name: its weights}).

    The Linear weights are left at zeros (the quantized tensors replace them in the file)."""
    from . import _random, nn
    layers: list = []
    quantized: dict = {}
    state = _random.default_generator.get_state()      # constructors draw initial weights
    try:
        for i, op in enumerate(pred._folded):
            kind = type(op)
            if kind is QuantizedLinear:
                lin = nn.Linear(op.in_features, op.out_features, dtype=np.float32)
                lin.weight.data[...] = 0.0
                lin.bias.data[...] = op.bias
                quantized[str(len(layers))] = op
                layers.append(lin)
                if op.activation != _codes.ACT_IDENTITY:
                    layers.append(_activation_layer(op.activation, op.slope))
            elif kind is AffineOp:
                C = op.scale.shape[0]
                bn = nn.BatchNorm1d(C, eps=_BN_EPS, dtype=np.float32)
                bn.weight.data[...] = op.scale
                bn.bias.data[...] = op.shift
                bn.running_mean[...] = 0.0
                bn.running_var[...] = 1.0 - _BN_EPS
                layers.append(bn)
            elif kind is ScaleOp:
                p = 1.0 - float(op.factor)
                if not 0.0 <= p <= 1.0 or np.float32(1.0 - p) != np.float32(op.factor):
                    raise ValueError(f"stage {i}: a constant scale {op.factor!r} cannot be "
                                     "stored as a Dropout")
                layers.append(nn.Dropout(p, mode="classic"))
            elif kind is ActivationOp:
                if op.code != _codes.ACT_IDENTITY:
                    layers.append(_activation_layer(op.code, op.slope))
            elif kind is LayerNormOp:
                shape = tuple(op.shape) or op.features
                ln = nn.LayerNorm(shape, eps=op.eps, elementwise_affine=op.weight is not None,
                                  bias=op.bias is not None, dtype=np.float32)
                if op.weight is not None:
                    ln.weight.data[...] = op.weight.reshape(ln.weight.data.shape)
                if op.bias is not None:
                    ln.bias.data[...] = op.bias.reshape(ln.bias.data.shape)
                layers.append(ln)
            elif kind is FlattenOp:
                layers.append(nn.Flatten())
            elif kind is ForwardOp:
                raise TypeError(f"cannot save this predictor: stage {i} runs a custom module "
                                f"({type(op.module).__name__}), whose code a model file never "
                                "holds; save the model itself (fr.save(model, path)) and "
                                "compile it after loading")
            else:
                raise TypeError(f"cannot save a predictor stage {op!r}")
    finally:
        _random.default_generator.set_state(state)
    seq = nn.Sequential(*layers)
    seq.eval()
    return seq, quantized


def save_predictor(pred, path, metadata: dict | None = None) -> None:
    """``fr.save(predictor, path)`` for a compiled quantized predictor (atomic, see
    :func:`fastreg.io.save`)."""
    import json

    from .io.atomic import atomic_write
    from .io.container import fastreg_version, write_container
    from .io.model_file import MODEL_FORMAT, class_name
    from .io.tree import architecture
    if not isinstance(pred, QuantizedPredictor):
        raise TypeError("fr.save takes a fastreg.nn.Module or a predictor compiled with "
                        "weights='int8' or 'bf16'; save a float model itself "
                        "(fr.save(model, path)) and compile it after loading")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    seq, quantized = _equivalent_model(pred)
    arch = architecture(seq)
    state: OrderedDict = OrderedDict()
    for k, v in seq.state_dict().items():
        name, _, leaf = k.rpartition(".")
        if name in quantized and leaf == "weight":
            for t, arr in quantized[name].tensors().items():
                state[f"{name}.{t}"] = arr
        else:
            state[k] = v
    header = {"format": MODEL_FORMAT, "format_version": PREDICTOR_FORMAT_VERSION,
              "fastreg_version": fastreg_version(), "class": class_name(pred),
              "architecture": arch,
              "quantized": {"version": QUANTIZED_SECTION_VERSION, "weights": pred.weights,
                            "linears": list(quantized)},
              "tensors": {k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.name}
                          for k, v in state.items()}}
    meta = metadata if metadata is not None else getattr(pred, "metadata", None)
    if meta:
        header["metadata"] = json.loads(json.dumps(meta))
    atomic_write(path, lambda f: write_container(f, header, state))


def read_predictor(c, expected: dict) -> QuantizedPredictor:
    """The predictor of an opened version-2 model file ``c`` whose architecture's tensors are
    ``expected`` (from :func:`fastreg.io.tree.check_tree`); every check raises ModelFileError."""
    from .io.container import ModelFileError
    from .io.model_file import _read_tensors, _tensor_table
    from .io.tree import build
    p = c.path
    sec = c.header.get("quantized")
    if not isinstance(sec, dict):
        raise ModelFileError(f"{p}: format version {PREDICTOR_FORMAT_VERSION} without a "
                             "'quantized' section")
    if sec.get("version") != QUANTIZED_SECTION_VERSION or type(sec.get("version")) is not int:
        raise ModelFileError(f"{p}: quantized section version {str(sec.get('version'))[:40]} "
                             f"is not supported (this fastreg reads "
                             f"{QUANTIZED_SECTION_VERSION}); upgrade fastreg")
    weights = sec.get("weights")
    if weights not in ("int8", "bf16"):
        raise ModelFileError(f"{p}: quantized weights {str(weights)[:40]!r} is not 'int8' or "
                             "'bf16'")
    arch = c.header.get("architecture")
    linears = sec.get("linears")
    children = arch.get("children") if isinstance(arch, dict) else None
    if arch.get("type") != "Sequential" or not isinstance(children, list) or not all(
            isinstance(ch, list) and len(ch) == 2 and isinstance(ch[1], dict)
            for ch in children):
        raise ModelFileError(f"{p}: a quantized predictor's architecture must be a Sequential")
    names = [ch[0] for ch in children if ch[1].get("type") == "Linear"]
    if not isinstance(linears, list) or linears != names:
        raise ModelFileError(f"{p}: the quantized Linears {str(linears)[:200]} are not the "
                             f"architecture's Linear layers {names[:50]}")
    want: OrderedDict = OrderedDict()
    zeros = {}
    for k, (shape, dt) in expected.items():
        name, _, leaf = k.rpartition(".")
        if name in names and leaf == "weight":
            M, K = shape
            zeros[k] = (M, K)
            if weights == "int8":
                want[k] = (tuple(shape), np.dtype(np.int8))
                want[f"{name}.weight_scale"] = ((M,), np.dtype(np.float32))
            else:
                want[k] = (tuple(shape), np.dtype(np.uint16))
        else:
            want[k] = (tuple(shape), np.dtype(dt))
    table = _tensor_table(c)
    if list(table) != list(want) or any(table[k] != v for k, v in want.items()):
        raise ModelFileError(f"{p}: the tensor table does not match the quantized "
                             f"architecture (expected {list(want)[:20]})")
    arrays = _read_tensors(c, table, "architecture")
    prepared = []
    for name in names:
        w = arrays.pop(f"{name}.weight")
        if weights == "int8":
            s = arrays.pop(f"{name}.weight_scale")
            if w.size and int(w.min()) < -127:
                raise ModelFileError(f"{p}: {name}.weight holds -128 (int8 weights are in "
                                     "[-127, 127])")
            if not (np.isfinite(s).all() and (s > 0).all()):
                raise ModelFileError(f"{p}: {name}.weight_scale must be finite and positive")
            if w.shape[1] > _q.MAX_K_INT8:
                raise ModelFileError(f"{p}: {name} has {w.shape[1]} input features, beyond "
                                     f"the int8 limit {_q.MAX_K_INT8}")
            prepared.append({"q": w, "scale": s})
        else:
            prepared.append({"bits": w})
    for k, shape in zeros.items():
        arrays[k] = np.zeros(shape, np.float32)
    model = build(arch, p)
    try:
        model.load_state_dict(arrays, strict=True)
        from .inference import check_chain
        check_chain(model)
        model.eval()
        return QuantizedPredictor(model, weights, _prepared=prepared)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{p}: the quantized predictor is inconsistent: {exc}") from None

