"""MemVir's ablations (--mem_fill full, --mem_virtual embeddings|proxies|current) against references written here.

The reference keeps a Python list of every pushed step (raw embeddings, labels, raw proxies), takes steps from it
by rule 3 with list slicing, concatenates by hand what the ablation says a taken step brings, and scores the result
with the loss's formula written out below (Norm-SoftMax, SoftTriple, Proxy-Anchor), never with memvir.losses.
"""
import csv
import math
import os

import pytest
import torch
import torch.nn.functional as F

from memvir.losses import NormSoftmax, ProxyAnchor, SoftTriple
from memvir.memory import MemVir
from memvir.train import train

# ----------------------------------------------------------------------------------------------------------------
# The formulas, written out (float64)


def norm_softmax(rows, labels, proxies, loss):
    """mean_i CE(s * cos(x_i, p_c)): the Norm-SoftMax cross-entropy over cosine logits times the scale."""
    logits = loss.scale * F.normalize(rows, dim=1) @ F.normalize(proxies, dim=1).T  # (n, C')
    return F.cross_entropy(logits, labels)


def soft_triple(rows, labels, proxies, loss):
    """CE(la * (S_c(x) - margin [c = y])), S_c = sum_k softmax_k(cos_ck / gamma) cos_ck over class c's K centres."""
    K = loss.proxies_per_class
    cos = (F.normalize(rows, dim=1) @ F.normalize(proxies, dim=1).T).view(len(rows), -1, K)  # (n, C', K)
    S = (torch.softmax(cos / loss.gamma, dim=2) * cos).sum(dim=2)  # (n, C')
    S = S - loss.margin * F.one_hot(labels, S.shape[1]).to(S.dtype)  # (n, C'), in float64
    return F.cross_entropy(loss.la * S, labels)


def proxy_anchor(rows, labels, proxies, loss):
    """Proxy-Anchor, P+ the classes with a positive row, C' the classes given:

        1/|P+| sum_{c in P+} log(1 + sum_{y_i = c} e^{-a(cos - m)}) + 1/C' sum_c log(1 + sum_{y_i != c} e^{a(cos + m)})
    """
    cos = F.normalize(rows, dim=1) @ F.normalize(proxies, dim=1).T  # (n, C')
    pos = F.one_hot(labels, cos.shape[1]).bool()
    a, m = loss.alpha, loss.margin
    pos_term = torch.log1p((torch.exp(-a * (cos - m)) * pos).sum(dim=0))  # (C',)
    neg_term = torch.log1p((torch.exp(a * (cos + m)) * ~pos).sum(dim=0))
    return pos_term[pos.any(dim=0)].mean() + neg_term.mean()


LOSSES = {"normsoftmax": (lambda C, D: NormSoftmax(C, D, scale=8.0), norm_softmax),
          "softtriple": (lambda C, D: SoftTriple(C, D, centers_per_class=3), soft_triple),
          "proxyanchor": (lambda C, D: ProxyAnchor(C, D), proxy_anchor)}


def reference(formula, loss, emb, labels, taken, virtual):
    """The loss of a step by concatenation; `taken`: the taken (embeddings, labels, proxies), newest first."""
    C = loss.num_classes
    rows, labs, prox = [emb], [labels], [loss.proxies]
    for k, (e, y, p) in enumerate(taken, start=1):
        if virtual == "both":  # MemVir: virtual classes k*C .. k*C+C-1, scored against the k-th step's proxies
            rows, labs, prox = rows + [e], labs + [y + k * C], prox + [p]
        elif virtual == "embeddings":  # extra samples of the seen classes, current proxies only
            rows, labs = rows + [e], labs + [y]
        elif virtual == "proxies":  # C more classes, no label points at them
            prox = prox + [p]
        else:  # "current": as many classes, but copies of this step's proxies with no gradient, not the k-th step's
            prox = prox + [loss.proxies.detach()]
    return formula(torch.cat(rows), torch.cat(labs), torch.cat(prox), loss)


# ----------------------------------------------------------------------------------------------------------------
# Both paths against the reference, step by step


def run_against_reference(name, fill, virtual, fast, N=3, M=1, U=3, spe=5, epochs=6, C=5, D=6):
    """Train-like steps (batch sizes vary, the proxies move) through warm-up, the fill and a wrapped ring buffer."""
    make, formula = LOSSES[name]
    torch.manual_seed(0)
    loss = make(C, D).double()
    mv = MemVir(loss, N, M, warmup_epochs=U, fast=fast, fill=fill, virtual=virtual, steps_per_epoch=spe)
    # Rule 2 for each fill, from the task's definition: "full" pushes from U - ceil(N(M+1) / steps per epoch) on.
    pushes_from = U - math.ceil(N * (M + 1) / spe) if fill == "full" else U
    g = torch.Generator().manual_seed(1)
    pushed = []  # (embeddings, labels, proxies) of every pushed step, oldest first
    for step in range(epochs * spe):
        epoch = step // spe
        B = 2 + step % 4  # 2..5 rows: slots of different sizes, padding in the fast path's cache
        emb = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_()
        labels = torch.randint(0, C, (B,), generator=g)
        newest_first = pushed[::-1][:N * (M + 1)]  # rule 1: the memory before this step, its N(M+1) newest
        taken = newest_first[M::M + 1][:N] if epoch >= U else []  # rule 3; nothing is taken before epoch U
        want = reference(formula, loss, emb, labels, taken, virtual)
        want_grads = torch.autograd.grad(want, [emb, loss.proxies])
        got = mv(emb, labels, epoch)
        got_grads = torch.autograd.grad(got, [emb, loss.proxies])

        assert mv.num_taken == len(taken), step
        if step == U * spe:  # the first step of epoch U
            assert mv.num_taken == (N if fill == "full" else 0), step
        brings_rows, brings_proxies = virtual in ("both", "embeddings"), virtual != "embeddings"
        assert mv.num_classes_in_use == C * (1 + len(taken) * brings_proxies)
        assert mv.num_embeddings_in_use == B + brings_rows * sum(len(e) for e, _, _ in taken)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"loss at step {step}")
        for what, x, y in zip(("embedding", "proxy"), got_grads, want_grads):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=f"{what} gradient at step {step}")

        if epoch >= pushes_from:
            pushed.append((emb.detach().clone(), labels, loss.proxies.detach().clone()))
        assert int(mv.num_pushed) == len(pushed), step
        with torch.no_grad():  # every step's snapshot differs
            loss.proxies.add_(0.3 * torch.randn(loss.proxies.shape, generator=g, dtype=torch.float64))
    assert len(pushed) > N * (M + 1)  # the ring buffer wrapped around


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("virtual", ["both", "embeddings", "proxies", "current"])
@pytest.mark.parametrize("fill", ["curriculum", "full"])
@pytest.mark.parametrize("fast", [True, False])
def test_matches_reference(name, virtual, fill, fast):
    run_against_reference(name, fill, virtual, fast)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("N,M,U,spe", [(3, 1, 2, 3), (2, 4, 1, 10), (1, 0, 1, 1), (4, 2, 5, 4)])
def test_full_fill_other_shapes(fast, N, M, U, spe):
    """fill="full" with the memory filled exactly at epoch U (N(M+1) = U * spe), in one epoch, one step per epoch."""
    run_against_reference("normsoftmax", "full", "both", fast, N=N, M=M, U=U, spe=spe, epochs=U + 3)


def test_full_fill_with_a_margin_through_the_fast_path():
    """CosFace's margin on past targets is in the fast path's cache, which fill="full" fills only at epoch U."""
    from memvir.losses import CosFace

    torch.manual_seed(0)
    C, D, N, M, U, spe = 4, 6, 2, 1, 2, 3
    loss = CosFace(C, D, scale=16.0, margin=0.2).double()
    fast = MemVir(loss, N, M, warmup_epochs=U, fill="full", steps_per_epoch=spe, fast=True)
    plain = MemVir(loss, N, M, warmup_epochs=U, fill="full", steps_per_epoch=spe, fast=False)
    g = torch.Generator().manual_seed(1)
    for step in range((U + 2) * spe):
        emb = torch.randn(3, D, generator=g, dtype=torch.float64)
        labels = torch.randint(0, C, (3,), generator=g)
        a, b = fast(emb, labels, step // spe), plain(emb, labels, step // spe)
        assert fast.num_taken == plain.num_taken == (N if step >= U * spe else 0)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"step {step}")
        with torch.no_grad():
            loss.proxies.add_(0.3 * torch.randn(loss.proxies.shape, generator=g, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_full_fill_refuses_a_short_warmup():
    """N=3, M=1: 6 steps to record; one epoch of 5 steps is too short, and the line names the flags."""
    with pytest.raises(ValueError, match=r"--mem_fill=full.*N\*\(M\+1\)=6.*--warm_epoch=1.*--warm_epoch >= 2"):
        MemVir(NormSoftmax(3, 4), 3, 1, warmup_epochs=1, fill="full", steps_per_epoch=5)
    with pytest.raises(ValueError, match="--warm_epoch=0"):
        MemVir(NormSoftmax(3, 4), 1, 0, warmup_epochs=0, fill="full", steps_per_epoch=100)
    assert MemVir(NormSoftmax(3, 4), 3, 1, warmup_epochs=2, fill="full", steps_per_epoch=5).fill_from == 0
    assert MemVir(NormSoftmax(3, 4), 0, 1, warmup_epochs=0, fill="full", steps_per_epoch=5).fill_from == 0  # N=0


@pytest.mark.parametrize("kwargs,match", [(dict(fill="half"), "MemVir fill"),
                                          (dict(virtual="labels"), "MemVir virtual"),
                                          (dict(fill="full"), "steps_per_epoch"),
                                          (dict(fill="full", steps_per_epoch=0), "steps_per_epoch")])
def test_bad_ablation_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemVir(NormSoftmax(3, 4), 2, 1, warmup_epochs=3, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Through memvir.train: a tiny glyph run for each mode (tests/test_train.py's TINY: 4 steps per epoch)

TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
            progress=False, memvir=True, mem_num_step=2, mem_step_gap=1, warm_epoch=2, epochs=4, check_epoch=4,
            max_to_keep=4)  # every epoch's checkpoint kept: the tests read the memory at epochs 1 and 2
STEPS_PER_EPOCH = math.ceil(100 / 32)  # 10 train classes x 10 images, the last batch short


def steps_csv(run):
    with open(os.path.join(run, "steps.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("fill,virtual", [("full", "both"), ("curriculum", "embeddings"), ("curriculum", "proxies"),
                                          ("full", "proxies"), ("curriculum", "current")])
def test_train_runs_each_mode(tmp_path, capsys, fill, virtual):
    res = train({**TINY, "mem_fill": fill, "mem_virtual": virtual, "save_path": str(tmp_path)})
    assert res["finished"] and math.isfinite(res["last"]["recall@1"])
    first = capsys.readouterr().out.splitlines()[0]  # the run's first line names the ablation (only when set)
    assert ("--mem_fill=full" in first) == (fill == "full") and "--mem_fill=curriculum" not in first, first
    assert (f"--mem_virtual={virtual}" in first) == (virtual != "both") and "xbm_size" not in first, first
    rows = steps_csv(str(tmp_path))
    assert len(rows) == 4 * STEPS_PER_EPOCH
    by_epoch = {e: [r for r in rows if int(r["epoch"]) == e] for e in range(1, 5)}
    assert all(int(r["num_taken"]) == 0 for e in (1, 2) for r in by_epoch[e])  # the warm-up: nothing taken
    first = [int(r["num_taken"]) for r in by_epoch[3]]
    assert first[0] == (2 if fill == "full" else 0)  # full: all N there at once; curriculum: the memory is empty
    assert int(by_epoch[4][0]["num_taken"]) == 2
    C = 10
    B = [32, 32, 32, 4] * 4  # the batches of an epoch
    for i, r in enumerate(rows):
        k = int(r["num_taken"])
        assert int(r["num_classes_in_use"]) == C * (1 + (k if virtual != "embeddings" else 0))
        if virtual == "proxies":
            assert int(r["num_embeddings_in_use"]) == B[i]
    if fill == "full":  # pushes from epoch 2 (1-based): one epoch of 4 steps before U = 2 fills the N(M+1) = 4 slots
        ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00002.pt", weights_only=True)
        assert int(ckpt["criterion"]["num_pushed"]) == STEPS_PER_EPOCH


def test_train_steps_per_epoch_is_the_loaders():
    """experiment.train_steps_per_epoch against the steps one epoch of memvir.train takes (counted in steps.csv)."""
    from memvir.resolve import resolve_config
    from memvir.experiment import build_splits, train_steps_per_epoch

    cfg = resolve_config({**TINY, "mem_fill": "full"})
    assert train_steps_per_epoch(cfg, build_splits(cfg)) == STEPS_PER_EPOCH
    assert train_steps_per_epoch(resolve_config({**TINY, "batch_size": 8, "n_instance": 2}),
                                 build_splits(cfg)) == 100 // 8  # class-balanced batches: full ones only


def test_train_refuses_a_short_warmup(tmp_path):
    with pytest.raises(ValueError, match="--mem_fill=full.*--warm_epoch=1"):
        train({**TINY, "mem_fill": "full", "mem_num_step": 5, "warm_epoch": 1, "save_path": str(tmp_path)})


class Killed(Exception):
    pass


def test_full_fill_resumes_bitwise(tmp_path):
    """Killed in the middle of the warm-up's recording (epoch 2 of a warm-up of 2, 6 slots of 4-step epochs),
    the run resumes from the epoch-1 checkpoint, memory half full, and ends with the uninterrupted run's tensors."""
    flags = {**TINY, "mem_num_step": 3, "deterministic": True, "mem_fill": "full"}
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    train({**flags, "save_path": ref})

    def kill(step, epoch, loss):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train({**flags, "save_path": run}, on_step=kill)
    assert int(torch.load(os.path.join(run, "checkpoints", "epoch_00001.pt"),
                          weights_only=True)["criterion"]["num_pushed"]) == STEPS_PER_EPOCH  # pushed in epoch 1
    train({**flags, "save_path": run})
    a, b = (torch.load(os.path.join(r, "checkpoints", "epoch_00004.pt"), weights_only=True) for r in (ref, run))
    for part in ("model", "criterion"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert [r["loss"] for r in steps_csv(ref)] == [r["loss"] for r in steps_csv(run)]


@pytest.mark.parametrize("N,M,U,epochs", [(2, 1, 2, 4), (3, 2, 1, 4), (4, 3, 3, 4)])
def test_memory_schedule_counts_what_the_run_counted(tmp_path, N, M, U, epochs):
    """The chapters' arithmetic of a full memory (memvir.report.memory_schedule) against a run's own step count."""
    from memvir.report import memory_schedule

    params = {**TINY, "mem_num_step": N, "mem_step_gap": M, "warm_epoch": U, "epochs": epochs, "val_classes": 0}
    res = train({**params, "save_path": str(tmp_path)})
    with open(os.path.join(tmp_path, "metrics.json")) as fh:
        recorded = __import__("json").load(fh)["full_memory_steps"]
    got = memory_schedule(params)
    assert got["steps_per_epoch"] == STEPS_PER_EPOCH and got["span"] == N * (M + 1)
    assert got["full_memory_steps"] == recorded, (got, recorded)
    assert res["finished"]


def test_current_copies_leave_the_embeddings_gradient_as_the_baselines():
    """What the "current proxies" control measures (issue 30, item 5): k detached copies of all C current proxies, the
    sample's own class included, multiply each term of Norm-SoftMax's denominator by k + 1. Written out: the loss is
    the baseline's plus log(k + 1), the embeddings' gradient is the baseline's, and the proxies' gradient is not
    (their repulsion shrinks by 1 / (k + 1), their attraction does not)."""
    torch.manual_seed(0)
    C, D, B = 6, 8, 12
    loss = NormSoftmax(num_classes=C, embedding_size=D, scale=8.0).double()
    criterion = MemVir(loss, num_steps=2, step_gap=0, warmup_epochs=0, virtual="current")
    for step in range(3):  # fill the memory: two steps taken from the third on
        x = torch.randn(B, D, dtype=torch.float64)
        criterion(x, torch.randint(0, C, (B,)), epoch=0)
    k = len(criterion.taken_steps())
    assert k == 2
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, C, (B,))
    got = criterion(x, labels, epoch=0)
    (gx, gp) = torch.autograd.grad(got, (x, loss.proxies))
    x0 = x.detach().clone().requires_grad_(True)
    p0 = loss.proxies.detach().clone().requires_grad_(True)
    want = norm_softmax(x0, labels, p0, loss)  # the baseline, by the formula
    (wx, wp) = torch.autograd.grad(want, (x0, p0))
    assert got.item() == pytest.approx(want.item() + math.log(k + 1), rel=1e-12)
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(gp, wp)
