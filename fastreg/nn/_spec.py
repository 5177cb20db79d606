"""The layer descriptions and inference ops: see :mod:`fastreg._infer_spec` (re-exported here).

They live outside ``fastreg.nn`` so that the light inference path
(:func:`fastreg.inference.load`) reads the op records without importing the layers; the
registry objects are the same (``LAYERS``, ``_SPECS``), so registering a layer here registers it
there.
"""
from __future__ import annotations

from .._infer_spec import *
from .._infer_spec import _SPECS, __all__, _no_state  # noqa: F401  (tests read _SPECS)
