"""Atomic files and booleans as people write them: the leaf every other module may import (standard library only).

Every file the project writes goes through `atomic_write`: a temporary file in the same folder, fsync, then
os.replace, so a reader (or a resume after a kill) sees the old file or the new one, never half of one. A folder
written as a whole (a report, the book's staged source) goes through `atomic_folder` the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys

__all__ = ["atomic_write", "atomic_json", "as_written", "atomic_folder", "parse_bool", "os_error_line", "with_hint",
           "interrupted", "reader_gone", "SIGPIPE_STATUS"]


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


def as_written(obj):
    """`obj` as atomic_json writes it and json.load reads it back (NaN and inf as None, tuples as lists)."""
    return json.loads(json.dumps(_finite(obj)))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_folder(path, check_ours, hint):
    """Build a folder whole in a temporary sibling (`<path>.tmp<pid>`, yielded), then swap it in for `path`.

    A failure inside the block (a full disk, a read-only file system, any error) removes the temporary folder and
    leaves `path` as it was; an OSError about a file in the temporary folder is reported under its final name.
    The swap is two renames on one file system (the old folder aside, the new one in), then the old one removed:
    no reader ever sees a half-built folder.

    Args:
        path: the folder to replace (created with its parents when missing).
        check_ours: callable(path), called on an existing non-empty `path`: raises (one line) unless this writer
            made it, so that a folder of the user's is never replaced.
        hint: what the folder is, in the user's terms (e.g. "--out: the report's folder"), for os_error_line.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise with_hint(OSError(errno.EEXIST, os.strerror(errno.EEXIST), path), hint)
    if _read_only(path):  # said before anything is built (the parent may be writable: the swap would fail late)
        raise with_hint(OSError(errno.EROFS, os.strerror(errno.EROFS), path), hint)
    if os.path.ismount(path):
        raise ValueError(f"{path}: is a mount point, and the folder is replaced whole by a rename, which a mount "
                         f"point cannot be; expected a folder inside it ({hint})")
    if os.path.isdir(path) and os.listdir(path):
        check_ours(path)
    _remove_stale_siblings(path)
    tmp, old = f"{path}.tmp{os.getpid()}", f"{path}.old{os.getpid()}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(tmp)
        yield tmp
        if os.path.isdir(path):
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if os.path.isdir(old):
                os.rename(old, path)
            raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for attr in ("filename", "filename2"):  # the names the user knows; the temporary folder is gone
            name = getattr(exc, attr, None) if isinstance(exc, OSError) else None
            if isinstance(name, str) and name.startswith(tmp):
                setattr(exc, attr, path + name[len(tmp):])
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_only(path):
    """True when `path` (or, when it does not exist, its nearest existing parent) is on a read-only file system."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return bool(os.statvfs(path or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _remove_stale_siblings(path):
    """Remove the `<path>.tmp<pid>` / `.old<pid>` folders that killed writers left (their process is gone)."""
    folder, name = os.path.split(path)
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        match = re.fullmatch(re.escape(name) + r"\.(?:tmp|old)(\d+)", entry)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


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


def with_hint(exc, hint):
    """Attach what the user can do about `exc` in the writer's own terms (a flag, an environment variable):
    os_error_line appends it after the system's words. Returns `exc`, to raise."""
    exc.hint = hint
    return exc


SIGPIPE_STATUS = 141  # what a shell reports for a Unix tool ended by SIGPIPE (128 + 13); `cmd | head` shows head's


def reader_gone():
    """Call on BrokenPipeError, then exit with SIGPIPE_STATUS: the reader of our stdout closed it (`... --list-runs
    | head -3`). End quietly, as Unix tools do: stdout now points at /dev/null, so that Python's own flush at exit
    does not fail on it again (and print a traceback)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or not a file descriptor: nothing left to flush
        pass


def os_error_line(exc):
    """One line for an OSError: the path it concerns, what went wrong in words a user can act on, the space left
    on a full disk, and the writer's hint (with_hint). For `error: ...` lines of the command line, instead of a
    traceback. An OSError without a file (ours, whose message names it already) is its message."""
    hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
    if exc.filename is None:
        return str(exc) + hint
    path = exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) and exc.filename2 is not None:
        path = exc.filename2  # a copy (shutil) names its source first: the destination is what cannot be written
    what = _OS_ERRORS.get(exc.errno)
    if what is None:
        return f"{path}: {exc.strerror or exc}{hint}"
    free = _free_bytes(os.path.dirname(os.path.abspath(os.fspath(path))))
    written = getattr(exc, "written", None)
    return f"{path}: " + what.format(free=_size(free), written="" if not written else
                                     f"; the file needs more than the {_size(written)} it had reached") + hint


def _size(n):
    return "unknown" if not math.isfinite(n) else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n:,} bytes"
