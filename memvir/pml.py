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

The reference row of a memory of past *embeddings* is here too: `Contrastive` (`--loss Contrastive`), XBM's pair
loss through PML's ContrastiveLoss, wrapped in PML's CrossBatchMemory with `--xbm_size` (Wang et al., CVPR 2020).
It owns no proxies, so MemVir cannot take it; the memory's queue position, which PML keeps outside `state_dict`,
is saved with it.

Chapter: notebooks/03_losses.py.
"""
import torch
import torch.nn as nn

from .losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, SoftTriple, check_batch, check_margin

__all__ = ["PMLLoss", "adapt", "is_pml_loss", "Contrastive"]

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


class Contrastive(nn.Module):
    """XBM's contrastive loss (PML's ContrastiveLoss), with PML's CrossBatchMemory of K past embeddings from epoch U.

        loss = mean_{(i, j) positive, 1 - s_ij > 0} (1 - s_ij) + mean_{(i, j) negative, s_ij > margin} (s_ij - margin)

    s_ij the cosine of batch row i and reference row j; a pair is positive when the labels agree. The two means are
    PML's default reducer (AvgNonZeroReducer, one per term, summed): each averages only the pairs that cost. The
    reference rows: the batch itself (j != i) without a memory or before epoch U; from epoch U on, PML's
    CrossBatchMemory: the batch is enqueued first (detached), then scored against every filled memory row, which
    includes its own copies (the pair of a row with its own copy is dropped). The gradient reaches the batch side.

    The numbers are the official XBM code's (msight-tech/research-xbm, ret_benchmark/losses/contrastive_loss.py):
    cosines of L2-normalised embeddings, positives cost 1 - s, negatives cost s when s > 0.5 (PML: s - 0.5, the same
    gradient). In PML's terms: CosineSimilarity, pos_margin=1, neg_margin=0.5 (its default LpDistance with
    pos_margin=0 would cost the Euclidean distance instead). Where this differs from the official code, on purpose
    (PML's definitions): its loss sums each anchor's pairs and divides by the batch size, and from its START_ITERATION
    on it adds the batch's loss to the loss against the memory (which holds the batch as here).

    A pair loss has no proxies (`parameters()` is empty: --centerlr moves nothing) and no logit scale. It keeps
    the counters a training loop reads: `num_taken` 0, `num_classes_in_use` C, `num_embeddings_in_use` the rows the
    batch was scored against (B, or the filled memory rows).

    Args:
        num_classes: C, the label range (checked; a pair loss has no per-class parameter).
        embedding_size: D, the memory's row width.
        scale: no logit scale: 1 (the value --scale resolves to for this loss), anything else is refused.
        margin: the cosine above which a negative pair costs, in [0, 1) (XBM: 0.5).
        memory_size: K, past embeddings remembered (XBM's memory, --xbm_size); 0: none, the batch alone.
        warmup_epochs: U (--warm_epoch): the memory is filled and used from epoch U on, epochs counted from 0.
        normalize_embeddings: True (a cosine normalises; --train_with_l2norm=False is refused).
    Paper: Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020 (XBM).
    """

    name = "Contrastive"
    scale_arg = "scale"  # a placeholder: resolve_config and build_loss read it; only 1 is accepted

    def __init__(self, num_classes, embedding_size, scale=1.0, margin=0.5, memory_size=0, warmup_epochs=0,
                 normalize_embeddings=True):
        super().__init__()
        try:
            import pytorch_metric_learning.distances as PD
            import pytorch_metric_learning.losses as PL
        except ImportError:
            raise ValueError("--loss Contrastive: needs pytorch-metric-learning (pip install -e '.[dev]')") from None
        if float(scale) != 1.0:
            raise ValueError(f"Contrastive scale: a pair loss has no logit scale; expected 1 (--scale unset), got "
                             f"{scale!r}")
        if normalize_embeddings is not True:
            raise ValueError("Contrastive normalize_embeddings: expected True (it scores cosines; "
                             "--train_with_l2norm=False has no meaning for it)")
        for arg, value in (("num_classes", num_classes), ("embedding_size", embedding_size),
                           ("memory_size", memory_size), ("warmup_epochs", warmup_epochs)):
            low = 1 if arg in ("num_classes", "embedding_size") else 0
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"Contrastive {arg}: expected an integer >= {low}, got {value!r}")
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.scale, self.margin = 1.0, check_margin(margin, "Contrastive", below=1.0)
        self.memory_size, self.warmup_epochs = int(memory_size), int(warmup_epochs)
        self.normalize_embeddings = True
        self.pair_loss = PL.ContrastiveLoss(pos_margin=1.0, neg_margin=self.margin,
                                            distance=PD.CosineSimilarity())
        # Its memory (embedding_memory (K, D), label_memory (K,)) is in registered buffers; its position
        # (queue_idx, has_been_filled) is not: get_extra_state saves it.
        self.xbm = PL.CrossBatchMemory(self.pair_loss, self.embedding_size, self.memory_size) \
            if self.memory_size else None
        self.num_taken = 0  # the counters of ProxyLoss and MemVir
        self.num_classes_in_use = self.num_classes
        self.num_embeddings_in_use = 0

    def forward(self, emb, labels, *, epoch=None):
        """Return the loss of a batch (B, D) with labels (B,); `epoch` (from 0) is required with a memory."""
        labels = check_batch(emb, labels, self.num_classes, self.embedding_size)  # (B,) int64
        if self.xbm is None:
            self.num_embeddings_in_use = emb.shape[0]
            return self.pair_loss(emb, labels)
        if epoch is None or isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
            raise ValueError(f"Contrastive epoch: expected an integer >= 0 with a memory, got {epoch!r}")
        if epoch < self.warmup_epochs:  # XBM's warm-up: the batch alone, nothing remembered
            self.num_embeddings_in_use = emb.shape[0]
            return self.pair_loss(emb, labels)
        if emb.shape[0] > self.memory_size:
            raise ValueError(f"Contrastive: a batch of {emb.shape[0]} rows needs memory_size >= {emb.shape[0]}, "
                             f"got {self.memory_size}")
        if not (self.training and torch.is_grad_enabled()):  # a validation loss reads the memory, as MemVir's
            return self.xbm(emb, labels, enqueue_mask=torch.zeros(len(labels), dtype=torch.bool, device=emb.device))
        value = self.xbm(emb, labels)  # enqueue (detached), then the batch against the memory's filled rows
        self.num_embeddings_in_use = self.memory_size if self.xbm.has_been_filled else self.xbm.queue_idx
        return value

    def get_extra_state(self):
        """The memory's position, which PML keeps in plain attributes (its rows are buffers already)."""
        if self.xbm is None:
            return {}
        return {"queue_idx": int(self.xbm.queue_idx), "has_been_filled": bool(self.xbm.has_been_filled)}

    def set_extra_state(self, state):
        if self.xbm is not None:
            self.xbm.queue_idx, self.xbm.has_been_filled = int(state["queue_idx"]), bool(state["has_been_filled"])

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, margin={self.margin}, "
                f"memory_size={self.memory_size}, warmup_epochs={self.warmup_epochs}")
