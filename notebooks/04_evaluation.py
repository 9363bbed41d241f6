# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (memvir)
#     language: python
#     name: memvir
# ---

# %% [markdown]
# # Evaluation: Recall@K, R-Precision and MAP@R
#
# A metric-learning model is judged by retrieval on classes it never saw in training: every test image is a
# query, every other test image a candidate, ranked by cosine similarity. The MemVir paper reports Recall@K
# (MemVir Sec. 4, after {cite}`song2016lifted`) and, as {cite}`musgrave2020reality` recommend, R-Precision
# and MAP@R. All three are functions of one *neighbour table*: for each query, which of its nearest
# candidates (nearest first, the query itself left out) share its class, and $R$, the number of candidates
# of its class. For a query with relevance $\text{rel}(i) \in \{0, 1\}$ at rank $i$:
#
# | metric | per query | reads |
# |---|---|---|
# | Recall@K | $1$ if $\text{rel}(i) = 1$ for some $i \le K$, else $0$ | the first hit only |
# | R-Precision | $\frac{1}{R}\sum_{i \le R} \text{rel}(i)$ | the top $R$ |
# | MAP@R | $\frac{1}{R}\sum_{i \le R} P(i)\,\text{rel}(i)$, $\ P(i) = \frac{1}{i}\sum_{j \le i} \text{rel}(j)$ | the top $R$, and their order |
#
# each averaged over the queries. This chapter computes them by hand on a table small enough to print,
# checks the library's `memvir.metrics.neighbour_metrics` against them, shows on two of our glyph runs why
# MAP@R separates models that Recall@1 calls equal, and shows how the query itself must be left out.

# %% tags=["parameters"]
report_dir = "../results/reference/cpu"  # the report: runs.csv and evaluations.csv
noise = 0.9  # spread (radians) of the small example's classes on the circle ...
seed = 0  # ... and the seed of its embeddings
recall_tolerance = 0.1  # Recall@1 points within which two runs count as equal

# %%
import itertools
from pathlib import Path

import faiss
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import memvir.metrics
import memvir.report

# %% [markdown]
# ## A neighbour table small enough to print
#
# Nine 2-D unit embeddings in three classes of 4, 3 and 2 items, each class a direction on the circle
# spread by `noise`. Every item queries the eight others; the query is removed from its own ranking *by its index*
# (its similarity set to $-\infty$), never by assuming it comes first.

# %%
rng = np.random.default_rng(seed)
labels = np.repeat([0, 1, 2], [4, 3, 2])  # (n,)
centres = 2 * np.pi * labels / 3  # (n,) the angle of each item's class
angles = centres + rng.normal(0, noise, len(labels))  # (n,) the classes overlap
emb = np.stack([np.cos(angles), np.sin(angles)], 1)  # (n, 2) unit rows
n = len(labels)

sim = emb @ emb.T  # (n, n) cosine similarity
np.fill_diagonal(sim, -np.inf)  # the query itself, left out by index
order = np.argsort(-sim, axis=1, kind="stable")[:, : n - 1]  # (n, n-1) nearest first
hits = labels[order] == labels[:, None]  # (n, n-1) rel(i) of each query
R = np.bincount(labels)[labels] - 1  # (n,) the other items of each query's class

# %% tags=["hide-input"]
table = pd.DataFrame(np.where(hits, "✓ ", "· ") + labels[order].astype(str),
                     columns=[f"rank {i}" for i in range(1, n)])
table.insert(0, "R", R)
table.insert(0, "class", labels)
table.index.name = "query"
display(Markdown("Each cell: the class of the neighbour at that rank, "
                 "✓ when it is the query's."))
table

# %% [markdown]
# ## Each metric by hand
#
# **Recall@K** asks only where the first hit is: a query counts when one of its $K$ nearest has its
# class.

# %%
ks = (1, 2, 4)
recall = {f"recall@{k}": hits[:, :k].any(axis=1).mean() for k in ks}
pd.Series(recall).round(4).to_frame("by hand").T

# %% [markdown]
# **R-Precision** looks at exactly as many neighbours as the query has relatives, $R$: a perfect model
# ranks all $R$ of them first and scores 1.

# %%
rp = np.mean([hits[i, : R[i]].sum() / R[i] for i in range(n)])  # every R >= 1 here
print(f"R-Precision = {rp:.4f}")

# %% [markdown]
# **MAP@R** also looks at the top $R$, but weighs each hit by the precision $P(i)$ of the ranking down to
# it, so a hit at rank 1 is worth more than a hit at rank $R$. It is R-Precision that cares about order.

# %%
average_precision = []
for i in range(n):
    rel = hits[i, : R[i]]  # (R,) rel(1..R)
    precision = np.cumsum(rel) / np.arange(1, R[i] + 1)  # (R,) P(1..R)
    average_precision.append((precision * rel).sum() / R[i])
map_at_r = np.mean(average_precision)
pd.DataFrame({"R-Precision": [hits[i, : R[i]].mean() for i in range(n)],
              "AP@R": average_precision}).rename_axis("query").T.round(3)

# %% [markdown]
# The library's pure function of the same table gives the same numbers, and so does its faiss search
# from the embeddings themselves (`retrieval_metrics`, which builds the table chunk by chunk):

# %%
# NBVAL_CHECK_OUTPUT
library = memvir.metrics.neighbour_metrics(hits, R, ks)
searched = memvir.metrics.retrieval_metrics(emb, labels, ks)
by_hand = {**recall, "r_precision": rp, "map_at_r": map_at_r}
for key, value in by_hand.items():
    assert abs(library[key] - value) < 1e-12 and abs(searched[key] - value) < 1e-6, key
pd.Series(by_hand, name="by hand = library").round(4).to_frame()

# %% [markdown]
# ## Why MAP@R separates models that Recall@1 calls equal
#
# Two tables with the same first column, hence the same Recall@1: in the first, every query's relatives
# come right after the first hit; in the second, they are scattered behind other classes.

# %%
R3 = np.array([3, 3, 3])  # three queries, three relatives each
tight = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 0, 0]], bool)  # (3, 5)
loose = np.array([[1, 0, 0, 1, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1]], bool)  # (3, 5)
metrics_of = memvir.metrics.neighbour_metrics
two_tables = pd.DataFrame({"relatives first": metrics_of(tight, R3, ks=(1, 4)),
                           "scattered": metrics_of(loose, R3, ks=(1, 4))})
two_tables.round(3)

# %% [markdown]
# A real model is judged on thousands of queries, and Recall@1 only checks the nearest one: once most
# first neighbours are right, as on the glyph benchmark, it saturates, while MAP@R still sees how the rest
# of each class is ranked. Among the runs of our report (`runs.csv`, the value at each run's last
# evaluation), the pair with Recall@1 within `recall_tolerance` points and the largest MAP@R difference:

# %% tags=["hide-input"]
out = Path(report_dir)
runs = pd.read_csv(out / "runs.csv")
pairs = []
for (_, a), (_, b) in itertools.combinations(runs.iterrows(), 2):
    d_r1 = 100 * abs(a["last_recall@1"] - b["last_recall@1"])
    d_map = 100 * abs(a["last_map_at_r"] - b["last_map_at_r"])
    pairs.append((d_r1 > recall_tolerance, -d_map, d_r1, a["name"], b["name"]))
_, _, _, name_a, name_b = min(pairs)  # within the tolerance, then the largest MAP@R gap
chosen = runs.set_index("name").loc[[name_a, name_b]]
columns = {"row": "row", "seed": "seed", "last_recall@1": "Recall@1",
           "last_r_precision": "RP", "last_map_at_r": "MAP@R"}
shown = chosen[list(columns)].rename(columns=columns)
shown[["Recall@1", "RP", "MAP@R"]] = (100 * shown[["Recall@1", "RP", "MAP@R"]]).round(2)
shown

# %% [markdown]
# Their evaluations during training (`evaluations.csv`): Recall@1 climbs to the same level, MAP@R keeps
# them apart.

# %% tags=["hide-input"]
evals = pd.read_csv(out / "evaluations.csv")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name in (name_a, name_b):
    e = evals[evals["name"] == name]
    label = f"{chosen.loc[name, 'row']}, seed {chosen.loc[name, 'seed']}"
    for ax, key in zip(axes, ("recall@1", "map_at_r")):
        ax.plot(e["epoch"], 100 * e[key], "o-", label=label)
for ax, title in zip(axes, ("Recall@1, %", "MAP@R, %")):
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Leaving the query out
#
# Every test item is a query against all the others, so the search finds the query itself first, with
# similarity 1. The official `utils/evaluation.py` searches the top $K+1$ and drops the first column
# (`I[:, 1:]`), assuming that the first is the query. That fails on ties: when another item has the same
# embedding (an exact duplicate image, or a collapsed model), the search may return that item first and
# the query second, and dropping the first column then drops the duplicate and keeps the query as its own
# nearest neighbour, a hit of its own class. Four items, the first two identical and of different classes:

# %%
dup = np.array([[1, 0], [1, 0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)  # (4, 2)
dup_labels = np.array([0, 1, 1, 0])
index = faiss.IndexFlatIP(2)
index.add(dup)
_, nearest = index.search(dup, 3)  # (4, 3) the query itself included
official = nearest[:, 1:]  # drop the first column, as the official code does
print("faiss order:\n", nearest)
print("query 0: first column dropped keeps", official[0].tolist(),
      "(itself!); by index:", [int(j) for j in nearest[0] if j != 0])
official_r1 = (dup_labels[official[:, 0]] == dup_labels).mean()
ours_r1 = memvir.metrics.retrieval_metrics(dup, dup_labels, (1,))["recall@1"]
pd.Series({"first column dropped (official)": official_r1,
           "query dropped by index (ours)": ours_r1}, name="Recall@1").to_frame()

# %% [markdown]
# The nearest *other* item of query 0 is item 1, of another class: a miss, which the official exclusion
# counts as a hit. `memvir.metrics` searches one column deeper and removes the query by its index wherever
# it lands, so a duplicate of the same class is a hit like any other item and one of another class a miss.
# On data without exact ties the two give the same numbers.

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
a, b = shown.loc[name_a], shown.loc[name_b]
first, scattered = two_tables["relatives first"], two_tables["scattered"]
display(Markdown(
    f"On {n} items in {labels.max() + 1} classes the formulas by hand gave "
    f"Recall@1 {recall['recall@1']:.3f}, R-Precision {rp:.3f} and MAP@R "
    f"{map_at_r:.3f}; the library's `neighbour_metrics` and its faiss search gave "
    "the same. Two tables with the same first column scored Recall@1 "
    f"{first['recall@1']:.0f} both, but MAP@R {first['map_at_r']:.3f} and "
    f"{scattered['map_at_r']:.3f}. Among our runs, {a['row']} (seed {a['seed']}) "
    f"and {b['row']} (seed {b['seed']}) reached Recall@1 {a['Recall@1']:.2f} and "
    f"{b['Recall@1']:.2f}, but MAP@R {a['MAP@R']:.2f} and {b['MAP@R']:.2f}. With "
    f"one exact duplicate among {len(dup)} items, dropping the first column gave "
    f"Recall@1 {official_r1:.2f}, dropping the query by index {ours_r1:.2f}."))
