"""Tables and figures from run folders only (`python -m memvir report`): what the book's results chapters read.

Results flow one way:

    results/runs/<profile>/<run>/     one folder per run (memvir/rundir.py), trained by memvir/pipeline.py
    results/report/<profile>/         runs.csv, evaluations.csv, tables (CSV and Markdown), figures (PNG and SVG)
    the book's chapters               read those tables and figures; they never write here

Everything here reads only the files of the run folder's format; nothing scrapes notebooks. The tables have the
layout of the official README (Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.), values in percent: `Mean` over the
runs, `Std.` the sample standard deviation (ddof=1), `Diff.` a MemVir row's mean minus its baseline row's mean.
The paper's code keeps the best value over training's evaluations on the test set; a profile says which value its
tables use (`table_value`), and the report always gives both. The t-SNE figures of chapter 07 are drawn here
too, from the checkpoints of two runs (`tsne_figures`).

Chapters: notebooks/06_results.py, 07_embedding_space.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .config import parse_bool
from .pipeline import TABLE_VALUES, Profile, load_profile
from .rundir import epoch_checkpoints, load_checkpoint, read_run, run_state

__all__ = ["METRICS", "collect", "runs_table", "paired_differences", "table_from_runs", "paired_from_runs",
           "paper_table", "paper_results", "formatted", "markdown_table", "load_trained", "save_figure",
           "bar_figure", "learning_curves_figure", "curriculum_figure", "tsne_figures", "validation_choice", "table4_comparison",
           "build_report", "main"]

METRICS = {"recall@1": "Recall@1", "r_precision": "RP", "map_at_r": "MAP@R"}  # key in metrics.json -> column name


def collect(profile, partial=False):
    """Read every run of a profile into one table: a row per run, best and last value of each metric.

    Args:
        profile: a Profile (or a name for load_profile).
        partial: False: every run must be finished (else ValueError naming the first one that is not);
            True: leave out runs that are not finished.
    Returns:
        (runs, evaluations): runs has columns row, baseline, seed, name, epochs_evaluated, wall_time and
        best_<metric>, best_<metric>_epoch, last_<metric> for every metric of METRICS (fractions);
        evaluations has row, seed, name, epoch, step, wall_time and the metrics, one line per evaluation.
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
        line = {"row": run.row, "baseline": baselines.get(run.row, ""), "seed": run.seed, "name": run.name,
                "epochs_evaluated": metrics["last"].get("epoch"), "wall_time": metrics["last"].get("wall_time")}
        for key in METRICS:
            best = metrics["best"].get(key)
            if best is None or key not in metrics["last"]:
                raise ValueError(f"{folder / 'metrics.json'}: no {key!r} in 'best' and 'last'")
            line[f"best_{key}"] = float(best["value"])
            line[f"best_{key}_epoch"] = int(best["epoch"])
            line[f"last_{key}"] = float(metrics["last"][key])
        rows.append(line)
        for e in metrics["evaluations"]:
            evals.append({"row": run.row, "seed": run.seed, "name": run.name, "epoch": e["epoch"],
                          "step": e.get("step"), "wall_time": e.get("wall_time"),
                          **{k: e[k] for k in e if k.startswith("recall@") or k in METRICS}})
    columns = ["row", "baseline", "seed", "name", "epochs_evaluated", "wall_time"]
    for key in METRICS:
        columns += [f"best_{key}", f"best_{key}_epoch", f"last_{key}"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(evals)


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


def paired_differences(runs, baselines):
    """Compare each MemVir row with its baseline seed by seed.

    Args:
        runs: {row label: {seed: value}} (percent).
        baselines: {MemVir row label: baseline row label}.
    Returns:
        DataFrame with columns Loss, Baseline, Pairs (seeds both rows have), Mean (mean of row - baseline over
        those seeds), Std. (ddof=1), Positive ("k/n": seeds where the row is better), all rounded to 2 decimals,
        and p: the two-sided p-value of a paired t-test (mean difference 0), rounded to 3 decimals.
    """
    from scipy import stats

    records = []
    for row, base in baselines.items():
        if row not in runs or base not in runs:
            raise ValueError(f"baselines: {row if row not in runs else base!r} is not a row of runs")
        seeds = sorted(set(runs[row]) & set(runs[base]))
        d = np.array([runs[row][s] - runs[base][s] for s in seeds], dtype=float)
        sd = float(d.std(ddof=1)) if d.size > 1 else np.nan
        p = float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1)) if sd > 0 else np.nan
        records.append({"Loss": row, "Baseline": base, "Pairs": len(seeds),
                        "Mean": round(float(d.mean()), 2) if d.size else np.nan,
                        "Std.": round(sd, 2), "Positive": f"{int((d > 0).sum())}/{d.size}", "p": round(p, 3)})
    return pd.DataFrame(records, columns=["Loss", "Baseline", "Pairs", "Mean", "Std.", "Positive", "p"])


def _per_row(runs, metric, value):
    if metric not in METRICS or value not in TABLE_VALUES:
        raise ValueError(f"metric must be one of {list(METRICS)} and value one of {TABLE_VALUES}, got {metric!r}, "
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
    from scipy import stats

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
            seeds = sorted(set(per_row[row]) & set(per_row[base]))
            a, b = np.array([per_row[base][s] for s in seeds]), np.array([per_row[row][s] for s in seeds])
            d = b - a
            half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else np.nan
            rec[f"MemVir {title}"] = f"{b.mean():.2f} ± {b.std(ddof=1):.2f}"
            rec[f"Δ {title} [95% CI]"] = f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
        for data in ("CUB200", "CARS196", "SOP"):
            got = paper[paper["method"] == base].set_index("memvir")[data]
            rec[f"paper {data}"] = (f"{got[0]:.1f} → {got[1]:.1f}" if {0, 1} <= set(got.index)
                                    else (f"{got[0]:.1f}" if 0 in got.index else "-"))
        rec["seeds"] = int((runs["row"] == base).sum())
        records.append(rec)
    return pd.DataFrame(records)


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

    from .data.samplers import BatchSampler
    from .evaluation import embed

    runs = {"with MemVir": Path(memvir_run), "without MemVir": Path(baseline_run)}
    models = {name: load_trained(folder) for name, folder in runs.items()}
    net, criterion, splits, cfg, epoch = models["with MemVir"]
    if not hasattr(criterion, "taken"):
        raise ValueError(f"{memvir_run}: not a MemVir run (its criterion is {type(criterion).__name__})")
    sampler = BatchSampler(splits.train.labels, cfg["batch_size"], cfg["n_instance"], seed=cfg["seed"])
    sampler.set_epoch(epoch)  # the first batch of the epoch after the checkpoint
    with torch.no_grad():
        images = torch.stack([splits.train[i][0] for i in next(iter(sampler))])  # (B, channels, H, W)
        groups = {"current step": net(images, l2_norm=True).numpy()}  # (B, D)
    for k, step in enumerate(criterion.taken(), start=1):
        groups[f"t-{k * (cfg['mem_step_gap'] + 1)} (k={k})"] = step.embeddings.numpy()  # (n, D)
    proxies = criterion.loss.embed_proxies(criterion.loss.proxies.detach()).numpy()  # (C, D)
    xy = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.concatenate([*groups.values(), proxies]))
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


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def build_report(profile, out=None, partial=False, log=print):
    """Write runs.csv, evaluations.csv, the tables (CSV + tables.md) and the figures of a profile.

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
    runs.to_csv(out / "runs.csv", index=False, float_format="%.6f")
    evaluations.to_csv(out / "evaluations.csv", index=False, float_format="%.6f")

    meaning = {"best": "the best over the evaluations on the test set, as the official code records it",
               "last": "the last evaluation"}[profile.table_value]
    md = [f"# Results: profile `{profile.name}`", "", profile.description, "",
          f"Tables use the **{profile.table_value}** value of each run ({meaning}); values in percent, seeds "
          f"{sorted(set(runs['seed']))}. Each heading says which value its table uses.", ""]
    for value in TABLE_VALUES:
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
    (out / "tables.md").write_text("\n".join(md))

    fig = bar_figure(runs, profile.table_value)
    save_figure(fig, out / "figures", "bars")
    plt.close(fig)
    fig = learning_curves_figure(evaluations, runs)
    save_figure(fig, out / "figures", "learning_curves")
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
    summary = {
        "profile": profile.name, "config": str(profile.path.relative_to(profile.root)),
        "table_value": profile.table_value, "runs": int(len(runs)), "expected_runs": len(profile.runs),
        "partial": bool(len(runs) < len(profile.runs)), "rows": [r.label for r in profile.rows],
        "baselines": profile.baselines, "seeds": profile.seeds,
        "data_name": str(profile.rows[0].params.get("data_name", "")).lower(), "description": profile.description}
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"report: {len(runs)} of {len(profile.runs)} runs -> {out}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    """`python -m memvir report --profile P`: write the tables and figures of a profile's finished runs."""
    parser = argparse.ArgumentParser(prog="python -m memvir report", description=__doc__.split("\n", 1)[0],
                                     epilog="Writes results/report/<profile>/: runs.csv, tables, figures. The runs "
                                            "themselves: python -m memvir pipeline.")
    parser.add_argument("--profile", default="cpu", help="configs/<name>.yml or a path to a profile (default cpu)")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--report-root", default=None, help="folder of reports (default results/report)")
    parser.add_argument("--out", default=None, help="report folder (default <report-root>/<profile>)")
    parser.add_argument("--partial", action="store_true", help="report the finished runs only")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        profile = load_profile(args.profile, args.runs_root, args.report_root)
        build_report(profile, args.out, partial=args.partial, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
