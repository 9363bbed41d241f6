"""MemVir on pytorch-metric-learning's proxy losses: `memvir.MemVir(pml_loss, N, M)` and nothing else changes.

pytorch-metric-learning (PML) has no memory for proxy losses: its `CrossBatchMemory` keeps embeddings for pair
losses and refuses proxies, and its state is not in `state_dict`. MemVir wraps a PML proxy loss in `PMLLoss`, which
scores with our formula of the same loss (memvir.losses) and reads the proxies from the PML loss's own parameter,
in whatever layout PML keeps it:

    PML loss                 its weight                 ours          hyper-parameters read
    NormalizedSoftmaxLoss    W   (D, C)                 NormSoftmax   scale = 1 / temperature
    ProxyNCALoss             proxies (C, D)             ProxyNCA      scale = softmax_scale
    CosFaceLoss              W   (D, C)                 CosFace       scale, margin
    ArcFaceLoss              W   (D, C)                 ArcFace       scale, margin (PML: degrees; ours: radians)
    ProxyAnchorLoss          proxies (C, D)             ProxyAnchor   alpha, margin
    SoftTripleLoss           fc  (D, C*K), class-major  SoftTriple    la, gamma (PML keeps 1/gamma), margin, K

`PMLLoss.proxies` is a view of that parameter, (C*K, D): the gradients reach the PML loss's own parameter, so an
optimiser built over `pml_loss.parameters()` keeps working, and the memory (MemVir's buffers) and the weight
(`loss.pml.*`) are both in MemVir's `state_dict`. What PML adds on top of the formula and we do not reproduce
(a regulariser, a non-default distance or reducer) is refused with one line, never silently dropped.

The reference row of a memory of past *embeddings*, XBM's pair loss (`--loss Contrastive`), is memvir/xbm.py.

Chapter: notebooks/03_losses.py.
"""
import torch
import torch.nn as nn

from .losses import DECLARED
from .memory import ADAPTERS, MemVir

__all__ = ["PMLLoss", "adapt", "is_pml_loss", "MemVir"]

def supported():
    """{PML class name: our loss}: every declared loss with a PML counterpart (memvir.losses, each loss's `pml`)."""
    return {cls.pml.name: cls for cls in dict.fromkeys(DECLARED.values()) if cls.pml is not None}


def is_pml_loss(loss):
    """Whether `loss` is one of pytorch-metric-learning's objects (by its module, without importing PML)."""
    return type(loss).__module__.split(".")[0] == "pytorch_metric_learning"


def _ours(pml_loss):
    """Return (our equivalent loss, name of the PML weight, True if that weight is (D, rows)) for a PML loss."""
    kind, table = type(pml_loss).__name__, supported()
    if kind not in table or type(pml_loss).__module__.split(".")[0] != "pytorch_metric_learning":
        raise ValueError(
            f"MemVir loss: pytorch-metric-learning's {kind} is not a proxy loss MemVir can take (it takes "
            f"{', '.join(table)}); for a memory of past embeddings with a pair loss use "
            f"pytorch_metric_learning.losses.CrossBatchMemory")
    for attr in ("weight_regularizer", "embedding_regularizer"):
        if getattr(pml_loss, attr, None) is not None:
            raise ValueError(f"MemVir loss: {kind} with a {attr} is not supported (MemVir scores the loss's "
                             f"formula only); build it without one")
    default = pml_loss.get_default_distance()
    d = pml_loss.distance
    if type(d) is not type(default) or (d.p, d.power) != (default.p, default.power):
        raise ValueError(f"MemVir loss: {kind} with distance {type(d).__name__}(p={d.p}, power={d.power}) is not "
                         f"supported; expected its default {type(default).__name__}(p={default.p}, "
                         f"power={default.power})")
    # A loss of several terms (Proxy-Anchor's pos_loss and neg_loss) keeps one reducer per term, summed.
    reducers = getattr(pml_loss.reducer, "reducers", {"loss": pml_loss.reducer})
    expected = type(pml_loss.get_default_reducer())
    for r in reducers.values():
        if type(r) is not expected:
            raise ValueError(f"MemVir loss: {kind} with reducer {type(r).__name__} is not supported; expected its "
                             f"default {expected.__name__}")
    norm = bool(d.normalize_embeddings)  # only NormalizedSoftmaxLoss and ProxyNCALoss let it be False
    ours = table[kind]
    return ours(**ours.pml.from_pml(pml_loss, norm)), ours.pml.weight, ours.pml.transposed


class PMLLoss(nn.Module):
    """A PML proxy loss as a loss of memvir.losses: our formula, the PML loss's weight as `proxies`.

    Args:
        pml_loss: one of pytorch-metric-learning's NormalizedSoftmaxLoss, ProxyNCALoss, CosFaceLoss, ArcFaceLoss,
            ProxyAnchorLoss, SoftTripleLoss, with its default distance and reducer and no regulariser. It becomes
            `self.pml` (its parameter is the one that learns).
        native: a call with the batch alone runs PML's own forward (`--pml 1` without MemVir: training with PML's
            implementation); a call with a proxy list (MemVir's plain path) always scores with our formula.
    """

    def __init__(self, pml_loss, native=False):
        super().__init__()
        self.native = bool(native)
        formula, self.weight_name, self.transposed = _ours(pml_loss)
        self.pml = pml_loss
        formula.proxies = None  # the formula's own (C*K, D) parameter is never used: free it
        # Not a submodule: it holds no tensor, and its name must not appear in parameters() or state_dict().
        object.__setattr__(self, "formula", formula)
        self.name = f"{type(pml_loss).__name__} (pytorch-metric-learning), as {formula.name}"

    @property
    def proxies(self):
        """The PML loss's weight as (C*K, D) rows: a view, so gradients reach that parameter."""
        weight = getattr(self.pml, self.weight_name)
        return weight.t() if self.transposed else weight

    # What MemVir and a training loop read, as our losses have them.
    num_classes = property(lambda self: self.formula.num_classes)
    embedding_size = property(lambda self: self.formula.embedding_size)
    proxies_per_class = property(lambda self: self.formula.proxies_per_class)
    decomposable = property(lambda self: self.formula.decomposable)
    target_logit = property(lambda self: self.formula.target_logit)
    normalize_embeddings = property(lambda self: self.formula.normalize_embeddings)
    num_taken = property(lambda self: self.formula.num_taken)
    num_classes_in_use = property(lambda self: self.formula.num_classes_in_use)
    num_embeddings_in_use = property(lambda self: self.formula.num_embeddings_in_use)

    def embed(self, x):
        return self.formula.embed(x)

    def embed_proxies(self, p):
        return self.formula.embed_proxies(p)

    def similarity(self, x, p):
        return self.formula.similarity(x, p)

    def margin_targets(self, logits, labels):
        return self.formula.margin_targets(logits, labels)

    def logits(self, emb, proxies):
        return self.formula.logits(emb, proxies)

    def forward(self, emb, labels, proxies=None, *, epoch=None, check=True):
        """Return the loss of a batch, as ProxyLoss.forward (PML's miners and indices_tuple are not taken)."""
        if self.native and proxies is None:
            value = self.pml(emb, labels.long())
            self.formula.num_embeddings_in_use = emb.shape[0]  # the counters a training loop reads
            return value
        return self.formula(emb, labels, self.proxies if proxies is None else proxies, check=check)

    def extra_repr(self):
        return f"formula={self.formula!r}, weight={self.weight_name!r}{' (D, C*K)' if self.transposed else ''}"


def adapt(loss):
    """Return `loss` as MemVir takes it: a PMLLoss for a PML proxy loss, the loss itself otherwise."""
    return PMLLoss(loss) if is_pml_loss(loss) else loss


ADAPTERS["pytorch_metric_learning"] = adapt  # MemVir(pml_loss) takes it through this adapter (memvir.memory)
