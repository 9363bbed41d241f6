"""Tests for memvir.metrics against numbers worked out by hand, a brute-force oracle and pytorch-metric-learning."""
import math

import numpy as np
import pytest
import torch

from memvir import metrics
from memvir.metrics import neighbour_metrics, nmi, query_gallery_metrics, retrieval_metrics

KEYS = ("r_precision", "map_at_r")


def unit_circle(degrees):
    """(n, 2) points on the unit circle at the given angles: cosine similarity = cos(angle difference)."""
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# ---------------------------------------------------------------- worked by hand

def test_hand_made_circle():
    # Six items on the unit circle (angle, class); ranking by cosine = ranking by angular distance.
    #   item:   0    1    2    3    4     5
    #   angle:  0   10   25   45   180   100
    #   class:  A    A    B    A    B     C (singleton)
    # Neighbours of each query (angular distance), the query itself left out:
    #   q0 (A, R=2): 1(10) 2(25) 3(45) 5(100) 4(180) -> A B A C B  rel = 1 0 1 0 0
    #                RP = 1/2;  MAP@R = (1/2)(P(1)*1 + P(2)*0) = 1/2;          first hit at rank 1
    #   q1 (A, R=2): 0(10) 2(15) 3(35) 5(90) 4(170)  -> A B A C B  same as q0: RP = 1/2, MAP = 1/2, rank 1
    #   q2 (B, R=1): 1(15) 3(20) 0(25) 5(75) 4(155)  -> A A A C B  RP = 0, MAP = 0,     first hit at rank 5
    #   q3 (A, R=2): 2(20) 1(35) 0(45) 5(55) 4(135)  -> B A A C B  RP = 1/2, MAP = (1/2)(P(2)*1) = 1/4, rank 2
    #   q4 (B, R=1): 5(80) 3(135) 2(155) 1(170) 0(180) -> C A B A A  RP = 0, MAP = 0,   first hit at rank 3
    #   q5 (C, R=0): never a hit; counts for Recall@K only.
    # Recall@1 = {q0,q1}/6, @2 adds q3, @4 adds q4, @8 adds q2 (rank 5).
    # R-Precision over the 5 queries with R > 0: (1/2 + 1/2 + 0 + 1/2 + 0)/5 = 0.3
    # MAP@R over the same:                        (1/2 + 1/2 + 0 + 1/4 + 0)/5 = 0.25
    emb = unit_circle([0, 10, 25, 45, 180, 100])
    emb *= np.array([1.0, 3.0, 0.5, 7.0, 2.0, 0.1])[:, None]  # cosine ignores the norms
    labels = np.array([0, 0, 1, 0, 1, 2])
    got = retrieval_metrics(emb, labels, ks=(1, 2, 4, 8))
    expected = {"recall@1": 2 / 6, "recall@2": 3 / 6, "recall@4": 4 / 6, "recall@8": 5 / 6,
                "r_precision": 0.3, "map_at_r": 0.25}
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
        assert isinstance(got[key], float)


def test_hand_made_map_at_r_three_relevant():
    # One query class with R = 3 shows MAP@R's weighting. Angles and classes:
    #   item:  0   1   2   3   4    5
    #   angle: 0  10  20  30  40  200
    #   class: A   B   A   B   A    A
    # q0 (A, R=3): 1(10) 2(20) 3(30) 4(40) 5(160) -> B A B A A ; top R=3: B A B
    #   RP = 1/3;  MAP@R = (1/3)(P(2)*1) = (1/3)(1/2) = 1/6
    # q1 (B, R=1): 0(10)=2(10) tie, both A, then 3(20) -> A A B ; RP = 0, MAP = 0, first hit rank 3
    # q2 (A, R=3): 1(10)=3(10) tie, both B, then 0(20)=4(20) both A, 5(180) -> B B A A A
    #   top 3: B B A -> RP = 1/3; MAP = (1/3)(P(3)*1) = (1/3)(1/3) = 1/9; first hit rank 3
    # q3 (B, R=1): 2(10)=4(10) both A, then 1(20) B -> A A B ; RP = 0, MAP = 0, first hit rank 3
    # q4 (A, R=3): 3(10) B, 2(20) A, 1(30) B, 0(40) A, 5(160) A -> B A B A A
    #   RP = 1/3, MAP = (1/3)(1/2) = 1/6; first hit rank 2
    # q5 (A, R=3): 0(160)=4(160) both A, then 1(170)=3(170) both B, then 2(180) A -> A A B B A ; top 3: A A B
    #   RP = 2/3, MAP = (1/3)(P(1) + P(2)) = (1/3)(1 + 1) = 2/3; first hit rank 1
    # Ties above are all between items of the same class, so the order among them does not matter.
    # Recall@1: q5 -> 1/6; Recall@2: q0, q4, q5 -> 3/6; Recall@4: all six -> 1.
    # RP  = (1/3 + 0 + 1/3 + 0 + 1/3 + 2/3)/6 = (5/3)/6 = 5/18
    # MAP = (1/6 + 0 + 1/9 + 0 + 1/6 + 2/3)/6 = (20/18)/6 = 10/54
    emb = unit_circle([0, 10, 20, 30, 40, 200])
    labels = np.array([0, 1, 0, 1, 0, 0])
    got = retrieval_metrics(emb, labels, ks=(1, 2, 4))
    assert got["recall@1"] == pytest.approx(1 / 6)
    assert got["recall@2"] == pytest.approx(3 / 6)
    assert got["recall@4"] == pytest.approx(1.0)
    assert got["r_precision"] == pytest.approx(5 / 18, abs=1e-6)
    assert got["map_at_r"] == pytest.approx(10 / 54, abs=1e-6)


@pytest.mark.parametrize("nbrs, self_idx, expected", [
    ([[5, 1, 2]], [5], [[1, 2]]),  # query first: dropped
    ([[1, 5, 2]], [5], [[1, 2]]),  # a tie put another item first: the query is still the one dropped
    ([[1, 2, 5]], [5], [[1, 2]]),  # query last
    ([[1, 2, 3]], [5], [[1, 2]]),  # a tie pushed the query out of the row: drop the deepest item instead
    ([[0, 1], [0, 1], [3, 2]], [0, 1, 9], [[1], [0], [3]]),  # mixed rows
])
def test_drop_self_neighbour_table(nbrs, self_idx, expected):
    out = metrics._drop_self(np.array(nbrs), np.array(self_idx))
    np.testing.assert_array_equal(out, np.array(expected))


# ---------------------------------------------------------------- duplicates and ties

def test_duplicates_same_class():
    # Five identical copies of class 0 and three of class 1, far apart: every query ties with its own copies.
    # Each query's R other items are its copies at similarity 1 -> Recall@K = RP = MAP@R = 1.
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    emb = np.stack([a] * 5 + [b] * 3)
    labels = np.array([0] * 5 + [1] * 3)
    got = retrieval_metrics(emb, labels, ks=(1, 2))
    assert got == {"recall@1": 1.0, "recall@2": 1.0, "r_precision": 1.0, "map_at_r": 1.0}


@pytest.mark.parametrize("ks", [(1, 2, 4, 8), (1,), (3, 20)])
def test_duplicates_of_other_classes_exclude_query_by_index(ks):
    # 30 identical copies of a, each in its own class 0..29; each class's one other item ("partner") lies near
    # -a, so from any copy the 29 other copies (all wrong classes) come first, whatever the order among the tie,
    # and the search (depth max(K)+1 <= 21 < 30) is shallower than the tie: the query itself may be pushed out of
    # its own row. A partner sees other partners (wrong classes) first and its copy last. One more class of two
    # close items at (0, 1, 0) finds itself at rank 1. So exactly 2 of the 62 queries hit, at rank 1, and
    # R = 1 everywhere: Recall@K = RP = MAP@R = 2/62 for every K < 29.
    # Removing "the first neighbour" instead of the query's own index would count the query as its own hit.
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0, 0.0])
    partners = -a + 0.05 * rng.normal(size=(30, 3))
    pair = np.array([[0.0, 1.0, 0.0], [0.0, 0.99, 0.1]])
    emb = np.concatenate([np.tile(a, (30, 1)), partners, pair])
    labels = np.concatenate([np.arange(30), np.arange(30), [30, 30]])
    got = retrieval_metrics(emb, labels, ks=ks)
    for k in ks:
        assert got[f"recall@{k}"] == pytest.approx(2 / 62)
    assert got["r_precision"] == pytest.approx(2 / 62)
    assert got["map_at_r"] == pytest.approx(2 / 62)


def test_no_query_can_find_anything():
    # All singletons: Recall@K is 0 (nothing to find) and RP / MAP@R are undefined (R = 0): NaN with a warning.
    emb = unit_circle([0, 90, 200])
    with pytest.warns(RuntimeWarning, match="NaN"):
        got = retrieval_metrics(emb, np.array([3, 4, 5]), ks=(1, 2))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 0.0
    assert math.isnan(got["r_precision"]) and math.isnan(got["map_at_r"])


# ---------------------------------------------------------------- brute-force oracle

def clustered(seed, sizes, dim=8, spread=0.6, label_base=0):
    """Random clustered embeddings: class i has sizes[i] items around a random centre; rows shuffled.

    Returns (emb (n, dim) float64 with random row norms, labels (n,) with gaps between values).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    cls = np.repeat(np.arange(len(sizes)), sizes)
    emb = centres[cls] + spread * rng.normal(size=(len(cls), dim))
    emb *= rng.uniform(0.2, 5.0, size=(len(cls), 1))
    order = rng.permutation(len(cls))
    return emb[order], (7 * cls - 40 + label_base)[order]


def ranked(query, gallery, query_labels, gallery_labels, exclude=None, depth=20):
    """Oracle ranking: full cosine matrix in float64, stable argsort; item exclude[i] removed from row i.

    Also checks that no two neighbours of different relevance are nearly tied in the top `depth` + 1 of a row,
    so float32 vs float64 rounding cannot reorder what matters and the oracle's answer is the only correct one.
    """
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sim = qn @ gn.T  # (n_q, n_g)
    rows = []
    for i in range(len(query)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if exclude is None or j != exclude[i]]
        top = np.array(order[:depth + 1])
        rel = gallery_labels[top] == query_labels[i]
        gaps = -np.diff(sim[i, top])
        assert np.all(gaps[rel[1:] != rel[:-1]] > 1e-6), "test data has a near-tie; pick another seed"
        rows.append(order)
    return rows


def oracle(rows, query_labels, gallery_labels, R, ks):
    """Per-query loops over the oracle ranking, straight from the definitions."""
    found = {k: 0 for k in ks}
    rp, ap = [], []
    for i, order in enumerate(rows):
        rel = [gallery_labels[j] == query_labels[i] for j in order]
        for k in ks:
            found[k] += any(rel[:k])
        r = R[i]
        if r > 0:
            rp.append(sum(rel[:r]) / r)
            ap.append(sum(sum(rel[:t + 1]) / (t + 1) for t in range(r) if rel[t]) / r)
    out = {f"recall@{k}": found[k] / len(rows) for k in ks}
    out["r_precision"] = float(np.mean(rp))
    out["map_at_r"] = float(np.mean(ap))
    return out


def random_sizes(seed, num_classes):
    """Unequal class sizes 1..12 with at least three singleton classes."""
    rng = np.random.default_rng(1000 + seed)
    sizes = rng.integers(1, 13, size=num_classes)
    sizes[:3] = 1
    return sizes


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("chunk_rows", [8192, 7])  # 7: many query chunks, the query's own index offset by each
def test_against_brute_force(seed, chunk_rows, monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_ROWS", chunk_rows)
    emb, labels = clustered(seed, random_sizes(seed, 25))
    ks = (1, 2, 4, 8, 16, 1000)  # 1000 > n - 1: every other item is searched
    n = len(labels)
    rows = ranked(emb, emb, labels, labels, exclude=np.arange(n))
    R = np.array([(labels == y).sum() - 1 for y in labels])
    expected = oracle(rows, labels, labels, R, ks)
    got = retrieval_metrics(emb, labels, ks=ks)
    assert 0.1 < expected["recall@1"] < 0.95  # the data is neither trivial nor hopeless
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_input_matches_numpy(seed):
    emb, labels = clustered(seed, random_sizes(seed, 10))
    want = retrieval_metrics(emb, labels)
    for t in (torch.tensor(emb, dtype=torch.float32), torch.tensor(emb, dtype=torch.float64, requires_grad=True)):
        got = retrieval_metrics(t, torch.tensor(labels))
        assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_query_gallery_against_brute_force(seed):
    # Query classes 0..14, gallery classes 3..19: queries of classes 0..2 have R = 0 (count as misses),
    # gallery classes 15..19 are distractors. The same centre is used on both sides.
    sizes = random_sizes(seed, 20) + 1
    emb, labels = clustered(seed, sizes)
    rng = np.random.default_rng(seed)
    to_query = rng.random(len(labels)) < 0.4
    cls = (labels + 40) // 7  # back to 0..19
    to_query &= cls < 15
    to_gallery = ~to_query & (cls >= 3)
    q, qy, g, gy = emb[to_query], labels[to_query], emb[to_gallery], labels[to_gallery]
    ks = (1, 10, 20, 40)
    rows = ranked(q, g, qy, gy, depth=41)
    R = np.array([(gy == y).sum() for y in qy])
    assert (R == 0).any() and (R > 0).any()
    expected = oracle(rows, qy, gy, R, ks)
    got = query_gallery_metrics(q, qy, g, gy, ks=ks)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_query_gallery_does_not_exclude_anything():
    # The same three points as query and gallery: each query finds itself first (an In-Shop query image is
    # never in the gallery, so nothing is removed). Classes A A B: R = 2, 2, 1.
    # q0 (0 deg, A): 0(0) A, 1(10) A, 2(90) B -> RP = 1, MAP = 1.  q1 likewise.  q2 (B): itself first -> 1, 1.
    emb = unit_circle([0, 10, 90])
    labels = np.array([0, 0, 1])
    got = query_gallery_metrics(emb, labels, emb, labels, ks=(1,))
    assert got == {"recall@1": 1.0, "r_precision": 1.0, "map_at_r": 1.0}


# ---------------------------------------------------------------- pytorch-metric-learning as a second opinion

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pytorch_metric_learning(seed):
    faiss = pytest.importorskip("faiss")
    pml_acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    pml_inf = pytest.importorskip("pytorch_metric_learning.utils.inference")
    emb, labels = clustered(seed, random_sizes(seed, 25))
    ranked(emb, emb, labels, labels, exclude=np.arange(len(labels)))  # check: no near-ties
    # pml's FaissKNN searches L2 by default on the raw vectors: give it unit vectors and an inner-product index,
    # the same cosine. With reference=None it searches the query set itself and drops each query by index;
    # k="max_bin_count" is the depth R-Precision and MAP@R need. It leaves singleton-class queries out of all
    # three metrics, where our Recall@1 counts them as misses.
    unit = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    calc = pml_acc.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count",
        device=torch.device("cpu"), knn_func=pml_inf.FaissKNN(index_init_fn=faiss.IndexFlatIP))
    theirs = calc.get_accuracy(torch.from_numpy(unit), torch.from_numpy(labels))
    ours = retrieval_metrics(emb, labels, ks=(1,))
    counts = {y: (labels == y).sum() for y in labels}
    n_found = sum(counts[y] > 1 for y in labels)  # queries with R > 0
    assert n_found < len(labels)  # there are singletons, so the two conventions differ
    assert ours["recall@1"] * len(labels) == pytest.approx(theirs["precision_at_1"] * n_found, abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-9)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)


# ---------------------------------------------------------------- bad input

GOOD = unit_circle([0, 10, 20, 30])
GOOD_LABELS = np.array([0, 0, 1, 1])


def with_row(value, row=2):
    emb = GOOD.copy()
    emb[row] = value
    return emb


@pytest.mark.parametrize("emb, labels, ks, match", [
    (GOOD[:, 0], GOOD_LABELS, (1,), r"emb: expected a 2-D array"),
    (GOOD[None], GOOD_LABELS, (1,), r"emb: expected a 2-D array"),
    (GOOD, GOOD_LABELS[:3], (1,), r"labels: expected a 1-D array of length 4"),
    (GOOD, GOOD_LABELS[:, None], (1,), r"labels: expected a 1-D array of length 4"),
    (GOOD, GOOD_LABELS.astype(float), (1,), r"labels: expected integer"),
    (with_row(np.nan), GOOD_LABELS, (1,), r"emb: expected finite values, row 2"),
    (with_row(np.inf), GOOD_LABELS, (1,), r"emb: expected finite values, row 2"),
    (with_row(0.0), GOOD_LABELS, (1,), r"emb: row 2 has norm 0"),
    (GOOD[:1], GOOD_LABELS[:1], (1,), r"emb: expected at least 2 items"),
    (GOOD[:0], GOOD_LABELS[:0], (1,), r"emb: expected at least 2 items"),
    (GOOD[:, :0], GOOD_LABELS, (1,), r"emb: expected D >= 1"),
    (GOOD.astype(str), GOOD_LABELS, (1,), r"emb: expected real numbers"),
    (GOOD, GOOD_LABELS, (0,), r"ks: expected"),
    (GOOD, GOOD_LABELS, (1, -2), r"ks: expected"),
    (GOOD, GOOD_LABELS, (1.5,), r"ks: expected"),
    (GOOD, GOOD_LABELS, (True,), r"ks: expected"),
    (GOOD, GOOD_LABELS, (), r"ks: expected"),
    (GOOD, GOOD_LABELS, 4, r"ks: expected"),
])
def test_bad_input(emb, labels, ks, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(emb, labels, ks=ks)


@pytest.mark.parametrize("args, match", [
    ((GOOD, GOOD_LABELS, GOOD[:, :1], GOOD_LABELS), r"same D"),
    ((GOOD[:0], GOOD_LABELS[:0], GOOD, GOOD_LABELS), r"query_emb: expected at least 1 item"),
    ((GOOD, GOOD_LABELS, GOOD[:0], GOOD_LABELS[:0]), r"gallery_emb: expected at least 1 item"),
    ((GOOD, GOOD_LABELS, GOOD, GOOD_LABELS[:2]), r"gallery_labels: expected a 1-D array of length 4"),
    ((GOOD, GOOD_LABELS[:2], GOOD, GOOD_LABELS), r"query_labels: expected a 1-D array of length 4"),
    ((with_row(0.0, 1), GOOD_LABELS, GOOD, GOOD_LABELS), r"query_emb: row 1 has norm 0"),
    ((GOOD, GOOD_LABELS, with_row(np.nan, 3), GOOD_LABELS), r"gallery_emb: expected finite values, row 3"),
])
def test_query_gallery_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        query_gallery_metrics(*args)


def test_use_gpu_without_a_gpu_is_an_error():
    import faiss
    if faiss.get_num_gpus() > 0 and torch.cuda.is_available():
        pytest.skip("this machine has a GPU for faiss")
    with pytest.raises(ValueError, match="use_gpu=True"):
        retrieval_metrics(GOOD, GOOD_LABELS, use_gpu=True)


# ---------------------------------------------------------------- the pure function of a neighbour table

def test_neighbour_table_by_hand():
    # rel(i) of four queries, nearest first (the query itself already left out), and their R:
    #   q0  T F T F   R=2: top 2 = T F -> RP = 1/2; MAP@R = (1/2)(P(1)) = 1/2; first hit at rank 1.
    #                      (its hit at rank 3 is beyond R: it counts for Recall@4 only)
    #   q1  F T T F   R=3: top 3 = F T T -> RP = 2/3; MAP@R = (1/3)(P(2) + P(3)) = (1/3)(1/2 + 2/3) = 7/18; rank 2.
    #   q2  F F F T   R=1: top 1 = F -> RP = 0, MAP@R = 0; first hit at rank 4.
    #   q3  F F F F   R=0: a singleton: a miss for Recall@K, left out of RP and MAP@R.
    # Recall@1 = 1/4 (q0), Recall@2 = 2/4 (q0, q1), Recall@4 = 3/4 (q0, q1, q2).
    # RP = (1/2 + 2/3 + 0) / 3 = 7/18;  MAP@R = (1/2 + 7/18 + 0) / 3 = 8/27.
    T, F = True, False
    hits = np.array([[T, F, T, F], [F, T, T, F], [F, F, F, T], [F, F, F, F]])
    got = neighbour_metrics(hits, np.array([2, 3, 1, 0]), ks=(1, 2, 4))
    assert list(got) == ["recall@1", "recall@2", "recall@4", "r_precision", "map_at_r"]
    assert got["recall@1"] == pytest.approx(1 / 4)
    assert got["recall@2"] == pytest.approx(2 / 4)
    assert got["recall@4"] == pytest.approx(3 / 4)
    assert got["r_precision"] == pytest.approx(7 / 18)
    assert got["map_at_r"] == pytest.approx(8 / 27)
    # The same table as a torch bool tensor.
    assert neighbour_metrics(torch.from_numpy(hits), torch.tensor([2, 3, 1, 0]), ks=(1, 2, 4)) == got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbour_table_against_loops(seed):
    """Random tables against the definitions, one query at a time (R up to L, some R = 0)."""
    rng = np.random.default_rng(seed)
    Q, L = 40, 12
    hits = rng.random((Q, L)) < 0.3
    R = rng.integers(0, L + 1, size=Q)
    ks = (1, 3, 12)
    rp, ap = [], []
    for row, r in zip(hits, R):
        if r > 0:
            rp.append(row[:r].sum() / r)
            ap.append(sum(row[:t + 1].sum() / (t + 1) for t in range(r) if row[t]) / r)
    got = neighbour_metrics(hits, R, ks)
    for k in ks:
        assert got[f"recall@{k}"] == pytest.approx(np.mean([row[:k].any() for row in hits]), abs=1e-12)
    assert got["r_precision"] == pytest.approx(np.mean(rp), abs=1e-12)
    assert got["map_at_r"] == pytest.approx(np.mean(ap), abs=1e-12)


def test_neighbour_table_nothing_to_find_warns_at_the_caller():
    with pytest.warns(RuntimeWarning, match="NaN") as record:
        got = neighbour_metrics(np.zeros((3, 1), dtype=bool), np.zeros(3, dtype=int), ks=(1,))
    assert record[0].filename == __file__  # the warning names the caller's line, not metrics.py
    assert got["recall@1"] == 0.0 and math.isnan(got["r_precision"]) and math.isnan(got["map_at_r"])


def test_search_warning_still_names_the_caller():
    with pytest.warns(RuntimeWarning, match="NaN") as record:
        retrieval_metrics(unit_circle([0, 90, 200]), np.array([3, 4, 5]), ks=(1,))
    assert record[0].filename == __file__


HITS = np.array([[True, False], [False, True]])


@pytest.mark.parametrize("hits, R, ks, match", [
    (HITS.astype(int), [1, 1], (1,), r"hits: expected a 2-D bool array"),
    (HITS[0], [1, 1], (1,), r"hits: expected a 2-D bool array"),
    (HITS[:0], [], (1,), r"hits: expected at least one query"),
    (HITS, [1], (1,), r"num_relevant: expected a 1-D array of length 2"),
    (HITS, [1.0, 1.0], (1,), r"num_relevant: expected integer"),
    (HITS, [1, -1], (1,), r"num_relevant: expected counts >= 0"),
    (HITS, [3, 1], (1,), r"hits: expected at least max\(num_relevant\) = 3 columns"),
    (HITS, [1, 1], (0,), r"ks: expected"),
])
def test_neighbour_table_bad_input(hits, R, ks, match):
    with pytest.raises(ValueError, match=match):
        neighbour_metrics(hits, np.asarray(R), ks)


# ---------------------------------------------------------------- NMI (the official --do_nmi)

def blobs(seed, num_classes, per_class, dim=16, spread=0.05):
    """Well-separated clusters on random directions: (emb (n, dim), blob id (n,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    blob = np.repeat(np.arange(num_classes), per_class)
    return centres[blob] + spread * rng.normal(size=(len(blob), dim)), blob


def nmi_by_hand(a, b):
    """NMI(a, b) = I(a; b) / ((H(a) + H(b)) / 2), from the contingency table (natural logs)."""
    n = len(a)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0 / n)
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    entropy = lambda p: -(p[p > 0] * np.log(p[p > 0])).sum()  # noqa: E731
    return mi / ((entropy(pa) + entropy(pb)) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_nmi_separated_clusters_is_one(seed):
    emb, labels = blobs(seed, num_classes=8, per_class=15)
    labels = 5 * labels + 3  # gaps between label values: as many clusters as classes, whatever their values
    assert nmi(emb, labels, seed=seed) == pytest.approx(1.0, abs=1e-12)


def test_nmi_random_labels_is_near_zero():
    emb, _ = blobs(0, num_classes=4, per_class=500)
    labels = np.random.default_rng(1).integers(0, 4, size=len(emb))
    assert 0.0 <= nmi(emb, labels) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_noisy_labels_by_hand_and_scikit_learn(seed):
    """Clusters k-means cannot miss, labels with 30% of them reassigned at random: a value well below 1, equal to
    the formula on the known clusters and to scikit-learn's KMeans + NMI (the official code's pair)."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    emb, blob = blobs(seed, num_classes=5, per_class=40)
    rng = np.random.default_rng(seed)
    labels = blob.copy()
    noisy = rng.random(len(labels)) < 0.3
    labels[noisy] = rng.integers(0, 5, size=int(noisy.sum()))
    got = nmi(emb, labels, seed=seed)
    expected = nmi_by_hand(blob, labels)
    assert 0.2 < expected < 0.9
    assert got == pytest.approx(expected, abs=1e-9)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # the official code clusters features_l2
    km = sklearn_cluster.KMeans(n_clusters=5, n_init=10, random_state=seed).fit(unit)
    theirs = sklearn_metrics.normalized_mutual_info_score(labels, km.labels_, average_method="arithmetic")
    assert got == pytest.approx(theirs, abs=1e-12)


def test_nmi_is_seeded():
    emb, blob = blobs(3, num_classes=12, per_class=6, spread=0.8)  # overlapping: k-means depends on its start
    assert nmi(torch.from_numpy(emb), torch.from_numpy(blob), seed=7) == nmi(emb, blob, seed=7)
    # The seed reaches k-means: single runs from different starts end in different clusterings.
    assert len({nmi(emb, blob, seed=s, n_init=1) for s in range(5)}) > 1


@pytest.mark.parametrize("emb, labels, kwargs, match", [
    (GOOD, np.zeros(4, dtype=int), {}, r"labels: expected at least 2 classes"),
    (GOOD, GOOD_LABELS[:3], {}, r"labels: expected a 1-D array of length 4"),
    (GOOD, GOOD_LABELS.astype(float), {}, r"labels: expected integer"),
    (with_row(np.nan), GOOD_LABELS, {}, r"embeddings: expected finite values, row 2"),
    (with_row(0.0), GOOD_LABELS, {}, r"embeddings: row 2 has norm 0"),
    (GOOD, GOOD_LABELS, dict(n_init=0), r"n_init: expected an integer >= 1"),
    (GOOD, GOOD_LABELS, dict(max_iter=2.5), r"max_iter: expected an integer >= 1"),
    (GOOD, GOOD_LABELS, dict(seed=-1), r"seed: expected an integer >= 0"),
])
def test_nmi_bad_input(emb, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nmi(emb, labels, **kwargs)


def test_nmi_use_gpu_without_a_gpu_is_an_error():
    import faiss
    if faiss.get_num_gpus() > 0 and torch.cuda.is_available():
        pytest.skip("this machine has a GPU for faiss")
    with pytest.raises(ValueError, match="use_gpu=True"):
        nmi(GOOD, GOOD_LABELS, use_gpu=True)


# ---------------------------------------------------------------- geometry: uniformity and alignment (Wang & Isola)

def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def uniformity_by_loops(emb, t):
    """log of the mean over pairs i < j of exp(-t ||x_i - x_j||^2), x the unit rows: one pair at a time."""
    x = unit_rows(np.asarray(emb, dtype=np.float64))
    terms = [math.exp(-t * float(((x[i] - x[j]) ** 2).sum())) for i in range(len(x)) for j in range(i + 1, len(x))]
    return math.log(sum(terms) / len(terms))


def alignment_by_loops(emb, labels, alpha):
    """Mean over the same-label pairs i < j of ||x_i - x_j||^alpha, x the unit rows: one pair at a time."""
    x = unit_rows(np.asarray(emb, dtype=np.float64))
    terms = [float(np.sqrt(((x[i] - x[j]) ** 2).sum())) ** alpha
             for i in range(len(x)) for j in range(i + 1, len(x)) if labels[i] == labels[j]]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed, t", [(0, 2.0), (1, 0.5), (2, 7.0)])
def test_uniformity_against_loops(seed, t):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(30, 5)) * rng.uniform(0.1, 10.0, size=(30, 1))  # norms vary: normalised inside
    assert metrics.uniformity(emb, t=t) == pytest.approx(uniformity_by_loops(emb, t), abs=1e-12)


@pytest.mark.parametrize("entries", [1, 7, 100, 10**9])
def test_uniformity_blocks_against_scipy(entries, monkeypatch):
    """Blocks of one row, ragged blocks and one block: the same sum as scipy's pdist over every pair."""
    spatial = pytest.importorskip("scipy.spatial")
    special = pytest.importorskip("scipy.special")
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", entries)
    emb = np.random.default_rng(5).normal(size=(203, 8))
    d2 = spatial.distance.pdist(unit_rows(emb), "sqeuclidean")  # (n(n-1)/2,)
    for t in (2.0, 900.0):  # at t = 900 every exp(-t d^2) underflows a float64: only a log-sum-exp survives
        expected = special.logsumexp(-t * d2) - math.log(len(d2))
        assert metrics.uniformity(emb, t=t) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("t", [0.5, 2.0, 1000.0])
def test_uniformity_by_hand(t):
    # One point, many times (any norms): every d^2 = 0 -> log mean exp(0) = 0.
    same = np.array([[1.0, 2.0, 2.0]]) * np.array([[1.0], [3.0], [0.2], [50.0]])
    assert metrics.uniformity(same, t=t) == pytest.approx(0.0, abs=1e-12)
    # An antipodal pair: d^2 = 4 -> -4t, the lowest value there is.
    assert metrics.uniformity(unit_circle([30, 210]), t=t) == pytest.approx(-4 * t, abs=1e-9)
    # Three points 120 degrees apart: every chord^2 = 2 - 2 cos(120) = 3 -> -3t.
    assert metrics.uniformity(unit_circle([0, 120, 240]), t=t) == pytest.approx(-3 * t, abs=1e-9)
    # A square: 4 sides with d^2 = 2, 2 diagonals with d^2 = 4 -> log((4 e^{-2t} + 2 e^{-4t}) / 6)
    #         = -2t + log((4 + 2 e^{-2t}) / 6).
    assert metrics.uniformity(unit_circle([0, 90, 180, 270]), t=t) == pytest.approx(
        -2 * t + math.log((4 + 2 * math.exp(-2 * t)) / 6), abs=1e-9)


def test_uniformity_is_lower_when_spread():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(200, 16))
    bunched = rng.normal(size=(1, 16)) + 0.1 * rng.normal(size=(200, 16))
    assert metrics.uniformity(spread) < metrics.uniformity(bunched) - 1.0


@pytest.mark.parametrize("seed, alpha", [(0, 2.0), (1, 1.0), (2, 0.5), (3, 3)])
def test_alignment_against_loops(seed, alpha):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=40)
    labels[:3] = [50, 51, 52]  # singletons: no positive pair
    emb = rng.normal(size=(40, 6)) * rng.uniform(0.1, 10.0, size=(40, 1))
    assert metrics.alignment(emb, labels, alpha=alpha) == pytest.approx(alignment_by_loops(emb, labels, alpha),
                                                                        abs=1e-12)


def test_alignment_blocks_against_loops(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", 5)  # classes of up to ~20 items in blocks of a row or two
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, size=50)
    emb = rng.normal(size=(50, 4))
    assert metrics.alignment(emb, labels) == pytest.approx(alignment_by_loops(emb, labels, 2.0), abs=1e-12)


def test_alignment_by_hand():
    # A at 0 and 90 degrees: d = sqrt(2); B at 0 and 180: d = 2; C a singleton (no pair).
    emb = unit_circle([0, 90, 0, 180, 45]) * np.array([[2.0], [1.0], [5.0], [0.5], [1.0]])
    labels = np.array([7, 7, 3, 3, 1])
    assert metrics.alignment(emb, labels, alpha=2) == pytest.approx((2 + 4) / 2, abs=1e-12)
    assert metrics.alignment(emb, labels, alpha=1) == pytest.approx((math.sqrt(2) + 2) / 2, abs=1e-12)
    # Each pair counts once: a class of three on one point adds three pairs of distance 0.
    emb3 = np.concatenate([emb, unit_circle([10, 10, 10])])
    labels3 = np.concatenate([labels, [9, 9, 9]])
    assert metrics.alignment(emb3, labels3, alpha=2) == pytest.approx((2 + 4 + 0 + 0 + 0) / 5, abs=1e-12)


def test_alignment_without_pairs_is_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="no positive pair") as record:
        got = metrics.alignment(unit_circle([0, 90, 180]), np.array([0, 1, 2]))
    assert math.isnan(got) and record[0].filename == __file__


def test_geometry_torch_input_matches_numpy():
    rng = np.random.default_rng(4)
    emb, labels = rng.normal(size=(25, 6)), rng.integers(0, 4, size=25)
    t = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
    assert metrics.uniformity(t) == metrics.uniformity(emb)
    assert metrics.alignment(t, torch.tensor(labels)) == metrics.alignment(emb, labels)
    assert metrics.pca_variance_share(t, 3) == metrics.pca_variance_share(emb, 3)
    assert metrics.effective_rank(t) == metrics.effective_rank(emb)


# ---------------------------------------------------------------- geometry: PCA variance share and effective rank

def covariance_eigenvalues(emb):
    """Eigenvalues (descending) of numpy's covariance of the unit rows."""
    return np.linalg.eigvalsh(np.cov(unit_rows(np.asarray(emb, dtype=np.float64)), rowvar=False))[::-1]


def random_rotation(seed, D):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pca_share_and_effective_rank_against_eigvalsh(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(300, 12)) * np.geomspace(5.0, 0.1, 12) + rng.normal(size=12)  # anisotropic, off centre
    lam = covariance_eigenvalues(emb)  # (D,)
    for k in (1, 3, 12):
        assert metrics.pca_variance_share(emb, k) == pytest.approx(lam[:k].sum() / lam.sum(), abs=1e-12)
    # Roy & Vetterli: p = singular values of the centred matrix over their sum; s_i is proportional to sqrt(lam_i).
    p = np.sqrt(np.clip(lam, 0, None))
    p /= p.sum()
    assert metrics.effective_rank(emb) == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-10)


@pytest.mark.parametrize("r", [1, 2, 5, 7])
def test_equal_orthogonal_directions_have_effective_rank_r(r):
    """Columns 1..r of the 8 x 8 Hadamard matrix: orthogonal, mean 0, and every row of norm sqrt(r), so the
    normalisation scales them all equally; rotated into D = 10 and with rows scaled at random (normalised away)."""
    linalg = pytest.importorskip("scipy.linalg")
    D = 10
    cols = linalg.hadamard(8)[:, 1:r + 1].astype(np.float64)  # (8, r)
    emb = np.concatenate([cols, np.zeros((8, D - r))], axis=1) @ random_rotation(r, D)
    emb *= np.random.default_rng(r).uniform(0.5, 3.0, size=(8, 1))
    assert metrics.effective_rank(emb) == pytest.approx(r, abs=1e-9)
    for k in range(1, D + 1):
        assert metrics.pca_variance_share(emb, k) == pytest.approx(min(k, r) / r, abs=1e-12)


@pytest.mark.parametrize("r", [2, 3, 6])
def test_cross_polytope(r):
    # +-e_1, ..., +-e_r in D = 8: unit rows with mean 0 and covariance (2 / (2r - 1)) I_r: r equal directions.
    emb = np.concatenate([np.eye(8)[:r], -np.eye(8)[:r]])
    assert metrics.effective_rank(emb) == pytest.approx(r, abs=1e-12)
    assert metrics.pca_variance_share(emb, 1) == pytest.approx(1 / r, abs=1e-12)


def test_rank_one_set():
    # +-u with random signs and norms: after normalisation and centring, one direction holds all the variance.
    rng = np.random.default_rng(0)
    u = rng.normal(size=9)
    emb = np.outer(rng.choice([-1.0, 1.0], size=50) * rng.uniform(0.1, 5.0, size=50), u)
    assert metrics.pca_variance_share(emb, 1) == pytest.approx(1.0, abs=1e-12)
    assert metrics.effective_rank(emb) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [1, 4, 8, 16])
def test_isotropic_gaussian_shares_k_over_d(k):
    emb = np.random.default_rng(k).normal(size=(20000, 16))
    assert metrics.pca_variance_share(emb, k) == pytest.approx(k / 16, abs=0.03)
    assert 15.5 < metrics.effective_rank(emb) <= 16


def test_one_direction_has_no_variance():
    emb = np.array([[1.0, 2.0, 2.0]]) * np.array([[1.0], [3.0], [0.2]])
    with pytest.warns(RuntimeWarning, match="no variance") as record:
        assert math.isnan(metrics.pca_variance_share(emb, 1))
    assert record[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="no variance"):
        assert math.isnan(metrics.effective_rank(emb))


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.uniformity(GOOD, t=0), r"t: expected a positive number"),
    (lambda: metrics.uniformity(GOOD, t=-1.0), r"t: expected a positive number"),
    (lambda: metrics.uniformity(GOOD, t=float("inf")), r"t: expected a positive number"),
    (lambda: metrics.uniformity(GOOD[:1]), r"emb: expected at least 2 items"),
    (lambda: metrics.uniformity(with_row(0.0)), r"emb: row 2 has norm 0"),
    (lambda: metrics.alignment(GOOD, GOOD_LABELS, alpha=0), r"alpha: expected a positive number"),
    (lambda: metrics.alignment(GOOD, GOOD_LABELS, alpha=True), r"alpha: expected a positive number"),
    (lambda: metrics.alignment(GOOD, GOOD_LABELS[:3]), r"labels: expected a 1-D array of length 4"),
    (lambda: metrics.alignment(with_row(np.nan), GOOD_LABELS), r"emb: expected finite values, row 2"),
    (lambda: metrics.pca_variance_share(GOOD, 0), r"k: expected an integer with 1 <= k <= D = 2"),
    (lambda: metrics.pca_variance_share(GOOD, 3), r"k: expected an integer with 1 <= k <= D = 2"),
    (lambda: metrics.pca_variance_share(GOOD, 1.0), r"k: expected an integer"),
    (lambda: metrics.pca_variance_share(GOOD[:1], 1), r"emb: expected at least 2 items"),
    (lambda: metrics.effective_rank(GOOD[:, 0]), r"emb: expected a 2-D array"),
])
def test_geometry_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
