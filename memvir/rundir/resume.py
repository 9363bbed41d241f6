"""Resuming a run: is it the same run (flags, data, kernels), the newest checkpoint that fits restored into the
run's objects, and the state of every random generator (saved in every checkpoint)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field

from .checkpoints import TRAINING_FIELDS, CheckpointError, latest_checkpoint, load_state
from .folder import RUN_KEYS, is_run_config
from .history import new_history
from .outputs import KERNELS_KEY


@dataclass
class Progress:
    """Everything about a run's position that a checkpoint restores (besides weights and generators)."""
    epoch: int = 0  # the last finished epoch (1-based)
    step: int = 0  # optimiser steps taken
    elapsed: float = 0.0  # training wall time before this process started
    early_stop_count: int = 0
    history: dict = field(default_factory=new_history)  # what metrics.json holds
    data: dict = None  # data_fingerprint of the splits, saved in every checkpoint


# ----------------------------------------------------------------------------------------------------------------
# The same run: flags, kernels, data


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


def check_same_kernels(save_path, kernels, log):
    """Warn in one line when the run's config.json says it trained so far with other CPU kernels than now."""
    try:
        with open(os.path.join(save_path, "config.json")) as fh:
            then = json.load(fh).get(KERNELS_KEY)
    except (OSError, ValueError, AttributeError):
        return
    now = {k: kernels[k] for k in ("mode", "cpu_capability")}
    if isinstance(then, dict) and {k: then.get(k) for k in now} != now:
        log(f"warning: {save_path} trained so far with {then.get('mode')} kernels at "
            f"{then.get('cpu_capability')} and goes on with {now['mode']} ones at {now['cpu_capability']}: its "
            f"floats will match neither a run made wholly here nor one made there")


def data_fingerprint(splits):
    """What the run's data are, as a resume can compare them: each split's size and classes, and a hash of its
    labels and (for image folders) file names relative to the split's folder."""
    import numpy as np  # deferred: see get_rng_state

    digest, sizes = hashlib.sha256(), {}
    for name in ("train", "val", "test", "query", "gallery"):
        ds = getattr(splits, name, None)
        if ds is None:
            continue
        labels = np.asarray(ds.labels, dtype=np.int64)  # (n,)
        digest.update(name.encode() + labels.tobytes())
        paths = getattr(ds, "paths", None)
        if paths is not None:
            root = getattr(ds, "root", None)
            # os.fsencode: the names' bytes as on disk (a name that is not UTF-8, e.g. Latin-1 from an old archive,
            # is kept by Python as surrogates, which str.encode() refuses); the same bytes as UTF-8 for the others.
            digest.update(b"\n".join(os.fsencode(os.path.relpath(p, root) if root else os.path.basename(p))
                                      for p in paths))
        sizes[name] = f"{len(labels)} images in {len(np.unique(labels))} classes"
    return {"sha256": digest.hexdigest()[:16], **sizes}


# ----------------------------------------------------------------------------------------------------------------
# The newest checkpoint that fits, restored


def restore_newest(resume, ckpt_dir, device, warn, objects, log, data):
    """Restore the newest checkpoint whose content fits the run's objects (net, criterion, optimizer, scaler, loss):
    one that does not (a tensor of another shape, a state of another structure) is damaged, its flags and data
    being the run's, and is set aside as an unreadable one is; the one before it is tried. Returns (the resumed
    (path, checkpoint) or None, Progress)."""
    while resume is not None:
        try:
            return resume, restore(resume, *objects, log, data)
        except CheckpointError as exc:
            resume = latest_checkpoint(ckpt_dir, device, warn, fields=TRAINING_FIELDS, damaged=(resume[0], exc))
    return None, Progress(data=data)


def restore(resume, net, criterion, optimizer, scaler, loss_fn, log, data) -> Progress:
    """Load a checkpoint into the run's objects; refuse one made for other data or another number of classes in
    one line."""
    path, ckpt = resume
    then = ckpt.get("data")  # absent in checkpoints made before it was recorded: nothing to compare
    if then is not None and then["sha256"] != data["sha256"]:
        said = lambda d: ", ".join(f"{k} {v}" for k, v in d.items() if k != "sha256")  # noqa: E731
        raise ValueError(f"{path}: the run was trained on other data ({said(then)}; fingerprint {then['sha256']}) "
                         f"than --data and the flags give now ({said(data)}; {data['sha256']}); point --data at the "
                         f"run's data set, or use another --save_path")
    saved = ckpt["criterion"].get("loss.proxies", ckpt["criterion"].get("proxies"))
    if saved is not None and saved.shape != loss_fn.proxies.shape:
        raise ValueError(f"{path}: the run was trained with {saved.shape[0]} proxies (classes) and D={saved.shape[1]}"
                         f", but the data and flags now give {loss_fn.proxies.shape[0]} and D="
                         f"{loss_fn.proxies.shape[1]}; point --data at the run's data set, or use another --save_path")
    # Flags and data are the run's (checked above): a state that does not fit the objects they build is damaged.
    for key, target in (("model", net), ("criterion", criterion), ("optimizer", optimizer)):
        load_state(target, ckpt, key, path)
    if ckpt["scaler"] and scaler.is_enabled():  # empty when saved on a CPU (no GradScaler there)
        load_state(scaler, ckpt, "scaler", path)
    try:
        set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: damaged: its field 'rng' does not restore the random generators "
                              f"({' '.join(str(exc).split())[:200]})") from None
    log(f"resumed from {path} (epoch {ckpt['epoch']}, step {ckpt['step']})")
    return Progress(ckpt["epoch"], ckpt["step"], ckpt["elapsed"], ckpt["early_stop_count"], ckpt["history"], data)


# ----------------------------------------------------------------------------------------------------------------
# Random generators (saved in every checkpoint)


def get_rng_state() -> dict:
    """The state of every random generator, as tensors and plain types (loadable with weights_only=True)."""
    # numpy (0.3 s) and torch (4 s) are imported here, not at the top: the report and the pipeline import
    # memvir.rundir and load neither.
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
    import numpy as np  # deferred: see get_rng_state
    import torch

    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))

