"""memvir: Memory-based Virtual Classes (Ko, Gu, Kim, ICCV 2021), reproduced and explained.

The public API:
    memvir.MemVir                       the memory of virtual classes (memvir/memory.py; through memvir.pml, which
                                        lets it take pytorch-metric-learning's proxy losses too)
    memvir.losses.NormSoftmax, ProxyNCA proxy losses; each owns `proxies` (C, D); also Softmax, CosFace,
                                        ArcFace, ProxyAnchor, SoftTriple (the paper's Table 4)
    memvir.metrics.retrieval_metrics    Recall@K, R-Precision, MAP@R
    memvir.build_loss                   a loss by its official name (memvir/registry.py)
    memvir.pml                          MemVir(pml_loss, ...) on pytorch-metric-learning's proxy losses
    memvir.config                       the one list of training flags (TrainConfig)
    memvir.data, memvir.models, memvir.experiment, memvir.train, memvir.evaluation, memvir.rundir
    memvir.profile, memvir.report,      what a profile says; tables and figures (a package of rooms); the runs and
    memvir.pipeline                     chapters of `make reproduce`
    memvir.portable, memvir.files       the CPU kernels capped for the same floats everywhere; atomic files

Submodules are imported on first use (PEP 562), so `python -m memvir prepare` or the glyph renderer
do not pay for importing torch.
"""
import importlib

from . import extras

__version__ = "0.1.0"
_SUBMODULES = {"losses", "memory", "metrics", "data", "models", "config", "experiment", "train", "evaluation",
               "rundir", "report", "pipeline", "distributed", "pml", "registry", "profile", "files", "portable",
               "extras"}
_NAMES = {"MemVir": "pml", "TakenStep": "memory", "NormSoftmax": "losses", "ProxyNCA": "losses",
          "Softmax": "losses", "CosFace": "losses", "ArcFace": "losses", "ProxyAnchor": "losses",
          "SoftTriple": "losses", "build_loss": "registry", "retrieval_metrics": "metrics",
          "query_gallery_metrics": "metrics"}
__all__ = sorted(_NAMES) + sorted(_SUBMODULES)


extras.install()  # a module of a missing extra is one line naming `pip install 'memvir[<extra>]'`


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'memvir' has no attribute {name!r}")


def __dir__():
    return __all__
