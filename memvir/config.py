"""The one list of training flags: `TrainConfig`, and the parser generated from it (standard library only).

Each field is a flag of the official navervision/MemVir main.py (or one of our extras, marked), declared once
with its type, its default, its help text and, where the default depends on the data set, the default of each
profile: the official code's for the image benchmarks, a CPU-sized recipe for the glyph benchmark.

    TrainConfig(memvir=True)     # the flags as given; None: the data set's default
    build_parser().parse_args()   # the command line, one argument per field

Filling in the defaults and checking the values against the data sets, models and losses is memvir/resolve.py
(resolve_config, config_from_argv, config_from_parameters). A resolved config is what a run folder's config.json
holds (dataclasses.asdict(cfg)).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from .files import parse_bool

__all__ = ["TrainConfig", "FLAG_NAMES", "PROFILE_DEFAULTS", "K_LISTS", "OPTIMIZERS", "RESUME_MAY_DIFFER",
           "build_parser", "parse_k_list", "parse_bool", "profile_of", "ArgumentError"]

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
    loss: str = flag("Norm_SoftMax", "{losses}, in any case, _ or not", group="loss and MemVir")
    scale: float | None = flag(None, "logit scale s (Proxy-Anchor: alpha, SoftTriple: la) [official Norm-SoftMax "
                                     "and Proxy-NCA 1.0; else the loss's own: {scales}]",
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


def batches_per_epoch(n_images, batch_size, n_instance=1, world_size=1, drop_last=False) -> int:
    """The steps of one epoch over n_images with these flags: the batches memvir.data.samplers.BatchSampler draws.

    The plain shuffle (n_instance 1) keeps its last, short batch unless drop_last or it is smaller than world_size
    (every rank must take a share); the class-balanced sampler draws n_images // batch_size full batches.
    """
    if n_instance > 1:
        return n_images // batch_size
    rest = n_images % batch_size
    return n_images // batch_size + int(rest > 0 and not drop_last and rest >= world_size)


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
# The command line and the notebook, both generated from the fields


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, no SystemExit: main() prints it and returns 2
        raise ArgumentError(f"{message} (see `python -m memvir train --help`)")


def _type(f):
    return {"int": int, "int | None": int, "float": float, "float | None": float, "bool": parse_bool}.get(f.type)


def build_parser(fill=None) -> argparse.ArgumentParser:
    """The `python -m memvir train` parser, one argument per TrainConfig field (profile defaults: None here).

    Args:
        fill: {placeholder: text} for what the flag list does not know, the declared losses: `{losses}` and
            `{scales}` in the help (memvir.registry.flag_help; memvir.resolve.build_parser passes it).
    """
    fill = {"losses": "a loss of memvir.losses", "scales": "see memvir.losses", **(fill or {})}
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
        help_ = (f"{meta['help']} [{shown}]" if "[" not in meta["help"] else meta["help"]).format_map(fill)
        if name == "progress":  # the official spelling is the negative one
            group.add_argument(*names, dest=name, action="store_false", help=help_)
        elif f.type == "bool":
            group.add_argument(*names, dest=name, type=parse_bool, nargs="?", const=True, default=f.default,
                               metavar="BOOL", help=help_)
        else:
            group.add_argument(*names, dest=name, type=_type(f), default=f.default, help=help_)
    return p
