"""From the flags as given to a checked config: every default filled in (per data set and loss), every value checked
against what the data sets, models, losses and the memory accept. The flags themselves: memvir/config.py.

    cfg = resolve_config({"data_name": "glyphs", "memvir": True})   # every default filled in, every value checked
    cfg = config_from_argv(["--memvir", "1", "--epochs", "20"])     # the command line (build_parser)
    cfg = config_from_parameters(**cell)                            # notebooks/05_training.py's parameters cell
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os

from .config import build_parser as flag_parser
from .config import (ALIASES, FIELDS, K_LISTS, LOSS_HYPER, OPTIMIZERS, PROFILE_DEFAULTS, TrainConfig, parse_bool,
                     parse_k_list, profile_of)
from .data import canonical_data_name  # the official aliases (car, cub, ...) -> canonical names
from .data.decode import check_decode  # not .data.transforms: that needs torchvision, the glyphs do not
from .losses import LOGIT_LIMIT, ProxyLoss
from .memory import MEM_FILLS, MEM_VIRTUALS  # the memory's own option names (memvir/memory.py)
from .models import BACKBONES
from .registry import LOSSES, canonical_loss_name, default_scale, flag_help, loss_class
from .rundir import run_name

__all__ = ["resolve_config", "config_from_argv", "config_from_parameters", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The `python -m memvir train` parser (memvir.config.build_parser), its loss help from the declared losses."""
    return flag_parser(flag_help())


# ----------------------------------------------------------------------------------------------------------------
# Filling in and checking


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
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected flag names such as {list(FIELDS)[:6]} "
                             f"(all: memvir.config.TrainConfig)")
    else:
        raise ValueError(f"config: expected a TrainConfig, a dict or None, got {type(config).__name__}")
    cfg = TrainConfig(**values)
    for name, f in FIELDS.items():  # booleans given as text ("1", "True") in a dict config
        if f.type == "bool" and not isinstance(getattr(cfg, name), bool):
            try:
                setattr(cfg, name, parse_bool(getattr(cfg, name)))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"--{name}: {exc}") from None

    name = canonical_data_name(cfg.data_name)
    if name is None:
        raise ValueError(f"--data_name={cfg.data_name!r}: expected one of cars196, cub200, sop, inshop, glyphs, "
                         f"custom")
    cfg.data_name = name
    for key, value in PROFILE_DEFAULTS[profile_of(name)].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.loss = canonical_loss_name(cfg.loss)
    if cfg.scale is None:  # the official code's scale for its two losses; else the loss's own default
        official = profile_of(name) == "official" and cfg.loss in ("Norm_SoftMax", "Proxy_NCA")
        cfg.scale = 1.0 if official else default_scale(cfg.loss)
    takes = inspect.signature(loss_class(cfg.loss)).parameters
    for hyper in LOSS_HYPER:  # a hyper-parameter the loss has: its default when unset; one it lacks: refused
        if hyper in takes and getattr(cfg, hyper) is None:
            setattr(cfg, hyper, takes[hyper].default)
        elif hyper not in takes and getattr(cfg, hyper) is not None:
            having = sorted({c.name for c in LOSSES.values()  # the proxy losses, as before XBM came
                             if issubclass(c, ProxyLoss) and hyper in inspect.signature(c).parameters})
            raise ValueError(f"--{hyper}={getattr(cfg, hyper)!r}: {cfg.loss} has no {hyper}; the losses with one: "
                             f"{', '.join(having)}")
    if cfg.k_list is None:
        cfg.k_list = K_LISTS[name]
    if cfg.save_path is None:
        cfg.save_path = os.path.join("results", "runs", run_name(dataclasses.asdict(cfg)))
    cfg.gpu = None if cfg.gpu is None else str(cfg.gpu)
    cfg.pretrained = str(cfg.pretrained)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the flag and what it expects for the first bad value."""
    _check_numbers(cfg)
    _check_memory(cfg)
    _check_choices(cfg)


def _need_int(cfg, name, low):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"--{name}={value!r}: expected an integer >= {low}")


def _check_numbers(cfg):
    """Counts are integers, rates and scales finite numbers, the batch a multiple of n_instance."""
    for name in ("epochs", "batch_size", "n_instance", "dim", "input_size", "check_epoch", "decay_step"):
        _need_int(cfg, name, 1)
    for name in ("decay_stop", "max_to_keep", "early_stop_epoch", "seed", "workers", "num_classes",
                 "instances_per_class", "min_fonts", "val_classes", "glyph_seed", "start_epoch"):
        _need_int(cfg, name, 0)
    if cfg.C is not None:
        _need_int(cfg, "C", 1)
    if cfg.centers_per_class is not None:
        _need_int(cfg, "centers_per_class", 1)
    for name in ("margin", "gamma"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"--{name}={value!r}: expected a finite number >= 0")
    for name in ("modellr", "centerlr", "weight_decay", "eps", "decay_rate", "scale"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name}={value!r}: expected a finite number >= 0")
    if not 0 < cfg.decay_rate <= 1:  # 1e300 would overflow the rate and then be reported as a divergence
        raise ValueError(f"--decay_rate={cfg.decay_rate!r}: expected a factor in (0, 1] (the rates are multiplied "
                         f"by it every --decay_step epochs)")
    if not 0 < cfg.scale <= LOGIT_LIMIT:  # beyond, the logits overflow float32 and the loss is NaN (memvir.losses)
        raise ValueError(f"--scale={cfg.scale!r}: expected a number > 0 and at most {LOGIT_LIMIT:g} (the logit "
                         f"scale; the papers use 1 to 100)")
    if cfg.batch_size < cfg.n_instance or cfg.batch_size % cfg.n_instance:
        raise ValueError(f"--batch_size={cfg.batch_size} with --n_instance={cfg.n_instance}: expected a batch "
                         f"size that is a multiple of n_instance (classes per batch x images per class); raise "
                         f"--batch_size or lower --n_instance")


def _check_memory(cfg):
    """MemVir's N, M, U and options, XBM's memory, and the flags a pair loss cannot take."""
    if cfg.memvir:
        for name, symbol in (("mem_num_step", "N, past steps taken as virtual classes"),
                             ("mem_step_gap", "M, steps skipped between two taken steps"),
                             ("warm_epoch", "U, warm-up epochs before the memory fills")):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{name}={value!r}: expected an integer >= 0 ({symbol}) with --memvir")
    if cfg.mem_fill not in MEM_FILLS:
        raise ValueError(f"--mem_fill={cfg.mem_fill!r}: expected one of {', '.join(MEM_FILLS)}")
    if cfg.mem_virtual not in MEM_VIRTUALS:
        raise ValueError(f"--mem_virtual={cfg.mem_virtual!r}: expected one of {', '.join(MEM_VIRTUALS)}")
    if not cfg.memvir and (cfg.mem_fill, cfg.mem_virtual) != (MEM_FILLS[0], MEM_VIRTUALS[0]):
        raise ValueError(f"--mem_fill={cfg.mem_fill} --mem_virtual={cfg.mem_virtual}: these change MemVir; "
                         f"expected them with --memvir 1")
    _need_int(cfg, "xbm_size", 0)
    if cfg.xbm_size and (cfg.loss != "Contrastive" or cfg.memvir):
        raise ValueError(f"--xbm_size={cfg.xbm_size} with --loss {cfg.loss}{' --memvir 1' if cfg.memvir else ''}: "
                         f"XBM remembers embeddings for a pair loss; expected --loss Contrastive without --memvir "
                         f"(or --xbm_size 0)")
    if cfg.xbm_size and cfg.xbm_size < cfg.batch_size:
        raise ValueError(f"--xbm_size={cfg.xbm_size}: expected 0 or at least --batch_size={cfg.batch_size} (the "
                         f"memory holds the batch it is scored against)")
    if cfg.xbm_size and (isinstance(cfg.warm_epoch, bool) or not isinstance(cfg.warm_epoch, int)
                         or cfg.warm_epoch < 0):
        raise ValueError(f"--warm_epoch={cfg.warm_epoch!r}: expected an integer >= 0 (U, the epoch the memory "
                         f"starts) with --xbm_size")
    if cfg.loss == "Contrastive" and cfg.memvir:
        raise ValueError("--memvir with --loss Contrastive: a pair loss has no proxies for MemVir to remember; "
                         "for a memory of past embeddings use --xbm_size")
    if cfg.loss == "Contrastive" and cfg.scale != 1:
        raise ValueError(f"--scale={cfg.scale!r}: Contrastive has no logit scale; expected --scale unset (1)")
    if cfg.loss == "Contrastive" and not cfg.train_with_l2norm:
        raise ValueError("--train_with_l2norm=False with --loss Contrastive: it scores cosines, so it normalises the "
                         "embeddings itself; expected --train_with_l2norm=True")
    if cfg.pml and not cfg.train_with_l2norm:
        raise ValueError("--pml with --train_with_l2norm=False: pytorch-metric-learning's losses normalise the "
                         "embeddings themselves; train with our losses (--pml 0) for raw embeddings")


def _check_choices(cfg):
    """Names chosen from a list (optimizer, initialisation, backbone, decoder) and the data they need."""
    if str(cfg.optimizer).lower() not in OPTIMIZERS:
        raise ValueError(f"--optimizer={cfg.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    cfg.optimizer = str(cfg.optimizer).lower()
    if cfg.init_type not in ("normal", "uniform"):
        raise ValueError(f"--init_type={cfg.init_type!r}: expected normal or uniform")
    parse_k_list(cfg.k_list)
    if str(cfg.backbone).lower() not in BACKBONES:
        raise ValueError(f"--backbone={cfg.backbone!r}: expected one of {', '.join(BACKBONES)}")
    cfg.backbone = str(cfg.backbone).lower()
    check_decode(cfg.decode)
    if cfg.data_name == "glyphs" and cfg.decode != "pil":
        raise ValueError(f"--decode={cfg.decode}: glyphs are rendered tensors, not image files; expected --decode "
                         f"pil (the default) with data_name=glyphs")
    if cfg.data_name != "glyphs" and cfg.data is None:
        raise ValueError(f"--data: data_name={cfg.data_name} needs --data=<folder> holding train/<class>/<image> "
                         f"and test/<class>/<image> (see `python -m memvir prepare --help`)")



# ----------------------------------------------------------------------------------------------------------------
# The command line and the notebook


def config_from_argv(argv) -> TrainConfig:
    """Parse command-line flags into a resolved TrainConfig."""
    return resolve_config(TrainConfig(**vars(build_parser().parse_args(argv))))


def config_from_parameters(**cell) -> TrainConfig:
    """Build the resolved config from a notebook's parameters cell: every flag, flat scalars, "" for None.

    Args:
        **cell: one value per TrainConfig field (papermill passes only scalars, so "" stands for None).
    Raises:
        ValueError naming the parameters that are not flags, or the flags the cell does not set.
    """
    unknown, missing = sorted(set(cell) - set(FIELDS)), sorted(set(FIELDS) - set(cell))
    if unknown or missing:
        raise ValueError(f"parameters cell: {f'not training flags: {unknown}; ' if unknown else ''}"
                         f"{f'missing flags: {missing}; ' if missing else ''}expected exactly the fields of "
                         f"memvir.config.TrainConfig")
    values = {k: (None if v == "" and FIELDS[k].type.endswith("None") else v) for k, v in cell.items()}
    return resolve_config(values)
