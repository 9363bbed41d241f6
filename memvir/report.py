"""Tables and figures from run folders only (`python -m memvir report`): what the book's results chapters read.

Results flow one way:

    results/runs/<profile>/<run>/     one folder per run (memvir/rundir.py), trained by memvir/pipeline.py
    results/report/<profile>/         runs.csv, evaluations.csv, tables (CSV and Markdown), figures (PNG and SVG);
                                      machine.csv: each run's wall time and CPU kernels, which no comparison reads
    results/reference/<profile>/      the same, committed: the report we made, that yours is compared with
    the book's chapters               read those tables and figures; they never write here

A report is never written over the reference (`--promote` does that, on purpose): `against_reference` says
whether they are equal bit for bit and, when not, how far apart next to the seeds' spread.

Everything here reads only the files of the run folder's format; nothing scrapes notebooks. The tables have the
layout of the official README (Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.), values in percent: `Mean` over the
runs, `Std.` the sample standard deviation (ddof=1), `Diff.` a MemVir row's mean minus its baseline row's mean.
The paper's code keeps the best value over training's evaluations on the test set; a profile says which value its
tables use (`table_value`), and the report always gives both, and a third where the runs have validation classes:
the test value where the validation value peaked (SELECTIONS). Every paired statistic is `paired_comparison`'s.
A study profile (`groups`) gets each row against its baseline with Holm-corrected p-values (`study_comparisons`),
a calibration profile the rule's choice (`calibration_choice`), a "mechanism" group the embedding diagnostics of
its last checkpoints. The t-SNE figures of chapter 07 are drawn here too, from the checkpoints of two runs
(`tsne_figures`), and across the epochs of one (`tsne_epochs_figure`).

Chapters: notebooks/06_results.py, 07_embedding_space.py.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .config import parse_bool
from .pipeline import Profile, load_profile
from .rundir import KERNELS_KEY, epoch_checkpoints, load_checkpoint, read_run, run_state

__all__ = ["METRICS", "SELECTIONS", "SELECTION_NAMES", "verdict", "describe", "collect", "selections", "runs_table",
           "paired_comparison", "holm",
           "paired_differences", "table_from_runs", "paired_from_runs", "table4_comparison", "study_comparisons",
           "study_table", "calibration_choice", "paper_table", "paper_results", "formatted", "markdown_table",
           "load_trained", "save_figure", "bar_figure", "learning_curves_figure", "curves_figure",
           "curriculum_figure", "mechanism_diagnostics", "mechanism_comparisons", "tsne_figures",
           "tsne_epoch_choice", "tsne_epochs_figure", "validation_choice", "build_report", "main",
           "MACHINE_COLUMNS", "MACHINE_FILE", "kernels_summary", "against_reference", "against_reference_text"]

METRICS = {"recall@1": "Recall@1", "r_precision": "RP", "map_at_r": "MAP@R"}  # key in metrics.json -> column name
SELECTIONS = ("best", "val", "last")  # which evaluation gives a run's value: best test, best validation, last
# What the machine did, per run: its clock and its CPU kernels (memvir.portable). Never a result: the report writes
# them to MACHINE_FILE, which no comparison of two reports reads, so that a bitwise reproduction is one.
MACHINE_COLUMNS = ["wall_time", "kernels", "cpu_capability", "machine"]
MACHINE_FILE = "machine.csv"


def _val_selected(evaluations, key):
    """The test value of `key` at the evaluation whose validation `key` is highest (the earliest of ties), its epoch.

    (NaN, NaN) when no evaluation has a validation `key` (a run trained without val_classes).
    """
    chosen, top = None, -math.inf
    for e in evaluations:
        v = (e.get("val") or {}).get(key)
        if v is not None and math.isfinite(float(v)) and float(v) > top:  # strictly higher: the earliest of ties
            chosen, top = e, float(v)
    if chosen is None:
        return np.nan, np.nan
    return float(chosen.get(key, np.nan)), int(chosen["epoch"])


def collect(profile, partial=False):
    """Read every run of a profile into one table: a row per run, its value of each metric under each selection.

    A selection (SELECTIONS) says which evaluation of a run gives its value: "best" the best test value over
    training (what the official code records), "val" the test value at the evaluation with the best validation
    value of the same metric (the earliest of ties; NaN for a run without validation classes), "last" the last.

    Args:
        profile: a Profile (or a name for load_profile).
        partial: False: every run must be finished (else ValueError naming the first one that is not);
            True: leave out runs that are not finished.
    Returns:
        (runs, evaluations): runs has columns row, baseline, seed, name, epochs_evaluated and best_<metric>,
        best_<metric>_epoch, last_<metric>, val_<metric>, val_<metric>_epoch for every metric of METRICS
        (fractions, test classes), then MACHINE_COLUMNS (what the machine did: never a result); evaluations has
        row, seed, name, epoch, step, the test metrics and the validation ones as val_<metric> (NaN when absent),
        one line per evaluation.
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    baselines = profile.baselines
    rows, evals = [], []
    for run in profile.runs:
        folder = run.folder
        state = run_state(folder)
        if state != "finished":
            if partial:
                continue
            raise ValueError(f"run {folder} is {state} (metrics.json 'finished' is not true): run `make runs "
                             f"PROFILE={profile.name}` first, or pass --partial to report the finished ones")
        config, metrics, _ = read_run(folder)
        if int(config.get("seed", run.seed)) != run.seed:
            raise ValueError(f"{folder / 'config.json'}: seed {config.get('seed')} but the folder is for seed "
                             f"{run.seed}")
        kernels = config.get(KERNELS_KEY) or {}  # a run made before kernels were recorded: unknown
        line = {"row": run.row, "baseline": baselines.get(run.row, ""), "seed": run.seed, "name": run.name,
                "epochs_evaluated": metrics["last"].get("epoch"), "wall_time": metrics["last"].get("wall_time"),
                "kernels": kernels.get("mode", "unrecorded"), "cpu_capability": kernels.get("cpu_capability", ""),
                "machine": kernels.get("machine", "")}
        for key in METRICS:
            best = metrics["best"].get(key)
            if best is None or key not in metrics["last"]:
                raise ValueError(f"{folder / 'metrics.json'}: no {key!r} in 'best' and 'last'")
            line[f"best_{key}"] = float(best["value"])
            line[f"best_{key}_epoch"] = int(best["epoch"])
            line[f"last_{key}"] = float(metrics["last"][key])
            line[f"val_{key}"], line[f"val_{key}_epoch"] = _val_selected(metrics["evaluations"], key)
        rows.append(line)
        for e in metrics["evaluations"]:
            val = e.get("val") or {}
            evals.append({"row": run.row, "seed": run.seed, "name": run.name, "epoch": e["epoch"],
                          "step": e.get("step"),
                          **{k: e[k] for k in e if k.startswith("recall@") or k in METRICS},
                          **{f"val_{k}": np.nan for k in METRICS},
                          **{f"val_{k}": float(val[k]) for k in val if k.startswith("recall@") or k in METRICS}})
    columns = ["row", "baseline", "seed", "name", "epochs_evaluated"]
    for key in METRICS:
        columns += [f"best_{key}", f"best_{key}_epoch", f"last_{key}", f"val_{key}", f"val_{key}_epoch"]
    return pd.DataFrame(rows, columns=columns + MACHINE_COLUMNS), pd.DataFrame(evals)


def selections(runs):
    """The selections a report can use: best, val (only when every run has validation metrics) and last."""
    has_val = all(f"val_{k}" in runs and np.isfinite(runs[f"val_{k}"].astype(float)).all() for k in METRICS)
    return [s for s in SELECTIONS if s != "val" or (has_val and len(runs))]


def validation_choice(profile, metric=None):
    """For each loss of a search profile, its rows ranked by `metric` on the validation classes; the best chosen.

    Reads only the validation scores ("val" of the last evaluation in metrics.json), never the test classes', so
    the choice cannot be tuned on what the tables report. Rows are grouped by their (canonical) loss; a row's
    value is the mean over its seeds.

    Returns:
        DataFrame: loss, row, scale, margin, val_<metric> (percent), chosen (the best of its loss).
    """
    from .losses import canonical_loss_name

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    metric = metric or profile.select
    records = []
    for row in profile.rows:
        values = []
        for run in (r for r in profile.runs if r.row == row.label):
            if run_state(run.folder) != "finished":
                raise ValueError(f"run {run.folder} is not finished: run `make runs PROFILE={profile.name}` first")
            val = (read_run(run.folder)[1]["last"] or {}).get("val") or {}
            if val.get(metric) is None:
                raise ValueError(f"{run.folder / 'metrics.json'}: the last evaluation has no val {metric!r} (was "
                                 f"it trained with val_classes > 0?)")
            values.append(100 * float(val[metric]))
        records.append({"loss": canonical_loss_name(row.params["loss"]), "row": row.label,
                        "scale": row.params.get("scale"), "margin": row.params.get("margin"),
                        f"val_{metric}": round(float(np.mean(values)), 2)})
    df = pd.DataFrame(records)
    best = df.groupby("loss", sort=False)[f"val_{metric}"].transform("max")
    df["chosen"] = df[f"val_{metric}"] == best
    return df


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def _values(label, values):
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"runs[{label!r}]: expected a non-empty list of finite numbers, got {values!r}")
    return v


def runs_table(runs, baselines=None):
    """Lay out per-run results as the official README does: Loss | 1 | ... | n | Mean | Diff. | Std.

    Means and differences are computed from the unrounded values, then everything is rounded to 2 decimals.

    Args:
        runs: {row label: [value of run 1, run 2, ...]}, in the units to show (percent); rows keep this order.
        baselines: {MemVir row label: baseline row label}; `Diff.` = row mean - baseline mean, "-" for the others.
    Returns:
        DataFrame with columns Loss, "1".."n" (n = the most runs of any row; NaN where a row has fewer),
        Mean, Diff. (float or "-"), Std. (sample standard deviation, ddof=1; NaN for a single run).
    """
    baselines = dict(baselines or {})
    if not runs:
        raise ValueError("runs: expected at least one row")
    values = {label: _values(label, v) for label, v in runs.items()}
    for row, base in baselines.items():
        if row not in values or base not in values:
            missing = row if row not in values else base
            raise ValueError(f"baselines: {missing!r} is not a row of runs (rows: {list(values)})")
        if row == base:
            raise ValueError(f"baselines: row {row!r} is its own baseline")
    n = max(v.size for v in values.values())
    means = {label: float(v.mean()) for label, v in values.items()}
    records = []
    for label, v in values.items():
        rec = {"Loss": label}
        for i in range(n):
            rec[str(i + 1)] = round(float(v[i]), 2) if i < v.size else np.nan
        rec["Mean"] = round(means[label], 2)
        rec["Diff."] = round(means[label] - means[baselines[label]], 2) if label in baselines else "-"
        rec["Std."] = round(float(v.std(ddof=1)), 2) if v.size > 1 else np.nan
        records.append(rec)
    return pd.DataFrame(records, columns=["Loss", *[str(i + 1) for i in range(n)], "Mean", "Diff.", "Std."])


def paired_comparison(row, baseline):
    """Compare a row with its baseline seed by seed: the paired mean difference, its 95% interval, a paired t-test.

    The one place the report's paired statistics are computed (paired_differences, table4_comparison,
    study_comparisons and the mechanism's diagnostics all call it). A seed is a pair when both rows have a finite
    value at it; d = row - baseline over the pairs, n of them.

    Args:
        row, baseline: {seed: value} (any unit; the result is in the same unit).
    Returns:
        dict: pairs (n), baseline_mean, row_mean (over the pairs), diff_mean (mean of d), diff_sd (ddof=1),
        ci_low, ci_high (diff_mean -/+ t(0.975, n - 1) * diff_sd / sqrt(n), Student's t), p (two-sided paired
        t-test of a zero mean difference, n - 1 degrees of freedom), positive ("k/n": pairs where the row is
        higher). sd, interval and p are NaN for n < 2; with diff_sd = 0, p is 0 (NaN when d is all 0).
    """
    from scipy import stats

    seeds = sorted(s for s in set(row) & set(baseline) if np.isfinite(row[s]) and np.isfinite(baseline[s]))
    a = np.array([baseline[s] for s in seeds], dtype=float)  # (n,)
    b = np.array([row[s] for s in seeds], dtype=float)  # (n,)
    d, n = b - a, len(seeds)
    out = {"pairs": n, "baseline_mean": np.nan, "row_mean": np.nan, "diff_mean": np.nan, "diff_sd": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "positive": f"{int((d > 0).sum())}/{n}"}
    if n == 0:
        return out
    out.update(baseline_mean=float(a.mean()), row_mean=float(b.mean()), diff_mean=float(d.mean()))
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(d.mean()) / se, n - 1))
    else:
        p = 0.0 if d.mean() != 0 else np.nan
    out.update(diff_sd=sd, ci_low=float(d.mean()) - half, ci_high=float(d.mean()) + half, p=p)
    return out


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values, in the order given; NaN entries stay NaN and are not in the family.

    Step-down (Holm 1979): sort the m finite p-values ascending, multiply the i-th smallest by (m - i + 1), take
    the running maximum, clip at 1. Rejecting where the adjusted p < alpha controls the family-wise error rate.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]  # indices of the finite p-values, smallest first
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return out


def paired_differences(runs, baselines):
    """Compare each MemVir row with its baseline seed by seed (paired_comparison, rounded for the tables).

    Args:
        runs: {row label: {seed: value}} (percent).
        baselines: {MemVir row label: baseline row label}.
    Returns:
        DataFrame with columns Loss, Baseline, Pairs (seeds both rows have), Mean (mean of row - baseline over
        those seeds), Std. (ddof=1), Positive ("k/n": seeds where the row is better), all rounded to 2 decimals,
        and p: the two-sided p-value of a paired t-test (mean difference 0), rounded to 3 decimals.
    """
    records = []
    for row, base in baselines.items():
        if row not in runs or base not in runs:
            raise ValueError(f"baselines: {row if row not in runs else base!r} is not a row of runs")
        c = paired_comparison(runs[row], runs[base])
        records.append({"Loss": row, "Baseline": base, "Pairs": c["pairs"], "Mean": round(c["diff_mean"], 2),
                        "Std.": round(c["diff_sd"], 2), "Positive": c["positive"], "p": round(c["p"], 3)})
    return pd.DataFrame(records, columns=["Loss", "Baseline", "Pairs", "Mean", "Std.", "Positive", "p"])


def _per_row(runs, metric, value):
    if metric not in METRICS or value not in SELECTIONS:
        raise ValueError(f"metric must be one of {list(METRICS)} and value one of {SELECTIONS}, got {metric!r}, "
                         f"{value!r}")
    col = f"{value}_{metric}"
    out = {}
    for row, group in runs.groupby("row", sort=False):
        out[row] = dict(zip(group["seed"].astype(int), 100.0 * group[col].astype(float)))
    return out


def _baselines(runs):
    pairs = runs[["row", "baseline"]].drop_duplicates()
    return {r: b for r, b in zip(pairs["row"], pairs["baseline"]) if isinstance(b, str) and b}


def table_from_runs(runs, metric, value="best"):
    """Build one result table (percent) from `collect`'s runs (or runs.csv): runs_table per row, seeds in order."""
    per_row = _per_row(runs, metric, value)
    base = {r: b for r, b in _baselines(runs).items() if r in per_row and b in per_row}
    return runs_table({r: [v[s] for s in sorted(v)] for r, v in per_row.items()}, base)


def paired_from_runs(runs, metric, value="best"):
    """Paired-by-seed differences (percent) of every MemVir row against its baseline, from runs.csv."""
    per_row = _per_row(runs, metric, value)
    base = {r: b for r, b in _baselines(runs).items() if r in per_row and b in per_row}
    return paired_differences(per_row, base)


def table4_comparison(runs, value="best"):
    """The paper's Table 4 beside ours: per loss, without and with MemVir, the paired difference, the paper's R@1.

    Ours: mean ± sample std over the seeds (percent), and MemVir minus its baseline paired by seed with its 95%
    confidence interval (Student's t, n - 1 degrees of freedom). The paper (Table 4, Recall@1 only): "without ->
    with" on CUB-200-2011, CARS196 and SOP, for the losses whose label is one of its methods.

    Args:
        runs: `collect`'s runs (or runs.csv) of a profile whose MemVir rows have their loss's row as baseline.
    """
    paper = paper_results("table4_recall_at_1")
    pairs = _baselines(runs)  # {MemVir row: its baseline}
    partner = {base: row for row, base in pairs.items()}
    records = []
    for base in dict.fromkeys(runs["row"]):  # profile order; a baseline without a MemVir row (SoftTriple) too
        if base in pairs:
            continue
        row, rec = partner.get(base), {"Loss": base}
        for metric, title in METRICS.items():
            per_row = _per_row(runs, metric, value)
            a = np.array([per_row[base][s] for s in sorted(per_row[base])])
            rec[title] = f"{a.mean():.2f} ± {a.std(ddof=1):.2f}"
            rec[f"MemVir {title}"] = rec[f"Δ {title} [95% CI]"] = "-"
            if row is None:
                continue
            b = np.array([per_row[row][s] for s in sorted(per_row[row])])
            c = paired_comparison(per_row[row], per_row[base])
            rec[f"MemVir {title}"] = f"{b.mean():.2f} ± {b.std(ddof=1):.2f}"
            rec[f"Δ {title} [95% CI]"] = f"{c['diff_mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
        for data in ("CUB200", "CARS196", "SOP"):
            got = paper[paper["method"] == base].set_index("memvir")[data]
            rec[f"paper {data}"] = (f"{got[0]:.1f} → {got[1]:.1f}" if {0, 1} <= set(got.index)
                                    else (f"{got[0]:.1f}" if 0 in got.index else "-"))
        rec["seeds"] = int((runs["row"] == base).sum())
        records.append(rec)
    return pd.DataFrame(records)


STUDY_METRICS = ("recall@1", "map_at_r", "r_precision")  # the metrics a study compares (its tables: the first two)
COMPARISON_COLUMNS = ["group", "row", "baseline", "metric", "selection", "pairs", "baseline_mean", "row_mean",
                      "diff_mean", "diff_sd", "ci_low", "ci_high", "p", "p_holm", "significant", "positive"]
HOLM_FAMILY = ("every comparison of the profile (a row against its baseline) with the same metric and selection, "
               "each counted once even when its row is in two groups")


def study_comparisons(runs, groups, baselines):
    """Every row of every group against its baseline, per metric and selection: paired statistics, Holm-corrected.

    For each group, each of its rows that has a baseline, each metric of STUDY_METRICS and each selection of
    `selections(runs)`: one line of paired_comparison (values in percent). Holm's correction (holm) is applied
    per family: every comparison of the profile with the same metric and selection, each (row, baseline) once
    even when the row is in two groups. significant: p_holm < 0.05.

    Args:
        runs: collect's runs (or runs.csv).
        groups: {group name: [row label, ...]} (Profile.groups).
        baselines: {row: its baseline row} (Profile.baselines).
    Returns:
        DataFrame with COMPARISON_COLUMNS, groups and rows in the order given.
    """
    chosen = selections(runs)
    per = {(m, s): _per_row(runs, m, s) for m in STUDY_METRICS for s in chosen}  # {row: {seed: percent}}
    have = set(runs["row"])
    records = []
    for group, members in groups.items():
        for row in members:
            base = baselines.get(row)
            if not base or row not in have or base not in have:
                continue
            for metric in STUDY_METRICS:
                for sel in chosen:
                    values = per[(metric, sel)]
                    records.append({"group": group, "row": row, "baseline": base, "metric": metric,
                                    "selection": sel, **paired_comparison(values[row], values[base])})
    df = pd.DataFrame(records, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "significant")])
    df["p_holm"] = np.nan
    for _, family in df.groupby(["metric", "selection"], sort=False):
        distinct = family.drop_duplicates(["row", "baseline"])
        adjusted = dict(zip(zip(distinct["row"], distinct["baseline"]), holm(distinct["p"])))
        df.loc[family.index, "p_holm"] = [adjusted[k] for k in zip(family["row"], family["baseline"])]
    df["significant"] = df["p_holm"] < 0.05
    return df[COMPARISON_COLUMNS]


def study_table(comparisons, group, metrics=("recall@1", "map_at_r")):
    """One group's comparisons as a readable table: a line per row and metric, the selections side by side.

    Cells: "Δ [95% CI]" of row - baseline (percentage points) and "p_holm (k/n)", with "*" where significant.
    """
    df = comparisons[(comparisons["group"] == group) & comparisons["metric"].isin(metrics)]
    chosen = list(dict.fromkeys(df["selection"]))
    records = []
    for (row, base, metric), g in df.groupby(["row", "baseline", "metric"], sort=False):
        g = g.set_index("selection")
        rec = {"Row": row, "vs": base, "Metric": METRICS[metric], "n": int(g["pairs"].iloc[0])}
        for sel in chosen:
            c = g.loc[sel]
            rec[f"{sel}: Δ [95% CI]"] = f"{c['diff_mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            star = " *" if c["significant"] else ""
            rec[f"{sel}: p_holm (k/n)"] = f"{c['p_holm']:.3f}{star} ({c['positive']})"
        records.append(rec)
    return pd.DataFrame(records)


SELECTION_NAMES = {"best": "best test epoch", "val": "best validation epoch",
                   "last": "last epoch"}  # how a run's value was picked, in words ("best": as the official code)


def verdict(comparison):
    """What a paired comparison (a line of study_comparisons) says, in a few words.

    A gain or a loss only when Holm's corrected p is below 0.05 (p_holm; p when there is no correction); "not
    significant after the correction" when only the uncorrected p is; else the difference is within the noise of
    the seeds.
    """
    p = comparison.get("p_holm", comparison["p"])
    if p is None or not np.isfinite(p):
        return "not testable (fewer than two paired seeds)"
    if p < 0.05:
        return "a gain" if comparison["diff_mean"] > 0 else "a loss"
    if comparison["p"] < 0.05:
        return "not significant once corrected for the number of comparisons"
    return "within the seed-to-seed noise"


def describe(comparison, unit="points"):
    """One comparison as a sentence fragment: difference, 95% interval, seeds ahead, corrected p, verdict."""
    c = comparison
    p = f"Holm p = {c['p_holm']:.3f}" if "p_holm" in c and np.isfinite(c["p_holm"]) else f"p = {c['p']:.3f}"
    return (f"{c['diff_mean']:+.2f} {unit} [95% CI {c['ci_low']:+.2f}, {c['ci_high']:+.2f}], ahead in "
            f"{c['positive']} seeds ({p}): {verdict(c)}")


CALIBRATION_RULE = ("the first row, in the profile's order, whose mean best test Recall@1 lies in [{low:g}, {high:g}]; "
                    "if none does and two consecutive rows bracket the range (one above it, the next below, or the "
                    "reverse), the one closer to {middle:g}; if neither, no row is chosen (knob 2, on the row "
                    "closest to {middle:g})")  # configs/calibrate.yml's rule, in one sentence


def calibration_choice(profile, runs=None):
    """Apply the calibration rule of configs/calibrate.yml (CALIBRATION_RULE) to a profile with `calibrate`.

    Args:
        profile: a Profile with calibrate = (low, high), Recall@1 in percent.
        runs: collect's runs (default: collect(profile)).
    Returns:
        DataFrame, a line per row in the profile's order: row, seeds, mean and sd (ddof=1) of the best test
        Recall@1 over the seeds (percent), in_range, chosen (at most one True), note (why it is chosen; when none
        is, "knob 2 needed" on the row closest to the middle of the range).
    """
    if not profile.calibrate:
        raise ValueError(f"{profile.path}: no `calibrate: [low, high]` key; calibration_choice needs one")
    low, high = profile.calibrate
    middle = (low + high) / 2
    runs = collect(profile)[0] if runs is None else runs
    per_row = _per_row(runs, "recall@1", "best")
    records = []
    for row in profile.rows:
        v = np.array(list(per_row.get(row.label, {}).values()), dtype=float)
        mean = float(v.mean()) if v.size else np.nan
        records.append({"row": row.label, "seeds": int(v.size), "mean": mean,
                        "sd": float(v.std(ddof=1)) if v.size > 1 else np.nan,
                        "in_range": bool(low <= mean <= high), "chosen": False, "note": ""})
    means = [r["mean"] for r in records]
    inside = [i for i, r in enumerate(records) if r["in_range"]]
    if inside:
        records[inside[0]].update(chosen=True, note=f"the first in [{low:g}, {high:g}]")
    else:
        for i in range(len(means) - 1):
            a, b = means[i], means[i + 1]
            if (a > high and b < low) or (a < low and b > high):
                k = i if abs(a - middle) <= abs(b - middle) else i + 1
                other = records[i + 1 if k == i else i]["row"]
                records[k].update(chosen=True, note=f"brackets [{low:g}, {high:g}] with {other}; closer to {middle:g}")
                break
        else:
            finite = [i for i, m in enumerate(means) if np.isfinite(m)]
            if finite:
                k = min(finite, key=lambda i: abs(means[i] - middle))
                records[k]["note"] = f"knob 2 needed (none in or bracketing the range; closest to {middle:g})"
    return pd.DataFrame(records, columns=["row", "seeds", "mean", "sd", "in_range", "chosen", "note"])


def paper_results(name="cars196_5runs"):
    """Read a table of numbers the paper reports (memvir/paper_results/<name>.csv; '#' lines are comments)."""
    path = Path(__file__).resolve().parent / "paper_results" / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise FileNotFoundError(f"{path} does not exist; known: {known}")
    return pd.read_csv(path, comment="#")


def _paper_label(loss, memvir):
    return f"MemVir + {loss}" if int(memvir) else loss


def paper_table(metric):
    """The official README's CARS196 table of `metric` (five runs per row), rebuilt with runs_table."""
    df = paper_results("cars196_5runs")
    df = df[df["metric"] == metric]
    if df.empty:
        raise ValueError(f"metric must be one of {sorted(set(paper_results('cars196_5runs')['metric']))}, "
                         f"got {metric!r}")
    runs = {_paper_label(r.loss, r.memvir): [getattr(r, f"run{i}") for i in range(1, 6)] for r in df.itertuples()}
    baselines = {_paper_label(r.loss, 1): r.loss for r in df.itertuples() if int(r.memvir)}
    return runs_table(runs, baselines)


def formatted(df):
    """Return a table as strings in the README's style: 2 decimals, signed differences, '-' where empty."""
    signed = {"Diff."} | ({"Mean"} if "Pairs" in df.columns else set())  # paired tables: Mean is a difference

    def cell(col, v):
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, (float, np.floating)):
            return f"{v:+.2f}" if col in signed else f"{v:.3f}" if col == "p" else f"{v:.2f}"
        return str(v)

    return pd.DataFrame([[cell(c, v) for c, v in zip(df.columns, rec)] for rec in df.itertuples(index=False)],
                        columns=df.columns)


def markdown_table(df):
    """Render a table as Markdown in the README's style (signed Diff., '-' for missing)."""
    f = formatted(df)
    lines = [" | ".join(f.columns), " | ".join("--" for _ in f.columns)]
    lines += [" | ".join(rec) for rec in f.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def _groups(runs):
    """Group rows by baseline: [(baseline row, [its rows: the baseline first, then its MemVir rows])]."""
    order = list(dict.fromkeys(runs["row"]))
    base = _baselines(runs)
    groups = {}
    for row in order:
        root = base.get(row, row)
        groups.setdefault(root, [root] if root in order else [])
        if row != root:
            groups[root].append(row)
    return list(groups.items())


def save_figure(fig, folder, stem):
    """Save a figure as folder/stem.png and folder/stem.svg (reproducible: no dates, fixed SVG ids)."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.hashsalt": stem}):
        fig.savefig(folder / f"{stem}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(folder / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return [folder / f"{stem}.png", folder / f"{stem}.svg"]


def bar_figure(runs, value="best"):
    """Recall@1, RP and MAP@R with and without MemVir per loss: mean over seeds, error bar = std, dots = seeds."""
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        per_row = _per_row(runs, metric, value)
        x, ticks, lo = 0.0, [], np.inf
        for gi, (root, members) in enumerate(groups):
            start = x
            for mi, row in enumerate(members):
                v = np.array(list(per_row[row].values()))
                lo = min(lo, v.min())
                k = mi if root in members else mi + 1  # colour 0 is the baseline's (absent from a partial report)
                short = "baseline" if row == root else (row.replace(root, "").strip(" +") or row)
                ax.bar(x, v.mean(), width=0.8, color=colors[k % 10], alpha=0.85, label=short if gi == 0 else None)
                if v.size > 1:
                    ax.errorbar(x, v.mean(), yerr=v.std(ddof=1), color="black", capsize=3, lw=1)
                ax.plot(np.full(v.size, x), v, "o", ms=3, color="black", alpha=0.6)
                x += 1
            ticks.append(((start + x - 1) / 2, root))
            x += 0.6
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
        top = max(max(v.values()) for v in per_row.values())
        ax.set_ylim(max(0.0, lo - 0.3 * (top - lo + 1.0)), top + 0.15 * (top - lo + 1.0))
        ax.set_title(f"{title} ({value}), %")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def learning_curves_figure(evaluations, runs):
    """Every metric over training epochs: the mean over seeds of each row, shaded between min and max."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    order = list(dict.fromkeys(runs["row"]))
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        for i, row in enumerate(order):
            e = evaluations[evaluations["row"] == row]
            g = e.groupby("epoch")[metric].agg(["mean", "min", "max"]) * 100
            ax.plot(g.index, g["mean"], color=colors[i % 10], label=row, lw=1.5)
            ax.fill_between(g.index, g["min"], g["max"], color=colors[i % 10], alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} on the test classes, %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(evaluations, rows, metrics=("recall@1", "map_at_r")):
    """Test metric against epoch for each row: the mean over seeds, shaded by its 95% t interval; a panel a metric.

    The band at an epoch is mean ± t(0.975, n - 1) * sd / sqrt(n) over the n seeds evaluated there (sd with
    ddof=1; no band where n < 2). Values in percent.

    Args:
        evaluations: collect's evaluations (or evaluations.csv).
        rows: the row labels to draw, in this order (a row without evaluations is left out).
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes[0], metrics):
        for i, row in enumerate(rows):
            e = evaluations[evaluations["row"] == row]
            if e.empty:
                continue
            g = (100 * e[metric].astype(float)).groupby(e["epoch"]).agg(["mean", "std", "count"])
            n = g["count"].to_numpy()
            t = stats.t.ppf(0.975, np.maximum(n - 1, 1))
            half = np.where(n > 1, t * g["std"].to_numpy() / np.sqrt(n), np.nan)
            ax.plot(g.index, g["mean"], color=colors[i % 10], label=row, lw=1.5)
            ax.fill_between(g.index, g["mean"] - half, g["mean"] + half, where=n > 1, color=colors[i % 10],
                            alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.set_title(f"{METRICS.get(metric, metric)} on the test classes, %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="mean over seeds, 95% t band", title_fontsize=8)
    fig.tight_layout()
    return fig


def curriculum_figure(steps_by_row, num_classes=None, batch_size=None):
    """Classes and embeddings in the loss at each training step (MemVir's curriculum), one line per run.

    Args:
        steps_by_row: {label: steps.csv DataFrame (step, epoch, num_classes_in_use, num_embeddings_in_use)}.
        num_classes, batch_size: C and B, drawn as dotted lines when given.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = plt.get_cmap("tab10").colors
    for i, (label, s) in enumerate(steps_by_row.items()):
        for ax, col in zip(axes, ("num_classes_in_use", "num_embeddings_in_use")):
            ax.plot(s["step"], s[col], color=colors[(i + 1) % 10], label=label, lw=1.2)
    for ax, ref, title in ((axes[0], num_classes, "classes in the loss"),
                           (axes[1], batch_size, "embeddings in the loss")):
        if ref:
            ax.axhline(ref, ls=":", color="grey", lw=1)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def load_trained(run_dir, checkpoint="last", device="cpu"):
    """Load a trained run from its folder: network, criterion (MemVir with its memory, or the bare loss), data.

    Args:
        run_dir: a run folder written by memvir.train.
        checkpoint: "last" (the newest checkpoints/epoch_*.pt: the memory as training left it) or a file name in
            checkpoints/ such as "best_recall_1.pt".
    Returns:
        (net in eval mode, criterion, Splits, config dict, checkpoint epoch).
    """
    from .config import resolve_config
    from .experiment import build

    ckpt_dir = Path(run_dir) / "checkpoints"
    if checkpoint == "last":
        paths = epoch_checkpoints(ckpt_dir)
        if not paths:
            raise FileNotFoundError(f"{ckpt_dir}: no epoch_*.pt checkpoint; train the run first")
        path = paths[-1]
    else:
        path = ckpt_dir / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; checkpoints there: "
                                    f"{sorted(p.name for p in ckpt_dir.glob('*.pt'))}")
    ckpt = load_checkpoint(path, device)
    exp = build(resolve_config(ckpt["config"]), device, pretrained=False)  # rebuilt exactly as trained
    exp.net.load_state_dict(ckpt["model"])
    exp.net.eval()
    exp.criterion.load_state_dict(ckpt["criterion"])
    return exp.net, exp.criterion, exp.splits, ckpt["config"], int(ckpt["epoch"])


def mechanism_diagnostics(profile, runs, rows, device="cpu"):
    """Diagnose the last checkpoint of every finished run of `rows`: memvir.evaluation.embedding_diagnostics.

    Args:
        profile: the Profile the runs belong to.
        runs: collect's runs (which runs are finished).
        rows: the row labels to diagnose (a study's "mechanism" group and the baselines of its rows).
    Returns:
        DataFrame: row, seed, epoch (of the checkpoint), and embedding_diagnostics' keys (train_/test_/gap_
        retrieval metrics, uniformity, alignment, PCA share, effective rank, items and classes measured), in its
        units (fractions, not percent).
    """
    import torch

    from .config import parse_k_list
    from .evaluation import embedding_diagnostics  # here: a report without a mechanism group never needs it

    finished = set(runs["name"])
    records = []
    for run in profile.runs:
        if run.row in rows and run.name in finished:
            net, _, splits, cfg, epoch = load_trained(run.folder, "last", device)
            found = embedding_diagnostics(net, splits, torch.device(device), parse_k_list(cfg["k_list"]))
            records.append({"row": run.row, "seed": run.seed, "epoch": epoch, **found})
    return pd.DataFrame(records)


def mechanism_comparisons(diagnostics, baselines):
    """Each diagnosed row minus its baseline, paired by seed, per diagnostic (paired_comparison; descriptive only).

    Returns:
        DataFrame: row, baseline, quantity, and paired_comparison's keys; the counts (*_items, *_classes: what
        was measured) are not compared.
    """
    quantities = [c for c in diagnostics.columns if c not in ("row", "seed", "epoch")
                  and not c.endswith(("_items", "_classes"))]
    per_row = {row: g.set_index("seed") for row, g in diagnostics.groupby("row", sort=False)}
    records = []
    for row in per_row:
        base = baselines.get(row)
        if base not in per_row:
            continue
        for q in quantities:
            records.append({"row": row, "baseline": base, "quantity": q,
                            **paired_comparison(per_row[row][q].astype(float).to_dict(),
                                                per_row[base][q].astype(float).to_dict())})
    return pd.DataFrame(records)


def _tsne_steps_panel(ax, net, criterion, splits, cfg, epoch, perplexity=30.0, seed=0):
    """Draw one t-SNE panel of a MemVir checkpoint: the next training batch, the taken past steps, the proxies.

    The next batch is the first of the epoch after the checkpoint, embedded by its network; each past step
    MemVir would take next (criterion.taken(), none before the warm-up ends) has its colour; the current proxies
    are black stars (MemVir Fig. 3).
    """
    import matplotlib.pyplot as plt
    import torch
    from sklearn.manifold import TSNE

    from .data.samplers import BatchSampler, EpochSeeded

    sampler = BatchSampler(splits.train.labels, cfg["batch_size"], cfg["n_instance"], seed=cfg["seed"])
    sampler.set_epoch(epoch)  # the first batch of the epoch after the checkpoint
    train = EpochSeeded(splits.train, cfg["seed"])  # augmented as training would: the same figure every time
    train.set_epoch(epoch)
    with torch.no_grad():
        images = torch.stack([train[i][0] for i in next(iter(sampler))])  # (B, channels, H, W)
        groups = {"current step": net(images, l2_norm=True).numpy()}  # (B, D)
    for k, step in enumerate(criterion.taken(), start=1):
        groups[f"t-{k * (cfg['mem_step_gap'] + 1)} (k={k})"] = step.embeddings.numpy()  # (n, D)
    proxies = criterion.loss.embed_proxies(criterion.loss.proxies.detach()).numpy()  # (C, D)
    points = np.concatenate([*groups.values(), proxies])
    xy = TSNE(perplexity=min(perplexity, len(points) - 1), init="pca", random_state=seed).fit_transform(points)
    few = len(groups) <= 10  # a colour (and a legend entry) per step; more steps: a colour ramp, oldest lightest
    colors = [plt.get_cmap("tab10")(i) if few else plt.get_cmap("viridis")(i / (len(groups) - 1))
              for i in range(len(groups))]
    start = 0
    for i, (name, e) in enumerate(groups.items()):
        ax.scatter(*xy[start:start + len(e)].T, s=10, color=colors[i], label=name if few or i == 0 else None,
                   alpha=0.9 if i == 0 else 0.6)
        start += len(e)
    ax.scatter(*xy[start:].T, marker="*", s=40, color="black", label="proxies (current)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best")
    return len(groups) - 1


def tsne_figures(memvir_run, baseline_run, out_dir, test_classes=20, perplexity=30.0, seed=0):
    """Draw chapter 07's two t-SNE figures from two run folders and save them (PNG and SVG) in out_dir.

    tsne_steps: the MemVir run's next training batch (embedded by the trained network) with the past steps its
    memory would take as virtual classes, one colour per step, and the current proxies (the paper's Fig. 3).
    tsne_test: `test_classes` unseen classes as embedded by the MemVir run and by its baseline.

    Args:
        memvir_run, baseline_run: run folders (same loss and seed, with and without MemVir).
    Returns:
        {"tsne_steps": png path, "tsne_test": png path}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.manifold import TSNE

    from .evaluation import embed

    runs = {"with MemVir": Path(memvir_run), "without MemVir": Path(baseline_run)}
    models = {name: load_trained(folder) for name, folder in runs.items()}
    net, criterion, splits, cfg, epoch = models["with MemVir"]
    if not hasattr(criterion, "taken"):
        raise ValueError(f"{memvir_run}: not a MemVir run (its criterion is {type(criterion).__name__})")
    fig_steps, ax = plt.subplots(figsize=(7, 6))
    _tsne_steps_panel(ax, net, criterion, splits, cfg, epoch, perplexity, seed)
    ax.set_title(f"training embeddings by step: MemVir N={cfg['mem_num_step']}, M={cfg['mem_step_gap']}")

    rng = np.random.default_rng(seed)
    labels = splits.test.labels
    chosen = np.sort(rng.choice(int(labels.max()) + 1, size=min(test_classes, int(labels.max()) + 1),
                                replace=False))
    idx = np.flatnonzero(np.isin(labels, chosen))
    fig_test, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (name, (net, _, splits, _, _)) in zip(axes, models.items()):
        emb = embed(net, torch.utils.data.Subset(splits.test, idx), torch.device("cpu")).numpy()
        xy = TSNE(perplexity=min(perplexity, len(idx) - 1), init="pca", random_state=seed).fit_transform(emb)
        ax.scatter(*xy.T, c=np.searchsorted(chosen, labels[idx]), cmap="tab20", s=12)
        last = read_run(runs[name])[1]["last"]
        ax.set_title(f"{name}: R@1 {100 * last['recall@1']:.1f}, MAP@R {100 * last['map_at_r']:.1f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig_test.tight_layout()
    out = {}
    for stem, fig in (("tsne_steps", fig_steps), ("tsne_test", fig_test)):
        save_figure(fig, out_dir, stem)
        plt.close(fig)
        out[stem] = Path(out_dir) / f"{stem}.png"
    return out


def tsne_epoch_choice(epochs, warm_epoch):
    """The checkpoints of the t-SNE across epochs (MemVir Fig. 3: epochs 50, 60, 200 with U = 40).

    The last epoch at or before the warm-up's end (memory still empty), the first after it, and the last; those
    that exist, each once, in order.

    Args:
        epochs: the epochs of a run's checkpoints (1-based: epoch e is saved after e epochs).
        warm_epoch: U; the memory fills from the (U + 1)-th epoch on.
    """
    epochs = sorted(epochs)
    before = [e for e in epochs if e <= warm_epoch]
    after = [e for e in epochs if e > warm_epoch]
    return list(dict.fromkeys([*before[-1:], *after[:1], *epochs[-1:]]))


def tsne_epochs_figure(run_dir, out_dir, perplexity=30.0, seed=0):
    """Draw `tsne_epochs`: one _tsne_steps_panel per checkpoint of tsne_epoch_choice, saved (PNG, SVG) in out_dir.

    Args:
        run_dir: a MemVir run folder that keeps its epoch checkpoints (max_to_keep 0).
    Returns:
        the PNG's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {int(Path(p).stem.split("_")[1]): Path(p).name for p in epoch_checkpoints(Path(run_dir) / "checkpoints")}
    if not paths:
        raise FileNotFoundError(f"{Path(run_dir) / 'checkpoints'}: no epoch_*.pt checkpoint; train the run first")
    warm = int(read_run(run_dir)[0]["warm_epoch"])
    epochs = tsne_epoch_choice(paths, warm)
    fig, axes = plt.subplots(1, len(epochs), figsize=(6 * len(epochs), 5.5), squeeze=False)
    for ax, epoch in zip(axes[0], epochs):
        net, criterion, splits, cfg, _ = load_trained(run_dir, paths[epoch])
        if not hasattr(criterion, "taken"):
            raise ValueError(f"{run_dir}: not a MemVir run (its criterion is {type(criterion).__name__})")
        taken = _tsne_steps_panel(ax, net, criterion, splits, cfg, epoch, perplexity, seed)
        ax.set_title(f"after epoch {epoch} (U = {warm}): {taken} past steps taken")
    fig.tight_layout()
    save_figure(fig, out_dir, "tsne_epochs")
    plt.close(fig)
    return Path(out_dir) / "tsne_epochs.png"


# ----------------------------------------------------------------------------------------------------------------
# Your run against ours: a report beside the committed reference of the same profile
# ----------------------------------------------------------------------------------------------------------------


def _result_files(folder):
    """{relative path: bytes} of a report's result files: everything but MACHINE_FILE."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MACHINE_FILE}


def kernels_summary(folder):
    """How a report's runs computed, in words: "portable kernels at AVX2 (x86_64), 20 runs" (MACHINE_FILE)."""
    path = Path(folder) / MACHINE_FILE
    if not path.is_file():
        return "kernels not recorded"
    m = pd.read_csv(path, dtype=str, keep_default_na=False)
    kinds = m.groupby(["kernels", "cpu_capability", "machine"], sort=False).size()
    return "; ".join(("kernels not recorded" if mode == "unrecorded" else
                      f"{mode} kernels at {cap} ({machine})") + f", {n} run{'s' * (n != 1)}"
                     for (mode, cap, machine), n in kinds.items())


def against_reference(yours, ours):
    """Compare a report (your runs) with the committed reference of its profile: bit for bit, then by the seeds.

    Args:
        yours: a report folder (results/report/<profile>); ours: the reference (results/reference/<profile>).
    Returns:
        dict: same_folder (one folder given twice), equal (every result file of ours is in yours, byte for byte;
        MACHINE_FILE is not compared), files {same, different, missing, extra: [relative paths]}, kernels
        {yours, ours: kernels_summary}, selection (the tables' value), rows and verdicts (None when equal):
        rows: a line per row and metric: ours and yours (mean over the seeds, percent), diff (yours - ours),
        spread (ours' seed-to-seed standard deviation, ddof=1), within (|diff| <= spread);
        verdicts: a line per comparison (row against its baseline) and metric: the paired difference and Holm
        significance in ours and in yours (study_comparisons, one family over the profile's comparisons),
        same_sign, same_significance.
    """
    yours, ours = Path(yours), Path(ours)
    a, b = _result_files(ours), _result_files(yours)
    files = {"same": [f for f in a if f in b and a[f] == b[f]], "different": [f for f in a if f in b and a[f] != b[f]],
             "missing": [f for f in a if f not in b], "extra": [f for f in b if f not in a]}
    out = {"same_folder": yours.resolve() == ours.resolve(), "files": files,
           "equal": not (files["different"] or files["missing"] or files["extra"]),
           "kernels": {"yours": kernels_summary(yours), "ours": kernels_summary(ours)}, "rows": None,
           "verdicts": None}
    summary = json.loads((ours / "report.json").read_text())
    out["selection"] = value = summary["table_value"]
    if out["equal"]:
        return out
    runs = {who: pd.read_csv(folder / "runs.csv") for who, folder in (("ours", ours), ("yours", yours))}
    rows = []
    for metric, title in METRICS.items():
        per = {who: _per_row(r, metric, value) for who, r in runs.items()}
        for row, seeds in per["ours"].items():
            o = np.array(list(seeds.values()))
            y = np.array(list(per["yours"].get(row, {}).values()) or [np.nan])
            spread = float(o.std(ddof=1)) if o.size > 1 else np.nan
            diff = float(y.mean() - o.mean())
            rows.append({"row": row, "metric": title, "ours": float(o.mean()), "yours": float(y.mean()),
                         "diff": diff, "spread": spread, "within": bool(abs(diff) <= spread)})
    out["rows"] = pd.DataFrame(rows)
    baselines = {r: b for r, b in summary["baselines"].items()}
    if baselines:
        both = [study_comparisons(r, {"all": list(baselines)}, baselines) for r in (runs["ours"], runs["yours"])]
        keep = ["row", "baseline", "metric", "selection"]
        merged = both[0][keep + ["diff_mean", "p_holm", "significant"]].merge(
            both[1][keep + ["diff_mean", "p_holm", "significant"]], on=keep, how="left", suffixes=("_ours", "_yours"))
        merged = merged[merged["selection"] == value].reset_index(drop=True)
        merged["same_sign"] = np.sign(merged["diff_mean_ours"]) == np.sign(merged["diff_mean_yours"])
        merged["same_significance"] = merged["significant_ours"] == merged["significant_yours"]
        out["verdicts"] = merged
    return out


def against_reference_text(result):
    """`against_reference`'s outcome as the results chapter says it: a line when equal, else a short paragraph."""
    k, files = result["kernels"], result["files"]
    if result["same_folder"]:
        return ("This page was built from the committed reference itself. `make reproduce` builds it from your "
                "own runs and compares them with ours here.")
    if result["equal"]:
        return (f"**Your run equals ours bit for bit**: all {len(files['same'])} result files (runs, evaluations, "
                f"tables, figures) are byte-identical. Yours: {k['yours']}; ours: {k['ours']}.")
    changed = len(files["different"]) + len(files["missing"]) + len(files["extra"])
    rows = result["rows"]
    text = (f"**Your run differs from ours** in {changed} of {len(files['same']) + changed} result files "
            f"(yours: {k['yours']}; ours: {k['ours']}). Row means ({SELECTION_NAMES[result['selection']]}) move by "
            f"at most {rows['diff'].abs().max():.2f} points; {int(rows['within'].sum())} of {len(rows)} moves are "
            f"within our seed-to-seed standard deviation.")
    v = result["verdicts"]
    if v is not None and len(v):
        same = v["same_sign"] & v["same_significance"]
        if same.all():
            text += f" Every one of the {len(v)} paired verdicts (sign and Holm significance) is the same."
        else:
            moved = "; ".join(f"{r.row} {METRICS[r.metric]}" for r in v[~same].itertuples())
            text += f" {int((~same).sum())} of {len(v)} paired verdicts changed (sign or significance): {moved}."
    return text


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


SELECTION_MEANING = {"best": "the best test value over the evaluations, as the official code records it",
                     "val": "the test value at the evaluation with the best validation value of the same metric",
                     "last": "the test value at the last evaluation"}


def _json_records(df, columns, digits=4):
    """A table as flat JSON records: floats rounded, NaN as null."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(v) else round(float(v), digits)
        return v
    return [{c: cell(v) for c, v in zip(columns, rec)} for rec in df[columns].itertuples(index=False)]


def _study_markdown(comparisons, groups):
    md = ["## Study: each row minus its baseline, paired by seed", "",
          "Percentage points of the test classes. Δ: the mean of the per-seed differences with its 95% interval "
          "(Student's t, n - 1 degrees of freedom); p_holm: the two-sided paired t-test's p-value after Holm's "
          f"correction, whose family is {HOLM_FAMILY}; * where p_holm < 0.05; k/n: seeds where the row is higher. "
          "Selections: " + "; ".join(f"{s}, {SELECTION_MEANING[s]}" for s in dict.fromkeys(comparisons["selection"]))
          + ". Every comparison, R-Precision too: comparisons.csv.", ""]
    for group in groups:
        table = study_table(comparisons, group)
        md += [f"### Group `{group}`", "", markdown_table(table) if not table.empty else
               "No row of this group has a baseline: nothing to compare.", ""]
    return md


def _calibration_outcome(choice, profile):
    low, high = profile.calibrate
    chosen = choice[choice["chosen"]]
    if len(chosen):
        c = chosen.iloc[0]
        return f"**{c['row']}** is chosen ({c['note']}): mean best test Recall@1 {c['mean']:.2f}%."
    note = choice[choice["note"] != ""]
    closest = f" on {note.iloc[0]['row']}, the row closest to {(low + high) / 2:g}" if len(note) else ""
    return f"No row is chosen: knob 2 needed{closest}."


def _mechanism_markdown(compared):
    def g(v):
        return "-" if not np.isfinite(v) else f"{v:.4g}"

    table = pd.DataFrame({"Row": compared["row"], "vs": compared["baseline"], "quantity": compared["quantity"],
                          "n": compared["pairs"].astype(str), "baseline": compared["baseline_mean"].map(g),
                          "row": compared["row_mean"].map(g),
                          "Δ [95% CI]": [f"{g(m)} [{g(lo)}, {g(hi)}]" for m, lo, hi in
                                         zip(compared["diff_mean"], compared["ci_low"], compared["ci_high"])],
                          "k/n": compared["positive"]})
    return ["## Mechanism: embedding diagnostics of the last checkpoints", "",
            "Each row minus its baseline, paired by seed, in the diagnostics' own units (fractions, not percent). "
            "Descriptive: no test is corrected for multiplicity here, and none decides anything (per run: "
            "diagnostics.csv; paired: mechanism.csv).", "", markdown_table(table), ""]


def build_report(profile, out=None, partial=False, log=print):
    """Write runs.csv, evaluations.csv, the tables (CSV + tables.md) and the figures of a profile.

    What a profile's keys add: groups (a study): comparisons.csv (study_comparisons), a table per group in
    tables.md, figures/curves_<group> for every group named budgets*; calibrate: calibration.csv and its section
    (calibration_choice); a group named "mechanism": diagnostics.csv (its rows and their baselines, last
    checkpoints, mechanism_diagnostics) and mechanism.csv; book.tsne on a run with more than one epoch
    checkpoint: figures/tsne_epochs.

    report.json holds profile, config, table_value, selections, runs, expected_runs, partial, rows, baselines,
    seeds, data_name, description, and where the profile has them (flat records; NaN written as null):
        study: a record per line of comparisons.csv: group, row, baseline, metric, selection, pairs,
            baseline_mean, row_mean, diff_mean, diff_sd, ci_low, ci_high (percent), p, p_holm, significant,
            positive ("k/n"); holm_family: what a Holm family is, in words.
        calibration: {low, high, chosen (the row, or null), outcome (a sentence)}.
        mechanism: a record per line of mechanism.csv: row, baseline, quantity, pairs, baseline_mean, row_mean,
            diff_mean, ci_low, ci_high, p, positive (the diagnostics' units).

    Args:
        profile: a Profile or a name for load_profile.
        out: output folder (default: the profile's report_dir, results/report/<profile>).
        partial: report only the finished runs instead of failing on the first unfinished one.
    Returns:
        the output folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    out = Path(out) if out else profile.report_dir
    runs, evaluations = collect(profile, partial=partial)
    if runs.empty:
        raise ValueError(f"no finished run in {profile.runs_dir}: nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    runs[["row", "seed", "name", *MACHINE_COLUMNS]].to_csv(out / MACHINE_FILE, index=False, float_format="%.1f")
    runs = runs.drop(columns=MACHINE_COLUMNS)
    runs.to_csv(out / "runs.csv", index=False, float_format="%.6f")
    evaluations.to_csv(out / "evaluations.csv", index=False, float_format="%.6f")
    chosen = selections(runs)

    md = [f"# Results: profile `{profile.name}`", "", profile.description, "",
          f"Tables use the **{profile.table_value}** value of each run ({SELECTION_MEANING[profile.table_value]}); "
          f"values in percent, seeds {sorted(set(runs['seed']))}. Each heading says which value its table uses.", ""]
    for value in chosen:
        for metric, title in METRICS.items():
            table = table_from_runs(runs, metric, value)
            stem = f"table_{metric.replace('@', '_at_')}" + ("" if value == profile.table_value else f"_{value}")
            table.to_csv(out / f"{stem}.csv", index=False)
            md += [f"## {title} ({value})", "", markdown_table(table), ""]
        for metric, title in METRICS.items():
            paired = paired_from_runs(runs, metric, value)
            if not paired.empty:
                paired.to_csv(out / f"paired_{metric.replace('@', '_at_')}_{value}.csv", index=False)
                md += [f"## {title} ({value}): MemVir minus baseline, paired by seed", "", markdown_table(paired), ""]
    if profile.compare == "table4":  # the paper's Table 4 beside ours
        table = table4_comparison(runs, profile.table_value)
        table.to_csv(out / "table4.csv", index=False)
        md += [f"## Table 4 ({profile.table_value}): ours on glyphs beside the paper's Recall@1", "",
               markdown_table(table), ""]
    if profile.select:  # a search profile: the hyper-parameters chosen on the validation classes
        choice = validation_choice(profile)
        choice.to_csv(out / "selection.csv", index=False)
        md += [f"## The choice: best validation {METRICS[profile.select]} per loss", "", markdown_table(choice), ""]
    summary = {"profile": profile.name, "config": str(profile.path.relative_to(profile.root)),
               "table_value": profile.table_value, "selections": chosen, "runs": int(len(runs)),
               "expected_runs": len(profile.runs), "partial": bool(len(runs) < len(profile.runs)),
               "rows": [r.label for r in profile.rows], "baselines": profile.baselines, "seeds": profile.seeds,
               "data_name": str(profile.rows[0].params.get("data_name", "")).lower(),
               "description": profile.description}
    if profile.groups:  # a study: every row against its baseline, Holm-corrected per metric and selection
        comparisons = study_comparisons(runs, profile.groups, profile.baselines)
        comparisons.to_csv(out / "comparisons.csv", index=False, float_format="%.6f")
        md += _study_markdown(comparisons, profile.groups)
        summary.update(study=_json_records(comparisons, COMPARISON_COLUMNS), holm_family=HOLM_FAMILY)
    if profile.calibrate:
        choice = calibration_choice(profile, runs)
        choice.to_csv(out / "calibration.csv", index=False, float_format="%.4f")
        low, high = profile.calibrate
        outcome = _calibration_outcome(choice, profile)
        md += ["## Calibration: the rule's choice", "",
               f"The rule ({profile.path.name}): " + CALIBRATION_RULE.format(low=low, high=high,
                                                                            middle=(low + high) / 2) + ". " + outcome,
               "", markdown_table(choice), ""]
        picked = choice.loc[choice["chosen"], "row"]
        summary["calibration"] = {"low": low, "high": high, "chosen": picked.iloc[0] if len(picked) else None,
                                  "outcome": outcome}
    if "mechanism" in profile.groups:
        rows = set(profile.groups["mechanism"])
        rows |= {profile.baselines[r] for r in rows if r in profile.baselines}
        diagnostics = mechanism_diagnostics(profile, runs, rows)
        diagnostics.to_csv(out / "diagnostics.csv", index=False, float_format="%.6f")
        compared = mechanism_comparisons(diagnostics, profile.baselines)
        compared.to_csv(out / "mechanism.csv", index=False, float_format="%.6f")
        if not compared.empty:
            md += _mechanism_markdown(compared)
            summary["mechanism"] = _json_records(compared, list(compared.columns))
    (out / "tables.md").write_text("\n".join(md))

    fig = bar_figure(runs, profile.table_value)
    save_figure(fig, out / "figures", "bars")
    plt.close(fig)
    fig = learning_curves_figure(evaluations, runs)
    save_figure(fig, out / "figures", "learning_curves")
    plt.close(fig)
    for group, members in profile.groups.items():
        if group.startswith("budgets"):  # the training-budget questions: how the gap moves with the epochs
            fig = curves_figure(evaluations, members)
            save_figure(fig, out / "figures", f"curves_{re.sub(r'[^A-Za-z0-9_-]+', '_', group)}")
            plt.close(fig)
    memvir_rows = [r for r in profile.rows if parse_bool(r.params.get("memvir", False))]
    steps, C, B = {}, None, None
    for r in memvir_rows:
        run = profile.run(r.label)
        if run.name in set(runs["name"]):
            config, _, s = read_run(run.folder)
            if s is not None:
                steps[r.label] = s
                C, B = C or s["num_classes_in_use"].min(), B or config.get("batch_size")
    if steps:
        fig = curriculum_figure(steps, C, B)
        save_figure(fig, out / "figures", "curriculum")
        plt.close(fig)
    if "tsne" in profile.book:  # chapter 07 only reads these
        run = profile.run(profile.book["tsne"])
        base = profile.run(profile.baselines[run.row])
        if not all(epoch_checkpoints(r.folder / "checkpoints") for r in (run, base)):
            log(f"report: no t-SNE figures: {run.folder} or {base.folder} has no checkpoint")
        elif {run.name, base.name} <= set(runs["name"]):
            tsne_figures(run.folder, base.folder, out / "figures")
        if len(epoch_checkpoints(run.folder / "checkpoints")) > 1 and run.name in set(runs["name"]):
            tsne_epochs_figure(run.folder, out / "figures")  # a run that kept its epochs (max_to_keep 0)
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"report: {len(runs)} of {len(profile.runs)} runs -> {out}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    """`python -m memvir report --profile P`: write the tables and figures of a profile's finished runs."""
    parser = argparse.ArgumentParser(prog="python -m memvir report", description=__doc__.split("\n", 1)[0],
                                     epilog="Writes results/report/<profile>/: runs.csv, tables, figures, and says "
                                            "whether it equals the committed results/reference/<profile>/. The "
                                            "runs themselves: python -m memvir pipeline.")
    parser.add_argument("--profile", default="cpu", help="configs/<name>.yml or a path to a profile (default cpu)")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--report-root", default=None, help="folder of reports (default results/report)")
    parser.add_argument("--out", default=None, help="report folder (default <report-root>/<profile>)")
    parser.add_argument("--partial", action="store_true", help="report the finished runs only")
    parser.add_argument("--promote", action="store_true",
                        help="then copy the report over the committed reference (results/reference/<profile>): "
                             "for the maintainers, after checking it; `make reproduce` never does this")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        profile = load_profile(args.profile, args.runs_root, args.report_root)
        out = build_report(profile, args.out, partial=args.partial, log=lambda s: print(s, flush=True))
        reference = profile.reference_dir
        if args.promote:
            import shutil

            if reference.exists():
                shutil.rmtree(reference)
            shutil.copytree(out, reference)
            print(f"report: promoted to the reference {reference}")
        elif (reference / "report.json").is_file():  # say, never silently, whether the reference was reproduced
            result = against_reference(out, reference)
            changed = [*result["files"]["different"], *result["files"]["missing"], *result["files"]["extra"]]
            print(f"report: equal to the committed reference {reference} bit for bit ({len(result['files']['same'])}"
                  f" files; {result['kernels']['yours']})" if result["equal"] else
                  f"report: differs from the committed reference {reference} in {len(changed)} files ({changed[0]}"
                  f"{', ...' if len(changed) > 1 else ''}); yours: {result['kernels']['yours']}, the reference: "
                  f"{result['kernels']['ours']}. The results chapter's 'Your run against ours' compares them")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
