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
# # Does MemVir deliver?
#
# The answer first, as on the book's first page, then its evidence one regime at a time; every number is read
# from the committed reports in `results/reference/`.

# %% tags=["parameters", "hide-input"]
reference_root = "../results/reference"  # every committed report: the answer's regimes
tune_dir = "../results/reference/tune"  # the validation search of the baselines' values
splits_dir = "../results/reference/splits"  # main comparisons at those values, 3 splits
controls_dir = "../results/reference/controls"  # past proxies against their controls
plateau_dir = "../results/reference/plateau"  # where the baselines stop improving
converged_dir = (  # MemVir at the converged budget and 2x
    "../results/reference/converged"
)
protocol_dir = (  # the paper's schedule; the long baseline
    "../results/reference/protocol"
)
pretrained_dir = "../results/reference/pretrained"  # from a pretrained backbone
study_dir = "../results/reference/study"  # the untuned study

# %% tags=["hide-input"]
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, Image, Markdown, display

import memvir.report as report

DIRS = {
    "tune": tune_dir,
    "splits": splits_dir,
    "controls": controls_dir,
    "plateau": plateau_dir,
    "converged": converged_dir,
    "protocol": protocol_dir,
    "pretrained": pretrained_dir,
    "study": study_dir,
}
have = {name: (Path(d) / "comparisons.csv").is_file() for name, d in DIRS.items()}
summary = {
    name: report.summary(d)
    for name, d in DIRS.items()
    if (Path(d) / "report.json").is_file()
}
c = {name: report.comparisons(d) for name, d in DIRS.items() if have[name]}
headline = {name: s.get("headline", []) for name, s in summary.items()}


def pairs(entry, key="lines"):
    """A headline entry's (row, group) pairs, as report.json lists them."""
    return [(line["row"], line["group"]) for line in entry[key]]


def show(table):
    display(HTML(report.html_table(table, "study")))


regimes = report.regimes(reference_root)  # the answer: the picture, then its sentences
figure = report.answer_figure(regimes)
display(figure)
plt.close(figure)  # shown above the sentences, not again at the cell's end
display(Markdown(" ".join(report.answer_sentences(regimes))))

# %% [markdown]
# The picture: each regime's comparisons of MemVir with its baseline, MAP@R at the best validation epoch, paired
# by seed with their 95% intervals; a filled point passes Holm's correction over its profile's comparisons. The
# red line is the paper's own claimed effect (the official README's CARS196 runs, MemVir minus its baseline).

# %% [markdown]
# **Why one chapter.** The regimes run from the study's untuned values at 24 epochs, through values tuned for the
# baselines on three glyph splits, a pretrained backbone and converged budgets, to the paper's own comparison and
# the control its tables lack, a baseline trained as long as MemVir. They used to be two chapters, the study's
# verdict and then "Where MemVir delivers", and a reader who stopped after the first left with a stale answer;
# here the answer comes first and every section after it is a piece of its evidence. The study's own questions
# (model selection, ablations, the mechanism, a cross-batch memory, the scale) are the chapter "The untuned study".
# Every rule (what is run, how a value is chosen, what counts as converged, when an option is worth naming) is
# written in its profile's header before its runs and evaluated by the report (`memvir/report/verdicts.py`).
#
# **How to read a comparison.** A row and its baseline share the seed, hence the initialisation, the batches and
# the augmentation; the difference is taken seed by seed. We give its mean in MAP@R points, its 95% interval
# (Student's t over the seeds), in how many seeds the row is ahead, and Holm's corrected p over every comparison
# of the profile with the same metric and selection. A difference is called a gain or a loss only when that p is
# below 0.05; a difference within the noise comes with what its design could have detected: the smallest mean
# difference that would have passed the correction at the spread its seeds showed.
#
# ## 1. The study's values, 24 epochs (untuned)
#
# The study ran Norm-SoftMax at scale 23 and Proxy-NCA at 12 with a model rate of 1e-3, values carried over from
# CARS196, not tuned here (chapter "The untuned study" has the rest of it).

# %% tags=["hide-input"]
if have["study"]:
    for entry in headline["study"]:
        display(
            Markdown(
                "MemVir against its baseline:"
                f" {report.said_pairs(c['study'], pairs(entry))}."
            )
        )

# %% [markdown]
# ## 2. Tuned values, on three glyph splits
#
# Following Musgrave et al. (2020), each baseline's scale and model rate are chosen on the 50 validation classes,
# without MemVir, by the rule of `configs/tune.yml` (a grid, extended past any edge the choice lies on); MemVir
# inherits its loss's values, as in the paper. Then both losses with and without MemVir, five seeds, 24 epochs, on
# the study's split and on two more (101 and 102, chosen before any run).

# %% tags=["hide-input"]
display(Markdown(report.status(tune_dir, "tune")))
if "tune" in summary:
    choice = pd.read_csv(Path(tune_dir) / "selection.csv")
    chosen = choice[choice["chosen"]].drop(columns=["margin", "chosen"])
    show(chosen.rename(columns={"val_map_at_r": "validation MAP@R"}))
display(Markdown(report.status(splits_dir, "splits")))
if have["splits"]:
    for entry in headline["splits"]:
        display(
            Markdown(
                "MemVir against its baseline:"
                f" {report.said_pairs(c['splits'], pairs(entry))}."
            )
        )
    show(
        report.compact_table(
            c["splits"]
            .assign(group="all")
            .drop_duplicates(["row", "baseline", "metric", "selection"]),
            "all",
            summary["splits"]["trusted_selection"],
        )
    )

# %% [markdown]
# ## 3. A pretrained backbone
#
# The paper fine-tunes an ImageNet network. Here a GlyphCNN first learns, as a classification task, the 505
# glyph classes the benchmark does not use (`--pretrained glyphs`, `memvir/pretrain.py`). By the rule of
# `configs/pretrained.yml` (its gate), this is the paper's regime only if the pretraining helps both baselines,
# judged at the last epoch. MemVir is read at the best validation epoch, as everywhere, and at the last epoch,
# the selection the gate names: the two do not say the same.

# %% tags=["hide-input"]
display(Markdown(report.status(pretrained_dir, "pretrained")))
if have["pretrained"]:
    s, cp = summary["pretrained"], c["pretrained"]
    gate = s["rules"]["gate"]
    said = [
        f"**The gate**, at the {gate['selection_name']}: "
        f"{report.said_pairs(cp, gate['lines'], gate['selection'])}; {gate['says']}."
    ]
    for what, group in (
        ("MemVir (U=16, and the paper's short warm-up U=1)", "memvir"),
        ("A past step's proxies alone", "proxies"),
    ):
        for sel in ("val", "last"):
            said.append(
                f"**{what}, {report.SELECTION_NAMES[sel]}**: "
                f"{report.said_pairs(cp, report.group_pairs(s, group), sel)}."
            )
    display(Markdown("\n\n".join(said)))

# %% [markdown]
# ## 4. Converged budgets
#
# First the baselines alone: the validation MAP@R against the epochs, and the budget B at which it stops
# improving by the rule of `configs/plateau.yml`. MemVir is then compared with the baseline at B and at 2B, with
# a warm-up of 2% of the run (U = 2 to 4: the share of the paper's MemVir runs, 40 of 2,000 epochs), and at B
# with the study's two thirds; a past step's proxies alone at B. Three seeds a row (`configs/converged.yml`).
# The paper's 40 epochs are 2% of MemVir's run but 31% of its baselines' 130; `PROFILE=protocol` scales U that
# way (40/130 of B), a warm-up this profile did not run.

# %% tags=["hide-input"]
display(Markdown(report.status(plateau_dir, "plateau")))
if "plateau" in summary:
    display(Image(filename=str(Path(plateau_dir) / "figures" / "curves_plateau.png")))
    display(
        Markdown(
            "- "
            + "\n- ".join(report.plateau_said(plateau_dir))
            + "\n\nThe rule reads the 50 validation classes only; they level off before"
            " the 500 test classes do."
        )
    )
display(Markdown(report.status(converged_dir, "converged")))
if have["converged"]:
    s, cc = summary["converged"], c["converged"]
    for group in s["groups"]:
        display(
            Image(filename=str(Path(converged_dir) / "figures" / f"curves_{group}.png"))
        )
    past = report.row_pairs(s, report.find_rows(s, memory="past proxies"))
    display(
        Markdown(
            "**MemVir** against the baseline of its budget:"
            f" {report.said_pairs(cc, pairs(headline['converged'][0]))}.\n\n**A past"
            f" step's proxies alone** at B: {report.said_pairs(cc, past)}.\n\n**MemVir"
            " against past proxies alone** at B:"
            f" {report.said_pairs(cc, report.group_pairs(s, 'memvir_vs_past'))}."
        )
    )
    show(report.schedules(s))

# %% [markdown]
# ## 5. The paper's comparison, and the control it lacks
#
# The paper compares baselines trained 130 epochs with a rate decay at 50 against MemVir trained 2,000 epochs at
# a constant rate (15x). Scaled to this benchmark with the largest ratio the machine allows (8x), and the control
# the paper's tables lack: the baseline trained as long as MemVir (`configs/protocol.yml`).

# %% tags=["hide-input"]
display(Markdown(report.status(protocol_dir, "protocol")))
if have["protocol"]:
    s, cq = summary["protocol"], c["protocol"]
    paper, long = headline["protocol"]
    for group in s["groups"]:
        display(
            Image(filename=str(Path(protocol_dir) / "figures" / f"curves_{group}.png"))
        )
    said = [
        (
            "**As the paper compares**, MemVir against the decayed baseline: "
            f"{report.said_pairs(cq, pairs(paper))}."
        ),
        (
            "**The epochs alone**, the long baseline against the same decayed one: "
            f"{report.said_pairs(cq, pairs(paper, 'control'))}."
        ),
        "**The share of the paper-style gain that the epochs alone give**, by"
        " selection: "
        + "; ".join(
            report.shares_by_selection(
                cq, pairs(paper), pairs(paper, "control"), s["row_facts"]
            )
        )
        + ".",
    ]
    said += [
        "**What MemVir adds to the epochs**, against the baseline trained as long, at"
        f" the {report.SELECTION_NAMES[sel]}:"
        f" {report.said_pairs(cq, pairs(long), sel)}."
        for sel in ("val", "last", "best")
    ]
    display(Markdown("\n\n".join(said)))

# %% tags=["hide-input"]
if (
    have["protocol"] and have["converged"]
):  # the decayed baseline beside the constant-rate one, same B
    decayed = report.table_means(protocol_dir, "val")
    constant = report.table_means(converged_dir, "val")
    lines = []
    for row, f in summary["protocol"]["row_facts"].items():
        if f[
            "decay_epoch"
        ]:  # the converged profile's baseline of the same loss and budget
            (same,) = report.find_rows(
                summary["converged"], loss=f["loss"], epochs=f["epochs"], memory="none"
            )
            lines.append(
                f"{f['loss']} at {f['epochs']} epochs: {decayed[row]:.2f} decayed,"
                f" {constant[same]:.2f} constant"
            )
    display(
        Markdown(
            "The paper's decay at 50/130 of the run, against the constant rate at the"
            " same budget and seeds (`PROFILE=converged`; mean MAP@R at the best"
            " validation epoch, not paired across profiles): "
            + "; ".join(lines)
            + ". The decayed baseline is the one the"
            " paper's comparison measures against."
        )
    )
    show(report.schedules(summary["protocol"]))

# %% [markdown]
# ## 6. Which part does the work: a past step's proxies against their controls
#
# The study's one gain at scale 23 was a past step's proxies alone (`--mem_virtual proxies`: C more classes per
# taken step, negatives only, no past embeddings). Two controls, for the six losses of Table 4 (three seeds a
# row, 126 runs): as many learnable extra proxies that no image belongs to (the official `-C`: *more negative
# classes*, learned), and the current proxies' own detached copies on the same schedule (`--mem_virtual
# current`). The second is not "as many classes, none from the past": the copies are *all* C current proxies,
# the sample's own class included, so for Norm-SoftMax each term of the denominator is only multiplied by k+1.
# The embeddings' gradient is then the baseline's (tests/test_memory_ablations.py checks it) and only the
# proxies' repulsion shrinks. Past proxies against those copies measures a proxy's *staleness*, not more
# classes. Only Norm-SoftMax and Proxy-NCA use values tuned on this benchmark (`PROFILE=tune`); the other four
# keep values chosen on the former benchmark (`PROFILE=table4_search`).

# %% tags=["hide-input"]
display(Markdown(report.status(controls_dir, "controls")))
if have["controls"]:
    s, ck = summary["controls"], c["controls"]
    past = report.find_rows(s, memory="past proxies", N=5)
    rule = s["rules"]["named_option"]
    family = report.family_size(ck)
    current = report.group_pairs(s, "past_vs_current")
    learned = report.group_pairs(s, "past_vs_learned")
    display(
        Markdown(
            f"*What the profile could detect: {len(s['seeds'])} seeds and {family}"
            " MAP@R comparisons in its Holm family, so a comparison passes only where"
            " its mean difference is"
            f" {report.holm_threshold(len(s['seeds']), family):.0f} times the standard"
            " deviation of its seeds' differences.*\n\n**Past proxies against the"
            " baseline**:"
            f" {report.said_pairs(ck, report.row_pairs(s, past))}.\n\n**Against the"
            " current proxies' copies** (staleness):"
            f" {report.said_pairs(ck, current)}.\n\n**Against"
            " learned negatives** (more classes):"
            f" {report.said_pairs(ck, learned)}.\n\n**MemVir"
            " against past proxies alone** (what the past embeddings add):"
            f" {report.said_pairs(ck, report.group_pairs(s, 'memvir_vs_past'))}.\n\n**The"
            " rule for a named option** (`configs/controls.yml`, written after a"
            " partial report of 89 of the 126 runs had been read, to write this"
            " chapter's code): a past step's proxies become a named option of"
            f" `memvir.MemVir` if, for at least {rule['at_least']} of the six losses,"
            " they are a significant MAP@R gain both over the baseline and over the"
            f" current proxies' copies. {len(rule['passing'])} of six pass:"
            f" {rule['says']}."
        )
    )
    display(Image(filename=str(Path(controls_dir) / "figures" / "forest.png")))

# %% [markdown]
# **What it does to the embedding.** The study's diagnostics (chapter "The untuned study", section 4), on
# Norm-SoftMax's rows of this profile: retrieval on the seen classes against the unseen ones, and how the unseen
# classes' embeddings spread. Descriptive: paired differences, not corrected; retrieval values are fractions.

# %% tags=["hide-input"]
if (Path(controls_dir) / "mechanism.csv").exists():
    mech = pd.read_csv(Path(controls_dir) / "mechanism.csv")
    mech = mech[mech["quantity"].isin(report.MECHANISM_SHOWN)]
    show(report.mechanism_table(mech).drop(columns=["vs"]))
    display(
        Markdown(
            "Against the baseline, three seeds:\n\n- "
            + "\n- ".join(report.mechanism_sentences(mech))
        )
    )

# %% [markdown]
# ## The regime: the paper's runs against the glyph study's
#
# A memory of N(M+1) steps is empty at the end of the warm-up and full N(M+1) steps later; the table counts the
# training steps after that, and how many times the whole memory was renewed in them (spans). The paper's
# CARS196 runs train through about 240 spans; the study's MemVir rows through 0.1 to 2.3.

# %% tags=["hide-input"]
show(
    pd.concat(
        [
            report.official_schedule(),
            report.schedules(summary["study"], summary["study"]["groups"]["main"]),
        ]
    )
)
