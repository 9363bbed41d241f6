"""Proxy-based losses: every loss owns its learnable `proxies`, an nn.Parameter of shape (C, D).

Both losses here are a cross-entropy over per-(embedding, proxy) logits:

    loss = mean_i [ logsumexp_c logits[i, c] - logits[i, y_i] ]

and the logit of a pair depends on that one embedding and that one proxy only. MemVir relies on this
in two ways: it can hand the loss a longer proxy list (current proxies plus C virtual classes per past
step), and its fast path (memvir.memory) can cache the logits between two frozen past steps.
A loss that has these two properties sets `decomposable = True`.

A loss computes its logits in two stages,
`logits(emb, proxies) = similarity(embed(emb), embed_proxies(proxies))`: `embed` and `embed_proxies` map each
row on its own and `similarity` scores embedded rows. MemVir stores embedded rows, so the snapshots of N(M+1)
past steps are not normalised again at every step.

Both losses normalise the proxies. The embeddings they normalise too, unless `normalize_embeddings=False`: the
official `--train_with_l2norm=False`, where the official losses take the head's output as it comes (their
comment "input is already l2_normalized" holds only with the flag on) and MemVir stores it raw.

Chapter: notebooks/03_losses.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProxyLoss", "NormSoftmax", "ProxyNCA", "LOSSES", "build_loss", "canonical_loss_name", "loss_class",
           "check_batch"]


def check_batch(emb, labels, num_classes, dim):
    """Return the labels as int64 (what cross-entropy indexes with); raise a ValueError when the batch does not fit.

    Args:
        emb: (B, D) float embeddings.
        labels: (B,) labels in [0, num_classes), any integer dtype (int32, uint8, ...); bool and float are refused.
        num_classes: C, the number of classes (label range).
        dim: D, the embedding size the proxies have.
    Returns:
        (B,) int64 labels (the same tensor when it already is int64).
    """
    if not torch.is_tensor(emb) or emb.dim() != 2:
        raise ValueError(f"embeddings: expected a 2-D tensor (B, D={dim}), got {tuple(getattr(emb, 'shape', ()))}")
    if emb.shape[1] != dim:
        raise ValueError(f"embeddings: expected {dim} columns (the proxies' D), got shape {tuple(emb.shape)}")
    if emb.shape[0] == 0:
        raise ValueError("embeddings: expected at least one row, got an empty batch")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"labels: expected a 1-D tensor of length B={emb.shape[0]}, got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    labels = labels.long()  # before the range check: min/max exist for every dtype in int64
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels: expected values in [0, {num_classes}), got min {lo}, max {hi}")
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings: expected finite values, got NaN or inf")
    return labels


class ProxyLoss(nn.Module):
    """Base class: a cross-entropy over `logits(emb, proxies)`, with one learnable proxy per class.

    Subclasses implement `similarity` (and `embed_proxies` when proxies are mapped) and initialise
    `self.proxies` (C, D). Called as MemVir is, `loss(emb, labels, epoch=e)`, with the same counters
    (`num_taken`, always 0 here; `num_classes_in_use`; `num_embeddings_in_use`), so that a training loop
    needs no branch for the bare loss.

    Args:
        num_classes: C, the number of proxies. It may exceed the classes present in the labels (the official
            `-C`): a proxy whose class never comes is only ever a negative, in every softmax denominator.
        embedding_size: D.
        scale: the logit scale.
        normalize_embeddings: map embeddings onto the unit sphere (`embed`) before scoring them. False takes
            them as they come, as the official losses do with `--train_with_l2norm=False`.
    """

    decomposable = True  # logit[i, c] depends on emb[i] and proxies[c] only; plain cross-entropy on top.
    name = None  # the official README's spelling, set by each loss

    def __init__(self, num_classes, embedding_size, scale, normalize_embeddings=True):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        if int(embedding_size) < 1:
            raise ValueError(f"embedding_size: expected a positive integer, got {embedding_size}")
        if not float(scale) > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        if not isinstance(normalize_embeddings, bool):
            raise ValueError(f"normalize_embeddings: expected True or False, got {normalize_embeddings!r}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.scale = float(scale)
        self.normalize_embeddings = normalize_embeddings
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))  # (C, D)
        # The counters MemVir keeps, for the same training loop: what the last call used.
        self.num_taken = 0  # past steps taken: none without a memory
        self.num_classes_in_use = self.num_classes  # proxies scored by the last call (C unless given more)
        self.num_embeddings_in_use = 0  # rows of the last call

    def embed(self, x):
        """Map each embedding row to what `similarity` compares; applying it twice changes nothing.

        Onto the unit sphere when `normalize_embeddings`, else unchanged (the same tensor).

        Args:
            x: (n, D) embeddings.
        """
        # Normalising an already unit-length embedding changes nothing (up to rounding), so the head may too.
        return F.normalize(x, dim=1) if self.normalize_embeddings else x

    def embed_proxies(self, p):
        """Map each proxy row to what `similarity` compares; applying it twice changes nothing.

        Args:
            p: (C', D) proxies.
        """
        return p

    def similarity(self, x, p):
        """Return the logits of embedded rows `x` (B, D) against embedded proxies `p` (C', D), shape (B, C')."""
        raise NotImplementedError

    def logits(self, emb, proxies):
        """Return the logits of every embedding against every proxy.

        Args:
            emb: (B, D) embeddings (normalised or not: `embed` does what the loss needs).
            proxies: (C', D) proxies; C' may exceed C when MemVir appends virtual classes.
        Returns:
            (B, C') logits.
        """
        return self.similarity(self.embed(emb), self.embed_proxies(proxies))

    def forward(self, emb, labels, proxies=None, *, epoch=None):
        """Return the mean loss of a batch.

        Args:
            emb: (B, D) embeddings.
            labels: (B,) labels in [0, C'), C' = len(proxies), any integer dtype.
            proxies: optional (C', D) proxy matrix to score against; defaults to `self.proxies`.
            epoch: ignored; accepted so that the loss is called as MemVir is.
        """
        proxies = self.proxies if proxies is None else proxies
        labels = check_batch(emb, labels, proxies.shape[0], self.embedding_size)  # (B,) int64
        self.num_classes_in_use, self.num_embeddings_in_use = proxies.shape[0], emb.shape[0]
        return F.cross_entropy(self.logits(emb, proxies), labels)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, scale={self.scale}, "
                f"normalize_embeddings={self.normalize_embeddings}")


class NormSoftmax(ProxyLoss):
    """Normalised softmax (Zhai & Wu 2019): cross-entropy over scale * <emb/|emb|, proxy/|proxy|>.

    With `normalize_embeddings=False`, scale * <emb, proxy/|proxy|>, as the official code without its l2 norm.
    Initialisation as the official code: proxies uniform in (-1/sqrt(C), 1/sqrt(C)).
    """

    name = "Norm_SoftMax"

    def __init__(self, num_classes, embedding_size, scale=23.0, normalize_embeddings=True):
        super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
        bound = 1.0 / math.sqrt(self.num_classes)
        nn.init.uniform_(self.proxies, -bound, bound)

    def embed_proxies(self, p):
        return F.normalize(p, dim=1)

    def similarity(self, x, p):
        # The scale multiplies the operand with fewer rows: cheaper than scaling the (B, C') product.
        if x.shape[0] <= p.shape[0]:
            return (self.scale * x) @ p.T  # (B, C') = scale * cos
        return x @ (self.scale * p).T


class ProxyNCA(ProxyLoss):
    """Proxy-NCA as in the MemVir code: cross-entropy over -scale * ||emb/|emb| - proxy/|proxy|||^2.

    With `normalize_embeddings=False`, -scale * ||emb - proxy/|proxy|||^2, as the official code without its l2
    norm. The positive proxy stays in the denominator (the "with positive" variant of the official code).
    Initialisation as the official code: proxies normal with std sqrt(2/D).
    With unit vectors ||x - p||^2 = 2 - 2 cos(x, p), so this is Norm-SoftMax at scale 2*scale (a constant
    shift of all logits leaves the softmax unchanged); notebooks/03_losses.py shows it.
    """

    name = "Proxy_NCA"

    def __init__(self, num_classes, embedding_size, scale=12.0, normalize_embeddings=True):
        super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
        nn.init.normal_(self.proxies, mean=0.0, std=math.sqrt(2.0 / self.embedding_size))

    def embed_proxies(self, p):
        return F.normalize(p, dim=1)

    def similarity(self, x, p):
        # -s * ||x - p||^2 = 2s x.p - s|x|^2 - s|p|^2, expanded so that the big (B, C') product is one matmul
        # with the scale folded into the (B, D) side; exact for any norms and differentiable everywhere.
        x_sq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square()  # (B, 1); no (B, D) temporary
        p_sq = torch.linalg.vector_norm(p, dim=1).square()  # (C',)
        shift = -self.scale * (x_sq + p_sq)  # (B, C')
        if x.shape[0] <= p.shape[0]:  # the factor 2s on the operand with fewer rows
            return torch.addmm(shift, 2 * self.scale * x, p.T)  # (B, C')
        return torch.addmm(shift, x, (2 * self.scale * p).T)


LOSSES = {"normsoftmax": NormSoftmax, "proxynca": ProxyNCA}  # keyed by the name without case, "_" and "-"


def loss_class(name):
    """Return the loss class of a name as the official README or code writes it: Norm_SoftMax, NormSoftmax, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
    """
    key = str(name).lower().replace("_", "").replace("-", "")
    if key not in LOSSES:
        known = ", ".join(f"{cls.name} ({cls.__name__})" for cls in LOSSES.values())
        raise ValueError(f"loss: unknown name {name!r}; known losses: {known}, in any case")
    return LOSSES[key]


def canonical_loss_name(name):
    """Return the official README's spelling of a loss name ("Norm_SoftMax" or "Proxy_NCA"), or raise ValueError."""
    return loss_class(name).name


def build_loss(name, num_classes, embedding_size, scale=None, normalize_embeddings=True):
    """Build a loss by name, matched as the paper's README writes it: Norm_SoftMax, NormSoftmax, Proxy_NCA, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
        num_classes: C, the number of proxies (the training classes; more adds proxies that are only negatives).
        embedding_size: D.
        scale: the logit scale; None keeps the loss's default (23 for Norm-SoftMax, 12 for Proxy-NCA).
        normalize_embeddings: False scores the embeddings as they come (official `--train_with_l2norm=False`).
    """
    kwargs = {} if scale is None else {"scale": scale}
    return loss_class(name)(num_classes, embedding_size, normalize_embeddings=normalize_embeddings, **kwargs)
