"""memvir: Memory-based Virtual Classes (Ko, Gu, Kim, ICCV 2021), reproduced and explained.

The public API:
    memvir.MemVir                       the memory of virtual classes (memvir/memory.py)
    memvir.losses.NormSoftmax, ProxyNCA proxy losses; each owns `proxies` (C, D)
    memvir.metrics.retrieval_metrics    Recall@K, R-Precision, MAP@R
"""
from . import losses, metrics
from .losses import NormSoftmax, ProxyNCA, build_loss
from .memory import MemVir
from .metrics import retrieval_metrics

__version__ = "0.1.0"
__all__ = ["MemVir", "NormSoftmax", "ProxyNCA", "build_loss", "retrieval_metrics", "losses", "metrics"]
