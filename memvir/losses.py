"""Proxy-based losses: every loss owns its learnable `proxies`, an nn.Parameter of shape (C, D) ((C*K, D) for
SoftTriple's K centres per class).

The six losses of the MemVir paper's Table 4. All but Proxy-Anchor are a cross-entropy over per-(embedding, class)
logits, with an optional margin on each row's own target logit (CosFace, ArcFace, SoftTriple):

    loss = mean_i [ logsumexp_c z[i, c] - z[i, y_i] ],   z = logits, z[i, y_i] -> target_logit(z[i, y_i])

and the logit of a pair depends on that one embedding and that one class's proxies only. MemVir relies on this
in two ways: it can hand the loss a longer proxy list (current proxies plus C virtual classes per past
step), and its fast path (memvir.memory) can cache the logits between two frozen past steps.
A loss that has these two properties sets `decomposable = True`. The margin touches a row's own target only, so
a past row's target gets it too (MemVir scores past rows as the loss scores current ones): both MemVir paths call
`margin_targets`, which applies `target_logit` to each row's own target.

Proxy-Anchor is no per-row cross-entropy (each proxy pools over the batch's positives and negatives), so it sets
`decomposable = False` and MemVir hands it the concatenated batch and proxy list (its plain path).
SoftTriple keeps K centres per class: its proxies are (C*K, D), class c owning rows c*K .. c*K+K-1
(`proxies_per_class = K`); a class's logit pools its K centres, so it stays decomposable per (row, class).

A loss computes its logits in two stages,
`logits(emb, proxies) = similarity(embed(emb), embed_proxies(proxies))`: `embed` and `embed_proxies` map each
row on its own and `similarity` scores embedded rows. MemVir stores embedded rows, so the snapshots of N(M+1)
past steps are not normalised again at every step.

Every loss but Softmax normalises the proxies (Softmax's class weights are scored as they are). The embeddings they
all normalise, unless `normalize_embeddings=False`: the official `--train_with_l2norm=False`, where the official
losses take the head's output as it comes (their comment "input is already l2_normalized" holds only with the
flag on) and MemVir stores it raw.

Each loss declares itself where it is defined (`name`, `aliases`, `scale_arg`, `pml`; memvir/declare.py says how),
and checks what it is given with memvir/checks.py (both re-exported here).
Chapter: notebooks/03_losses.py.
"""
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import LOGIT_LIMIT, check_batch, check_margin, in_proxies_dtype
from .declare import DECLARED, PMLCounterpart, declare, loss_key

__all__ = ["ProxyLoss", "NormSoftmax", "ProxyNCA", "Softmax", "CosFace", "ArcFace", "ProxyAnchor", "SoftTriple",
           "check_batch", "check_margin", "in_proxies_dtype", "LOGIT_LIMIT", "DECLARED", "declare", "loss_key",
           "PMLCounterpart"]


class ProxyLoss(nn.Module):
    """Base class: a cross-entropy over `logits(emb, proxies)`, with learnable proxies (one per class, or K).

    Subclasses implement `similarity` (and `embed_proxies` when proxies are mapped, `target_logit` for a margin)
    and initialise `self.proxies` (C*K, D), K = `proxies_per_class` (1 but for SoftTriple). Called as MemVir
    is, `loss(emb, labels, epoch=e)`, with the same counters (`num_taken`, always 0 here; `num_classes_in_use`;
    `num_embeddings_in_use`), so that a training loop needs no branch for the bare loss.

    Args:
        num_classes: C, the number of classes (of proxies, but for SoftTriple's K per class). It may exceed the
            classes present in the labels (the official `-C`): a proxy whose class never comes is only ever a
            negative, in every softmax denominator.
        embedding_size: D.
        scale: the logit scale.
        normalize_embeddings: map embeddings onto the unit sphere (`embed`) before scoring them. False takes
            them as they come, as the official losses do with `--train_with_l2norm=False`.
        proxies_per_class: K, proxy rows per class (SoftTriple's centres); class c owns rows c*K .. c*K+K-1.
    """

    decomposable = True  # logit[i, c] depends on emb[i] and class c's proxies only; cross-entropy on top.
    name = None  # the official README's spelling, set by each loss: a class that sets it is declared (DECLARED)
    aliases = ()  # other spellings people use, each matched as loss_key matches
    scale_arg = "scale"  # the constructor argument that build_loss's `scale` (the --scale flag) sets; its default
    pml = None  # the PMLCounterpart, where pytorch-metric-learning has the loss
    # None: no margin. A loss with a margin defines `target_logit(z)`, mapping the logits z (n,) of rows' own
    # targets; `margin_targets` applies it (ProxyLoss.forward and both MemVir paths).
    target_logit = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a new loss; a subclass that does not name itself is not one
            cls.pml = cls.__dict__.get("pml")  # not its parent's: PML's class would be another loss's
            declare(cls)

    def __init__(self, num_classes, embedding_size, scale, normalize_embeddings=True, proxies_per_class=1):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            # True is an int in Python (and 2.7 truncates to 2): a count must be a whole number written as one
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0
                or scale > LOGIT_LIMIT):
            raise ValueError(f"{self.scale_arg}: expected a positive finite number up to {LOGIT_LIMIT:.3g} (the logit "
                             f"scale: {self.scale_arg} x cosine and the loss must stay finite in float32), got "
                             f"{scale!r}")
        if not isinstance(normalize_embeddings, bool):
            raise ValueError(f"normalize_embeddings: expected True or False, got {normalize_embeddings!r}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.scale = float(scale)
        self.normalize_embeddings = normalize_embeddings
        self.proxies_per_class = int(proxies_per_class)
        self.proxies = nn.Parameter(torch.empty(self.num_classes * self.proxies_per_class, self.embedding_size))
        # The counters MemVir keeps, for the same training loop: what the last call used.
        self.num_taken = 0  # past steps taken: none without a memory
        self.num_classes_in_use = self.num_classes  # classes scored by the last call (C unless given more)
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
        """Return the logits of embedded rows `x` (B, D) against embedded proxies `p` (C'K, D), shape (B, C')."""
        raise NotImplementedError

    def margin_targets(self, logits, labels):
        """Return the logits with each row's own target logit mapped by `target_logit` (unchanged without margin).

        Args:
            logits: (B, C') logits.
            labels: (B,) int64 targets in [0, C').
        """
        if self.target_logit is None:
            return logits
        index = labels[:, None]  # (B, 1)
        return logits.scatter(1, index, self.target_logit(logits.gather(1, index)))  # (B, C'), out of place

    def logits(self, emb, proxies):
        """Return the logits of every embedding against every proxy.

        Args:
            emb: (B, D) embeddings (normalised or not: `embed` does what the loss needs).
            proxies: (C'K, D) proxies; C' may exceed C when MemVir appends virtual classes.
        Returns:
            (B, C') logits, before any margin.
        """
        return self.similarity(self.embed(emb), self.embed_proxies(proxies))

    def forward(self, emb, labels, proxies=None, *, epoch=None, check=True):
        """Return the mean loss of a batch.

        Args:
            emb: (B, D) embeddings.
            labels: (B,) labels in [0, C'), C' = len(proxies) / K, any integer dtype.
            proxies: optional (C'K, D) proxy matrix to score against; defaults to `self.proxies`.
            epoch: ignored; accepted so that the loss is called as MemVir is.
            check: False for a caller that has checked the values already (MemVir's concatenation of a checked
                batch and the memory): shapes and dtypes only, no device read.
        """
        proxies = self.proxies if proxies is None else proxies
        labels = self._check(emb, labels, proxies, check)  # (B,) int64
        emb = in_proxies_dtype(emb, proxies)  # (B, D)
        return F.cross_entropy(self.margin_targets(self.logits(emb, proxies), labels), labels)

    def _check(self, emb, labels, proxies, check=True):
        """Check the batch against the classes of `proxies` (its values too, if `check`), count what the call
        uses; return int64 labels."""
        if proxies.dim() != 2 or proxies.shape[0] % self.proxies_per_class:
            raise ValueError(f"proxies: expected ({self.proxies_per_class}*C', {self.embedding_size}) rows, "
                             f"got shape {tuple(proxies.shape)}")
        classes = proxies.shape[0] // self.proxies_per_class
        labels = check_batch(emb, labels, classes, self.embedding_size, "read" if check else None)
        self.num_classes_in_use, self.num_embeddings_in_use = classes, emb.shape[0]
        return labels

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, scale={self.scale}, "
                f"normalize_embeddings={self.normalize_embeddings}")


class NormSoftmax(ProxyLoss):
    """Normalised softmax (Zhai & Wu 2019): cross-entropy over ``scale * <emb/|emb|, proxy/|proxy|>``.

    With `normalize_embeddings=False`, ``scale * <emb, proxy/|proxy|>``, as the official code without its l2 norm.
    Initialisation as the official code: proxies uniform in (-1/sqrt(C), 1/sqrt(C)).
    """

    name = "Norm_SoftMax"
    pml = PMLCounterpart("NormalizedSoftmaxLoss", "W", True, lambda h: {"temperature": 1.0 / h["scale"]},
                         lambda p, norm: {"num_classes": p.W.shape[1], "embedding_size": p.W.shape[0],
                                          "scale": 1.0 / p.temperature, "normalize_embeddings": norm})

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
    """Proxy-NCA as in the MemVir code: cross-entropy over ``-scale * ||emb/|emb| - proxy/|proxy|||^2``.

    With `normalize_embeddings=False`, ``-scale * ||emb - proxy/|proxy|||^2``, as the official code without its l2
    norm. The positive proxy stays in the denominator (the "with positive" variant of the official code).
    Initialisation as the official code: proxies normal with std sqrt(2/D).
    With unit vectors ``||x - p||^2 = 2 - 2 cos(x, p)``, so this is Norm-SoftMax at scale 2*scale (a constant
    shift of all logits leaves the softmax unchanged); notebooks/03_losses.py shows it.
    """

    name = "Proxy_NCA"
    pml = PMLCounterpart("ProxyNCALoss", "proxies", False, lambda h: {"softmax_scale": h["scale"]},
                         lambda p, norm: {"num_classes": p.proxies.shape[0], "embedding_size": p.proxies.shape[1],
                                          "scale": p.softmax_scale, "normalize_embeddings": norm})

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


class Softmax(ProxyLoss):
    """The plain softmax classifier: cross-entropy over scale * <emb, w_c>, its class weights w_c as proxies.

    No bias (a bias per class would be a parameter outside `proxies`, with no past snapshot) and no
    normalisation of the weights. The class default scores the embedding as it comes (`normalize_embeddings=False`,
    the textbook classifier); build_loss passes the training flag instead (`--train_with_l2norm`, on by default as
    in the official code, whose head then hands the loss unit rows).
    Initialisation as nn.Linear's weight: uniform in (-1/sqrt(D), 1/sqrt(D)).
    """

    name = "SoftMax_vanilla"
    aliases = ("Softmax",)

    def __init__(self, num_classes, embedding_size, scale=1.0, normalize_embeddings=False):
        super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
        bound = 1.0 / math.sqrt(self.embedding_size)
        nn.init.uniform_(self.proxies, -bound, bound)

    def similarity(self, x, p):
        if x.shape[0] <= p.shape[0]:
            return (self.scale * x) @ p.T  # (B, C')
        return x @ (self.scale * p).T


class CosFace(NormSoftmax):
    """CosFace (Wang et al. 2018), large margin cosine loss: scale * cos, with scale * (cos - margin) for the target.

    With `normalize_embeddings=False`, cos is ``<emb, proxy/|proxy|>``, as Norm-SoftMax's.
    Initialisation as pytorch-metric-learning's: proxies standard normal.
    """

    name = "CosFace"
    pml = PMLCounterpart("CosFaceLoss", "W", True, lambda h: {"margin": h["margin"], "scale": h["scale"]},
                         lambda p, norm: {"num_classes": p.W.shape[1], "embedding_size": p.W.shape[0],
                                          "scale": p.scale, "margin": p.margin})

    def __init__(self, num_classes, embedding_size, scale=64.0, margin=0.35, normalize_embeddings=True):
        super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
        self.margin = check_margin(margin, "CosFace", scale=self.scale)
        nn.init.normal_(self.proxies)

    def target_logit(self, z):
        return z - self.scale * self.margin  # s cos - s m

    def extra_repr(self):
        return super().extra_repr() + f", margin={self.margin}"


class ArcFace(NormSoftmax):
    """ArcFace (Deng et al. 2019), additive angular margin: scale * cos, with scale * cos(theta + m) for the target.

    `margin` m is in radians (pytorch-metric-learning's ArcFaceLoss takes degrees: 0.5 rad = 28.6 deg).
    Two safeguards, both as insightface's default (`easy_margin=False`) and pytorch-metric-learning:

      * Past theta = pi - m, cos(theta + m) grows again with theta, so a target further away would score better;
        there the target gets cos(theta) - m sin(m) instead, which keeps decreasing. (`easy_margin`, applying the
        margin only where cos > 0, would drop it for exactly the hard targets; the ArcFace paper trains without.)
      * acos has an infinite slope at cos = +-1, reached in floating point by an embedding on its proxy (or
        opposite to it): its gradient would be inf * 0 = NaN. The cosine is clamped to +-(1 - eps) of its dtype
        first, so the gradients stay finite; the value moves by at most scale * sqrt(2 eps) (float32: 3e-2 at s=64,
        and only for ``|cos| > 1 - 1.2e-7``).

    The angle needs unit vectors: `normalize_embeddings=False` is refused.
    Initialisation as pytorch-metric-learning's: proxies standard normal.
    """

    name = "ArcFace"
    # PML takes degrees and turns them into radians at construction (its init_margin): ours are radians
    pml = PMLCounterpart("ArcFaceLoss", "W", True, lambda h: {"margin": math.degrees(h["margin"]), "scale": h["scale"]},
                         lambda p, norm: {"num_classes": p.W.shape[1], "embedding_size": p.W.shape[0],
                                          "scale": p.scale, "margin": float(p.margin)})

    def __init__(self, num_classes, embedding_size, scale=64.0, margin=0.5, normalize_embeddings=True):
        if normalize_embeddings is False:
            raise ValueError("ArcFace normalize_embeddings: expected True (an angle needs unit embeddings; "
                             "--train_with_l2norm=False has none); use CosFace for raw embeddings")
        super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
        self.margin = check_margin(margin, "ArcFace", below=math.pi)
        nn.init.normal_(self.proxies)

    def target_logit(self, z):
        eps = torch.finfo(z.dtype).eps
        cos = (z / self.scale).clamp(-1 + eps, 1 - eps)
        theta = torch.acos(cos)
        m = self.margin
        return self.scale * torch.where(theta <= math.pi - m, torch.cos(theta + m), cos - m * math.sin(m))

    def extra_repr(self):
        return super().extra_repr() + f", margin={self.margin}"


class ProxyAnchor(ProxyLoss):
    """Proxy-Anchor (Kim et al. CVPR 2020): each proxy is an anchor that pools over the whole batch::

        loss = 1/|P+| sum_{c in P+} log(1 + sum_{i: y_i = c} exp(-alpha (cos(x_i, p_c) - margin)))
             + 1/C'   sum_{c}        log(1 + sum_{i: y_i != c} exp( alpha (cos(x_i, p_c) + margin)))

    P+ the proxies with a positive in the batch, C' all proxies given. Not a per-row cross-entropy, so
    `decomposable = False`: MemVir calls it on the concatenated batch (its plain path). A virtual class there is a
    past step's proxy p_c^q (an anchor, constant) with that step's embeddings of class c as its positives; every other
    current and past embedding is its negative, and every current proxy takes the past embeddings as negatives:
    all (1+K)C proxies are anchors over all B + sum n_k rows, and C' = (1+K)C divides the negative term.
    `similarity` returns the cosine (unscaled); alpha is the scale (`scale_arg`).
    Initialisation as the official code: kaiming_normal_(proxies, mode="fan_out"), std sqrt(2/C).
    """

    decomposable = False
    name = "Proxy_Anchor"
    pml = PMLCounterpart("ProxyAnchorLoss", "proxies", False, lambda h: {"margin": h["margin"], "alpha": h["scale"]},
                         lambda p, norm: {"num_classes": p.proxies.shape[0], "embedding_size": p.proxies.shape[1],
                                          "margin": p.margin, "alpha": p.alpha})
    scale_arg = "alpha"

    def __init__(self, num_classes, embedding_size, margin=0.1, alpha=32.0, normalize_embeddings=True):
        super().__init__(num_classes, embedding_size, alpha, normalize_embeddings)
        self.alpha = self.scale
        self.margin = check_margin(margin, "Proxy_Anchor", scale=self.scale)
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def embed_proxies(self, p):
        return F.normalize(p, dim=1)

    def similarity(self, x, p):
        return x @ p.T  # (B, C') cosines

    def forward(self, emb, labels, proxies=None, *, epoch=None, check=True):
        """Return the Proxy-Anchor loss of a batch; arguments as ProxyLoss.forward."""
        proxies = self.proxies if proxies is None else proxies
        labels = self._check(emb, labels, proxies, check)  # (B,) int64
        cos = self.logits(in_proxies_dtype(emb, proxies), proxies)  # (B, C')
        # (B, C') positives; F.one_hot would read the labels' range from the device (a sync on CUDA) every call.
        pos = labels[:, None] == torch.arange(cos.shape[1], device=labels.device)
        # log(1 + sum exp) as a logsumexp with a zero row: finite gradients for a proxy with no positive.
        one = cos.new_zeros(1, cos.shape[1])  # (1, C')
        pos_exp = torch.where(pos, -self.alpha * (cos - self.margin), -math.inf)  # (B, C')
        neg_exp = torch.where(pos, -math.inf, self.alpha * (cos + self.margin))
        pos_term = torch.logsumexp(torch.cat([one, pos_exp]), dim=0)  # (C',)
        neg_term = torch.logsumexp(torch.cat([one, neg_exp]), dim=0)
        with_pos = pos.any(dim=0).sum()  # |P+| >= 1 (the batch has a row); a tensor: no device sync
        return pos_term.sum() / with_pos + neg_term.sum() / cos.shape[1]

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, alpha={self.alpha}, "
                f"margin={self.margin}, normalize_embeddings={self.normalize_embeddings}")


class SoftTriple(ProxyLoss):
    """SoftTriple (Qian et al. ICCV 2019): K centres per class, a class's similarity a softmax-weighted mean of them.

        S_c(x) = sum_k softmax_k(cos(x, w_ck) / gamma) cos(x, w_ck),   loss = CE(la * (S(x) - margin 1[c = y]))

    proxies (C*K, D), class c owning rows c*K .. c*K+K-1; `similarity` returns la * S (B, C'), the margin is
    `target_logit`. Still one logit per (row, class), cross-entropy on top: decomposable, and MemVir's k-th virtual
    class block is the k-th past step's C*K centres (labels shifted by k*C classes). The paper's regulariser over
    centres of a class (tau) is not included, as in pytorch-metric-learning's SoftTripleLoss.
    Initialisation as the official code (kaiming_uniform_(a=sqrt(5)) of its (D, C*K) weight): uniform in
    (-1/sqrt(C*K), 1/sqrt(C*K)).
    """

    name = "Soft_Triple"
    # PML's fc (D, C*K) is viewed (B, C, K), so its column c*K + k is our row c*K + k; PML keeps 1 / gamma
    pml = PMLCounterpart("SoftTripleLoss", "fc", True,
                         lambda h: {"centers_per_class": h["centers_per_class"], "la": h["scale"], "gamma": h["gamma"],
                                    "margin": h["margin"]},
                         lambda p, norm: {"num_classes": p.num_classes, "embedding_size": p.fc.shape[0],
                                          "centers_per_class": p.centers_per_class, "la": p.la,
                                          "gamma": 1.0 / p.gamma, "margin": p.margin})
    scale_arg = "la"

    def __init__(self, num_classes, embedding_size, centers_per_class=10, la=20.0, gamma=0.1, margin=0.01,
                 normalize_embeddings=True):
        if isinstance(centers_per_class, bool) or int(centers_per_class) != centers_per_class or centers_per_class < 1:
            raise ValueError(f"Soft_Triple centers_per_class: expected a positive integer, got {centers_per_class!r}")
        if isinstance(gamma, bool) or not float(gamma) >= 1 / LOGIT_LIMIT:  # cos / gamma must stay finite
            raise ValueError(f"Soft_Triple gamma: expected a positive number of at least {1 / LOGIT_LIMIT:.3g}, got "
                             f"{gamma!r}")
        super().__init__(num_classes, embedding_size, la, normalize_embeddings, proxies_per_class=centers_per_class)
        self.la, self.gamma = self.scale, float(gamma)
        self.margin = check_margin(margin, "Soft_Triple", scale=self.scale)
        bound = 1.0 / math.sqrt(self.proxies.shape[0])
        nn.init.uniform_(self.proxies, -bound, bound)

    def embed_proxies(self, p):
        return F.normalize(p, dim=1)

    def similarity(self, x, p):
        K = self.proxies_per_class
        cos = (x @ p.T).view(x.shape[0], -1, K)  # (B, C', K) against every centre
        weights = torch.softmax(cos / self.gamma, dim=2)  # (B, C', K)
        return self.la * (weights * cos).sum(dim=2)  # (B, C')

    def target_logit(self, z):
        return z - self.la * self.margin

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"centers_per_class={self.proxies_per_class}, la={self.la}, gamma={self.gamma}, "
                f"margin={self.margin}, normalize_embeddings={self.normalize_embeddings}")
