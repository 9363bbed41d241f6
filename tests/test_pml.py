"""MemVir over pytorch-metric-learning's proxy losses (memvir/pml.py).

Two oracles: PML's own forward (the adapter scores as PML does, values and gradients to PML's parameter), and
MemVir over our equivalent loss (step by step through a run that fills and wraps the memory, both paths).
"""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances, reducers, regularizers  # noqa: E402

from memvir.losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, SoftTriple  # noqa: E402
from memvir.memory import MemVir  # noqa: E402
from memvir.pml import PMLLoss  # noqa: E402

C, D = 6, 8

# name: (PML loss, our equivalent, PML's weight attribute, whether that weight is (D, C*K))
CASES = {
    "normsoftmax": (lambda: pml_losses.NormalizedSoftmaxLoss(C, D, temperature=0.1),
                    lambda: NormSoftmax(C, D, scale=10.0), "W", True),
    "proxynca": (lambda: pml_losses.ProxyNCALoss(C, D, softmax_scale=3.0),
                 lambda: ProxyNCA(C, D, scale=3.0), "proxies", False),
    "cosface": (lambda: pml_losses.CosFaceLoss(C, D, margin=0.35, scale=16),
                lambda: CosFace(C, D, scale=16.0, margin=0.35), "W", True),
    "arcface": (lambda: pml_losses.ArcFaceLoss(C, D, margin=28.6, scale=16),  # degrees
                lambda: ArcFace(C, D, scale=16.0, margin=math.radians(28.6)), "W", True),
    "proxyanchor": (lambda: pml_losses.ProxyAnchorLoss(C, D, margin=0.1, alpha=16),
                    lambda: ProxyAnchor(C, D, margin=0.1, alpha=16.0), "proxies", False),
    "softtriple": (lambda: pml_losses.SoftTripleLoss(C, D, centers_per_class=3, la=8, gamma=0.1, margin=0.01),
                   lambda: SoftTriple(C, D, centers_per_class=3, la=8.0, gamma=0.1, margin=0.01), "fc", True),
}


def pair(name):
    """A PML loss and ours with the same weights, float64."""
    make_pml, make_ours, attr, transposed = CASES[name]
    torch.manual_seed(0)
    theirs, ours = make_pml().double(), make_ours().double()
    weight = getattr(theirs, attr)
    with torch.no_grad():
        ours.proxies.copy_(weight.T if transposed else weight)
    return theirs, ours, attr, transposed


@pytest.mark.parametrize("name", sorted(CASES))
def test_adapter_scores_as_pml(name):
    """Without a memory, PMLLoss is PML's loss: value, gradients to the embeddings and to PML's own parameter."""
    theirs, _, attr, _ = pair(name)
    adapted = PMLLoss(copy.deepcopy(theirs))
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(11, D, generator=g, dtype=torch.float64) * 2.0
    labels = torch.randint(0, C, (11,), generator=g)
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    v1, v2 = adapted(e1, labels), theirs(e2, labels)
    v1.backward()
    v2.backward()
    assert float(v1.detach()) == pytest.approx(float(v2.detach()), rel=1e-10)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(getattr(adapted.pml, attr).grad, getattr(theirs, attr).grad, rtol=1e-8, atol=1e-12)
    assert [n for n, _ in adapted.named_parameters()] == [f"pml.{attr}"]  # the PML weight, and nothing else


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fast", [True, False])
def test_memvir_over_pml_equals_memvir_over_ours(name, fast):
    """Step by step, N=3, M=1, 60 steps (the memory wraps around), each side trained by its own optimiser: the PML
    side's over pml_loss.parameters(), as a PML user builds it. A state_dict round trip half way."""
    theirs, ours, attr, transposed = pair(name)
    mv_pml, mv_ours = MemVir(theirs, 3, 1, fast=fast), MemVir(ours, 3, 1, fast=fast)
    assert mv_pml.loss.pml is theirs and mv_pml.num_classes == C
    opt_pml = torch.optim.SGD(theirs.parameters(), lr=0.3)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(2)
    for step in range(60):
        B = 4 + step % 5
        emb = torch.randn(B, D, generator=g, dtype=torch.float64)
        labels = torch.randint(0, C, (B,), generator=g)
        e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        v1, v2 = mv_pml(e1, labels, epoch=0), mv_ours(e2, labels, epoch=0)
        opt_pml.zero_grad()
        opt_ours.zero_grad()
        v1.backward()
        v2.backward()
        torch.testing.assert_close(v1.detach(), v2.detach(), rtol=1e-10, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-8, atol=1e-12, msg=f"step {step}")
        grad = getattr(theirs, attr).grad
        torch.testing.assert_close(grad.T if transposed else grad, ours.proxies.grad, rtol=1e-8, atol=1e-12,
                                   msg=f"step {step}")
        opt_pml.step()
        opt_ours.step()
        if step == 30:  # resume: the memory and PML's weight are in MemVir's state_dict
            buf = io.BytesIO()
            torch.save(mv_pml.state_dict(), buf)
            buf.seek(0)
            theirs = CASES[name][0]().double()  # other weights, empty memory
            mv_pml = MemVir(theirs, 3, 1, fast=fast)
            mv_pml.load_state_dict(torch.load(buf, weights_only=True))
            opt_pml = torch.optim.SGD(theirs.parameters(), lr=0.3)
    assert mv_pml.num_taken == 3 and int(mv_pml.num_pushed) > mv_pml.capacity


def test_unsupported_pml_loss_points_to_cross_batch_memory():
    with pytest.raises(ValueError, match=r"MemVir loss: pytorch-metric-learning's ContrastiveLoss is not a proxy "
                                         r"loss.*CrossBatchMemory"):
        MemVir(pml_losses.ContrastiveLoss(), 2, 1)


@pytest.mark.parametrize("make,match", [
    (lambda: pml_losses.CosFaceLoss(C, D, weight_regularizer=regularizers.RegularFaceRegularizer()),
     "CosFaceLoss with a weight_regularizer is not supported"),
    (lambda: pml_losses.ProxyNCALoss(C, D, distance=distances.CosineSimilarity()),
     r"ProxyNCALoss with distance CosineSimilarity\(p=2, power=1\) is not supported; expected its default "
     r"LpDistance\(p=2, power=2\)"),
    (lambda: pml_losses.SoftTripleLoss(C, D, reducer=reducers.SumReducer()), "reducer SumReducer"),
])
def test_pml_extras_we_do_not_reproduce_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        MemVir(make(), 2, 1)


def test_unnormalised_pml_normsoftmax():
    """NormalizedSoftmaxLoss(distance=DotProductSimilarity(normalize_embeddings=False)): raw embeddings, as ours."""
    theirs = pml_losses.NormalizedSoftmaxLoss(C, D, distance=distances.DotProductSimilarity(normalize_embeddings=False))
    adapted = PMLLoss(theirs.double())
    assert adapted.normalize_embeddings is False
    emb, labels = torch.randn(5, D, dtype=torch.float64) * 3, torch.randint(0, C, (5,))
    assert float(adapted(emb, labels).detach()) == pytest.approx(float(theirs(emb, labels).detach()), rel=1e-10)
    assert float(adapted(emb, labels).detach()) != pytest.approx(float(theirs(F.normalize(emb), labels).detach()))


# ---- training with --pml -----------------------------------------------------------------------------------------


def test_training_with_pml_uses_its_own_forward_alone_and_its_weight_under_memvir(tmp_path, monkeypatch):
    import pytorch_metric_learning.losses as L

    from memvir.train import train

    calls = []
    forward = L.CosFaceLoss.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(L.CosFaceLoss, "forward", counted)
    tiny = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
                progress=False, epochs=1, loss="CosFace", pml=True)
    train({**tiny, "save_path": str(tmp_path / "alone")})
    assert len(calls) == 4  # PML's implementation, every step
    calls.clear()
    train({**tiny, "memvir": True, "mem_num_step": 2, "mem_step_gap": 0, "warm_epoch": 0,
           "save_path": str(tmp_path / "memvir")})
    assert calls == []  # under MemVir our formula scores PML's weight
    ckpt = torch.load(tmp_path / "memvir" / "checkpoints" / "epoch_00001.pt", weights_only=True)
    assert tuple(ckpt["criterion"]["loss.pml.W"].shape) == (16, 10)  # PML's (D, C) weight is what learned
