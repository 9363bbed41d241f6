"""How a loss declares itself: its spellings (`name`, `aliases`, into DECLARED) and its pytorch-metric-learning
counterpart (`pml`, a PMLCounterpart).

Each loss declares itself where it is defined: its official name (`name`, with `aliases`), its default scale (the
default of its `scale_arg`) and its pytorch-metric-learning counterpart. A subclass of memvir.losses.ProxyLoss that
declares a `name` is a new loss (`declare`, into DECLARED); memvir/registry.py, the `--loss` help and memvir/pml.py's
table are derived from those declarations. Imports no memvir module (a ground floor under memvir.losses and
memvir.xbm).
"""
from dataclasses import dataclass
from typing import Callable

__all__ = ["DECLARED", "declare", "loss_key", "PMLCounterpart"]

DECLARED = {}  # {loss_key(spelling): loss class}, in the order the losses are declared; memvir.registry reads it


def loss_key(name):
    """A loss name as matched: without case, "_" and "-" ("Proxy-Anchor", "proxy_anchor" -> "proxyanchor")."""
    return str(name).lower().replace("_", "").replace("-", "")


def declare(cls):
    """Add a loss class to DECLARED under its `name` and `aliases` (a ProxyLoss that declares a name: by itself).

    Returns the class, so that a loss outside ProxyLoss (XBM's pair loss) declares itself with `@declare`.
    """
    for spelling in (cls.name, *cls.__dict__.get("aliases", ())):
        if DECLARED.get(loss_key(spelling), cls) is not cls:
            raise ValueError(f"loss {cls.name}: the name {spelling!r} is taken by {DECLARED[loss_key(spelling)].name}")
        DECLARED[loss_key(spelling)] = cls
    return cls


@dataclass(frozen=True)
class PMLCounterpart:
    """pytorch-metric-learning's implementation of one of our losses, and the units of each side.

    Args:
        name: the class in pytorch_metric_learning.losses.
        weight: its attribute holding the proxies; transposed: True where it is (D, C*K), not (C*K, D).
        to_pml: our hyper-parameters {scale, margin, centers_per_class, gamma} -> its constructor's keywords
            (after C and D).
        from_pml: (a PML loss, its normalize_embeddings) -> our constructor's keywords, C and D included.
    """
    name: str
    weight: str
    transposed: bool
    to_pml: Callable
    from_pml: Callable
