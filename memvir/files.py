"""Atomic files and booleans as people write them: the leaf every other module may import (standard library only).

Every file the project writes goes through `atomic_write`: a temporary file in the same folder, fsync, then
os.replace, so a reader (or a resume after a kill) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil

__all__ = ["atomic_write", "atomic_json", "parse_bool", "os_error_line", "interrupted"]


def atomic_write(path, write, mode="wb"):
    """Write a file through `write(fh)` on a temporary file beside it, then os.replace it into place.

    Args:
        path: the file to write (its folder must exist).
        write: callable(file object) that writes the content.
        mode: "wb" or "w".
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"  # the pid: two writers never share a temporary file; stale ones are named
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        # A full disk does not always say so: torch's zip writer reports a short write as a RuntimeError
        # ("unexpected pos ..."). Looked at before the temporary file is removed, the disk tells.
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC or (
            isinstance(exc, Exception) and _free_bytes(os.path.dirname(os.path.abspath(path))) < 64 * 1024)
        written = os.path.getsize(tmp) if full and os.path.exists(tmp) else None
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if full:
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            error.written = written  # how far the file got: it needs more than that
            raise error from exc
        if not isinstance(exc, KeyboardInterrupt) and interrupted(exc):
            # Ctrl-C inside torch.save: its zip writer's cleanup then fails ("unexpected pos") and hides the
            # interrupt; the user pressed Ctrl-C, so that is what propagates (the old file is untouched).
            raise KeyboardInterrupt from exc
        raise


def atomic_json(obj, path):
    """Write `obj` as JSON (NaN and inf written as null), atomically."""
    atomic_write(path, lambda fh: json.dump(_finite(obj), fh, indent=1), mode="w")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def parse_bool(text):
    """Parse a boolean as the official code (true, t, yes, 1), and reject what is neither true nor false."""
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in ("true", "t", "yes", "y", "1"):
        return True
    if s in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (or 1/0), got {text!r}")


def interrupted(exc):
    """True when a KeyboardInterrupt is in `exc`'s chain of context (an error raised while handling it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def _free_bytes(folder):
    """Bytes free for us on the device of `folder` (of its nearest existing parent); infinite when unknown."""
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or ".").free
    except OSError:
        return math.inf


# What the user can do about each kind of failure that the operating system reports.
_OS_ERRORS = {errno.ENOSPC: "no space left on its device ({free} free{written}): free some, or write elsewhere",
              errno.EDQUOT: "disk quota exceeded ({free} free)",
              errno.EROFS: "read-only file system: write elsewhere",
              errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted",
              errno.ENOTDIR: "a file stands where a folder is expected on this path",
              errno.EEXIST: "exists and is not a folder; expected a folder (or nothing there)",
              errno.EISDIR: "is a folder; expected a file",
              errno.ELOOP: "too many levels of symbolic links (a link loop?)"}


def os_error_line(exc):
    """One line for an OSError: the path it concerns, what went wrong in words a user can act on, the space left
    on a full disk. For `error: ...` lines of the command line, instead of a traceback. An OSError without a
    file (ours, whose message names it already) is its message."""
    if exc.filename is None:
        return str(exc)
    path = exc.filename
    what = _OS_ERRORS.get(exc.errno)
    if what is None:
        return f"{path}: {exc.strerror or exc}"
    free = _free_bytes(os.path.dirname(os.path.abspath(os.fspath(path))))
    written = getattr(exc, "written", None)
    return f"{path}: " + what.format(free=_size(free), written="" if written is None else
                                     f"; the file needs more than the {_size(written)} it had reached")


def _size(n):
    return "unknown" if not math.isfinite(n) else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"
