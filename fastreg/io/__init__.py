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

# (``X as X``: re-exported; the underscored names are the former single module's, kept for
# callers such as the tests)
from .atomic import atomic_write as atomic_write
from .container import HEADER_NAME as HEADER_NAME
from .container import MAX_DEPTH as MAX_DEPTH
from .container import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from .container import MAX_MODULES as MAX_MODULES
from .container import ModelFileError as ModelFileError
from .container import load_tree as _load_tree  # noqa: F401
from .container import open_container as _open_container  # noqa: F401
from .container import save_tree as _save_tree  # noqa: F401
from .container import write_container as _write_container  # noqa: F401
from .model_file import FORMAT_VERSION as FORMAT_VERSION
from .model_file import MODEL_FORMAT as MODEL_FORMAT
from .model_file import attach_predict as attach_predict
from .model_file import from_torch_state_dict as from_torch_state_dict
from .model_file import load as load
from .model_file import save as save
from .tree import architecture as architecture
from .tree import build as build

__all__ = ["FORMAT_VERSION", "REGISTRY", "ModelFileError", "architecture", "build",
           "from_torch_state_dict", "load", "save"]

def __getattr__(name):
    if name == "REGISTRY":
        # Type name -> (fastreg.nn class name, constructor arguments), derived from the
        # registered layers; computed on first access so that importing fastreg.io stays light.
        from .tree import registry
        return registry()
    raise AttributeError(f"module 'fastreg.io' has no attribute {name!r}")
