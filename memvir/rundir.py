"""The run folder: both sides of its format (memvir.train writes it, memvir.report and memvir.pipeline read it).

    <save_path>/
      config.json          the resolved config (memvir.config.TrainConfig as a dict), and under "kernels" the CPU
                           kernels it trained with (memvir.portable.describe: mode, capability, caps)
      metrics.json         every evaluation, the best per metric, the last, finished / stopped_early; a MemVir
                           run also full_memory_steps: the training steps that took all N past steps
      steps.csv            one row per step (StepLog.COLUMNS)
      events.out.tfevents* TensorBoard, the official scalar names
      checkpoints/         epoch_NNNNN.pt (the newest max_to_keep) and best_<metric>.pt
      .lock                held (flock) by the one process training here (a regular file; anything else there is
                           refused in one line)

Every file is written by memvir.files.atomic_write (the old file or the new one, never half of one), as every other
file the project writes.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import glob
import json
import math
import os
import re
import stat

from .files import as_written, atomic_json, atomic_write, parse_bool

__all__ = ["run_name", "run_folder", "RunLock", "RunFolderBusy", "remove_stale_temporaries",
           "CHECKPOINT_FORMAT", "BEST_METRICS", "CheckpointError", "CheckpointRefused", "TRAINING_FIELDS",
           "checkpoint_path", "best_path", "epoch_checkpoints", "save_checkpoint", "link_best", "load_checkpoint",
           "load_state", "latest_checkpoint", "new_history", "record_evaluation", "check_history", "read_metrics",
           "repair_metrics", "StepLog", "get_rng_state", "set_rng_state", "run_state", "read_run", "RunOutputs",
           "write_eval_scalars", "check_same_run", "KERNELS_KEY", "is_run_config", "start_afresh"]


# ----------------------------------------------------------------------------------------------------------------
# Names


def run_name(params, tag=""):
    """Name a run folder after its parameters, e.g. glyphs_normsoftmax_memvir1_N5_M20_U24_e36_seed0.

    The one naming scheme: the pipeline's run folders and the trainer's default --save_path both use it.

    Args:
        params: the run's parameters (raw or resolved); uses data_name, loss, memvir, mem_num_step, mem_step_gap,
            warm_epoch, epochs, seed.
        tag: optional suffix (before the seed) for rows that differ in anything else.
    """
    for key in ("data_name", "loss", "epochs", "seed"):
        if key not in params:
            raise ValueError(f"run parameters: missing {key!r} (needed to name the run folder)")
    # Every value in the name must be one plain word: a loss "Norm_SoftMax/../../x" or epochs "1/../x" would put
    # the run folder (and all it writes) elsewhere. Checked here, where every run name is made, before any write.
    keys = ["data_name", "loss", "epochs", "seed"]
    try:
        memvir = parse_bool(params.get("memvir", False))
    except Exception:  # argparse's ArgumentTypeError: not a ValueError
        raise ValueError(f"parameter memvir={params['memvir']!r}: expected true or false") from None
    if memvir:
        keys += ["mem_num_step", "mem_step_gap", "warm_epoch"]
        for key in ("mem_num_step", "mem_step_gap"):
            if key not in params:
                raise ValueError(f"run parameters: memvir is on but {key!r} is missing (needed to name the run "
                                 f"folder)")
    for key in keys:
        if key in params and not re.fullmatch(r"[A-Za-z0-9.+_-]+", str(params[key])):
            raise ValueError(f"parameter {key}={params[key]!r} would be part of the run folder's name; expected "
                             f"letters, digits, '.', '+', '_' or '-' (no '/', space or other character)")
    loss = str(params["loss"]).lower().replace("_", "").replace("-", "")
    parts = [str(params["data_name"]).lower(), loss]
    if memvir:
        parts.append(f"memvir1_N{params['mem_num_step']}_M{params['mem_step_gap']}_U{params.get('warm_epoch', 0)}")
    else:
        parts.append("memvir0")
    parts.append(f"e{params['epochs']}")
    if tag:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", tag):
            raise ValueError(f"run tag must be letters, digits, '.' or '-', got {tag!r}")
        parts.append(tag)
    parts.append(f"seed{params['seed']}")
    return "_".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# One owner per run folder


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_folder(path):
    """Create the run folder `path` (and its missing parents) for the block; when the block fails before anything
    but the lock was written there (a bad flag found while building the data or the model, weights that cannot
    be had, Ctrl-C), remove what it created: a failed start leaves no empty run folder behind."""
    created, p = [], os.path.abspath(os.fspath(path))
    while not os.path.lexists(p) and p != os.path.dirname(p):
        created.append(p)  # deepest first
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                if os.listdir(folder) == [".lock"] and folder == created[0]:
                    os.remove(os.path.join(folder, ".lock"))
                os.rmdir(folder)  # only when empty: a folder with anything in it stays
        raise


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def _not_a_file(path):
    """What `path` is when it exists and is not a regular file ("a folder", "a FIFO", ...), else None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(mode) else next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


class RunLock:
    """An exclusive OS lock (flock) on <save_path>/.lock, held while a process trains there.

    The kernel drops a flock when its process ends, however it ends, so a kill never leaves the folder stuck.
    The holder writes its pid into the file, so a second process can say who is training there.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, ".lock")
        self.fh = None

    def __enter__(self):
        import fcntl

        kind = _not_a_file(self.path)
        if kind is not None:  # open() would fail on a folder, block on a FIFO, follow a link anywhere
            raise ValueError(f"{self.path}: is {kind}, not the run folder's lock (a regular file that memvir "
                             f"creates and holds while it trains there); remove it, then run again")
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            fh.close()
            raise RunFolderBusy(f"{os.path.dirname(self.path)}: another process (pid {pid}) is training in this "
                                f"run folder; wait for it to end, or use another --save_path") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        remove_stale_temporaries(os.path.dirname(self.path))  # what killed writers left: we own the folder now
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing the file releases the flock
        self.fh = None


# What a run folder holds (the module docstring): the only names start_afresh may remove. Beside them a run folder
# may hold notebooks (papermill writes the executed training notebook there); they are left where they are.
RUN_FILES = re.compile(r"config\.json|metrics\.json|steps\.csv|\.lock|events\.out\.tfevents\..+|.+\.tmp\d+")
CHECKPOINT_FILES = re.compile(r"(epoch_\d+|best_[a-z0-9_]+)\.pt(\.corrupt\d*|\.tmp\d+)?")
RUN_KEYS = ("data_name", "loss", "epochs", "seed")  # in every config.json memvir.train writes (run_name's keys)


def is_run_config(config):
    """True when `config` (a parsed config.json) is one that memvir.train wrote: a mapping with the run's keys."""
    return isinstance(config, dict) and all(k in config for k in RUN_KEYS)


def start_afresh(folder):
    """Remove a previous run from `folder` so that a new run starts there; refuse when anything else is there.

    Only a run's own files are removed (config.json, metrics.json, steps.csv, TensorBoard events, checkpoints/ with
    epoch_*.pt and best_*.pt, the lock, killed writers' temporaries), and only when config.json is one memvir
    wrote; notebooks stay. A folder holding anything else (a thesis, a source tree, a config.json of another
    program) is the user's: a ValueError names what is there, and nothing is removed. Returns the removed names.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    config = os.path.join(folder, "config.json")
    try:
        with open(config) as fh:
            ours = is_run_config(json.load(fh))
    except FileNotFoundError:
        ours = True  # no config.json: only run files (a run killed before it wrote one) may be removed
    except (OSError, ValueError):
        ours = False
    names, foreign = sorted(os.listdir(folder)), []
    for name in names:
        path = os.path.join(folder, name)
        if name == "checkpoints" and stat.S_ISDIR(os.lstat(path).st_mode):
            foreign += [f"checkpoints/{n}" for n in sorted(os.listdir(path)) if not CHECKPOINT_FILES.fullmatch(n)
                        or not stat.S_ISREG(os.lstat(os.path.join(path, n)).st_mode)]
        elif not (RUN_FILES.fullmatch(name) or name.endswith(".ipynb")) or stat.S_ISDIR(os.lstat(path).st_mode):
            foreign.append(name)
    if not ours or foreign:
        what = f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}" if foreign else \
            "a config.json that memvir did not write (no " + ", ".join(RUN_KEYS) + ")"
        raise ValueError(f"{folder}: holds {what}, which is not a memvir run's; starting afresh removes only a "
                         f"run's own files: choose another save_path (or move those files away)")
    removed = []
    with RunLock(folder):  # refused while another process trains here; its files are not ours to remove
        for name in names:
            path = os.path.join(folder, name)
            if name == "checkpoints":
                for n in sorted(os.listdir(path)):
                    os.remove(os.path.join(path, n))
                    removed.append(f"checkpoints/{n}")
                os.rmdir(path)
            elif name not in (".lock",) and not name.endswith(".ipynb") and os.path.lexists(path):
                os.remove(path)
                removed.append(name)
    return removed


def remove_stale_temporaries(folder):
    """Remove the <file>.tmp<pid> files that killed writers left in a run folder and its checkpoints/."""
    for sub in (folder, os.path.join(folder, "checkpoints")):
        for path in glob.glob(os.path.join(glob.escape(sub), "*.tmp[0-9]*")):
            if re.search(r"\.tmp\d+$", path):
                with contextlib.suppress(OSError):
                    os.remove(path)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: checkpoints/epoch_NNNNN.pt and best_<metric>.pt

CHECKPOINT_FORMAT = 1
KERNELS_KEY = "kernels"  # config.json's one key that is not a flag: the CPU kernels of the run
BEST_METRICS = ("recall@1", "r_precision", "map_at_r")


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
    import pickle

    import torch

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
    import torch

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


# ----------------------------------------------------------------------------------------------------------------
# metrics.json: every evaluation, the best per metric, the last


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
            return f"missing key {key!r}; expected {keys} (see memvir/rundir.py)"
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


# ----------------------------------------------------------------------------------------------------------------
# Writing while training: config.json, steps.csv, TensorBoard events


class RunOutputs:
    """The files rank 0 writes while training: config.json, steps.csv and TensorBoard events (closed on exit)."""

    def __init__(self, cfg, step, is_main, kernels=None):
        self.cfg, self.step, self.is_main, self.kernels = cfg, step, is_main, kernels
        self.steps = self.writer = None

    def __enter__(self):
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # The flags, and the CPU kernels the run trained with (memvir.portable.describe): not a flag, a fact.
            config = dataclasses.asdict(self.cfg)
            if self.kernels is not None:
                config[KERNELS_KEY] = self.kernels
            atomic_json(config, os.path.join(self.cfg.save_path, "config.json"))
            self.steps = StepLog(os.path.join(self.cfg.save_path, "steps.csv"), keep_below=self.step)
            # purge_step hides the events a killed run wrote after its last checkpoint (all of them when none).
            writer = SummaryWriter(self.cfg.save_path, purge_step=self.step)
            events = getattr(getattr(writer.file_writer, "event_writer", None), "_file_name", self.cfg.save_path)
            self.writer = _NamedErrors(writer, events)
        return self

    def __exit__(self, *exc):
        for f in (self.steps, self.writer):
            if f is not None:
                f.close()


def write_eval_scalars(writer, ev, history, improved, ks):
    """TensorBoard scalars with the official names (eval_epoch/*, eval_step/*, *_best)."""
    for k in ks:
        writer.add_scalar(f"eval_epoch/Recall_{k}", ev[f"recall@{k}"], ev["epoch"])
        writer.add_scalar(f"eval_step/Recall_{k}", ev[f"recall@{k}"], ev["step"])
    for name, key in (("RP", "r_precision"), ("MAP", "map_at_r"), ("NMI", "nmi")):
        if ev.get(key) is not None:
            writer.add_scalar(f"eval_epoch/{name}", ev[key], ev["epoch"])
            writer.add_scalar(f"eval_step/{name}", ev[key], ev["step"])
    for name, key in {"Recall_1": "recall@1", "RP": "r_precision", "MAP": "map_at_r"}.items():
        if key in improved:
            writer.add_scalar(f"eval_epoch/{name}_best", history["best"][key]["value"], ev["epoch"])
    for key, value in (ev.get("val") or {}).items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"eval_val/{key}", value, ev["epoch"])




class _NamedErrors:
    """`target`'s methods, whose OSError without a file name (a buffered write on a full disk: "[Errno 28] No space
    left on device") is given `path`, so that memvir.files.os_error_line names the file."""

    def __init__(self, target, path):
        self._target, self._path = target, path

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def named(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except OSError as exc:
                if exc.filename is None:
                    exc.filename = self._path
                raise
        return named


class StepLog:
    """steps.csv: one row per step, appended; on resume the rows of steps after the checkpoint are dropped."""

    COLUMNS = ("step", "epoch", "loss", "lr", "num_taken", "num_classes_in_use", "num_embeddings_in_use")

    def __init__(self, path, keep_below=0):
        kept = []
        if keep_below > 0 and os.path.exists(path):
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    try:
                        if int(row["step"]) < keep_below and None not in row.values():
                            kept.append([row[c] for c in self.COLUMNS])
                    except (TypeError, ValueError, KeyError):
                        pass  # a line cut short by a kill
        atomic_write(path, lambda fh: csv.writer(fh).writerows([self.COLUMNS, *kept]), mode="w")
        self.fh = _NamedErrors(open(path, "a", newline=""), path)  # a full disk shows at a write or the flush
        self.writer = csv.writer(self.fh)

    def write(self, step, epoch, loss, lr, num_taken, classes, embeddings):
        self.writer.writerow([step, epoch, repr(float(loss)), repr(float(lr)), num_taken, classes, embeddings])

    def flush(self):
        self.fh.flush()

    def close(self):
        self.fh.close()


def check_same_run(cfg, resume, may_differ):
    """Refuse to continue a run whose checkpoint (or config.json) was made with other flags; list the differences."""
    if resume is not None:
        saved, source = resume[1]["config"], resume[0]
    else:
        path = os.path.join(cfg.save_path, "config.json")
        if not os.path.exists(path):
            return
        try:
            with open(path) as fh:
                saved, source = json.load(fh), path
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); it says which flags made the run: restore it, or "
                             f"remove it to start the run afresh") from None
        if not is_run_config(saved):  # another program's config.json: listing "differences" would invent them
            raise ValueError(f"{path}: not a memvir run's config (expected a mapping with {', '.join(RUN_KEYS)}, "
                             f"as memvir.train writes); this folder is not a run folder: use another --save_path")
    now = dataclasses.asdict(cfg)
    # A flag added after the run was made is absent from its config: the run had that flag's default behaviour.
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    diffs = [f"--{k}: {saved.get(k, defaults[k])!r} there, {now[k]!r} now" for k in now
             if k not in may_differ and saved.get(k, defaults[k]) != now[k]]
    if diffs:
        raise ValueError(f"{cfg.save_path} holds a run made with other flags ({source}): " + "; ".join(diffs)
                         + ". Use another --save_path, or the same flags to resume")
    if resume is not None and cfg.epochs < resume[1]["epoch"]:
        raise ValueError(f"--epochs={cfg.epochs}: {source} is at epoch {resume[1]['epoch']} already; expected "
                         f"--epochs >= {resume[1]['epoch']} (epochs may grow on resume, not shrink)")


# ----------------------------------------------------------------------------------------------------------------
# Random generators (saved in every checkpoint)


def get_rng_state() -> dict:
    """The state of every random generator, as tensors and plain types (loadable with weights_only=True)."""
    import random

    import numpy as np
    import torch

    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
            "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss}}


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state returned."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ----------------------------------------------------------------------------------------------------------------
# Reading a run folder (memvir.report, memvir.pipeline)


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
