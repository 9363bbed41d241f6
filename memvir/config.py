"""The one list of training flags: `TrainConfig`. The parser, the notebook's parameters and config.json follow it.

Each field is a flag of the official navervision/MemVir main.py (or one of our extras, marked), declared once
with its type, its default, its help text and, where the default depends on the data set, the default of each
profile: the official code's for the image benchmarks, a CPU-sized recipe for the glyph benchmark.

    cfg = resolve_config({"data_name": "glyphs", "memvir": True})   # every default filled in, every value checked
    cfg = config_from_argv(["--memvir", "1", "--epochs", "20"])     # the command line (build_parser)
    cfg = config_from_parameters(**cell)                            # notebooks/05_training.py's parameters cell

A resolved config is what a run folder's config.json holds (dataclasses.asdict(cfg)).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field

from .files import parse_bool

__all__ = ["TrainConfig", "FLAG_NAMES", "PROFILE_DEFAULTS", "K_LISTS", "OPTIMIZERS", "RESUME_MAY_DIFFER",
           "resolve_config", "config_from_argv", "config_from_parameters", "build_parser", "parse_k_list",
           "parse_bool", "profile_of", "ArgumentError"]

PROFILES = ("official", "glyphs")  # the image benchmarks and custom folders use "official"


def flag(default, help, *, names=(), official=None, glyphs=None, group="", ignored=False):
    """Declare a flag: a dataclass field whose metadata the parser and resolve_config read.

    Args:
        default: the value when nothing is given; None for "the profile's default" when official/glyphs are set.
        help: what the flag means (the `--help` text; the defaults are appended there).
        names: the command-line spellings; default `--<field name>`.
        official, glyphs: the defaults of the two profiles, when they differ from `default`.
        group: the `--help` section.
        ignored: accepted so that the official lines paste as they are, with no effect (a warning says so).
    """
    return field(default=default, metadata={"help": help, "names": tuple(names), "group": group, "ignored": ignored,
                                            "profile": {"official": official, "glyphs": glyphs}})


@dataclass
class TrainConfig:
    # -- data --
    data: str | None = flag(None, "prepared folder with train/<class>/* and test/<class>/* (glyphs: render cache "
                                  "folder)", group="data")
    data_name: str = flag("glyphs", "cars196 | cub200 | sop | inshop | glyphs | custom; sets the Recall@K list",
                          group="data")
    save_path: str | None = flag(None, "run folder [results/runs/<parameters>]; rerunning resumes from its "
                                       "checkpoint", group="data")
    decode: str = flag("pil", "how training images are decoded: pil (official) | draft (JPEG decoded at 1/2-1/8 "
                              "scale when the crop is shrunk anyway) | gpu (decode_jpeg on the training device)",
                       group="data")
    k_list: str | None = flag(None, "Recall@K list [per data set, as official: 1,2,4,8; sop 1,10,100,1000; "
                                    "inshop 1,10,20,40]", group="data")
    # -- model: backbone -> global pooling -> linear embedding -> (L2 norm) --
    backbone: str | None = flag(None, "bninception | resnet18/34/50/101 | glyphcnn", official="bninception",
                                glyphs="glyphcnn", group="model")
    pretrained: str | None = flag(None, "imagenet | none | glyphs (a GlyphCNN pretrained on glyph classes the "
                                  "benchmark does not use, memvir/pretrain.py) | path to backbone weights",
                                  official="imagenet", glyphs="none", group="model")
    pooling_type: str = flag("GAP", "GAP | GMP | GAP,GMP", group="model")
    dim: int | None = flag(None, "embedding size D", official=64, glyphs=128, group="model")
    input_size: int | None = flag(None, "input side in pixels (glyphs: the rendered side)", official=224, glyphs=32,
                                  names=("--input_size", "--image_size"), group="model")
    train_with_l2norm: bool = flag(True, "L2-normalise the embeddings the loss and the memory see (as official)",
                                   group="model")
    # -- loss and MemVir (Sec. 3) --
    loss: str = flag("Norm_SoftMax", "Norm_SoftMax | Proxy_NCA | SoftMax_vanilla (Softmax) | CosFace | ArcFace | "
                     "Proxy_Anchor | Soft_Triple, in any case, _ or not", group="loss and MemVir")
    scale: float | None = flag(None, "logit scale s (Proxy-Anchor: alpha, SoftTriple: la) [official Norm-SoftMax "
                                     "and Proxy-NCA 1.0; else the loss's own: 23, 12, 1, 64, 64, 32, 20]",
                               names=("--scale", "--alpha", "--la"), group="loss and MemVir")
    margin: float | None = flag(None, "margin: CosFace (cosine, 0.35), ArcFace (radians, 0.5), Proxy-Anchor (0.1), "
                                      "SoftTriple (0.01) [the loss's own]", group="loss and MemVir")
    centers_per_class: int | None = flag(None, "SoftTriple: centres K per class, proxies (C*K, D) [10]",
                                         group="loss and MemVir")
    gamma: float | None = flag(None, "SoftTriple: the temperature over a class's centres [0.1]",
                               group="loss and MemVir")
    pml: bool = flag(False, "use pytorch-metric-learning's implementation of the loss (with MemVir: its weight, "
                            "our formula; see memvir/pml.py)", group="loss and MemVir")
    init_type: str = flag("normal", "Proxy-NCA proxy init: normal (std sqrt(2/D)) | uniform (+-1/sqrt(C))",
                          group="loss and MemVir")
    C: int | None = flag(None, "number of proxies [the classes of the train folder]; more than the classes "
                               "adds proxies that act only as negatives, as official", names=("-C",),
                         group="loss and MemVir")
    memvir: bool = flag(False, "train with MemVir", group="loss and MemVir")
    mem_num_step: int | None = flag(None, "N, past steps taken as virtual classes (must be set with --memvir)",
                                    official=-1, glyphs=10, group="loss and MemVir")
    mem_step_gap: int | None = flag(None, "M, steps skipped between two taken steps", official=1, glyphs=3,
                                    group="loss and MemVir")
    warm_epoch: int | None = flag(None, "U, epochs trained before the memory starts filling", official=0, glyphs=5,
                                  group="loss and MemVir")
    mem_fill: str = flag("curriculum", "how the memory fills: curriculum (official: from epoch U on, one step at a "
                         "time, so the virtual classes grow) | full (it records the last N*(M+1) steps of the "
                         "warm-up unused, so all N taken steps are there from the first step after it)",
                         group="loss and MemVir")
    mem_virtual: str = flag("both", "what a taken past step brings: both (MemVir: its embeddings as virtual classes "
                            "and its proxies) | embeddings (its embeddings, with their own labels, against the "
                            "current proxies) | proxies (its proxies as more classes, no embeddings) | current (the "
                            "control of proxies: as many classes, copies of the current proxies, detached)",
                            group="loss and MemVir")
    xbm_size: int = flag(0, "XBM (Wang et al. 2020, PML's CrossBatchMemory): remember this many past embeddings "
                         "for a pair loss (--loss Contrastive), from epoch U (--warm_epoch) on; 0: off",
                         group="loss and MemVir")
    # -- optimisation --
    optimizer: str = flag("adam", "adam | adamw | rmsprop | sgd", group="optimisation")
    epochs: int | None = flag(None, "total epochs; may grow when resuming", official=50, glyphs=20,
                              group="optimisation")
    batch_size: int = flag(128, "B, the global mini-batch (all processes together)", names=("-b", "--batch_size"),
                           group="optimisation")
    n_instance: int = flag(1, "images per class in a batch; 1 = plain shuffle (the paper's setting)",
                           group="optimisation")
    modellr: float | None = flag(None, "backbone and embedding learning rate", official=1e-4, glyphs=1e-3,
                                 group="optimisation")
    centerlr: float = flag(0.01, "proxy learning rate", group="optimisation")
    weight_decay: float = flag(1e-4, "weight decay", names=("--wd", "--weight_decay"), group="optimisation")
    eps: float = flag(0.01, "epsilon of Adam (official)", group="optimisation")
    decay_rate: float = flag(0.1, "learning-rate decay factor", group="optimisation")
    decay_step: int | None = flag(None, "decay at the start of every epoch divisible by it", official=20,
                                  glyphs=10, group="optimisation")
    decay_stop: int = flag(100000, "no decay after this epoch", group="optimisation")
    freeze_BN: bool = flag(False, "BatchNorm in eval mode while training (statistics frozen)", group="optimisation")
    use_amp: bool = flag(False, "mixed precision: float16 + GradScaler on CUDA, bfloat16 on CPU",
                         group="optimisation")
    deterministic: bool = flag(False, "deterministic algorithms (seeding is always on, see --seed)",
                               group="optimisation")
    seed: int = flag(0, "(extra) seeds torch, numpy, random, the batches and the data augmentation",
                     group="optimisation")
    start_epoch: int = flag(0, "accepted, ignored: a run resumes from its newest checkpoint", group="optimisation",
                            ignored=True)
    # -- evaluation and checkpoints --
    check_epoch: int | None = flag(None, "evaluate every this many epochs, and after the last", official=5,
                                   glyphs=5, group="evaluation and checkpoints")
    eval_best: bool = flag(False, "only evaluate the best (Recall@1) checkpoint of --save_path",
                           group="evaluation and checkpoints")
    do_nmi: bool = flag(False, "also compute NMI of the test embeddings (k-means, as many clusters as classes)",
                        group="evaluation and checkpoints")
    early_stop_epoch: int = flag(0, "stop after this many evaluations without gain in any metric (0: never)",
                                 group="evaluation and checkpoints")
    max_to_keep: int = flag(1, "epoch checkpoints kept (0: all); the best per metric are kept besides",
                            group="evaluation and checkpoints")
    # -- glyph benchmark (extras; memvir.data.glyphs) --
    num_classes: int = flag(400, "glyph classes rendered; the first half train, the rest test",
                            group="glyph benchmark")
    instances_per_class: int = flag(20, "images per glyph class", group="glyph benchmark")
    min_fonts: int = flag(10, "distinct renders a glyph class needs", group="glyph benchmark")
    val_classes: int = flag(0, "train classes held out for validation (evaluated besides the test classes)",
                            group="glyph benchmark")
    glyph_seed: int = flag(0, "seed of the glyph set (fixed across training seeds: one benchmark)",
                           group="glyph benchmark")
    # -- machine --
    gpu: str | None = flag(None, "GPU id; without CUDA: a warning, then the CPU; cpu forces the CPU [first GPU, "
                                 "else the CPU]", group="machine")
    workers: int | None = flag(None, "data-loading processes (at most the CPUs this process may use)", official=5,
                               glyphs=0, names=("-j", "--workers"), group="machine")
    progress: bool = flag(True, "tqdm bar per epoch (only on a terminal); --no_progress turns it off",
                          names=("--no_progress",), group="machine")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FLAG_NAMES = tuple(FIELDS)
PROFILE_DEFAULTS = {p: {n: f.metadata["profile"][p] for n, f in FIELDS.items() if f.metadata["profile"][p] is not None}
                    for p in PROFILES}
K_LISTS = {"cars196": "1,2,4,8", "cub200": "1,2,4,8", "sop": "1,10,100,1000", "inshop": "1,10,20,40",
           "glyphs": "1,2,4,8", "custom": "1,2,4,8"}
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
LOSS_HYPER = ("margin", "centers_per_class", "gamma")  # constructor arguments of some losses (memvir.losses)
# Flags that may differ when a run resumes: they do not change the numbers it produces (epochs may only grow).
RESUME_MAY_DIFFER = ("workers", "gpu", "progress", "epochs", "data", "eval_best", "save_path", "start_epoch")
# Dict keys accepted besides the field names: the official short spellings.
ALIASES = {"wd": "weight_decay", "b": "batch_size", "j": "workers", "image_size": "input_size"}


class ArgumentError(ValueError):
    """A bad command line; the message is one line."""


def profile_of(data_name: str) -> str:
    """The default profile of a (canonical) data-set name."""
    return "glyphs" if data_name == "glyphs" else "official"


def parse_k_list(k_list) -> list[int]:
    """Parse "1,2,4,8" into [1, 2, 4, 8] (the official --k_list format)."""
    try:
        ks = [int(k) for k in str(k_list).split(",")]
    except ValueError:
        ks = []
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k_list={k_list!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    return ks


# ----------------------------------------------------------------------------------------------------------------
# Filling in and checking


def resolve_config(config=None) -> TrainConfig:
    """Return a TrainConfig with every default filled in and every value checked.

    Args:
        config: a TrainConfig, a dict keyed by flag names (aliases wd, b, j, image_size and no_progress accepted),
            or None for all defaults (a glyph run).
    """
    from .data import canonical_data_name  # the official aliases (car, cub, ...) -> canonical names
    from .registry import LOSSES, canonical_loss_name, default_scale, loss_class

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
            having = sorted({c.name for c in LOSSES.values() if hyper in inspect.signature(c).parameters})
            raise ValueError(f"--{hyper}={getattr(cfg, hyper)!r}: {cfg.loss} has no {hyper}; the losses with one: "
                             f"{', '.join(having)}")
    if cfg.k_list is None:
        cfg.k_list = K_LISTS[name]
    if cfg.save_path is None:
        from .rundir import run_name

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
    from .losses import LOGIT_LIMIT

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
    from .memory import MEM_FILLS, MEM_VIRTUALS  # the memory's own option names (memvir/memory.py)

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
    from .models import BACKBONES

    if str(cfg.backbone).lower() not in BACKBONES:
        raise ValueError(f"--backbone={cfg.backbone!r}: expected one of {', '.join(BACKBONES)}")
    cfg.backbone = str(cfg.backbone).lower()
    from .data.decode import check_decode  # not .data.transforms: that needs torchvision, the glyphs do not

    check_decode(cfg.decode)
    if cfg.data_name == "glyphs" and cfg.decode != "pil":
        raise ValueError(f"--decode={cfg.decode}: glyphs are rendered tensors, not image files; expected --decode "
                         f"pil (the default) with data_name=glyphs")
    if cfg.data_name != "glyphs" and cfg.data is None:
        raise ValueError(f"--data: data_name={cfg.data_name} needs --data=<folder> holding train/<class>/<image> "
                         f"and test/<class>/<image> (see `python -m memvir prepare --help`)")


# ----------------------------------------------------------------------------------------------------------------
# The command line and the notebook, both generated from the fields


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, no SystemExit: main() prints it and returns 2
        raise ArgumentError(f"{message} (see `python -m memvir train --help`)")


def _type(f):
    return {"int": int, "int | None": int, "float": float, "float | None": float, "bool": parse_bool}.get(f.type)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m memvir train` parser, one argument per TrainConfig field (profile defaults: None here)."""
    p = _Parser(prog="python -m memvir train", allow_abbrev=False,
                description="Train (and periodically evaluate) an embedding network; accepts the official "
                            "MemVir main.py flags. Defaults in [official / glyphs].")
    groups = {}
    for name, f in FIELDS.items():
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        names = meta["names"] or (f"--{name}",)
        prof = meta["profile"]
        shown = f.default if all(v is None for v in prof.values()) else \
            " / ".join(str(f.default if v is None else v) for v in prof.values())
        help_ = f"{meta['help']} [{shown}]" if "[" not in meta["help"] else meta["help"]
        if name == "progress":  # the official spelling is the negative one
            group.add_argument(*names, dest=name, action="store_false", help=help_)
        elif f.type == "bool":
            group.add_argument(*names, dest=name, type=parse_bool, nargs="?", const=True, default=f.default,
                               metavar="BOOL", help=help_)
        else:
            group.add_argument(*names, dest=name, type=_type(f), default=f.default, help=help_)
    return p


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
