"""Model files: ``save`` / ``load`` without pickle, atomic writes, a hardened loader.

File layout (one :mod:`container <fastreg.io.container>`: a ZIP archive, every member stored
uncompressed; NumPy's ``np.load`` reads it as an ``.npz`` with ``allow_pickle=False``)::

    fastreg.json        {"format": "fastreg-model", "format_version": 1,
                         "class": "<module>.<qualname>", "architecture": <module tree> | null,
                         "tensors": {key: {"shape", "dtype"}}}
    <key>.npy           one .npy per state_dict entry ("0.weight", "1.running_mean", ...)

The architecture is a JSON tree ``{"type": "Linear", "args": {...}}`` (``Sequential`` adds
``"children": [[name, node], ...]``), written and checked by :mod:`fastreg.io.tree` from the
layers' own descriptions (``layer_spec``: constructor arguments read back from the module's
attributes at save time, their checks, the state they imply). A custom module has no
architecture (null): its file is filled into an instance, ``load(path, model=instance)``.
The class name is a string that is compared, never imported.

Loading never executes code from the file (no pickle, no eval) and never trusts a size field for
allocation: the expected tensor shapes follow from the architecture, their total must fit in the
file's actual length before any module is built, every ``.npy`` header must match its expected
shape and dtype exactly, and members must be stored (no decompression bombs). Any violation raises
:class:`ModelFileError` naming what is wrong.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .container import (
    HEADER_NAME,
    ModelFileError,
    fastreg_version,
    open_container,
    write_container,
)
from .tree import architecture, build, check_tree

__all__ = ["FORMAT_VERSION", "MODEL_FORMAT", "ModelFileError", "attach_predict",
           "from_torch_state_dict", "load", "save"]

#: Version of the model file format written by :func:`save` (readers accept exactly this).
FORMAT_VERSION = 1
#: Version of a compiled quantized predictor's file (``save(predictor)``, see fastreg._quant):
#: readers of version 1 refuse it.
PREDICTOR_FORMAT_VERSION = 2
MODEL_FORMAT = "fastreg-model"
#: The dtype names a tensor table may hold (numeric: bool, integers, floats).
_DTYPE_NAMES = frozenset(np.dtype(c).name for c in "?bBhHiIlLqQefd")


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def class_name(model) -> str:
    """``module.qualname`` of ``model``'s class: what a file records (a string only)."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def save(model, path: str | os.PathLike, metadata: dict | None = None) -> None:
    r"""Save ``model`` (its state, its class name and, for built-in layers, its architecture)
    to ``path``, atomically.

    The file is a ZIP of stored ``.npy`` members plus a JSON header (``np.load(path)`` opens it
    as an ``.npz``); see the module docstring. The write goes to a temporary file beside the
    target, is fsynced and renamed over it: a crash mid-save leaves the previous file intact
    (see :func:`fastreg.io.atomic_write` for symlinks and file modes).

    Parameters
    ----------
    model : fastreg.nn.Module
        Any module. For a tree of registered layers (:data:`fastreg.io.REGISTRY`: Linear,
        BatchNorm1d, LayerNorm, Dropout, activations, Identity, Flatten, nested Sequential)
        the architecture is stored too, so :func:`load` rebuilds it alone; for any other
        module (a custom ``Module`` subclass) the file holds the state (torch's key names)
        and the class's qualified name, and :func:`load` fills an instance passed as
        ``model=``. A float :class:`fastreg.inference.Predictor` is saved as the model of
        its folded stages (``Predictor.to_module()``: BatchNorm already folded into the
        Linear weights), so :func:`fastreg.inference.load` rebuilds it with nothing to fold;
        a quantized one (``weights="int8"``/``"bf16"``) as format version 2.
    path : str or os.PathLike
        Conventionally ``*.fr``.
    metadata : dict, optional
        JSON-serialisable information kept with the model (feature names, class labels...);
        :func:`load` returns it as ``model.metadata``. A model trained by ``fit`` on a
        DataFrame adds ``"features"`` (its column names) unless given; the loaded model's
        ``predict(df)`` then matches a DataFrame's columns by name.
    """
    from ..inference import Predictor
    if type(model) is Predictor:        # a float predictor: its folded stages as a model
        if metadata is None:
            metadata = getattr(model, "metadata", None) or None
        model = model.to_module()
    elif isinstance(model, Predictor):
        from .._quant import save_predictor  # a compiled quantized predictor: version 2
        return save_predictor(model, path, metadata)
    try:
        arch = architecture(model)
    except TypeError:
        arch = None                        # a custom module: state + class name only
    state = model.state_dict()
    if arch is not None:
        expected = check_tree(arch, os.fspath(path))
        if list(state) != list(expected):    # a layer whose layer_spec misdescribes its state
            raise ValueError(f"state_dict keys {list(state)} do not match the architecture's "
                             f"{list(expected)}")
    header = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
              "fastreg_version": fastreg_version(), "class": class_name(model),
              "architecture": arch,
              "tensors": {k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.name}
                          for k, v in state.items()}}
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    names = getattr(model, "feature_names_in_", None)      # set by fit on a DataFrame
    if names is not None and "features" not in (metadata or {}):
        metadata = {**(metadata or {}), "features": list(names)}
    if metadata is not None:
        import json
        header["metadata"] = json.loads(json.dumps(metadata))     # JSON-able, a copy
    from .atomic import atomic_write
    atomic_write(path, lambda f: write_container(f, header, state))


def _tensor_table(c) -> dict:
    """The header's {key: (shape, dtype)}, checked (an untrusted table)."""
    p = c.path
    tensors = c.header.get("tensors")
    if not isinstance(tensors, dict):
        raise ModelFileError(f"{p}: the tensor table is missing or not an object")
    out = OrderedDict()
    for k, v in tensors.items():
        ok = (isinstance(v, dict) and isinstance(v.get("shape"), list)
              and all(type(d) is int and d >= 0 for d in v["shape"])
              and isinstance(v.get("dtype"), str))
        if ok:
            ok = v["dtype"] in _DTYPE_NAMES      # (never np.dtype() of an untrusted string)
            dt = np.dtype(v["dtype"]) if ok else None
        if not ok:
            raise ModelFileError(f"{p}: malformed tensor table entry {str(k)[:80]!r}: "
                                 f"{str(v)[:80]}")
        out[k] = (tuple(v["shape"]), dt)
    return out


def _read_tensors(c, expected: dict, what: str) -> dict:
    """Read every expected tensor after checking members and the total size against the file."""
    p = c.path
    members = set(c.members) - {HEADER_NAME}
    wanted = {k + ".npy" for k in expected}
    if members != wanted:
        extra, missing = sorted(members - wanted), sorted(wanted - members)
        raise ModelFileError(f"{p}: archive members do not match the {what} "
                             f"(missing {missing[:10]}, unexpected {extra[:10]})")
    # Every declared byte must be present in the file before anything is allocated.
    total = sum(math.prod(shape) * np.dtype(dt).itemsize for shape, dt in expected.values())
    if total > c.size:
        raise ModelFileError(f"{p}: the {what} declares {total} bytes of tensors but the file "
                             f"has {c.size} bytes (truncated or hostile)")
    return c.read_arrays(expected)


def _check_instance(c, model, table: dict) -> None:
    """The file's class name, keys, shapes and dtypes must be ``model``'s (nothing copied)."""
    p = c.path
    saved_cls = c.header.get("class")
    if saved_cls is not None and not isinstance(saved_cls, str):
        raise ModelFileError(f"{p}: the class name must be a string")
    own = class_name(model)
    if saved_cls is not None and saved_cls != own:
        raise ModelFileError(f"{p}: the file holds a {saved_cls}, the model given is a {own}")
    mine = OrderedDict((k, (tuple(np.shape(v)), np.asarray(v).dtype))
                       for k, v in model.state_dict().items())
    missing = [k for k in mine if k not in table]
    unexpected = [k for k in table if k not in mine]
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected key(s) {[str(k)[:80] for k in unexpected[:10]]}")
    for k, (shape, dt) in mine.items():
        if k in table:
            fshape, fdt = table[k]
            if fshape != shape:
                problems.append(f"{k}: shape {fshape} in the file, {shape} in the model")
            elif fdt != dt:
                problems.append(f"{k}: dtype {fdt} in the file, {dt} in the model")
    if problems:
        raise ModelFileError(f"{p}: does not match the given {type(model).__name__}: "
                             + "; ".join(problems[:10]))


def _is_module(obj) -> bool:
    from ..nn import Module
    return isinstance(obj, Module)


def load(path: str | os.PathLike, *, eval: bool = True, model=None):
    """Load a model written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    eval : bool, default True
        Return the model in eval mode (running statistics, no dropout), ready to predict; pass
        False to continue training.
    model : fastreg.nn.Module, optional
        An instance to fill instead of building one from the file's architecture (required
        for custom modules, whose code a file never holds: no code named in a file is ever
        imported or run). The file's class name, state keys, shapes and dtypes must equal the
        instance's; all of it is checked before anything is copied (all or nothing).

    Returns
    -------
    fastreg.nn.Module
        (A file written by ``save(predictor, path)`` of a predictor compiled with
        ``weights="int8"``/``"bf16"`` loads as that predictor, with ``.metadata``.)
        The rebuilt model (or ``model``), with ``model.metadata`` (the dict given to
        :func:`save`, or {}). Unless its class defines one, it gets a ``predict(x)`` method: a
        :func:`fastreg.inference.compile` predictor (BatchNorm folded, Dropout dropped, Cython
        kernels), compiled on first use from the weights at that time; safe to call from
        several threads at once.

    Raises
    ------
    ModelFileError
        Truncated, corrupted, wrong-version or hostile file (unknown layer, an architecture
        whose widths do not chain, shapes that do not match the architecture, object
        arrays/pickles, bad member names, sizes beyond the file's length, not a regular file);
        a custom-class file without ``model=``; a ``model`` that does not match the file.
    FileNotFoundError, PermissionError
        When ``path`` cannot be opened (the message names it).
    """
    if model is not None and not _is_module(model):
        raise TypeError(f"model must be a fastreg.nn.Module instance, got "
                        f"{type(model).__name__}")
    c, f = open_container(path, MODEL_FORMAT, (FORMAT_VERSION, PREDICTOR_FORMAT_VERSION))
    with f:
        p = c.path
        arch = c.header.get("architecture")
        if c.header["format_version"] == PREDICTOR_FORMAT_VERSION:   # a quantized predictor
            return _load_predictor(c, model)
        table = _tensor_table(c)
        if model is not None:
            _check_instance(c, model, table)
            arrays = _read_tensors(c, table, "tensor table")
        else:
            if arch is None:
                cls = c.header.get("class")
                raise ModelFileError(f"{p}: holds a custom module ({str(cls)[:200]}) without "
                                     "an architecture; fastreg never imports code named in a "
                                     "file: build the model and pass it, "
                                     "fastreg.load(path, model=instance)")
            expected = check_tree(arch, p)
            if list(table) != list(expected) or any(
                    table[k] != (shape, np.dtype(dt)) for k, (shape, dt) in expected.items()):
                raise ModelFileError(f"{p}: the tensor table does not match the architecture "
                                     f"(expected {sorted(expected)[:20]})")
            arrays = _read_tensors(c, table, "architecture")
        metadata = c.header.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ModelFileError(f"{p}: metadata must be a JSON object")
    if model is None:
        model = build(arch, p)
        try:
            model.load_state_dict(arrays, strict=True)
            from ..inference import check_chain
            check_chain(model)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{p}: the architecture is inconsistent: {exc}") from None
    else:
        model.load_state_dict(arrays, strict=True)
    if eval:
        model.eval()
    object.__setattr__(model, "metadata", metadata)
    attach_predict(model)
    return model


def _load_predictor(c, model):
    """A compiled quantized predictor saved by ``save(predictor, path)`` (fastreg._quant)."""
    if model is not None:
        raise ModelFileError(f"{c.path}: holds a compiled quantized predictor, not a model; "
                             "load it without model=")
    metadata = c.header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{c.path}: metadata must be a JSON object")
    from .._quant import read_predictor
    pred = read_predictor(c, check_tree(c.header.get("architecture"), c.path))
    pred.metadata = metadata
    return pred


def attach_predict(model) -> None:
    """Give ``model`` a ``predict(x)`` when its class has none (compiled lazily, cached).

    The predictor snapshots the weights at its first call; after changing the weights, call
    ``model.predict.recompile()`` (or :func:`fastreg.inference.compile` again).
    """
    if hasattr(type(model), "predict"):
        return
    object.__setattr__(model, "predict", _LazyPredict(model))


class _LazyPredict:
    __slots__ = ("_fn", "_model")

    def __init__(self, model):
        self._model = model
        self._fn = None

    def recompile(self) -> None:
        self._fn = None

    # pickled without its compiled predictor: rebuilt lazily on the first call after loading
    def __getstate__(self):
        return (None, {"_model": self._model})

    def __setstate__(self, state):
        self._model = state[1]["_model"]
        self._fn = None

    def __call__(self, x, out=None):
        if type(x).__module__.startswith("pandas"):      # a DataFrame: columns by name
            x = _pandas_features(self._model, x)
        fn = self._fn
        if fn is None:
            from ..inference import compile as _compile
            fn = self._fn = _compile(self._model)
        return fn(x, out=out)


def _pandas_features(model, x):
    """A DataFrame as the feature matrix, its columns matched by name to the model's
    (``metadata["features"]`` or ``feature_names_in_``): reordered when all are present, an
    error naming the missing and extra ones otherwise. A model file written by ``fastreg
    train`` applies its stored :class:`fastreg.data.TablePreprocessor` to the raw rows."""
    meta = getattr(model, "metadata", None) or {}
    if isinstance(meta.get("preprocessor"), dict):   # fastreg train's: raw rows -> features
        from ..data.preprocess import TablePreprocessor
        return TablePreprocessor.from_json(meta["preprocessor"]).transform(x, what="predict X")
    from ..data.table import frame_to_array
    names = meta.get("features") or getattr(model, "feature_names_in_", None)
    return frame_to_array(x, None, what="predict X", features=names)[0]


def _to_numpy(value):
    """numpy arrays pass through; torch tensors (duck-typed, torch never imported) convert."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def from_torch_state_dict(model, state_dict: Mapping, strict: bool = True):
    """Load a PyTorch ``state_dict`` (tensors or numpy arrays) into a matching fastreg model.

    Keys are torch's (``"0.weight"``, ``"1.running_mean"``, ``"1.num_batches_tracked"`` ...) and
    the layouts agree (Linear weight is (out, in)), so values are copied as they are, cast to
    the model's dtype. torch is never imported here: tensors are converted through their own
    ``.detach().cpu().numpy()``.

    Parameters
    ----------
    model : fastreg.nn.Module
    state_dict : mapping of str to torch.Tensor or array-like
    strict : bool
        Missing or unexpected keys raise (as ``Module.load_state_dict``).

    Returns
    -------
    model
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    converted = OrderedDict((k, _to_numpy(v)) for k, v in state_dict.items())
    model.load_state_dict(converted, strict=strict)
    return model
