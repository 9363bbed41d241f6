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
# # MemVir: the memory, the virtual classes, the curriculum
#
# `memvir.MemVir` wraps a proxy loss (chapter 3). This chapter takes its four rules apart (MemVir Sec. 3.2):
#
# 1. look at the memory as it is *before* this step;
# 2. after the warm-up, push this step's embeddings, labels and a copy of the proxies; keep the newest $N(M+1)$;
# 3. take the past steps at positions $M, 2M+1, 3M+2, \dots$ from the newest (every $(M+1)$-th), at most $N$;
# 4. the $k$-th taken step adds its embeddings with labels $y + kC$ and its proxies as $C$ more classes.

# %% tags=["parameters"]
run_dir = ""  # a MemVir run folder (its steps.csv); empty: train a short run here
epochs = 3  # the short run trained here when run_dir is empty ...
warm_epoch = 1  # ... its U
mem_num_step = 5  # ... its N
mem_step_gap = 3  # ... its M
save_path = "../results/runs/notebook/04_memvir"  # ... and its folder

# %%
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from IPython.display import Markdown, display

import memvir
import memvir.report
import memvir.rundir
import memvir.train

# %% [markdown]
# ## Symbols
#
# The paper's symbols and their names in the code (and in the official `main.py` flags):
#
# | paper | `memvir.MemVir` | train flag | meaning |
# |---|---|---|---|
# | $N$ | `num_steps` | `--mem_num_step` | past steps taken as virtual classes |
# | $M$ | `step_gap` | `--mem_step_gap` | steps skipped between two taken steps |
# | $U$ | `warmup_epochs` | `--warm_epoch` | epochs trained before the memory starts filling |
# | $C$ | `num_classes` | (the training classes) | classes, one proxy each: `loss.proxies` is $(C, D)$ |
# | $B$ | (batch size) | `--batch_size` | embeddings per step |
#
# The README's CARS196 runs use $(N, M) = (45, 10)$ for Norm-SoftMax and $(20, 25)$ for Proxy-NCA, $U = 40$.

# %%
C, D, B = 3, 4, 2  # tiny, so that everything can be printed
N, M, U = 3, 2, 1
torch.manual_seed(0)
mv = memvir.MemVir(memvir.NormSoftmax(C, D), num_steps=N, step_gap=M, warmup_epochs=U)
pd.Series({"num_steps (N)": mv.num_steps, "step_gap (M)": mv.step_gap,
           "warmup_epochs (U)": mv.warmup_epochs, "num_classes (C)": mv.num_classes,
           "capacity N(M+1)": mv.capacity}).to_frame("value")

# %% [markdown]
# ## The queue: which past steps are taken
#
# Rule 3 written by hand: with $p$ steps pushed so far, the memory holds the newest $\min(p, N(M+1))$ and the
# next step takes those at distance $j = k(M+1) - 1$ from the newest, $k = 1 \dots N$. We feed the wrapper
# steps of random embeddings, in epoch 0 (warm-up: nothing is stored) and then epoch 1, and compare with
# `MemVir.taken_steps()` before every step.

# %%
def taken_by_hand(pushed, N, M):
    """Push indices of the past steps the next step takes, newest first (rule 3)."""
    held = min(pushed, N * (M + 1))
    distances = [k * (M + 1) - 1 for k in range(1, N + 1)]  # M, 2M+1, ... from the newest
    return [pushed - 1 - j for j in distances if j < held]


# NBVAL_CHECK_OUTPUT
log = []
for t in range(16):
    epoch = 0 if t < 4 else 1  # 4 warm-up steps, then the memory fills
    pushed, taken = int(mv.num_pushed), mv.taken_steps()
    assert taken == taken_by_hand(pushed, N, M)
    x = F.normalize(torch.randn(B, D), dim=1)
    mv(x, torch.randint(0, C, (B,)), epoch=epoch)
    log.append({"step": t, "epoch": epoch, "pushed before": pushed,
                "taken (push indices)": taken,
                "classes in the loss": mv.num_classes_in_use})
pd.DataFrame(log).set_index("step")

# %% [markdown]
# In pictures: a row per step, a column per pushed step; grey cells are held in the memory before that step,
# coloured ones are taken ($k = 1$ is the most recent taken step).

# %% tags=["hide-input"]
T = 40
grid = np.full((T, T), np.nan)
for t in range(T):
    pushed = t  # every step pushes (no warm-up here)
    for q in range(max(0, pushed - N * (M + 1)), pushed):
        grid[t, q] = 0
    for k, q in enumerate(taken_by_hand(pushed, N, M), start=1):
        grid[t, q] = k
fig, ax = plt.subplots(figsize=(7, 5))
cmap = ListedColormap(["#d9d9d9", *plt.get_cmap("tab10").colors[1:N + 1]])  # held, taken
im = ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=N + 0.5, interpolation="nearest")
cbar = fig.colorbar(im, ticks=range(N + 1))
cbar.ax.set_yticklabels(["held"] + [f"taken, k={k}" for k in range(1, N + 1)])
ax.set_xlabel("past step (push index)")
ax.set_ylabel("current step")
ax.set_title(f"N={N}, M={M}: the memory holds N(M+1)={N * (M + 1)} steps "
             "and takes every (M+1)-th")
plt.show()

# %% [markdown]
# ## The label shift, by hand
#
# Rule 4 as the official code writes it: concatenate the current embeddings and those of the taken steps, shift
# the labels of the $k$-th taken step by $kC$, and score them against the current proxies followed by each taken
# step's copy. We build that from `MemVir.taken()` (the taken steps, newest first, each trimmed to its batch:
# `embeddings` (n, D), `labels` (n,) as the batch had them, `proxies` (C, D)) and the loss's own `logits`, and
# compare with the wrapper,
# whose default path computes the same loss without re-scoring the frozen past pairs (their log-sum-exps are
# cached). Value and gradient agree.

# %%
x = F.normalize(torch.randn(B, D), dim=1).requires_grad_()  # (B, D)
y = torch.randint(0, C, (B,))  # (B,)
taken = mv.taken()  # K TakenSteps, newest first
assert [t.step for t in taken] == mv.taken_steps()
emb_all = torch.cat([x, *[t.embeddings for t in taken]])  # ((1+K)B, D)
labels_all = torch.cat([y, *[t.labels + k * C for k, t in enumerate(taken, 1)]])  # y + kC
proxies_all = torch.cat([mv.loss.proxies, *[t.proxies for t in taken]])  # ((1+K)C, D)
logits = mv.loss.logits(emb_all, proxies_all)  # ((1+K)B, (1+K)C)
rows = torch.arange(len(labels_all))
by_hand = (torch.logsumexp(logits, 1) - logits[rows, labels_all]).mean()
(g_hand,) = torch.autograd.grad(by_hand, x)
library = mv(x, y, epoch=1)  # computes with the memory as it was, then pushes this step
(g_lib,) = torch.autograd.grad(library, x)
assert torch.allclose(by_hand, library, atol=1e-5)
assert torch.allclose(g_hand, g_lib, atol=1e-6)
print(f"{len(taken)} taken steps; labels in the loss: {labels_all.tolist()}")
print(f"loss by hand {by_hand.item():.6f}, MemVir {library.item():.6f}")

# %% [markdown]
# Nothing from the memory gets a gradient: the past embeddings and proxy copies were stored detached. The
# gradient reaches the current embeddings (through them the network) and the current proxies, which now compete
# with up to $NC$ virtual classes that look like them: the current proxies are pushed away not only from each
# other but from where they and the embeddings were a few steps ago.

# %% [markdown]
# ## The curriculum in a real run
#
# The memory only starts filling after $U$ epochs, and then one more step is taken every $M+1$ steps, so the
# number of classes in the loss climbs from $C$ to $(N+1)C$ and the number of embeddings from $B$ to $(N+1)B$
# in $N(M+1)$ steps. `steps.csv` logs both at every step. With `run_dir` empty, a short glyph run is trained
# here; `make reproduce` passes a run of the results chapter instead.

# %%
if run_dir:
    run = Path(run_dir)
else:
    run = Path(save_path)
    if (run / "config.json").exists():
        shutil.rmtree(run)  # a fresh short run
    memvir.train.train({"data_name": "glyphs", "loss": "Norm_SoftMax", "memvir": True,
                        "epochs": epochs, "warm_epoch": warm_epoch,
                        "mem_num_step": mem_num_step, "mem_step_gap": mem_step_gap,
                        "check_epoch": epochs, "decay_step": 1000,
                        "save_path": str(run), "progress": False})
config, metrics, steps_csv = memvir.rundir.read_run(run)
print(f"{run.name}: N={config['mem_num_step']}, M={config['mem_step_gap']}, "
      f"U={config['warm_epoch']}, {config['epochs']} epochs, "
      f"batch {config['batch_size']}")

# %% [markdown]
# The number of steps taken follows from the rules alone: the first push is the first step of epoch $U+1$
# (1-based, step $s_0$), and at step $t \ge s_0$ the memory holds $t - s_0$ steps, of which
# $\min(N, \lfloor (t - s_0)/(M+1) \rfloor)$ are taken. The run's log agrees:

# %%
Nr, Mr, Ur = config["mem_num_step"], config["mem_step_gap"], config["warm_epoch"]
s0 = int(steps_csv.loc[steps_csv["epoch"] > Ur, "step"].min())  # first after the warm-up
expected = np.minimum(Nr, np.maximum(steps_csv["step"] - s0, 0) // (Mr + 1))
assert (steps_csv["num_taken"].to_numpy() == expected.to_numpy()).all()
Cr = int(steps_csv["num_classes_in_use"].min())
assert (steps_csv["num_classes_in_use"] == Cr * (1 + steps_csv["num_taken"])).all()

# %% tags=["hide-input"]
fig = memvir.report.curriculum_figure({f"MemVir N={Nr}, M={Mr}, U={Ur}": steps_csv}, Cr,
                                      config["batch_size"])
for ax in fig.axes:
    ax.axvline(s0, color="grey", ls="--", lw=1)
    ax.text(s0, ax.get_ylim()[1], " warm-up ends", va="top", fontsize=8, color="grey")
plt.show()

# %% [markdown]
# The embedding count wobbles because the last batch of an epoch is smaller (the sampler does not drop it), and
# a taken step brings its own batch size. After $s_0 + N(M+1)$ steps the loss has its full size, $(N+1)C$ classes:
# with the README's CARS196 settings that is $46 \times 98 = 4508$ classes for Norm-SoftMax and
# $21 \times 98 = 2058$ for Proxy-NCA.

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
full = steps_csv["num_taken"] == Nr
reached = (f"reached its full {Nr} taken steps, {(Nr + 1) * Cr} classes, at step "
           f"{int(steps_csv.loc[full, 'step'].min())}" if full.any()
           else f"took at most {int(steps_csv['num_taken'].max())} of its {Nr} steps")
display(Markdown(
    f"Over {len(log)} steps the queue by hand named the same past steps as "
    "`MemVir.taken_steps()`, and the loss built by hand from `MemVir.taken()` "
    f"({len(taken)} taken steps, labels shifted by $kC$) equalled the wrapper's, "
    f"{by_hand.item():.6f} against {library.item():.6f}, gradient included. "
    f"In the run `{run.name}` ($N = {Nr}$, $M = {Mr}$, $U = {Ur}$) the memory "
    f"started at step {s0} and {reached}; every logged step agreed with the rules."))
