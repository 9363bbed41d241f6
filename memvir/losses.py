"""Proxy-based losses: every loss owns its learnable `proxies`, an nn.Parameter of shape (C, D).

Both losses here are a cross-entropy over per-(embedding, proxy) logits:

    loss = mean_i [ logsumexp_c logits[i, c] - logits[i, y_i] ]

and the logit of a pair depends on that one embedding and that one proxy only. MemVir relies on this
in two ways: it can hand the loss a longer proxy list (current proxies plus C virtual classes per past
step), and its fast path (memvir.memory) can cache the logits between two frozen past steps.
A loss that has these two properties sets `decomposable = True`.

A loss computes its logits in two stages, `logits(emb, proxies) = similarity(embed(emb), embed(proxies))`:
`embed` maps each row on its own (here: onto the unit sphere) and `similarity` scores embedded rows. MemVir
stores embedded rows, so the snapshots of N(M+1) past steps are not normalised again at every step.

Chapter: notebooks/03_losses.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProxyLoss", "NormSoftmax", "ProxyNCA", "LOSSES", "build_loss", "check_batch"]


def check_batch(emb, labels, num_classes, dim):
    """Raise a ValueError that says what was expected when a batch does not fit the loss.

    Args:
        emb: (B, D) float embeddings.
        labels: (B,) integer labels in [0, num_classes).
        num_classes: C, the number of classes (label range).
        dim: D, the embedding size the proxies have.
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
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels: expected values in [0, {num_classes}), got min {lo}, max {hi}")
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings: expected finite values, got NaN or inf")


class ProxyLoss(nn.Module):
    """Base class: a cross-entropy over `logits(emb, proxies)`, with one learnable proxy per class.

    Subclasses implement `logits` and initialise `self.proxies` (C, D).
    """

    decomposable = True  # logit[i, c] depends on emb[i] and proxies[c] only; plain cross-entropy on top.

    def __init__(self, num_classes, embedding_size, scale):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        if int(embedding_size) < 1:
            raise ValueError(f"embedding_size: expected a positive integer, got {embedding_size}")
        if not float(scale) > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.scale = float(scale)
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))  # (C, D)

    def embed(self, x):
        """Map each row (an embedding or a proxy) to what `similarity` compares; applying it twice changes nothing.

        Args:
            x: (n, D) rows.
        """
        return x

    def similarity(self, x, p):
        """Return the logits of embedded rows `x` (B, D) against embedded proxies `p` (C', D), shape (B, C')."""
        raise NotImplementedError

    def logits(self, emb, proxies):
        """Return the logits of every embedding against every proxy.

        Args:
            emb: (B, D) embeddings (normalised or not: each loss normalises what it needs).
            proxies: (C', D) proxies; C' may exceed C when MemVir appends virtual classes.
        Returns:
            (B, C') logits.
        """
        return self.similarity(self.embed(emb), self.embed(proxies))

    def forward(self, emb, labels, proxies=None):
        """Return the mean loss of a batch.

        Args:
            emb: (B, D) embeddings.
            labels: (B,) integer labels in [0, C'), C' = len(proxies).
            proxies: optional (C', D) proxy matrix to score against; defaults to `self.proxies`.
        """
        proxies = self.proxies if proxies is None else proxies
        check_batch(emb, labels, proxies.shape[0], self.embedding_size)
        return F.cross_entropy(self.logits(emb, proxies), labels)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, scale={self.scale}"


class NormSoftmax(ProxyLoss):
    """Normalised softmax (Zhai & Wu 2019): cross-entropy over scale * cos(emb, proxy).

    Initialisation as the official code: proxies uniform in (-1/sqrt(C), 1/sqrt(C)).
    """

    def __init__(self, num_classes, embedding_size, scale=23.0):
        super().__init__(num_classes, embedding_size, scale)
        bound = 1.0 / math.sqrt(self.num_classes)
        nn.init.uniform_(self.proxies, -bound, bound)

    def embed(self, x):
        # Normalising an already unit-length embedding changes nothing, so the head may normalise too.
        return F.normalize(x, dim=1)

    def similarity(self, x, p):
        # The scale multiplies the operand with fewer rows: cheaper than scaling the (B, C') product.
        if x.shape[0] <= p.shape[0]:
            return (self.scale * x) @ p.T  # (B, C') = scale * cos
        return x @ (self.scale * p).T


class ProxyNCA(ProxyLoss):
    """Proxy-NCA as in the MemVir code: cross-entropy over -scale * ||emb/|emb| - proxy/|proxy|||^2.

    The positive proxy stays in the denominator (the "with positive" variant of the official code).
    Initialisation as the official code: proxies normal with std sqrt(2/D).
    With unit vectors ||x - p||^2 = 2 - 2 cos(x, p), so this is Norm-SoftMax at scale 2*scale (a constant
    shift of all logits leaves the softmax unchanged); notebooks/03_losses.py shows it.
    """

    def __init__(self, num_classes, embedding_size, scale=12.0):
        super().__init__(num_classes, embedding_size, scale)
        nn.init.normal_(self.proxies, mean=0.0, std=math.sqrt(2.0 / self.embedding_size))

    def embed(self, x):
        return F.normalize(x, dim=1)

    def similarity(self, x, p):
        # -s * ||x - p||^2 = 2s x.p - s|x|^2 - s|p|^2, expanded so that the big (B, C') product is one matmul
        # with the scale folded into the (B, D) side; exact for any norms and differentiable everywhere.
        x_sq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square()  # (B, 1); no (B, D) temporary
        p_sq = torch.linalg.vector_norm(p, dim=1).square()  # (C',)
        shift = -self.scale * (x_sq + p_sq)  # (B, C')
        if x.shape[0] <= p.shape[0]:  # the factor 2s on the operand with fewer rows
            return torch.addmm(shift, 2 * self.scale * x, p.T)  # (B, C')
        return torch.addmm(shift, x, (2 * self.scale * p).T)


LOSSES = {"normsoftmax": NormSoftmax, "proxynca": ProxyNCA}


def build_loss(name, num_classes, embedding_size, scale=None):
    """Build a loss by name, matched as the paper's README writes it: Norm_SoftMax, NormSoftmax, Proxy_NCA, ...

    Args:
        name: loss name, case-insensitive, underscores and dashes ignored.
        num_classes: C, the number of training classes.
        embedding_size: D.
        scale: the logit scale; None keeps the loss's default (23 for Norm-SoftMax, 12 for Proxy-NCA).
    """
    key = str(name).lower().replace("_", "").replace("-", "")
    if key not in LOSSES:
        known = "Norm_SoftMax (NormSoftmax), Proxy_NCA (ProxyNCA)"
        raise ValueError(f"loss: unknown name {name!r}; known losses: {known}")
    kwargs = {} if scale is None else {"scale": scale}
    return LOSSES[key](num_classes, embedding_size, **kwargs)
