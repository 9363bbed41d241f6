"""XBM's reference row, a memory of past *embeddings*: `Contrastive` (`--loss Contrastive`), its pair loss through
pytorch-metric-learning's ContrastiveLoss, in PML's CrossBatchMemory with `--xbm_size` (Wang et al., CVPR 2020).

It owns no proxies, so MemVir cannot take it; the memory's queue position, which PML keeps outside `state_dict`,
is saved with it. It declares itself (memvir.declare.declare), so `--loss Contrastive` names it.
"""
import torch
import torch.nn as nn

from .checks import check_batch, check_margin
from .declare import declare

__all__ = ["Contrastive"]


@declare
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
    pml = None  # not one of our losses in PML's: it *is* PML's (memvir.registry.build_pml_loss refuses it)

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
