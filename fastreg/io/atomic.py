"""Atomic file writing: readers see either the old file or the complete new one.

Guarantees of :func:`atomic_write` (model files and checkpoints are written through it):

* **atomic**: the content goes to a temporary file ``.<name>.<random>.tmp`` beside the target,
  is fsynced and renamed over it (``os.replace``), and the directory is fsynced; a crash or
  ``kill -9`` at any point leaves the previous file (or none) under the final name;
* **symlinks**: a target that is a symbolic link is written through: the link stays, its
  (fully resolved) target receives the new content;
* **mode**: a new file gets ``0o666 & ~umask`` (as ``open()`` and ``np.save`` create files);
  overwriting keeps the existing file's permission bits;
* **stale temporaries** left by a killed save of the same target (fastreg's own pattern, last
  modified before this process started) are removed by the next save;
* **errors** name the path the caller asked for, never the temporary file.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from collections.abc import Callable

__all__ = ["atomic_write"]

#: ``tempfile.mkstemp``'s random part: 8 characters of [a-z0-9_].
_TMP_RANDOM = r"[a-z0-9_]{8}"


def _process_start_time() -> float:
    """Wall-clock start time of this process (Linux: /proc; elsewhere: fastreg's import)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])                 # field 22: start time in clock ticks after boot
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()
_START = _process_start_time()


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


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)          # pragma: no cover - non-Linux: the (racy) classic way
    os.umask(mask)                  # pragma: no cover
    return mask                     # pragma: no cover


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Remove ``.<name>.<random>.tmp`` files older than this process (killed saves)."""
    pattern = re.compile(r"^\." + re.escape(name) + r"\." + _TMP_RANDOM + r"\.tmp$")
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not pattern.match(entry):
            continue
        full = os.path.join(directory, entry)
        try:
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < _START:
                os.unlink(full)
        except OSError:
            pass


def _name_target(exc: OSError, path: str) -> OSError:
    """``exc`` re-raised with the caller's path instead of the temporary file's."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, path)     # (the errno's subclass, e.g. PermissionError)


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Write a file so that readers see either the old or the complete new content.

    ``write(f)`` writes into a temporary file in the same directory as the target, which is
    flushed, fsynced, given its final mode and renamed over the target (``os.replace`` is atomic
    on POSIX and Windows); the directory is then fsynced so that the rename itself survives a
    crash. On any error the temporary file is removed and the target is untouched. See the
    module docstring for symlinks, modes and stale temporaries.
    """
    path = os.fspath(path)
    target = os.path.realpath(path)                # write through symbolic links
    directory, name = os.path.split(target)
    _remove_stale_temporaries(directory, name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise _name_target(exc, path) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
    except OSError as exc:
        raise _name_target(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _name_target(exc, path) from None
        raise
    _fsync_dir(directory)
