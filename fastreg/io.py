"""Model files: ``save`` / ``load`` without pickle, atomic writes, a hardened loader.

File layout (one ZIP archive, every member stored uncompressed; NumPy's ``np.load`` reads it as
an ``.npz`` with ``allow_pickle=False``)::

    fastreg.json        {"format": "fastreg-model", "format_version": 1,
                         "architecture": <module tree>, "tensors": {key: {"shape", "dtype"}}}
    <key>.npy           one .npy per state_dict entry ("0.weight", "1.running_mean", ...)

The architecture is a JSON tree ``{"type": "Linear", "args": {...}}`` (``Sequential`` adds
``"children": [[name, node], ...]``); :data:`REGISTRY` maps type names to ``fastreg.nn`` classes
and lists the constructor arguments, read back from the module's attributes at save time.

Loading never executes code from the file (no pickle, no eval) and never trusts a size field for
allocation: the expected tensor shapes follow from the architecture, their total must fit in the
file's actual length before any module is built, every ``.npy`` header must match its expected
shape and dtype exactly, and members must be stored (no decompression bombs). Any violation raises
:class:`ModelFileError` naming what is wrong.

The same container (``_write_container`` / ``_read_container``) holds training checkpoints
(:mod:`fastreg.train.checkpoint`): a JSON tree whose arrays are stored as ``.npy`` members.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["FORMAT_VERSION", "REGISTRY", "ModelFileError", "architecture", "build",
           "from_torch_state_dict", "load", "save"]

#: Version of the model file format written by :func:`save` (readers accept exactly this).
FORMAT_VERSION = 1
MODEL_FORMAT = "fastreg-model"
HEADER_NAME = "fastreg.json"
#: Caps that keep a hostile header from costing memory or recursion before it is checked.
MAX_HEADER_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_MODULES = 100_000
MAX_DIM = 2**31 - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_CHILD_RE = re.compile(r"^[A-Za-z0-9_]+$")


class ModelFileError(ValueError):
    """A model or checkpoint file is truncated, corrupted, of another version, or hostile."""


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:          # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Write a file so that readers see either the old or the complete new content.

    ``write(f)`` writes into a temporary file in the same directory, which is flushed, fsynced
    and renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows); the directory is
    then fsynced so that the rename itself survives a crash. On any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------------------------
# the container: a JSON header + stored .npy members
# ---------------------------------------------------------------------------------------------

def _write_container(f, header: dict, arrays: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(HEADER_NAME, json.dumps(header, allow_nan=True, separators=(",", ":")))
        for key, arr in arrays.items():
            arr = np.asarray(arr)
            if not arr.flags.c_contiguous:      # (ascontiguousarray would make 0-d arrays 1-d)
                arr = arr.copy(order="C")
            if arr.dtype.hasobject:
                raise TypeError(f"array {key!r} has dtype {arr.dtype}; only numeric arrays "
                                "can be saved")
            with zf.open(key + ".npy", "w", force_zip64=arr.nbytes > (1 << 30)) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def _check_member_name(name: str) -> None:
    base = name.removesuffix(".npy")
    if name != HEADER_NAME and (not name.endswith(".npy") or not _NAME_RE.match(base)):
        raise ModelFileError(f"archive member name {name!r} is not allowed (names must be "
                             "dotted identifiers ending in .npy: no path separators, no '..')")


class _Container:
    """An opened, structurally checked archive: its header dict and its members by name."""

    def __init__(self, f, path: str):
        self.path = path
        f.seek(0, os.SEEK_END)
        self.size = f.tell()
        f.seek(0)
        try:
            self.zf = zipfile.ZipFile(f, "r")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                struct.error) as exc:
            raise ModelFileError(f"{path}: not a fastreg file or truncated ({exc})") from None
        infos = self.zf.infolist()
        if len(infos) > 2 * MAX_MODULES:
            raise ModelFileError(f"{path}: too many archive members ({len(infos)})")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            _check_member_name(info.filename)
            if info.filename in self.members:
                raise ModelFileError(f"{path}: duplicate archive member {info.filename!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise ModelFileError(f"{path}: member {info.filename!r} is compressed or "
                                     "encrypted; fastreg files store members uncompressed")
            if info.file_size != info.compress_size or info.file_size > self.size:
                raise ModelFileError(f"{path}: member {info.filename!r} declares "
                                     f"{info.file_size} bytes, more than the file holds")
            self.members[info.filename] = info
        if HEADER_NAME not in self.members:
            raise ModelFileError(f"{path}: no {HEADER_NAME} header (not a fastreg file)")
        info = self.members[HEADER_NAME]
        if info.file_size > MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: header of {info.file_size} bytes exceeds the "
                                 f"{MAX_HEADER_BYTES}-byte limit")
        raw = self._read_member(HEADER_NAME, MAX_HEADER_BYTES)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFileError(f"{path}: header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{path}: header must be a JSON object")
        self.header = header

    def _read_member(self, name: str, limit: int) -> bytes:
        try:
            with self.zf.open(name) as fh:
                data = fh.read(limit + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error,
                struct.error, NotImplementedError) as exc:
            raise ModelFileError(f"{self.path}: member {name!r} is corrupted or truncated "
                                 f"({exc})") from None
        if len(data) > limit:
            raise ModelFileError(f"{self.path}: member {name!r} exceeds {limit} bytes")
        return data

    def read_array(self, key: str, shape: tuple | None = None, dtype=None) -> np.ndarray:
        """Member ``key``.npy, checked against ``shape``/``dtype`` (when given) before reading.

        Without an expected shape, the header's shape must still fit in the member's actual
        bytes, which are bounded by the file's length: nothing is allocated from a size field.
        """
        name = key + ".npy"
        info = self.members.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: tensor {key!r} is missing")
        try:
            with self.zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if hdtype.hasobject or hdtype.kind not in "biuf" or hdtype.fields is not None:
                    raise ModelFileError(f"{self.path}: tensor {key!r} has dtype {hdtype} "
                                         "(object arrays and pickles are refused)")
                if fortran:
                    raise ModelFileError(f"{self.path}: tensor {key!r} is Fortran-ordered")
                if dtype is not None and hdtype != np.dtype(dtype):
                    raise ModelFileError(f"{self.path}: tensor {key!r} has dtype {hdtype}, "
                                         f"the architecture declares {np.dtype(dtype)}")
                if shape is not None and tuple(hshape) != tuple(shape):
                    raise ModelFileError(f"{self.path}: tensor {key!r} has shape "
                                         f"{tuple(hshape)}, the architecture declares "
                                         f"{tuple(shape)}")
                count = math.prod(hshape)
                nbytes = count * hdtype.itemsize
                if nbytes > info.file_size:
                    raise ModelFileError(f"{self.path}: tensor {key!r} declares shape "
                                         f"{tuple(hshape)} ({nbytes} bytes) but its member "
                                         f"holds {info.file_size} bytes")
                buf = fh.read(nbytes)
                if len(buf) != nbytes:
                    raise ModelFileError(f"{self.path}: tensor {key!r} is truncated")
                if fh.read(1):
                    raise ModelFileError(f"{self.path}: tensor {key!r} has trailing bytes")
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, struct.error,
                SyntaxError, TypeError, NotImplementedError, OverflowError,
                MemoryError) as exc:
            raise ModelFileError(f"{self.path}: tensor {key!r} is corrupted or truncated "
                                 f"({type(exc).__name__}: {exc})") from None
        return np.frombuffer(buf, dtype=hdtype).reshape(hshape)


def _open_container(path, kind: str, version: int) -> tuple[_Container, object]:
    path_s = os.fspath(path)
    f = open(path_s, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        c = _Container(f, path_s)
        fmt = c.header.get("format")
        if fmt != kind:
            raise ModelFileError(f"{path_s}: format is {fmt!r}, expected {kind!r}")
        ver = c.header.get("format_version")
        if ver != version:
            raise ModelFileError(f"{path_s}: format version {ver!r} is not supported (this "
                                 f"fastreg reads version {version}); upgrade fastreg or "
                                 "re-save the model")
    except BaseException:
        f.close()
        raise
    return c, f


# ---------------------------------------------------------------------------------------------
# the registry: module type <-> JSON node
# ---------------------------------------------------------------------------------------------

def _nn():
    from . import nn
    return nn


def _dtype_name(dt) -> str:
    return np.dtype(dt).name


def _linear_args(m) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features,
            "bias": m.bias is not None, "dtype": _dtype_name(m.weight.data.dtype)}


def _linear_state(a) -> dict:
    dt = a["dtype"]
    s = {"weight": ((a["out_features"], a["in_features"]), dt)}
    if a["bias"]:
        s["bias"] = ((a["out_features"],), dt)
    return s


def _bn_args(m) -> dict:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
            "affine": m.affine, "track_running_stats": m.track_running_stats,
            "dtype": _dtype_name(m._dtype)}


def _bn_state(a) -> dict:
    C, dt = (a["num_features"],), a["dtype"]
    s = {}
    if a["affine"]:
        s["weight"] = (C, dt)
        s["bias"] = (C, dt)
    if a["track_running_stats"]:
        s["running_mean"] = (C, dt)
        s["running_var"] = (C, dt)
        s["num_batches_tracked"] = ((), "int64")
    return s


def _ln_args(m) -> dict:
    return {"normalized_shape": m.normalized_shape[0], "eps": m.eps,
            "elementwise_affine": m.elementwise_affine, "dtype": _dtype_name(m._dtype)}


def _ln_state(a) -> dict:
    if not a["elementwise_affine"]:
        return {}
    C, dt = (a["normalized_shape"],), a["dtype"]
    return {"weight": (C, dt), "bias": (C, dt)}


def _no_args(m) -> dict:
    return {}


def _no_state(a) -> dict:
    return {}


# Argument schemas: name -> checker(value) -> bool, used on untrusted headers before building.
def _is_dim(v) -> bool:
    return type(v) is int and 1 <= v <= MAX_DIM


def _is_bool(v) -> bool:
    return type(v) is bool


def _is_real(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _is_dtype(v) -> bool:
    return v in ("float32", "float64")


def _is_int(v) -> bool:
    return type(v) is int and abs(v) <= 64


_REGISTRY_SPEC = {
    # name: (class attribute name in fastreg.nn, {arg: checker}, args_from_module, state_shapes)
    "Linear": ("Linear", {"in_features": _is_dim, "out_features": _is_dim, "bias": _is_bool,
                          "dtype": _is_dtype}, _linear_args, _linear_state),
    "BatchNorm1d": ("BatchNorm1d", {"num_features": _is_dim, "eps": _is_real,
                                    "momentum": lambda v: v is None or _is_real(v),
                                    "affine": _is_bool, "track_running_stats": _is_bool,
                                    "dtype": _is_dtype}, _bn_args, _bn_state),
    "LayerNorm": ("LayerNorm", {"normalized_shape": _is_dim, "eps": _is_real,
                                "elementwise_affine": _is_bool, "dtype": _is_dtype},
                  _ln_args, _ln_state),
    "Dropout": ("Dropout", {"p": _is_real, "mode": lambda v: isinstance(v, str)},
                lambda m: {"p": m.p, "mode": m.mode}, _no_state),
    "ReLU": ("ReLU", {}, _no_args, _no_state),
    "Sigmoid": ("Sigmoid", {}, _no_args, _no_state),
    "Tanh": ("Tanh", {}, _no_args, _no_state),
    "Identity": ("Identity", {}, _no_args, _no_state),
    "LeakyReLU": ("LeakyReLU", {"negative_slope": _is_real},
                  lambda m: {"negative_slope": m.negative_slope}, _no_state),
    "Flatten": ("Flatten", {"start_dim": _is_int, "end_dim": _is_int},
                lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}, _no_state),
    "Sequential": ("Sequential", {}, _no_args, _no_state),
}

#: Type name -> (fastreg.nn class name, constructor arguments). The classes are resolved lazily
#: so that importing fastreg.io does not import the layers.
REGISTRY = {name: (spec[0], tuple(spec[1])) for name, spec in _REGISTRY_SPEC.items()}


def architecture(model) -> dict:
    """The JSON-serialisable module tree of ``model`` (what :func:`save` writes).

    Raises
    ------
    TypeError
        For a module whose exact type is not in :data:`REGISTRY` (subclasses are refused too:
        their extra behaviour could not be rebuilt from the file).
    """
    nn = _nn()
    seen: set[int] = set()

    def node(m, where: str) -> dict:
        tname = type(m).__name__
        spec = _REGISTRY_SPEC.get(tname)
        if spec is None or type(m) is not getattr(nn, spec[0]):
            raise TypeError(f"cannot save module {where or '<root>'} of type "
                            f"{type(m).__module__}.{type(m).__qualname__}: fastreg model files "
                            f"hold only {sorted(_REGISTRY_SPEC)}")
        if id(m) in seen:
            raise ValueError(f"module {where} appears twice in the model; files hold trees")
        seen.add(id(m))
        out = {"type": tname, "args": spec[2](m)}
        if tname == "Sequential":
            out["fuse"] = bool(getattr(m, "fuse", True))
            out["children"] = [[name, node(child, f"{where}.{name}" if where else name)]
                               for name, child in m._modules.items() if child is not None]
        return out

    return node(model, "")


def _check_tree(tree, path: str) -> dict:
    """Validate an untrusted architecture tree; return {state key: (shape, dtype)}."""
    shapes: dict[str, tuple] = OrderedDict()
    count = [0]

    def walk(n, prefix: str, depth: int) -> None:
        where = prefix or "<root>"
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{path}: architecture nested deeper than {MAX_DEPTH}")
        count[0] += 1
        if count[0] > MAX_MODULES:
            raise ModelFileError(f"{path}: architecture has more than {MAX_MODULES} modules")
        if not isinstance(n, dict) or not isinstance(n.get("type"), str):
            raise ModelFileError(f"{path}: architecture node {where} is not "
                                 "{'type': ..., 'args': ...}")
        tname = n["type"]
        spec = _REGISTRY_SPEC.get(tname)
        if spec is None:
            raise ModelFileError(f"{path}: unknown layer type {tname!r} at {where} (known: "
                                 f"{', '.join(sorted(_REGISTRY_SPEC))})")
        allowed = {"type", "args", "children", "fuse"} if tname == "Sequential" \
            else {"type", "args"}
        extra = set(n) - allowed
        if extra:
            raise ModelFileError(f"{path}: unexpected field(s) {sorted(extra)} in {tname} at "
                                 f"{where}")
        args = n.get("args", {})
        if not isinstance(args, dict) or set(args) != set(spec[1]):
            got = sorted(args) if isinstance(args, dict) else type(args).__name__
            raise ModelFileError(f"{path}: {tname} at {where} needs arguments "
                                 f"{sorted(spec[1])}, got {got}")
        for k, ok in spec[1].items():
            if not ok(args[k]):
                raise ModelFileError(f"{path}: {tname} at {where}: invalid {k}={args[k]!r}")
        pre = f"{prefix}." if prefix else ""
        for k, (shape, dt) in spec[3](args).items():
            shapes[pre + k] = (tuple(shape), dt)
        if tname == "Sequential":
            children = n.get("children", [])
            if not isinstance(children, list) or not isinstance(n.get("fuse", True), bool):
                raise ModelFileError(f"{path}: Sequential at {where}: malformed children/fuse")
            names = set()
            for item in children:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                        and _CHILD_RE.match(item[0])):
                    raise ModelFileError(f"{path}: Sequential at {where}: child entries must "
                                         "be [name, node] with an identifier name, got "
                                         f"{str(item)[:80]}")
                if item[0] in names:
                    raise ModelFileError(f"{path}: Sequential at {where}: duplicate child "
                                         f"{item[0]!r}")
                names.add(item[0])
                walk(item[1], pre + item[0], depth + 1)

    walk(tree, "", 0)
    return shapes


def build(tree: dict, path: str = "<architecture>"):
    """Construct fresh modules from a (validated) architecture tree.

    Building uses the constructors, which draw initial weights from fastreg's default generator;
    the generator's state is restored afterwards, so loading a model does not perturb the random
    stream of a training run.
    """
    from . import _random
    nn = _nn()
    _check_tree(tree, path)
    state = _random.default_generator.get_state()

    def make(n):
        cls = getattr(nn, _REGISTRY_SPEC[n["type"]][0])
        if n["type"] == "Sequential":
            seq = cls(OrderedDict((name, make(child)) for name, child in n["children"]))
            seq.fuse = n.get("fuse", True)
            return seq
        return cls(**n["args"])

    try:
        return make(tree)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot build the architecture: {exc}") from None
    finally:
        _random.default_generator.set_state(state)


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
        Built from the layers in :data:`REGISTRY` (Linear, BatchNorm1d, LayerNorm, Dropout,
        activations, Identity, Flatten, nested Sequential).
    path : str or os.PathLike
        Conventionally ``*.fr``.
    metadata : dict, optional
        JSON-serialisable information kept with the model (feature names, class labels...);
        :func:`load` returns it as ``model.metadata``.

    Raises
    ------
    TypeError
        When the model holds a module type the format cannot describe.
    """
    arch = architecture(model)
    state = model.state_dict()
    expected = _check_tree(arch, os.fspath(path))
    if list(state) != list(expected):        # a module whose state the registry misdescribes
        raise ValueError(f"state_dict keys {list(state)} do not match the architecture's "
                         f"{list(expected)}")
    header = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
              "fastreg_version": _version(), "architecture": arch,
              "tensors": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                          for k, v in state.items()}}
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        header["metadata"] = json.loads(json.dumps(metadata))     # JSON-able, a copy
    atomic_write(path, lambda f: _write_container(f, header, state))


def _version() -> str:
    from . import __version__
    return __version__


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
    c, f = _open_container(path, MODEL_FORMAT, FORMAT_VERSION)
    with f:
        p = c.path
        arch = c.header.get("architecture")
        expected = _check_tree(arch, p)
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
        fn = self._fn
        if fn is None:
            from .inference import compile as _compile
            fn = self._fn = _compile(self._model)
        return fn(x, out=out)


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


# ---------------------------------------------------------------------------------------------
# generic trees (checkpoints): JSON with arrays as members
# ---------------------------------------------------------------------------------------------

def _encode_tree(obj, arrays: dict):
    """JSON-able form of nested dict/list/tuple/scalars/arrays; arrays go to ``arrays``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode_tree(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode_tree(v, arrays) for v in obj]
    if isinstance(obj, Mapping):
        return {"__items__": [[_encode_tree(k, arrays), _encode_tree(v, arrays)]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a fastreg file (only dicts, lists, "
                    "tuples, numbers, strings, None and numpy arrays); e.g. a LambdaLR's "
                    "function cannot be saved")


def _decode_tree(obj, c: _Container, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{c.path}: state nested deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode_tree(v, c, depth + 1) for v in obj]
    if isinstance(obj, dict) and len(obj) >= 1:
        if "__float__" in obj:
            text = obj["__float__"]
            if text not in ("inf", "-inf", "nan"):
                raise ModelFileError(f"{c.path}: bad float {text!r}")
            return float(text)
        if "__array__" in obj:
            key = obj["__array__"]
            if not isinstance(key, str) or not _CHILD_RE.match(key):
                raise ModelFileError(f"{c.path}: bad array reference {key!r}")
            arr = np.array(c.read_array(key))          # own, writeable copy
            return arr[()] if obj.get("scalar") else arr
        if "__tuple__" in obj and isinstance(obj["__tuple__"], list):
            return tuple(_decode_tree(v, c, depth + 1) for v in obj["__tuple__"])
        if "__items__" in obj and isinstance(obj["__items__"], list):
            out = {}
            for item in obj["__items__"]:
                if not (isinstance(item, list) and len(item) == 2):
                    raise ModelFileError(f"{c.path}: malformed mapping entry")
                k = _decode_tree(item[0], c, depth + 1)
                if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                    raise ModelFileError(f"{c.path}: unhashable mapping key")
                out[k] = _decode_tree(item[1], c, depth + 1)
            return out
    raise ModelFileError(f"{c.path}: malformed state entry {str(obj)[:80]}")


def _save_tree(path, kind: str, version: int, tree: dict, extra_header: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    encoded = _encode_tree(tree, arrays)
    header = {"format": kind, "format_version": version, "fastreg_version": _version(),
              **extra_header, "state": encoded}
    atomic_write(path, lambda f: _write_container(f, header, arrays))


def _load_tree(path, kind: str, version: int) -> tuple[dict, object]:
    """(header, decoded state tree) of a container written by :func:`_save_tree`."""
    c, f = _open_container(path, kind, version)
    with f:
        try:
            state = _decode_tree(c.header.get("state"), c)
        except RecursionError:
            raise ModelFileError(f"{c.path}: state nested too deeply") from None
    return c.header, state
