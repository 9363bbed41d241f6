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
# # The embedding space with and without MemVir
#
# The paper illustrates MemVir with a t-SNE {cite}`maaten2008tsne` of training embeddings coloured by the step
# they come from: the current batch and the past steps MemVir takes as virtual classes. Here we draw the same
# picture from a trained MemVir model (its memory is saved in its checkpoint), and then the test classes, never
# seen in training, as embedded by a model trained with and one trained without MemVir.

# %% tags=["parameters"]
memvir_run = ""  # a MemVir run folder (make reproduce passes one); empty: train a small one here
baseline_run = ""  # its baseline (same loss and seed, no MemVir); empty: train one here
epochs = 6  # the small runs trained here ...
warm_epoch = 3  # ... MemVir's U
mem_num_step = 5  # ... N
mem_step_gap = 3  # ... M
save_dir = "../results/runs/notebook/07_embedding_space"  # ... and where they go
test_classes = 20  # test classes drawn in the second figure
perplexity = 30.0  # t-SNE perplexity
seed = 0  # seed of t-SNE and of the class choice
figure_dir = ""  # if not empty, also save the figures there as PNG and SVG

# %%
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.manifold import TSNE

import memvir.report
import memvir.train
from memvir.data.samplers import BatchSampler

# %% [markdown]
# ## Two models
#
# With empty `memvir_run` and `baseline_run` this trains two small glyph models that differ only in MemVir
# (same seed, so the same initialisation and batches); `make reproduce` passes the first-seed runs of the
# results chapter instead.

# %%
def small_run(name, use_memvir):
    """Train a small glyph run in save_dir/name, afresh, and return its folder."""
    folder = Path(save_dir) / name
    if (folder / "config.json").exists():
        shutil.rmtree(folder)
    memvir.train.train({"data_name": "glyphs", "loss": "Norm_SoftMax", "memvir": use_memvir, "epochs": epochs,
                        "warm_epoch": warm_epoch, "mem_num_step": mem_num_step, "mem_step_gap": mem_step_gap,
                        "check_epoch": epochs, "decay_step": 1000, "seed": seed, "save_path": str(folder),
                        "progress": False})
    return folder


runs = {"with MemVir": Path(memvir_run) if memvir_run else small_run("memvir", True),
        "without MemVir": Path(baseline_run) if baseline_run else small_run("baseline", False)}
models = {name: memvir.report.load_trained(folder) for name, folder in runs.items()}
for name, (net, criterion, splits, cfg, epoch) in models.items():
    print(f"{name}: {runs[name].name}, checkpoint of epoch {epoch}, {type(criterion).__name__}")

# %% [markdown]
# ## Training embeddings by step
#
# The MemVir checkpoint holds its memory: the embeddings, labels and proxy copies of the last $N(M+1)$ steps.
# The next step would take the $N$ steps that `taken_steps()` names; we embed that next step's batch with the
# trained network (the current step) and draw the t-SNE of the current and the taken steps' embeddings, one colour
# per step, and the proxies of the current step (stars).

# %%
net, criterion, splits, cfg, epoch = models["with MemVir"]
C = criterion.num_classes
sampler = BatchSampler(splits.train.labels, cfg["batch_size"], cfg["n_instance"], seed=cfg["seed"])
sampler.set_epoch(epoch)  # the first batch of the epoch after the checkpoint
batch = next(iter(sampler))
with torch.no_grad():
    images = torch.stack([splits.train[i][0] for i in batch])  # (B, 1, H, W)
    current = net(images, l2_norm=True)  # (B, D)
steps = criterion.taken_steps()  # push indices, newest first
groups = {"current step": current.numpy()}
for k, q in enumerate(steps, start=1):
    slot = q % criterion.capacity  # the ring buffer's slot of push index q
    rows = int(criterion.mem_sizes[slot])
    groups[f"t-{k * (cfg['mem_step_gap'] + 1)} (k={k})"] = criterion.mem_emb[slot, :rows].numpy()  # (B, D)
proxies = torch.nn.functional.normalize(criterion.loss.proxies.detach(), dim=1).numpy()  # (C, D)
points = np.concatenate([*groups.values(), proxies])
xy = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)

fig_steps, ax = plt.subplots(figsize=(7, 6))
start = 0
for i, (name, e) in enumerate(groups.items()):
    ax.scatter(*xy[start:start + len(e)].T, s=10, color=plt.get_cmap("tab10")(i), label=name,
               alpha=0.9 if i == 0 else 0.6)
    start += len(e)
ax.scatter(*xy[start:].T, marker="*", s=40, color="black", label="proxies (current)")
ax.set_xticks([])
ax.set_yticks([])
ax.legend(fontsize=8, loc="best")
ax.set_title(f"training embeddings by step: MemVir N={cfg['mem_num_step']}, M={cfg['mem_step_gap']}")
plt.show()

# %% [markdown]
# The past steps do not sit on top of the current one: the network and the proxies have moved since, so each
# taken step is a slightly shifted copy of the class layout, and its proxies are $C$ extra classes the current
# embeddings must stay away from. This is how MemVir spreads the training classes over more of the space.

# %% [markdown]
# ## Test classes, with and without MemVir
#
# The same `test_classes` classes (never seen in training) embedded by both models, coloured by class. The
# numbers in the titles are the models' last evaluation on all test classes.

# %%
rng = np.random.default_rng(seed)
test = splits.test
chosen = np.sort(rng.choice(int(test.labels.max()) + 1, size=test_classes, replace=False))
idx = np.flatnonzero(np.isin(test.labels, chosen))
fig_test, axes = plt.subplots(1, 2, figsize=(12, 5.5))
for ax, (name, (net, criterion, splits, cfg, epoch)) in zip(axes, models.items()):
    emb = memvir.train.embed(net, torch.utils.data.Subset(splits.test, idx), torch.device("cpu")).numpy()
    xy = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
    colour = np.searchsorted(chosen, splits.test.labels[idx])
    ax.scatter(*xy.T, c=colour, cmap="tab20", s=12)
    _, metrics, _ = memvir.report.read_run(runs[name])
    last = metrics["last"]
    ax.set_title(f"{name}: R@1 {100 * last['recall@1']:.1f}, MAP@R {100 * last['map_at_r']:.1f}")
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %%
if figure_dir:
    memvir.report.save_figure(fig_steps, figure_dir, "tsne_steps")
    memvir.report.save_figure(fig_test, figure_dir, "tsne_test")
    print(f"saved tsne_steps and tsne_test (PNG, SVG) in {figure_dir}")
