"""metrics.json: every evaluation, the best per metric, the last; checked when read, rebuilt when behind."""
from __future__ import annotations

import json
import math
import os

from ..files import as_written, atomic_json

BEST_METRICS = ("recall@1", "r_precision", "map_at_r")  # the metrics with a best_<metric>.pt checkpoint


def new_history():
    return {"evaluations": [], "best": {}, "last": None, "finished": False, "stopped_early": None}


def check_history(history, where):
    """Raise a ValueError naming `where` (metrics.json, a checkpoint) and the key when `history` is not what
    new_history and record_evaluation make: the report and a resume read it by these keys and types."""
    problem = _history_problem(history)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


_HISTORY_KEYS = (("evaluations", list), ("best", dict), ("last", (dict, type(None))), ("finished", bool))


def _history_problem(history):
    """What is wrong with a history (metrics.json's content), in words; None when nothing is."""
    keys = ", ".join(k for k, _ in _HISTORY_KEYS)
    if not isinstance(history, dict):
        return f"expected a mapping with keys {keys}, got {_kind(history)}"
    for key, kind in (*_HISTORY_KEYS, ("stopped_early", (int, type(None))), ("full_memory_steps", int)):
        if key not in history:
            if key in ("stopped_early", "full_memory_steps"):  # optional (the latter: MemVir runs only)
                continue
            return f"missing key {key!r}; expected {keys} (see memvir/rundir/history.py)"
        value = history[key]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            return f"{key!r} is {_kind(value)}; expected {_expected(kind)}"
    evaluations = [(f"'evaluations'[{i}]", ev) for i, ev in enumerate(history["evaluations"])]
    for where, ev in evaluations + ([("'last'", history["last"])] if history["last"] is not None else []):
        problem = _evaluation_problem(ev)
        if problem is not None:
            return f"{where}: {problem}"
    for metric, best in history["best"].items():
        if not isinstance(best, dict) or not _is_int(best.get("epoch")) or not _is_finite(best.get("value")):
            what = (f"a mapping whose 'epoch' is {_kind(best.get('epoch'))} and 'value' {_kind(best.get('value'))}"
                    if isinstance(best, dict) else _kind(best))
            return (f"'best'/{metric!r} is {what}; expected a mapping with an integer 'epoch' and a finite number "
                    f"'value'")
    return None


def _evaluation_problem(ev):
    """What is wrong with one evaluation (record_evaluation's `ev`) in words; None when nothing is."""
    if not isinstance(ev, dict):
        return f"is {_kind(ev)}; expected a mapping (epoch, step, the metrics)"
    if not _is_int(ev.get("epoch")):
        return f"'epoch' is {_kind(ev.get('epoch'))}; expected an integer"
    val = ev.get("val")
    if val is not None and not isinstance(val, dict):
        return f"'val' is {_kind(val)}; expected a mapping of validation metrics or null"
    for key, value in [*ev.items(), *((val or {}).items())]:
        if (key in BEST_METRICS or key.startswith("recall@")) and value is not None and not _is_finite(value):
            return f"{key!r} is {_kind(value)}; expected a finite number or null"
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value):
    """A metric's value: a number that is not NaN or inf (JSON's NaN parses, and a table of it would mean nothing)."""
    return _is_number(value) and math.isfinite(value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def read_metrics(folder):
    """Read <folder>/metrics.json and check it (check_history); a ValueError names the file and what is wrong."""
    path = os.path.join(folder, "metrics.json")
    try:
        with open(path) as fh:
            metrics = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    check_history(metrics, path)
    return metrics


def repair_metrics(folder, history, source):
    """Make <folder>/metrics.json hold `history` (a checkpoint's: the truth) when it does not: damaged, missing,
    or behind it (a kill between the checkpoint and the file). Returns one line saying what was repaired, or None.

    Args:
        source: the checkpoint the history comes from (named in the line).
    """
    path = os.path.join(folder, "metrics.json")
    expected = as_written(history)
    try:
        if read_metrics(folder) == expected:
            return None
        problem = f"it differs from the history in {source}"
    except FileNotFoundError:
        problem = "missing"
    except (ValueError, OSError) as exc:
        problem = str(exc).split(": ", 1)[-1] if str(exc).startswith(path) else str(exc)
    atomic_json(history, path)
    return f"{path}: {problem}; rebuilt it from the history in {source}"


def record_evaluation(history: dict, ev: dict) -> list[str]:
    """Append an evaluation to the history, update the best per metric, return the metrics that improved."""
    ev = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in ev.items()}
    history["evaluations"].append(ev)
    history["last"] = ev
    improved = []
    for key in BEST_METRICS:
        value, best = ev.get(key), history["best"].get(key)
        if value is not None and (best is None or value > best["value"]):
            history["best"][key] = {"epoch": ev["epoch"], "step": ev["step"], "value": value}
            improved.append(key)
    return improved



def _kind(value):
    """A value's type in words (JSON's where it has one): "a list", "null", "the text '...'"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"the text {value[:30]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    names = {list: "a list", tuple: "a list", dict: "a mapping"}
    return next((n for t, n in names.items() if isinstance(value, t)), f"a {type(value).__name__}")


def _expected(kind):
    words = {int: "an integer", float: "a number", str: "a text", list: "a list", dict: "a mapping",
             bool: "true or false", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kinds == (int, float):
        return "a number"
    return " or ".join(words.get(k, k.__name__) for k in kinds)

