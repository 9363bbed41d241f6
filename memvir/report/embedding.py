"""The embedding space of trained runs: the mechanism's diagnostics (seen against unseen classes, uniformity, the
spectrum) paired by seed, and the t-SNE figures of chapter 07, drawn from the embeddings of trained runs.

The runs come loaded: `load(folder, checkpoint="last")` returns a trained run (memvir.trained.TrainedRun: its
embeddings, taken steps, proxies and diagnostics), so the results layer imports no training code; the caller
(`python -m memvir report`, a chapter) hands it `memvir.trained.load`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..rundir import epoch_checkpoints, read_run
from .figures import save_figure
from .stats import paired_comparison

__all__ = ["mechanism_diagnostics", "mechanism_comparisons", "tsne_figures", "tsne_epoch_choice",
           "tsne_epochs_figure"]


def mechanism_diagnostics(profile, runs, rows, load):
    """Diagnose the last checkpoint of every finished run of `rows`: its `diagnostics()`
    (memvir.evaluation.embedding_diagnostics).

    Args:
        profile: the Profile the runs belong to.
        runs: collect's runs (which runs are finished).
        rows: the row labels to diagnose (a study's "mechanism" group and the baselines of its rows).
        load: `load(folder, checkpoint)` -> a trained run (memvir.trained.load).
    Returns:
        DataFrame: row, seed, epoch (of the checkpoint), and embedding_diagnostics' keys (train_/test_/gap_
        retrieval metrics, uniformity, alignment, PCA share, effective rank, items and classes measured), in its
        units (fractions, not percent).
    """
    finished = set(runs["name"])
    records = []
    for run in profile.runs:
        if run.row in rows and run.name in finished:
            trained = load(run.folder, "last")
            records.append({"row": run.row, "seed": run.seed, "epoch": trained.epoch, **trained.diagnostics()})
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


def _check_memvir(run):
    if not run.is_memvir:
        raise ValueError(f"{run.folder}: not a MemVir run (its criterion is {run.criterion_name})")


def _tsne_steps_panel(ax, run, perplexity=30.0, seed=0):
    """Draw one t-SNE panel of a MemVir checkpoint: the next training batch, the taken past steps, the proxies.

    The next batch is the first of the epoch after the checkpoint, embedded by its network (run.next_batch());
    each past step MemVir would take next (run.taken(), none before the warm-up ends) has its colour; the current
    proxies are black stars (MemVir Fig. 3).
    """
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    groups = {"current step": run.next_batch()}  # (B, D)
    for k, emb in enumerate(run.taken(), start=1):
        groups[f"t-{k * (run.cfg['mem_step_gap'] + 1)} (k={k})"] = emb  # (n, D)
    proxies = run.proxies()  # (C, D)
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
    """Draw chapter 07's two t-SNE figures from two trained runs and save them (PNG and SVG) in out_dir.

    tsne_steps: the MemVir run's next training batch (embedded by the trained network) with the past steps its
    memory would take as virtual classes, one colour per step, and the current proxies (the paper's Fig. 3).
    tsne_test: `test_classes` unseen classes as embedded by the MemVir run and by its baseline.

    Args:
        memvir_run, baseline_run: trained runs, their last checkpoints (memvir.trained.load of two run folders:
            same loss and seed, with and without MemVir).
    Returns:
        {"tsne_steps": png path, "tsne_test": png path}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    models = {"with MemVir": memvir_run, "without MemVir": baseline_run}
    _check_memvir(memvir_run)
    cfg = memvir_run.cfg
    fig_steps, ax = plt.subplots(figsize=(7, 6))
    _tsne_steps_panel(ax, memvir_run, perplexity, seed)
    ax.set_title(f"training embeddings by step: MemVir N={cfg['mem_num_step']}, M={cfg['mem_step_gap']}")

    rng = np.random.default_rng(seed)
    labels = memvir_run.test_labels
    chosen = np.sort(rng.choice(int(labels.max()) + 1, size=min(test_classes, int(labels.max()) + 1),
                                replace=False))
    idx = np.flatnonzero(np.isin(labels, chosen))
    fig_test, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (name, run) in zip(axes, models.items()):
        emb = run.embed_test(idx)  # (n, D)
        xy = TSNE(perplexity=min(perplexity, len(idx) - 1), init="pca", random_state=seed).fit_transform(emb)
        ax.scatter(*xy.T, c=np.searchsorted(chosen, labels[idx]), cmap="tab20", s=12)
        last = read_run(run.folder)[1]["last"]
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


def tsne_epochs_figure(run_dir, out_dir, load, perplexity=30.0, seed=0):
    """Draw `tsne_epochs`: one _tsne_steps_panel per checkpoint of tsne_epoch_choice, saved (PNG, SVG) in out_dir.

    Args:
        run_dir: a MemVir run folder that keeps its epoch checkpoints (max_to_keep 0).
        load: `load(folder, checkpoint)` -> a trained run (memvir.trained.load).
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
        run = load(run_dir, paths[epoch])
        _check_memvir(run)
        taken = _tsne_steps_panel(ax, run, perplexity, seed)
        ax.set_title(f"after epoch {epoch} (U = {warm}): {taken} past steps taken")
    fig.tight_layout()
    save_figure(fig, out_dir, "tsne_epochs")
    plt.close(fig)
    return Path(out_dir) / "tsne_epochs.png"
