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

The run folder's format (config.json, metrics.json, steps.csv, TensorBoard events, checkpoints) and the resume are
memvir/rundir/; how a run fails (divergence, out of memory) is memvir/failures.py; what it prints, memvir/console.py.
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
import os
import random
import sys
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .config import FIELDS, RESUME_MAY_DIFFER, TrainConfig, parse_k_list
from .console import announce, summary_line
from .data import check_evaluation_images
from .data.samplers import BatchSampler, EpochSeeded
from .evaluation import evaluate, evaluate_checkpoint
from .experiment import build
from .failures import (TrainingError, batch_of_one, check_embeddings, check_step, failed_step, one_line,
                       out_of_memory)
from .files import SIGPIPE_STATUS, atomic_json, interrupted, os_error_line, reader_gone
from .models import WeightsUnavailable, freeze_bn
from .resolve import build_parser, config_from_argv, resolve_config
from .rundir import (CHECKPOINT_FORMAT, TRAINING_FIELDS, RunFolderBusy, RunLock, RunOutputs,
                     check_same_run, data_fingerprint, get_rng_state, latest_checkpoint, link_best, new_history,
                     record_evaluation, repair_metrics, restore_newest, run_folder, save_checkpoint,
                     write_eval_scalars)

__all__ = ["TrainConfig", "train", "main", "resolve_config", "learning_rates", "TrainingError", "build_parser",
           "config_from_argv"]


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
        with out_of_memory(cfg, device):  # one line naming every flag that sizes what is held
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


def _train(cfg, dist_info, device, log, on_step, on_epoch_end):
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
    train_net = distributed.wrap(net, cfg.freeze_BN, dist_info, device)

    # ====== optimiser: backbone and embedding at modellr, the proxies at centerlr (official) ======
    groups = [{"params": net.backbone.parameters(), "lr": cfg.modellr},
              {"params": net.embedding.parameters(), "lr": cfg.modellr},
              {"params": loss_fn.parameters(), "lr": cfg.centerlr}]
    optimizer = make_optimizer(cfg, groups)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_amp and device.type == "cuda")

    # ====== resume: everything that changes during training comes back from the checkpoint ======
    objects = (net, criterion, optimizer, scaler, loss_fn)
    resume, progress = restore_newest(resume, ckpt_dir, device, warn, objects, log, data_fingerprint(splits))
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

    kernels = announce(cfg, resume, device, dist_info, splits, len(loader), log)  # memvir/console.py
    if cfg.memvir:  # metrics.json says how many steps trained with all N past steps taken
        progress.history.setdefault("full_memory_steps", 0)
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
            with batch_of_one(cfg, len(loader.dataset) if hasattr(loader, "dataset") else None):
                emb = train_net(images, l2_norm=cfg.train_with_l2norm)  # (b, D); unit rows unless l2norm is off
            emb, labels = distributed.gather_batch(emb, labels, dist_info)  # (B, D), (B,): the global batch
            check_embeddings(emb, cfg, progress.step, epoch)  # finite, no row collapsed to zero
            loss = criterion(emb, labels, epoch=epoch - 1)  # MemVir counts epochs from 0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        with failed_step(cfg, progress.step, epoch):  # e.g. a learning rate of 1e38 overflows Adam's step
            scaler.step(optimizer)
        scaler.update()
        # One device->host read per step: the loss, and whether every parameter is still finite after the step.
        loss_value = check_step(loss, params, cfg, progress.step, epoch)

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
        print(f"error: {one_line(exc)}", file=sys.stderr)
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
        print(f"error: {os_error_line(exc) if exc.filename is not None else one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not interrupted(exc):  # an error raised while a library cleaned up after Ctrl-C is still Ctrl-C
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
