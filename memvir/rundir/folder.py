"""The run folder itself: its name, its one owner (an OS lock), and starting afresh in it."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import stat

from ..files import parse_bool

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

