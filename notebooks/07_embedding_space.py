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
# seen in training, as embedded by a model trained with and one trained without MemVir. The figures are drawn
# by `memvir.report.tsne_figures` from two run folders; this chapter only shows them.

# %% tags=["parameters"]
figure_dir = ""  # the report's figures (tsne_*.png); empty: draw them here from two runs
memvir_run = ""  # a MemVir run folder; empty: train a small one here
baseline_run = ""  # its baseline (same loss and seed, no MemVir); empty: train one here
epochs = 6  # the small runs trained here ...
warm_epoch = 3  # ... MemVir's U
mem_num_step = 5  # ... N
mem_step_gap = 3  # ... M
save_dir = "../results/runs/notebook/07_embedding_space"  # ... their folder and figures
test_classes = 20  # test classes drawn in the second figure
perplexity = 30.0  # t-SNE perplexity
seed = 0  # seed of the small runs, of t-SNE and of the class choice

# %%
import shutil
from pathlib import Path

from IPython.display import Image, Markdown, display

import memvir.report
import memvir.rundir
import memvir.train
import memvir.trained

# %% [markdown]
# ## Two models
#
# With `figure_dir` empty the figures are drawn here, from `memvir_run` and `baseline_run`, or, when those
# are empty too, from two small glyph runs trained here that differ only in MemVir (same seed, so the same
# initialisation and batches). `make reproduce` passes the report's figures, drawn from the first-seed runs of
# the results chapter.

# %% tags=["hide-input"]
def small_run(name, use_memvir):
    """Train a small glyph run in save_dir/name, afresh, and return its folder."""
    folder = Path(save_dir) / name
    if (folder / "config.json").exists():
        shutil.rmtree(folder)
    memvir.train.train({"data_name": "glyphs", "loss": "Norm_SoftMax",
                        "memvir": use_memvir, "epochs": epochs, "warm_epoch": warm_epoch,
                        "mem_num_step": mem_num_step, "mem_step_gap": mem_step_gap,
                        "check_epoch": epochs, "decay_step": 1000, "seed": seed,
                        "save_path": str(folder), "progress": False})
    return folder


given = {"with MemVir": memvir_run, "without MemVir": baseline_run}
if figure_dir:  # the report drew them: only read
    figures = {stem: Path(figure_dir) / f"{stem}.png"
               for stem in ("tsne_steps", "tsne_test")}
    runs = {name: Path(folder) for name, folder in given.items() if folder}
else:
    runs = {"with MemVir": Path(memvir_run) if memvir_run else small_run("memvir", True),
            "without MemVir": (Path(baseline_run) if baseline_run
                               else small_run("baseline", False))}
    figures = memvir.report.tsne_figures(memvir.trained.load(runs["with MemVir"]),
                                         memvir.trained.load(runs["without MemVir"]),
                                         Path(save_dir) / "figures",
                                         test_classes=test_classes, perplexity=perplexity,
                                         seed=seed)
for name, folder in runs.items():
    print(f"{name}: {folder.name}")

# %% [markdown]
# ## Training embeddings by step
#
# The MemVir checkpoint holds its memory: the embeddings, labels and proxy copies of the last $N(M+1)$ steps.
# The next step would take the $N$ steps that `MemVir.taken()` returns; the figure embeds that next step's
# batch with the trained network (the current step) and draws the t-SNE of the current and the taken steps'
# embeddings, one colour per step, and the proxies of the current step (stars).

# %% tags=["hide-input"]
display(Image(filename=str(figures["tsne_steps"])))

# %% [markdown]
# The past steps do not sit on top of the current one: the network and the proxies have moved since, so each
# taken step is a slightly shifted copy of the class layout, and its proxies are $C$ extra classes the current
# embeddings must stay away from. This is how MemVir spreads the training classes over more of the space.

# %% [markdown]
# ## Test classes, with and without MemVir
#
# The same `test_classes` classes (never seen in training) embedded by both models, coloured by class. The
# numbers in the titles are the models' last evaluation on all test classes.

# %% tags=["hide-input"]
display(Image(filename=str(figures["tsne_test"])))

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
last = {name: memvir.rundir.read_run(folder)[1]["last"] for name, folder in runs.items()}
scores = [f"{name}: Recall@1 {100 * m['recall@1']:.1f}, MAP@R {100 * m['map_at_r']:.1f}"
          for name, m in last.items()]
origin = ("the report's figures" if figure_dir else
          f"figures drawn here from {' and '.join(f'`{f.name}`' for f in runs.values())}")
display(Markdown(
    f"We looked at {origin}: the current batch of a MemVir model next to the past steps "
    f"it takes, and {test_classes} test classes as two models embed them."
    + (" On all test classes, at their last evaluation, the two models scored "
       f"{'; '.join(scores)}." if scores else "")))
