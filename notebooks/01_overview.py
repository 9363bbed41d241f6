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
# # Overview: virtual classes from memory
#
# **The problem.** Deep metric learning learns an embedding $f(x) \in \mathbb{R}^D$ (unit length here) in which
# images of the same class are close. It is judged on *unseen* classes: CARS196, CUB-200-2011 and Stanford Online
# Products are split by class, the first half (or the given list) for training and the rest for testing
# {cite}`song2016lifted`. A test image queries all the other test images; Recall@K asks whether one of its $K$
# nearest neighbours has its class, R-Precision and MAP@R how many of its $R$ nearest do, $R$ being the number
# of other images of its class {cite}`musgrave2020reality`.
#
# **Proxy losses.** A proxy loss keeps one learnable vector per training class, a *proxy* $p_c$, and trains
# the network like a classifier over the $C$ training classes: a softmax over $\text{logit}(f(x), p_c)$
# (chapter 3). Such a classifier is very good at its $C$ classes; the test classes are not among them.
#
# **MemVir** {cite}`ko2021memvir` keeps the embeddings *and* the proxies of past training steps in a memory and
# adds them to the loss as extra classes, *virtual classes*: the embeddings of a past step, whose labels are
# shifted so that they name that step's copy of the proxies. A step taken $k$-th from the memory adds $C$
# classes and its $B$ embeddings. The network never sees a new image, but the loss sees up to $(N+1)C$ classes
# instead of $C$, and it sees them gradually: the memory starts filling only after $U$ warm-up epochs and takes
# one more step every $M+1$ steps, a curriculum.

# %% tags=["parameters"]
profile = "../configs/cpu.yml"  # the profile this book reports (make reproduce sets it)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display
from matplotlib.patches import FancyArrowPatch, Rectangle

import memvir
import memvir.config
import memvir.profile
import memvir.report

# %% [markdown]
# ## The method in one figure
#
# The figure is drawn from the library itself: a `memvir.MemVir` with $N = 3$ and $M = 2$ is fed twelve steps
# (tiny fake batches), and `taken_steps()` says which past steps the next step uses. Boxes are past steps in the
# memory, newest on the right; the filled ones are taken.

# %%
# past steps taken, gap, classes, batch, embedding size (tiny, for the figure)
N, M, C, B, D = 3, 2, 4, 6, 8
torch.manual_seed(0)
mv = memvir.MemVir(memvir.NormSoftmax(C, D), num_steps=N, step_gap=M, warmup_epochs=0)
for _ in range(12):
    emb = torch.nn.functional.normalize(torch.randn(B, D), dim=1)  # (B, D)
    mv(emb, torch.randint(0, C, (B,)), epoch=0)
taken = mv.taken_steps()  # push indices, newest first
pushed = mv.num_pushed.item()
kept = list(range(pushed - mv.capacity, pushed))  # the steps the memory holds
print(f"memory holds steps {kept[0]}..{kept[-1]} (N(M+1) = {mv.capacity}); "
      f"step {pushed} takes {taken}")

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(10, 4))
ax.set_xlim(-0.5, len(kept) + 2.6)
ax.set_ylim(-2.4, 2.6)
ax.axis("off")
colors = plt.get_cmap("tab10").colors
order = {q: k for k, q in enumerate(taken, start=1)}  # push index -> k (k-th taken step)
for i, q in enumerate(kept):
    k = order.get(q)
    ax.add_patch(Rectangle((i, 0.2), 0.85, 1.0, facecolor=colors[k] if k else "white",
                           edgecolor="black", alpha=0.85 if k else 1.0))
    ax.text(i + 0.42, 0.7, f"t-{len(kept) - i}", ha="center", va="center", fontsize=8)
    if k:
        ax.text(i + 0.42, 1.3, f"k={k}\nlabels + {k if k > 1 else ''}C",
                ha="center", va="bottom", fontsize=8)
ax.text((len(kept) - 0.15) / 2, 2.2,
        f"memory: the last N(M+1) = {mv.capacity} steps (embeddings, labels, proxies)",
        ha="center", fontsize=9)
ax.plot([0, len(kept) - 0.15], [2.05, 2.05], color="black", lw=0.8)
now = len(kept) + 0.3
ax.add_patch(Rectangle((now, 0.2), 1.9, 1.0, facecolor=colors[0], edgecolor="black",
                       alpha=0.85))
ax.text(now + 0.95, 0.7, "step t\nB embeddings\nC proxies", ha="center", va="center",
        fontsize=8, color="white")
centre = (len(kept) + 2.2) / 2
ax.add_patch(Rectangle((centre - 3.2, -2.2), 6.4, 1.1, facecolor="#eeeeee",
                       edgecolor="black"))
K = len(taken)
ax.text(centre, -1.65, f"loss over (1+{K})B embeddings and (1+{K})C classes",
        ha="center", va="center", fontsize=10)
for q in [*taken, None]:
    x = (kept.index(q) + 0.42) if q is not None else now + 0.95
    ax.add_patch(FancyArrowPatch((x, 0.2), (centre, -1.1), arrowstyle="-|>",
                                 mutation_scale=10, color="grey", lw=0.8))
ax.set_title(f"MemVir with N={N}, M={M}: "
             "every (M+1)-th past step comes back as C virtual classes")
plt.show()

# %% [markdown]
# At step $t$ the steps taken are $t-(M+1),\ t-2(M+1),\ \dots$ (at most $N$ of them): their embeddings enter
# the loss with labels $y + kC$ and their proxies as classes $kC \dots (k+1)C-1$. Everything from the memory is
# frozen (no gradient); the gradient reaches the current embeddings, through them the network, and the current
# proxies. Chapter 4 takes this apart.

# %% [markdown]
# ## What this book reproduces
#
# The official README reports five CARS196 runs for each of four settings (BN-Inception, 512-d embeddings).
# `memvir.report.paper_table` rebuilds its tables from the per-run numbers stored in
# `memvir/paper_results/cars196_5runs.csv`; Recall@1:

# %%
paper = memvir.report.paper_table("recall@1")
memvir.report.formatted(paper)

# %% [markdown]
# Those runs need a GPU and 2000 epochs for MemVir. The default profile reproduces the *comparison* on a benchmark
# that trains on a CPU (chapter 2): each loss with and without MemVir, several seeds, the same three metrics.
# These are the runs of the profile this book was built from:

# %% tags=["hide-input"]
prof = memvir.profile.load_profile(profile)
display(Markdown(f"**Profile `{prof.name}`** ({prof.path.name}): {prof.description}"))
rows = []
for r in prof.rows:
    p, on = r.params, memvir.config.parse_bool(r.params.get("memvir", False))
    rows.append({"row": r.label, "baseline": r.baseline or "-", "loss": p["loss"],
                 "scale": p.get("scale", "-"), "epochs": p["epochs"],
                 "N": p["mem_num_step"] if on else "-",
                 "M": p["mem_step_gap"] if on else "-",
                 "U": p["warm_epoch"] if on else "-", "seeds": len(prof.seeds)})
pd.DataFrame(rows).set_index("row")

# %% [markdown]
# Chapter 6 shows their results next to the paper's. To produce them yourself:
#
# ```bash
# make -j2 reproduce                 # PROFILE=cpu: the glyph benchmark, about 20 minutes on 2 cores
# make -j2 reproduce PROFILE=paper DATA=path/to/prepared/carDB PRETRAINED=path/to/bn_inception.pth   # GPU
# ```

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
gains = {r["Loss"].removeprefix("MemVir + "): r["Diff."] for _, r in paper.iterrows()
         if r["Loss"].startswith("MemVir")}
ahead = " and ".join(f"{float(g):+.2f} Recall@1 points for {loss}"
                     for loss, g in gains.items())
display(Markdown(
    f"A memory of $N(M+1) = {mv.capacity}$ steps ($N = {N}$, $M = {M}$) gave step "
    f"{pushed} the past steps {', '.join(map(str, taken))}: {K} copies of the "
    f"$C = {C}$ proxies, so its loss ran over {(1 + K) * C} classes instead of {C}. "
    f"On CARS196 the official README reports MemVir ahead of its loss by {ahead}; "
    f"the profile `{prof.name}` puts the same comparison to the test with "
    f"{len(prof.runs)} runs ({len(prof.rows)} rows, {len(prof.seeds)} seeds each)."))
