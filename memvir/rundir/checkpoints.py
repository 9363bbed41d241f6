"""Checkpoints: checkpoints/epoch_NNNNN.pt and best_<metric>.pt, written whole, read with tensors only, checked
field by field; a damaged one is moved aside and the one before it is used."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import pickle
import re

from ..files import atomic_write
from .history import _expected, _history_problem, _kind

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged); the message names the file and what is wrong, in one line."""


class CheckpointRefused(CheckpointError):
    """A checkpoint that is whole but must not be used here: one that could run code, or one a newer memvir wrote.
    Never moved aside (nothing is wrong with it)."""


# What memvir.train writes in every checkpoint, and the type of each field: a checkpoint whose field is missing or
# of another type is damaged (a hand edit, another program), moved aside like an unreadable one. A tuple: any of
# those types; a dict: a mapping with these fields; "tensors": a mapping from names to tensors (a state_dict).
TRAINING_FIELDS = {
    "config": dict, "epoch": int, "step": int, "elapsed": (int, float), "model": "tensors", "criterion": "tensors",
    "optimizer": {"state": dict, "param_groups": list}, "lrs": list, "scaler": dict, "sampler": dict,
    "rng": {"torch": "tensor", "cuda": list, "numpy": {"name": str, "keys": "tensor", "pos": int, "has_gauss": int,
                                                       "cached_gaussian": (int, float)},
            "python": {"version": int, "state": list, "gauss_next": (float, type(None))}},
    "history": "history", "early_stop_count": int}
OPTIONAL_FIELDS = {"data": {"sha256": str}}  # absent in checkpoints made before the data were fingerprinted


def checkpoint_path(ckpt_dir, epoch):
    return os.path.join(ckpt_dir, f"epoch_{epoch:05d}.pt")


def best_path(ckpt_dir, metric):
    return os.path.join(ckpt_dir, f"best_{metric.replace('@', '_')}.pt")


def epoch_checkpoints(ckpt_dir):
    """The epoch checkpoints of a folder, oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), "epoch_[0-9]*.pt")))


def save_checkpoint(state, ckpt_dir, epoch, max_to_keep, improved):
    """Write checkpoints/epoch_NNNNN.pt, keep the newest max_to_keep (0: all), link best_<metric>.pt to it."""
    # torch is imported here, not at the top: the report and the pipeline import memvir.rundir and never load
    # torch (4 s); only a checkpoint's reader or writer pays for it.
    import torch

    os.makedirs(ckpt_dir, exist_ok=True)
    path = checkpoint_path(ckpt_dir, epoch)
    atomic_write(path, lambda fh: torch.save(state, fh))
    link_best(path, ckpt_dir, improved)
    if max_to_keep > 0:
        for old in epoch_checkpoints(ckpt_dir)[:-max_to_keep]:
            os.remove(old)


def link_best(path, ckpt_dir, metrics):
    """Make checkpoints/best_<metric>.pt another name of the checkpoint file `path`, for each metric given.

    A hard link costs no disk and no write time (a BN-Inception checkpoint is ~100 MB, and a best file changes at
    most every evaluation). The price: the two names are one file, so damage to its bytes shows under both.
    Our writes never damage a file in place (atomic_write replaces whole files), so that takes a disk fault or
    a hand edit, and then load_checkpoint names the file.
    """
    for key in metrics:
        best = best_path(ckpt_dir, key)
        tmp = f"{best}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        try:
            os.link(path, tmp)  # a second name for the same file: survives the epoch file's deletion
        except OSError:  # a file system without hard links: copy
            with open(path, "rb") as src:
                atomic_write(tmp, lambda fh: fh.write(src.read()))
        os.replace(tmp, best)  # atomic: best_* is always a whole checkpoint


def load_checkpoint(path, device="cpu", fields=()):
    """Load a checkpoint with torch.load(weights_only=True): tensors and plain Python values only.

    Args:
        fields: the fields of TRAINING_FIELDS the caller needs (a resume: all of them): each must be there, of its
            type, else the checkpoint is damaged.
    Raises:
        CheckpointError (one line, naming the file) for a truncated or damaged file, one that is not a memvir.train
        checkpoint, or one that lacks a field of `fields` (or has it of another type). CheckpointRefused, its
        subclass, for a file that holds other objects (a pickle that could run code is never unpickled) or one
        written by a newer memvir (a newer checkpoint format).
    """
    import torch  # deferred: see save_checkpoint

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"global|unsupported class", str(exc), re.I):  # names objects beyond tensors: never unpickled
            # torch's message would advise weights_only=False, i.e. running the file's code: never relay that.
            raise CheckpointRefused(f"{path}: refused: it holds objects other than tensors and plain values (a "
                                    f"pickle that could run code); memvir never writes such a file") from None
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:120]
        raise CheckpointError(f"{path}: unreadable ({reason}); the file is damaged or truncated") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except Exception as exc:  # truncated zip, flipped bytes: torch raises RuntimeError, UnicodeDecodeError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {reason[:120]}); the file is damaged "
                              f"or truncated") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if type(fmt) is int and fmt > CHECKPOINT_FORMAT:
        raise CheckpointRefused(f"{path}: written by a newer memvir (checkpoint format {fmt}; this memvir reads "
                                f"format {CHECKPOINT_FORMAT}): upgrade memvir to use it, or use another --save_path")
    if type(fmt) is not int or fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a memvir.train checkpoint (format {CHECKPOINT_FORMAT})")
    problem = _field_problem(ckpt, {k: TRAINING_FIELDS[k] for k in fields}, optional=OPTIONAL_FIELDS)
    if problem is not None:
        raise CheckpointError(f"{path}: damaged: {problem}")
    return ckpt


def _field_problem(obj, schema, where="", optional=None):
    """The first field of `obj` that is missing or of another type than `schema` says, in words; None when none."""
    fields = [(k, v, False) for k, v in schema.items()] + [(k, v, True) for k, v in (optional or {}).items()]
    for key, kind, may_lack in fields:
        if key not in obj:
            if may_lack:
                continue
            return f"its field '{where}{key}' is missing"
        problem = _value_problem(obj[key], kind, f"{where}{key}")
        if problem is not None:
            return problem
    return None


def _value_problem(value, kind, name):
    """What is wrong with the field `name` of a checkpoint, whose schema is `kind` (see TRAINING_FIELDS)."""
    import torch  # deferred: see save_checkpoint

    if kind == "history":
        problem = _history_problem(value)
        return None if problem is None else f"its field '{name}': {problem}"
    if kind == "tensor":
        return None if isinstance(value, torch.Tensor) else f"its field '{name}' is {_kind(value)}; expected a tensor"
    if kind == "tensors":
        if not isinstance(value, dict):
            return f"its field '{name}' is {_kind(value)}; expected a mapping from names to tensors"
        # A module's get_extra_state() is saved under '<prefix>_extra_state' and may be any object (XBM's
        # memory saves a mapping): torch's state_dict format allows it, so it is not ours to refuse.
        bad = next((k for k, t in value.items() if not isinstance(t, torch.Tensor)
                    and not str(k).endswith("_extra_state")), None)
        return None if bad is None else f"its field '{name}.{bad}' is {_kind(value[bad])}; expected a tensor"
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return f"its field '{name}' is {_kind(value)}; expected a mapping"
        return _field_problem(value, kind, f"{name}.")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        return f"its field '{name}' is {_kind(value)}; expected {_expected(kind)}"
    return None

def load_state(target, ckpt, key, path):
    """target.load_state_dict(ckpt[key]); a state that does not fit (other shapes, keys, types) is a damaged
    checkpoint (the caller checked that the flags and data are the run's), said in one line naming the field."""
    try:
        target.load_state_dict(ckpt[key])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: damaged: its field '{key}' does not fit the run its config describes "
                              f"({' '.join(str(exc).split())[:200]})") from None


def latest_checkpoint(ckpt_dir, device="cpu", warn=print, fields=(), damaged=None):
    """Return (path, checkpoint) of the newest usable epoch checkpoint, or None when there is none.

    An unreadable or damaged newest file (load_checkpoint with `fields`) is moved aside as <name>.corrupt (never
    deleted) and the next older one is tried, with one line through `warn`; when no older one is left, a
    CheckpointError says so. A refused one (CheckpointRefused: a newer memvir's, one that could run code) stops
    the search: it is left where it is, and nothing is retrained over it.

    Args:
        damaged: (path, CheckpointError) of a checkpoint the caller found damaged after loading it (its tensors do
            not fit the run its own config describes): moved aside first, then the search goes on.
    """
    if os.path.lexists(ckpt_dir) and not os.path.isdir(ckpt_dir):  # said now, not when the first epoch is saved
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(ckpt_dir))
    paths = epoch_checkpoints(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    bad = []
    if damaged is not None:
        path, exc = damaged
        aside = _aside(path)
        os.replace(path, aside)
        bad.append((path, aside, exc))
        paths = [p for p in paths if p != path]
    for path in reversed(paths):
        try:
            ckpt = load_checkpoint(path, device, fields)
        except CheckpointRefused:
            raise
        except CheckpointError as exc:
            aside = _aside(path)
            os.replace(path, aside)
            bad.append((path, aside, exc))
            continue
        for p, aside, exc in bad:
            warn(f"{exc}; moved it aside to {os.path.basename(aside)} and resumed from {os.path.basename(path)}")
        return path, ckpt
    if bad:
        p, aside, exc = bad[0]
        raise CheckpointError(f"{exc}; moved it aside to {os.path.basename(aside)}. No older checkpoint is left "
                              f"to resume from (--max_to_keep=1 keeps one): start afresh in another --save_path, "
                              f"or remove {os.path.dirname(p)} to retrain here")
    return None


def _aside(path):
    aside, n = f"{path}.corrupt", 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.corrupt{n}"
    return aside

