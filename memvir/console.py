"""What a training run says on the console: its first line (where, on what, with which loss), its warnings about
flags that leave MemVir's memory unused, and one line per evaluation. Off rank 0, `log` is quiet."""
from __future__ import annotations

import warnings

from . import portable
from .memory import MEM_FILLS, MEM_VIRTUALS
from .rundir import check_same_kernels


def announce(cfg, resume, device, dist_info, splits, steps_per_epoch, log):
    """The run's first line and what it warns about (other kernels on resume, a memory never used or full);
    return the kernels (memvir.portable.describe) for config.json."""
    kernels = portable.describe()
    if resume is not None:  # a run resumed on other kernels is a mix of two machines' floats: say so
        check_same_kernels(cfg.save_path, kernels, log)
    log(describe(cfg, device, dist_info, splits, steps_per_epoch, kernels))
    if cfg.memvir and cfg.mem_num_step > 0:
        warn_unused_memory(cfg, steps_per_epoch)
    return kernels


def describe(cfg, device, dist_info, splits, steps_per_epoch, kernels):
    """The run's first line: where it trains (on a CPU, with which kernels), on what, with which loss."""
    where = f" ({kernels['mode']} kernels, {kernels['cpu_capability']})" if device.type == "cpu" else ""
    return (f"device {device}{where}{f' x {dist_info.world_size} processes' if dist_info.enabled else ''} | "
            f"{cfg.data_name}: {len(splits.train)} train images in {splits.num_classes} classes, {len(splits.test)}"
            f" test images | {cfg.backbone} -> {cfg.dim}-d | {cfg.loss} (scale {cfg.scale:g})"
            + (f" + MemVir N={cfg.mem_num_step} M={cfg.mem_step_gap} U={cfg.warm_epoch}" if cfg.memvir else "")
            # the ablations and XBM, only when set: a default run's line stays the official one
            + "".join(f" --{flag}={value}" for flag, value, default in (
                ("mem_fill", cfg.mem_fill, MEM_FILLS[0]), ("mem_virtual", cfg.mem_virtual, MEM_VIRTUALS[0]),
                ("xbm_size", cfg.xbm_size, 0)) if value != default)
            + f" | {steps_per_epoch} steps per epoch")


def warn_unused_memory(cfg, steps_per_epoch):
    """Warn in one line when the flags leave MemVir's memory unused, or never full: a run labelled MemVir that is
    (nearly) its loss alone. The curriculum takes its first past step M + 1 steps after epoch U, all N after
    N(M + 1); epochs here are 1-based, so epochs U+1 .. E use the memory."""
    after = max(cfg.epochs - cfg.warm_epoch, 0) * steps_per_epoch  # steps from the end of the warm-up on
    N, M, U, E = cfg.mem_num_step, cfg.mem_step_gap, cfg.warm_epoch, cfg.epochs
    if after == 0:
        warnings.warn(f"--memvir 1 with --warm_epoch {U} >= --epochs {E}: the memory is never used; this run is "
                      f"the loss alone (lower --warm_epoch or raise --epochs)", stacklevel=2)
    elif cfg.mem_fill == "curriculum" and after <= M:
        warnings.warn(f"--memvir 1: the first past step is taken M + 1 = {M + 1} steps after epoch {U}, and only "
                      f"{after} steps follow: the memory is never used; this run is the loss alone", stacklevel=2)
    elif cfg.mem_fill == "curriculum" and after < N * (M + 1):
        warnings.warn(f"--memvir 1: a full memory (N = {N} steps taken) needs N(M + 1) = {N * (M + 1)} steps after "
                      f"epoch {U}, and only {after} follow: it is never full", stacklevel=2)


def summary_line(ev: dict, history: dict, ks) -> str:
    """One line per evaluation: epoch, step, the metrics, the best Recall@1 so far, the wall time."""
    recalls = " ".join(f"R@{k} {ev[f'recall@{k}']:.4f}" for k in ks)
    rp, mapr = (f"{ev[k]:.4f}" if ev[k] is not None else "n/a" for k in ("r_precision", "map_at_r"))
    nmi = f" NMI {ev['nmi']:.4f}" if ev.get("nmi") is not None else ""
    best = history["best"].get("recall@1")
    best_s = f" | best R@1 {best['value']:.4f} (epoch {best['epoch']})" if best else ""
    return (f"epoch {ev['epoch']} step {ev['step']}: {recalls} RP {rp} MAP@R {mapr}{nmi}{best_s} | "
            f"{ev['wall_time']:.0f} s")
