"""The report's figures from its tables: bars, learning curves (mean and band), budget curves, the curriculum;
each saved as PNG and SVG with fixed metadata (save_figure), so that the same runs give the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write
from .runs import METRICS, SELECTION_NAMES, baselines_of, values_by_row
from .verdicts import trusted_selection

__all__ = ["save_figure", "bar_figure", "learning_curves_figure", "curves_figure", "curriculum_figure",
           "forest_figure"]


def _groups(runs):
    """Group rows by baseline: [(baseline row, [its rows: the baseline first, then its MemVir rows])]."""
    order = list(dict.fromkeys(runs["row"]))
    base = baselines_of(runs)
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
    with plt.rc_context({"svg.hashsalt": stem}):  # written atomically: a reader never sees half a figure
        atomic_write(folder / f"{stem}.png", lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight",
                                                                    metadata={"Software": None}))
        atomic_write(folder / f"{stem}.svg", lambda fh: fig.savefig(fh, format="svg", bbox_inches="tight",
                                                                    metadata={"Date": None, "Creator": None}))
    return [folder / f"{stem}.png", folder / f"{stem}.svg"]


def bar_figure(runs, value="best"):
    """Recall@1, RP and MAP@R with and without MemVir per loss: mean over seeds, error bar = std, dots = seeds."""
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        per_row = values_by_row(runs, metric, value)
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
    """A metric against epoch for each row: the mean over seeds, shaded by its 95% t interval; a panel a metric.

    The band at an epoch is mean ± t(0.975, n - 1) * sd / sqrt(n) over the n seeds evaluated there (sd with
    ddof=1; no band where n < 2). Values in percent.

    Args:
        evaluations: collect's evaluations (or evaluations.csv).
        rows: the row labels to draw, in this order (a row without evaluations is left out).
        metrics: evaluations' columns: a test metric, or val_<metric> for the validation classes.
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
        name, where = (metric[4:], "validation") if metric.startswith("val_") else (metric, "test")
        ax.set_title(f"{METRICS.get(name, name)} on the {where} classes, %")
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


def forest_figure(comparisons, groups, metrics=("map_at_r", "recall@1")):
    """The verdict as a picture: every comparison of a profile as its paired difference with its 95% interval.

    A line per (group, row), grouped and ordered as the profile's groups, a panel per metric; a filled marker
    where Holm's corrected p < 0.05 (the report's `significant`), an open one where not; zero drawn.

    Args:
        comparisons: stats.study_comparisons's table, as read back from comparisons.csv (so that the figure is
            the same drawn from the report's file as from the runs).
        groups: {group: [row, ...]} (Profile.groups), the order of the lines.
    """
    import matplotlib.pyplot as plt

    selection = trusted_selection(comparisons["selection"])
    c = comparisons[comparisons["selection"] == selection]
    lines = [(g, r) for g, rows in groups.items() for r in rows if ((c["group"] == g) & (c["row"] == r)).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 1.1 + 0.32 * len(lines)), sharey=True,
                             squeeze=False, layout="constrained")  # constrained: the title above the panels' own
    y = -np.arange(len(lines), dtype=float)  # top to bottom
    for ax, metric in zip(axes[0], metrics):
        for k, (g, r) in enumerate(lines):
            d = c[(c["group"] == g) & (c["row"] == r) & (c["metric"] == metric)].iloc[0]
            low, high = float(d["ci_low"]), float(d["ci_high"])
            ax.plot([low, high], [y[k], y[k]], color="0.3", lw=1.2)
            ax.plot(float(d["diff_mean"]), y[k], "o", ms=5.5, color="0.1",
                    mfc="0.1" if bool(d["significant"]) else "white")
        ax.axvline(0.0, color="firebrick", lw=1, ls="--")
        ax.set_title(f"{METRICS.get(metric, metric)}: row minus its baseline, points", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [f"{r}  [{g}]" for g, r in lines], fontsize=8)
    for k in range(1, len(lines)):  # a rule between groups
        if lines[k][0] != lines[k - 1][0]:
            for ax in axes[0]:
                ax.axhline((y[k] + y[k - 1]) / 2, color="0.8", lw=0.8)
    fig.suptitle(f"Paired by seed, 95% interval; filled: Holm p < 0.05 ({SELECTION_NAMES[selection]})", fontsize=9)
    return fig
