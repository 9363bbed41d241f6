"""Proxy losses against formulas written out here, element by element."""
import math

import pytest
import torch

from memvir.losses import NormSoftmax, ProxyNCA, build_loss


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
    (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
])
def test_bad_input(emb, labels, match):
    with pytest.raises(ValueError, match=match):
        NormSoftmax(5, 3)(emb, labels)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0, embedding_size=3), dict(num_classes=3, embedding_size=0),
                                    dict(num_classes=3, embedding_size=3, scale=-1.0)])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        NormSoftmax(**kwargs)
