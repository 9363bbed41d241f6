"""The losses by name, derived from their declarations (memvir.losses: `name`, `aliases`, `scale_arg`, `pml`):
the spellings, default scales, the `--loss` help, `build_loss` and `build_pml_loss`.

    build_loss("Norm_SoftMax", num_classes=98, embedding_size=512)    # NormSoftmax(98, 512, scale=23.0)
    canonical_loss_name("proxy-anchor")                                # "Proxy_Anchor"
"""
from __future__ import annotations

import inspect

from . import losses, xbm  # noqa: F401 (xbm: its pair loss declares itself on import)
from .losses import DECLARED, ProxyLoss, loss_key

__all__ = ["LOSSES", "loss_class", "canonical_loss_name", "default_scale", "build_loss", "build_pml_loss",
           "flag_help"]

LOSSES = DECLARED  # {spelling without case, "_" and "-": loss class}: every declared loss (memvir.losses)


def _losses():
    """The declared loss classes, each once, in the order they were declared."""
    return list(dict.fromkeys(LOSSES.values()))


def loss_class(name):
    """Return the loss class of a name as the official README or code writes it: Norm_SoftMax, ArcFace, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
    """
    key = loss_key(name)
    if key not in LOSSES:
        known = ", ".join(f"{cls.name} ({cls.__name__})" if issubclass(cls, ProxyLoss) else f"{cls.name} (a pair loss)"
                          for cls in _losses())
        raise ValueError(f"loss: unknown name {name!r}; known losses: {known}, in any case")
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
        name: a declared loss name with a PML counterpart (the loss's `pml`).
        scale: our scale (Norm-SoftMax: 1 / PML's temperature; Proxy-Anchor: alpha; SoftTriple: la).
        margin: ours (ArcFace in radians: PML takes degrees).
    """
    import pytorch_metric_learning.losses as L  # deferred: --pml only; PML is an optional extra

    cls = loss_class(name)
    if cls.pml is None:
        having = [c.name for c in _losses() if c.pml is not None]
        raise ValueError(f"--pml: pytorch-metric-learning has no {cls.name} loss; it has {', '.join(having[:-1])} "
                         f"and {having[-1]}")
    hyper = {"scale": scale, "margin": margin, "centers_per_class": centers_per_class, "gamma": gamma}
    return getattr(L, cls.pml.name)(num_classes, embedding_size, **cls.pml.to_pml(hyper))


def flag_help():
    """The help of the flags that name losses, derived from the declarations: {flag: text} for config.build_parser."""
    names = " | ".join(f"{c.name}{''.join(f' ({a})' for a in c.__dict__.get('aliases', ()))}" for c in _losses())
    scales = ", ".join(f"{c.name} {default_scale(c.name):g}" for c in _losses())
    return {"losses": names, "scales": scales}

