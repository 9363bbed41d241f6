"""Reading a run folder (memvir.report, memvir.pipeline): is it finished, and its config, metrics and steps."""
from __future__ import annotations

import json
import os

from .history import _kind, read_metrics


def run_state(folder):
    """Return "finished", "partial" (metrics.json says finished: false) or "missing" (no metrics.json)."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return "missing"
    try:
        with open(path) as fh:
            done = json.load(fh).get("finished") is True
    except (json.JSONDecodeError, AttributeError, OSError):
        return "partial"  # damaged: the run has to go on
    return "finished" if done else "partial"


def read_run(folder):
    """Read a run folder: (config dict, metrics dict, steps DataFrame or None).

    Args:
        folder: a run folder written by memvir.train (config.json, metrics.json, steps.csv).
    """
    # Imported here: pandas (the 'train' extra) takes 0.8 s, and the pipeline imports memvir.rundir without it.
    import pandas as pd

    for name in ("config.json", "metrics.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: run {os.path.basename(os.fspath(folder))} has not "
                                    f"been trained (make runs, or python -m memvir pipeline --run NAME)")
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of flags, got {_kind(config)}")
    metrics = read_metrics(folder)
    steps_path = os.path.join(folder, "steps.csv")
    try:
        steps = pd.read_csv(steps_path) if os.path.isfile(steps_path) else None
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError and ParserError are ValueErrors
        raise ValueError(f"{steps_path}: not a readable CSV ({' '.join(str(exc).split())[:120]})") from None
    return config, metrics, steps
