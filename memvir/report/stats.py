"""Paired statistics, the one place they are computed: a row against its baseline seed by seed, Holm's correction,
every comparison of a profile in one family per metric and selection, and what a comparison says in words.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .runs import selections, values_by_row

__all__ = ["paired_comparison", "holm", "STUDY_METRICS", "COMPARISON_COLUMNS", "HOLM_FAMILY", "study_comparisons",
           "verdict", "describe"]


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
        t-test of a zero mean difference, n - 1 degrees of freedom), ahead (an integer: the pairs where the
        row is higher; "k/n" is ahead/pairs). sd, interval and p are NaN for n < 2; with diff_sd = 0, p is
        0 (NaN when d is all 0).
    """
    from scipy import stats

    seeds = sorted(s for s in set(row) & set(baseline) if np.isfinite(row[s]) and np.isfinite(baseline[s]))
    a = np.array([baseline[s] for s in seeds], dtype=float)  # (n,)
    b = np.array([row[s] for s in seeds], dtype=float)  # (n,)
    d, n = b - a, len(seeds)
    out = {"pairs": n, "baseline_mean": np.nan, "row_mean": np.nan, "diff_mean": np.nan, "diff_sd": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "ahead": int((d > 0).sum())}
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


STUDY_METRICS = ("recall@1", "map_at_r", "r_precision")  # the metrics a study compares (its tables: the first two)


COMPARISON_COLUMNS = ["group", "row", "baseline", "metric", "selection", "pairs", "baseline_mean", "row_mean",
                      "diff_mean", "diff_sd", "ci_low", "ci_high", "p", "p_holm", "significant", "ahead"]


HOLM_FAMILY = ("every comparison of the profile (a row against its baseline) with the same metric and selection, "
               "each counted once even when its row is in two groups")


def study_comparisons(runs, groups, baselines, contrasts=None):
    """Every row of every group against its baseline, per metric and selection: paired statistics, Holm-corrected.

    For each group, each of its rows that has a baseline, each metric of STUDY_METRICS and each selection of
    `selections(runs)`: one line of paired_comparison (values in percent). Holm's correction (holm) is applied
    per family: every comparison of the profile with the same metric and selection, each (row, baseline) once
    even when the row is in two groups. significant: p_holm < 0.05.

    Args:
        runs: collect's runs (or runs.csv).
        groups: {group name: [row label, ...]} (Profile.groups).
        baselines: {row: its baseline row} (Profile.baselines).
        contrasts: {name: [(row, other row), ...]} (Profile.contrasts): each row against the other row given, as
            group `name`, in the same families.
    Returns:
        DataFrame with COMPARISON_COLUMNS, groups and rows in the order given.
    """
    chosen = selections(runs)
    per = {(m, s): values_by_row(runs, m, s) for m in STUDY_METRICS for s in chosen}  # {row: {seed: percent}}
    have = set(runs["row"])
    records = []
    pairs = [(g, row, baselines.get(row)) for g, members in groups.items() for row in members]
    pairs += [(name, row, other) for name, listed in (contrasts or {}).items() for row, other in listed]
    for group, row, base in pairs:
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
            f"{int(c['ahead'])}/{int(c['pairs'])} seeds ({p}): {verdict(c)}")
