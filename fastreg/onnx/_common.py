"""What export and import share: the lazy ``onnx`` import and the metadata encoding."""
from __future__ import annotations

import importlib
import json

#: metadata_props key listing the keys whose values are JSON (the others are plain strings).
JSON_KEYS_PROP = "fastreg.json_keys"


def require(module: str = "onnx", what: str = "fastreg.onnx"):
    """Import ``module`` (``onnx`` or ``onnxruntime``) or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the {module!r} package, which is not installed: "
                          f"pip install 'fastreg[onnx]' (or pip install {module})") from exc


def encode_metadata(metadata: dict) -> list[tuple[str, str]]:
    """(key, value) strings for ONNX ``metadata_props``: strings as they are, anything else
    as JSON, with :data:`JSON_KEYS_PROP` naming the JSON-encoded keys (so that
    :func:`decode_metadata` gives back the same dict, and other tools still read plain strings
    such as ``task=classification``)."""
    props, json_keys = [], []
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be strings, got {key!r}")
        if key == JSON_KEYS_PROP:
            raise ValueError(f"metadata key {key!r} is reserved by fastreg.onnx")
        if isinstance(value, str):
            props.append((key, value))
        else:
            try:
                text = json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metadata[{key!r}] must be a string or JSON-serialisable, "
                                f"got {type(value).__name__}: {exc}") from None
            props.append((key, text))
            json_keys.append(key)
    if json_keys:
        props.append((JSON_KEYS_PROP, json.dumps(json_keys)))
    return props


def decode_metadata(props) -> dict:
    """The dict :func:`encode_metadata` wrote (files from other producers: plain strings)."""
    raw = {p.key: p.value for p in props}
    try:
        json_keys = json.loads(raw.pop(JSON_KEYS_PROP, "[]"))
    except ValueError:
        json_keys = []
    if not isinstance(json_keys, list):
        json_keys = []
    out = {}
    for key, value in raw.items():
        if key in json_keys:
            try:
                value = json.loads(value)
            except ValueError:
                pass            # a damaged entry stays the string it is
        out[key] = value
    return out
