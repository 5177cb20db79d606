"""The container: a JSON header plus stored ``.npy`` members in one ZIP, read defensively.

Layout (every member stored uncompressed; ``np.load`` opens it as an ``.npz`` with
``allow_pickle=False``)::

    fastreg.json        {"format": <kind>, "format_version": <int>, ...}
    <key>.npy           one array per key (dotted identifiers: "0.weight", "a3")

Model files (:mod:`fastreg.io.model_file`) and training checkpoints
(:mod:`fastreg.train.checkpoint`) are both containers. Reading never executes code from the
file (no pickle, no eval) and never allocates from a size field: member names must be dotted
identifiers, members must be stored (no decompression bombs), the header is capped at
:data:`MAX_HEADER_BYTES`, and every ``.npy`` header is checked (numeric dtype, C order, the
expected shape/dtype when known, its byte count within the member's actual length) before its
data is read. Any violation raises :class:`ModelFileError`.

:func:`save_tree` / :func:`load_tree` store a generic JSON tree whose arrays become members
(checkpoints).
"""
from __future__ import annotations

import io
import math
import mmap
import os
import re
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = ["HEADER_NAME", "MAX_DEPTH", "MAX_HEADER_BYTES", "MAX_MODULES", "Container",
           "ModelFileError", "load_tree", "open_container", "save_tree", "write_container"]

HEADER_NAME = "fastreg.json"
#: Caps that keep a hostile header from costing memory or recursion before it is checked.
MAX_HEADER_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_MODULES = 100_000
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")    # (\Z: "$" allows a final "\n")
#: One path component (an architecture child name, an array reference).
CHILD_RE = re.compile(r"^[A-Za-z0-9_]+\Z")


_PREADV = hasattr(os, "preadv")
#: Member names are ASCII (dotted identifiers): decode them as such instead of zipfile's default
#: cp437, whose codec would be imported on the load path (a non-ASCII name is refused either way).
_ZIP_NAMES = {"metadata_encoding": "ascii"} if sys.version_info >= (3, 11) else {}

try:    # the C scanner json.loads runs, used directly: importing json compiles its regexes
    from _json import make_scanner as _make_scanner
except ImportError:   # pragma: no cover - an interpreter without the _json accelerator
    _make_scanner = None


class _JSONContext:
    """json.JSONDecoder's defaults, as the C scanner reads them (what json.loads uses)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": -math.inf, "Infinity": math.inf, "NaN": math.nan}.__getitem__


_scan_json = None if _make_scanner is None else _make_scanner(_JSONContext())
_JSON_SPACE = " \t\n\r"


def parse_json(text: str):
    """``json.loads(text)`` (same scanner, same values and errors, ``ValueError`` or
    ``RecursionError``) without importing :mod:`json` on the load path."""
    if _scan_json is None:  # pragma: no cover
        import json
        return json.loads(text)
    if text.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM")
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        obj, end = _scan_json(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_JSON_SPACE):
        raise ValueError(f"Extra data: char {end}")
    return obj


class ModelFileError(ValueError):
    """A model or checkpoint file is truncated, corrupted, of another version, or hostile."""


# ---------------------------------------------------------------------------------------------
# the container
# ---------------------------------------------------------------------------------------------

def write_container(f, header: dict, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``header`` (JSON) and each array as a stored ``<key>.npy`` member into ``f``."""
    import json
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


def check_member_name(name: str) -> None:
    """Refuse member names that are not the header or a dotted identifier + ``.npy``."""
    base = name.removesuffix(".npy")
    if name != HEADER_NAME and (not name.endswith(".npy") or not _NAME_RE.match(base)):
        raise ModelFileError(f"archive member name {name!r} is not allowed (names must be "
                             "dotted identifiers ending in .npy: no path separators, no '..')")


class Container:
    """An opened, structurally checked archive: its header dict and its members by name."""

    def __init__(self, f, path: str):
        self.path = path
        try:
            self._file = f
            self._fd = f.fileno()
            self.size = os.fstat(self._fd).st_size
            f.seek(0)
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
        #: Bytes materialised so far by read_array: bounded by the file's own size.
        self.budget = self.size
        self._read_keys: set[str] = set()
        try:
            self.zf = zipfile.ZipFile(f, "r", **_ZIP_NAMES)
        except Exception as exc:       # noqa: BLE001 - zipfile parsing untrusted bytes: any
            # failure (BadZipFile, NotImplementedError for a flipped version field, ...) means
            # a damaged file
            raise ModelFileError(f"{path}: not a fastreg file or truncated "
                                 f"({type(exc).__name__}: {exc})") from None
        infos = self.zf.infolist()
        if len(infos) > 2 * MAX_MODULES:
            raise ModelFileError(f"{path}: too many archive members ({len(infos)})")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            check_member_name(info.filename)
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
            header = parse_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFileError(f"{path}: header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{path}: header must be a JSON object")
        self.header = header

    def _read_member(self, name: str, limit: int) -> bytes:
        try:
            with self.zf.open(name) as fh:
                data = fh.read(limit + 1)
        except Exception as exc:       # noqa: BLE001 - see __init__
            raise ModelFileError(f"{self.path}: member {name!r} is corrupted or truncated "
                                 f"({type(exc).__name__}: {exc})") from None
        if len(data) > limit:
            raise ModelFileError(f"{self.path}: member {name!r} exceeds {limit} bytes")
        return data

    def _data_start(self, info) -> int:
        """Offset in the file of a member's first byte (after its local header)."""
        head = bytearray(30)
        if self._pread(memoryview(head), info.header_offset) != 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"Bad magic number for file header of {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def _pread(self, view, offset: int) -> int:
        """Read len(view) bytes at ``offset`` into ``view``; the count read."""
        got = 0
        while got < len(view):
            if _PREADV:
                n = os.preadv(self._fd, [view[got:]], offset + got)
            else:               # (no preadv: Windows) zipfile seeks before each of its reads
                self._file.seek(offset + got)
                n = self._file.readinto(view[got:])
            if n <= 0:
                break
            got += n
        return got

    def read_arrays(self, expected: Mapping) -> dict:
        """``{key: read_array(key, shape, dtype)}`` for ``expected`` = {key: (shape, dtype)},
        the same checks and errors, with less work per tensor.

        A member written the way :func:`write_container` writes it -- its local header naming
        it as the directory does, its ``.npy`` header byte for byte the one NumPy writes for the
        expected shape and dtype, nothing after the data -- is read with one ``preadv`` (local
        header + ``.npy`` header into a scratch buffer, the data straight into its place) and
        its CRC-32 checked over the same bytes; the data of all of them share one block of
        memory mapped and populated at once (``MAP_POPULATE``: on a cold start, faulting in a
        fresh page at a time costs more than the copy). Any other member -- and any member
        that fails a check -- is read by :meth:`read_array`, which raises the usual error.
        """
        todo = []               # (key, info, shape, dtype, canonical .npy header, nbytes)
        total = planned = 0     # (the block stays within the budget: the file's own size)
        for key, (shape, dtype) in expected.items():
            info = self.members.get(key + ".npy")
            dt = np.dtype(dtype)
            nbytes = math.prod(shape) * dt.itemsize
            if (info is None or not _PREADV or key in self._read_keys or nbytes == 0
                    or info.flag_bits & 0x61 or planned + nbytes > self.budget
                    or nbytes > info.file_size):
                todo.append((key, None, shape, dtype, None, 0))
                continue
            head = _npy_header(tuple(shape), dt)
            todo.append((key, info, shape, dt, head, nbytes))
            planned += nbytes
            total += -(-nbytes // 64) * 64          # 64-byte aligned slots
        arena = _populated(total)
        out, slot = {}, 0
        for key, info, shape, dt, npy_head, nbytes in todo:
            arr = None
            if info is not None:
                data = arena[slot:slot + nbytes]
                slot += -(-nbytes // 64) * 64
                arr = self._read_canonical(key, info, npy_head, data, nbytes)
            out[key] = (arr.view(dt).reshape(shape) if arr is not None
                        else self.read_array(key, shape, dt))
        return out

    def _read_canonical(self, key, info, npy_head: bytes, data, nbytes: int):
        """``data`` filled with the member's array, or None when the member is not exactly in
        the canonical form (see :meth:`read_arrays`) or fails its CRC."""
        try:
            name = info.orig_filename.encode("ascii")
        except UnicodeEncodeError:
            return None
        hlen = len(npy_head)
        if info.compress_size != hlen + nbytes or info.file_size != info.compress_size:
            return None
        lead = 30 + len(name) + len(info.extra)     # the local header, as the directory's
        if info.header_offset + lead + hlen + nbytes > self.size:
            return None
        head = bytearray(lead + hlen)
        if os.preadv(self._fd, [head, data], info.header_offset) != lead + hlen + nbytes:
            return None
        if (head[:4] != b"PK\x03\x04" or struct.unpack_from("<HH", head, 26)
                != (len(name), len(info.extra)) or head[30:30 + len(name)] != name
                or head[lead:] != npy_head):
            return None
        if zlib.crc32(data, zlib.crc32(memoryview(head)[lead:])) != info.CRC:
            return None                 # read_array reports it
        self._read_keys.add(key)
        self.budget -= nbytes
        return data

    def read_array(self, key: str, shape: tuple | None = None, dtype=None) -> np.ndarray:
        """Member ``key``.npy, checked against ``shape``/``dtype`` (when given) before reading.

        Without an expected shape, the header's shape must still fit in the member's actual
        bytes, which are bounded by the file's length: nothing is allocated from a size field.
        Each member is read at most once, and the bytes read by all calls together may not
        exceed the file's size (a crafted file cannot make one stored array count many times).
        """
        name = key + ".npy"
        info = self.members.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: tensor {key!r} is missing")
        if key in self._read_keys:
            raise ModelFileError(f"{self.path}: tensor {key!r} is referenced more than once")
        self._read_keys.add(key)
        try:
            with self.zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if hdtype.hasobject or hdtype.kind not in "biuf" or hdtype.fields is not None \
                        or hdtype.subdtype is not None:
                    raise ModelFileError(f"{self.path}: tensor {key!r} has dtype {hdtype} "
                                         "(object arrays and pickles are refused)")
                if fortran:
                    raise ModelFileError(f"{self.path}: tensor {key!r} is Fortran-ordered")
                if not (isinstance(hshape, tuple) and len(hshape) <= 32 and all(
                        type(d) is int and 0 <= d <= info.file_size for d in hshape)):
                    raise ModelFileError(f"{self.path}: tensor {key!r} has an invalid shape "
                                         f"{str(hshape)[:80]}")
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
                if nbytes > self.budget:
                    raise ModelFileError(f"{self.path}: the tensors declare more bytes than "
                                         f"the file's {self.size} (tensor {key!r})")
                self.budget -= nbytes
                hlen = fh.tell()        # the .npy header's length: the data follow it
            # The data, straight into the array (one read, no Python-level chunking): the
            # member's bytes start after its local header, which zf.open has just checked.
            # The CRC-32 of the whole member is checked here, as zipfile checks it at EOF.
            start = self._data_start(info)
            if start + info.compress_size > self.size:
                raise ModelFileError(f"{self.path}: tensor {key!r} is truncated")
            if info.compress_size > hlen + nbytes:
                raise ModelFileError(f"{self.path}: tensor {key!r} has trailing bytes")
            if info.compress_size < hlen + nbytes:
                raise ModelFileError(f"{self.path}: tensor {key!r} is truncated")
            arr = np.empty(count, dtype=hdtype)
            view = memoryview(arr.view(np.uint8))
            if self._pread(view, start + hlen) != nbytes:
                raise ModelFileError(f"{self.path}: tensor {key!r} is truncated")
            head = bytearray(hlen)
            self._pread(memoryview(head), start)
            crc = zlib.crc32(view, zlib.crc32(head))
            if crc != info.CRC:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
            return arr.reshape(hshape)
        except ModelFileError:
            raise
        except MemoryError:
            raise
        except Exception as exc:       # noqa: BLE001 - zipfile / .npy parsing of untrusted bytes
            raise ModelFileError(f"{self.path}: tensor {key!r} is corrupted or truncated "
                                 f"({type(exc).__name__}: {exc})") from None


def _npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    """The ``.npy`` header (magic included) NumPy writes for a C-order array of ``shape`` and
    ``dtype`` (format 1.0): what a member written by :func:`write_container` starts with."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                             "fortran_order": False, "shape": shape})
    return f.getvalue()


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _populated(nbytes: int) -> np.ndarray:
    """A fresh writeable uint8 block of ``nbytes`` (page-aligned): anonymous memory mapped with
    ``MAP_POPULATE`` where the platform has it (every page faulted in by one system call)."""
    if _MAP_POPULATE and nbytes:
        try:
            m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE)
        except (OSError, ValueError):   # pragma: no cover - e.g. a memory limit: plain memory
            pass
        else:
            return np.frombuffer(m, np.uint8)
    return np.empty(nbytes, np.uint8)


def open_container(path, kind: str, version: int | tuple) -> tuple[Container, object]:
    """(container, open file) of ``path``, whose header must say ``kind`` and ``version`` (or
    one of the versions, a tuple).

    Only regular files are read (``/dev/zero``, FIFOs, sockets and directories are refused
    with :class:`ModelFileError` before anything is read); errors opening the file (missing,
    permission) are the usual ``OSError`` subclasses, naming the path.
    """
    path_s = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused
    fd = os.open(path_s, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path_s}: not a regular file (a device, FIFO, socket or "
                                 "directory cannot hold a fastreg file)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        c = Container(f, path_s)
        fmt = c.header.get("format")
        if fmt != kind:
            raise ModelFileError(f"{path_s}: format is {repr(fmt)[:80]}, expected {kind!r}")
        ver = c.header.get("format_version")
        versions = version if isinstance(version, tuple) else (version,)
        if ver not in versions or type(ver) is not int:
            raise ModelFileError(f"{path_s}: format version {repr(ver)[:80]} is not supported "
                                 f"(this fastreg reads version "
                                 f"{' or '.join(map(str, versions))}); upgrade fastreg or "
                                 "re-save the model")
    except BaseException:
        f.close()
        raise
    return c, f


def fastreg_version() -> str:
    from .. import __version__
    return __version__


# ---------------------------------------------------------------------------------------------
# generic trees (checkpoints): JSON with arrays as members
# ---------------------------------------------------------------------------------------------

def encode_tree(obj, arrays: dict):
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
        return {"__tuple__": [encode_tree(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v, arrays) for v in obj]
    if isinstance(obj, Mapping):
        return {"__items__": [[encode_tree(k, arrays), encode_tree(v, arrays)]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a fastreg file (only dicts, lists, "
                    "tuples, numbers, strings, None and numpy arrays); e.g. a LambdaLR's "
                    "function cannot be saved")


def decode_tree(obj, c: Container, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{c.path}: state nested deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode_tree(v, c, depth + 1) for v in obj]
    if isinstance(obj, dict) and len(obj) >= 1:
        if "__float__" in obj:
            text = obj["__float__"]
            if text not in ("inf", "-inf", "nan"):
                raise ModelFileError(f"{c.path}: bad float {text!r}")
            return float(text)
        if "__array__" in obj:
            key = obj["__array__"]
            if not isinstance(key, str) or not CHILD_RE.match(key):
                raise ModelFileError(f"{c.path}: bad array reference {key!r}")
            arr = np.array(c.read_array(key))          # own, writeable copy
            return arr[()] if obj.get("scalar") else arr
        if "__tuple__" in obj and isinstance(obj["__tuple__"], list):
            return tuple(decode_tree(v, c, depth + 1) for v in obj["__tuple__"])
        if "__items__" in obj and isinstance(obj["__items__"], list):
            out = {}
            for item in obj["__items__"]:
                if not (isinstance(item, list) and len(item) == 2):
                    raise ModelFileError(f"{c.path}: malformed mapping entry")
                k = decode_tree(item[0], c, depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise ModelFileError(f"{c.path}: unhashable mapping key "
                                         f"{str(k)[:80]}") from None
                out[k] = decode_tree(item[1], c, depth + 1)
            return out
    raise ModelFileError(f"{c.path}: malformed state entry {str(obj)[:80]}")


def save_tree(path, kind: str, version: int, tree: dict, extra_header: dict) -> None:
    """Atomically write ``tree`` (arrays as members) with ``extra_header`` fields."""
    from .atomic import atomic_write
    arrays: dict[str, np.ndarray] = {}
    encoded = encode_tree(tree, arrays)
    header = {"format": kind, "format_version": version, "fastreg_version": fastreg_version(),
              **extra_header, "state": encoded}
    atomic_write(path, lambda f: write_container(f, header, arrays))


def load_tree(path, kind: str, version: int) -> tuple[dict, object]:
    """(header, decoded state tree) of a container written by :func:`save_tree`."""
    c, f = open_container(path, kind, version)
    with f:
        try:
            state = decode_tree(c.header.get("state"), c)
        except RecursionError:
            raise ModelFileError(f"{c.path}: state nested too deeply") from None
    return c.header, state
