"""Proxy losses against formulas written out here, element by element."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from memvir.losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, Softmax, SoftTriple, check_batch
from memvir.registry import build_loss, canonical_loss_name, default_scale, loss_class


def reference_loss(kind, emb, proxies, labels, scale):
    """The loss written as in the paper: loop over rows, explicit softmax."""
    total = 0.0
    for x, y in zip(emb.double(), labels):
        x = x / x.norm()
        scores = []
        for p in proxies.double():
            p = p / p.norm()
            if kind == "normsoftmax":
                scores.append(scale * float(x @ p))
            else:  # Proxy-NCA: -scale * squared distance of unit vectors
                scores.append(-scale * float(((x - p) ** 2).sum()))
        m = max(scores)
        log_z = m + math.log(sum(math.exp(s - m) for s in scores))
        total += log_z - scores[int(y)]
    return total / len(labels)


@pytest.mark.parametrize("cls,kind,scale", [(NormSoftmax, "normsoftmax", 23.0), (ProxyNCA, "proxynca", 12.0),
                                            (NormSoftmax, "normsoftmax", 3.0), (ProxyNCA, "proxynca", 1.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_formula(cls, kind, scale, seed):
    g = torch.Generator().manual_seed(seed)
    C, D, B = 7, 5, 11
    loss = cls(C, D, scale=scale)
    emb = torch.randn(B, D, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    got = float(loss(emb, labels).detach())
    assert got == pytest.approx(reference_loss(kind, emb, loss.proxies.detach(), labels, scale), rel=1e-5)


@pytest.mark.parametrize("cls", [NormSoftmax, ProxyNCA])
def test_normalising_again_changes_nothing(cls):
    torch.manual_seed(0)
    loss = cls(10, 8)
    emb = torch.randn(16, 8)
    labels = torch.randint(0, 10, (16,))
    unit = emb / emb.norm(dim=1, keepdim=True)
    assert float(loss(unit, labels).detach()) == pytest.approx(float(loss(emb * 3.7, labels).detach()), rel=1e-6)


def test_initialisation_as_official_code():
    torch.manual_seed(0)
    C, D = 98, 512
    ns = NormSoftmax(C, D).proxies.detach()
    bound = 1 / math.sqrt(C)
    assert ns.shape == (C, D) and float(ns.abs().max()) <= bound
    assert float(ns.abs().max()) > 0.95 * bound  # really spans the interval
    # Uniform(-b, b) has std b / sqrt(3).
    assert float(ns.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    pn = ProxyNCA(C, D).proxies.detach()
    assert float(pn.mean()) == pytest.approx(0.0, abs=0.003)
    assert float(pn.std()) == pytest.approx(math.sqrt(2 / D), rel=0.02)


def test_proxynca_is_normsoftmax_at_twice_the_scale():
    """With unit vectors ||x - p||^2 = 2 - 2cos, a constant shift: Proxy-NCA(s) == Norm-SoftMax(2s)."""
    torch.manual_seed(0)
    pn, ns = ProxyNCA(9, 6, scale=12.0), NormSoftmax(9, 6, scale=24.0)
    ns.proxies.data.copy_(pn.proxies.data)
    emb, labels = torch.randn(20, 6), torch.randint(0, 9, (20,))
    assert float(pn(emb, labels).detach()) == pytest.approx(float(ns(emb, labels).detach()), rel=1e-5)


def test_gradients_reach_embeddings_and_proxies():
    loss = NormSoftmax(4, 3)
    emb = torch.randn(5, 3, requires_grad=True)
    loss(emb, torch.tensor([0, 1, 2, 3, 0])).backward()
    assert emb.grad is not None and loss.proxies.grad is not None
    assert float(loss.proxies.grad.abs().sum()) > 0


def test_explicit_proxies_argument():
    """MemVir hands the loss a longer proxy list; labels may then exceed C."""
    loss = NormSoftmax(3, 4)
    extra = torch.randn(6, 4)
    emb = torch.randn(2, 4)
    labels = torch.tensor([4, 5])
    proxies = torch.cat([loss.proxies.detach(), extra])
    expected = reference_loss("normsoftmax", emb, proxies, labels, 23.0)
    assert float(loss(emb, labels, proxies).detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name,cls", [("Norm_SoftMax", NormSoftmax), ("NormSoftmax", NormSoftmax),
                                      ("norm_softmax", NormSoftmax), ("Proxy_NCA", ProxyNCA),
                                      ("ProxyNCA", ProxyNCA), ("proxy-nca", ProxyNCA)])
def test_build_loss_names(name, cls):
    loss = build_loss(name, 5, 4)
    assert type(loss) is cls and loss.proxies.shape == (5, 4)
    assert build_loss(name, 5, 4, scale=2.0).scale == 2.0


def test_build_loss_unknown_lists_known():
    with pytest.raises(ValueError, match="Norm_SoftMax.*Proxy_NCA"):
        build_loss("triplet", 5, 4)


@pytest.mark.parametrize("emb,labels,match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), "2-D"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), "columns"),
    (torch.randn(4, 3), torch.zeros(3, dtype=torch.long), "length B=4"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), r"\[0, 5\)"),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 3]), r"\[0, 5\)"),
    (torch.randn(4, 3), torch.zeros(4), "integer"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.float16), "integer"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.bool), "integer"),
    (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
])
def test_bad_input(emb, labels, match):
    with pytest.raises(ValueError, match=match):
        NormSoftmax(5, 3)(emb, labels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("values", ["read", "assert"])
def test_check_batch_finiteness_every_float_dtype(dtype, values):
    """One non-finite entry among finite ones is refused in every float dtype, whichever way the values are
    checked; the largest finite values of the dtype are not (no overflow inside the check); labels far beyond
    float32's exact integers are named exactly."""
    error = ValueError if values == "read" else RuntimeError
    big = torch.finfo(dtype).max
    for bad in (float("nan"), float("inf"), -float("inf")):
        emb = torch.ones(6, 3, dtype=dtype)
        emb[4, 1] = bad
        with pytest.raises(error, match="finite"):
            check_batch(emb, torch.zeros(6, dtype=torch.long), 5, 3, values)
    assert check_batch(torch.full((6, 3), big, dtype=dtype), torch.arange(6) % 5, 5, 3, values).tolist() == \
        [0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match=r"got min 0, max 16777217$"):
        check_batch(torch.ones(2, 3, dtype=dtype), torch.tensor([0, 2 ** 24 + 1]), 5, 3)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0, embedding_size=3), dict(num_classes=3, embedding_size=0),
                                    dict(num_classes=3, embedding_size=3, scale=-1.0),
                                    dict(num_classes=3, embedding_size=3, normalize_embeddings="no")])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        NormSoftmax(**kwargs)


# ---------------------------------------------------------------- the official flags: --train_with_l2norm, -C

def official_loss(kind, emb, proxies, labels, scale):
    """The formulas of the official loss/softmax_variants.py, written out: their weight (D, C) is our proxies.T.

    Neither official loss normalises its input; each normalises the weight's columns. `emb` is scored as given
    (the model's l2 norm, `--train_with_l2norm`, is the caller's business).
    """
    w = proxies.T / proxies.T.norm(dim=0, keepdim=True)  # (D, C) unit columns
    if kind == "normsoftmax":
        return F.cross_entropy(scale * (emb @ w), labels)
    dist = scale * torch.cdist(emb, w.T) ** 2  # (B, C) scaled squared distances
    return -(F.one_hot(labels, w.shape[1]) * F.log_softmax(-dist, dim=1)).sum(dim=1).mean()


@pytest.mark.parametrize("cls,kind", [(NormSoftmax, "normsoftmax"), (ProxyNCA, "proxynca")])
@pytest.mark.parametrize("l2norm", [True, False])
def test_train_with_l2norm_as_official(cls, kind, l2norm):
    """--train_with_l2norm=X: the official head normalises iff X and the official loss scores what it gets; ours
    gets the raw head output and normalises iff normalize_embeddings=X. Same value and gradients."""
    g = torch.Generator().manual_seed(3)
    C, D, B, scale = 7, 5, 11, 1.7
    loss = cls(C, D, scale=scale, normalize_embeddings=l2norm).double()
    raw = torch.randn(B, D, generator=g, dtype=torch.float64) * torch.empty(B, 1).uniform_(0.2, 5.0, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    emb = raw.clone().requires_grad_()
    ours = loss(emb, labels)
    ours.backward()

    emb_ref = raw.clone().requires_grad_()
    proxies_ref = loss.proxies.detach().clone().requires_grad_()
    head_output = F.normalize(emb_ref, dim=1) if l2norm else emb_ref  # the official net/embedding.py
    theirs = official_loss(kind, head_output, proxies_ref, labels, scale)
    theirs.backward()
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-10)
    torch.testing.assert_close(emb.grad, emb_ref.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.proxies.grad, proxies_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [NormSoftmax, ProxyNCA])
def test_embed_and_embed_proxies(cls):
    """What MemVir stores: embeddings as the loss sees them (raw without the l2 norm), proxies always unit rows."""
    x, p = torch.randn(4, 3) * 7, torch.randn(5, 3) * 7
    raw = cls(5, 3, normalize_embeddings=False)
    assert raw.embed(x) is x
    unit = cls(5, 3)
    torch.testing.assert_close(unit.embed(x), x / x.norm(dim=1, keepdim=True))
    for loss in (raw, unit):
        torch.testing.assert_close(loss.embed_proxies(p), p / p.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("cls,kind,factor", [(NormSoftmax, "normsoftmax", 1.0), (ProxyNCA, "proxynca", 2.0)])
def test_extra_proxies_are_only_negatives(cls, kind, factor):
    """-C above the classes present (official): proxies 3..5 never a target, only in the denominators.

    By hand, with x_i unit rows, P_ic the softmax of row i at class c and L the mean loss: for a class c that is
    never a label only the log-sum-exp terms depend on p_c, through logit_ic = s cos(x_i, p_c) (Norm-SoftMax) or
    -s ||x_i - p_c/|p_c| ||^2 = 2s cos(x_i, p_c) - 2s (Proxy-NCA), so
        dL/dp_c = (factor * s / (B |p_c|)) (I - u u^T) sum_i P_ic x_i,   u = p_c/|p_c|, factor 1 or 2:
    the gradient lies along the embeddings that score p_c, and a descent step moves p_c away from them.
    """
    torch.manual_seed(0)
    C, D, B, s = 6, 4, 10, 3.0
    loss = cls(C, D, scale=s).double()
    emb = torch.randn(B, D, dtype=torch.float64)
    labels = torch.arange(B) % 3  # classes 0, 1, 2 only
    value = loss(emb, labels)
    value.backward()
    assert float(value.detach()) == pytest.approx(reference_loss(kind, emb, loss.proxies.detach(), labels, s),
                                                  rel=1e-10)

    x = emb / emb.norm(dim=1, keepdim=True)  # (B, D)
    p = loss.proxies.detach()  # (C, D)
    u = p / p.norm(dim=1, keepdim=True)
    P = torch.softmax(factor * s * x @ u.T, dim=1)  # (B, C); Proxy-NCA's constant -2s shift cancels
    for c in range(3, C):
        pull = (P[:, c:c + 1] * x).sum(dim=0)  # (D,) sum_i P_ic x_i
        tangent = pull - (pull @ u[c]) * u[c]
        expected = factor * s / (B * p[c].norm()) * tangent
        torch.testing.assert_close(loss.proxies.grad[c], expected, rtol=1e-9, atol=1e-12)
        # One small descent step on p_c lowers its (softmax-weighted) cosine to the batch: pushed away.
        moved = p[c] - 0.01 * loss.proxies.grad[c]
        before = P[:, c] @ (x @ u[c])
        after = P[:, c] @ (x @ (moved / moved.norm()))
        assert float(after) < float(before)


def test_extra_proxies_accepted_for_labels_below_c():
    """C larger than the label range is no error; labels at or above C still are."""
    loss = build_loss("Norm_SoftMax", num_classes=10, embedding_size=3)
    assert torch.isfinite(loss(torch.randn(4, 3), torch.tensor([0, 1, 1, 0])))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        loss(torch.randn(2, 3), torch.tensor([0, 10]))


# ---------------------------------------------------------------- called as MemVir is

@pytest.mark.parametrize("cls", [NormSoftmax, ProxyNCA])
def test_called_as_memvir(cls):
    """The training loop calls `criterion(emb, labels, epoch=e)` and reads the same counters as MemVir's."""
    torch.manual_seed(0)
    C, D, B = 5, 3, 8
    loss = cls(C, D)
    assert (loss.num_taken, loss.num_classes_in_use, loss.num_embeddings_in_use) == (0, C, 0)
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    assert torch.equal(loss(emb, labels, epoch=4), loss(emb, labels))
    assert (loss.num_taken, loss.num_classes_in_use, loss.num_embeddings_in_use) == (0, C, B)
    loss(emb[:3], labels[:3], torch.randn(9, D))  # MemVir's plain path hands more proxies
    assert (loss.num_classes_in_use, loss.num_embeddings_in_use) == (9, 3)
    with pytest.raises(TypeError):  # epoch is keyword-only: it can never be taken for the proxies
        loss(emb, labels, None, 4)


@pytest.mark.parametrize("cls", [NormSoftmax, ProxyNCA, ProxyAnchor, SoftTriple])
def test_check_false_reads_nothing_and_still_checks_shapes(cls):
    """check=False (MemVir's plain path, whose concatenation is known good): the same value, no device read, and
    a wrong shape is still the one-line error."""
    from device_reads import device_reads

    torch.manual_seed(0)
    loss = cls(5, 3)
    emb, labels = torch.randn(8, 3), torch.randint(0, 5, (8,))
    with device_reads() as seen:
        value = loss(emb, labels, check=False)
    assert seen == [] and torch.equal(value, loss(emb, labels))
    with device_reads() as seen:
        loss(emb, labels)
    assert [kind for kind, _, _ in seen] == ["read"]  # the default checks the values: one read
    with pytest.raises(ValueError, match="expected 3 columns"):
        loss(torch.randn(8, 4), labels, check=False)


# ---------------------------------------------------------------- label dtypes

@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16])
@pytest.mark.parametrize("cls", [NormSoftmax, ProxyNCA])
def test_any_integer_label_dtype(cls, dtype):
    """int32 (and other integer) labels give exactly the int64 value and gradients."""
    torch.manual_seed(0)
    loss = cls(6, 4)
    emb = torch.randn(9, 4)
    labels = torch.randint(0, 6, (9,))
    grads = []
    for y in (labels, labels.to(dtype)):
        e = emb.clone().requires_grad_()
        loss.proxies.grad = None
        value = loss(e, y)
        value.backward()
        grads.append((value.detach(), e.grad, loss.proxies.grad.clone()))
    for want, got in zip(*grads):
        assert torch.equal(want, got)
    converted = check_batch(emb, labels.to(dtype), 6, 4)
    assert converted.dtype == torch.int64 and torch.equal(converted, labels)


# ---------------------------------------------------------------- one owner for loss names

@pytest.mark.parametrize("name,canonical", [("Norm_SoftMax", "Norm_SoftMax"), ("normsoftmax", "Norm_SoftMax"),
                                            ("NORM-SOFTMAX", "Norm_SoftMax"), ("Proxy_NCA", "Proxy_NCA"),
                                            ("ProxyNCA", "Proxy_NCA"), ("proxy-nca", "Proxy_NCA")])
def test_canonical_loss_name(name, canonical):
    assert canonical_loss_name(name) == canonical
    assert loss_class(name) is {"Norm_SoftMax": NormSoftmax, "Proxy_NCA": ProxyNCA}[canonical]


@pytest.mark.parametrize("name", ["triplet", "", "npair", "soft_max_x", None])
def test_canonical_loss_name_unknown(name):
    with pytest.raises(ValueError, match=r"loss: unknown name .*Norm_SoftMax \(NormSoftmax\), Proxy_NCA \(ProxyNCA\)"):
        canonical_loss_name(name)


# ================================================================ the other losses of the paper's Table 4 (issue 12)
# Each against two oracles: its formula written out here (loops over rows and classes, Python floats), and
# pytorch-metric-learning's implementation with the same weights (value and gradients, float64).

def unit(v):
    return v / v.norm()


def softmax_formula(emb, proxies, labels, scale, normalize, margin=None):
    """Cross-entropy written out: loop over rows; margin(kind, cos) maps the target's score, None: no margin."""
    total = 0.0
    for x, y in zip(emb.double(), labels):
        x = unit(x) if normalize else x
        scores = []
        for c, w in enumerate(proxies.double()):
            z = float(x @ w)
            scores.append(scale * (margin(z) if (margin is not None and c == int(y)) else z))
        m = max(scores)
        total += m + math.log(sum(math.exp(v - m) for v in scores)) - scores[int(y)]
    return total / len(labels)


def cosface_formula(emb, proxies, labels, scale, margin, normalize=True):
    return softmax_formula(emb, torch.stack([unit(p) for p in proxies.double()]), labels, scale, normalize,
                           margin=lambda cos: cos - margin)


def arcface_formula(emb, proxies, labels, scale, margin):
    def target(cos):  # the ArcFace paper's cos(theta + m), and past theta = pi - m the monotone fallback
        theta = math.acos(cos)
        return math.cos(theta + margin) if theta <= math.pi - margin else cos - margin * math.sin(margin)
    return softmax_formula(emb, torch.stack([unit(p) for p in proxies.double()]), labels, scale, True, target)


def proxy_anchor_formula(emb, proxies, labels, margin, alpha):
    """Kim et al. 2020, eq. 4: loops over proxies and rows."""
    emb, proxies = emb.double(), proxies.double()
    pos_total, neg_total, with_pos = 0.0, 0.0, 0
    for c, p in enumerate(proxies):
        pos_sum = neg_sum = 0.0
        for x, y in zip(emb, labels):
            cos = float(unit(x) @ unit(p))
            if int(y) == c:
                pos_sum += math.exp(-alpha * (cos - margin))
            else:
                neg_sum += math.exp(alpha * (cos + margin))
        with_pos += int(any(int(y) == c for y in labels))
        pos_total += math.log(1 + pos_sum)
        neg_total += math.log(1 + neg_sum)
    return pos_total / with_pos + neg_total / len(proxies)


def soft_triple_formula(emb, proxies, labels, K, la, gamma, margin):
    """Qian et al. 2019, eq. 8-10 (no centre regulariser): loops over rows, classes, centres."""
    total = 0.0
    C = proxies.shape[0] // K
    for x, y in zip(emb.double(), labels):
        x = unit(x)
        scores = []
        for c in range(C):
            cos = [float(x @ unit(proxies[c * K + k].double())) for k in range(K)]
            weights = [math.exp(v / gamma) for v in cos]
            s = sum(w * v for w, v in zip(weights, cos)) / sum(weights)
            scores.append(la * (s - (margin if c == int(y) else 0.0)))
        m = max(scores)
        total += m + math.log(sum(math.exp(v - m) for v in scores)) - scores[int(y)]
    return total / len(labels)


def batch(seed, B=13, C=6, D=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=dtype) * torch.empty(B, 1, dtype=dtype).uniform_(0.3, 3.0, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    return emb, labels


# (our loss, its formula, PML's loss and where PML keeps the weights in which layout)
def _pml(name, **kwargs):
    import pytorch_metric_learning.losses as L
    return getattr(L, name)(**kwargs).double()


CASES = {
    "softmax": (lambda C, D: Softmax(C, D, scale=1.0, normalize_embeddings=False),
                lambda loss, e, p, y: softmax_formula(e, p, y, 1.0, False),
                # L-Softmax with margin 1 is the plain softmax: cos(1 theta) |w| |x| = <x, w>
                lambda C, D: _pml("LargeMarginSoftmaxLoss", num_classes=C, embedding_size=D, margin=1, scale=1),
                "W", "DC"),
    "cosface": (lambda C, D: CosFace(C, D, scale=9.0, margin=0.35),
                lambda loss, e, p, y: cosface_formula(e, p, y, 9.0, 0.35),
                lambda C, D: _pml("CosFaceLoss", num_classes=C, embedding_size=D, margin=0.35, scale=9.0),
                "W", "DC"),
    "arcface": (lambda C, D: ArcFace(C, D, scale=7.0, margin=0.5),
                lambda loss, e, p, y: arcface_formula(e, p, y, 7.0, 0.5),
                lambda C, D: _pml("ArcFaceLoss", num_classes=C, embedding_size=D, margin=math.degrees(0.5),
                                  scale=7.0),  # PML's margin is in degrees
                "W", "DC"),
    "proxyanchor": (lambda C, D: ProxyAnchor(C, D, margin=0.1, alpha=8.0),
                    lambda loss, e, p, y: proxy_anchor_formula(e, p, y, 0.1, 8.0),
                    lambda C, D: _pml("ProxyAnchorLoss", num_classes=C, embedding_size=D, margin=0.1, alpha=8.0),
                    "proxies", "CD"),
    "softtriple": (lambda C, D: SoftTriple(C, D, centers_per_class=3, la=6.0, gamma=0.1, margin=0.01),
                   lambda loss, e, p, y: soft_triple_formula(e, p, y, 3, 6.0, 0.1, 0.01),
                   # PML's fc (D, C*K) is viewed (B, C, K): column c*K + k is class c's centre k, our row c*K + k
                   lambda C, D: _pml("SoftTripleLoss", num_classes=C, embedding_size=D, centers_per_class=3,
                                     la=6.0, gamma=0.1, margin=0.01),
                   "fc", "DC"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_losses_match_formula(case, seed):
    make, formula, _, _, _ = CASES[case]
    C, D = 6, 5
    torch.manual_seed(seed)
    loss = make(C, D).double()
    emb, labels = batch(seed, C=C, D=D)
    got = float(loss(emb, labels).detach())
    assert got == pytest.approx(formula(loss, emb, loss.proxies.detach(), labels), rel=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_new_losses_match_pytorch_metric_learning(case, seed):
    """Same weights in PML's layout: same value, same gradients to the embeddings and to the weights."""
    make, _, make_pml, attr, layout = CASES[case]
    C, D = 6, 5
    torch.manual_seed(seed)
    ours, theirs = make(C, D).double(), make_pml(C, D)
    weight = getattr(theirs, attr)
    with torch.no_grad():
        weight.copy_(ours.proxies.T if layout == "DC" else ours.proxies)
    emb, labels = batch(seed + 10, C=C, D=D)
    e_ours, e_theirs = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    v_ours, v_theirs = ours(e_ours, labels), theirs(e_theirs, labels)
    v_ours.backward()
    v_theirs.backward()
    assert float(v_ours.detach()) == pytest.approx(float(v_theirs.detach()), rel=1e-10)
    torch.testing.assert_close(e_ours.grad, e_theirs.grad, rtol=1e-8, atol=1e-12)
    grad = getattr(theirs, attr).grad
    torch.testing.assert_close(ours.proxies.grad, grad.T if layout == "DC" else grad, rtol=1e-8, atol=1e-12)


def test_softmax_is_a_linear_classifier():
    """A third look at Softmax: nn.Linear without bias and nn.CrossEntropyLoss; build_loss passes the l2 flag."""
    torch.manual_seed(0)
    loss = Softmax(6, 5).double()
    assert loss.normalize_embeddings is False  # the textbook classifier
    linear = torch.nn.Linear(5, 6, bias=False).double()
    linear.weight.data.copy_(loss.proxies.data)
    emb, labels = batch(3)
    expected = torch.nn.CrossEntropyLoss()(linear(emb), labels).detach()
    assert float(loss(emb, labels).detach()) == pytest.approx(float(expected), rel=1e-12)
    unit_loss = build_loss("SoftMax_vanilla", 6, 5).double()  # normalize_embeddings=True as the flag's default
    unit_loss.proxies.data.copy_(loss.proxies.data)
    expected = loss(F.normalize(emb, dim=1), labels).detach()
    assert float(unit_loss(emb, labels).detach()) == pytest.approx(float(expected), rel=1e-12)


def test_arcface_threshold_branch():
    """Targets past theta = pi - m take the fallback cos - m sin m: both oracles on a batch with both branches."""
    torch.manual_seed(0)
    C, D, m = 4, 5, 0.5
    loss = ArcFace(C, D, scale=7.0, margin=m).double()
    p = F.normalize(loss.proxies.detach(), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    emb = torch.randn(6, D, dtype=torch.float64) * 0.05
    emb[:3] -= p[labels[:3]]  # nearly opposite to their proxies: theta > pi - m
    emb[3:] += p[labels[3:]]  # near their proxies
    cos = (F.normalize(emb, dim=1) * p[labels]).sum(dim=1)
    assert bool((torch.acos(cos[:3]) > math.pi - m).all()) and bool((torch.acos(cos[3:]) < math.pi - m).all())
    value = float(loss(emb, labels).detach())
    assert value == pytest.approx(arcface_formula(emb, loss.proxies.detach(), labels, 7.0, m), rel=1e-10)
    pml = _pml("ArcFaceLoss", num_classes=C, embedding_size=D, margin=math.degrees(m), scale=7.0)
    pml.W.data.copy_(loss.proxies.detach().T)
    assert value == pytest.approx(float(pml(emb, labels).detach()), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_arcface_finite_gradients_at_cos_plus_minus_one(dtype, sign):
    """An embedding exactly on its proxy (or opposite): acos' slope is infinite there; the clamp keeps it finite."""
    loss = ArcFace(3, 4, scale=64.0, margin=0.5).to(dtype)
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(3, 4, dtype=dtype))
    emb = (sign * torch.eye(3, 4, dtype=dtype)).requires_grad_()  # cos = +-1 exactly, in any float
    value = loss(emb, torch.arange(3))
    value.backward()
    assert bool(torch.isfinite(value.detach())) and bool(torch.isfinite(emb.grad).all())
    assert bool(torch.isfinite(loss.proxies.grad).all())
    # The value is the formula's, up to the clamp (scale * sqrt(2 eps) at most).
    expected = arcface_formula(emb.detach().double(), loss.proxies.detach().double(), torch.arange(3), 64.0, 0.5)
    assert float(value.detach()) == pytest.approx(expected, abs=64.0 * math.sqrt(2 * torch.finfo(dtype).eps))


def test_proxy_anchor_with_longer_proxy_list():
    """MemVir's plain path hands Proxy-Anchor (1+K)C proxies: |P+| counts proxies with a positive, C' all of them."""
    torch.manual_seed(0)
    loss = ProxyAnchor(3, 4).double()
    extra = torch.randn(6, 4, dtype=torch.float64)
    proxies = torch.cat([loss.proxies.detach(), extra])
    emb, labels = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 4, 4, 8, 1])
    expected = proxy_anchor_formula(emb, proxies, labels, 0.1, 32.0)
    assert float(loss(emb, labels, proxies).detach()) == pytest.approx(expected, rel=1e-10)
    assert (loss.num_classes_in_use, loss.num_embeddings_in_use) == (9, 5)


def test_soft_triple_layout_and_longer_proxy_list():
    """(C*K, D) proxies; a longer list of whole classes (K rows each) shifts labels by classes, not rows."""
    torch.manual_seed(0)
    C, K, D = 3, 4, 5
    loss = SoftTriple(C, D, centers_per_class=K).double()
    assert loss.proxies.shape == (C * K, D) and loss.num_classes == C
    extra = torch.randn(2 * C * K, D, dtype=torch.float64)  # two more steps of C classes
    proxies = torch.cat([loss.proxies.detach(), extra])
    emb, labels = torch.randn(6, D, dtype=torch.float64), torch.tensor([0, 3, 5, 8, 2, 7])
    expected = soft_triple_formula(emb, proxies, labels, K, 20.0, 0.1, 0.01)
    assert float(loss(emb, labels, proxies).detach()) == pytest.approx(expected, rel=1e-10)
    assert loss.num_classes_in_use == 3 * C
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 9\)"):
        loss(emb, torch.tensor([0, 3, 5, 9, 2, 7]), proxies)
    with pytest.raises(ValueError, match=r"proxies: expected \(4\*C'"):
        loss(emb, labels, proxies[:-1])


@pytest.mark.parametrize("cls", [Softmax, CosFace, ArcFace, ProxyAnchor, SoftTriple])
def test_new_losses_called_as_memvir(cls):
    torch.manual_seed(0)
    loss = cls(5, 3)
    assert (loss.num_taken, loss.num_classes_in_use, loss.num_embeddings_in_use) == (0, 5, 0)
    emb, labels = torch.randn(8, 3), torch.randint(0, 5, (8,))
    value = loss(emb, labels, epoch=2)
    assert torch.equal(value, loss(emb, labels)) and bool(torch.isfinite(value.detach()))
    assert (loss.num_classes_in_use, loss.num_embeddings_in_use) == (5, 8)
    with pytest.raises(TypeError):
        loss(emb, labels, None, 4)


# The official code's spelling of each loss (its --loss choices), written out here, not read from the classes.
@pytest.mark.parametrize("name,cls,official", [
    ("SoftMax_vanilla", Softmax, "SoftMax_vanilla"), ("Softmax", Softmax, "SoftMax_vanilla"),
    ("softmax", Softmax, "SoftMax_vanilla"), ("CosFace", CosFace, "CosFace"), ("cosface", CosFace, "CosFace"),
    ("ArcFace", ArcFace, "ArcFace"), ("arcface", ArcFace, "ArcFace"), ("Proxy_Anchor", ProxyAnchor, "Proxy_Anchor"),
    ("ProxyAnchor", ProxyAnchor, "Proxy_Anchor"), ("proxy-anchor", ProxyAnchor, "Proxy_Anchor"),
    ("Soft_Triple", SoftTriple, "Soft_Triple"), ("SoftTriple", SoftTriple, "Soft_Triple")])
def test_new_loss_names(name, cls, official):
    assert loss_class(name) is cls
    assert canonical_loss_name(name) == official
    assert type(build_loss(name, 5, 4)) is cls


@pytest.mark.parametrize("name,arg,default", [("Norm_SoftMax", "scale", 23.0), ("Proxy_NCA", "scale", 12.0),
                                              ("SoftMax_vanilla", "scale", 1.0), ("CosFace", "scale", 64.0),
                                              ("ArcFace", "scale", 64.0), ("Proxy_Anchor", "alpha", 32.0),
                                              ("Soft_Triple", "la", 20.0)])
def test_build_loss_scale_and_hyper_parameters(name, arg, default):
    """`scale` (the --scale flag) sets each loss's scale argument: Proxy-Anchor's alpha, SoftTriple's la."""
    assert default_scale(name) == default
    assert build_loss(name, 5, 4).scale == default
    loss = build_loss(name, 5, 4, scale=3.0)
    assert loss.scale == 3.0 and getattr(loss, arg) == 3.0
    if arg != "scale":  # alpha or la given twice, under two names
        with pytest.raises(ValueError, match=f"scale and {arg} both given"):
            build_loss(name, 5, 4, scale=3.0, **{arg: 2.0})


def test_build_loss_hyper_parameters():
    assert build_loss("arcface", 5, 4, margin=0.3).margin == 0.3
    loss = build_loss("Soft_Triple", 5, 4, centers_per_class=2, gamma=0.2, margin=0.05)
    assert loss.proxies.shape == (10, 4) and (loss.gamma, loss.margin) == (0.2, 0.05)
    assert build_loss("Proxy_Anchor", 5, 4, margin=0.2).margin == 0.2
    with pytest.raises(ValueError, match=r"loss CosFace: unknown hyper-parameters \['gamma'\]; expected some of "
                                         r"\['scale', 'margin'\]"):
        build_loss("CosFace", 5, 4, gamma=0.1)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        build_loss("Norm_SoftMax", 5, 4, margin=0.1)


@pytest.mark.parametrize("make,match", [
    (lambda: CosFace(3, 4, margin=-0.1), "CosFace margin"),
    (lambda: ArcFace(3, 4, margin=4.0), r"ArcFace margin: expected a number in \[0, 3.14159\)"),
    (lambda: ArcFace(3, 4, normalize_embeddings=False), "ArcFace normalize_embeddings: expected True"),
    (lambda: ProxyAnchor(3, 4, alpha=0.0), "scale"),
    (lambda: SoftTriple(3, 4, centers_per_class=0), "centers_per_class"),
    (lambda: SoftTriple(3, 4, gamma=0.0), "gamma"),
])
def test_new_losses_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [Softmax, CosFace, ArcFace, ProxyAnchor, SoftTriple])
def test_new_losses_embed_and_embed_proxies(cls):
    """What MemVir stores: embeddings through `embed`, proxies through `embed_proxies` (unit rows but Softmax's)."""
    x, p = torch.randn(4, 3) * 7, torch.randn(10, 3) * 7
    loss = cls(5, 3)
    torch.testing.assert_close(loss.embed(x), x if cls is Softmax else F.normalize(x, dim=1))
    torch.testing.assert_close(loss.embed_proxies(p), p if cls is Softmax else F.normalize(p, dim=1))


# ---------------------------------------------------------------- check_batch reads the device once (issue 14)

@pytest.mark.parametrize("emb,labels,message", [
    (torch.randn(4, 3), torch.tensor([0, 4, 2, 1]), None),
    (torch.randn(4, 3), torch.tensor([0, 7, 2, 1]), "labels: expected values in [0, 5), got min 0, max 7"),
    (torch.randn(4, 3), torch.tensor([3, -2, 2, 9], dtype=torch.int8),
     "labels: expected values in [0, 5), got min -2, max 9"),
    (torch.tensor([[0.0, 1.0, float("inf")]] * 4), torch.tensor([0, 1, 2, 3], dtype=torch.uint8),
     "embeddings: expected finite values, got NaN or inf"),
    # Both wrong: the labels are named first, as before the three reads became one.
    (torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 5]),
     "labels: expected values in [0, 5), got min 0, max 5"),
])
def test_check_batch_reads_the_device_once(emb, labels, message):
    """The label range and finiteness cost one device->host read together; the messages are the one-liners above.
    values=None reads nothing and checks no value (a caller that checks them elsewhere), shapes still; "assert"
    reads nothing either and raises on the device's verdict (a RuntimeError on the CPU)."""
    from device_reads import device_reads

    with device_reads() as seen:
        if message is None:
            out = check_batch(emb, labels, 5, 3)
        else:
            with pytest.raises(ValueError) as error:
                check_batch(emb, labels, 5, 3)
            assert str(error.value) == message
    assert [(kind, where.split()[-1]) for kind, _, where in seen] == [("read", "check_batch")], seen
    if message is None:
        assert out.dtype == torch.int64 and torch.equal(out, labels.long())
    with device_reads() as seen:
        out = check_batch(emb, labels, 5, 3, values=None)
    assert seen == [] and out.dtype == torch.int64 and torch.equal(out, labels.long())
    with pytest.raises(ValueError, match="columns"):
        check_batch(emb, labels, 5, 4, values=None)
    with device_reads() as seen:
        if message is None:
            check_batch(emb, labels, 5, 3, values="assert")
        else:
            with pytest.raises(RuntimeError, match=r"labels: expected values in \[0, 5\) and finite embeddings"):
                check_batch(emb, labels, 5, 3, values="assert")
    assert seen == []


LOSS_NAMES = ["NormSoftmax", "ProxyNCA", "Softmax", "CosFace", "ArcFace", "ProxyAnchor", "SoftTriple"]


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_half_and_double_embeddings_are_scored_in_the_proxies_dtype(name, dtype):
    # A network run in fp16/bf16 without autocast (or in fp64): the same value as its embeddings cast to float32
    # by hand, the gradient back in the network's dtype; alone and under MemVir, whose memory then fills.
    from memvir import MemVir

    torch.manual_seed(0)
    emb = torch.randn(6, 8).to(dtype)
    labels = torch.randint(0, 5, (6,))
    loss = build_loss(name, 5, 8)
    low = emb.clone().requires_grad_()
    value = loss(low, labels)
    value.backward()
    assert torch.equal(value, loss(emb.float(), labels)) and low.grad.dtype == dtype
    for fast in (True, False):
        twins = [MemVir(build_loss(name, 5, 8), 2, 0, fast=fast) for _ in range(2)]
        twins[1].load_state_dict(twins[0].state_dict())
        twins[1].loss.load_state_dict(twins[0].loss.state_dict())
        for step in range(4):
            x = torch.randn(6, 8).to(dtype)
            a, b = twins[0](x.clone().requires_grad_(), labels, 0), twins[1](x.float(), labels, 0)
            assert torch.equal(a, b), (fast, step)
        assert twins[0].num_taken == 2


@pytest.mark.parametrize("kwargs,match", [({"num_classes": True}, "num_classes: expected a positive integer, got True"),
                                          ({"num_classes": 2.7}, "got 2.7"), ({"embedding_size": "8"}, "got '8'"),
                                          ({"scale": float("inf")}, "scale: expected a positive finite number"),
                                          ({"scale": True}, "got True")])
def test_counts_and_scales_of_the_wrong_type_are_refused(kwargs, match):
    args = {"num_classes": 5, "embedding_size": 8, "scale": 23.0, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        NormSoftmax(**args)


# ---- a scale (margin, gamma) whose logits cannot be finite is refused, not a NaN loss (issue 32, finding 9) -----

SCALED = [(NormSoftmax, "scale", {}), (ProxyNCA, "scale", {}), (CosFace, "scale", {}), (ArcFace, "scale", {}),
          (ProxyAnchor, "alpha", {}), (SoftTriple, "la", {"centers_per_class": 2})]


@pytest.mark.parametrize("cls,arg,extra", SCALED)
@pytest.mark.parametrize("value", [1e40, 1e39, 3e38, 1e7])
def test_a_scale_beyond_the_limit_is_refused_naming_it(cls, arg, extra, value):
    with pytest.raises(ValueError, match=rf"^{arg}: expected a positive finite number up to 1e\+06"):
        cls(5, 8, **{arg: value, **extra})


@pytest.mark.parametrize("cls,kwargs,says", [
    (SoftTriple, {"la": 1e5, "margin": 100.0}, "Soft_Triple margin: expected a number in [0, 10)"),
    (CosFace, {"scale": 1e6, "margin": 2.0}, "CosFace margin: expected a number in [0, 1)"),
    (ProxyAnchor, {"alpha": 1e3, "margin": 1e4}, "Proxy_Anchor margin: expected a number in [0, 1000)"),
    (SoftTriple, {"gamma": 1e-45}, "Soft_Triple gamma: expected a positive number of at least 1e-06"),
    (SoftTriple, {"gamma": float("nan")}, "Soft_Triple gamma"),
])
def test_a_margin_or_gamma_that_overflows_the_logits_is_refused(cls, kwargs, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        cls(5, 8, **kwargs)


@pytest.mark.parametrize("cls,arg,extra", SCALED)
def test_at_the_limit_every_loss_and_its_gradient_stay_finite(cls, arg, extra):
    # The largest accepted values together (scale, margin just inside, SoftTriple's smallest gamma): what they make
    # of a batch of 64 must be a number, not inf or NaN (the oracle: finiteness itself).
    margin = {CosFace: 0.999, ProxyAnchor: 0.999, SoftTriple: 0.999, ArcFace: 3.1}.get(cls)
    loss = cls(5, 8, **{arg: 1e6, **extra, **({"margin": margin} if margin else {}),
                        **({"gamma": 1e-6} if cls is SoftTriple else {})})
    emb = torch.randn(64, 8, requires_grad=True)
    value = loss(emb, torch.randint(0, 5, (64,)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and torch.isfinite(loss.proxies.grad).all()


def test_a_loss_declared_in_one_place_is_in_the_registry_the_cli_and_memvir():
    """A toy loss declares its name, an alias and its default scale in its class, nowhere else: the registry, the
    `--loss` help and parser, build_loss, the PML table (it has no counterpart: refused in one line) and MemVir
    all know it."""
    from memvir import registry, resolve
    from memvir.losses import DECLARED, ProxyLoss
    from memvir.memory import MemVir
    from memvir.pml import supported

    class Toy(ProxyLoss):
        name = "Toy_Loss"
        aliases = ("Toy",)

        def __init__(self, num_classes, embedding_size, scale=7.0, normalize_embeddings=True):
            super().__init__(num_classes, embedding_size, scale, normalize_embeddings)
            torch.nn.init.normal_(self.proxies)

        def similarity(self, x, p):
            return self.scale * x @ F.normalize(p, dim=1).T  # (B, C')

    try:
        assert registry.loss_class("toy-loss") is Toy and registry.loss_class("TOY") is Toy
        assert registry.default_scale("toy") == 7.0
        assert "Toy_Loss (Toy)" in " ".join(resolve.build_parser().format_help().split())
        cfg = resolve.config_from_argv(["--loss", "toy", "--dim", "8"])
        assert (cfg.loss, cfg.scale) == ("Toy_Loss", 7.0)
        assert Toy not in supported().values()
        with pytest.raises(ValueError, match="--pml: pytorch-metric-learning has no Toy_Loss loss"):
            registry.build_pml_loss("toy", 5, 8, 7.0)
        torch.manual_seed(0)
        loss = registry.build_loss("Toy", num_classes=5, embedding_size=8)
        criterion = MemVir(loss, num_steps=2, step_gap=0, warmup_epochs=0)
        emb, labels = torch.randn(6, 8), torch.arange(6) % 5
        logits = 7.0 * F.normalize(emb, dim=1) @ F.normalize(loss.proxies, dim=1).T  # the formula, written out
        torch.testing.assert_close(criterion(emb, labels, 0), F.cross_entropy(logits, labels))  # memory empty
        for _ in range(2):
            criterion(torch.randn(6, 8), labels, 0)
        assert (criterion.num_taken, criterion.num_classes_in_use) == (2, 15)  # 2 past steps: 5 + 2 x 5 classes
    finally:
        for key in [k for k, cls in DECLARED.items() if cls is Toy]:
            del DECLARED[key]
    with pytest.raises(ValueError, match="unknown name 'Toy'"):
        registry.loss_class("Toy")
