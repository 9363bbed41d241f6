"""Train an embedding network with a proxy loss, optionally with MemVir; evaluate and checkpoint as it goes.

    from memvir.train import train
    results = train({"data_name": "glyphs", "loss": "Norm_SoftMax", "memvir": True, "epochs": 20})
    results["best"]["recall@1"]                  # {"epoch": ..., "step": ..., "value": ...}

or from a shell, with the official code's flags (navervision/MemVir main.py: its README's lines paste as they are;
memvir/config.py lists them all):

    python -m memvir train --data_name glyphs --loss Norm_SoftMax --memvir 1 --epochs 20
    torchrun --nproc_per_node=4 -m memvir train ...      # DistributedDataParallel, see memvir/distributed.py

`train` reads top to bottom: config -> run folder -> data, model, loss (memvir/experiment.py) -> optimiser ->
resume -> epochs (learning rate, steps, evaluation, checkpoint). The recipe is the official one (MemVir Sec. 4,
and its main.py):
  * epochs count from 1; at the start of epoch e every learning rate is multiplied by decay_rate when
    e % decay_step == 0 and e <= decay_stop (the official adjust_learning_rate);
  * Adam(eps=0.01, weight_decay=1e-4), backbone and embedding at modellr, the proxies at centerlr;
  * --freeze_BN keeps every BatchNorm in eval mode while training: running statistics frozen, scale/shift trained;
  * MemVir stores steps from epoch warm_epoch + 1 on (1-based), i.e. after warm_epoch full epochs (MemVir counts
    epochs from 0: it gets e - 1 and fills when e - 1 >= warm_epoch);
  * evaluation on the test classes when e % check_epoch == 0 and, unlike the official code, also after the last
    epoch, so that every run ends with an evaluation.

The run folder's format (config.json, metrics.json, steps.csv, TensorBoard events, checkpoints) is memvir/rundir/.
Every epoch ends with a checkpoint. Running the same command again resumes from the newest readable one and ends
with the same numbers as an uninterrupted run (bitwise on a CPU with --deterministic): the batches and the data
augmentation are pure functions of (seed, epoch, image index), and the checkpoint holds everything else that
changes. A resume with other flags is refused with the list of differences, except for flags that cannot change the
numbers (config.RESUME_MAY_DIFFER; --epochs may grow). One process trains in a run folder at a time (a lock).

Where we differ from the official main.py, on purpose:
  * C (the number of proxies) is the number of classes in DATA/train unless -C asks for more; the official code
    hard-codes it per data set (98 for cars196), so a miniature folder would crash it. A mismatch with the paper's
    C is a warning.
  * --loss defaults to Norm_SoftMax (the official default, SoftMax_vanilla, is not implemented there either);
    --data_name defaults to glyphs, whose defaults train on one CPU core in minutes.
  * --k_list given explicitly is honoured; the official code overrides it for the four benchmarks.
  * --gpu is optional (--gpu=0 without CUDA warns and trains on the CPU); --seed seeds everything; --workers is
    capped at the CPUs we may use; --eval_best evaluates checkpoints/best_recall_1.pt of --save_path.
  * training stops with one line when it diverges (a loss, an embedding or a parameter that is not finite, or an
    embedding collapsed to zero), instead of failing later at evaluation.
With torchrun, rank 0 evaluates (the others wait for its result) and writes every file (memvir/distributed.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from . import distributed, portable
from .config import FIELDS, RESUME_MAY_DIFFER, TrainConfig, parse_k_list
from .evaluation import evaluate, evaluate_checkpoint
from .experiment import build
from .files import SIGPIPE_STATUS, atomic_json, interrupted, os_error_line, reader_gone
from .memory import MEM_FILLS, MEM_VIRTUALS
from .models import WeightsUnavailable
from .resolve import build_parser, config_from_argv, resolve_config
from .rundir import (CHECKPOINT_FORMAT, KERNELS_KEY, TRAINING_FIELDS, CheckpointError, RunFolderBusy, RunLock,
                     RunOutputs, check_same_run, get_rng_state, latest_checkpoint, link_best, new_history,
                     load_state, record_evaluation, repair_metrics, run_folder, save_checkpoint, set_rng_state,
                     write_eval_scalars)

__all__ = ["TrainConfig", "train", "main", "resolve_config", "learning_rates", "TrainingError", "build_parser",
           "config_from_argv"]


class TrainingError(RuntimeError):
    """A run that cannot go on: divergence, out of memory. The message says what to change."""


def learning_rates(epoch: int, cfg: TrainConfig) -> tuple[float, float]:
    """Return (modellr, centerlr) in force during the 1-based `epoch`.

    The official adjust_learning_rate multiplies the optimiser's rates in place at the start of every epoch e with
    e % decay_step == 0 and e <= decay_stop; replaying those multiplications from the start gives the same floats,
    and makes the rate a function of the epoch alone (nothing to restore on resume).
    """
    model_lr, center_lr = cfg.modellr, cfg.centerlr
    for e in range(1, epoch + 1):
        if e % cfg.decay_step == 0 and e <= cfg.decay_stop:
            model_lr *= cfg.decay_rate
            center_lr *= cfg.decay_rate
    return model_lr, center_lr


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
# The run


def train(config=None, *, on_step=None, on_epoch_end=None) -> dict:
    """Train (resuming from save_path when it holds a checkpoint), evaluate, and return the run's metrics.

    Args:
        config: TrainConfig, dict of flag names, or None (a glyph run with the CPU profile).
        on_step: optional callable(step, epoch, loss) after every optimiser step (step counted from 1).
        on_epoch_end: optional callable(epoch, history) after every epoch's checkpoint is written.
    Returns:
        The content of metrics.json ("evaluations", "best", "last", "finished", ...) plus "save_path" and "config".
    Paper: MemVir Sec. 4 (implementation details); the official main.py for the recipe.
    """
    cfg = resolve_config(config)
    dist_info = distributed.from_env()
    device = distributed.pick_device(cfg.gpu, dist_info)
    log = print if dist_info.is_main else _quiet
    for name, f in FIELDS.items():
        if f.metadata["ignored"] and getattr(cfg, name) != f.default:
            warnings.warn(f"--{name}={getattr(cfg, name)} is accepted for compatibility and ignored: "
                          f"{f.metadata['help'].split(': ', 1)[-1]}", stacklevel=2)
    with contextlib.ExitStack() as stack:
        stack.enter_context(distributed.determinism(cfg.deterministic))
        if distributed.init(dist_info, device):  # leave a process group the caller made alone
            stack.callback(distributed.shutdown, dist_info)
        try:
            if cfg.eval_best:  # evaluate the best-Recall@1 checkpoint of save_path, train nothing
                path = os.path.join(cfg.save_path, "checkpoints", "best_recall_1.pt")
                ev, ks = evaluate_checkpoint(path, device, cfg.data, cfg.workers)
                history = new_history()
                record_evaluation(history, {**ev, "wall_time": 0.0})
                history["finished"] = True
                log(summary_line(history["last"], history, ks))
                return _results(history, cfg)
            if dist_info.is_main:  # the folder (removed again if the start fails with nothing written), one owner
                stack.enter_context(run_folder(cfg.save_path))
                stack.enter_context(RunLock(cfg.save_path))
            else:
                os.makedirs(cfg.save_path, exist_ok=True)
            return _train(cfg, dist_info, device, log, on_step, on_epoch_end)
        except torch.OutOfMemoryError:
            raise TrainingError(_oom_message(cfg, device)) from None
        except RuntimeError as exc:
            if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
                raise TrainingError(_oom_message(cfg, device)) from None
            raise


def _train(cfg, dist_info, device, log, on_step, on_epoch_end):
    from .data import check_evaluation_images
    from .data.samplers import BatchSampler, EpochSeeded

    ckpt_dir = os.path.join(cfg.save_path, "checkpoints")
    warn = lambda s: log(f"warning: {s}")  # noqa: E731  (log is quiet off rank 0)
    resume = latest_checkpoint(ckpt_dir, device, warn, fields=TRAINING_FIELDS)
    check_same_run(cfg, resume, RESUME_MAY_DIFFER)

    # ====== seeds, data, model, loss: the initialisation is a function of cfg.seed ======
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # every device's generator
    exp = build(cfg, device)
    splits, net, loss_fn, criterion = exp.splits, exp.net, exp.loss, exp.criterion
    if splits.num_classes == 1:  # legal, but every proxy loss is 0 with nothing to tell apart
        warnings.warn("the training split has a single class: every proxy loss is 0 and nothing is learned; "
                      "expected at least two training classes", stacklevel=2)
    if len(splits.train) < cfg.batch_size:  # legal (a miniature folder), but rarely what was meant
        warnings.warn(f"--batch_size={cfg.batch_size} is larger than the training set ({len(splits.train)} "
                      f"images): every epoch is one batch of {len(splits.train)}", stacklevel=2)
    # Batches: rank r gets its slice of every global batch; the order is a function of (seed, epoch), and the
    # augmentation of an image a function of (seed, epoch, index).
    sampler = BatchSampler(splits.train.labels, cfg.batch_size, cfg.n_instance, seed=cfg.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size)
    train_set = EpochSeeded(splits.train, cfg.seed)
    workers = min(cfg.workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    if dist_info.is_main:
        check_evaluation_images(splits, workers)  # else a damaged one ends the first evaluation, an epoch late
    train_net = _wrap_distributed(net, cfg, dist_info, device)

    # ====== optimiser: backbone and embedding at modellr, the proxies at centerlr (official) ======
    groups = [{"params": net.backbone.parameters(), "lr": cfg.modellr},
              {"params": net.embedding.parameters(), "lr": cfg.modellr},
              {"params": loss_fn.parameters(), "lr": cfg.centerlr}]
    optimizer = make_optimizer(cfg, groups)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_amp and device.type == "cuda")

    # ====== resume: everything that changes during training comes back from the checkpoint ======
    resume, progress = _resume(resume, ckpt_dir, device, warn, (net, criterion, optimizer, scaler, loss_fn), log,
                               data_fingerprint(splits))
    if resume is not None:
        if dist_info.is_main:  # a kill between the checkpoint and its best_* links: make them now
            best = [k for k, b in progress.history["best"].items() if b["epoch"] == progress.epoch]
            link_best(resume[0], ckpt_dir, best)
        history = progress.history
        if history["stopped_early"] is not None or (history["finished"] and progress.epoch >= cfg.epochs):
            repaired = repair_metrics(cfg.save_path, history, resume[0]) if dist_info.is_main else None
            if repaired:  # damaged, or behind the checkpoint (a kill between the two writes)
                log(f"warning: {repaired}")
            log(f"{cfg.save_path}: the run is finished; nothing to train")
            return _results(history, cfg)
        history["finished"] = False
    if dist_info.enabled:  # identical proxies everywhere (they are seeded identically; this makes sure)
        for tensor in loss_fn.parameters():
            torch.distributed.broadcast(tensor.data, src=0)

    kernels = _announce(cfg, resume, device, dist_info, splits, len(loader), progress, log)
    # ====== epochs ======
    with RunOutputs(cfg, progress.step, dist_info.is_main, kernels) as out:
        t0 = time.time() - progress.elapsed  # wall time counts the time before a resume, not the time lost after
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):  # 1-based, as the official code
            sampler.set_epoch(epoch - 1)
            train_set.set_epoch(epoch - 1)
            train_one_epoch(cfg, epoch, loader, train_net, net, criterion, optimizer, scaler, progress, out,
                            device, dist_info, on_step)
            improved, stop = _evaluate_epoch(cfg, epoch, net, splits, progress, out, device, workers, dist_info,
                                             t0, log)
            if dist_info.is_main:
                _save_epoch(cfg, epoch, progress, net, criterion, optimizer, scaler, out, t0, improved)
            distributed.barrier(dist_info)
            if on_epoch_end is not None:
                on_epoch_end(epoch, progress.history)
            if stop:
                break
    return _results(progress.history, cfg)


def _save_epoch(cfg, epoch, progress, net, criterion, optimizer, scaler, out, t0, improved):
    """The epoch's checkpoint (everything a resume needs), then metrics.json; both written atomically."""
    out.steps.flush()
    state = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(cfg), "epoch": epoch, "step": progress.step,
             "elapsed": time.time() - t0, "model": net.state_dict(), "criterion": criterion.state_dict(),
             "optimizer": optimizer.state_dict(), "lrs": [g["lr"] for g in optimizer.param_groups],
             "scaler": scaler.state_dict(), "sampler": {"seed": cfg.seed, "epoch": epoch}, "rng": get_rng_state(),
             "history": progress.history, "early_stop_count": progress.early_stop_count,
             "data": progress.data}
    save_checkpoint(state, os.path.join(cfg.save_path, "checkpoints"), epoch, cfg.max_to_keep, improved)
    atomic_json(progress.history, os.path.join(cfg.save_path, "metrics.json"))
    out.writer.flush()


def train_one_epoch(cfg, epoch, loader, train_net, net, criterion, optimizer, scaler, progress, out, device,
                    dist_info, on_step):
    """One pass over the training batches: forward, MemVir loss, backward, optimiser step, one steps.csv row."""
    from tqdm import tqdm

    from .models import freeze_bn

    model_lr, center_lr = learning_rates(epoch, cfg)
    for group, lr in zip(optimizer.param_groups, (model_lr, model_lr, center_lr)):
        group["lr"] = lr
    train_net.train()
    if cfg.freeze_BN:
        freeze_bn(net)  # running statistics stay as loaded; BatchNorm scale and shift still train
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", mininterval=2.0, leave=False, dynamic_ncols=True,
               disable=not (cfg.progress and dist_info.is_main and sys.stderr.isatty()))
    for i, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)  # (b, channels, H, W), this process's slice
        labels = labels.to(device, non_blocking=True)  # (b,)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.use_amp):
            emb = _forward(train_net, images, cfg, len(loader.dataset) if hasattr(loader, "dataset") else None)
            emb, labels = distributed.gather_batch(emb, labels, dist_info)  # (B, D), (B,): the global batch
            _check_embeddings(emb, cfg, progress.step, epoch)
            loss = criterion(emb, labels, epoch=epoch - 1)  # MemVir counts epochs from 0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        try:
            scaler.step(optimizer)
        except RuntimeError as exc:  # e.g. a learning rate of 1e38: Adam's step size overflows float32
            raise TrainingError(_diverged(f"the optimiser step failed ({_one_line(exc)[:80]})", progress.step,
                                          epoch, cfg)) from None
        scaler.update()
        # The loss and the parameters' finiteness in one device->host read, after the step (one host sync per
        # step, not two): a non-finite loss is still reported as such, and the run stops before anything of this
        # step is written (the optimiser may have applied it; the last checkpoint is untouched).
        finite = torch.isfinite(torch.stack(torch._foreach_norm(params))).all()  # () one reduction
        loss_value, params_finite = torch.stack([loss.detach().float(), finite.float()]).tolist()
        if not math.isfinite(loss_value):
            raise TrainingError(_diverged(f"the loss is {loss_value}", progress.step, epoch, cfg))
        if not params_finite:
            raise TrainingError(_diverged("a parameter is not finite after the step", progress.step, epoch, cfg))

        if cfg.memvir and criterion.num_taken == cfg.mem_num_step > 0:  # metrics.json: how much MemVir there was
            progress.history["full_memory_steps"] = progress.history.get("full_memory_steps", 0) + 1
        if dist_info.is_main:
            out.steps.write(progress.step, epoch, loss_value, model_lr, criterion.num_taken,
                            criterion.num_classes_in_use, criterion.num_embeddings_in_use)
            if i % 10 == 0:  # the official logging interval
                out.writer.add_scalar("train/loss", loss_value, progress.step)
                out.writer.add_scalar("train/learning_rate", model_lr, progress.step)
                out.writer.add_scalar("train/num_classes_in_use", criterion.num_classes_in_use, progress.step)
        bar.set_postfix(loss=f"{loss_value:.4f}", classes=criterion.num_classes_in_use, refresh=False)
        progress.step += 1
        if on_step is not None:
            on_step(progress.step, epoch, loss_value)
    bar.close()


def _evaluate_epoch(cfg, epoch, net, splits, progress, out, device, workers, dist_info, t0, log):
    """Evaluate on the test classes when the schedule says so (rank 0; the others receive the result).

    Returns (the metrics that improved, whether to stop early).
    """
    last = epoch == cfg.epochs
    improved, stop = [], False
    if epoch % cfg.check_epoch == 0 or last:
        ks = parse_k_list(cfg.k_list)
        ev = None
        if dist_info.is_main:
            ev = {"epoch": epoch, "step": progress.step}
            ev.update(evaluate(net, splits.test, ks, device, workers, splits, nmi=cfg.do_nmi))
            if splits.val is not None:
                ev["val"] = evaluate(net, splits.val, ks, device, workers)
            ev["wall_time"] = time.time() - t0
        ev = distributed.broadcast_object(ev, dist_info)
        history = progress.history
        improved = record_evaluation(history, ev)
        progress.early_stop_count = 0 if improved else progress.early_stop_count + 1
        stop = cfg.early_stop_epoch > 0 and progress.early_stop_count >= cfg.early_stop_epoch
        if dist_info.is_main:
            log(summary_line(history["last"], history, ks))
            write_eval_scalars(out.writer, history["last"], history, improved, ks)
        if stop:
            history["stopped_early"] = epoch
            log(f"stopping: no metric improved in the last {cfg.early_stop_epoch} evaluations")
    progress.history["finished"] = last or stop
    return improved, stop


def _announce(cfg, resume, device, dist_info, splits, steps_per_epoch, progress, log):
    """The run's first line and what it warns about (other kernels on resume, a memory never used or full);
    return the kernels (memvir.portable.describe) for config.json."""
    kernels = portable.describe()
    if resume is not None:  # a run resumed on other kernels is a mix of two machines' floats: say so
        _check_same_kernels(cfg, kernels, log)
    log(_describe(cfg, device, dist_info, splits, steps_per_epoch, kernels))
    if cfg.memvir and cfg.mem_num_step > 0:
        _warn_unused_memory(cfg, steps_per_epoch)
    if cfg.memvir:  # metrics.json says how many steps trained with all N past steps taken
        progress.history.setdefault("full_memory_steps", 0)
    return kernels


def _warn_unused_memory(cfg, steps_per_epoch):
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


def _check_same_kernels(cfg, kernels, log):
    """Warn in one line when the run's config.json says it trained so far with other CPU kernels than now."""
    import json

    try:
        with open(os.path.join(cfg.save_path, "config.json")) as fh:
            then = json.load(fh).get(KERNELS_KEY)
    except (OSError, ValueError, AttributeError):
        return
    now = {k: kernels[k] for k in ("mode", "cpu_capability")}
    if isinstance(then, dict) and {k: then.get(k) for k in now} != now:
        log(f"warning: {cfg.save_path} trained so far with {then.get('mode')} kernels at "
            f"{then.get('cpu_capability')} and goes on with {now['mode']} ones at {now['cpu_capability']}: its "
            f"floats will match neither a run made wholly here nor one made there")


def _describe(cfg, device, dist_info, splits, steps_per_epoch, kernels):
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


def _results(history, cfg):
    return {**history, "save_path": cfg.save_path, "config": dataclasses.asdict(cfg)}


def _quiet(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Pieces of the loop


def make_optimizer(cfg: TrainConfig, groups):
    """Build the official optimiser: adam (eps), adamw (eps), rmsprop (alpha 0.99, momentum 0.9), sgd (Nesterov).

    Adam and AdamW take torch's fused step: the same update in one ATen loop. Torch's default step on a CPU is a
    chain of tensor ops whose sqrt is MKL's vector math, which gives other bits on Intel and AMD CPUs whatever
    MKL_CBWR says; the fused loop's do not (tests/kernels.json). RMSprop has no fused step: its sqrt is MKL's.
    """
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=0.99, weight_decay=cfg.weight_decay, momentum=0.9)
    return torch.optim.SGD(groups, weight_decay=cfg.weight_decay, momentum=0.9, nesterov=True)


def _wrap_distributed(net, cfg, dist_info, device):
    """The network the loop calls: DDP around `net` under torchrun (SyncBatchNorm on CUDA), else `net` itself."""
    if not dist_info.enabled:
        return net
    if not cfg.freeze_BN:
        if device.type == "cuda":  # the BatchNorm statistics of the global batch, as one GPU would see it
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        else:
            warnings.warn("several CPU processes without --freeze_BN: BatchNorm statistics are per process (PyTorch "
                          "has no SyncBatchNorm on CPU), so the run differs from a one-process run", stacklevel=3)
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def data_fingerprint(splits):
    """What the run's data are, as a resume can compare them: each split's size and classes, and a hash of its
    labels and (for image folders) file names relative to the split's folder."""
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


def _resume(resume, ckpt_dir, device, warn, objects, log, data):
    """Restore the newest checkpoint whose content fits the run's objects (net, criterion, optimizer, scaler, loss):
    one that does not (a tensor of another shape, a state of another structure) is damaged, its flags and data
    being the run's, and is set aside as an unreadable one is; the one before it is tried. Returns (the resumed
    (path, checkpoint) or None, Progress)."""
    while resume is not None:
        try:
            return resume, _restore(resume, *objects, log, data)
        except CheckpointError as exc:
            resume = latest_checkpoint(ckpt_dir, device, warn, fields=TRAINING_FIELDS, damaged=(resume[0], exc))
    return None, Progress(data=data)


def _restore(resume, net, criterion, optimizer, scaler, loss_fn, log, data) -> Progress:
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


def _check_embeddings(emb, cfg, step, epoch):
    """Stop with one line when the embeddings are not finite or a row collapsed to zero (a diverged network)."""
    finite = torch.isfinite(emb).all()
    alive = (emb.detach().abs().amax(dim=1) > 0).all()
    if not bool(finite & alive):
        what = "the embeddings are not finite" if not bool(finite) else "an embedding collapsed to zero"
        raise TrainingError(_diverged(what, step, epoch, cfg))


def summary_line(ev: dict, history: dict, ks) -> str:
    """One line per evaluation: epoch, step, the metrics, the best Recall@1 so far, the wall time."""
    recalls = " ".join(f"R@{k} {ev[f'recall@{k}']:.4f}" for k in ks)
    rp, mapr = (f"{ev[k]:.4f}" if ev[k] is not None else "n/a" for k in ("r_precision", "map_at_r"))
    nmi = f" NMI {ev['nmi']:.4f}" if ev.get("nmi") is not None else ""
    best = history["best"].get("recall@1")
    best_s = f" | best R@1 {best['value']:.4f} (epoch {best['epoch']})" if best else ""
    return (f"epoch {ev['epoch']} step {ev['step']}: {recalls} RP {rp} MAP@R {mapr}{nmi}{best_s} | "
            f"{ev['wall_time']:.0f} s")


def _forward(train_net, images, cfg, n_train):
    """The network on a batch: (b, D) embeddings. A batch of one image cannot train BatchNorm (its variance over one
    value is 0): torch's "Expected more than 1 value per channel" becomes a line that says which flag to change."""
    try:
        return train_net(images, l2_norm=cfg.train_with_l2norm)  # (b, D); unit rows unless l2norm is off
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise TrainingError(f"a training batch holds a single image ({n_train} training images, --batch_size="
                            f"{cfg.batch_size}: the last batch of an epoch keeps what is left), and {cfg.backbone}'s "
                            f"BatchNorm cannot train on one image; choose a --batch_size that leaves more than one, "
                            f"or --freeze_BN 1") from None


def _oom_message(cfg, device):
    """Out of memory: every flag that sizes what is held, with the one that is often forgotten in numbers."""
    proxies = f"-C={cfg.C} proxies x --dim={cfg.dim}" if cfg.C else f"--dim={cfg.dim}"
    size = f" ({cfg.C * cfg.dim * 4 * 4 / 2**30:.1f} GiB with their gradient and Adam's state)" if cfg.C else ""
    memory = (f", MemVir keeping N(M+1)={cfg.mem_num_step * (cfg.mem_step_gap + 1)} steps of proxies and embeddings"
              if cfg.memvir else "")
    return (f"out of memory on {device} with --batch_size={cfg.batch_size}, --input_size={cfg.input_size}, "
            f"--backbone={cfg.backbone}, {proxies}{size}{memory}: lower whichever is too large (--batch_size, "
            f"--input_size, --dim, -C, --mem_num_step), or turn on --use_amp=1")


def _diverged(what, step, epoch, cfg):
    ckpt_dir = os.path.join(cfg.save_path, "checkpoints")
    kept = (f"The last good checkpoint in {ckpt_dir} is kept" if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
            else "No checkpoint was written yet")
    return (f"training diverged at step {step} (epoch {epoch}): {what}. {kept}; lower --modellr (now "
            f"{cfg.modellr:g}) and/or --centerlr (now {cfg.centerlr:g}), or the loss's --scale (now {cfg.scale:g})"
            + (", or turn off --use_amp" if cfg.use_amp else ""))


# ----------------------------------------------------------------------------------------------------------------
# The command line (the flags: memvir/config.py)


INTERRUPTED = "interrupted: the run resumes from its last checkpoint when the same command runs again"  # Ctrl-C


def main(argv=None) -> int:
    """`python -m memvir train [flags]`: train; print `error: ...` and return 2 on bad input or a failed run."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            cfg = config_from_argv(argv)
            train(cfg)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (ValueError, TrainingError, RunFolderBusy, WeightsUnavailable) as exc:
        if os.environ.get("MEMVIR_TRACEBACK"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint is whole (every file is written atomically)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout is gone (`| head`): end quietly, as Unix tools do
        reader_gone()
        return SIGPIPE_STATUS
    except OSError as exc:  # ours name the file already; the system's: a full disk, a file where a folder belongs
        if os.environ.get("MEMVIR_TRACEBACK"):
            raise
        print(f"error: {os_error_line(exc) if exc.filename is not None else _one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not interrupted(exc):  # an error raised while a library cleaned up after Ctrl-C is still Ctrl-C
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0


def _one_line(exc) -> str:
    text = str(exc)
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch wraps our line in the worker traceback
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]*(Error|Exception): ", "", last.strip())
    return re.sub(r"\s*\n\s*", " ", text).strip()


if __name__ == "__main__":
    sys.exit(main())
