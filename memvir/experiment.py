"""From a config to the objects of a run: the data splits, the network, the loss and the criterion; and back from a
trained run's checkpoint (`load_trained`: the report's diagnostics and figures).

    exp = build(resolve_config({"data_name": "glyphs", "memvir": True}))
    exp.net(images)                      # (B, D) embeddings
    exp.criterion(emb, labels, epoch=0)  # MemVir around exp.loss, or exp.loss itself

The one place a config becomes objects: training (memvir.train), --eval_best and the report's `load_trained` all
call it, so a run is rebuilt exactly as it was trained.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

__all__ = ["Experiment", "build", "build_splits", "build_criterion", "train_steps_per_epoch", "check_input_size",
           "load_trained"]


@dataclass
class Experiment:
    splits: object  # memvir.data.Splits: train, test (and val, query, gallery where they exist), num_classes
    net: nn.Module  # backbone -> pooling -> embedding, (B, channels, H, W) -> (B, D)
    loss: nn.Module  # owns `proxies` (C, D)
    criterion: nn.Module  # MemVir(loss) or the loss itself; both are called criterion(emb, labels, epoch=e)


def build_splits(cfg):
    """The datasets of a config: the glyph set it names (rendered or cached) or the prepared folder."""
    from .data import build_datasets

    if cfg.data_name == "glyphs":
        return build_datasets("glyphs", data=cfg.data, image_size=cfg.input_size, num_classes=cfg.num_classes,
                              instances_per_class=cfg.instances_per_class, min_fonts=cfg.min_fonts,
                              seed=cfg.glyph_seed, val_classes=cfg.val_classes)
    return build_datasets(cfg.data_name, data=cfg.data, backbone=cfg.backbone, input_size=cfg.input_size,
                          decode=cfg.decode)


def train_steps_per_epoch(cfg, splits, world_size=1):
    """The optimiser steps of one training epoch: the batches of memvir.train's sampler (its last, short one too)."""
    from .data.samplers import BatchSampler

    return len(BatchSampler(splits.train.labels, cfg.batch_size, cfg.n_instance, world_size=world_size))


def build_criterion(cfg, num_classes, steps_per_epoch=None):
    """The loss with C = num_classes classes, wrapped in MemVir when cfg.memvir; returns (loss, criterion).

    With cfg.pml the loss is pytorch-metric-learning's (memvir.pml): alone it trains with PML's own forward; under
    MemVir its weight is the proxies and our formula scores them. `steps_per_epoch` (`train_steps_per_epoch`) is
    needed by --mem_fill full only.
    """
    from .config import LOSS_HYPER
    from .losses import ProxyNCA
    from .memory import MemVir
    from .registry import build_loss

    hyper = {k: getattr(cfg, k) for k in LOSS_HYPER if getattr(cfg, k) is not None}  # resolve_config set them
    if cfg.loss == "Contrastive":  # a pair loss, PML's whatever --pml says; XBM's memory with --xbm_size
        from .xbm import Contrastive

        loss = Contrastive(num_classes, cfg.dim, memory_size=cfg.xbm_size, warmup_epochs=cfg.warm_epoch,
                           normalize_embeddings=cfg.train_with_l2norm, **hyper)
    elif cfg.pml:
        from .pml import PMLLoss
        from .registry import build_pml_loss

        pml_loss = build_pml_loss(cfg.loss, num_classes, cfg.dim, cfg.scale, **hyper)
        loss = PMLLoss(pml_loss, native=not cfg.memvir)
    else:
        loss = build_loss(cfg.loss, num_classes, cfg.dim, cfg.scale, normalize_embeddings=cfg.train_with_l2norm,
                          **hyper)
        if isinstance(loss, ProxyNCA) and cfg.init_type == "uniform":  # the official kaiming_uniform_(a=sqrt(5))
            nn.init.uniform_(loss.proxies, -1 / math.sqrt(num_classes), 1 / math.sqrt(num_classes))
    # check=False: MemVir asserts on the device instead of reading it (no wait per step on a GPU). The training
    # loop checks the embeddings itself just before (failures.check_embeddings, its one-line error), and the labels
    # are the data set's own, in [0, C).
    criterion = MemVir(loss, cfg.mem_num_step, cfg.mem_step_gap, cfg.warm_epoch, fill=cfg.mem_fill,
                       virtual=cfg.mem_virtual, steps_per_epoch=steps_per_epoch, check=False) if cfg.memvir else loss
    return loss, criterion


def build(cfg, device="cpu", pretrained=True) -> Experiment:
    """Build a run's objects from its resolved config, on `device`.

    Args:
        cfg: a resolved TrainConfig (memvir.config.resolve_config).
        pretrained: load cfg.pretrained into the backbone (training); False when a checkpoint brings the weights.
    """
    from .models import WeightsUnavailable, build_model
    from .pretrain import PRETRAINED_GLYPHS, pretrain_backbone

    in_channels = 1 if cfg.data_name == "glyphs" else 3
    check_input_size(cfg, in_channels)  # before the data are read or rendered, and long before the first step
    splits = build_splits(cfg)
    C = splits.num_classes  # the classes of the train folder; -C may add proxies that are only negatives
    if cfg.C is not None:
        if cfg.C < C:
            raise ValueError(f"-C={cfg.C}: the training data has {C} classes; expected -C >= {C} (or leave it "
                             f"unset: C is then the number of training classes)")
        if cfg.C > C:
            warnings.warn(f"-C={cfg.C} with {C} training classes: {cfg.C - C} proxies have no images and act only "
                          f"as negatives (as the official code)", stacklevel=2)
        C = cfg.C
    weights = cfg.pretrained if pretrained else "none"
    if weights == PRETRAINED_GLYPHS:  # a GlyphCNN taught the glyph classes this benchmark does not use, cached
        weights = pretrain_backbone(cfg)
    try:
        net = build_model(cfg.backbone, cfg.dim, cfg.pooling_type, weights, in_channels=in_channels).to(device)
    except WeightsUnavailable as exc:  # offline: say it in the flags' terms
        raise WeightsUnavailable(
            f"--pretrained {weights}: cannot download the ImageNet weights of --backbone {cfg.backbone} from "
            f"{exc.url} ({exc.reason}); pass a local copy with --pretrained /path/to/{exc.file} (or put it in "
            f"{exc.cache}), or train from random initialisation with --pretrained none", exc.url, exc.cache,
            exc.reason) from None
    spe = None
    if cfg.memvir and cfg.mem_fill == "full":  # MemVir then starts recording that many steps before epoch U
        from .distributed import from_env

        spe = train_steps_per_epoch(cfg, splits, from_env().world_size)  # the processes memvir.train runs in
    loss, criterion = build_criterion(cfg, C, spe)
    criterion.to(device)
    return Experiment(splits, net, loss, criterion)


def check_input_size(cfg, in_channels):
    """Raise a ValueError naming --input_size and the sides that work when the images would not go through the
    backbone (its feature map collapses, or BN-Inception's branches do not line up)."""
    from .models import input_size_problem

    problem = input_size_problem(cfg.backbone, cfg.input_size, in_channels)
    if problem is None:
        return
    smallest, below, above = problem["smallest"], problem["below"], problem["above"]
    if cfg.input_size < smallest:
        expected = f"expected --input_size >= {smallest}, the smallest side that works"
    else:
        expected = f"expected a side that works, e.g. {below} or {above} (the smallest: {smallest})"
    raise ValueError(f"--input_size={cfg.input_size}: {cfg.input_size} px images do not go through --backbone "
                     f"{cfg.backbone} ({problem['reason'][:200]}); {expected}")


def load_trained(run_dir, checkpoint="last", device="cpu"):
    """Load a trained run from its folder: network, criterion (MemVir with its memory, or the bare loss), data.

    Args:
        run_dir: a run folder written by memvir.train.
        checkpoint: "last" (the newest checkpoints/epoch_*.pt: the memory as training left it) or a file name in
            checkpoints/ such as "best_recall_1.pt".
    Returns:
        (net in eval mode, criterion, Splits, config dict, checkpoint epoch).
    """
    from .resolve import resolve_config
    from .rundir import epoch_checkpoints, load_checkpoint, load_state

    ckpt_dir = Path(run_dir) / "checkpoints"
    if checkpoint == "last":
        paths = epoch_checkpoints(ckpt_dir)
        if not paths:
            raise FileNotFoundError(f"{ckpt_dir}: no epoch_*.pt checkpoint; train the run first")
        path = paths[-1]
    else:
        path = ckpt_dir / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; checkpoints there: "
                                    f"{sorted(p.name for p in ckpt_dir.glob('*.pt'))}")
    ckpt = load_checkpoint(path, device, fields=("config", "model", "criterion", "epoch"))
    with warnings.catch_warnings():  # what build warns of (e.g. -C's negative-only proxies) was said in training
        warnings.simplefilter("ignore", UserWarning)
        exp = build(resolve_config(ckpt["config"]), device, pretrained=False)  # rebuilt exactly as trained
    load_state(exp.net, ckpt, "model", path)
    exp.net.eval()
    load_state(exp.criterion, ckpt, "criterion", path)
    return exp.net, exp.criterion, exp.splits, ckpt["config"], int(ckpt["epoch"])
