"""The run folder: both sides of its format (memvir.train writes it, memvir.report and memvir.pipeline read it).

    <save_path>/
      config.json          the resolved config (memvir.config.TrainConfig as a dict)
      metrics.json         every evaluation, the best per metric, the last, finished / stopped_early
      steps.csv            one row per step (StepLog.COLUMNS)
      events.out.tfevents* TensorBoard, the official scalar names
      checkpoints/         epoch_NNNNN.pt (the newest max_to_keep) and best_<metric>.pt
      .lock                held (flock) by the one process training here

Every file is written by `atomic_write`: a temporary file in the same folder, fsync, then os.replace, so a reader
(or a resume after a kill) sees the old file or the new one, never half of one. The project's other writers (the
glyph cache, `prepare`'s manifest) use it too.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

__all__ = ["atomic_write", "atomic_json"]


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
