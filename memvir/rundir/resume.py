"""Resuming a run: is it the same run (flags, kernels), and the state of every random generator."""
from __future__ import annotations

import dataclasses
import json
import os
import random

from .folder import RUN_KEYS, is_run_config

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

