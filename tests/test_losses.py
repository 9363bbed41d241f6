"""Proxy losses against formulas written out here, element by element."""
import math

import pytest
import torch
import torch.nn.functional as F

from memvir.losses import NormSoftmax, ProxyNCA, build_loss, canonical_loss_name, check_batch, loss_class


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


@pytest.mark.parametrize("name", ["triplet", "", "softmax", None])
def test_canonical_loss_name_unknown(name):
    with pytest.raises(ValueError, match=r"loss: unknown name .*Norm_SoftMax \(NormSoftmax\), Proxy_NCA \(ProxyNCA\)"):
        canonical_loss_name(name)
