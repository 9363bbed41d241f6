"""Atomic files and booleans as people write them: the leaf every other module may import (standard library only).

Every file the project writes goes through `atomic_write`: a temporary file in the same folder, fsync, then
os.replace, so a reader (or a resume after a kill) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os

__all__ = ["atomic_write", "atomic_json", "parse_bool"]


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
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
