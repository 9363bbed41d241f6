"""The result tables in the official README's layout (Loss | 1 | ... | 5 | Mean | Diff. | Std.), the paired and
study tables, the paper's own tables, the calibration rule, and the README's number format (formatted, markdown).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import METRICS, baselines_of, collect, values_by_row
from .stats import paired_comparison

__all__ = ["runs_table", "paired_differences", "table_from_runs", "paired_from_runs", "table4_comparison",
           "study_table", "compact_table", "MECHANISM_SHOWN", "mechanism_table", "CALIBRATION_RULE",
           "calibration_choice", "paper_results", "paper_table", "formatted", "markdown_table"]


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
                        "Std.": round(c["diff_sd"], 2), "Positive": f"{c['ahead']}/{c['pairs']}",
                        "p": round(c["p"], 3)})
    return pd.DataFrame(records, columns=["Loss", "Baseline", "Pairs", "Mean", "Std.", "Positive", "p"])


def table_from_runs(runs, metric, value="best"):
    """Build one result table (percent) from `collect`'s runs (or runs.csv): runs_table per row, seeds in order.

    A row whose seeds are not its baseline's (a --partial report) gets its Diff. over the seeds both have: a
    difference of means over two sets of seeds would mix the seeds' spread into the comparison.
    """
    per_row = values_by_row(runs, metric, value)
    base = {r: b for r, b in baselines_of(runs).items() if r in per_row and b in per_row}
    table = runs_table({r: [v[s] for s in sorted(v)] for r, v in per_row.items()}, base)
    for row, b in base.items():
        common = sorted(set(per_row[row]) & set(per_row[b]))
        if common != sorted(per_row[row]) or common != sorted(per_row[b]):
            diff = (float(np.mean([per_row[row][s] for s in common])) - float(np.mean([per_row[b][s] for s in common]))
                    if common else None)
            table.loc[table["Loss"] == row, "Diff."] = round(diff, 2) if common else "-"
    return table


def paired_from_runs(runs, metric, value="best"):
    """Paired-by-seed differences (percent) of every MemVir row against its baseline, from runs.csv."""
    per_row = values_by_row(runs, metric, value)
    base = {r: b for r, b in baselines_of(runs).items() if r in per_row and b in per_row}
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
    pairs = baselines_of(runs)  # {MemVir row: its baseline}
    partner = {base: row for row, base in pairs.items()}
    records = []
    for base in dict.fromkeys(runs["row"]):  # profile order; a baseline without a MemVir row (SoftTriple) too
        if base in pairs:
            continue
        row, rec = partner.get(base), {"Loss": base}
        for metric, title in METRICS.items():
            per_row = values_by_row(runs, metric, value)
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
            rec[f"{sel}: p_holm (k/n)"] = f"{c['p_holm']:.3f}{star} ({int(c['ahead'])}/{int(c['pairs'])})"
        records.append(rec)
    return pd.DataFrame(records)


def compact_table(comparisons, group, selection, metrics=("map_at_r",)):
    """One question's comparisons narrow enough for a page: a line per row with the difference and its 95% interval
    in one cell ("*" where Holm's p < 0.05), the seeds ahead (k/n) and Holm's p, per metric (MAP@R by default: the
    metric that counts every relevant neighbour). One selection only; the rest is in comparisons.csv."""
    df = comparisons[(comparisons["group"] == group) & (comparisons["selection"] == selection)]
    records = []
    for row, g in df.groupby("row", sort=False):
        rec = {"Row": row}
        for metric in metrics:
            c = g[g["metric"] == metric].iloc[0]
            star = " *" if c["significant"] else ""
            name = "" if len(metrics) == 1 else f"{METRICS[metric]} "
            rec[f"Δ {METRICS[metric]} [95% CI]"] = (f"{c['diff_mean']:+.2f} [{c['ci_low']:+.2f}, "
                                                   f"{c['ci_high']:+.2f}]{star}")
            rec[f"{name}k/n"] = f"{int(c['ahead'])}/{int(c['pairs'])}"
            rec[f"{name}Holm p"] = f"{c['p_holm']:.3f}"
        records.append(rec)
    return pd.DataFrame(records)


# The diagnostics a chapter shows of mechanism.csv (the rest stay in the file): retrieval on the seen (train) and
# unseen (test) classes, their gap, and how the unseen classes' embeddings spread.
MECHANISM_SHOWN = ("train_map_at_r", "test_map_at_r", "gap_map_at_r", "gap_recall@1", "test_uniformity",
                   "test_pca_share@10", "test_effective_rank")


def mechanism_table(compared):
    """The mechanism's paired diagnostics (mechanism.csv) as text: Row, vs, quantity, n, baseline and row means,
    "Δ [95% CI]" in one cell, k/n; four significant digits, in the diagnostics' own units."""
    def g(v):
        return "-" if not np.isfinite(v) else f"{v:.4g}"

    return pd.DataFrame({"Row": compared["row"], "vs": compared["baseline"], "quantity": compared["quantity"],
                         "n": compared["pairs"].astype(str), "baseline": compared["baseline_mean"].map(g),
                         "row": compared["row_mean"].map(g),
                         "Δ [95% CI]": [f"{g(m)} [{g(lo)}, {g(hi)}]" for m, lo, hi in
                                        zip(compared["diff_mean"], compared["ci_low"], compared["ci_high"])],
                         "k/n": [f"{int(k)}/{int(n)}" for k, n in zip(compared["ahead"],
                                                                      compared["pairs"])]})


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
    per_row = values_by_row(runs, "recall@1", "best")
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
    path = Path(__file__).resolve().parents[1] / "paper_results" / f"{name}.csv"
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
