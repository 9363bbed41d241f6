"""The run folder: both sides of its format (memvir.train writes it, memvir.report and memvir.pipeline read it).

    <save_path>/
      config.json          the resolved config (memvir.config.TrainConfig as a dict), and under "kernels" the CPU
                           kernels it trained with (memvir.portable.describe: mode, capability, caps)
      metrics.json         every evaluation, the best per metric, the last, finished / stopped_early; a MemVir
                           run also full_memory_steps: the training steps that took all N past steps
      steps.csv            one row per step (StepLog.COLUMNS)
      events.out.tfevents* TensorBoard, the official scalar names
      checkpoints/         epoch_NNNNN.pt (the newest max_to_keep) and best_<metric>.pt
      .lock                held (flock) by the one process training here

Every file is written by memvir.files.atomic_write (the old file or the new one, never half of one), as every other
file the project writes.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import json
import math
import os
import re

from .files import atomic_json, atomic_write, parse_bool

__all__ = ["run_name", "RunLock", "RunFolderBusy", "remove_stale_temporaries",
           "CHECKPOINT_FORMAT", "BEST_METRICS", "CheckpointError", "checkpoint_path", "best_path",
           "epoch_checkpoints", "save_checkpoint", "link_best", "load_checkpoint", "latest_checkpoint",
           "new_history", "record_evaluation", "StepLog", "get_rng_state", "set_rng_state", "run_state",
           "read_run", "RunOutputs", "write_eval_scalars", "check_same_run", "KERNELS_KEY"]


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
    loss = str(params["loss"]).lower().replace("_", "").replace("-", "")
    parts = [str(params["data_name"]).lower(), loss]
    if parse_bool(params.get("memvir", False)):
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
    """A checkpoint that cannot be used; the message names the file and what is wrong, in one line."""


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


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint with torch.load(weights_only=True): tensors and plain Python values only.

    Raises:
        CheckpointError (one line, naming the file) for a truncated or damaged file, one that holds other objects
        (a pickle that could run code is never unpickled), or one that is not a memvir.train checkpoint.
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"global|unsupported class", str(exc), re.I):  # names objects beyond tensors: never unpickled
            # torch's message would advise weights_only=False, i.e. running the file's code: never relay that.
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values (a "
                                  f"pickle that could run code); memvir never writes such a file") from None
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:120]
        raise CheckpointError(f"{path}: unreadable ({reason}); the file is damaged or truncated") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except Exception as exc:  # truncated zip, flipped bytes: torch raises RuntimeError, UnicodeDecodeError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {reason[:120]}); the file is damaged "
                              f"or truncated") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a memvir.train checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def latest_checkpoint(ckpt_dir, device="cpu", warn=print):
    """Return (path, checkpoint) of the newest readable epoch checkpoint, or None when there is none.

    An unreadable newest file is moved aside as <name>.corrupt (never deleted) and the next older one is tried,
    with one line through `warn`; when no older one is left, a CheckpointError says so.
    """
    paths = epoch_checkpoints(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    bad = []
    for path in reversed(paths):
        try:
            ckpt = load_checkpoint(path, device)
        except CheckpointError as exc:
            if "refused" in str(exc):
                raise
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
            self.writer = SummaryWriter(self.cfg.save_path, purge_step=self.step)
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
        self.fh = open(path, "a", newline="")
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
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: expected a mapping of flags, got {type(saved).__name__}")
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

    out = []
    for name in ("config.json", "metrics.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: run {os.path.basename(os.fspath(folder))} has not "
                                    f"been trained (make runs, or python -m memvir pipeline --run NAME)")
        try:
            with open(path) as fh:
                out.append(json.load(fh))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    metrics = out[1]
    for key in ("evaluations", "best", "last", "finished"):
        if key not in metrics:
            raise ValueError(f"{os.path.join(folder, 'metrics.json')}: missing key {key!r}; expected evaluations, "
                             f"best, last, finished (see memvir/rundir.py)")
    steps_path = os.path.join(folder, "steps.csv")
    try:
        steps = pd.read_csv(steps_path) if os.path.isfile(steps_path) else None
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError and ParserError are ValueErrors
        raise ValueError(f"{steps_path}: not a readable CSV ({' '.join(str(exc).split())[:120]})") from None
    return out[0], metrics, steps
