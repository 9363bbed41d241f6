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

Chapter: notebooks/03_losses.py.
"""
import torch.nn as nn

from .losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, SoftTriple

__all__ = ["PMLLoss", "adapt", "is_pml_loss", "build_pml_loss"]

SUPPORTED = ("NormalizedSoftmaxLoss", "ProxyNCALoss", "CosFaceLoss", "ArcFaceLoss", "ProxyAnchorLoss",
             "SoftTripleLoss")


def is_pml_loss(loss):
    """Whether `loss` is one of pytorch-metric-learning's objects (by its module, without importing PML)."""
    return type(loss).__module__.split(".")[0] == "pytorch_metric_learning"


def _ours(pml_loss):
    """Return (our equivalent loss, name of the PML weight, True if that weight is (D, rows)) for a PML loss."""
    kind = type(pml_loss).__name__
    if kind not in SUPPORTED or type(pml_loss).__module__.split(".")[0] != "pytorch_metric_learning":
        raise ValueError(
            f"MemVir loss: pytorch-metric-learning's {kind} is not a proxy loss MemVir can take (it takes "
            f"{', '.join(SUPPORTED)}); for a memory of past embeddings with a pair loss use "
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
    if kind == "NormalizedSoftmaxLoss":
        D, C = pml_loss.W.shape
        return NormSoftmax(C, D, scale=1.0 / pml_loss.temperature, normalize_embeddings=norm), "W", True
    if kind == "ProxyNCALoss":
        C, D = pml_loss.proxies.shape
        return ProxyNCA(C, D, scale=pml_loss.softmax_scale, normalize_embeddings=norm), "proxies", False
    if kind == "CosFaceLoss":
        D, C = pml_loss.W.shape
        return CosFace(C, D, scale=pml_loss.scale, margin=pml_loss.margin), "W", True
    if kind == "ArcFaceLoss":  # PML turned its degrees into radians at construction (init_margin)
        D, C = pml_loss.W.shape
        return ArcFace(C, D, scale=pml_loss.scale, margin=float(pml_loss.margin)), "W", True
    if kind == "ProxyAnchorLoss":
        C, D = pml_loss.proxies.shape
        return ProxyAnchor(C, D, margin=pml_loss.margin, alpha=pml_loss.alpha), "proxies", False
    # SoftTripleLoss: fc (D, C*K) is viewed (B, C, K), so its column c*K + k is our row c*K + k.
    return SoftTriple(pml_loss.num_classes, pml_loss.fc.shape[0], centers_per_class=pml_loss.centers_per_class,
                      la=pml_loss.la, gamma=1.0 / pml_loss.gamma, margin=pml_loss.margin), "fc", True


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

    def forward(self, emb, labels, proxies=None, *, epoch=None):
        """Return the loss of a batch, as ProxyLoss.forward (PML's miners and indices_tuple are not taken)."""
        if self.native and proxies is None:
            value = self.pml(emb, labels.long())
            self.formula.num_embeddings_in_use = emb.shape[0]  # the counters a training loop reads
            return value
        return self.formula(emb, labels, self.proxies if proxies is None else proxies)

    def extra_repr(self):
        return f"formula={self.formula!r}, weight={self.weight_name!r}{' (D, C*K)' if self.transposed else ''}"


def adapt(loss):
    """Return `loss` as MemVir takes it: a PMLLoss for a PML proxy loss, the loss itself otherwise."""
    return PMLLoss(loss) if is_pml_loss(loss) else loss


def build_pml_loss(name, num_classes, embedding_size, scale, margin=None, centers_per_class=None, gamma=None):
    """Build pytorch-metric-learning's implementation of one of our losses, with our hyper-parameters and units.

    Args:
        name: a loss name memvir.losses knows (Norm_SoftMax, Proxy_NCA, CosFace, ArcFace, Proxy_Anchor, Soft_Triple).
        scale: our scale (Norm-SoftMax: 1 / PML's temperature; Proxy-Anchor: alpha; SoftTriple: la).
        margin: ours (ArcFace in radians: PML takes degrees).
    """
    import math

    import pytorch_metric_learning.losses as L

    from .losses import canonical_loss_name

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
