"""fastreg.io: model files and the container they share with training checkpoints.

``save`` / ``load`` write and read a model (architecture + tensors) without pickle, atomically,
through a hardened loader; see :mod:`fastreg.io.model_file`. The package has four parts:

* :mod:`~fastreg.io.atomic`: atomic file writing (temporary file, fsync, rename);
* :mod:`~fastreg.io.container`: the JSON header + stored ``.npy`` members, read defensively
  (also the checkpoint format, :mod:`fastreg.train.checkpoint`);
* :mod:`~fastreg.io.tree`: the model tree <-> architecture JSON, from the layers' descriptions;
* :mod:`~fastreg.io.model_file`: ``save``, ``load``, ``from_torch_state_dict``.

Importing it does not import the layers (``fastreg.nn``): they are imported when a model is
saved or loaded, or when :data:`REGISTRY` is first read.
"""
from __future__ import annotations

import importlib

#: Names re-exported from the submodules, imported on first access (``fastreg.inference.load``
#: needs only the container and the tree; writing pulls in :mod:`~fastreg.io.atomic` and
#: :mod:`json`). The underscored names are the former single module's, kept for callers such
#: as the tests.
_EXPORTS = {
    "atomic_write": ("atomic", "atomic_write"),
    "HEADER_NAME": ("container", "HEADER_NAME"),
    "MAX_DEPTH": ("container", "MAX_DEPTH"),
    "MAX_HEADER_BYTES": ("container", "MAX_HEADER_BYTES"),
    "MAX_MODULES": ("container", "MAX_MODULES"),
    "ModelFileError": ("container", "ModelFileError"),
    "_load_tree": ("container", "load_tree"),
    "_open_container": ("container", "open_container"),
    "_save_tree": ("container", "save_tree"),
    "_write_container": ("container", "write_container"),
    "FORMAT_VERSION": ("model_file", "FORMAT_VERSION"),
    "MODEL_FORMAT": ("model_file", "MODEL_FORMAT"),
    "attach_predict": ("model_file", "attach_predict"),
    "from_torch_state_dict": ("model_file", "from_torch_state_dict"),
    "load": ("model_file", "load"),
    "save": ("model_file", "save"),
    "architecture": ("tree", "architecture"),
    "build": ("tree", "build"),
}

__all__ = ["FORMAT_VERSION", "REGISTRY", "ModelFileError", "architecture", "build",
           "from_torch_state_dict", "load", "save"]


def __getattr__(name):
    if name == "REGISTRY":
        # Type name -> (fastreg.nn class name, constructor arguments), derived from the
        # registered layers; computed on first access so that importing fastreg.io stays light.
        from .tree import registry
        return registry()
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'fastreg.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where[0]}"), where[1])
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS, "REGISTRY"})
