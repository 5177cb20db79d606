"""The tape: automatic backward for Modules that define only ``forward``.

A Module subclass that does not override ``backward`` is *taped*. When its ``forward`` runs as
the outermost taped forward of a call, in training mode with gradients enabled, a :class:`Tape`
records what the forward does:

* **module calls** -- ``self.fc(h)`` of any Module that has its own ``backward`` (the built-in
  layers, ``Sequential``, a hand-written custom module) becomes one node; its ``backward`` is
  that module's. Taped children are transparent: their forwards record onto the same tape.
* **array operations** on :class:`Recorded` arrays (what module calls and operations return on
  the tape, and the forward's own float-array inputs): ``+ - * /`` with broadcasting, unary
  ``-``, ``@``, ``**`` by a scalar, ``numpy.exp/log/sqrt/square/abs/tanh/maximum/minimum``,
  ``numpy.concatenate`` / ``numpy.stack`` / :func:`fastreg.cat`, indexing ``x[:, a:b]`` (basic
  and integer-array), ``sum``/``mean``, ``reshape``, ``transpose``/``.T`` and the functional
  activations of :mod:`fastreg.nn.functional`; comparisons return plain boolean arrays.
* **parameters** read inside the forward (``self.alpha * h`` or ``self.alpha.data * h``) are
  leaves whose gradients accumulate into ``p.grad``.

Anything else applied to a Recorded array raises ``TypeError`` naming the operation and the
supported set -- including ``numpy.asarray(x)`` and in-place updates (``h += x``) -- so no
operation can silently drop out of the gradient. ``x.detach()`` is the explicit way out.

**One context per call.** A module called several times in one forward (weight tying,
``self.fc(self.act(self.fc(x)))``) keeps a separate saved context per call: its k-th call in a
forward writes into the k-th of its reused buffer sets (so the arrays an earlier call handed on
are not overwritten), and before the k-th call starts, the earlier call's saved state (the
module's and its descendants' caches) is copied into that earlier call's node and restored
before its backward runs. Modules called once per forward keep their single reused buffer set
and pay no copy.

Backward walks the nodes in reverse, sums the gradients of values used several times, calls
each module node's ``backward(g, input_grad=...)`` (``input_grad`` is False when no recorded
input of that call needs a gradient -- for a leading Linear that is a whole GEMM saved), and
returns dL/d(input) for the forward's array inputs (a tuple when there are several). The tape
is freed by its backward (a second ``backward`` without a new forward raises, as torch's
"backward through the graph a second time" does).

Eval mode and :func:`fastreg.no_grad` record nothing; a lightweight tape still gives repeated
calls of a module separate output buffers, so ``fc(x1) + fc(x2)`` is right in eval too.

Operations on Recorded arrays run in NumPy on the host; a taped model on CUDA can chain module
calls, but array operations on device arrays raise ``NotImplementedError``.
"""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["Recorded", "Tape", "cat", "enable_grad", "is_grad_enabled", "no_grad",
           "set_grad_enabled"]


class _State(threading.local):
    depth = 0          # nesting of Module.__call__ (0 = the caller's own call)
    tape = None        # the tape the current forward records onto (None: none, or suspended)
    grad_enabled = True


_local = _State()

#: Tapes recording right now, all threads, and the hooks told when that goes 0 <-> 1
#: (``Parameter`` swaps its ``data`` property, so reads outside any recording cost nothing).
_recording = [0]
_hooks = []
_count_lock = threading.Lock()


def recording(start: bool) -> None:
    """Count a recording tape in (``start``) or out; switch the hooks at 0 <-> 1."""
    with _count_lock:
        before = _recording[0]
        _recording[0] = before + (1 if start else -1)
        if (before == 0) != (_recording[0] == 0):
            for hook in _hooks:
                hook(_recording[0] > 0)

SUPPORTED = ("module calls, + - * / (broadcasting), unary -, @, ** scalar, numpy.exp, log, "
             "sqrt, square, abs, tanh, maximum, minimum, numpy.concatenate / numpy.stack / "
             "fastreg.cat, indexing x[...], sum, mean, reshape, transpose / .T, comparisons, "
             "fastreg.nn.functional.relu / leaky_relu / sigmoid / tanh / dropout, "
             "x.detach()")


def _unsupported(what: str) -> TypeError:
    return TypeError(
        f"{what} is not supported on an array recorded for automatic backward (inside the "
        f"training-mode forward of a Module without its own backward); supported: {SUPPORTED}. "
        "Use x.detach() for a value that should not carry a gradient, write a hand-written "
        "backward for the module, or run under fastreg.no_grad() / in eval mode")


# ---------------------------------------------------------------------------------------------
# gradient modes
# ---------------------------------------------------------------------------------------------

def is_grad_enabled() -> bool:
    """False inside :class:`no_grad` (this thread)."""
    return _local.grad_enabled


class set_grad_enabled:
    """Context manager (and decorator) setting gradient recording on or off, as torch's."""

    def __init__(self, mode: bool):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        self.mode = bool(mode)
        self._prev = []

    def __enter__(self):
        self._prev.append(_local.grad_enabled)
        _local.grad_enabled = self.mode
        return self

    def __exit__(self, *exc):
        _local.grad_enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with type(self)(self.mode) if type(self) is set_grad_enabled else type(self)():
                return fn(*args, **kwargs)
        return wrapped


class no_grad(set_grad_enabled):
    """``with fastreg.no_grad():`` -- no tape is recorded and modules keep no caches for backward
    (inference in training mode, e.g. Monte-Carlo dropout). Also a decorator."""

    def __init__(self):
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Re-enable recording inside :class:`no_grad`."""

    def __init__(self):
        super().__init__(True)


# ---------------------------------------------------------------------------------------------
# Recorded arrays
# ---------------------------------------------------------------------------------------------

def _host(r: Recorded, what: str) -> np.ndarray:
    d = r.data
    if type(d) is not np.ndarray:
        raise NotImplementedError(
            f"{what} on a device array: automatic backward runs array operations on the host; "
            "give the module a hand-written backward or run it on the CPU")
    return d


class Recorded:
    """An array produced inside a recorded forward: ``data`` (the ndarray) plus its place on
    the tape. Supports the operations listed in :mod:`fastreg.nn._tape`; anything else raises.

    ``shape``, ``dtype``, ``ndim``, ``size`` and ``len()`` read through; ``detach()`` returns the
    plain array (no gradient flows through it).
    """

    __slots__ = ("data", "slot", "tape")
    __array_priority__ = 1000.0

    def __init__(self, data, tape: Tape, slot: int):
        self.data = data
        self.tape = tape
        self.slot = slot

    # -- read-through attributes ----------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    def detach(self) -> np.ndarray:
        """The plain array: a constant for whatever is computed from it."""
        return self.data

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self):
        return f"Recorded({self.data!r})"

    def __float__(self):
        return float(self.data)

    def item(self):
        return self.data.item()

    # -- conversions that would silently detach -------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise _unsupported("conversion to a NumPy array (numpy.asarray / numpy.array)")

    def __iter__(self):
        raise _unsupported("iteration")

    def __bool__(self):
        raise _unsupported("truth value (bool(x), if x:)")

    def __setitem__(self, key, value):
        raise _unsupported("item assignment (x[...] = v)")

    def _inplace(self, other):
        raise _unsupported("an in-place operation (+=, -=, *=, /=); write h = h + x")

    __iadd__ = __isub__ = __imul__ = __itruediv__ = __ipow__ = __imatmul__ = _inplace

    # -- operators --------------------------------------------------------------------------------
    def __add__(self, o):
        return self.tape.binary("add", self, o)

    def __radd__(self, o):
        return self.tape.binary("add", o, self)

    def __sub__(self, o):
        return self.tape.binary("subtract", self, o)

    def __rsub__(self, o):
        return self.tape.binary("subtract", o, self)

    def __mul__(self, o):
        return self.tape.binary("multiply", self, o)

    def __rmul__(self, o):
        return self.tape.binary("multiply", o, self)

    def __truediv__(self, o):
        return self.tape.binary("divide", self, o)

    def __rtruediv__(self, o):
        return self.tape.binary("divide", o, self)

    def __matmul__(self, o):
        return self.tape.matmul(self, o)

    def __rmatmul__(self, o):
        return self.tape.matmul(o, self)

    def __pow__(self, o):
        return self.tape.power(self, o)

    def __neg__(self):
        return self.tape.unary("negative", self)

    def __pos__(self):
        return self

    def __getitem__(self, idx):
        return self.tape.getitem(self, idx)

    def __lt__(self, o):
        return _compare(np.less, self, o)

    def __le__(self, o):
        return _compare(np.less_equal, self, o)

    def __gt__(self, o):
        return _compare(np.greater, self, o)

    def __ge__(self, o):
        return _compare(np.greater_equal, self, o)

    def __eq__(self, o):
        return _compare(np.equal, self, o)

    def __ne__(self, o):
        return _compare(np.not_equal, self, o)

    __hash__ = None

    # -- methods ----------------------------------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        if out is not None or dtype is not None:
            raise _unsupported("sum with out= or dtype=")
        return self.tape.reduce(self, axis, keepdims, mean=False)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        if out is not None or dtype is not None:
            raise _unsupported("mean with out= or dtype=")
        return self.tape.reduce(self, axis, keepdims, mean=True)

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise _unsupported(f"reshape(order={order!r})")
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self.tape.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return self.tape.transpose(self, axes or None)

    @property
    def T(self):
        return self.tape.transpose(self, None)

    def astype(self, dtype, copy=True):
        dt = np.dtype(dtype)
        if dt.kind != "f":                      # integers/bools carry no gradient
            return self.data.astype(dt, copy=copy)
        if dt == self.data.dtype:
            return self
        return self.tape.cast(self, dt)

    def __getattr__(self, name):
        if name.startswith("__"):               # protocol probes (__array_interface__ ...)
            raise AttributeError(name)
        if hasattr(np.ndarray, name):
            raise _unsupported(f"ndarray.{name}")
        raise AttributeError(f"'Recorded' object has no attribute {name!r}")

    # -- NumPy protocols --------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = getattr(ufunc, "__name__", str(ufunc))
        if method != "__call__":
            if method == "reduce" and ufunc is np.add and not kwargs.get("out") and \
                    len(inputs) == 1 and kwargs.get("dtype") is None:
                return self.tape.reduce(inputs[0], kwargs.get("axis", 0),
                                        kwargs.get("keepdims", False), mean=False)
            raise _unsupported(f"numpy.{name}.{method}")
        if kwargs.get("out") is not None:
            raise _unsupported(f"numpy.{name}(..., out=...)")
        if set(kwargs) - {"out"}:
            raise _unsupported(f"numpy.{name} with keyword arguments {sorted(kwargs)}")
        if ufunc in _COMPARISONS:
            return _compare(ufunc, *inputs)
        tape = self.tape
        if name in _BINARY and len(inputs) == 2:
            return tape.binary(name if name != "true_divide" else "divide", *inputs)
        if name in _UNARY and len(inputs) == 1:
            return tape.unary(name, inputs[0])
        if ufunc is np.matmul:
            return tape.matmul(*inputs)
        if ufunc is np.power and len(inputs) == 2 and inputs[0] is self:
            return tape.power(*inputs)
        raise _unsupported(f"numpy.{name}")

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        if impl is None:
            raise _unsupported(f"numpy.{getattr(func, '__name__', func)}")
        return impl(*args, **kwargs)


_COMPARISONS = frozenset([np.less, np.less_equal, np.greater, np.greater_equal, np.equal,
                          np.not_equal, np.isnan, np.isfinite, np.isinf, np.signbit])
_BINARY = frozenset(["add", "subtract", "multiply", "divide", "true_divide", "maximum",
                     "minimum"])
_UNARY = frozenset(["negative", "positive", "exp", "log", "sqrt", "square", "absolute", "tanh"])


def _plain(a):
    """A Recorded's data, a Parameter's data (plain: only reached outside recording), else a."""
    if type(a) is Recorded:
        return a.data
    from .parameter import Parameter
    if isinstance(a, Parameter):
        return a._data
    return a


def _compare(ufunc, *inputs):
    return ufunc(*[_plain(a) for a in inputs])


def _unbroadcast(g: np.ndarray, shape: tuple, dtype) -> np.ndarray:
    """Sum ``g`` over the axes broadcasting added to an operand of ``shape``."""
    if g.shape != shape:
        lead = g.ndim - len(shape)
        if lead:
            g = g.sum(axis=tuple(range(lead)))
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
        if axes:
            g = g.sum(axis=axes, keepdims=True)
        g = g.reshape(shape)
    return g.astype(dtype, copy=False)


def _norm_axis(axis, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _is_basic_index(idx) -> bool:
    parts = idx if isinstance(idx, tuple) else (idx,)
    for p in parts:
        if p is None or p is Ellipsis or isinstance(p, slice):
            continue
        if isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)):
            continue
        return False
    return True


# ---------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------

class _OpNode:
    """An array operation: ``fn(g) -> grads`` for ``ins`` (slots, or None for constants)."""
    __slots__ = ("fn", "ins", "out")

    def __init__(self, fn, ins, out):
        self.fn, self.ins, self.out = fn, ins, out


class _ModuleNode:
    """A module call: the module, its positional inputs' slots (None: not recorded), its output
    slots and structure, and the saved states of its modules when a later call reused them."""
    __slots__ = ("ins", "module", "out_meta", "outs", "saved", "single")

    def __init__(self, module, ins):
        self.module = module
        self.ins = ins
        self.outs = []
        self.single = True
        self.saved = None
        self.out_meta = []

    def save_state(self, m) -> None:
        st = {k: v for k, v in m.__dict__.items() if k not in _SHARED}
        if self.saved is None:
            self.saved = []
        self.saved.append((m, st))


#: Module attributes that are not per-call state (registries, mode, thread marker).
_SHARED = frozenset(["_parameters", "_buffers", "_modules", "_non_persistent", "training",
                     "_buffer_sets", "_busy"])


_TAKES_INPUT_GRAD: dict = {}


def call_backward(m, g, input_grad: bool):
    """``m.backward(g, input_grad=...)``, or ``m.backward(g)`` for a hand-written backward
    whose signature has no ``input_grad`` (its input gradient is then always computed)."""
    cls = type(m)
    takes = _TAKES_INPUT_GRAD.get(cls)
    if takes is None:
        import inspect
        try:
            params = inspect.signature(m.backward).parameters
            takes = "input_grad" in params or any(
                p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            takes = False
        _TAKES_INPUT_GRAD[cls] = takes
    if takes:
        return m.backward(g, input_grad=input_grad)
    return m.backward(g)


# ---------------------------------------------------------------------------------------------
# the tape
# ---------------------------------------------------------------------------------------------

class Tape:
    """What one outermost taped forward did (see the module docstring).

    ``record=False`` (eval, no_grad): no nodes, only the per-call buffer sets of modules called
    several times.
    """

    def __init__(self, record: bool):
        self.record = record
        self.nodes = []
        self.needs = []            # per slot: does a gradient flow to it (fixed at backward)
        self.kinds = []            # per slot: 0 op/module output, 1 forward input, 2 parameter
        self.shapes = []           # per slot: (shape, dtype) for zero-filling missing grads
        self.params = {}           # id(Parameter) -> (Recorded, Parameter)
        self.uses = {}             # id(module) -> calls so far in this forward
        self.owner = {}            # id(module) -> the node of its latest call
        self.inputs = None         # forward inputs' structure: list of slot-or-None
        self.outputs = None        # output structure (see finish)
        self.thread = threading.get_ident()

    # -- slots ------------------------------------------------------------------------------------
    def new(self, data, kind: int = 0) -> Recorded:
        slot = len(self.kinds)
        self.kinds.append(kind)
        self.shapes.append((tuple(data.shape), data.dtype))
        return Recorded(data, self, slot)

    def wrap_inputs(self, args):
        out, slots = [], []
        for a in args:
            if _is_float_array(a):
                r = self.new(a, kind=1)
                out.append(r)
                slots.append(r.slot)
            else:
                out.append(a)
                slots.append(None)
        self.inputs = slots
        return tuple(out)

    def param(self, p):
        """The Recorded leaf for Parameter ``p`` (one per parameter per forward)."""
        entry = self.params.get(id(p))
        if entry is None:
            entry = (self.new(p._data, kind=2), p)
            self.params[id(p)] = entry
        return entry[0]

    def _operand(self, a):
        """(data, slot or None) of an operand: Recorded, Parameter, scalar or array constant."""
        if type(a) is Recorded:
            if a.tape is not self:
                raise RuntimeError("an array recorded by another forward pass was used in this "
                                   "one; keep recorded arrays inside the forward that made them")
            return _host(a, "an array operation"), a.slot
        from .parameter import Parameter
        if isinstance(a, Parameter):
            r = self.param(a)
            return _host(r, "an array operation"), r.slot
        if isinstance(a, (int, float, np.integer, np.floating)) and not isinstance(a, bool):
            return a, None
        if type(a) is np.ndarray or isinstance(a, np.ndarray):
            return a, None
        raise _unsupported(f"an operation with a {type(a).__name__}")

    def _emit(self, result: np.ndarray, fn, ins) -> Recorded:
        if not any(s is not None for s in ins):
            return result
        r = self.new(result)
        self.nodes.append(_OpNode(fn, ins, r.slot))
        return r

    # -- module calls -----------------------------------------------------------------------------
    def call(self, m, args, kwargs):
        """Run leaf module ``m`` (it has its own backward) on the plain arrays, as one node."""
        for v in kwargs.values():
            if type(v) is Recorded:
                raise _unsupported(f"a recorded array passed to {type(m).__name__} by keyword")
        node = _ModuleNode(m, []) if self.record else None
        plain = []
        for a in args:
            if type(a) is Recorded:
                if a.tape is not self:
                    self._operand(a)            # raises the other-forward error
                if node is not None:
                    node.ins.append(a.slot)
                plain.append(a.data)
            else:
                if node is not None:
                    node.ins.append(None)
                plain.append(a)
        self._enter(m, node)
        _local.tape = None                      # a leaf's own forward is not recorded
        try:
            out = m.forward(*plain, **kwargs)
        finally:
            _local.tape = self
        if node is None:
            return out
        self.nodes.append(node)
        if isinstance(out, tuple):
            node.single = False
            res = []
            for o in out:
                if _is_float_array(o):
                    r = self.new(o)
                    node.outs.append(r.slot)
                    res.append(r)
                else:
                    node.outs.append(None)
                    res.append(o)
            return tuple(res)
        if not _is_float_array(out):
            node.outs.append(None)
            return out
        r = self.new(out)
        node.outs.append(r.slot)
        return r

    def _enter(self, m, node) -> None:
        """Give each module ``m`` runs its call-count's buffer set; save the state an earlier
        call of the same module left, into that call's node (restored before its backward)."""
        uses, owner = self.uses, self.owner
        for d in m.modules():
            key = id(d)
            k = uses.get(key, 0)
            dd = d.__dict__
            if k and self.record:
                prev = owner.get(key)
                if prev is not None:
                    prev.save_state(d)          # before the swap: it holds the earlier set
            if k or "_buffer_sets" in dd:
                sets = dd.get("_buffer_sets")
                if sets is None:
                    sets = dd["_buffer_sets"] = [dd["_out_buffers"]]
                while len(sets) <= k:
                    sets.append({})
                dd["_out_buffers"] = sets[k]
            uses[key] = k + 1
            if node is not None:
                owner[key] = node

    # -- array operations -------------------------------------------------------------------------
    def binary(self, name: str, a, b):
        x, sa = self._operand(a)
        y, sb = self._operand(b)
        ufunc = getattr(np, name)
        z = ufunc(x, y)
        xs, xd = np.shape(x), np.result_type(x)
        ys, yd = np.shape(y), np.result_type(y)

        if name == "add":
            def fn(g):
                return (_unbroadcast(g, xs, xd) if sa is not None else None,
                        _unbroadcast(g, ys, yd) if sb is not None else None)
        elif name == "subtract":
            def fn(g):
                return (_unbroadcast(g, xs, xd) if sa is not None else None,
                        _unbroadcast(-g, ys, yd) if sb is not None else None)
        elif name == "multiply":
            def fn(g):
                return (_unbroadcast(g * y, xs, xd) if sa is not None else None,
                        _unbroadcast(g * x, ys, yd) if sb is not None else None)
        elif name == "divide":
            def fn(g):
                gx = g / y
                return (_unbroadcast(gx, xs, xd) if sa is not None else None,
                        _unbroadcast(-gx * z, ys, yd) if sb is not None else None)
        else:                                   # maximum / minimum: ties split, as torch
            def fn(g):
                first = (x > y) if name == "maximum" else (x < y)
                tie = x == y
                wx = first + 0.5 * tie
                wy = 1.0 - wx
                return (_unbroadcast(g * wx, xs, xd) if sa is not None else None,
                        _unbroadcast(g * wy, ys, yd) if sb is not None else None)
        return self._emit(z, fn, (sa, sb))

    def unary(self, name: str, a):
        x, s = self._operand(a)
        if name == "positive":
            return a
        z = getattr(np, name)(x)
        dt = np.result_type(x)
        if name == "negative":
            def fn(g):
                return (-g,)
        elif name == "exp":
            def fn(g):
                return ((g * z).astype(dt, copy=False),)
        elif name == "log":
            def fn(g):
                return ((g / x).astype(dt, copy=False),)
        elif name == "sqrt":
            def fn(g):
                return ((g / (2 * z)).astype(dt, copy=False),)
        elif name == "square":
            def fn(g):
                return ((2 * g * x).astype(dt, copy=False),)
        elif name == "absolute":
            def fn(g):
                return ((g * np.sign(x)).astype(dt, copy=False),)
        else:                                   # tanh
            def fn(g):
                return ((g * (1 - z * z)).astype(dt, copy=False),)
        return self._emit(z, fn, (s,))

    def power(self, a, p):
        x, s = self._operand(a)
        if type(p) is Recorded or not isinstance(p, (int, float, np.integer, np.floating)) \
                or isinstance(p, bool):
            raise _unsupported("** with a non-scalar exponent")
        z = np.power(x, p)
        dt = x.dtype

        def fn(g):
            return ((g * p * np.power(x, p - 1)).astype(dt, copy=False),)
        return self._emit(z, fn, (s,))

    def matmul(self, a, b):
        x, sa = self._operand(a)
        y, sb = self._operand(b)
        if np.ndim(x) not in (1, 2) or np.ndim(y) not in (1, 2):
            raise _unsupported("@ of arrays with more than 2 dimensions")
        z = np.matmul(x, y)
        x2 = x if x.ndim == 2 else x[None, :]
        y2 = y if y.ndim == 2 else y[:, None]

        def fn(g):
            g2 = g.reshape(x2.shape[0], y2.shape[1])
            gx = (g2 @ y2.T).reshape(x.shape) if sa is not None else None
            gy = (x2.T @ g2).reshape(y.shape) if sb is not None else None
            return gx, gy
        return self._emit(z, fn, (sa, sb))

    def getitem(self, a, idx):
        x, s = self._operand(a)
        parts = idx if isinstance(idx, tuple) else (idx,)
        for p in parts:
            if type(p) is Recorded:
                raise _unsupported("indexing with a recorded array")
        z = x[idx]
        basic = _is_basic_index(idx)
        shape, dt = x.shape, x.dtype

        def fn(g):
            gx = np.zeros(shape, dt)
            if basic:
                gx[idx] = g
            else:
                np.add.at(gx, idx, g)
            return (gx,)
        return self._emit(z, fn, (s,))

    def reduce(self, a, axis, keepdims: bool, mean: bool):
        x, s = self._operand(a)
        axes = _norm_axis(axis, x.ndim)
        z = x.mean(axis=axes, keepdims=keepdims) if mean else x.sum(axis=axes, keepdims=keepdims)
        shape, dt = x.shape, x.dtype
        count = 1
        for ax in axes:
            count *= shape[ax]

        def fn(g):
            g = np.asarray(g)
            if not keepdims:
                g = np.expand_dims(g, axes)
            if mean:
                g = g / count
            return (np.broadcast_to(g, shape).astype(dt),)
        return self._emit(np.asarray(z) if np.ndim(z) == 0 else z, fn, (s,))

    def reshape(self, a, shape):
        x, s = self._operand(a)
        z = x.reshape(shape)
        xs = x.shape

        def fn(g):
            return (g.reshape(xs),)
        return self._emit(z, fn, (s,))

    def transpose(self, a, axes):
        x, s = self._operand(a)
        z = np.transpose(x, axes)
        inv = None if axes is None else tuple(np.argsort(axes))

        def fn(g):
            return (np.transpose(g, inv),)
        return self._emit(z, fn, (s,))

    def cast(self, a, dt):
        x, s = self._operand(a)
        z = x.astype(dt)
        src = x.dtype

        def fn(g):
            return (g.astype(src),)
        return self._emit(z, fn, (s,))

    def concatenate(self, arrays, axis=0):
        items = [self._operand(a) for a in arrays]
        datas = [d if isinstance(d, np.ndarray) else np.asarray(d) for d, _ in items]
        z = np.concatenate(datas, axis=axis)
        ax = axis % z.ndim if axis is not None else None
        sizes = [d.shape[ax] if ax is not None else d.size for d in datas]
        bounds = np.cumsum([0] + sizes)
        dts = [d.dtype for d in datas]
        shapes = [d.shape for d in datas]

        def fn(g):
            out = []
            for i, (_, sl) in enumerate(items):
                if sl is None:
                    out.append(None)
                    continue
                if ax is None:
                    out.append(g[bounds[i]:bounds[i + 1]].reshape(shapes[i]).astype(dts[i]))
                else:
                    idx = [slice(None)] * g.ndim
                    idx[ax] = slice(bounds[i], bounds[i + 1])
                    out.append(g[tuple(idx)].astype(dts[i], copy=False))
            return tuple(out)
        return self._emit(z, fn, tuple(sl for _, sl in items))

    def stack(self, arrays, axis=0):
        items = [self._operand(a) for a in arrays]
        datas = [np.asarray(d) for d, _ in items]
        z = np.stack(datas, axis=axis)
        ax = axis % z.ndim
        dts = [d.dtype for d in datas]

        def fn(g):
            return tuple(None if sl is None else np.take(g, i, axis=ax).astype(dts[i])
                         for i, (_, sl) in enumerate(items))
        return self._emit(z, fn, tuple(sl for _, sl in items))

    def custom(self, a, result, fn):
        """A one-input operation with a given backward ``fn(g) -> (gx,)`` (functional ops)."""
        _x, s = self._operand(a)
        return self._emit(result, fn, (s,))

    # -- outputs and backward ---------------------------------------------------------------------
    def finish(self, out):
        """Record the forward's output structure; return it with plain arrays."""
        if type(out) is Recorded:
            self.outputs = ("single", out.slot, out.shape, out.dtype)
            return out.data
        if isinstance(out, (tuple, list)):
            slots, plain = [], []
            for o in out:
                if type(o) is Recorded:
                    slots.append((o.slot, o.shape, o.dtype))
                    plain.append(o.data)
                else:
                    slots.append(None)
                    plain.append(o)
            self.outputs = ("tuple", slots)
            return type(out)(plain)
        if isinstance(out, dict):
            raise TypeError("a forward recorded for automatic backward must return an array or "
                            "a tuple of arrays, got a dict")
        self.outputs = ("none",)
        return out

    def backward(self, grad_output, input_grad: bool):
        """Back-propagate ``grad_output`` (dL/d output: an array, or a tuple matching a tuple
        output) through the recorded nodes; return dL/d(input) per recorded forward input."""
        if threading.get_ident() != self.thread:
            raise RuntimeError("backward() ran on a different thread than its forward(); a "
                               "model must be trained from one thread at a time")
        grads = [None] * len(self.kinds)
        kind = self.outputs[0]
        if kind == "none":
            raise RuntimeError("backward(): the forward's output does not depend on any "
                               "recorded input or parameter (nothing to differentiate)")
        seeds = [(self.outputs[1], self.outputs[2], self.outputs[3])] if kind == "single" \
            else self.outputs[1]
        gouts = (grad_output,) if kind == "single" else grad_output
        if kind == "tuple" and (not isinstance(gouts, (tuple, list))
                                or len(gouts) != len(seeds)):
            raise ValueError(f"backward(): the forward returned {len(seeds)} outputs; pass "
                             f"a tuple of {len(seeds)} gradients (None for unused ones)")
        for seed, g in zip(seeds, gouts):
            if seed is None or g is None:
                continue
            slot, shape, dt = seed
            if type(g) is Recorded:
                g = g.data
            if not hasattr(g, "shape"):
                raise TypeError(f"grad_output must be an array, got {type(g).__name__}")
            if tuple(g.shape) != tuple(shape):
                raise ValueError(f"grad_output has shape {tuple(g.shape)}, the forward's output "
                                 f"had shape {tuple(shape)}")
            if g.dtype != dt:
                if type(g) is not np.ndarray:
                    raise TypeError(f"grad_output has dtype {g.dtype}, expected {dt}")
                g = g.astype(dt)
            _accumulate(grads, slot, g)
        needs = self._needs(input_grad)
        for node in reversed(self.nodes):
            if type(node) is _OpNode:
                g = grads[node.out]
                if g is None:
                    continue
                grads[node.out] = None
                ins = node.ins
                if not any(s is not None and needs[s] for s in ins):
                    continue
                gin = node.fn(g)
                for s, gi in zip(ins, gin):
                    if s is not None and gi is not None and needs[s]:
                        _accumulate(grads, s, gi)
                continue
            outs = node.outs
            gs = [None if s is None else grads[s] for s in outs]
            if all(g is None for g in gs):
                continue
            for s in outs:
                if s is not None:
                    grads[s] = None
            if node.single:
                g = gs[0]
            else:
                g = tuple(self._zeros(s) if (gi is None and s is not None) else gi
                          for s, gi in zip(outs, gs))
            if node.saved is not None:
                for m, st in node.saved:
                    m.__dict__.update(st)
            m = node.module
            in_needs = [s is not None and needs[s] for s in node.ins]
            gin = call_backward(m, g, any(in_needs))
            rec = [i for i, s in enumerate(node.ins) if s is not None]
            if not any(in_needs):
                continue
            if len(rec) == 1 and not isinstance(gin, tuple):
                gin_by_pos = {rec[0]: gin}
            else:
                if not isinstance(gin, tuple):
                    raise TypeError(f"{type(m).__name__}.backward returned one array but its "
                                    f"forward took {len(rec)} recorded inputs; return a tuple "
                                    "with one gradient per positional input")
                if len(gin) == len(node.ins):
                    gin_by_pos = dict(enumerate(gin))
                elif len(gin) == len(rec):
                    gin_by_pos = dict(zip(rec, gin))
                else:
                    raise TypeError(f"{type(m).__name__}.backward returned {len(gin)} "
                                    f"gradients for {len(node.ins)} positional inputs")
            for i in rec:
                s = node.ins[i]
                gi = gin_by_pos.get(i)
                if needs[s] and gi is not None:
                    _accumulate(grads, s, gi)
        for r, p in self.params.values():
            g = grads[r.slot]
            if g is not None and p.requires_grad:
                buf = p.grad_buffer()
                buf += g
        result = [None if s is None else grads[s] for s in self.inputs]
        self.nodes = []
        if len(result) == 1:
            return result[0]
        return tuple(result)

    def _zeros(self, slot):
        shape, dt = self.shapes[slot]
        return np.zeros(shape, dt)

    def _needs(self, input_grad: bool) -> list:
        kinds = self.kinds
        needs = [False] * len(kinds)
        for r, p in self.params.values():
            needs[r.slot] = p.requires_grad
        if input_grad:
            for s in self.inputs or ():
                if s is not None:
                    needs[s] = True
        for node in self.nodes:
            if type(node) is _OpNode:
                needs[node.out] = any(s is not None and needs[s] for s in node.ins)
            else:
                for s in node.outs:
                    if s is not None:
                        needs[s] = True
        return needs


def _accumulate(grads: list, slot: int, g) -> None:
    cur = grads[slot]
    if cur is None:
        grads[slot] = g
    else:
        grads[slot] = cur + g                   # new array: either side may be shared


def _is_float_array(a) -> bool:
    if type(a) is np.ndarray:
        return a.dtype.kind == "f"
    from .._kernels import placement
    return placement.of(a) is not None and np.dtype(a.dtype).kind == "f"


# ---------------------------------------------------------------------------------------------
# functions
# ---------------------------------------------------------------------------------------------

def _recorded_tape(arrays):
    for a in arrays:
        if type(a) is Recorded:
            return a.tape
    return None


def cat(tensors, dim: int | None = None, *, axis: int | None = None):
    """Concatenate arrays along ``dim`` (alias ``axis``; default 0, as ``torch.cat``), recorded
    for automatic backward when any input is recorded."""
    if dim is not None and axis is not None:
        raise TypeError("cat() takes dim or axis, not both")
    ax = 0 if dim is None and axis is None else (dim if dim is not None else axis)
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat() expects a non-empty sequence of arrays")
    tape = _recorded_tape(tensors)
    if tape is None:
        return np.concatenate([_plain(t) for t in tensors], axis=ax)
    return tape.concatenate(tensors, axis=ax)


def _np_concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None or dtype is not None:
        raise _unsupported("numpy.concatenate with out= or dtype=")
    arrays = list(arrays)
    return _recorded_tape(arrays).concatenate(arrays, axis=axis)


def _np_stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None or dtype is not None:
        raise _unsupported("numpy.stack with out= or dtype=")
    arrays = list(arrays)
    return _recorded_tape(arrays).stack(arrays, axis=axis)


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    if kw or dtype is not None or out is not None:
        raise _unsupported("numpy.sum with dtype=, out=, initial= or where=")
    return a.tape.reduce(a, axis, keepdims, mean=False)


def _np_mean(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    if kw or dtype is not None or out is not None:
        raise _unsupported("numpy.mean with dtype=, out= or where=")
    return a.tape.reduce(a, axis, keepdims, mean=True)


def _np_reshape(a, shape=None, order="C", **kw):
    if shape is None:
        shape = kw.pop("newshape", None)
    if kw or order != "C":
        raise _unsupported("numpy.reshape with order= other than 'C'")
    return a.reshape(shape)


def _np_transpose(a, axes=None):
    return a.tape.transpose(a, axes)


_FUNCTIONS = {
    np.concatenate: _np_concatenate,
    np.stack: _np_stack,
    np.sum: _np_sum,
    np.mean: _np_mean,
    np.reshape: _np_reshape,
    np.transpose: _np_transpose,
    np.shape: lambda a: tuple(_plain(a).shape),
    np.ndim: lambda a: _plain(a).ndim,
    np.size: lambda a, axis=None: np.size(_plain(a), axis),
    np.result_type: lambda *a: np.result_type(*[_plain(x) for x in a]),
}
