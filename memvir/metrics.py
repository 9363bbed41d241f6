"""Retrieval metrics: Recall@K, R-Precision and MAP@R, from an exact cosine k-nearest-neighbour search; NMI; and
the geometry of the embedding space (uniformity, alignment, PCA variance share, effective rank).

The MemVir paper reports Recall@K (MemVir Sec. 4, following Song et al. 2016) and, like Musgrave et al.
("A Metric Learning Reality Check", ECCV 2020), R-Precision and MAP@R. For a query whose class has R other
items in the searched set, and rel(i) = 1 when its i-th neighbour shares its class:

    Recall@K    = 1 if any of the top K neighbours is relevant, else 0
    R-Precision = (number of relevant items among the top R) / R
    MAP@R       = (1/R) * sum_{i <= R} P(i) * rel(i),   P(i) = precision of the top i

each averaged over the queries. A query with R = 0 (a singleton class) cannot find anything: it counts as a
miss for Recall@K and is left out of R-Precision and MAP@R, whose denominator R would be 0 (the same
convention as pytorch-metric-learning's AccuracyCalculator). If no query has R > 0 those two are NaN, with a
warning.

The formulas are one pure function of a neighbour table, `neighbour_metrics(hits, num_relevant, ks)`: hits[i, j]
is rel(j+1) of query i, its neighbours nearest first with the query itself left out, and num_relevant[i] its R.
The search only builds that table: `retrieval_metrics` (every item a query against the others) and
`query_gallery_metrics` (In-Shop's queries against a separate gallery) feed it chunk by chunk.

Similarity is the cosine: rows are L2-normalised to float32 and compared by inner product with faiss, on the
GPU when faiss-gpu and CUDA are there. The search goes only as deep as the metrics need (the largest R or K,
plus one for the query itself) and runs in chunks of queries, so no n x n matrix is ever built: the Stanford
Online Products test set (60,502 x 512) costs a few hundred MB beyond its embeddings, and the time is close to
that of the bare faiss search (bench/evaluation.py measures both).

`nmi` is the official `--do_nmi`: k-means with as many clusters as classes, scored by normalised mutual
information (Song et al. 2016 report it beside Recall@K). The official code computes it but logs it nowhere.

The geometry says how the embeddings use the sphere, whatever the neighbours: Wang & Isola's (ICML 2020)
`uniformity` (log mean over pairs of exp(-t ||x_i - x_j||^2), lower = more spread) and `alignment` (mean
||x_i - x_j||^alpha over same-class pairs, lower = tighter classes), the `pca_variance_share` of the top k
principal components and Roy & Vetterli's (2007) `effective_rank` (how many directions carry the variance). All
four L2-normalise the rows first, in float64, since retrieval compares directions; uniformity and alignment are
exact over all pairs, block by block. The MemVir paper says it relieves a "strong focus on seen classes";
memvir.evaluation.embedding_diagnostics puts these numbers side by side for the train and the test classes.

Chapter: notebooks/04_evaluation.py, which builds these formulas by hand on a table small enough to print.
"""
import warnings

import faiss
import numpy as np
import torch

__all__ = ["neighbour_metrics", "retrieval_metrics", "query_gallery_metrics", "nmi", "uniformity", "alignment",
           "pca_variance_share", "effective_rank"]

# Rows per query chunk: shrunk for deep searches so a chunk's (rows, depth) arrays stay around 2**22 entries,
# and kept a multiple of faiss's BLAS query block (faiss.cvar.distance_compute_blas_query_bs = 4096), so that
# chunking adds no ragged blocks (each block is one pass over the gallery).
CHUNK_ROWS = 8192
CHUNK_ENTRIES = 2**22
FAISS_QUERY_BLOCK = 4096
GPU_MAX_K = 2048  # faiss-gpu's largest k for a flat index


def retrieval_metrics(emb, labels, ks=(1, 2, 4, 8), use_gpu=None):
    """Compute Recall@K, R-Precision and MAP@R with every item a query against all the others.

    The query itself is removed from its neighbour list by index, not by assuming it comes first, so exact
    duplicates (ties with the query) are handled: a duplicate of the same class counts as a hit like any other
    item. Queries of singleton classes count as misses for Recall@K and are left out of R-Precision and MAP@R.

    Args:
        emb: (n, D) embeddings, numpy array or torch tensor (any device, any real dtype); n >= 2. Need not be
            normalised; a row of norm 0 is an error.
        labels: (n,) integer class labels.
        ks: the K of each Recall@K, positive ints.
        use_gpu: None = GPU when faiss-gpu sees a GPU and torch.cuda is available; True = require it;
            False = CPU.

    Returns:
        dict: "recall@K" for each K, then "r_precision" and "map_at_r", python floats in [0, 1].

    MemVir Sec. 4 (Recall@K, as in Song et al. 2016); Musgrave et al. 2020 (R-Precision, MAP@R).

    Example: two classes on a line; item 1's nearest neighbour (item 2) is of the other class.

        >>> m = retrieval_metrics([[1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]], [0, 0, 1, 1], ks=(1, 2))
        >>> {k: round(v, 3) for k, v in m.items()}
        {'recall@1': 0.5, 'recall@2': 0.75, 'r_precision': 0.5, 'map_at_r': 0.5}
    """
    x = _normalised(emb, "emb")  # (n, D) float32, unit rows
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"emb: expected at least 2 items (each is a query against the others), got {n}")
    codes = _label_codes(labels, "labels", n)  # (n,) int64 in [0, C)
    ks = _check_ks(ks)
    counts = np.bincount(codes)  # (C,) items per class
    R = counts[codes] - 1  # (n,) other items of each query's class
    # Deep enough for the largest R and K after dropping the query itself; never deeper than n.
    depth = min(max(int(R.max()), max(ks)) + 1, n)
    return _evaluate(x, codes, x, codes, R, ks, depth, exclude_self=True, use_gpu=use_gpu)


def query_gallery_metrics(query_emb, query_labels, gallery_emb, gallery_labels, ks=(1, 10, 20, 40), use_gpu=None):
    """Compute Recall@K, R-Precision and MAP@R of queries searched in a separate gallery (In-Shop).

    Nothing is excluded: the gallery is a different set of images, so R is the number of gallery items of the
    query's class. Queries whose class has no gallery item count as misses for Recall@K and are left out of
    R-Precision and MAP@R.

    Args:
        query_emb: (n_q, D) query embeddings, numpy or torch.
        query_labels: (n_q,) integer labels.
        gallery_emb: (n_g, D) gallery embeddings, same D.
        gallery_labels: (n_g,) integer labels.
        ks: the K of each Recall@K, positive ints (In-Shop reports 1, 10, 20, 30, 40, 50).
        use_gpu: as in `retrieval_metrics`.

    Returns:
        dict: "recall@K" for each K, then "r_precision" and "map_at_r", python floats in [0, 1].

    MemVir Sec. 4 (In-Shop Clothes Retrieval: query and gallery split).
    """
    xq = _normalised(query_emb, "query_emb")  # (n_q, D)
    xg = _normalised(gallery_emb, "gallery_emb")  # (n_g, D)
    for name, x in (("query_emb", xq), ("gallery_emb", xg)):
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected at least 1 item, got shape {x.shape}")
    if xq.shape[1] != xg.shape[1]:
        raise ValueError(f"query_emb and gallery_emb: expected the same D, got {xq.shape[1]} and {xg.shape[1]}")
    q_labels = _labels_array(query_labels, "query_labels", xq.shape[0])
    g_labels = _labels_array(gallery_labels, "gallery_labels", xg.shape[0])
    ks = _check_ks(ks)
    # One code space for both sides, so equal labels get equal codes.
    _, codes = np.unique(np.concatenate([q_labels, g_labels]), return_inverse=True)
    q_codes, g_codes = codes[: len(q_labels)], codes[len(q_labels):]
    gallery_counts = np.bincount(g_codes, minlength=int(codes.max()) + 1)  # (C,) gallery items per class
    R = gallery_counts[q_codes]  # (n_q,)
    depth = min(max(int(R.max()), max(ks)), xg.shape[0])
    return _evaluate(xq, q_codes, xg, g_codes, R, ks, depth, exclude_self=False, use_gpu=use_gpu)


def neighbour_metrics(hits, num_relevant, ks=(1, 2, 4, 8)):
    """Compute Recall@K, R-Precision and MAP@R from a neighbour table: the formulas, without any search.

    Args:
        hits: (Q, L) bool; hits[i, j] is rel(j+1) of query i: True when its (j+1)-th nearest neighbour (nearest
            first, the query itself already left out) shares its class. L must be at least max(R); a Recall@K
            with K > L looks at all L columns (right when the table holds every candidate).
        num_relevant: (Q,) R_i, the number of items of query i's class among the candidates; 0 for a query that
            has none (it counts as a miss for Recall@K and is left out of R-Precision and MAP@R).
        ks: the K of each Recall@K, positive ints.

    Returns:
        dict: "recall@K" for each K, then "r_precision" and "map_at_r", python floats in [0, 1]; the last two
        NaN, with a RuntimeWarning, when no query has R > 0.

    Musgrave et al. 2020 (R-Precision, MAP@R); MemVir Sec. 4 (Recall@K).
    """
    if torch.is_tensor(hits):
        hits = hits.detach().cpu().numpy()
    hits = np.asarray(hits)
    if hits.ndim != 2 or hits.dtype != np.bool_:
        raise ValueError(f"hits: expected a 2-D bool array (Q, L), got shape {hits.shape} and dtype {hits.dtype}")
    if hits.shape[0] == 0:
        raise ValueError("hits: expected at least one query (row), got none")
    if torch.is_tensor(num_relevant):
        num_relevant = num_relevant.detach().cpu().numpy()
    R = np.asarray(num_relevant)
    if R.shape != (hits.shape[0],):
        raise ValueError(f"num_relevant: expected a 1-D array of length {hits.shape[0]} (one R per row of hits), "
                         f"got shape {R.shape}")
    if R.dtype.kind not in "iu":
        raise ValueError(f"num_relevant: expected integer counts, got dtype {R.dtype}")
    R = R.astype(np.int64)
    if (R < 0).any():
        raise ValueError(f"num_relevant: expected counts >= 0, got min {int(R.min())}")
    if int(R.max()) > hits.shape[1]:
        raise ValueError(f"hits: expected at least max(num_relevant) = {int(R.max())} columns (R-Precision and "
                         f"MAP@R look at the top R), got {hits.shape[1]}")
    ks = _check_ks(ks)
    return _finish(_sums(hits, R, ks), ks, hits.shape[0], R, stacklevel=3)  # warn at our caller


def _sums(hits, R, ks):
    """Per-table sums of the metrics (vectorised numpy), to add up over chunks of queries.

    Args:
        hits: (c, L) bool rel(i) of each query, nearest first.
        R: (c,) int number of relevant items of each query.
        ks: tuple of positive ints.

    Returns:
        (found, rp_sum, map_sum): queries with a hit in the top K for each K, and the sums of R-Precision and
        of the average precision over the queries with R > 0.
    """
    # Recall@K needs only the rank of the first hit: one pass over the row, however many Ks.
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.iinfo(np.int64).max)  # (c,)
    found = {k: int((first_hit <= k).sum()) for k in ks}
    r_max = int(R.max())
    if r_max == 0:  # no query here has anything to find: nothing to add to RP and MAP@R
        return found, 0.0, 0.0

    # R-Precision and MAP@R look at the top R only, usually far fewer columns than the largest K.
    top = hits[:, :r_max]  # (c, r_max)
    rank = np.arange(1, r_max + 1)  # (r_max,) i = 1..r_max
    rel = top & (rank[None, :] <= R[:, None])  # (c, r_max) rel(i) for i <= R
    correct = np.cumsum(rel, axis=1)  # (c, r_max) relevant among the top i
    has_r = R > 0
    r_safe = np.maximum(R, 1)  # rows with R = 0 have no rel and are dropped below
    rp_sum = float((correct[:, -1] / r_safe)[has_r].sum())  # relevant among the top R, over R
    ap = (correct / rank * rel).sum(axis=1) / r_safe  # (c,) (1/R) sum_i P(i) rel(i)
    return found, rp_sum, float(ap[has_r].sum())


def _finish(sums, ks, n_q, R, stacklevel):
    """Turn the sums of `_sums` over all n_q queries into the averaged metrics; warn `stacklevel` frames up."""
    found, rp_sum, map_sum = sums
    out = {f"recall@{k}": found[k] / n_q for k in ks}
    n_scored = int((R > 0).sum())
    if n_scored == 0:
        warnings.warn("no query has another item of its class to find: r_precision and map_at_r are NaN",
                      RuntimeWarning, stacklevel=stacklevel)
        out["r_precision"] = out["map_at_r"] = float("nan")
    else:
        out["r_precision"] = rp_sum / n_scored
        out["map_at_r"] = map_sum / n_scored
    return out


def _evaluate(xq, q_codes, xg, g_codes, R, ks, depth, exclude_self, use_gpu):
    """Search each chunk of queries `depth` deep, build its neighbour table and add up its metric sums."""
    search = _searcher(xg, depth, use_gpu)
    n_q = xq.shape[0]
    rows = max(1, min(CHUNK_ROWS, CHUNK_ENTRIES // depth))
    if rows > FAISS_QUERY_BLOCK:
        rows -= rows % FAISS_QUERY_BLOCK  # whole faiss blocks
    found = {k: 0 for k in ks}  # queries with a hit in the top K
    rp_sum = map_sum = 0.0
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        nbrs = search(xq[start:stop])  # (c, depth) gallery indices, most similar first
        if exclude_self:
            nbrs = _drop_self(nbrs, np.arange(start, stop))  # (c, depth - 1)
        hits = g_codes[nbrs] == q_codes[start:stop, None]  # (c, L) the neighbour table: rel(i)
        chunk_found, chunk_rp, chunk_map = _sums(hits, R[start:stop], ks)
        for k in ks:
            found[k] += chunk_found[k]
        rp_sum += chunk_rp
        map_sum += chunk_map
    # Warn at the caller of retrieval_metrics / query_gallery_metrics (_finish, _evaluate, they, it).
    return _finish((found, rp_sum, map_sum), ks, n_q, R, stacklevel=4)


def nmi(embeddings, labels, seed=0, n_init=10, max_iter=300, use_gpu=None):
    """Compute the NMI of a k-means clustering of the embeddings with their classes (the official `--do_nmi`).

    As the official utils/evaluation.py: the L2-normalised embeddings are clustered by k-means into as many
    clusters as there are classes, and scikit-learn's normalized_mutual_info_score (arithmetic mean) compares the
    clusters with the labels. The official code clusters with scikit-learn's KMeans at its defaults of the time
    (k-means++ initialisation, 10 initialisations keeping the lowest inertia, at most 300 iterations) and no seed;
    here faiss runs the same algorithm (k-means++, `n_init` runs, the lowest objective kept, at most `max_iter`
    Lloyd iterations, stopping early once converged), seeded, and on the GPU when there is one. The cost grows
    as n * k * D per iteration and per run: large test sets (SOP: 60,502 items, 11,316 clusters) want a GPU, or
    n_init=1 for a tenth of it.

    Args:
        embeddings: (n, D) embeddings, numpy array or torch tensor; need not be normalised; a row of norm 0 is an
            error.
        labels: (n,) integer class labels, at least 2 classes.
        seed: seed of the k-means initialisation.
        n_init: k-means runs from different initialisations; the one with the lowest objective is scored.
        max_iter: the most Lloyd iterations of each run.
        use_gpu: as in `retrieval_metrics`.

    Returns:
        float: NMI in [0, 1].
    """
    x = _normalised(embeddings, "embeddings")  # (n, D) float32 unit rows, as the official features_l2
    codes = _label_codes(labels, "labels", x.shape[0])  # (n,) in [0, k)
    k = int(codes.max()) + 1  # the number of classes (official: max(Y) + 1 of its 0..k-1 labels)
    if k < 2:
        raise ValueError(f"labels: expected at least 2 classes for NMI, got {k}")
    for name, value in (("n_init", n_init), ("max_iter", max_iter), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name != "seed"):
            raise ValueError(f"{name}: expected an integer >= {int(name != 'seed')}, got {value!r}")
    try:
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError:
        raise ImportError("nmi: needs scikit-learn (pip install scikit-learn), which scores the clusters as the "
                          "official --do_nmi does") from None
    kmeans = faiss.Kmeans(x.shape[1], k, niter=int(max_iter), nredo=int(n_init), seed=int(seed),
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
                          max_points_per_centroid=x.shape[0],  # every point, no subsampling (as scikit-learn)
                          min_points_per_centroid=1,  # few items per class (SOP: ~5) is what the metric is for
                          gpu=_gpu_wanted(use_gpu))
    kmeans.train(x)
    clusters = kmeans.index.search(x, 1)[1][:, 0]  # (n,) nearest final centroid of each item
    return float(normalized_mutual_info_score(codes, clusters, average_method="arithmetic"))


# ---------------------------------------------------------------- the geometry of the embedding space

def uniformity(emb, t=2.0):
    """Compute Wang & Isola's uniformity: log of the mean over the pairs i < j of exp(-t ||x_i - x_j||^2).

    The rows are L2-normalised here (in float64), so x lies on the unit sphere, where retrieval compares by
    cosine and ||x_i - x_j||^2 = 2 - 2 x_i . x_j lies in [0, 4]: the value lies in [-4t, 0]; 0 when every item
    sits on one point, lower when they spread over the sphere. Exact over all n(n-1)/2 pairs, a block of rows at a
    time (no n x n matrix), summed as a log-sum-exp so that large t does not underflow. The cost grows as n^2 D.

    Args:
        emb: (n, D) embeddings, numpy or torch; n >= 2; need not be normalised; a row of norm 0 is an error.
        t: the temperature t > 0 (Wang & Isola use t = 2).

    Returns:
        float: the uniformity (lower = more uniform).

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
    Hypersphere", ICML 2020, Eq. 3 (their code: pdist(x).pow(2).mul(-t).exp().mean().log()).
    """
    x = _normalised(emb, "emb", np.float64)  # (n, D) unit rows
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"emb: expected at least 2 items (uniformity averages over pairs), got {n}")
    t = _check_positive(t, "t")
    total = -np.inf  # log of the sum of exp(-t d^2) so far
    for d2 in _pair_sq_distances(x):
        v = -t * d2  # (pairs,) <= 0
        peak = v.max()
        total = np.logaddexp(total, peak + np.log(np.exp(v - peak).sum()))
    return float(total - np.log(n * (n - 1) / 2))


def alignment(emb, labels, alpha=2.0):
    """Compute Wang & Isola's alignment: the mean over positive pairs of ||x_i - x_j||^alpha, on unit rows.

    A positive pair is two distinct items i < j of the same class; each pair counts once, so a class of m items
    weighs m(m-1)/2. The rows are L2-normalised here (float64). With alpha = 2 it is 2 - 2 (mean cosine of the
    positive pairs): 0 when every class sits on one point, at most 4. NaN with a RuntimeWarning when no class has
    two items.

    Args:
        emb: (n, D) embeddings, numpy or torch; need not be normalised; a row of norm 0 is an error.
        labels: (n,) integer class labels.
        alpha: the exponent alpha > 0 (Wang & Isola use 2).

    Returns:
        float: the alignment (lower = positives closer together).

    Wang & Isola, ICML 2020, Eq. 2.
    """
    x = _normalised(emb, "emb", np.float64)  # (n, D) unit rows
    codes = _label_codes(labels, "labels", x.shape[0])  # (n,) in [0, C)
    alpha = _check_positive(alpha, "alpha")
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes))  # (C,) end of each class in `order`
    total, pairs = 0.0, 0
    for start, stop in zip(np.concatenate([[0], bounds[:-1]]), bounds):
        if stop - start < 2:
            continue  # a singleton has no positive pair
        for d2 in _pair_sq_distances(x[order[start:stop]]):
            total += float((d2 ** (alpha / 2)).sum())
            pairs += d2.size
    if pairs == 0:
        warnings.warn("alignment: no class has two items, so there is no positive pair: NaN", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    return total / pairs


def pca_variance_share(emb, k):
    """Compute the share of the variance held by the top-k principal components of the L2-normalised embeddings.

    The rows are normalised first (retrieval compares by cosine, so the directions are what is used), then
    centred; the variances of the principal components are the squared singular values of that matrix (over
    n - 1, which cancels). 1 when the embeddings vary along k directions only; about k/D when they spread evenly
    over all D. NaN with a RuntimeWarning when every row points the same way (no variance to share).

    Args:
        emb: (n, D) embeddings, numpy or torch; n >= 2; a row of norm 0 is an error.
        k: the number of components, 1 <= k <= D.

    Returns:
        float in [0, 1].
    """
    s = _centred_singular_values(emb, "emb")  # (min(n, D),) descending
    D = np.shape(emb)[1]
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= D:
        raise ValueError(f"k: expected an integer with 1 <= k <= D = {D}, got {k!r}")
    if s is None:
        return float("nan")
    var = s ** 2  # (min(n, D),) variance of each component, times n - 1
    return float(var[:k].sum() / var.sum())


def effective_rank(emb):
    """Compute the effective rank of the L2-normalised, centred embeddings: how many directions they use.

    Roy & Vetterli's exp(H(p)), with p_i = s_i / sum(s) the singular values s of the centred matrix normalised to
    sum to 1 and H the Shannon entropy (natural log): r when the embeddings vary equally along r orthogonal
    directions and not at all along the others; between 1 and min(n, D) otherwise. Normalised and centred as in
    `pca_variance_share`; NaN with a RuntimeWarning when every row points the same way.

    Args:
        emb: (n, D) embeddings, numpy or torch; n >= 2; a row of norm 0 is an error.

    Returns:
        float in [1, min(n, D)].

    Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
    """
    s = _centred_singular_values(emb, "emb")  # (min(n, D),)
    if s is None:
        return float("nan")
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _pair_sq_distances(x):
    """Yield ||x_i - x_j||^2 of every pair i < j of the unit rows x (n, D), as 1-D float64 arrays, block by block.

    A block of rows i is compared with the rows j >= its first only, so each pair is computed once, and a block
    holds at most CHUNK_ENTRIES products.
    """
    n = x.shape[0]
    rows = max(1, CHUNK_ENTRIES // n)
    for start in range(0, n - 1, rows):  # the last row has no j > i
        stop = min(start + rows, n - 1)
        gram = x[start:stop] @ x[start:].T  # (c, n - start) x_i . x_j for j >= start
        upper = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]  # (c, n - start) j > i
        yield np.maximum(2.0 - 2.0 * gram[upper], 0.0)  # rounding may dip just below 0


def _centred_singular_values(emb, name):
    """Singular values (descending, float64) of the L2-normalised rows of `emb` minus their mean; None (with a
    RuntimeWarning at our caller's caller) when the rows have no variance beyond rounding."""
    x = _normalised(emb, name, np.float64)  # (n, D) unit rows
    if x.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 items (a variance needs two), got {x.shape[0]}")
    x -= x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)  # (min(n, D),)
    # Unit rows that all point one way leave only rounding (~1e-16 an entry): a spectrum of noise, not of data.
    if (s ** 2).sum() <= 1e-20 * x.shape[0]:
        warnings.warn(f"{name}: every row points the same way, so there is no variance: NaN", RuntimeWarning,
                      stacklevel=3)
        return None
    return s


def _check_positive(value, name):
    """Return `value` as a positive finite python float, or raise a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _gpu_wanted(use_gpu):
    """Resolve `use_gpu` (None: when faiss-gpu and CUDA see a GPU; True: required; False: CPU) to a bool."""
    gpu_ok = faiss.get_num_gpus() > 0 and torch.cuda.is_available()
    if use_gpu is None:
        return gpu_ok
    if use_gpu and not gpu_ok:
        raise ValueError("use_gpu=True: expected faiss-gpu with a visible GPU and torch.cuda, found none "
                         f"(faiss.get_num_gpus()={faiss.get_num_gpus()}, cuda={torch.cuda.is_available()})")
    return bool(use_gpu)


def _drop_self(nbrs, self_idx):
    """Remove each query's own index from its row; where a tie pushed it out of the row, drop the last column.

    Args:
        nbrs: (c, depth) neighbour indices of queries `self_idx`.
        self_idx: (c,) index of each query in the gallery.

    Returns:
        (c, depth - 1) neighbours other than the query.
    """
    is_self = nbrs == self_idx[:, None]  # (c, depth)
    # An exact duplicate ties with the query and may take its place; then the row's last item is the one
    # beyond depth - 1 and goes instead, so every row keeps the top depth - 1 items other than the query.
    is_self[~is_self.any(axis=1), -1] = True
    return nbrs[~is_self].reshape(nbrs.shape[0], nbrs.shape[1] - 1)


def _searcher(xg, depth, use_gpu):
    """Return `search(xq (c, D)) -> (c, depth)` exact inner-product neighbours in the gallery `xg` (n_g, D)."""
    use_gpu = _gpu_wanted(use_gpu)
    if use_gpu and depth > GPU_MAX_K:
        warnings.warn(f"search depth {depth} > {GPU_MAX_K}, the most faiss-gpu can return: searching on the CPU",
                      RuntimeWarning, stacklevel=4)
        use_gpu = False

    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, xg.shape[1])
        index.add(xg)  # the gallery goes to the GPU once; queries follow chunk by chunk

        def search(xq):
            return _checked(index.search(xq, depth)[1])
    else:
        # faiss.knn runs the same exact kernel as IndexFlatIP.search, without copying the gallery into an index.
        def search(xq):
            return _checked(faiss.knn(xq, xg, depth, metric=faiss.METRIC_INNER_PRODUCT)[1])
    return search


def _checked(nbrs):
    if (nbrs < 0).any():  # faiss pads with -1 when it finds fewer than k; our depth never exceeds n_g
        raise RuntimeError("faiss returned fewer neighbours than asked for")
    return nbrs


def _normalised(emb, name, dtype=np.float32):
    """Return `emb` as a new (n, D) array of unit rows, after checking it.

    The norms are taken in float64 after dividing each row by its largest entry, so that neither huge nor tiny
    values overflow or underflow; the result is float32 by default, what faiss searches (float64 for the
    geometry of the embedding space).
    """
    if torch.is_tensor(emb):
        if emb.is_complex():
            raise ValueError(f"{name}: expected real numbers, got dtype {emb.dtype}")
        emb = emb.detach().to("cpu", torch.float64 if emb.dtype == torch.float64 else torch.float32).numpy()
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, D), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected D >= 1 columns, got shape {x.shape}")
    out = np.empty(x.shape, dtype=dtype)
    step = 8192  # rows at a time: float64 temporaries stay ~30 MB for D = 512
    for start in range(0, x.shape[0], step):
        block = x[start:start + step].astype(np.float64)  # (c, D)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"{name}: expected finite values, row {row} has NaN or inf")
        peak = np.abs(block).max(axis=1)  # (c,)
        if (peak == 0).any():
            row = start + int(np.argmax(peak == 0))
            raise ValueError(f"{name}: row {row} has norm 0, so it has no direction to compare by cosine")
        block /= peak[:, None]
        block /= np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        out[start:start + step] = block
    return out


def _labels_array(labels, name, n):
    """Return `labels` as a 1-D integer numpy array of length n, or raise a ValueError."""
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D array of length {n} (one label per row of the embeddings), "
                         f"got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    return y


def _label_codes(labels, name, n):
    """Return labels re-numbered 0..C-1 (C = number of distinct labels), shape (n,) int64."""
    y = _labels_array(labels, name, n)
    return np.unique(y, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _check_ks(ks):
    """Return `ks` as a tuple of positive python ints, or raise a ValueError."""
    try:
        ks = tuple(ks)
    except TypeError:
        raise ValueError(f"ks: expected a sequence of positive ints such as (1, 2, 4, 8), got {ks!r}") from None
    if not ks or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks: expected a non-empty sequence of positive ints such as (1, 2, 4, 8), got {ks!r}")
    return tuple(int(k) for k in ks)
