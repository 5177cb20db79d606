"""Embedded inference: ``compile(model)`` turns an eval-mode model into a lean predictor, and
``load(path)`` builds the same predictor straight from a model file (no modules built, no
``fastreg.nn`` or numba import: the layers' file descriptions in :mod:`fastreg.io.ops_file`).

Every layer folds itself (its ``inference_ops()``, declared next to its ``forward``; see
:mod:`fastreg._infer_spec`, re-exported as ``fastreg.nn._spec``) into typed ops -- ``LinearOp``, ``AffineOp``, ``ScaleOp``,
``ActivationOp``, ``LayerNormOp``, ``FlattenOp`` -- that this module folds further and runs. A
module without a description (a custom Module, a subclass of a layer) becomes a ``ForwardOp``:
its own ``forward``, run as it is (correct, not fused).

What compiling does (all in float64, then cast once to the model's dtype):

* eval-mode ``BatchNorm1d`` (running statistics) is an affine map ``y = s*x + t`` with
  ``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``; it is folded into
  the preceding Linear (``W' = diag(s) W``, ``b' = s*b + t``) or, when an activation sits in
  between, into the following one (``W' = W diag(s)``, ``b' = b + W t``);
* ``Dropout`` disappears (inverted form) or becomes a constant ``(1-p)`` scale that is folded the
  same way (classic form);
* an activation right after a Linear is fused into the GEMM epilogue
  (``linear_forward(..., activation=...)``);
* each run of consecutive Linear stages becomes one ``LinearChain`` (Cython backend,
  ``fastreg/_kernels/matmul/cy.pyx``): ``h_{l+1} = act_l(h_l W_l^T + b_l)`` for the whole run in
  one C call, every ``W_l`` packed once here into the GEMM's panel layout (no per-call packing),
  the intermediate ``h_l`` in per-thread C scratch. When the whole model is one such chain, a call
  whose input is exactly right (an aligned C-contiguous ndarray of the model's dtype, (N, K) or
  (K,)) is checked and run by the chain's C fast path (one output allocation, no Python per
  layer); any other input takes the checked path below (cast, or a clear error);
* other stages keep buffers preallocated per batch size (a few sizes are cached); each call
  validates only its input, and the stages call the backend kernels resolved once through
  ``_dispatch.kernel`` (GEMM, activation) or the families' trusted ``run_*`` entry points.

The predictor never imports numba (it names the "cython" backend explicitly), so an inference
script ``m = fastreg.load(path); m.predict(x)`` stays light. Shapes: N rows, K input features,
M output features of each stage.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from ._infer_spec import (
    OPS,
    ActivationOp,
    AffineOp,
    FlattenOp,
    ForwardOp,
    LayerNormOp,
    LinearOp,
    ScaleOp,
    fold,
)
from ._kernels.common import codes as _codes

__all__ = ["Predictor", "check_chain", "compile", "load", "set_split_small_batches"]

#: Batch sizes whose buffers are kept (oldest evicted first), bounding the memory held.
MAX_CACHED_BATCH_SIZES = 8
_BACKEND = "cython"


#: Predictor attribute -> the (family, kernel) it runs, resolved on first use.
_KERNELS = {"_linear": ("matmul", "linear_forward"),
            "_act": ("elementwise", "activation_forward")}


def _check_linear(W: np.ndarray, b: np.ndarray, activation, slope) -> None:
    """What the GEMM and chain kernels rely on, checked once at build time."""
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise ValueError(f"Linear stage: weight {W.shape} and bias {b.shape} do not match "
                         "((M, K) and (M,))")
    if activation not in _codes.ACTIVATIONS.values():
        raise ValueError(f"Linear stage: unknown activation code {activation!r}")
    if not np.isfinite(slope):
        raise ValueError(f"Linear stage: slope must be finite, got {slope!r}")


def _leaves(model) -> list:
    """The modules in execution order, nested Sequentials flattened."""
    from .nn import Sequential  # (a model exists: fastreg.nn is imported already)
    if isinstance(model, Sequential):
        out = []
        for m in model:
            out.extend(_leaves(m))
        return out
    return [model]


def _ops(model) -> list:
    """The float64 typed ops of ``model``'s leaves, in order, from each layer's own fold
    (``inference_ops``; unregistered modules: :class:`ForwardOp`, their own forward)."""
    ops = []
    for m in _leaves(model):
        ops.extend(fold(m))
    return ops


def check_chain(model) -> None:
    """Raise ``ValueError`` unless the widths of ``model``'s layers chain: each Linear's input
    width is the previous stage's output width, each BatchNorm1d / LayerNorm has as many
    features as it receives (stages after a custom module are not checked: its width is
    unknown until it runs)."""
    _check_ops(_ops(model))


def _check_ops(ops: list) -> None:
    """:func:`check_chain` of a list of (unfolded) inference ops."""
    feat = None
    where = None
    for i, op in enumerate(ops):
        kind = type(op)
        if kind is LinearOp:
            k, m = op.weight.shape[1], op.weight.shape[0]
            name = "Linear"
        elif kind is AffineOp:
            k = m = np.shape(op.scale)[0]
            name = "BatchNorm1d"
        elif kind is LayerNormOp:
            k = m = op.features
            name = "LayerNorm"
        elif kind is ForwardOp:
            feat = None
            continue
        else:
            continue
        if feat is not None and k != feat:
            raise ValueError(f"stage {i} ({name}) expects {k} features but {where} gives "
                             f"{feat}")
        feat, where = m, f"stage {i} ({name})"


def _affine(op) -> tuple:
    """(s, t) of ``y = s*x + t`` for an AffineOp or a ScaleOp (t = 0)."""
    return (op.scale, op.shift) if type(op) is AffineOp else (op.factor, 0.0)


class _Scaled:
    """A Linear weight with its pending folds: ``base`` times each factor in turn (a (M, 1)
    column of row scales or a (1, K) row of column scales), in float64 -- what the eager products
    ``base * f1 * f2 ...`` give, computed by :meth:`materialize` block by block straight into
    the compute dtype (no (M, K) float64 temporaries: on a cold start each fresh megabyte costs
    more in page faults than the arithmetic)."""
    __slots__ = ("base", "factors")

    def __init__(self, base, factors: tuple):
        self.base, self.factors = base, factors

    @property
    def shape(self) -> tuple:
        return self.base.shape

    def times(self, factor) -> _Scaled:
        return _Scaled(self.base, (*self.factors, factor))

    def materialize(self, dtype, inplace: bool = False) -> np.ndarray:
        """The folded weight in ``dtype``; ``inplace``: ``base`` is private to the caller (a
        tensor just read from a file) and may hold the result when it is of ``dtype``."""
        base = self.base
        M, K = base.shape
        if len(self.factors) == 1:      # one ufunc call, float64 inside (the dd->d loop)
            out = base if (inplace and base.dtype == dtype and base.flags.c_contiguous
                           and base.flags.writeable) else np.empty((M, K), dtype)
            return np.multiply(base, self.factors[0], out=out, casting="unsafe")
        out = np.empty((M, K), dtype)
        rows = max(1, 32768 // max(K, 1))       # 256 KB float64 blocks
        block = np.empty((min(rows, M), K))
        for r0 in range(0, M, rows):
            r1 = min(M, r0 + rows)
            h = block[:r1 - r0]
            for i, f in enumerate(self.factors):
                f = f[r0:r1] if f.shape[0] == M and M > 1 else f
                np.multiply(base[r0:r1] if i == 0 else h, f, out=h)
            out[r0:r1] = h
        return out


def _weight(w, dtype, owned: bool = False) -> np.ndarray:
    """A LinearOp's weight (an array or a :class:`_Scaled`) as a C-contiguous ``dtype`` array
    (``owned``: the ops' arrays are private to the caller, see :meth:`_Scaled.materialize`)."""
    if type(w) is _Scaled:
        return w.materialize(dtype, inplace=owned)
    return np.ascontiguousarray(w, dtype=dtype)


def _scaled(w, factor, lazy: bool):
    """``w * factor`` in float64: now, or pending (``lazy``: see :class:`_Scaled`)."""
    factor = np.asarray(factor, dtype=np.float64)
    if not lazy:
        return w * factor
    return w.times(factor) if type(w) is _Scaled else _Scaled(w, (factor,))


def _fold(ops: list, lazy: bool = False) -> list:
    """Fold affine/scale ops into neighbouring Linears and activations into GEMM epilogues.

    ``lazy``: a folded weight is a :class:`_Scaled` (the predictor's build materializes it in
    its dtype: the same bits as casting the eager float64 product)."""
    out: list = []
    for op in ops:
        kind = type(op)
        prev = out[-1] if out else None
        fresh_linear = type(prev) is LinearOp and prev.activation == _codes.ACT_IDENTITY
        if kind in (AffineOp, ScaleOp) and fresh_linear:
            s, t = _affine(op)
            out[-1] = prev._replace(weight=_scaled(prev.weight, np.reshape(s, (-1, 1)), lazy),
                                   bias=prev.bias * s + t)                  # diag(s) W
        elif kind is ScaleOp and type(prev) is ScaleOp:
            out[-1] = ScaleOp(prev.factor * op.factor)
        elif kind is ActivationOp and fresh_linear:
            out[-1] = prev._replace(activation=op.code, slope=op.slope)
        elif kind is LinearOp and type(prev) in (AffineOp, ScaleOp):
            out.pop()
            s, t = _affine(prev)
            W = op.weight
            b = op.bias + W @ np.broadcast_to(np.asarray(t, dtype=np.float64), (W.shape[1],))
            out.append(op._replace(weight=_scaled(W, np.reshape(s, (1, -1)), lazy),
                                   bias=b))                                 # W diag(s)
        else:
            out.append(op)
    return out


class Predictor:
    """A compiled, inference-only view of a model (see :func:`compile`).

    Call it (or its ``predict``) with an (N, K) array, or a single sample of shape (K,); it
    returns a fresh (N, M) array (or (M,)), or writes into ``out``. A model whose first stage is
    a LayerNorm over several dimensions takes (N, *normalized_shape) (or one such sample); one
    that starts with a Flatten takes (N, ...). Thread-safe: the buffers
    reused across calls are per thread (each thread allocates its own on its first call with a
    batch size), and stages that run a custom module's own ``forward`` (which may reuse the
    module's buffers) are serialised by a lock.

    Attributes
    ----------
    dtype : numpy.dtype
        The model's dtype; inputs of another numeric dtype are cast (one copy).
    in_features : int or None
        K, when the model's first stage fixes a flat (N, K) input.
    in_shape : tuple or None
        The shape of one input sample when the first stage fixes it: ``(K,)``, or a multi-
        dimensional LayerNorm's ``normalized_shape``.
    out_features : int or None
        M of the last stage that fixes it.
    backend : str
        "cython", unless the Cython extensions are not built (then "numba").
    stages : list of str
        What runs, e.g. ``["linear+relu 784->512", ...]`` (for inspection and tests).
    """

    def __init__(self, model, dtype=None):
        params = list(model.parameters())
        dt = np.dtype(dtype) if dtype is not None else (
            params[0].data.dtype if params else np.dtype(np.float32))
        self._build(_ops(model), dt)

    @classmethod
    def _from_ops(cls, ops: list, dtype, owned: bool = False) -> Predictor:
        """A predictor of float64 inference ops (unfolded, as the layers give them) run in
        ``dtype`` (what :func:`load` builds from a model file, no module involved).
        ``owned``: nothing else holds the ops' arrays (fresh from the file): a folded weight
        may be written over its own unfolded one."""
        self = cls.__new__(cls)
        self._build(ops, np.dtype(dtype), owned)
        return self

    def _build(self, ops: list, dt: np.dtype, owned: bool = False) -> None:
        from ._config import FLOAT_DTYPES
        from ._kernels import runtime
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.dtype = dt
        # The kernels: LinearChain (Cython) for every run of Linear stages; the per-stage
        # kernels (_linear, _act: see __getattr__) are resolved when a plan first needs them.
        try:
            from ._kernels.matmul import cy as _  # noqa: F401
            self.backend = _BACKEND
            runtime.load_pool("cython", route_blas=False)     # serving never calls BLAS
        except ImportError:     # Cython extensions not built: numba (the other full backend)
            self.backend = "numba"
        self._ops = []
        self.stages = []
        feat = None
        self.in_shape = None
        # a stage before fixed the input's shape, or may change it (Flatten, a custom module):
        # later stages say nothing about what the predictor takes
        shaped = False
        self._flatten_first = False
        for op in _fold(ops, lazy=True):
            kind = type(op)
            if kind is LinearOp:
                W = _weight(op.weight, dt, owned)
                b = np.ascontiguousarray(op.bias, dtype=dt)
                if feat is not None and W.shape[1] != feat:
                    raise ValueError(f"stage {len(self.stages)}: Linear expects "
                                     f"{W.shape[1]} features, the previous stage gives {feat}")
                if not shaped:
                    self.in_shape, shaped = (W.shape[1],), True
                _check_linear(W, b, op.activation, op.slope)   # the kernels trust them
                self._ops.append(("linear", W, b, int(op.activation), float(op.slope)))
                name = {v: k for k, v in _codes.ACTIVATIONS.items()}[op.activation]
                self.stages.append(f"linear{'' if name == 'identity' else '+' + name} "
                                   f"{W.shape[1]}->{W.shape[0]}")
                feat = W.shape[0]
            elif kind is AffineOp:
                s = np.ascontiguousarray(op.scale, dtype=dt)
                t = np.ascontiguousarray(op.shift, dtype=dt)
                if feat is not None and s.shape[0] != feat:
                    raise ValueError(f"stage {len(self.stages)}: BatchNorm1d expects "
                                     f"{s.shape[0]} features, the previous stage gives {feat}")
                if not shaped:
                    self.in_shape, shaped = (s.shape[0],), True
                feat = s.shape[0]
                self._ops.append(("affine", s, t))
                self.stages.append(f"affine {feat}")
            elif kind is ScaleOp:
                self._ops.append(("scale", dt.type(op.factor)))
                self.stages.append(f"scale {op.factor:g}")
            elif kind is ActivationOp:
                self._ops.append(("act", int(op.code), float(op.slope)))
                self.stages.append(f"act {op.code}")
            elif kind is LayerNormOp:
                C = op.features
                multi = tuple(op.shape)     # (N, *shape) input: its shape is checked per call
                if feat is not None and not multi and C != feat:
                    raise ValueError(f"stage {len(self.stages)}: LayerNorm expects {C} "
                                     f"features, the previous stage gives {feat}")
                if not shaped:
                    self.in_shape, shaped = (multi or (C,)), True
                feat = None if multi else C
                g = None if op.weight is None else np.ascontiguousarray(op.weight, dtype=dt)
                b = None if op.bias is None else np.ascontiguousarray(op.bias, dtype=dt)
                self._ops.append(("layernorm", g, b, float(op.eps), C, multi))
                self.stages.append(f"layernorm {multi or C}")
            elif kind is FlattenOp:
                self._ops.append(("flatten",))
                self.stages.append("flatten")
                self._flatten_first = self._flatten_first or not shaped
                shaped = True       # (N, ...) -> (N, prod): a flat feat passes through
            elif kind is ForwardOp:
                self._ops.append(("module", op.module))
                self.stages.append(f"module {type(op.module).__name__}")
                feat = None
                shaped = True
            else:
                raise TypeError(f"compile: no stage for inference op {op!r} (known: "
                                f"{', '.join(t.__name__ for t in OPS)})")
        self.out_features = feat
        self.in_features = self.in_shape[0] if self.in_shape and len(self.in_shape) == 1 \
            else None
        self._sample_ndim = len(self.in_shape) if self.in_shape else 1
        # per-thread plans (buffers): concurrent calls never share an output buffer
        self._local = threading.local()
        self._module_lock = threading.Lock()
        self._build_chains()

    def _build_chains(self) -> None:
        """Group runs of consecutive linear stages into one :class:`LinearChain` each (weights
        packed once, the whole run one kernel call); ``_fast``: the chain's checked fast call
        when the whole model is one chain, else None. Needs the Cython extensions (else the
        stages run one GEMM each through ``_linear``)."""
        self._chains = {}       # index of a run's first op -> (end index, LinearChain)
        self._fast = None
        try:
            from ._kernels.matmul import cy as _cy
        except ImportError:
            return
        if self.backend != "cython":
            return
        ops, i = self._ops, 0
        while i < len(ops):
            if ops[i][0] != "linear":
                i += 1
                continue
            j = i
            while j < len(ops) and ops[j][0] == "linear":
                j += 1
            run = ops[i:j]
            self._chains[i] = (j, _cy.LinearChain([o[1] for o in run], [o[2] for o in run],
                                                  [o[3] for o in run], [o[4] for o in run]))
            i = j
        whole = self._chains.get(0)
        if whole is not None and whole[0] == len(ops) and self.in_features is not None:
            self._fast = whole[1].fast

    def __getattr__(self, name):
        # the per-stage kernels, resolved on first use: a model that is one LinearChain (the
        # serving case) never imports the dispatcher or the element-wise extension
        backend = self.__dict__.get("backend")
        if name in _KERNELS and backend is not None:
            from ._kernels import _dispatch
            fn = _dispatch.kernel(*_KERNELS[name], backend)
            setattr(self, name, fn)
            return fn
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- pickling: the folded weights travel; kernels, per-thread plans and the lock are rebuilt
    def __getstate__(self):
        d = dict(self.__dict__)
        for k in ("_local", "_module_lock", "_linear", "_act", "_chains", "_fast"):
            d.pop(k, None)
        return d

    def __setstate__(self, d):
        if "in_shape" not in d:         # pickled before in_shape existed
            k = d.get("in_features")
            d = {**d, "in_shape": None if k is None else (k,), "_sample_ndim": 1,
                 "_flatten_first": False}
        self.__dict__.update(d)
        if self.backend == _BACKEND:
            from ._kernels import runtime
            runtime.load_pool(_BACKEND, route_blas=False)
        self._local = threading.local()
        self._module_lock = threading.Lock()
        self._build_chains()

    def to_module(self):
        """An eval-mode ``fastreg.nn.Sequential`` whose compiled stages are this predictor's,
        exactly: Linear layers with the folded weights (+ their fused activation), a BatchNorm1d
        with ``eps=0``, ``running_mean=0``, ``running_var=1`` per unfused affine stage (it folds
        back to ``s = gamma``, ``t = beta`` bit for bit), a classic Dropout per constant scale,
        LayerNorm, Flatten. What ``fastreg.save(predictor, path)`` writes (an ordinary model
        file: :func:`load` rebuilds this predictor from it with no fold left to compute).

        Raises ``TypeError`` for a stage that runs a custom module (a file never holds code)
        or a constant scale no Dropout probability gives exactly."""
        from . import _random, nn
        dt = self.dtype
        acts = {_codes.ACT_RELU: nn.ReLU, _codes.ACT_SIGMOID: nn.Sigmoid,
                _codes.ACT_TANH: nn.Tanh}

        def activation(code, slope):
            if code == _codes.ACT_LEAKY_RELU:
                return [nn.LeakyReLU(slope)]
            return [] if code == _codes.ACT_IDENTITY else [acts[code]()]

        layers: list = []
        state = _random.default_generator.get_state()      # constructors draw initial weights
        try:
            for i, op in enumerate(self._ops):
                kind = op[0]
                if kind == "linear":
                    _, W, b, act, slope = op
                    lin = nn.Linear(W.shape[1], W.shape[0], dtype=dt)
                    lin.weight.data[...] = W
                    lin.bias.data[...] = b
                    layers += [lin, *activation(act, slope)]
                elif kind == "affine":
                    _, s, t = op
                    bn = nn.BatchNorm1d(s.shape[0], eps=0.0, dtype=dt)
                    bn.weight.data[...] = s
                    bn.bias.data[...] = t
                    layers.append(bn)           # running_mean 0, running_var 1: s, t exactly
                elif kind == "scale":
                    c = op[1]
                    p = 1.0 - float(c)
                    if not 0.0 <= p <= 1.0 or dt.type(1.0 - p) != c:
                        raise TypeError(f"cannot save this predictor: stage {i} scales by "
                                        f"{c!r}, which no Dropout probability gives exactly")
                    layers.append(nn.Dropout(p, mode="classic"))
                elif kind == "act":
                    layers += activation(op[1], op[2])
                elif kind == "layernorm":
                    _, g, b, eps, C, multi = op
                    ln = nn.LayerNorm(multi or C, eps=eps, elementwise_affine=g is not None,
                                      bias=b is not None, dtype=dt)
                    if g is not None:
                        ln.weight.data[...] = g.reshape(ln.weight.data.shape)
                    if b is not None:
                        ln.bias.data[...] = b.reshape(ln.bias.data.shape)
                    layers.append(ln)
                elif kind == "flatten":
                    layers.append(nn.Flatten())
                else:
                    raise TypeError(f"cannot save this predictor: stage {i} runs a custom "
                                    f"module ({type(op[1]).__name__}), whose code a model "
                                    "file never holds; save the model itself "
                                    "(fr.save(model, path))")
        finally:
            _random.default_generator.set_state(state)
        return nn.Sequential(*layers).eval()

    @property
    def _plans(self) -> OrderedDict:
        """This thread's plans, by batch size (oldest evicted first)."""
        try:
            return self._local.plans
        except AttributeError:
            plans = self._local.plans = OrderedDict()
            return plans

    # -- per batch size --------------------------------------------------------------------
    def _plan(self, n: int) -> list:
        """Stage closures ``h -> out`` with their output buffers allocated for ``n`` rows."""
        dt = self.dtype
        backend = self.backend
        stages = []
        feat = self.in_features
        chains = self._chains
        skip_to = 0
        for i, op in enumerate(self._ops):
            if i < skip_to:
                continue
            kind = op[0]
            if i in chains:             # a run of linear stages: one chain call
                skip_to, chain = chains[i]
                K, M = chain.in_features, chain.out_features
                out = np.empty((n, M), dt)
                if feat == K:

                    def f(h, run=chain.run, out=out):
                        return run(h, out)
                else:                   # after an opaque stage: check before the kernel

                    def f(h, run=chain.run, out=out, K=K):
                        if h.shape != (n, K) or h.dtype != dt or not h.flags.c_contiguous:
                            raise ValueError(f"Linear stage: expected a ({n}, {K}) {dt} input "
                                             f"from the previous stage, got {h.shape} "
                                             f"{h.dtype}")
                        return run(h, out)
                feat = M
            elif kind == "linear":
                _, W, b, act, slope = op
                out = np.empty((n, W.shape[0]), dt)
                if feat == W.shape[1]:      # h is the previous stage's (n, K) output

                    def f(h, fn=self._linear, W=W, b=b, out=out, act=act, slope=slope):
                        fn(h, W, b, out, act, slope)
                        return out
                else:                       # after an opaque stage: check before the kernel

                    def f(h, fn=self._linear, W=W, b=b, out=out, act=act, slope=slope):
                        if h.shape != (n, W.shape[1]) or h.dtype != dt:
                            raise ValueError(f"Linear stage: expected a ({n}, {W.shape[1]}) "
                                             f"{dt} input from the previous stage, got "
                                             f"{h.shape} {h.dtype}")
                        fn(h, W, b, out, act, slope)
                        return out
                feat = W.shape[0]
            elif kind == "affine":
                _, s, t = op
                out = np.empty((n, s.shape[0]), dt)

                def f(h, s=s, t=t, out=out):
                    np.multiply(h, s, out=out)
                    np.add(out, t, out=out)
                    return out
            elif kind == "scale" or kind == "act":
                f = self._elementwise_stage(op, n, feat)
            elif kind == "layernorm":
                _, g, b, eps, C, multi = op
                out = np.empty((n, C), dt)
                mean = np.empty(n, dt)
                rstd = np.empty(n, dt)
                known = feat == C and not multi     # else check h (from an opaque stage)
                from ._kernels import norm as _norm
                want = (n, *multi) if multi else (n, C)

                def f(h, g=g, b=b, out=out, mean=mean, rstd=rstd, eps=eps, known=known,
                      want=want, multi=bool(multi)):
                    if not known:
                        if tuple(h.shape) != want or h.dtype != dt:
                            raise ValueError(f"LayerNorm stage: expected a {want} {dt} input "
                                             f"from the previous stage, got {h.shape} "
                                             f"{h.dtype}")
                        h = np.ascontiguousarray(h).reshape(n, -1)
                    _norm.run_layernorm_forward(h, g, b, out, mean, rstd, eps, False, backend)
                    return out.reshape(want) if multi else out
                feat = None if multi else C
            elif kind == "flatten":
                def f(h):
                    return h.reshape(h.shape[0], -1)
                feat = None
            else:
                def f(h, m=op[1], lock=self._module_lock):
                    with lock:      # a module's forward may reuse the module's own buffers
                        return np.ascontiguousarray(m.forward(h), dtype=dt)
                feat = None
            stages.append(f)
        return stages

    def _elementwise_stage(self, op, n: int, feat):
        dt = self.dtype
        bufs: dict = {}

        def buffer(shape):
            b = bufs.get(shape)
            if b is None:
                b = bufs[shape] = np.empty(shape, dt)
            return b

        if op[0] == "scale":
            c = op[1]

            def f(h):
                out = buffer(h.shape)
                np.multiply(h, c, out=out)
                return out
            return f
        code, slope, fn = op[1], op[2], self._act

        def g(h):
            out = buffer(h.shape)
            fn(h.reshape(-1), out.reshape(-1), code, slope)
            return out
        return g

    # -- calls -------------------------------------------------------------------------------
    def _coerce(self, x) -> tuple[np.ndarray, bool]:
        """The slow path of input checking: ((N, *in_shape) array, was it one sample) or a
        clear error.

        Lists, tuples and torch tensors are arrays too: one of the sample's shape (1-D for a
        flat model) is a single sample."""
        if not isinstance(x, np.ndarray):
            if hasattr(x, "detach") and hasattr(x, "numpy"):      # a torch tensor
                x = x.detach().cpu().numpy()
            else:
                try:
                    x = np.asarray(x)
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"x must be an array, got {type(x).__name__}") from exc
        if x.dtype.kind not in "fiub":
            raise TypeError(f"x must be numeric, got dtype {x.dtype}")
        shape = self.in_shape
        single = x.ndim == self._sample_ndim
        if single:
            x = x.reshape(1, *x.shape)
        if shape is not None and len(shape) > 1:      # a multi-dimensional LayerNorm first
            if x.shape[1:] != shape:
                dims = ", ".join(map(str, shape))
                raise ValueError(f"x must have shape (N, {dims}) or ({dims}), got shape "
                                 f"{x.shape[1:] if single else x.shape}")
        elif x.ndim != 2 and not (self._flatten_first and x.ndim > 2):
            raise ValueError(f"x must have shape (N, {self.in_features or 'K'}) or "
                             f"({self.in_features or 'K'},), got shape {x.shape}")
        if self.in_features is not None and x.shape[1] != self.in_features:
            raise ValueError(f"x has {x.shape[1]} features (shape "
                             f"{x.shape[1:] if single else x.shape}), the model expects "
                             f"{self.in_features}")
        return np.ascontiguousarray(x, dtype=self.dtype), single

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predict: the model's eval-mode output for ``x``, (N, K) -> (N, M) or (K,) -> (M,)."""
        fast = self._fast
        if fast is not None:    # one C call for an exact input (see LinearChain.fast)
            y = fast(x, out)
            if y is not None:
                return y
        single = False
        if type(x) is np.ndarray and x.ndim == self._sample_ndim and (
                x.ndim == 1 or x.shape == self.in_shape):
            x = x.reshape(1, *x.shape)
            single = True
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous
                and x.shape[1:] == self.in_shape):
            x, one = self._coerce(x)
            single = single or one
        n = x.shape[0]
        try:
            plans = self._local.plans
        except AttributeError:
            plans = self._local.plans = OrderedDict()
        plan = plans.get(n)
        if plan is None:
            plan = plans[n] = self._plan(n)
            if len(plans) > MAX_CACHED_BATCH_SIZES:
                plans.popitem(last=False)
        h = x
        if n:
            for f in plan:
                h = f(h)
        else:
            h = np.empty((0, *((self.out_features,) if self.out_features else x.shape[1:])),
                         self.dtype)
        if single:
            h = h.reshape(h.shape[1:])
        if out is None:
            return h.copy()   # the buffers are reused by the next call
        if not isinstance(out, np.ndarray) or out.shape != h.shape or out.dtype != h.dtype:
            raise ValueError(f"out must be an ndarray of shape {h.shape} and dtype {h.dtype}")
        out[...] = h
        return out

    predict = __call__

    def __repr__(self) -> str:
        return f"Predictor(dtype={self.dtype}, stages={self.stages})"


def load(path, dtype=None, weights: str | None = None) -> Predictor:
    """Load a model file straight into a :class:`Predictor` -- the serving peer of ONNX
    Runtime's ``InferenceSession(path)``.

    For a file of built-in layers (what :func:`fastreg.save` writes for a Sequential of
    Linear, BatchNorm1d, LayerNorm, Dropout, activations, Identity, Flatten) the predictor is
    built from the file itself (:func:`fastreg.io.ops_file.read_ops`): no module is built, no
    weight randomly initialised, and neither ``fastreg.nn`` nor numba is imported; the same
    hardened checks as :func:`fastreg.load` run (a damaged or hostile file raises
    :class:`fastreg.ModelFileError` with the same message). It predicts bit-identically to
    ``compile(fastreg.load(path), dtype)``.

    Anything else is loaded the full way, transparently: files with layers that have no light
    description (Embedding; BatchNorm1d without running statistics; Flatten of other
    dimensions) become ``compile(fastreg.load(path), dtype, weights)``, and a file written by
    ``fastreg.save(predictor)`` loads as that saved predictor. A custom module's file cannot be
    loaded without its code: the error says to use
    ``fastreg.inference.compile(fastreg.load(path, model=instance))``.

    Parameters
    ----------
    path : str or os.PathLike
        A model file written by :func:`fastreg.save`.
    dtype : float32 or float64, optional
        Compute dtype; default the model's parameter dtype.
    weights : {"float32", "bf16", "int8"}, optional
        Quantize the Linear weights as :func:`compile` does (built through the model).

    Returns
    -------
    Predictor
        With ``.metadata``: the dict saved with the model ({} if none).
    """
    from .io import ops_file
    from .io.container import ModelFileError
    got = ops_file.read_ops(path) if weights is None else None
    if got is None:                  # the full path: modules, then compile
        from .io import model_file
        try:
            model = model_file.load(path)
        except ModelFileError as exc:
            if "custom module" in str(exc):
                raise ModelFileError(f"{exc}; then fastreg.inference.compile(fastreg.load("
                                     "path, model=instance))") from None
            raise
        if isinstance(model, Predictor):     # fastreg.save(predictor): as saved
            if dtype is not None and np.dtype(dtype) != model.dtype or weights is not None:
                raise ValueError(f"{os.fspath(path)} holds a compiled predictor "
                                 f"({model.dtype}); load it without dtype= and weights=")
            return model
        pred = compile(model, dtype=dtype, weights=weights)
        pred.metadata = model.metadata
        return pred
    ops, dt, metadata = got
    try:
        _check_ops(ops)
    except ValueError as exc:
        raise ModelFileError(f"{os.fspath(path)}: the architecture is inconsistent: "
                             f"{exc}") from None
    pred = Predictor._from_ops(ops, dt if dtype is None else dtype, owned=True)
    pred.metadata = metadata
    return pred


def compile(model, dtype=None, weights: str | None = None) -> Predictor:
    """Compile ``model`` into a fast inference :class:`Predictor` (eval-mode semantics).

    The predictor computes what ``model.eval()(x)`` computes -- BatchNorm1d with running
    statistics, Dropout off (or scaled by ``1-p`` in the classic form) -- with BatchNorm and
    constant scales folded into neighbouring Linear layers, activations fused into the GEMM
    epilogue, and buffers preallocated per batch size. Outputs equal the unfused eval model's
    within float rounding. The weights are copied (folded) at compile time: recompile after
    training further. The model's own mode is not changed.

    Parameters
    ----------
    model : fastreg.nn.Module
        A Sequential (possibly nested) of fastreg layers, or a single layer; other modules are
        run through their own ``forward``.
    dtype : float32 or float64, optional
        Compute dtype; defaults to the model's parameter dtype.
    weights : {"float32", "bf16", "int8"}, optional
        Store and run the Linear layers' weights in this precision (activations float32);
        default: the model's dtype, as above. ``"int8"``: per-channel int8 weights with
        activations quantized per call; ``"bf16"``: bfloat16 weights, float32 accumulation
        (see :mod:`fastreg._quant`; ``fr.save(predictor, path)`` stores the result).

    Returns
    -------
    Predictor
    """
    if weights is not None:     # quantized serving lives in fastreg._quant
        from ._quant import compile_weights
        return compile_weights(model, dtype, weights)
    return Predictor(model, dtype=dtype)


#: (float chain: FLOPs per row, int8 chain: multiply-adds per call) from which a batch <= 4 call
#: splits its layers across the threads: with set_split_small_batches(True) (the default) and
#: with False.
_SPLIT_ON = (2.5e5, 2.5e5)
_SPLIT_OFF = (4.0e6, 2.0e6)
_split = [True]


def set_split_small_batches(enabled: bool) -> bool:
    """Split batches of 1-4 rows across the threads (True, the default) or keep models of up to
    ~2M weights on one thread for them (False); returns the previous setting. Applies to every
    predictor, built or not; results are bitwise the same either way (each output is summed by
    one task, in one order).

    A small batch is a chain of GEMVs bound by reading the weights. Split, each layer's output
    columns are cut into tasks run by the calling thread and fastreg's small-batch pool
    (``_kernels/common/split_pool.h``), so each core streams part of the weights: on a quiet
    2-core machine the 784-512-256-10 MLP at batch 1 goes from 32 to 19 us (float32) and from
    14 to 8.5 us (int8). The caller claims tasks too and never waits for a worker that has not
    started, so when another process holds a core the call degrades to about the one-thread time
    instead of waiting a scheduler time slice at every layer (as an OpenMP barrier does). The
    split applies from 2.5e5 FLOPs per row (float) or multiply-adds per call (int8); ``False``
    raises these to 4e6 and 2e6. Turn it off where a core's worth of spinning worker (about
    50 us after each call, then it sleeps) is unwelcome.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    old = _split[0]
    flops, macs = _SPLIT_ON if enabled else _SPLIT_OFF
    from ._kernels.matmul import cy as _mcy
    _mcy.set_chain_parallel_min_flops(flops)
    try:
        from ._kernels.quant import cy as _qcy
    except ImportError:                 # pragma: no cover - built without the quant extension
        pass
    else:
        _qcy.set_chain_parallel_min_macs(macs)
    _split[0] = bool(enabled)
    return old
