"""A layer describes itself once: arguments, state, inference fold and fusion, in one place.

(This module is ``fastreg._infer_spec``, re-exported as :mod:`fastreg.nn._spec`: it lives
outside ``fastreg.nn`` so that the inference path -- :func:`fastreg.inference.load` -- reads its
op records without importing the layers.)

Every layer class of :mod:`fastreg.nn` carries a :class:`LayerSpec` (class attribute
``layer_spec``), folds itself for inference through ``inference_ops()`` and is registered with
:func:`register_layer`. Everything else reads that description:

* model files (:mod:`fastreg.io.tree`): the architecture node ``{"type", "args"}`` is
  ``LayerSpec.read_args(module)``; a file's untrusted arguments are validated with the
  ``Arg.check`` predicates and its tensor shapes derived by ``LayerSpec.state`` *before* any
  module is built or any array allocated;
* :func:`fastreg.inference.compile`: ``fold(module)`` gives typed ops (:class:`LinearOp`,
  :class:`AffineOp`, ...) that the predictor folds and runs;
* ``Sequential``: a layer with ``fuses_activation`` runs a following ``activation`` layer in its
  own kernel epilogue.

Descriptions are per exact class: a subclass of a layer is a different layer (it may change
``forward``), so it is unregistered until decorated itself -- it cannot be saved, is not fused,
and ``compile`` runs it through its own ``forward`` (:class:`ForwardOp`).

Adding a layer::

    @register_layer
    class Scale(Module):
        layer_spec = LayerSpec(
            args={"features": Arg(is_dim), "dtype": Arg(is_dtype, lambda m: m._dtype.name)},
            state=lambda a: {"weight": ((a["features"],), a["dtype"])})

        def inference_ops(self):          # y = w * x: a per-feature affine map, shift 0
            return (AffineOp(f64(self.weight.data), np.zeros(self.features)),)

This module imports NumPy only (it is on the load and inference path); its records are
immutable tuples with named fields (:class:`_Record`: what ``typing.NamedTuple`` gives, without
the ~0.15 ms a class it costs at import, 1.5 ms for this module on the cold-start path).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from operator import itemgetter
from types import MappingProxyType

import numpy as np

from ._kernels.common.codes import ACT_IDENTITY

__all__ = [
    "LAYERS", "MAX_DIM", "OPS", "REQUIRED", "ActivationOp", "AffineOp", "Arg", "FlattenOp",
    "ForwardOp", "LayerNormOp", "LayerSpec", "LinearOp", "ScaleOp", "f64", "fold", "is_bool",
    "is_dim", "is_dtype", "is_real", "is_real_or_none", "is_shape", "is_small_int", "is_str",
    "register_layer",
    "spec_of",
]

#: Largest dimension a model file may declare (sizes are also bounded by the file's length).
MAX_DIM = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# records: named, immutable tuples
# ---------------------------------------------------------------------------------------------

class _Record(tuple):
    """A tuple with named fields, as ``typing.NamedTuple`` makes them (``_fields``,
    ``_replace``, ``_asdict``, pickling, equality and hashing of a tuple). A subclass names its
    ``_fields``, writes its ``__new__`` (the signature, defaults included) and is decorated
    with :func:`_record`, which adds a read-only property per field."""
    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _replace(self, **changes):
        values = [changes.pop(f, v) for f, v in zip(self._fields, self)]
        if changes:
            raise TypeError(f"{type(self).__name__}._replace: unknown field(s) "
                            f"{sorted(changes)}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict:
        return dict(zip(self._fields, self))

    def __getnewargs__(self):
        return tuple(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self))
        return f"{type(self).__name__}({fields})"


def _record(cls):
    for i, name in enumerate(cls._fields):
        setattr(cls, name, property(itemgetter(i), doc=f"Field {i}: {name}."))
    cls.__match_args__ = cls._fields
    return cls


# ---------------------------------------------------------------------------------------------
# argument checks: predicates on *untrusted* JSON values (exact types, no coercion)
# ---------------------------------------------------------------------------------------------

def is_dim(v) -> bool:
    return type(v) is int and 1 <= v <= MAX_DIM


def is_bool(v) -> bool:
    return type(v) is bool


def is_real(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def is_real_or_none(v) -> bool:
    return v is None or is_real(v)


def is_dtype(v) -> bool:
    return v in ("float32", "float64")


def is_shape(v) -> bool:
    """A normalized_shape: a dimension, or a non-empty list of at most 64 dimensions."""
    return is_dim(v) or (type(v) is list and 1 <= len(v) <= 64 and all(is_dim(d) for d in v))


def is_small_int(v) -> bool:
    """A dimension index (Flatten's start_dim/end_dim): |v| <= 64."""
    return type(v) is int and abs(v) <= 64


def is_str(v) -> bool:
    return isinstance(v, str)


# ---------------------------------------------------------------------------------------------
# the description
# ---------------------------------------------------------------------------------------------

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The ``Arg.default`` of an argument every file must hold.
REQUIRED = _Required()


@_record
class Arg(_Record):
    """One constructor argument as a model file stores it.

    ``check(value) -> bool`` validates an untrusted value before the constructor sees it (the
    constructor's own checks still run); ``get(module)`` reads it back from an instance, by
    default the attribute of the argument's name. An argument added after files were written
    has a ``default``: a file without it is read as if it held the default.
    """
    __slots__ = ()
    _fields = ("check", "get", "default")

    def __new__(cls, check: Callable[[object], bool],
                get: Callable[[object], object] | None = None, default: object = REQUIRED):
        return tuple.__new__(cls, (check, get, default))


#: {state_dict key: (shape, dtype name)} of a layer, as a function of its saved arguments.
StateShapes = dict[str, tuple[tuple[int, ...], str]]


def _no_state(args: Mapping) -> StateShapes:
    return {}


@_record
class LayerSpec(_Record):
    """What a layer class declares once (see the module docstring).

    Attributes
    ----------
    args : {name: Arg}
        The constructor arguments a model file stores, in file order (the JSON keeps it).
    state : callable
        ``state(args) -> {key: (shape, dtype)}``: the layer's state_dict entries in
        registration order, derived from the arguments alone (a loader checks the file's tensors
        against it before building anything).
    fuses_activation : bool
        ``forward(x, activation=code, slope=s)`` applies a following activation in its own
        kernel epilogue (Linear); ``Sequential`` then runs the pair as one call.
    activation : bool
        An element-wise activation such a layer can absorb: it has ``_code``, ``slope`` and
        ``fusable()`` (False when its backward cannot be computed from the output).
    container : bool
        Holds child modules (Sequential): the architecture node carries ``"children"`` and
        ``"fuse"``, and inference flattens it instead of folding it.
    """
    __slots__ = ()
    _fields = ("args", "state", "fuses_activation", "activation", "container")

    def __new__(cls, args: Mapping[str, Arg] = MappingProxyType({}),
                state: Callable[[Mapping], StateShapes] = _no_state,
                fuses_activation: bool = False, activation: bool = False,
                container: bool = False):
        return tuple.__new__(cls, (args, state, fuses_activation, activation, container))

    def complete_args(self, args: Mapping) -> dict | None:
        """A file's arguments with the defaults of those it lacks filled in, in declaration
        order; None when a required one is missing or an unknown one is present."""
        if not set(args) <= set(self.args):
            return None
        out = {}
        for name, a in self.args.items():
            if name in args:
                out[name] = args[name]
            elif a.default is REQUIRED:
                return None
            else:
                out[name] = a.default
        return out

    def read_args(self, module) -> dict:
        """The JSON-able constructor arguments of ``module`` (what a model file stores)."""
        return {name: (getattr(module, name) if a.get is None else a.get(module))
                for name, a in self.args.items()}


#: Type name -> layer class: the one registry (model files, inference, Sequential, CLI).
LAYERS: dict[str, type] = {}
_SPECS: dict[type, LayerSpec] = {}


def register_layer(cls: type) -> type:
    """Class decorator: register ``cls`` (under its ``__name__``) with its ``layer_spec``.

    Refuses a class that cannot be described completely: no :class:`LayerSpec`, no
    ``inference_ops`` (a layer that cannot fold says so by returning ``(ForwardOp(self),)``),
    an activation without its code, or a name already taken by another class.
    """
    name = cls.__name__
    spec = getattr(cls, "layer_spec", None)
    if not isinstance(spec, LayerSpec):
        raise TypeError(f"{name}: a registered layer declares layer_spec = LayerSpec(...)")
    if not spec.container and not callable(getattr(cls, "inference_ops", None)):
        raise TypeError(f"{name}: a registered layer defines inference_ops() (return "
                        "(ForwardOp(self),) to run its own forward at inference)")
    if spec.activation and not (hasattr(cls, "_code") and callable(getattr(cls, "fusable",
                                                                           None))):
        raise TypeError(f"{name}: an activation layer has an _code and a fusable() method")
    other = LAYERS.get(name)
    if other is not None and other is not cls:
        raise ValueError(f"layer type {name!r} is already registered "
                         f"({other.__module__}.{other.__qualname__})")
    LAYERS[name] = cls
    _SPECS[cls] = spec
    return cls


def spec_of(cls: type) -> LayerSpec | None:
    """The description of exactly ``cls`` (None for unregistered classes, subclasses too)."""
    return _SPECS.get(cls)


# ---------------------------------------------------------------------------------------------
# inference ops: what a layer folds into (float64, host arrays, owned by the op)
# ---------------------------------------------------------------------------------------------

def f64(a) -> np.ndarray:
    """A float64 host **copy** of ``a`` (the predictor snapshots the weights at compile time)."""
    if type(a) is not np.ndarray:       # a CUDA device array (a model on the GPU)
        from ._kernels.runtime.cuda import to_host
        a = to_host(a)
    return np.array(a, dtype=np.float64)


@_record
class LinearOp(_Record):
    r""":math:`y = \mathrm{act}(x W^\top + b)`; W (M, K), b (M,); ``activation`` an ACT_* code."""
    __slots__ = ()
    _fields = ("weight", "bias", "activation", "slope")

    def __new__(cls, weight: np.ndarray, bias: np.ndarray, activation: int = ACT_IDENTITY,
                slope: float = 0.01):
        return tuple.__new__(cls, (weight, bias, activation, slope))


@_record
class AffineOp(_Record):
    r""":math:`y = s \odot x + t` per feature; s, t (C,) (an eval-mode BatchNorm1d)."""
    __slots__ = ()
    _fields = ("scale", "shift")

    def __new__(cls, scale: np.ndarray, shift: np.ndarray):
        return tuple.__new__(cls, (scale, shift))


@_record
class ScaleOp(_Record):
    r""":math:`y = c\,x` for a constant c, any shape (classic-mode Dropout at eval)."""
    __slots__ = ()
    _fields = ("factor",)

    def __new__(cls, factor: float):
        return tuple.__new__(cls, (factor,))


@_record
class ActivationOp(_Record):
    """Element-wise activation ``code`` (a ``_codes.ACT_*``) with LeakyReLU's ``slope``."""
    __slots__ = ()
    _fields = ("code", "slope")

    def __new__(cls, code: int, slope: float = 0.01):
        return tuple.__new__(cls, (code, slope))


@_record
class LayerNormOp(_Record):
    r""":math:`y = \gamma (x-\mu_n)/\sqrt{\sigma^2_n+\epsilon} + \beta` over C features;
    ``weight``/``bias`` (C,) or None (no elementwise affine / ``bias=False``). ``shape`` is the
    normalized_shape (product C) when it has several dimensions: the input is then
    (N, *shape), normalized over all of them; () for a plain (N, C) input."""
    __slots__ = ()
    _fields = ("weight", "bias", "eps", "features", "shape")

    def __new__(cls, weight: np.ndarray | None, bias: np.ndarray | None, eps: float,
                features: int, shape: tuple = ()):
        return tuple.__new__(cls, (weight, bias, eps, features, shape))


@_record
class FlattenOp(_Record):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    __slots__ = ()

    def __new__(cls):
        return tuple.__new__(cls, ())


@_record
class ForwardOp(_Record):
    """The explicit slow path: ``module.forward(h)`` in the module's current mode."""
    __slots__ = ()
    _fields = ("module",)

    def __new__(cls, module: object):
        return tuple.__new__(cls, (module,))


#: The op types :func:`fastreg.inference.compile` knows (a new op type needs a stage there).
OPS = (LinearOp, AffineOp, ScaleOp, ActivationOp, LayerNormOp, FlattenOp, ForwardOp)


def fold(module) -> tuple:
    """``module``'s inference ops: its own ``inference_ops()`` when its exact class is a
    registered leaf layer, else ``(ForwardOp(module),)`` (custom modules, subclasses)."""
    spec = _SPECS.get(type(module))
    if spec is None or spec.container:
        return (ForwardOp(module),)
    return tuple(module.inference_ops())
