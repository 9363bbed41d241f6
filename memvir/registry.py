"""The losses by name: the official spellings and aliases, default scales, and `build_loss` (memvir.losses holds the
formulas; memvir.pml the adapter for pytorch-metric-learning's losses and its pair loss).

    build_loss("Norm_SoftMax", num_classes=98, embedding_size=512)    # NormSoftmax(98, 512, scale=23.0)
    canonical_loss_name("proxy-anchor")                                # "Proxy_Anchor"
"""
from __future__ import annotations

import inspect

from . import pml
from .losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, Softmax, SoftTriple

__all__ = ["LOSSES", "PAIR_LOSSES", "loss_class", "canonical_loss_name", "default_scale", "build_loss",
           "build_pml_loss"]

# Keyed by the name without case, "_" and "-": the official spellings and the ones people use.
LOSSES = {"normsoftmax": NormSoftmax, "proxynca": ProxyNCA, "softmaxvanilla": Softmax, "softmax": Softmax,
          "cosface": CosFace, "arcface": ArcFace, "proxyanchor": ProxyAnchor, "softtriple": SoftTriple}
# Pair losses, keyed as LOSSES: no proxies; pytorch-metric-learning computes them (memvir/pml.py, which imports PML
# only when one is built, so that the proxy losses above do not need it).
PAIR_LOSSES = {"contrastive": "Contrastive"}


def loss_class(name):
    """Return the loss class of a name as the official README or code writes it: Norm_SoftMax, ArcFace, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
    """
    key = str(name).lower().replace("_", "").replace("-", "")
    if key in PAIR_LOSSES:
        return getattr(pml, PAIR_LOSSES[key])
    if key not in LOSSES:
        known = ", ".join(f"{cls.name} ({cls.__name__})" for cls in dict.fromkeys(LOSSES.values()))
        pairs = ", ".join(PAIR_LOSSES.values())
        raise ValueError(f"loss: unknown name {name!r}; known losses: {known}, {pairs} (a pair loss), in any case")
    return LOSSES[key]


def canonical_loss_name(name):
    """Return the official spelling of a loss name ("Norm_SoftMax", "Proxy_Anchor", ...), or raise ValueError."""
    return loss_class(name).name


def default_scale(name):
    """Return a loss's default logit scale: the default of its `scale_arg` (scale, ArcFace's too; alpha; la)."""
    cls = loss_class(name)
    return inspect.signature(cls).parameters[cls.scale_arg].default


def build_loss(name, num_classes, embedding_size, scale=None, normalize_embeddings=True, **hyper):
    """Build a loss by name, matched as the paper's README writes it: Norm_SoftMax, NormSoftmax, Proxy_NCA, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
        num_classes: C, the number of classes (the training classes; more adds proxies that are only negatives).
        embedding_size: D.
        scale: the logit scale (the loss's `scale_arg`: Proxy-Anchor's alpha, SoftTriple's la); None keeps the
            loss's default (default_scale).
        normalize_embeddings: False scores the embeddings as they come (official `--train_with_l2norm=False`).
        **hyper: the loss's other constructor arguments (margin, centers_per_class, gamma, ...).

    Example:
        >>> loss = build_loss("Proxy-Anchor", num_classes=98, embedding_size=512)
        >>> type(loss).__name__, tuple(loss.proxies.shape), loss.alpha, loss.margin
        ('ProxyAnchor', (98, 512), 32.0, 0.1)
    """
    cls = loss_class(name)
    fixed = ("num_classes", "embedding_size", "normalize_embeddings")  # given by name above
    known = [p for p in inspect.signature(cls).parameters if p not in fixed]
    unknown = sorted(set(hyper) - set(known))
    if unknown:
        raise ValueError(f"loss {cls.name}: unknown hyper-parameters {unknown}; expected some of {known}")
    if scale is not None:
        if cls.scale_arg in hyper:
            raise ValueError(f"loss {cls.name}: scale and {cls.scale_arg} both given; they are the same parameter")
        hyper[cls.scale_arg] = scale
    return cls(num_classes, embedding_size, normalize_embeddings=normalize_embeddings, **hyper)


def build_pml_loss(name, num_classes, embedding_size, scale, margin=None, centers_per_class=None, gamma=None):
    """Build pytorch-metric-learning's implementation of one of our losses, with our hyper-parameters and units.

    Args:
        name: a loss name this registry knows (Norm_SoftMax, Proxy_NCA, CosFace, ArcFace, Proxy_Anchor, Soft_Triple).
        scale: our scale (Norm-SoftMax: 1 / PML's temperature; Proxy-Anchor: alpha; SoftTriple: la).
        margin: ours (ArcFace in radians: PML takes degrees).
    """
    import math

    import pytorch_metric_learning.losses as L

    loss, C, D = canonical_loss_name(name), num_classes, embedding_size
    if loss == "Norm_SoftMax":
        return L.NormalizedSoftmaxLoss(C, D, temperature=1.0 / scale)
    if loss == "Proxy_NCA":
        return L.ProxyNCALoss(C, D, softmax_scale=scale)
    if loss == "CosFace":
        return L.CosFaceLoss(C, D, margin=margin, scale=scale)
    if loss == "ArcFace":
        return L.ArcFaceLoss(C, D, margin=math.degrees(margin), scale=scale)
    if loss == "Proxy_Anchor":
        return L.ProxyAnchorLoss(C, D, margin=margin, alpha=scale)
    if loss == "Soft_Triple":
        return L.SoftTripleLoss(C, D, centers_per_class=centers_per_class, la=scale, gamma=gamma, margin=margin)
    raise ValueError(f"--pml: pytorch-metric-learning has no {loss} loss; it has Norm_SoftMax, Proxy_NCA, CosFace, "
                     f"ArcFace, Proxy_Anchor and Soft_Triple")
