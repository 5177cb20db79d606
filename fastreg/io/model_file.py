"""Model files: ``save`` / ``load`` without pickle, atomic writes, a hardened loader.

File layout (one :mod:`container <fastreg.io.container>`: a ZIP archive, every member stored
uncompressed; NumPy's ``np.load`` reads it as an ``.npz`` with ``allow_pickle=False``)::

    fastreg.json        {"format": "fastreg-model", "format_version": 1,
                         "architecture": <module tree>, "tensors": {key: {"shape", "dtype"}}}
    <key>.npy           one .npy per state_dict entry ("0.weight", "1.running_mean", ...)

The architecture is a JSON tree ``{"type": "Linear", "args": {...}}`` (``Sequential`` adds
``"children": [[name, node], ...]``), written and checked by :mod:`fastreg.io.tree` from the
layers' own descriptions (``layer_spec``: constructor arguments read back from the module's
attributes at save time, their checks, the state they imply).

Loading never executes code from the file (no pickle, no eval) and never trusts a size field for
allocation: the expected tensor shapes follow from the architecture, their total must fit in the
file's actual length before any module is built, every ``.npy`` header must match its expected
shape and dtype exactly, and members must be stored (no decompression bombs). Any violation raises
:class:`ModelFileError` naming what is wrong.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .atomic import atomic_write
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
MODEL_FORMAT = "fastreg-model"


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def save(model, path: str | os.PathLike, metadata: dict | None = None) -> None:
    r"""Save ``model`` (architecture + parameters + buffers) to ``path``, atomically.

    The file is a ZIP of stored ``.npy`` members plus a JSON header (``np.load(path)`` opens it
    as an ``.npz``); see the module docstring. The write goes to a temporary file in the same
    directory, is fsynced and renamed over ``path``: a crash mid-save leaves the previous file
    intact.

    Parameters
    ----------
    model : fastreg.nn.Module
        Built from the registered layers (:data:`fastreg.io.REGISTRY`: Linear, BatchNorm1d,
        LayerNorm, Dropout, activations, Identity, Flatten, nested Sequential).
    path : str or os.PathLike
        Conventionally ``*.fr``.
    metadata : dict, optional
        JSON-serialisable information kept with the model (feature names, class labels...);
        :func:`load` returns it as ``model.metadata``. A model trained by ``fit`` on a
        DataFrame adds ``"features"`` (its column names) unless given; the loaded model's
        ``predict(df)`` then matches a DataFrame's columns by name.

    Raises
    ------
    TypeError
        When the model holds a module type the format cannot describe.
    """
    arch = architecture(model)
    state = model.state_dict()
    expected = check_tree(arch, os.fspath(path))
    if list(state) != list(expected):        # a layer whose layer_spec misdescribes its state
        raise ValueError(f"state_dict keys {list(state)} do not match the architecture's "
                         f"{list(expected)}")
    header = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
              "fastreg_version": fastreg_version(), "architecture": arch,
              "tensors": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                          for k, v in state.items()}}
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    names = getattr(model, "feature_names_in_", None)      # set by fit on a DataFrame
    if names is not None and "features" not in (metadata or {}):
        metadata = {**(metadata or {}), "features": list(names)}
    if metadata is not None:
        header["metadata"] = json.loads(json.dumps(metadata))     # JSON-able, a copy
    atomic_write(path, lambda f: write_container(f, header, state))


def load(path: str | os.PathLike, *, eval: bool = True):
    """Load a model written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    eval : bool, default True
        Return the model in eval mode (running statistics, no dropout), ready to predict; pass
        False to continue training.

    Returns
    -------
    fastreg.nn.Module
        The rebuilt model, with ``model.metadata`` (the dict given to :func:`save`, or {}). It
        has a ``predict(x)`` method: a :func:`fastreg.inference.compile`
        predictor (BatchNorm folded, Dropout dropped, Cython kernels), compiled on first use
        from the weights at that time.

    Raises
    ------
    ModelFileError
        Truncated, corrupted, wrong-version or hostile file (unknown layer, shapes that do not
        match the architecture, object arrays/pickles, bad member names, sizes beyond the
        file's length).
    FileNotFoundError
        When ``path`` does not exist.
    """
    c, f = open_container(path, MODEL_FORMAT, FORMAT_VERSION)
    with f:
        p = c.path
        arch = c.header.get("architecture")
        expected = check_tree(arch, p)
        tensors = c.header.get("tensors")
        if not isinstance(tensors, dict) or set(tensors) != set(expected):
            raise ModelFileError(f"{p}: the tensor table does not match the architecture "
                                 f"(expected {sorted(expected)})")
        members = set(c.members) - {HEADER_NAME}
        wanted = {k + ".npy" for k in expected}
        if members != wanted:
            extra, missing = sorted(members - wanted), sorted(wanted - members)
            raise ModelFileError(f"{p}: archive members do not match the architecture "
                                 f"(missing {missing}, unexpected {extra})")
        # Every declared byte must be present in the file before anything is allocated.
        total = sum(math.prod(shape) * np.dtype(dt).itemsize
                    for shape, dt in expected.values())
        if total > c.size:
            raise ModelFileError(f"{p}: the architecture declares {total} bytes of tensors but "
                                 f"the file has {c.size} bytes (truncated or hostile)")
        arrays = {k: c.read_array(k, shape, dt) for k, (shape, dt) in expected.items()}
    model = build(arch, p)
    try:
        model.load_state_dict(arrays, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{p}: tensors do not fit the architecture: {exc}") from None
    metadata = c.header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{p}: metadata must be a JSON object")
    if eval:
        model.eval()
    object.__setattr__(model, "metadata", metadata)
    attach_predict(model)
    return model


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
