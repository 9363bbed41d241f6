"""Train an embedding network with a proxy loss, optionally with MemVir; evaluate and checkpoint as it goes.

    from memvir.train import train
    results = train({"data_name": "glyphs", "loss": "Norm_SoftMax", "memvir": True, "epochs": 20})
    results["best"]["recall@1"]                  # {"epoch": ..., "step": ..., "value": ...}

or from a shell, with the official code's flags (navervision/MemVir main.py: its README's lines paste as they are):

    python -m memvir train --data_name glyphs --loss Norm_SoftMax --memvir 1 --epochs 20
    python -m memvir train --gpu=0 --data=./dataset/carDB --data_name=cars196 --loss=Norm_SoftMax --freeze_BN ...
    torchrun --nproc_per_node=4 -m memvir train ...      # DistributedDataParallel, see memvir/distributed.py

`train` reads top to bottom: config -> data -> model -> loss (+ MemVir) -> optimiser -> resume -> epochs (learning
rate, steps, evaluation, checkpoint). The recipe is the official one (MemVir Sec. 4, and its main.py):
  * epochs count from 1; at the start of epoch e every learning rate is multiplied by decay_rate when
    e % decay_step == 0 and e <= decay_stop (the official adjust_learning_rate);
  * Adam(eps=0.01, weight_decay=1e-4), backbone and embedding at modellr, the proxies at centerlr;
  * --freeze_BN keeps every BatchNorm in eval mode while training: running statistics frozen, scale/shift trained;
  * MemVir stores steps from epoch warm_epoch + 1 on (1-based), i.e. after warm_epoch full epochs (our MemVir
    counts epochs from 0: it gets e - 1 and fills when e - 1 >= warm_epoch);
  * evaluation on the test classes when e % check_epoch == 0 and, unlike the official code, also after the last
    epoch when it is not a multiple of check_epoch, so that every run ends with an evaluation.

What a run leaves in save_path (every file written atomically: a temporary file, then os.replace):
    config.json          the resolved config (the official flag names plus our extras)
    metrics.json         every evaluation (epoch, step, Recall@K, r_precision, map_at_r, wall_time), best, last
    steps.csv            one row per step: step, epoch, loss, lr, num_taken, num_classes_in_use, num_embeddings_in_use
    events.out.tfevents* TensorBoard, with the official scalar names (eval_epoch/Recall_1, eval_epoch/RP, ...)
    checkpoints/         epoch_NNNNN.pt (the last max_to_keep) and best_<metric>.pt
Every epoch ends with a checkpoint. Running the same command again resumes from the newest one and ends with the
same numbers as an uninterrupted run (bitwise on a CPU with --deterministic): the batches and the data augmentation
are pure functions of (seed, epoch, image index), and the checkpoint holds everything else that changes. A resume
with other flags is refused with the list of differences, except for flags that cannot change the numbers
(--workers, --gpu, --no_progress, --data: a moved folder, --eval_best) and --epochs, which may grow.

Where we differ from the official main.py, on purpose:
  * C (the number of proxies) is always the number of classes in DATA/train; the official code hard-codes it per
    data set (98 for cars196), so a miniature folder would crash it. A mismatch with the paper's C is a warning.
  * -C, --start_epoch, --do_nmi, --train_with_l2norm are accepted so that pasted lines run, and ignored (a warning
    says so when they are set): see the TrainConfig comments.
  * --loss defaults to Norm_SoftMax (the official default, SoftMax_vanilla, is not implemented there either);
    --data_name defaults to glyphs, whose defaults (PROFILES) train on one CPU core in minutes.
  * --k_list given explicitly is honoured; the official code overrides it for the four benchmarks.
  * --gpu is optional, and --gpu=0 without CUDA warns and trains on the CPU; --seed (default 0) seeds everything,
    always; --deterministic adds torch.use_deterministic_algorithms and cuDNN's deterministic mode.
  * booleans (--memvir=1, --memvir=True, --freeze_BN, --freeze_BN=1) reject values that are neither true nor false.
  * --early_stop_epoch counts evaluations without gain in any metric, as the official code does (not epochs).
  * --eval_best evaluates checkpoints/best_recall_1.pt of --save_path.
  * --workers is capped at the number of CPUs this process may use.
With torchrun, rank 0 evaluates (the others wait for its result) and writes every file (memvir/distributed.py).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import glob
import inspect
import json
import math
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from . import distributed
from .losses import LOSSES, ProxyNCA, build_loss
from .memory import MemVir

__all__ = ["TrainConfig", "train", "main", "resolve_config", "learning_rates", "evaluate", "TrainingError",
           "build_parser", "config_from_argv"]


# ----------------------------------------------------------------------------------------------------------------
# Config: a flat dataclass of scalars named after the official main.py's flags (plus a few extras, marked).
# None means "the default of the profile": the official code's defaults for the image benchmarks, a CPU-sized
# recipe for the glyph benchmark (PROFILES below).


@dataclass
class TrainConfig:
    # -- data --
    data: str | None = None  # prepared folder with train/ and test/ (glyphs: optional cache folder for renders)
    data_name: str = "glyphs"  # cars196 | cub200 | sop | inshop | glyphs | custom; sets the Recall@K list
    save_path: str | None = None  # the run folder; None: results/runs/<name made of the parameters>
    # -- model: backbone -> global pooling -> linear embedding -> L2 norm --
    backbone: str | None = None  # bninception | resnet18/34/50/101 | glyphcnn
    pretrained: str | None = None  # imagenet | none | a weights file (extra)
    pooling_type: str = "GAP"  # GAP | GMP | GAP,GMP
    dim: int | None = None  # D, the embedding size
    input_size: int | None = None  # crop side in pixels (glyphs: the rendered image side)
    train_with_l2norm: bool = True  # accepted, no effect: our losses L2-normalise embeddings themselves
    # -- loss --
    loss: str = "Norm_SoftMax"  # Norm_SoftMax (NormSoftmax) | Proxy_NCA (ProxyNCA)
    scale: float | None = None  # logit scale s (official default 1.0; glyphs: the loss's own, 23 or 12)
    init_type: str = "normal"  # Proxy-NCA proxies: normal (std sqrt(2/D)) | uniform (+-1/sqrt(C)), as official
    C: int = 98  # accepted, ignored: C is always the number of classes in the train folder
    # -- MemVir (Sec. 3) --
    memvir: bool = False  # use the memory of virtual classes
    mem_num_step: int | None = None  # N, past steps taken as virtual classes
    mem_step_gap: int | None = None  # M, steps skipped between two taken steps
    warm_epoch: int | None = None  # U, epochs trained before the memory starts filling
    # -- optimisation --
    optimizer: str = "adam"  # adam | adamw | rmsprop | sgd
    epochs: int | None = None  # total epochs (may grow when resuming)
    batch_size: int = 128  # B, the global batch (all processes together)
    n_instance: int = 1  # images per class in a batch; 1 = plain shuffle (the paper's setting)
    modellr: float | None = None  # learning rate of backbone and embedding
    centerlr: float = 0.01  # learning rate of the proxies
    weight_decay: float = 1e-4
    eps: float = 0.01  # Adam's epsilon (official)
    decay_rate: float = 0.1
    decay_step: int | None = None
    decay_stop: int = 100000
    freeze_BN: bool = False  # BatchNorm in eval mode while training
    use_amp: bool = False  # autocast: float16 + GradScaler on CUDA, bfloat16 on CPU
    deterministic: bool = False  # deterministic algorithms (seeding is always on, see seed)
    seed: int = 0  # (extra) seeds torch, numpy, random, the batches and the data augmentation
    # -- evaluation and checkpoints --
    check_epoch: int | None = None  # evaluate every check_epoch epochs
    k_list: str | None = None  # Recall@K list, e.g. "1,2,4,8"; None: the data set's (as official)
    eval_best: bool = False  # only evaluate the best (Recall@1) checkpoint of save_path
    early_stop_epoch: int = 0  # stop after this many evaluations without improvement (0: never), as official
    max_to_keep: int = 1  # epoch checkpoints kept (0: all); the best per metric are kept besides
    do_nmi: bool = False  # accepted, ignored: NMI is not computed
    start_epoch: int = 0  # accepted, ignored: a run resumes from its newest checkpoint
    # -- glyph benchmark (extras; memvir.data.glyphs) --
    num_classes: int = 400  # classes rendered; the first half train, the rest test
    instances_per_class: int = 20
    min_fonts: int = 10  # a class needs this many distinct renders
    val_classes: int = 0  # train classes held out for validation (evaluated besides the test classes)
    glyph_seed: int = 0  # seed of the glyph set (fixed across training seeds: one benchmark)
    # -- machine --
    gpu: str | None = None  # GPU id; None: the first GPU if any, else the CPU; "cpu" forces the CPU
    workers: int | None = None  # data-loading processes (at most the CPUs this process may use)
    progress: bool = True  # tqdm bar per epoch (only on a terminal)


PROFILES = {
    # The official main.py's defaults; the image benchmarks and custom folders use them.
    "official": dict(epochs=50, dim=64, modellr=1e-4, backbone="bninception", pretrained="imagenet",
                     input_size=224, check_epoch=5, decay_step=20, workers=5, scale=1.0, mem_num_step=-1,
                     mem_step_gap=1, warm_epoch=0),
    # The glyph benchmark on one CPU core: 200 + 200 classes of 20 images at 32 px, a 0.1 M-parameter CNN.
    "glyphs": dict(epochs=20, dim=128, modellr=1e-3, backbone="glyphcnn", pretrained="none", input_size=32,
                   check_epoch=5, decay_step=10, workers=0, scale=None, mem_num_step=10, mem_step_gap=3,
                   warm_epoch=5),
}
K_LISTS = {"cars196": "1,2,4,8", "cub200": "1,2,4,8", "sop": "1,10,100,1000", "inshop": "1,10,20,40",
           "glyphs": "1,2,4,8", "custom": "1,2,4,8"}
CANONICAL_LOSS = {"normsoftmax": "Norm_SoftMax", "proxynca": "Proxy_NCA"}
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
# Flags that may differ when a run resumes: they do not change the numbers it produces (epochs may only grow).
RESUME_MAY_DIFFER = ("workers", "gpu", "progress", "epochs", "data", "eval_best", "save_path", "start_epoch")
ALIASES = {"wd": "weight_decay", "b": "batch_size", "j": "workers", "image_size": "input_size"}
BEST_METRICS = ("recall@1", "r_precision", "map_at_r")
EVAL_BATCH_SIZE = 128  # as the official test loader
CHECKPOINT_FORMAT = 1


class TrainingError(RuntimeError):
    """A run that cannot go on: a NaN loss, out of memory. The message says what to change."""


def resolve_config(config=None) -> TrainConfig:
    """Return a TrainConfig with every default filled in and every value checked.

    Args:
        config: a TrainConfig, a dict keyed by flag names (aliases wd, b, j, image_size and no_progress accepted),
            or None for all defaults (a glyph run).
    """
    if config is None:
        values = {}
    elif isinstance(config, TrainConfig):
        values = dataclasses.asdict(config)
    elif isinstance(config, dict):
        values = {ALIASES.get(k, k): v for k, v in config.items()}
        if "no_progress" in values:
            values["progress"] = not values.pop("no_progress")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected flag names such as {sorted(known)[:6]} "
                             f"(all: memvir.train.TrainConfig)")
    else:
        raise ValueError(f"config: expected a TrainConfig, a dict or None, got {type(config).__name__}")
    cfg = TrainConfig(**values)
    for field in dataclasses.fields(TrainConfig):  # booleans given as text ("1", "True") in a dict config
        if field.type == "bool" and not isinstance(getattr(cfg, field.name), bool):
            try:
                setattr(cfg, field.name, _bool(getattr(cfg, field.name)))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"--{field.name}: {exc}") from None

    from .data import DATA_NAMES  # the official aliases (car, cub, ...) -> canonical names

    name = DATA_NAMES.get(str(cfg.data_name).lower())
    if name is None:
        raise ValueError(f"--data_name={cfg.data_name!r}: expected one of cars196, cub200, sop, inshop, glyphs, "
                         f"custom")
    cfg.data_name = name
    for key, value in PROFILES["glyphs" if name == "glyphs" else "official"].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    loss_key = str(cfg.loss).lower().replace("_", "").replace("-", "")
    if loss_key not in LOSSES:
        raise ValueError(f"--loss={cfg.loss!r}: unknown loss; known losses: Norm_SoftMax (also NormSoftmax), "
                         f"Proxy_NCA (also ProxyNCA), in any case")
    cfg.loss = CANONICAL_LOSS[loss_key]
    if cfg.scale is None:  # the loss's own default scale (glyph profile)
        cfg.scale = inspect.signature(LOSSES[loss_key]).parameters["scale"].default
    if cfg.k_list is None:
        cfg.k_list = K_LISTS[name]
    if cfg.save_path is None:
        mem = f"_memvir_N{cfg.mem_num_step}_M{cfg.mem_step_gap}_U{cfg.warm_epoch}" if cfg.memvir else ""
        cfg.save_path = os.path.join("results", "runs",
                                     f"{name}_{cfg.loss.lower()}{mem}_{cfg.backbone}_d{cfg.dim}_seed{cfg.seed}")
    cfg.gpu = None if cfg.gpu is None else str(cfg.gpu)
    cfg.pretrained = str(cfg.pretrained)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the flag and what it expects for the first bad value."""

    def need_int(name, low):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"--{name}={value!r}: expected an integer >= {low}")

    for name in ("epochs", "batch_size", "n_instance", "dim", "input_size", "check_epoch", "decay_step"):
        need_int(name, 1)
    for name in ("decay_stop", "max_to_keep", "early_stop_epoch", "seed", "workers", "num_classes",
                 "instances_per_class", "min_fonts", "val_classes", "glyph_seed", "start_epoch"):
        need_int(name, 0)
    for name in ("modellr", "centerlr", "weight_decay", "eps", "decay_rate", "scale"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name}={value!r}: expected a finite number >= 0")
    if cfg.scale <= 0:
        raise ValueError(f"--scale={cfg.scale!r}: expected a number > 0 (the logit scale)")
    if cfg.batch_size < cfg.n_instance or cfg.batch_size % cfg.n_instance:
        raise ValueError(f"--batch_size={cfg.batch_size} with --n_instance={cfg.n_instance}: expected a batch "
                         f"size that is a multiple of n_instance (classes per batch x images per class); raise "
                         f"--batch_size or lower --n_instance")
    if cfg.memvir:
        for name, symbol in (("mem_num_step", "N, past steps taken as virtual classes"),
                             ("mem_step_gap", "M, steps skipped between two taken steps"),
                             ("warm_epoch", "U, warm-up epochs before the memory fills")):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"--{name}={value!r}: expected an integer >= 0 ({symbol}) with --memvir")
    if str(cfg.optimizer).lower() not in OPTIMIZERS:
        raise ValueError(f"--optimizer={cfg.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    cfg.optimizer = str(cfg.optimizer).lower()
    if cfg.init_type not in ("normal", "uniform"):
        raise ValueError(f"--init_type={cfg.init_type!r}: expected normal or uniform")
    parse_k_list(cfg.k_list)
    from .models import BACKBONES

    if str(cfg.backbone).lower() not in BACKBONES:
        raise ValueError(f"--backbone={cfg.backbone!r}: expected one of {', '.join(BACKBONES)}")
    cfg.backbone = str(cfg.backbone).lower()
    if cfg.data_name != "glyphs" and cfg.data is None:
        raise ValueError(f"--data: data_name={cfg.data_name} needs --data=<folder> holding train/<class>/<image> "
                         f"and test/<class>/<image> (see `python -m memvir prepare --help`)")


def parse_k_list(k_list) -> list[int]:
    """Parse "1,2,4,8" into [1, 2, 4, 8] (the official --k_list format)."""
    try:
        ks = [int(k) for k in str(k_list).split(",")]
    except ValueError:
        ks = []
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k_list={k_list!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    return ks


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
# The loop.


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
    device = pick_device(cfg.gpu, dist_info)
    log = print if dist_info.is_main else _quiet
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_determinism(cfg.deterministic))
        if distributed.init(dist_info, device):  # leave a process group the caller made alone
            cleanup.callback(distributed.shutdown, dist_info)
        try:
            if cfg.eval_best:
                return _evaluate_best(cfg, device, log)
            return _train(cfg, dist_info, device, log, cleanup, on_step, on_epoch_end)
        except torch.OutOfMemoryError:
            raise TrainingError(_oom_message(cfg, device)) from None
        except RuntimeError as exc:
            if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
                raise TrainingError(_oom_message(cfg, device)) from None
            raise


def _train(cfg, dist_info, device, log, cleanup, on_step, on_epoch_end):
    from tqdm import tqdm

    from .data import build_datasets
    from .data.samplers import BatchSampler
    from .models import build_model, freeze_bn

    for flag, default, why in (("C", 98, "C is the number of classes in the train folder"),
                               ("start_epoch", 0, "a run resumes from its newest checkpoint"),
                               ("do_nmi", False, "NMI is not computed"),
                               ("train_with_l2norm", True, "our losses L2-normalise the embeddings themselves")):
        if getattr(cfg, flag) != default:
            warnings.warn(f"--{flag}={getattr(cfg, flag)} is accepted for compatibility and ignored: {why}",
                          stacklevel=3)
    os.makedirs(cfg.save_path, exist_ok=True)
    ckpt_dir = os.path.join(cfg.save_path, "checkpoints")
    resume = _latest_checkpoint(ckpt_dir, device)
    _check_same_run(cfg, resume, dist_info)

    # -- seeds: the model's initialisation and the proxies' are functions of cfg.seed --
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # every device's generator

    # -- data --
    if cfg.data_name == "glyphs":
        splits = build_datasets("glyphs", data=cfg.data, image_size=cfg.input_size, num_classes=cfg.num_classes,
                                instances_per_class=cfg.instances_per_class, min_fonts=cfg.min_fonts,
                                seed=cfg.glyph_seed, val_classes=cfg.val_classes)
    else:
        splits = build_datasets(cfg.data_name, data=cfg.data, backbone=cfg.backbone, input_size=cfg.input_size)
    C = splits.num_classes  # always from the training data; the official code hard-codes it per data set
    # Batches: rank r gets its slice of every global batch; the order is a function of (seed, epoch).
    sampler = BatchSampler(splits.train.labels, cfg.batch_size, cfg.n_instance, seed=cfg.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size)
    train_set = EpochSeeded(splits.train, cfg.seed)  # augmentation: a function of (seed, epoch, index)
    workers = min(cfg.workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"--batch_size={cfg.batch_size}: {len(splits.train)} training images give no batch; "
                         f"lower --batch_size")

    # -- model: backbone -> global pooling -> linear embedding -> L2 norm, (B, C, H, W) -> (B, D) --
    net = build_model(cfg.backbone, cfg.dim, cfg.pooling_type, cfg.pretrained,
                      in_channels=1 if cfg.data_name == "glyphs" else 3).to(device)
    if dist_info.enabled and not cfg.freeze_BN:
        if device.type == "cuda":  # the BatchNorm statistics of the global batch, as one GPU would see it
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        else:
            warnings.warn("several CPU processes without --freeze_BN: BatchNorm statistics are per process (PyTorch "
                          "has no SyncBatchNorm on CPU), so the run differs from a one-process run", stacklevel=3)
    train_net = net
    if dist_info.enabled:
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    # -- loss: one proxy per training class, (C, D); MemVir wraps it (Sec. 3.2) --
    loss_fn = build_loss(cfg.loss, C, cfg.dim, cfg.scale)
    if isinstance(loss_fn, ProxyNCA) and cfg.init_type == "uniform":  # the official kaiming_uniform_(a=sqrt(5))
        nn.init.uniform_(loss_fn.proxies, -1 / math.sqrt(C), 1 / math.sqrt(C))
    criterion = MemVir(loss_fn, cfg.mem_num_step, cfg.mem_step_gap, cfg.warm_epoch) if cfg.memvir else loss_fn
    criterion.to(device)

    # -- optimiser: three groups as the official code (backbone, embedding at modellr; proxies at centerlr) --
    groups = [{"params": net.backbone.parameters(), "lr": cfg.modellr},
              {"params": net.embedding.parameters(), "lr": cfg.modellr},
              {"params": loss_fn.parameters(), "lr": cfg.centerlr}]
    optimizer = make_optimizer(cfg, groups)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_amp and device.type == "cuda")

    # -- resume: everything that changes during training comes back from the checkpoint --
    history = {"evaluations": [], "best": {}, "last": None, "finished": False, "stopped_early": None}
    start_epoch, step, elapsed, early_stop_count = 0, 0, 0.0, 0
    if resume is not None:
        path, ckpt = resume
        net.load_state_dict(ckpt["model"])
        criterion.load_state_dict(ckpt["criterion"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and scaler.is_enabled():  # empty when saved on a CPU (no GradScaler there)
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        history, early_stop_count = ckpt["history"], ckpt["early_stop_count"]
        start_epoch, step, elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed"]
        log(f"resumed from {path} (epoch {start_epoch}, step {step})")
        if dist_info.is_main:  # a kill between the checkpoint and its best_* links: make them now
            link_best(path, ckpt_dir, [k for k, b in history["best"].items() if b["epoch"] == start_epoch])
        if history["stopped_early"] is not None or (history["finished"] and start_epoch >= cfg.epochs):
            log(f"{cfg.save_path}: the run is finished; nothing to train")
            return _results(history, cfg)
        history["finished"] = False
    if dist_info.enabled:  # identical proxies everywhere (they are seeded identically; this makes sure)
        for tensor in loss_fn.parameters():
            torch.distributed.broadcast(tensor.data, src=0)

    # -- outputs (rank 0 only): config.json, steps.csv, TensorBoard --
    writer = steps = None
    if dist_info.is_main:
        atomic_json(dataclasses.asdict(cfg), os.path.join(cfg.save_path, "config.json"))
        steps = StepLog(os.path.join(cfg.save_path, "steps.csv"), keep_below=step)
        cleanup.callback(steps.close)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides the events a killed run wrote after its last checkpoint (all of them when none).
        writer = SummaryWriter(cfg.save_path, purge_step=step)
        cleanup.callback(writer.close)
    ks = parse_k_list(cfg.k_list)
    log(f"device {device}{f' x {dist_info.world_size} processes' if dist_info.enabled else ''} | "
        f"{cfg.data_name}: {len(splits.train)} train images in {C} classes, {len(splits.test)} test images | "
        f"{cfg.backbone} -> {cfg.dim}-d | {cfg.loss} (scale {cfg.scale:g})"
        + (f" + MemVir N={cfg.mem_num_step} M={cfg.mem_step_gap} U={cfg.warm_epoch}" if cfg.memvir else "")
        + f" | {len(loader)} steps per epoch")

    t0 = time.time() - elapsed  # wall time counts the time before a resume, not the time lost after it
    for epoch in range(start_epoch + 1, cfg.epochs + 1):  # 1-based, as the official code
        model_lr, center_lr = learning_rates(epoch, cfg)
        for group, lr in zip(optimizer.param_groups, (model_lr, model_lr, center_lr)):
            group["lr"] = lr
        sampler.set_epoch(epoch - 1)
        train_set.set_epoch(epoch - 1)
        train_net.train()
        if cfg.freeze_BN:
            freeze_bn(net)  # running statistics stay as loaded; BatchNorm scale and shift still train

        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", mininterval=2.0, leave=False, dynamic_ncols=True,
                   disable=not (cfg.progress and dist_info.is_main and sys.stderr.isatty()))
        for i, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True)  # (b, channels, H, W), this process's slice
            labels = labels.to(device, non_blocking=True)  # (b,)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.use_amp):
                emb = train_net(images, l2_norm=True)  # (b, D) unit rows
                emb, labels = distributed.gather_batch(emb, labels, dist_info)  # (B, D), (B,): the global batch
                if not bool(torch.isfinite(emb).all()):
                    raise TrainingError(_nan_message("embeddings are not finite", step, epoch, ckpt_dir))
                loss = criterion(emb, labels, epoch - 1) if cfg.memvir else criterion(emb, labels)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(_nan_message(f"loss is {loss_value}", step, epoch, ckpt_dir))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            num_taken = criterion.num_taken if cfg.memvir else 0
            classes = criterion.num_classes_in_use if cfg.memvir else C
            embeddings = criterion.num_embeddings_in_use if cfg.memvir else emb.shape[0]
            if dist_info.is_main:
                steps.write(step, epoch, loss_value, model_lr, num_taken, classes, embeddings)
                if i % 10 == 0:  # the official logging interval
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/learning_rate", model_lr, step)
                    writer.add_scalar("train/num_classes_in_use", classes, step)
            bar.set_postfix(loss=f"{loss_value:.4f}", classes=classes, refresh=False)
            step += 1
            if on_step is not None:
                on_step(step, epoch, loss_value)
        bar.close()

        # -- evaluation on the test classes (rank 0; the others wait and receive the result) --
        last = epoch == cfg.epochs
        stop, improved = False, []
        if epoch % cfg.check_epoch == 0 or last:
            ev = None
            if dist_info.is_main:
                ev = {"epoch": epoch, "step": step}
                ev.update(evaluate(net, splits.test, ks, device, workers, splits))
                if splits.val is not None:
                    ev["val"] = evaluate(net, splits.val, ks, device, workers)
                ev["wall_time"] = time.time() - t0
            ev = distributed.broadcast_object(ev, dist_info)
            improved = record_evaluation(history, ev)
            early_stop_count = 0 if improved else early_stop_count + 1
            stop = cfg.early_stop_epoch > 0 and early_stop_count >= cfg.early_stop_epoch
            if dist_info.is_main:
                log(summary_line(ev, history, ks))
                write_eval_scalars(writer, ev, history, improved, ks)
            if stop:
                history["stopped_early"] = epoch
                log(f"stopping: no metric improved in the last {cfg.early_stop_epoch} evaluations")
        history["finished"] = last or stop

        # -- checkpoint (every epoch), then metrics.json; both atomic --
        if dist_info.is_main:
            steps.flush()
            state = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(cfg), "epoch": epoch, "step": step,
                     "elapsed": time.time() - t0, "model": net.state_dict(), "criterion": criterion.state_dict(),
                     "optimizer": optimizer.state_dict(), "lrs": [g["lr"] for g in optimizer.param_groups],
                     "scaler": scaler.state_dict(), "sampler": {"seed": cfg.seed, "epoch": epoch},
                     "rng": get_rng_state(), "history": history, "early_stop_count": early_stop_count}
            save_checkpoint(state, ckpt_dir, epoch, cfg.max_to_keep, improved)
            atomic_json(history, os.path.join(cfg.save_path, "metrics.json"))
            writer.flush()
        distributed.barrier(dist_info)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
        if stop:
            break
    return _results(history, cfg)


def _results(history, cfg):
    return {**history, "save_path": cfg.save_path, "config": dataclasses.asdict(cfg)}


def _quiet(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Pieces of the loop.


class EpochSeeded(torch.utils.data.Dataset):
    """Wrap a dataset so that item i of epoch e is drawn with torch's generator seeded by (seed, e, i).

    The random crops, flips and shifts of an image then depend neither on the process that loads it (DDP ranks,
    DataLoader workers) nor on what ran before, so a resumed or a multi-process run augments exactly as a
    one-process uninterrupted run does. The caller's generator state is restored after each item.
    """

    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        self.labels = dataset.labels

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(index)) % (2**63)
        gen = torch.default_generator  # the CPU generator that transforms draw from (torch.manual_seed is slower)
        saved = gen.get_state()
        try:
            gen.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            gen.set_state(saved)


def make_optimizer(cfg: TrainConfig, groups):
    """Build the official optimiser: adam (eps), adamw (eps), rmsprop (alpha 0.99, momentum 0.9), sgd (Nesterov)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=0.99, weight_decay=cfg.weight_decay, momentum=0.9)
    return torch.optim.SGD(groups, weight_decay=cfg.weight_decay, momentum=0.9, nesterov=True)


@torch.no_grad()
def embed(net, dataset, device, workers=0):
    """Return the L2-normalised embeddings of a dataset, (n, D) float32 on the CPU, in dataset order."""
    was_training = net.training
    net.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    out = [net(images.to(device, non_blocking=True), l2_norm=True).float().cpu() for images, _ in loader]
    net.train(was_training)
    return torch.cat(out)  # (n, D)


def evaluate(net, dataset, ks, device, workers=0, splits=None) -> dict:
    """Return Recall@K, r_precision and map_at_r of `net` on `dataset` (In-Shop: queries against the gallery).

    Args:
        net: the embedding network (not the DDP wrapper).
        dataset: yields (image, label), with `.labels`.
        ks: the K of Recall@K.
        splits: the Splits `dataset` came from; when it has query and gallery (In-Shop) those are used instead.
    Paper: MemVir Sec. 4 (Recall@K); R-Precision and MAP@R as Musgrave et al. 2020.
    """
    from .metrics import query_gallery_metrics, retrieval_metrics

    if splits is not None and splits.query is not None and dataset is splits.test:
        return query_gallery_metrics(embed(net, splits.query, device, workers), splits.query.labels,
                                     embed(net, splits.gallery, device, workers), splits.gallery.labels, ks=ks)
    return retrieval_metrics(embed(net, dataset, device, workers), dataset.labels, ks=ks)


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


def summary_line(ev: dict, history: dict, ks) -> str:
    """One line per evaluation: epoch, step, the metrics, the best Recall@1 so far, the wall time."""
    recalls = " ".join(f"R@{k} {ev[f'recall@{k}']:.4f}" for k in ks)
    rp, mapr = (f"{ev[k]:.4f}" if ev[k] is not None else "n/a" for k in ("r_precision", "map_at_r"))
    best = history["best"].get("recall@1")
    best_s = f" | best R@1 {best['value']:.4f} (epoch {best['epoch']})" if best else ""
    return f"epoch {ev['epoch']} step {ev['step']}: {recalls} RP {rp} MAP@R {mapr}{best_s} | {ev['wall_time']:.0f} s"


def write_eval_scalars(writer, ev, history, improved, ks):
    """TensorBoard scalars with the official names (eval_epoch/*, eval_step/*, *_best)."""
    official = {"Recall_1": "recall@1", "RP": "r_precision", "MAP": "map_at_r"}
    for k in ks:
        writer.add_scalar(f"eval_epoch/Recall_{k}", ev[f"recall@{k}"], ev["epoch"])
        writer.add_scalar(f"eval_step/Recall_{k}", ev[f"recall@{k}"], ev["step"])
    for name, key in (("RP", "r_precision"), ("MAP", "map_at_r")):
        if ev[key] is not None:
            writer.add_scalar(f"eval_epoch/{name}", ev[key], ev["epoch"])
            writer.add_scalar(f"eval_step/{name}", ev[key], ev["step"])
    for name, key in official.items():
        if key in improved:
            writer.add_scalar(f"eval_epoch/{name}_best", history["best"][key]["value"], ev["epoch"])
    for key, value in (ev.get("val") or {}).items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"eval_val/{key}", value, ev["epoch"])


def pick_device(gpu, dist_info) -> torch.device:
    """The device to train on: torchrun's LOCAL_RANK GPU; else --gpu's GPU; else the first GPU; else the CPU.

    --gpu on a machine without CUDA warns and uses the CPU, so the official README's lines run anywhere.
    """
    cuda = torch.cuda.is_available()
    if dist_info.enabled:
        if cuda:
            torch.cuda.set_device(dist_info.local_rank)
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cpu")
    if gpu is None:
        return torch.device("cuda", 0) if cuda else torch.device("cpu")
    if gpu.strip().lower() == "cpu":
        return torch.device("cpu")
    ids = [s.strip() for s in gpu.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ValueError(f"--gpu={gpu!r}: expected a GPU id such as 0 (or cpu)")
    if not cuda:
        warnings.warn(f"--gpu={gpu}: no CUDA GPU on this machine; training on the CPU", stacklevel=3)
        return torch.device("cpu")
    if len(ids) > 1:
        warnings.warn(f"--gpu={gpu}: one process uses one GPU (cuda:{ids[0]}); for several, run "
                      f"`torchrun --nproc_per_node={len(ids)} -m memvir train ...`", stacklevel=3)
    index = int(ids[0])
    if index >= torch.cuda.device_count():
        raise ValueError(f"--gpu={gpu}: this machine has {torch.cuda.device_count()} GPU(s), ids 0.."
                         f"{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


@contextlib.contextmanager
def _determinism(deterministic: bool):
    """Set torch's determinism flags for the run and restore the caller's afterwards."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible results
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic, cudnn.benchmark = True, False
    else:
        cudnn.benchmark = True  # as the official code: fastest kernels, not reproducible on a GPU
    try:
        yield
    finally:
        if torch.are_deterministic_algorithms_enabled() != saved[0]:  # the call is slow the first time: skip it
            torch.use_deterministic_algorithms(saved[0])
        cudnn.deterministic, cudnn.benchmark = saved[1], saved[2]


def _oom_message(cfg, device):
    return (f"out of memory on {device} with --batch_size={cfg.batch_size}, --input_size={cfg.input_size}, "
            f"--backbone={cfg.backbone}: lower --batch_size, turn on --use_amp=1, or lower --input_size")


def _nan_message(what, step, epoch, ckpt_dir):
    return (f"{what} at step {step} (epoch {epoch}); training stopped and the last good checkpoint in "
            f"{ckpt_dir} is kept: lower --modellr / --centerlr, or turn off --use_amp")


# ----------------------------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, the step log.


def _atomic(path, write, mode="wb"):
    """Write a file through a temporary file in the same folder and os.replace: readers see old or new, never half."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_json(obj, path):
    """Write `obj` as JSON (NaN written as null), atomically."""
    _atomic(path, lambda fh: json.dump(_finite(obj), fh, indent=1), mode="w")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def save_checkpoint(state, ckpt_dir, epoch, max_to_keep, improved):
    """Write checkpoints/epoch_NNNNN.pt, keep the newest max_to_keep (0: all), link best_<metric>.pt to it."""
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"epoch_{epoch:05d}.pt")
    _atomic(path, lambda fh: torch.save(state, fh))
    link_best(path, ckpt_dir, improved)
    if max_to_keep > 0:
        for old in _epoch_checkpoints(ckpt_dir)[:-max_to_keep]:
            os.remove(old)


def link_best(path, ckpt_dir, metrics):
    """Make checkpoints/best_<metric>.pt another name of the checkpoint file `path`, for each metric given."""
    for key in metrics:
        best = os.path.join(ckpt_dir, f"best_{key.replace('@', '_')}.pt")
        tmp = f"{best}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        try:
            os.link(path, tmp)  # a second name for the same file: no copy, survives the epoch file's deletion
        except OSError:  # a file system without hard links: copy
            with open(path, "rb") as src:
                _atomic(tmp, lambda fh: fh.write(src.read()))
        os.replace(tmp, best)  # atomic: best_* is always a whole checkpoint


def _epoch_checkpoints(ckpt_dir):
    return sorted(glob.glob(os.path.join(ckpt_dir, "epoch_[0-9]*.pt")))


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint with torch.load(weights_only=True): tensors and plain Python types only."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a memvir.train checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _latest_checkpoint(ckpt_dir, device):
    """Return (path, checkpoint) of the newest epoch checkpoint, or None."""
    paths = _epoch_checkpoints(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    return (paths[-1], load_checkpoint(paths[-1], device)) if paths else None


def _check_same_run(cfg, resume, dist_info):
    """Refuse to continue a run whose checkpoint (or config.json) was made with other flags; list the differences."""
    if resume is not None:
        saved, source = resume[1]["config"], resume[0]
    else:
        path = os.path.join(cfg.save_path, "config.json")
        if not os.path.exists(path):
            return
        with open(path) as fh:
            saved, source = json.load(fh), path
    now = dataclasses.asdict(cfg)
    diffs = [f"--{k}: {saved.get(k)!r} there, {now[k]!r} now" for k in now
             if k not in RESUME_MAY_DIFFER and saved.get(k) != now[k]]
    if diffs:
        raise ValueError(f"{cfg.save_path} holds a run made with other flags ({source}): " + "; ".join(diffs)
                         + ". Use another --save_path, or the same flags to resume")
    if resume is not None and cfg.epochs < resume[1]["epoch"]:
        raise ValueError(f"--epochs={cfg.epochs}: {source} is at epoch {resume[1]['epoch']} already; expected "
                         f"--epochs >= {resume[1]['epoch']} (epochs may grow on resume, not shrink)")


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
        _atomic(path, lambda fh: csv.writer(fh).writerows([self.COLUMNS, *kept]), mode="w")
        self.fh = open(path, "a", newline="")
        self.writer = csv.writer(self.fh)

    def write(self, step, epoch, loss, lr, num_taken, classes, embeddings):
        self.writer.writerow([step, epoch, repr(float(loss)), repr(float(lr)), num_taken, classes, embeddings])

    def flush(self):
        self.fh.flush()

    def close(self):
        self.fh.close()


def get_rng_state() -> dict:
    """The state of every random generator, as tensors and plain types (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
            "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss}}


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _evaluate_best(cfg, device, log):
    """--eval_best: evaluate the best-Recall@1 checkpoint of save_path on the test classes, train nothing."""
    from .data import build_datasets
    from .models import build_model

    path = os.path.join(cfg.save_path, "checkpoints", "best_recall_1.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--eval_best: {path} does not exist; train the model first (same --save_path)")
    ckpt = load_checkpoint(path, device)
    saved = TrainConfig(**ckpt["config"])
    if saved.data_name == "glyphs":
        splits = build_datasets("glyphs", data=cfg.data, image_size=saved.input_size,
                                num_classes=saved.num_classes, instances_per_class=saved.instances_per_class,
                                min_fonts=saved.min_fonts, seed=saved.glyph_seed, val_classes=saved.val_classes)
    else:
        splits = build_datasets(saved.data_name, data=cfg.data, backbone=saved.backbone, input_size=saved.input_size)
    net = build_model(saved.backbone, saved.dim, saved.pooling_type, "none",
                      in_channels=1 if saved.data_name == "glyphs" else 3).to(device)
    net.load_state_dict(ckpt["model"])
    ks = parse_k_list(saved.k_list)
    ev = {"epoch": ckpt["epoch"], "step": ckpt["step"], **evaluate(net, splits.test, ks, device, cfg.workers, splits),
          "wall_time": 0.0}
    history = {"evaluations": [], "best": {}, "last": None, "finished": True, "stopped_early": None}
    record_evaluation(history, ev)
    log(summary_line(history["last"], history, ks))
    return _results(history, cfg)


# ----------------------------------------------------------------------------------------------------------------
# The command line: every flag of the official main.py, with its meaning and default, plus our extras.


class _ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, no SystemExit: main() prints it and returns 2
        raise _ArgumentError(f"{message} (see `python -m memvir train --help`)")


def _bool(text):
    """Parse a boolean as the official code (true, t, yes, 1), and reject what is neither true nor false."""
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in ("true", "t", "yes", "y", "1"):
        return True
    if s in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (or 1/0), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m memvir train` parser. Profile-dependent defaults are None here and filled by resolve_config."""
    p = _Parser(prog="python -m memvir train", allow_abbrev=False,
                description="Train (and periodically evaluate) an embedding network; accepts the official "
                            "MemVir main.py flags. Defaults in [official / glyphs].")
    flag = p.add_argument

    def boolean(*names, default, help):
        flag(*names, type=_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)

    g = p.add_argument_group("data")
    flag = g.add_argument
    flag("--data", help="prepared folder with train/<class>/* and test/<class>/* (glyphs: render cache folder)")
    flag("--data_name", default="glyphs", help="cars196 | cub200 | sop | inshop | glyphs | custom [glyphs]")
    flag("--save_path", help="run folder [results/runs/<parameters>]; rerunning resumes from its checkpoint")
    flag("--k_list", help="Recall@K list [per data set, as official: 1,2,4,8; sop 1,10,100,1000; inshop 1,10,20,40]")
    g = p.add_argument_group("model")
    flag = g.add_argument
    flag("--backbone", help="bninception | resnet18/34/50/101 | glyphcnn [bninception / glyphcnn]")
    flag("--pretrained", help="imagenet | none | path to backbone weights [imagenet / none]")
    flag("--pooling_type", default="GAP", help="GAP | GMP | GAP,GMP [GAP]")
    flag("--dim", type=int, help="embedding size D [64 / 128]")
    flag("--input_size", "--image_size", dest="input_size", type=int, help="input side in pixels [224 / 32]")
    boolean("--train_with_l2norm", default=True, help="accepted; no effect (our losses normalise) [True]")
    g = p.add_argument_group("loss and MemVir")
    flag = g.add_argument
    flag("--loss", default="Norm_SoftMax", help="Norm_SoftMax (NormSoftmax) | Proxy_NCA (ProxyNCA) [Norm_SoftMax]")
    flag("--scale", type=float, help="logit scale [1.0 / the loss's: 23 Norm-SoftMax, 12 Proxy-NCA]")
    flag("--init_type", default="normal", help="Proxy-NCA proxy init: normal | uniform [normal]")
    flag("-C", dest="C", type=int, default=98, help="accepted, ignored: C = classes in the train folder")
    boolean("--memvir", default=False, help="train with MemVir [False]")
    flag("--mem_num_step", type=int, help="N, past steps used as virtual classes [-1 (must be set with --memvir) / 10]")
    flag("--mem_step_gap", type=int, help="M, gap between taken steps [1 / 3]")
    flag("--warm_epoch", type=int, help="U, warm-up epochs before the memory fills [0 / 5]")
    g = p.add_argument_group("optimisation")
    flag = g.add_argument
    flag("--optimizer", default="adam", help="adam | adamw | rmsprop | sgd [adam]")
    flag("--epochs", type=int, help="total epochs; may grow when resuming [50 / 20]")
    flag("--start_epoch", type=int, default=0, help="accepted, ignored: runs resume from their checkpoint")
    flag("-b", "--batch_size", type=int, default=128, help="global mini-batch size [128]")
    flag("--n_instance", type=int, default=1, help="images per class in a batch [1]")
    flag("--modellr", type=float, help="backbone and embedding learning rate [1e-4 / 1e-3]")
    flag("--centerlr", type=float, default=0.01, help="proxy learning rate [0.01]")
    flag("--wd", "--weight_decay", dest="weight_decay", type=float, default=1e-4, help="weight decay [1e-4]")
    flag("--eps", type=float, default=0.01, help="epsilon of Adam [0.01]")
    flag("--decay_rate", type=float, default=0.1, help="learning-rate decay factor [0.1]")
    flag("--decay_step", type=int, help="decay at the start of every epoch divisible by it [20 / 10]")
    flag("--decay_stop", type=int, default=100000, help="no decay after this epoch [100000]")
    boolean("--freeze_BN", default=False, help="keep BatchNorm statistics frozen [False]")
    boolean("--use_amp", default=False, help="mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU [False]")
    boolean("--deterministic", default=False, help="deterministic algorithms [False]")
    flag("--seed", type=int, default=0, help="seed of everything random [0]")
    g = p.add_argument_group("evaluation and checkpoints")
    flag = g.add_argument
    flag("--check_epoch", type=int, help="evaluate every this many epochs, and after the last [5 / 5]")
    boolean("--eval_best", default=False, help="only evaluate the best Recall@1 checkpoint of --save_path")
    boolean("--do_nmi", default=False, help="accepted, ignored: NMI is not computed")
    flag("--early_stop_epoch", type=int, default=0, help="stop after this many evaluations without gain [0: never]")
    flag("--max_to_keep", type=int, default=1, help="epoch checkpoints kept, 0 = all [1]")
    g = p.add_argument_group("glyph benchmark")
    flag = g.add_argument
    flag("--num_classes", type=int, default=400, help="glyph classes, half train, half test [400]")
    flag("--instances_per_class", type=int, default=20, help="images per glyph class [20]")
    flag("--min_fonts", type=int, default=10, help="distinct renders a glyph class needs [10]")
    flag("--val_classes", type=int, default=0, help="train classes held out for validation [0]")
    flag("--glyph_seed", type=int, default=0, help="seed of the glyph set [0]")
    g = p.add_argument_group("machine")
    flag = g.add_argument
    flag("--gpu", help="GPU id; without CUDA: a warning, then the CPU [first GPU, else CPU]")
    flag("-j", "--workers", type=int, help="data-loading processes [5 / 0]")
    flag("--no_progress", dest="progress", action="store_false", help="no progress bar")
    return p


def config_from_argv(argv) -> TrainConfig:
    """Parse command-line flags into a resolved TrainConfig."""
    return resolve_config(TrainConfig(**vars(build_parser().parse_args(argv))))


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
    except (ValueError, FileNotFoundError, TrainingError) as exc:
        if os.environ.get("MEMVIR_TRACEBACK"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc) -> str:
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip()


if __name__ == "__main__":
    sys.exit(main())
