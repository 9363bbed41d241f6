"""XBM's reference row (memvir/xbm.py `Contrastive`, --loss Contrastive --xbm_size K): the contrastive loss and the
cross-batch memory against a formula written here, its flags, and training runs that finish and resume exactly.

The oracle reads PML's definitions (pytorch-metric-learning 2.x: ContrastiveLoss, AvgNonZeroReducer,
CrossBatchMemory) and writes them out: cosines s_ij of unit rows; positive pairs (same label, j not i itself) cost
1 - s_ij, negative pairs s_ij - margin; each term is the mean of its pair losses > 0 (0 when none), and the two
terms add. With the memory, the reference rows are the last K rows enqueued since epoch U, the batch's own
(detached) copies included, and the pair of a row with its own copy is no pair.
"""
import csv
import json
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytorch_metric_learning")

from memvir.resolve import resolve_config  # noqa: E402
from memvir.registry import build_loss, canonical_loss_name, default_scale, loss_class  # noqa: E402
from memvir.memory import MemVir  # noqa: E402
from memvir.xbm import Contrastive  # noqa: E402
from memvir.train import train  # noqa: E402

C, D = 4, 6


def contrastive_by_hand(x, labels, ref, ref_labels, self_pairs, margin=0.5):
    """The loss of batch rows x (B, D) against reference rows ref (R, D); self_pairs (B, R) marks no-pairs."""
    s = F.normalize(x, dim=1) @ F.normalize(ref, dim=1).T  # (B, R) cosines
    same = labels[:, None] == ref_labels[None, :]  # (B, R)
    pos = (1 - s)[same & ~self_pairs]
    neg = (s - margin)[~same]
    total = x.sum() * 0
    for costs in (pos[pos > 0], neg[neg > 0]):
        if len(costs):
            total = total + costs.mean()
    return total


def batch(seed, B=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype), torch.randint(0, C, (B,), generator=g)


@pytest.mark.parametrize("margin", [0.5, 0.1])
def test_contrastive_equals_the_formula_on_the_batch(margin):
    """Value and gradient; the rows come un-normalised (the loss scores cosines) and span both hinges."""
    loss = Contrastive(C, D, margin=margin)
    for seed in range(5):
        x, labels = batch(seed)
        x = x * (1 + torch.arange(8, dtype=x.dtype))[:, None]  # different norms
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = loss(a, labels)
        want = contrastive_by_hand(b, labels, b, labels, torch.eye(8, dtype=torch.bool), margin)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
        assert float(want.detach()) > 0
        got.backward(), want.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
        assert loss.num_embeddings_in_use == 8


def test_contrastive_counts_only_the_pairs_that_cost():
    """Unit rows: a positive pair at cosine 1 and a negative pair below the margin cost nothing and are not averaged."""
    e = torch.tensor([[1.0, 0], [1.0, 0], [0.6, 0.8], [0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    loss = Contrastive(2, 2)
    # positives: (0,1), (1,0) cost 0; (0,2), (2,0), (1,2), (2,1) cost 1 - 0.6. Negatives (x, 3): cosines 0, 0, 0.8:
    # only (2,3) and (3,2) cost 0.8 - 0.5.
    assert float(loss(e, labels)) == pytest.approx(0.4 + 0.3, rel=1e-12)


def test_memory_after_the_warm_up_equals_the_formula_against_the_remembered_rows():
    """K=10 rows, batches of 4 (the ring wraps inside a batch), U=2: the batch alone in epochs 0-1, then the memory."""
    K, U, B = 10, 2, 4
    xbm = Contrastive(C, D, memory_size=K, warmup_epochs=U)
    remembered, rows_in = [], []  # (emb, label) of every row enqueued since epoch U, oldest first
    for step, epoch in enumerate([0, 0, 1, 2, 2, 2, 3, 3, 3, 3]):
        x, labels = batch(step, B)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = xbm(a, labels, epoch=epoch)
        if epoch < U:
            want = contrastive_by_hand(b, labels, b, labels, torch.eye(B, dtype=torch.bool))
        else:
            remembered += list(zip(b.detach(), labels))
            ref = remembered[-K:]  # the ring keeps the newest K rows; the batch is the last B of them
            R = len(ref)
            ref_emb, ref_labels = torch.stack([r[0] for r in ref]), torch.stack([r[1] for r in ref])
            self_pairs = torch.zeros(B, R, dtype=torch.bool)
            self_pairs[torch.arange(B), R - B + torch.arange(B)] = True
            want = contrastive_by_hand(b, labels, ref_emb, ref_labels, self_pairs)
        rows_in.append(xbm.num_embeddings_in_use)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12), (step, epoch)
        got.backward(), want.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert rows_in == [4, 4, 4, 4, 8, 10, 10, 10, 10, 10]


def test_the_memory_and_its_position_are_in_the_state_dict(tmp_path):
    """A copy loaded from a saved state scores the next batches as the original; one without the position does not."""
    xbm = Contrastive(C, D, memory_size=10, warmup_epochs=0)
    for step in range(4):  # 16 rows into 10 slots: filled, position 6
        xbm(*batch(step, 4), epoch=0)
    torch.save(xbm.state_dict(), tmp_path / "xbm.pt")
    state = torch.load(tmp_path / "xbm.pt", weights_only=True)
    assert state["_extra_state"] == {"queue_idx": 6, "has_been_filled": True}
    copy, rows_only = copy_of(state), Contrastive(C, D, memory_size=10).double()
    rows_only.load_state_dict({**state, "_extra_state": {"queue_idx": 0, "has_been_filled": False}})
    assert not torch.equal(rows_only(*batch(4, 4), epoch=1), copy_of(state)(*batch(4, 4), epoch=1))
    for step in range(4, 8):
        x, labels = batch(step, 4)
        assert torch.equal(copy(x, labels, epoch=1), xbm(x, labels, epoch=1)), step


def copy_of(state):
    xbm = Contrastive(C, D, memory_size=10).double()  # float64 buffers: the saved rows are float64
    xbm.load_state_dict(state)
    return xbm


# ---- names, flags and refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Contrastive", "contrastive", "CONTRASTIVE"])
def test_contrastive_name_in_any_case(name):
    assert canonical_loss_name(name) == "Contrastive" and loss_class(name) is Contrastive
    assert default_scale(name) == 1.0  # a placeholder: no logit scale
    assert type(build_loss(name, C, D)) is Contrastive and list(build_loss(name, C, D).parameters()) == []
    cfg = resolve_config({"loss": name, "xbm_size": 128})
    assert (cfg.loss, cfg.scale, cfg.margin, cfg.xbm_size) == ("Contrastive", 1.0, 0.5, 128)


@pytest.mark.parametrize("flags,match", [
    ({"loss": "Norm_SoftMax", "xbm_size": 256}, r"^--xbm_size=256 with --loss Norm_SoftMax: XBM remembers"),
    ({"loss": "CosFace", "xbm_size": 256, "memvir": True, "mem_num_step": 2},
     r"^--xbm_size=256 with --loss CosFace --memvir 1"),
    ({"loss": "Contrastive", "xbm_size": 256, "memvir": True, "mem_num_step": 2}, r"^--xbm_size=256 .*--memvir"),
    ({"loss": "Contrastive", "memvir": True, "mem_num_step": 2}, r"^--memvir with --loss Contrastive: .*no proxies"),
    ({"loss": "Contrastive", "xbm_size": 64}, r"^--xbm_size=64: expected 0 or at least --batch_size=128"),
    ({"loss": "Contrastive", "xbm_size": -1}, r"^--xbm_size=-1: expected an integer >= 0"),
    ({"loss": "Contrastive", "scale": 4.0}, r"^--scale=4.0: Contrastive has no logit scale"),
    ({"loss": "Contrastive", "gamma": 0.1}, r"^--gamma=0.1: Contrastive has no gamma"),
    ({"loss": "Contrastive", "train_with_l2norm": False}, r"^--train_with_l2norm=False with --loss Contrastive"),
])
def test_bad_xbm_flags_are_refused_in_one_line(flags, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_config(flags)
    assert "\n" not in str(info.value)


def test_library_refusals():
    with pytest.raises(ValueError, match="MemVir loss: expected a loss with a `proxies` parameter"):
        MemVir(Contrastive(C, D), 2, 1)
    with pytest.raises(ValueError, match="Contrastive scale: a pair loss has no logit scale"):
        Contrastive(C, D, scale=2.0)
    with pytest.raises(ValueError, match=r"Contrastive margin: expected a number in \[0, 1\)"):
        Contrastive(C, D, margin=1.0)
    xbm = Contrastive(C, D, memory_size=4)
    with pytest.raises(ValueError, match="Contrastive epoch: expected an integer >= 0 with a memory, got None"):
        xbm(*batch(0, 4))
    with pytest.raises(ValueError, match="a batch of 8 rows needs memory_size >= 8, got 4"):
        xbm(*batch(0, 8), epoch=0)


# ---- training -------------------------------------------------------------------------------------------------------

# tests/test_train.py's tiny glyph run: 10 train classes of 10 images, batches of 32, 32, 32, 4 each epoch.
TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
            progress=False, loss="Contrastive")
# XBM from epoch 2 (U=1 counted from 0); 80 rows: full in the third step of epoch 2, mid-ring at its checkpoint.
RUN = dict(TINY, epochs=3, check_epoch=1, deterministic=True, xbm_size=80, warm_epoch=1, max_to_keep=0)


def steps_csv(run):
    with open(os.path.join(run, "steps.csv")) as fh:
        return list(csv.DictReader(fh))


def load(run, epoch):
    return torch.load(os.path.join(run, "checkpoints", f"epoch_{epoch:05d}.pt"), weights_only=True)


def test_contrastive_trains_without_proxies(tmp_path):
    res = train({**TINY, "epochs": 1, "save_path": str(tmp_path)})
    assert res["finished"] and res["last"]["recall@1"] > 0
    rows = steps_csv(tmp_path)
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    ckpt = load(tmp_path, 1)
    assert [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]][2] == 0  # the loss's group: empty
    assert [int(r["num_embeddings_in_use"]) for r in rows] == [32, 32, 32, 4]


class Killed(Exception):
    pass


def kill_at(step_to_kill):
    def on_step(step, epoch, loss):
        if step == step_to_kill:
            raise Killed
    return on_step


def test_xbm_run_uses_the_memory_from_epoch_u_and_resumes_exactly(tmp_path):
    ref_run, run = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    ref = train({**RUN, "save_path": ref_run})
    rows = steps_csv(ref_run)
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    # The rows the batch is scored against: the batch in epoch 1; then the memory filling up to 80 and staying so.
    sizes = [32, 32, 32, 4]
    filled = [min(sum((sizes * 2)[:i + 1]), 80) for i in range(8)]
    assert [int(r["num_embeddings_in_use"]) for r in rows] == sizes + filled
    assert load(ref_run, 2)["criterion"]["_extra_state"] == {"queue_idx": 20, "has_been_filled": True}

    with pytest.raises(Killed):  # in epoch 3: the resume starts from epoch 2's checkpoint, the ring mid-way
        train({**RUN, "save_path": run}, on_step=kill_at(10))
    res = train({**RUN, "save_path": run})
    strip = [{k: v for k, v in e.items() if k != "wall_time"} for e in res["evaluations"]]
    assert strip == [{k: v for k, v in e.items() if k != "wall_time"} for e in ref["evaluations"]]
    a, b = load(ref_run, 3), load(run, 3)
    assert a["criterion"].keys() == b["criterion"].keys() == {"xbm.embedding_memory", "xbm.label_memory",
                                                                "_extra_state"}
    assert a["criterion"]["_extra_state"] == b["criterion"]["_extra_state"]
    for key in ("xbm.embedding_memory", "xbm.label_memory"):
        assert torch.equal(a["criterion"][key], b["criterion"][key])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["loss"] for r in steps_csv(run)] == [r["loss"] for r in rows]
    with open(os.path.join(run, "metrics.json")) as fh:
        assert json.load(fh)["finished"]
