"""MemVir against a straightforward reference written here from the four rules of the issue/paper.

The reference keeps a Python list of past steps and builds the loss with torch.cat, as one would on paper.
Both the plain and the fast (cached) paths of memvir.MemVir must give the same loss values and gradients
for hundreds of steps: through warm-up, the memory filling (curriculum), wrap-around of the ring buffer,
varying batch sizes and a state_dict round-trip.
"""
import copy
import re
import functools
import io

import pytest
import torch
import torch.nn.functional as F

from memvir.losses import ArcFace, CosFace, NormSoftmax, ProxyAnchor, ProxyNCA, Softmax, SoftTriple
from memvir.memory import MemVir


class ReferenceMemVir:
    """The four rules, literally: a list of (emb, labels, proxies), newest last."""

    def __init__(self, loss, N, M, U, stored_dtype=None):
        self.loss, self.N, self.M, self.U = loss, N, M, U
        self.past = []
        # Storage in half precision = rounding the stored unit rows, then computing in the proxies' dtype.
        unit = torch.nn.functional.normalize
        self.round = (lambda t: unit(t, dim=1).to(stored_dtype).to(t.dtype)) if stored_dtype else (lambda t: t)

    def __call__(self, emb, labels, epoch):
        C = self.loss.proxies.shape[0] // getattr(self.loss, "proxies_per_class", 1)  # classes: K rows each
        before = list(self.past)  # rule 1: memory before this step
        if epoch >= self.U:  # rule 2
            self.past.append((self.round(emb.detach().clone()), labels.clone(),
                              self.round(self.loss.proxies.detach().clone())))
            self.past = self.past[-self.N * (self.M + 1):] if self.N > 0 else []
        newest_first = before[::-1]
        taken = [newest_first[j] for j in range(self.M, len(newest_first), self.M + 1)][: self.N]  # rule 3
        embs, labs, prox = [emb], [labels], [self.loss.proxies]
        for k, (e, y, p) in enumerate(taken, start=1):  # rule 4
            embs.append(e)
            labs.append(y + k * C)
            prox.append(p)
        self.num_taken = len(taken)
        return self.loss(torch.cat(embs), torch.cat(labs), torch.cat(prox))


def run_side_by_side(loss_cls, N, M, U, steps, fast, steps_per_epoch=7, C=6, D=8, seed=0, roundtrip_at=None,
                     **storage):
    """Train a tiny linear 'model' with both implementations and compare every step."""
    torch.manual_seed(seed)
    loss_a = loss_cls(C, D)
    loss_b = copy.deepcopy(loss_a)
    head_a = torch.nn.Linear(5, D)
    head_b = copy.deepcopy(head_a)
    ours = MemVir(loss_a, N, M, warmup_epochs=U, fast=fast, **storage)
    ref = ReferenceMemVir(loss_b, N, M, U, stored_dtype=storage.get("storage_dtype"))
    opt_a = torch.optim.SGD(list(head_a.parameters()) + [loss_a.proxies], lr=0.5)
    opt_b = torch.optim.SGD(list(head_b.parameters()) + [loss_b.proxies], lr=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    max_taken = 0
    for step in range(steps):
        B = int(torch.randint(3, 10, (1,), generator=g))  # batch sizes vary, like an epoch's last batch
        x = torch.randn(B, 5, generator=g)
        y = torch.randint(0, C, (B,), generator=g)
        epoch = step // steps_per_epoch
        la = ours(torch.nn.functional.normalize(head_a(x), dim=1), y, epoch)
        lb = ref(torch.nn.functional.normalize(head_b(x), dim=1), y, epoch)
        assert ours.num_taken == ref.num_taken, step
        assert ours.num_classes_in_use == C * (1 + ref.num_taken)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6, msg=f"loss differs at step {step}")
        opt_a.zero_grad()
        opt_b.zero_grad()
        la.backward()
        lb.backward()
        torch.testing.assert_close(loss_a.proxies.grad, loss_b.proxies.grad, rtol=1e-4, atol=1e-6,
                                   msg=f"proxy gradient differs at step {step}")
        torch.testing.assert_close(head_a.weight.grad, head_b.weight.grad, rtol=1e-4, atol=1e-6,
                                   msg=f"embedding gradient differs at step {step}")
        opt_a.step()
        opt_b.step()
        # Keep both models on exactly the same parameters so float drift cannot accumulate.
        with torch.no_grad():
            head_a.load_state_dict(head_b.state_dict())
            loss_a.proxies.copy_(loss_b.proxies)
        if roundtrip_at is not None and step == roundtrip_at:
            buf = io.BytesIO()
            torch.save(ours.state_dict(), buf)
            buf.seek(0)
            fresh = MemVir(loss_cls(C, D), N, M, warmup_epochs=U, fast=fast, **storage)  # empty memory, new loss
            fresh.load_state_dict(torch.load(buf, weights_only=True))
            ours, loss_a = fresh, fresh.loss
            opt_a = torch.optim.SGD(list(head_a.parameters()) + [loss_a.proxies], lr=0.5)
        max_taken = max(max_taken, ref.num_taken)
    return max_taken


@pytest.mark.parametrize("loss_cls", [NormSoftmax, ProxyNCA])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("N,M,U", [(3, 2, 2), (5, 0, 0), (2, 4, 1), (1, 0, 0), (4, 1, 3)])
def test_matches_reference(loss_cls, fast, N, M, U):
    steps = 200
    max_taken = run_side_by_side(loss_cls, N, M, U, steps, fast)
    assert max_taken == N  # the memory really filled up (and, with 200 steps, wrapped around)


@pytest.mark.parametrize("fast", [True, False])
def test_state_dict_round_trip_mid_run(fast):
    """Saving and loading the memory mid-run continues exactly as if nothing happened."""
    run_side_by_side(NormSoftmax, 3, 2, 1, steps=120, fast=fast, roundtrip_at=60)


def test_zero_steps_is_the_plain_loss():
    torch.manual_seed(0)
    loss = NormSoftmax(4, 3)
    mv = MemVir(loss, num_steps=0, step_gap=5)
    emb, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    for epoch in range(3):
        assert float(mv(emb, y, epoch).detach()) == pytest.approx(float(loss(emb, y).detach()))
    assert mv.num_taken == 0


def test_curriculum_counts():
    """With N=3, M=1 and no warm-up the classes grow C, C, 2C, 2C, 3C, 3C, 4C, 4C, ... (taken at 2, 4, 6 steps)."""
    C = 5
    mv = MemVir(NormSoftmax(C, 4), num_steps=3, step_gap=1)
    seen = []
    for step in range(10):
        mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 0)
        seen.append(mv.num_classes_in_use // C)
    assert seen == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert mv.num_embeddings_in_use == 2 * 4


def test_warmup_keeps_memory_empty():
    mv = MemVir(NormSoftmax(3, 4), num_steps=2, step_gap=0, warmup_epochs=2)
    for epoch in (0, 0, 1, 1):
        mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), epoch)
        assert mv.num_taken == 0 and int(mv.num_pushed) == 0
    mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 2)
    assert int(mv.num_pushed) == 1 and mv.num_taken == 0
    mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 2)
    assert mv.num_taken == 1


def test_reset_empties_memory():
    mv = MemVir(NormSoftmax(3, 4), num_steps=2, step_gap=0)
    for _ in range(4):
        mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 0)
    mv.reset()
    mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 0)
    assert mv.num_taken == 0


def test_memory_is_in_buffers_and_moves_with_the_module():
    mv = MemVir(NormSoftmax(3, 4), num_steps=2, step_gap=1)
    for _ in range(5):
        mv(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 0)
    names = set(mv.state_dict())
    assert {"mem_emb", "mem_labels", "mem_sizes", "mem_proxies", "num_pushed", "loss.proxies"} <= names
    assert mv.mem_emb.shape == (4, 2, 4) and mv.mem_proxies.shape == (4, 3, 4)
    mv = mv.to(torch.float64)
    assert mv.mem_emb.dtype == torch.float64 and mv.loss.proxies.dtype == torch.float64
    mv(torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 0)
    if torch.cuda.is_available():
        mv = mv.cuda()
        assert mv.mem_emb.is_cuda and mv.mem_proxies.is_cuda
        mv(torch.randn(2, 4, dtype=torch.float64, device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda"), 0)


@pytest.mark.parametrize("fast", [True, False])
def test_gradients_reach_only_current_embeddings_and_proxies(fast):
    """A stored step is a constant: the next step's loss sends no gradient back to the embeddings it came from."""
    torch.manual_seed(0)
    mv = MemVir(NormSoftmax(3, 4), num_steps=2, step_gap=0, fast=fast)
    old = torch.randn(2, 4, requires_grad=True)
    mv(old, torch.tensor([0, 1]), 0)  # pushed; its loss is never backpropagated
    emb = torch.randn(2, 4, requires_grad=True)
    loss = mv(emb, torch.tensor([1, 2]), 0)
    assert mv.num_taken == 1
    loss.backward()
    assert emb.grad is not None and mv.loss.proxies.grad is not None
    assert old.grad is None


@pytest.mark.parametrize("kwargs,match", [(dict(num_steps=-1, step_gap=1), "num_steps"),
                                          (dict(num_steps=1, step_gap=-2), "step_gap"),
                                          (dict(num_steps=1, step_gap=1, warmup_epochs=-1), "warmup_epochs"),
                                          (dict(num_steps=1.5, step_gap=1), "num_steps")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemVir(NormSoftmax(3, 4), **kwargs)


@pytest.mark.parametrize("emb,labels,epoch,match", [
    (torch.randn(2, 5), torch.zeros(2, dtype=torch.long), 0, "columns"),
    (torch.randn(2, 4), torch.tensor([0, 3]), 0, r"\[0, 3\)"),
    (torch.full((2, 4), float("nan")), torch.zeros(2, dtype=torch.long), 0, "NaN"),
    (torch.randn(2, 4), torch.zeros(2, dtype=torch.long), -1, "epoch"),
])
def test_bad_input(emb, labels, epoch, match):
    with pytest.raises(ValueError, match=match):
        MemVir(NormSoftmax(3, 4), num_steps=1, step_gap=0)(emb, labels, epoch)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("storage", [dict(storage_dtype=torch.float16), dict(storage_dtype=torch.bfloat16),
                                     dict(storage="host"), dict(storage="host", storage_dtype=torch.float16)])
def test_storage_options_match_reference(fast, storage):
    """Half-precision storage is exact rounding of what is stored; host storage changes nothing but the place."""
    assert run_side_by_side(ProxyNCA, 3, 1, 1, steps=80, fast=fast, roundtrip_at=40, **storage) == 3


def test_memory_bytes_and_storage_stays_put():
    C, D, B, N, M = 10, 6, 4, 3, 2
    mv = MemVir(NormSoftmax(C, D), N, M, storage="host", storage_dtype=torch.float16)
    mv(torch.randn(B, D), torch.zeros(B, dtype=torch.long), 0)
    S = N * (M + 1)
    # embeddings and proxies in fp16 (2 bytes), labels and sizes int64 (8 bytes), one int64 counter.
    assert mv.memory_bytes == S * B * D * 2 + S * C * D * 2 + S * B * 8 + S * 8 + 8
    mv = mv.to(torch.float64)
    assert mv.loss.proxies.dtype == torch.float64
    assert mv.mem_emb.dtype == torch.float16 and mv.mem_proxies.dtype == torch.float16
    assert mv.mem_emb.device.type == "cpu"
    mv(torch.randn(B, D, dtype=torch.float64), torch.zeros(B, dtype=torch.long), 0)
    assert mv.num_taken == 0 and int(mv.num_pushed) == 2


def test_sop_setting_bytes():
    """The issue's arithmetic: SOP, N=5, M=100: 505 proxy snapshots of 11,318 x 512 floats, about 11.7 GB."""
    N, M, C, D, B = 5, 100, 11318, 512, 128
    S = N * (M + 1)
    mv = MemVir(NormSoftmax(C, 8), N, M)  # D=8 keeps the test small; bytes scale linearly in D
    mv(torch.randn(B, 8), torch.zeros(B, dtype=torch.long), 0)
    assert mv.mem_proxies.numel() * 4 * (D // 8) / 1e9 == pytest.approx(11.7, abs=0.05)  # the number
    assert mv.memory_bytes == S * C * 8 * 4 + S * B * 8 * 4 + S * B * 8 + S * 8 + 8


# ----------------------------------------------------------------------------------------------------------------
# Resume is bitwise (issue 11) and taken() (issue 10)


def train_steps(loss_cls, fast, steps, resume_at=None, drop_cache=False, N=3, M=1, C=10, D=512):
    """Train a linear head for `steps` steps; after step `resume_at`, continue from a fresh MemVir (and a fresh
    loss) loaded from a saved state_dict, as a resumed run does. Return every step's (loss, proxy grad, head grad).
    """
    torch.manual_seed(0)
    loss = loss_cls(C, D)
    head = torch.nn.Linear(7, D)
    mv = MemVir(loss, N, M, warmup_epochs=0, fast=fast)
    opt = torch.optim.SGD(list(head.parameters()) + [loss.proxies], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    record = []
    for step in range(steps):
        B = int(torch.randint(8, 17, (1,), generator=g))  # short batches too: rows trimmed, padding in the cache
        x, y = torch.randn(B, 7, generator=g), torch.randint(0, C, (B,), generator=g)
        value = mv(F.normalize(head(x), dim=1), y, epoch=0)
        opt.zero_grad()
        value.backward()
        record.append((value.detach(), mv.loss.proxies.grad.clone(), head.weight.grad.clone()))
        opt.step()
        if step == resume_at:
            assert int(mv.num_pushed) > mv.capacity  # the ring buffer has wrapped around: the hard case
            buf = io.BytesIO()
            torch.save({"criterion": mv.state_dict(), "optimizer": opt.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
            if drop_cache:  # a checkpoint written before the cache was saved
                saved["criterion"] = {k: v for k, v in saved["criterion"].items() if k not in MemVir.CACHE}
            mv = MemVir(loss_cls(C, D), N, M, warmup_epochs=0, fast=fast)  # empty memory, other proxies
            mv.load_state_dict(saved["criterion"])
            opt = torch.optim.SGD(list(head.parameters()) + [mv.loss.proxies], lr=0.1, momentum=0.9)
            opt.load_state_dict(saved["optimizer"])
    return record


@pytest.mark.parametrize("loss_cls", [NormSoftmax, ProxyNCA])
@pytest.mark.parametrize("fast", [True, False])
def test_resume_is_bitwise_at_d512(loss_cls, fast):
    """Issue 11: at the paper's D=512 a recomputed cache differed in the last bits from the incremental one."""
    ref = train_steps(loss_cls, fast, 40)
    got = train_steps(loss_cls, fast, 40, resume_at=19)
    for step, (a, b) in enumerate(zip(ref, got)):
        for name, x, y in zip(("loss", "proxy gradient", "embedding gradient"), a, b):
            assert torch.equal(x, y), f"{name} differs at step {step}"


def test_checkpoint_without_the_cache_still_loads():
    """An older checkpoint (memory, no cache) resumes with a recomputed cache: equal up to rounding."""
    ref = train_steps(ProxyNCA, True, 30)
    got = train_steps(ProxyNCA, True, 30, resume_at=19, drop_cache=True)
    for step, (a, b) in enumerate(zip(ref, got)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=f"step {step}")


@pytest.mark.parametrize("storage", [{}, dict(storage="host", storage_dtype=torch.float16)])
def test_taken_returns_the_taken_steps_trimmed(storage):
    """taken() against the rules written out here: newest first, positions M, 2M+1, ..., at most N, real rows."""
    N, M, C, D = 3, 2, 5, 4
    torch.manual_seed(0)
    loss = NormSoftmax(C, D)
    mv = MemVir(loss, N, M, **storage)
    dtype = storage.get("storage_dtype")
    stored = (lambda t: F.normalize(t, dim=1).to(dtype).float()) if dtype else (lambda t: F.normalize(t, dim=1))
    pushed = []  # (push index, embeddings as stored, labels, proxies as stored), oldest first
    for step in range(30):
        newest_first = pushed[::-1][: N * (M + 1)]
        expected = [newest_first[j] for j in range(M, len(newest_first), M + 1)][:N]
        got = mv.taken()
        assert [t.step for t in got] == [e[0] for e in expected]
        for t, (_, emb, labels, proxies) in zip(got, expected):
            assert t.embeddings.shape == emb.shape and t.embeddings.dtype == loss.proxies.dtype
            torch.testing.assert_close(t.embeddings, emb)
            assert t.labels.dtype == torch.long and torch.equal(t.labels, labels)
            torch.testing.assert_close(t.proxies, proxies)
        B = 1 + step % 6  # batch sizes 1..6: the stored rows are trimmed to each one
        emb, labels = torch.randn(B, D), torch.randint(0, C, (B,), dtype=torch.int32)
        mv(emb, labels, epoch=0)
        pushed.append((step, stored(emb), labels.long(), stored(loss.proxies.detach())))
        with torch.no_grad():
            loss.proxies.add_(torch.randn(C, D))  # every step's snapshot is different
    before = mv.taken()
    copies = [t.embeddings.clone() for t in before]
    for _ in range(N * (M + 1)):  # overwrite every slot
        mv(torch.randn(6, D), torch.zeros(6, dtype=torch.long), epoch=0)
    assert all(torch.equal(t.embeddings, c) for t, c in zip(before, copies))  # what taken() returned stays put


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_labels_of_any_integer_dtype(fast, dtype):
    """int32 labels (a common dtype) give the very numbers int64 labels give."""
    torch.manual_seed(0)
    mv64 = MemVir(ProxyNCA(5, 8), num_steps=2, step_gap=1, fast=fast)
    mv = copy.deepcopy(mv64)
    for _ in range(8):
        emb, labels = torch.randn(4, 8), torch.randint(0, 5, (4,))
        assert torch.equal(mv(emb, labels.to(dtype), epoch=0), mv64(emb, labels, epoch=0))
    assert mv.num_taken == 2 and mv.mem_labels.dtype == torch.long


# ----------------------------------------------------------------------------------------------------------------
# --train_with_l2norm=False: embeddings stored raw, proxies unit rows


@pytest.mark.parametrize("loss_cls,kind", [(NormSoftmax, "normsoftmax"), (ProxyNCA, "proxynca")])
@pytest.mark.parametrize("fast", [True, False])
def test_unnormalised_embeddings_match_official_formulas(loss_cls, kind, fast):
    """MemVir over a loss with normalize_embeddings=False against the official formulas (test_losses.official_loss)
    over the concatenated batch: past embeddings as the head gave them, past proxies as the loss's weight was.
    Values and gradients, float64, N=3, M=1: the memory fills and wraps around within 12 steps."""
    from test_losses import official_loss  # the official loss/softmax_variants.py, written out there

    N, M, C, D, scale = 3, 1, 5, 4, 1.3
    torch.manual_seed(0)
    loss = loss_cls(C, D, scale=scale, normalize_embeddings=False).double()
    mv = MemVir(loss, N, M, fast=fast)
    g = torch.Generator().manual_seed(1)
    past = []  # (raw embeddings, labels, raw proxies), oldest first: the official memory keeps the raw weight
    for step in range(12):
        B = 3 + step % 4
        raw = torch.randn(B, D, generator=g, dtype=torch.float64) * torch.empty(B, 1, dtype=torch.float64).uniform_(
            0.2, 4.0, generator=g)  # norms far from 1: normalising anywhere would show
        labels = torch.randint(0, C, (B,), generator=g)
        newest_first = past[::-1]
        taken = [newest_first[j] for j in range(M, len(newest_first), M + 1)][:N]
        proxies_ref = loss.proxies.detach().clone().requires_grad_()
        emb_ref = raw.clone().requires_grad_()
        embs, labs, prox = [emb_ref], [labels], [proxies_ref]
        for k, (e, y, p) in enumerate(taken, start=1):
            embs.append(e)
            labs.append(y + k * C)
            prox.append(p)
        theirs = official_loss(kind, torch.cat(embs), torch.cat(prox), torch.cat(labs), scale)
        theirs.backward()

        emb = raw.clone().requires_grad_()
        loss.proxies.grad = None
        ours = mv(emb, labels, epoch=0)
        ours.backward()
        assert mv.num_taken == len(taken)
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(emb.grad, emb_ref.grad, rtol=1e-9, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(loss.proxies.grad, proxies_ref.grad, rtol=1e-9, atol=1e-12, msg=f"step {step}")
        past.append((raw.clone(), labels, loss.proxies.detach().clone()))
        with torch.no_grad():
            loss.proxies.sub_(0.3 * loss.proxies.grad)  # the proxies move, and their norms with them
    assert int(mv.num_pushed) > mv.capacity and mv.num_taken == N


# ----------------------------------------------------------------------------------------------------------------
# The other losses of Table 4 (issue 12): margins on past targets, SoftTriple's K centres, Proxy-Anchor's plain path

NEW_LOSSES = {
    "softmax": Softmax,  # raw embeddings (its default), raw class weights stored
    "cosface": CosFace,  # the default scale 64 and margin 0.35
    "arcface": ArcFace,
    "arcface_s16": functools.partial(ArcFace, scale=16.0, margin=0.3),
    "softtriple": functools.partial(SoftTriple, centers_per_class=3),  # proxies (C*3, D): labels shift by k*C
    "proxyanchor": ProxyAnchor,  # not decomposable: MemVir's plain path even with fast=True
}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("N,M,U", [(3, 2, 1), (2, 0, 0)])
def test_new_losses_match_reference(name, fast, N, M, U):
    """Both paths against the reference (rule 4 by concatenation), values and gradients, 200 steps: the memory
    fills and wraps around. For the margin losses the fast path's cache holds the past targets with the margin."""
    assert run_side_by_side(NEW_LOSSES[name], N, M, U, steps=200, fast=fast) == N


@pytest.mark.parametrize("name", ["cosface", "arcface", "softtriple"])
def test_margin_reaches_past_targets(name):
    """A direct check of the past rows' margin: one past step taken, the loss written out over both row sets."""
    torch.manual_seed(0)
    C, D = 4, 6
    loss = NEW_LOSSES[name](C, D).double()
    past_emb, past_y = F.normalize(torch.randn(5, D, dtype=torch.float64), dim=1), torch.randint(0, C, (5,))
    emb, y = torch.randn(3, D, dtype=torch.float64), torch.randint(0, C, (3,))
    for fast in (True, False):
        mv = MemVir(copy.deepcopy(loss), num_steps=1, step_gap=0, fast=fast)
        mv(past_emb, past_y, epoch=0)
        got = mv(emb, y, epoch=0)
        p_all = torch.cat([loss.proxies, loss.proxies]).detach()  # the snapshot equals the current proxies
        rows, labels = torch.cat([emb, past_emb]), torch.cat([y, past_y + C])
        logits = loss.logits(rows, p_all)  # (8, 2C) before any margin
        target = logits.gather(1, labels[:, None])  # (8, 1)
        margined = logits.scatter(1, labels[:, None], loss.target_logit(target))
        expected = (torch.logsumexp(margined, dim=1) - margined.gather(1, labels[:, None]).squeeze(1)).mean()
        unmargined = F.cross_entropy(logits, labels)
        torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-10, atol=1e-12)
        assert float(got.detach()) > float(unmargined.detach()) + 1e-3  # the margin makes it harder: it is there


@pytest.mark.parametrize("name", ["cosface", "softtriple"])
@pytest.mark.parametrize("fast", [True, False])
def test_new_losses_with_half_storage_and_resume(name, fast):
    """Rounded storage (re-embedded when read) and a state_dict round trip, with a margin and with K centres."""
    assert run_side_by_side(NEW_LOSSES[name], 3, 1, 1, steps=80, fast=fast, roundtrip_at=40,
                            storage="host", storage_dtype=torch.float16) == 3


@pytest.mark.parametrize("name", ["arcface", "softtriple", "proxyanchor"])
def test_new_losses_resume_is_bitwise_at_d512(name):
    """Issue 11 for the margin, the K centres and the plain path: a resumed run reads the very floats."""
    ref = train_steps(NEW_LOSSES[name], True, 30)
    got = train_steps(NEW_LOSSES[name], True, 30, resume_at=19)
    for step, (a, b) in enumerate(zip(ref, got)):
        for what, x, y in zip(("loss", "proxy gradient", "embedding gradient"), a, b):
            assert torch.equal(x, y), f"{what} differs at step {step}"


# ----------------------------------------------------------------------------------------------------------------
# Device reads per step (issue 14): what would make the host wait for a GPU, counted on the CPU (tests/device_reads)

def filled_memvir(N=4, M=1, U=0, B=6, C=5, D=4, **kwargs):
    """A Norm-SoftMax MemVir whose memory is full (all N past steps taken from the next step on), and a batch."""
    torch.manual_seed(0)
    mv = MemVir(NormSoftmax(C, D), N, M, warmup_epochs=U, **kwargs)
    for _ in range(mv.capacity + 2):
        mv(F.normalize(torch.randn(B, D), dim=1), torch.randint(0, C, (B,)), U)
    return mv, F.normalize(torch.randn(B, D), dim=1).requires_grad_(), torch.randint(0, C, (B,))


@pytest.mark.parametrize("code,expected", [
    (lambda t: (int(t.min()), int(t.max()), bool(torch.isfinite(t).all())), ["read"] * 3),  # check_batch before
    (lambda t: torch.stack([t.min(), t.max()]).tolist(), ["read"]),
    (lambda t: (t.numpy(), t.cpu(), t.nonzero(), t[t > 0]), ["read"] * 4),
    (lambda t: (t[torch.tensor([0, 1])], t.__setitem__(0, 2.0)), ["from host"] * 2),  # index from a list, t[0] = 2
    (lambda t: (t[torch.arange(2)], t[0].fill_(2.0), torch.logsumexp(t, 0) + 1), []),
])
def test_device_reads_counts_each_kind(code, expected):
    """The counter the step tests rely on sees each kind of read: the oracle is the count written by hand."""
    from device_reads import device_reads

    with device_reads() as seen:
        code(torch.randn(5))
    assert [kind for kind, _, _ in seen] == expected, seen


@pytest.mark.parametrize("case,reads", [
    ("fast", ["memvir/checks.py check_batch"]),  # MemVir's one check; the fast path calls no loss
    ("fast, check=False", []),
    ("fast, a short batch", ["memvir/checks.py check_batch"]),  # padding rows: the sizes stay on the device
    ("warm-up", ["memvir/checks.py check_batch"]),  # the loss's check of this very batch, not MemVir's too
    ("warm-up, check=False", []),  # asserted by MemVir, the loss told not to read
    ("plain", ["memvir/checks.py check_batch"]),  # MemVir's; the loss checks the concatenation's shapes only
    ("plain, check=False", []),
    ("plain, embeddings only", ["memvir/checks.py check_batch"]),  # the ablations take the plain path
    ("plain, proxies only, check=False", []),
])
def test_one_step_reads_the_device_at_most_once(case, reads):
    """One training step (forward + backward), memory full, Norm-SoftMax: before issue 14 the fast path read the
    device three times (check_batch) and made seven index tensors from host lists, the plain path twice (MemVir's
    check, then the loss's of the concatenation); now one read, none with check=False. The owner tables are host
    bookkeeping by design (numpy views), not reads."""
    from device_reads import device_reads

    virtual = "embeddings" if "embeddings only" in case else "proxies" if "proxies only" in case else "both"
    mv, emb, labels = filled_memvir(fast=not case.startswith("plain"), check="check=False" not in case,
                                    U=1 if case.startswith("warm-up") else 0, virtual=virtual)
    epoch = 0 if case.startswith("warm-up") else mv.warmup_epochs
    if case == "fast, a short batch":
        emb, labels = emb[:4].detach().requires_grad_(), labels[:4]
        mv(emb, labels, epoch)  # the short batch pushed: the next step takes it with padding rows
    with device_reads(host=[mv.lse_owner, mv.target_owner]) as seen:
        mv(emb, labels, epoch).backward()
    assert mv.num_taken == (0 if case.startswith("warm-up") else 4)
    assert [f"{where.split(':')[0]} {where.split()[-1]}" for _, _, where in seen] == reads, seen
    assert all(kind == "read" for kind, _, _ in seen), seen


@pytest.mark.parametrize("name", ["normsoftmax", "proxynca", "softmax", "cosface", "arcface", "proxyanchor",
                                  "softtriple", "pml cosface"])
@pytest.mark.parametrize("fast", [True, False])
def test_no_loss_reads_the_device_with_check_false(name, fast):
    """Every proxy loss under MemVir(check=False), memory full: a step (forward + backward) reads nothing; with the
    default check exactly once (MemVir's). A read hidden inside a loss (F.one_hot reads the labels' range) would
    be a wait on every CUDA step."""
    import pytorch_metric_learning.losses as pml_losses

    import memvir.pml  # noqa: F401  (registers PML's adapter with the memory, as memvir.MemVir does: not by test order)
    from device_reads import device_reads
    from memvir.registry import build_loss

    C, D, B = 5, 4, 6
    for check, expected in ((False, 0), (True, 1)):
        torch.manual_seed(0)
        loss = pml_losses.CosFaceLoss(C, D) if name.startswith("pml") else build_loss(name, C, D, None)
        mv = MemVir(loss, 3, 1, fast=fast, check=check)
        for _ in range(mv.capacity + 1):
            mv(torch.randn(B, D), torch.randint(0, C, (B,)), 0)
        emb = torch.randn(B, D, requires_grad=True)
        with device_reads(host=[mv.lse_owner, mv.target_owner]) as seen:
            mv(emb, torch.randint(0, C, (B,)), 0).backward()
        assert mv.num_taken == 3 and len(seen) == expected, seen


@pytest.mark.parametrize("fast", [True, False])
def test_bad_batch_refused_with_taken_steps(fast):
    """With past steps taken MemVir checks the values itself (the fast path calls no loss; the plain path's loss
    would see labels up to (1+K)C): the same one-line errors, and nothing pushed."""
    mv, emb, labels = filled_memvir(fast=fast)
    pushed = int(mv.num_pushed)
    with pytest.raises(ValueError, match=r"^labels: expected values in \[0, 5\), got min 0, max 5$"):
        mv(emb.detach(), torch.tensor([0, 5, 1, 1, 1, 1]), 0)  # 5 would be a virtual class of the plain path
    with pytest.raises(ValueError, match="^embeddings: expected finite values, got NaN or inf$"):
        mv(torch.full_like(emb, float("nan")), labels, 0)
    assert int(mv.num_pushed) == pushed and mv.num_taken == 4


def test_check_false_asserts_on_the_device():
    """check=False reads nothing but still refuses a bad batch: shapes in one line on the host, values by the
    device's assert (a RuntimeError on the CPU). Label 9 is in range of the fast path's (1+K)C = 25 columns: without
    the assert it would silently count as a virtual class."""
    mv, emb, labels = filled_memvir(check=False)
    pushed = int(mv.num_pushed)
    with pytest.raises(ValueError, match="columns"):
        mv(torch.randn(6, 5), labels, 0)
    with pytest.raises(RuntimeError, match=r"labels: expected values in \[0, 5\) and finite embeddings"):
        mv(emb.detach(), torch.tensor([0, 9, 1, 1, 1, 1]), 0)
    with pytest.raises(RuntimeError, match="finite embeddings"):
        mv(torch.full_like(emb, float("nan")), labels, 0)
    assert int(mv.num_pushed) == pushed
    warm, _, _ = filled_memvir(check=False, U=1)  # in the warm-up the loss is told not to read: MemVir asserts
    with pytest.raises(RuntimeError, match=r"labels: expected values in \[0, 5\) and finite embeddings"):
        warm(emb.detach(), torch.tensor([0, 5, 1, 1, 1, 1]), 0)


def test_native_pml_loss_still_checked_in_the_warmup():
    """A PMLLoss with native=True runs PML's own forward (no check): MemVir checks the warm-up batch itself."""
    import pytorch_metric_learning.losses as pml_losses

    from memvir.pml import PMLLoss

    mv = MemVir(PMLLoss(pml_losses.NormalizedSoftmaxLoss(3, 4), native=True), 1, 0, warmup_epochs=1)
    with pytest.raises(ValueError, match=r"^labels: expected values in \[0, 3\), got min 0, max 3$"):
        mv(torch.randn(2, 4), torch.tensor([0, 3]), 0)


def test_scattered_cache_gaps_are_filled_in_place():
    """Cache entries missing for non-consecutive rows of one column (rare: the rows are filled one at a time, by
    host integers) are recomputed where they belong: garbage written there and marked missing is replaced, and
    the step's value and gradients equal those of an untouched copy (oracle: the copy's cache, filled normally)."""
    mv, emb, labels = filled_memvir(N=4, M=0)
    twin = copy.deepcopy(mv)
    slots = [q % mv.capacity for q in mv.taken_steps()]  # the next step's K = 4 taken steps, newest first
    N, jj = mv.num_steps, 2  # column 2 (the third taken step's proxies), rows 1 and 3: not consecutive
    for k in (1, 3):
        mv.lse_cache[slots[k], k - jj + N - 1] = 1e4  # would dominate every log-sum-exp if it stayed
        mv.lse_owner[slots[k], k - jj + N - 1] = -1
    emb_twin = emb.detach().clone().requires_grad_()
    got, want = mv(emb, labels, 0), twin(emb_twin, labels, 0)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(emb.grad, emb_twin.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mv.lse_cache, twin.lse_cache, rtol=1e-6, atol=1e-6)
    assert torch.equal(mv.lse_owner, twin.lse_owner)


def test_a_state_dict_of_another_n_or_m_is_refused_naming_both_and_nothing_changes():
    saved = MemVir(NormSoftmax(4, 8), num_steps=2, step_gap=1)
    for _ in range(3):
        saved(torch.randn(5, 8), torch.randint(0, 4, (5,)), 0)
    other = MemVir(NormSoftmax(4, 8), num_steps=3, step_gap=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"keeps N\(M\+1\) = 6 steps \(N=3, M=1\); the state_dict's keeps 4"):
        other.load_state_dict(saved.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # still the MemVir it was
    assert torch.isfinite(other(torch.randn(5, 8), torch.randint(0, 4, (5,)), 0))


# ----------------------------------------------------------------------------------------------------------------
# A validation loss reads the memory and never writes it; bad state and bad arguments are one line (issue 32)


def _filled(N=2, M=1, steps=5, seed=0):
    torch.manual_seed(seed)
    mv = MemVir(NormSoftmax(4, 8), num_steps=N, step_gap=M)
    for _ in range(steps):
        mv(torch.randn(5, 8), torch.randint(0, 4, (5,)), 0)
    return mv


@pytest.mark.parametrize("how", ["no_grad", "eval", "inference_mode"])
def test_a_validation_loss_reads_the_memory_and_never_writes_it(how):
    mv = _filled()
    twin = copy.deepcopy(mv)  # in training mode, gradients on: the oracle of what the step reads and writes
    before = {k: v.clone() for k, v in mv.state_dict().items()}
    emb, labels = torch.randn(5, 8), torch.randint(0, 4, (5,))
    if how == "eval":
        mv.eval()
        value = mv(emb, labels, 0)
    else:
        with getattr(torch, how)():
            value = mv(emb, labels, 0)
    expected = twin(emb, labels, 0)
    assert torch.equal(value.detach(), expected.detach()) and mv.num_taken == twin.num_taken == 2
    # Nothing pushed. (The fast path's cache may fill: it holds values of the memory that a training step would
    # compute alike, so it is not part of what a read may not change.)
    assert all(torch.equal(before[k], getattr(mv, k)) for k in MemVir.STORED)
    assert int(twin.num_pushed) == int(before["num_pushed"]) + 1  # a training step does push
    mv.train()
    mv(emb, labels, 0)
    assert int(mv.num_pushed) == int(before["num_pushed"]) + 1  # back in training, it pushes again


def test_xbm_under_no_grad_leaves_its_queue_where_it_was():
    from memvir.xbm import Contrastive

    loss = Contrastive(4, 8, memory_size=20)
    for _ in range(2):
        loss(F.normalize(torch.randn(5, 8), dim=1), torch.randint(0, 4, (5,)), epoch=0)
    queue, rows = int(loss.xbm.queue_idx), loss.xbm.embedding_memory.clone()
    with torch.no_grad():
        assert torch.isfinite(loss(F.normalize(torch.randn(5, 8), dim=1), torch.randint(0, 4, (5,)), epoch=0))
    assert int(loss.xbm.queue_idx) == queue == 10 and torch.equal(loss.xbm.embedding_memory, rows)


@pytest.mark.parametrize("edit,says", [
    (lambda sd: sd["num_pushed"].fill_(-5), "num_pushed is -5"),
    (lambda sd: sd["mem_labels"][0, 0].fill_(99), "stored labels from 0 to 99"),
    (lambda sd: sd["mem_labels"][1, 2].fill_(-1), "stored labels from -1"),
    (lambda sd: sd["mem_sizes"][0].fill_(6), "mem_sizes [6, 5, 5, 5]"),
    (lambda sd: sd["mem_emb"][2, 1, 3].fill_(float("nan")), "not finite"),
    (lambda sd: sd["mem_proxies"][0, 0, 0].fill_(float("inf")), "not finite"),
    (lambda sd: sd.update(num_pushed=torch.tensor(2.5)), "num_pushed is 2.5"),
])
def test_a_state_dict_no_push_could_have_written_is_refused_and_nothing_changes(edit, says):
    saved = _filled().state_dict()
    edit(saved)
    mv = _filled(seed=1)
    before = {k: v.clone() for k, v in mv.state_dict().items()}
    with pytest.raises(ValueError, match=r"^MemVir load_state_dict: .*" + re.escape(says)):
        mv.load_state_dict(saved)
    assert all(torch.equal(before[k], v) for k, v in mv.state_dict().items())


@pytest.mark.parametrize("kwargs,says", [
    ({"num_steps": 10**9}, "N(M+1) = 2,000,000,000 steps"), ({"step_gap": 10**12}, "steps, whose proxy snapshots"),
    ({"num_steps": float("nan")}, "num_steps: expected an integer >= 0, got nan"),
    ({"step_gap": float("inf")}, "step_gap: expected an integer >= 0, got inf"),
    ({"warmup_epochs": "3"}, "warmup_epochs: expected an integer >= 0, got '3'"),
    ({"num_steps": torch.tensor(2)}, "num_steps: expected an integer >= 0, got tensor(2)"),
])
def test_memory_sizes_that_cannot_be_are_one_line(kwargs, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        MemVir(NormSoftmax(4, 8), **{"num_steps": 2, "step_gap": 1, **kwargs})


@pytest.mark.parametrize("epoch", [float("nan"), float("inf"), 1.5, -1, torch.tensor(1), torch.tensor([1, 2]), "1",
                                   None, True])
def test_an_epoch_that_is_not_a_whole_number_is_one_line(epoch):
    mv = _filled()
    with pytest.raises(ValueError, match=r"^MemVir epoch: expected an integer >= 0, got "):
        mv(torch.randn(5, 8), torch.randint(0, 4, (5,)), epoch)
