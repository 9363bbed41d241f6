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
# # Data: the glyph benchmark and the paper's four
#
# The paper evaluates on CARS196, CUB-200-2011, Stanford Online Products (SOP) and In-Shop, all split by class.
# Training on them takes a GPU, so the default profile of this book uses a benchmark with the same structure
# that trains on a CPU in a minute or two: **glyphs**. A class is a Unicode character; an instance is that
# character drawn by one of the fonts matplotlib ships (DejaVu, STIX, Computer Modern), slightly rotated, sheared,
# scaled, shifted and thickened. It is rendered on the fly from the fonts, so nothing is downloaded, and the same
# parameters give the same pixels on every machine with the same matplotlib (`memvir.data.glyphs`).

# %% tags=["parameters"]
input_size = 32  # image side in pixels (the train flag --input_size)
num_classes = 1000  # classes rendered: the first half train, the rest test
instances_per_class = 8  # images per class
min_fonts = 10  # a class needs at least this many distinct renders
glyph_seed = 0  # seed of the class choice and of the augmentations
val_classes = 50  # training classes held out for validation (model selection)

# %%
import collections

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

import memvir.data
from memvir.data import glyphs
from memvir.data.prepare import EXPECTED

glyph_set = glyphs.render_glyphs(image_size=input_size, num_classes=num_classes,
                                 instances_per_class=instances_per_class,
                                 min_fonts=min_fonts, seed=glyph_seed)
parts = glyphs.glyph_splits(glyph_set, val_classes=val_classes)

# %% [markdown]
# ## What the classes look like
#
# The class order is a seeded shuffle of the pool of characters, and the first half of that order trains, so
# both halves mix all scripts. A row is a class (its character and code point on the left), a column one of its
# instances. Some classes differ from each other only by an accent, a hook or a stroke: the task is
# fine-grained, as CARS196 (car models) and CUB-200 (bird species) are.

# %%
fig = glyphs.contact_sheet(parts["train"], classes=8, per_class=8,
                          title="train classes (seen in training)")
plt.show()
fig = glyphs.contact_sheet(parts["test"], classes=8, per_class=8,
                          title="test classes (never seen in training)")
plt.show()

# %% [markdown]
# ## Splits
#
# Like CARS196 (classes 1-98 train, 99-196 test), the classes are split in two halves; a model is trained on
# the first half and evaluated by retrieval among the images of the second half.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
pd.DataFrame([{"split": name, "classes": len(p.chars), "images": len(p.labels),
               "images per class": len(p.labels) // len(p.chars)}
              for name, p in parts.items()]).set_index("split")

# %% [markdown]
# ## Class and font statistics
#
# `glyphs.font_stats` says, per class, which script it belongs to and how many fonts draw it with a *distinct*
# render (renders that look the same after a blur count once, and characters that look the same as another
# in most fonts, homoglyphs such as Latin "A" and Greek "Alpha", are dropped from the pool). An instance uses
# the distinct renders in turn, so a class with many renders has more varied instances.

# %%
stats = glyphs.font_stats(glyph_set)  # one row per class: script, num_renders, fonts

# %% tags=["hide-input"]
num_train = len(parts["train"].chars)  # classes 0 .. num_train - 1 train, then val,
first_test = num_classes // 2  # then the test classes from the half on
stats["split"] = ["train" if c < num_train else "validation" if c < first_test else "test"
                  for c in stats["class"]]
by_script = stats.groupby(["script", "split"]).size().unstack(fill_value=0)
by_script = by_script.loc[by_script.sum(axis=1).sort_values(ascending=False).index]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
by_script.plot.barh(ax=axes[0], stacked=True)
axes[0].invert_yaxis()
axes[0].set_xlabel("classes")
axes[0].set_title("classes per script")
axes[1].hist(stats["num_renders"], bins=range(min_fonts, stats["num_renders"].max() + 2),
             color="grey")
axes[1].set_xlabel("distinct renders of the class")
axes[1].set_ylabel("classes")
axes[1].set_title("variety within a class")
plt.tight_layout()
plt.show()

# %% tags=["hide-input"]
font_use = collections.Counter(f.strip() for fonts in stats["fonts"]
                               for f in fonts.split(","))
pool = glyph_set.params["pool_size"]
print(f"{len(stats)} classes drawn by {len(font_use)} fonts; "
      f"pool: {pool} characters with >= {min_fonts} distinct renders")
font_use = pd.Series(font_use, name="classes it draws").sort_values(ascending=False)
font_use.head(12).to_frame()

# %% [markdown]
# ## The paper's four benchmarks
#
# The paper's data sets are not redistributed; download them from their authors, then lay them out as the
# official code reads them (`DATA/train/<class>/<image>`, `DATA/test/<class>/<image>`):
#
# ```bash
# python -m memvir prepare cars196 --src ~/downloads/cars   --out data/cars196   # cars_annos.mat, car_ims.tgz
# python -m memvir prepare cub200  --src ~/downloads/cub    --out data/cub200    # CUB_200_2011.tgz
# python -m memvir prepare sop     --src ~/downloads/sop    --out data/sop       # Stanford_Online_Products.zip
# python -m memvir prepare inshop  --src ~/downloads/inshop --out data/inshop    # Eval/, img.zip
# ```
#
# The splits are the standard ones of deep metric learning {cite}`song2016lifted` (MemVir Sec. 4.1): CARS196
# classes 1-98 train and 99-196 test (the annotation's own train/test flag is the *classification* split and is
# ignored); CUB-200-2011 classes 1-100 and 101-200; SOP its `Ebay_train.txt` / `Ebay_test.txt`; In-Shop its
# evaluation partition, where test queries search a separate gallery. `prepare` checks every count against this
# table and refuses a difference (unless `--force`):

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
pd.DataFrame(EXPECTED).T.map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")

# %% [markdown]
# The default benchmark has many classes with few images each: 32-pixel grey images, small enough for a CPU,
# and hard on purpose. Its size was chosen by a rule written before any MemVir run on it
# (`configs/calibrate.yml`): the baseline's Recall@1 must sit where the paper's data sets put it, 65-85%. The
# first benchmark, 400 classes of 20 images (`configs/cpu_easy.yml`), ended in the nineties for every method:
# at its ceiling, it could not show a gain. The chapters report R-Precision and MAP@R next to Recall@1: they
# count all $R$ neighbours of a query, not only the first {cite}`musgrave2020reality`. A few training classes
# are held out as validation classes: never trained on, never tested on, they let a run pick its epoch
# honestly (chapter 6).

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
train, test = parts["train"], parts["test"]
renders, cars = stats["num_renders"], EXPECTED["cars196"]
display(Markdown(
    f"The glyph benchmark drew {len(train.chars)} training, "
    f"{len(parts['val'].chars) if 'val' in parts else 0} validation and "
    f"{len(test.chars)} test classes ({len(train.labels):,} and {len(test.labels):,} "
    f"training and test images of {input_size} px) "
    f"from a pool of {pool:,} characters, with {len(font_use)} fonts; a class has "
    f"{renders.min()} to {renders.max()} distinct renders "
    f"(median {renders.median():g}), and "
    f"{by_script.shape[0]} scripts are mixed across both halves. The paper's CARS196 has "
    f"{cars['train classes']} training classes with {cars['train images']:,} images."))
