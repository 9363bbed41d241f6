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
# # One training run
#
# This is the notebook `make reproduce` executes once per run, with papermill: the cell below tagged
# `parameters` holds the train flags as flat scalars (the official `main.py` flag names, plus the glyph
# benchmark's), papermill injects a run's values after it, and `memvir.train.train` does the rest. The run's
# folder `save_path` receives `config.json`, `metrics.json`, `steps.csv`, TensorBoard events and checkpoints;
# the executed notebook is saved next to them. Everything after training reads those files only.
#
# With its defaults it trains MemVir + Norm-SoftMax on the glyph benchmark for 10 epochs, about a minute on
# one CPU core. In the book, this chapter is the executed notebook of one of the runs of chapter 6.

# %% tags=["parameters"]
# data
data_name = "glyphs"  # cars196 | cub200 | sop | inshop | glyphs | custom
data = ""  # prepared folder with train/ and test/; glyphs: a render cache (empty: none)
k_list = ""  # Recall@K list, such as 1,2,4,8 (empty: the data set's)
decode = "pil"  # training images: pil (official) | draft (JPEG DCT scaling) | gpu
input_size = 32  # image side in pixels
num_classes = 1000  # glyphs: classes rendered, the first half train, the rest test
instances_per_class = 8  # glyphs: images per class
min_fonts = 10  # glyphs: distinct renders a class needs
glyph_seed = 0  # glyphs: seed of the glyph set (one benchmark for every training seed)
val_classes = 50  # train classes held out for validation
# model
backbone = "glyphcnn"  # bninception | resnet18/34/50/101 | glyphcnn
pretrained = "none"  # imagenet | none | path to backbone weights
pooling_type = "GAP"  # GAP | GMP | GAP,GMP
dim = 128  # D, embedding size
# loss and MemVir
loss = "Norm_SoftMax"  # a loss of Table 4: Norm_SoftMax, Proxy_NCA, CosFace, ArcFace, ...
scale = 23.0  # logit scale s (Proxy-Anchor: alpha; SoftTriple: la)
margin = ""  # CosFace, ArcFace (radians), Proxy-Anchor, SoftTriple; empty: the loss's own
centers_per_class = ""  # SoftTriple: centres per class (empty: 10)
gamma = ""  # SoftTriple: temperature over a class's centres (empty: 0.1)
pml = False  # pytorch-metric-learning's implementation of the loss
train_with_l2norm = True  # L2-normalise what the loss and the memory see (official)
init_type = "normal"  # Proxy-NCA proxy init: normal | uniform
C = ""  # number of proxies (empty: the classes of the train split)
memvir = True  # train with MemVir
mem_num_step = 5  # N, past steps taken as virtual classes
mem_step_gap = 20  # M, steps skipped between two taken steps
warm_epoch = 5  # U, epochs before the memory starts filling
mem_fill = "curriculum"  # curriculum (official) | full: all N steps from warm-up's end
mem_virtual = "both"  # a past step brings: both (MemVir) | embeddings | proxies | current
xbm_size = 0  # XBM: past embeddings a pair loss remembers (--loss Contrastive); 0: off
# optimisation
optimizer = "adam"  # adam | adamw | rmsprop | sgd
epochs = 10
batch_size = 128  # B
n_instance = 1  # images per class in a batch (1: plain shuffle, as the paper)
modellr = 0.001  # backbone and embedding learning rate
centerlr = 0.01  # proxy learning rate
weight_decay = 0.0001
eps = 0.01  # epsilon of Adam (official)
decay_rate = 0.1
decay_step = 1000  # multiply the rates by decay_rate every decay_step epochs ...
decay_stop = 100000  # ... up to this epoch
freeze_BN = False  # BatchNorm statistics frozen (the README's runs, pretrained backbone)
use_amp = False  # mixed precision
deterministic = False  # deterministic algorithms (seeding is always on)
seed = 0  # seed of initialisation, batches and augmentation
start_epoch = 0  # accepted and ignored (official flag): a run resumes from its checkpoint
# evaluation, outputs, machine
check_epoch = 2  # evaluate every check_epoch epochs (and after the last)
eval_best = False  # only evaluate the best Recall@1 checkpoint of save_path
do_nmi = False  # also compute NMI of the test embeddings
early_stop_epoch = 0  # stop after this many evaluations without a gain (0: never)
max_to_keep = 1  # epoch checkpoints kept (0: all)
save_path = "../results/runs/notebook/05_training"  # the run folder
resume = False  # True: continue (or skip, if finished) the run in save_path
gpu = ""  # GPU id; empty: the first GPU if there is one, else the CPU
workers = 0  # data-loading processes
progress = False  # a tqdm bar per epoch

# %%
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

# (not `import memvir`: the flag `memvir` above is a parameter)
from memvir.config import FLAG_NAMES
from memvir.report import METRICS
from memvir.resolve import config_from_parameters
from memvir.rundir import read_run, start_afresh
from memvir.train import train

# %% [markdown]
# ## Train
#
# The config is the parameters above, each a flag of `memvir.config.TrainConfig` (an empty string means "not
# given": the data set's default); `config_from_parameters` refuses a missing or unknown flag in one line.

# %%
config = config_from_parameters(**{k: v for k, v in globals().items() if k in FLAG_NAMES})
run = Path(config.save_path)
if not resume:
    start_afresh(run)  # a previous run's own files only; a folder holding more is refused
results = train(config)

# %% [markdown]
# ## The run's files
#
# `config.json` is the resolved config (every default filled in), so the run carries its provenance:

# %%
config_saved, metrics, steps = read_run(run)
print(textwrap.fill(", ".join(f"{k}={v}" for k, v in config_saved.items()), width=88))

# %% [markdown]
# ## Learning curves
#
# The loss is logged every step (`steps.csv`), the retrieval metrics on the test classes every `check_epoch`
# epochs (`metrics.json`). With MemVir the loss is not comparable across the warm-up boundary: from then on it
# is a cross-entropy over more and more classes, so it jumps up while the task gets harder.

# %% tags=["hide-input"]
evals = pd.DataFrame(metrics["evaluations"])
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].plot(steps["step"], steps["loss"], lw=0.5, alpha=0.4, color="grey",
             label="per step")
axes[0].plot(steps["step"], steps["loss"].rolling(20, min_periods=1).mean(),
             color="black", label="mean of 20")
axes[0].set_xlabel("step")
axes[0].set_title("training loss")
axes[0].legend()
for key, name in METRICS.items():
    axes[1].plot(evals["epoch"], 100 * evals[key], "o-", label=name)
axes[1].set_xlabel("epoch")
axes[1].set_title("test classes, %")
axes[1].legend()
axes[2].plot(steps["step"], steps["num_classes_in_use"], color="tab:red")
axes[2].set_xlabel("step")
axes[2].set_title("classes in the loss")
for ax in axes:
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Final numbers
#
# The official code keeps the best value of each metric over the evaluations on the test set (`best`); the last
# evaluation (`last`) is the honest one. Chapter 6 reports both.

# %%
final = pd.DataFrame({name: {"best": 100 * metrics["best"][key]["value"],
                             "epoch of best": metrics["best"][key]["epoch"],
                             "last": 100 * metrics["last"][key]}
                      for key, name in METRICS.items()}).T
final.round(2)

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
what = (f"{config_saved['loss']} with MemVir ($N = {config_saved['mem_num_step']}$, "
        f"$M = {config_saved['mem_step_gap']}$, $U = {config_saved['warm_epoch']}$)"
        if config_saved["memvir"] else f"{config_saved['loss']} without MemVir")
display(Markdown(
    f"{what} trained {config_saved['epochs']} epochs on {config_saved['data_name']} "
    f"({len(steps)} steps, up to {int(steps['num_classes_in_use'].max())} classes in the "
    f"loss) and ended with Recall@1 {final.loc['Recall@1', 'last']:.2f}, "
    f"RP {final.loc['RP', 'last']:.2f} and MAP@R {final.loc['MAP@R', 'last']:.2f} "
    "on the test classes at its last evaluation; its best MAP@R, "
    f"{final.loc['MAP@R', 'best']:.2f}, came at epoch "
    f"{int(final.loc['MAP@R', 'epoch of best'])}."))
