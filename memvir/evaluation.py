"""Embed a split with a trained network and score it: Recall@K, R-Precision, MAP@R (and NMI on request).

The metrics themselves are memvir.metrics (pure functions of a neighbour table, fed by a faiss search); this file
only runs the network over a dataset in its order, as the official test loader does. `embedding_diagnostics`
scores the seen (train) and the unseen (test) classes side by side, retrieval and the geometry of the space.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch

__all__ = ["EVAL_BATCH_SIZE", "embed", "evaluate", "evaluate_checkpoint", "embedding_diagnostics"]

EVAL_BATCH_SIZE = 128  # as the official test loader


@torch.no_grad()
def embed(net, dataset, device, workers=0, l2_norm=True):
    """Return the embeddings of a dataset, (n, D) float32 on the CPU, in dataset order (unit rows by default)."""
    was_training = net.training
    net.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    out = [net(images.to(device, non_blocking=True), l2_norm=l2_norm).float().cpu() for images, _ in loader]
    net.train(was_training)
    return torch.cat(out)  # (n, D)


def evaluate(net, dataset, ks, device, workers=0, splits=None, nmi=False) -> dict:
    """Return Recall@K, r_precision and map_at_r of `net` on `dataset` (In-Shop: queries against the gallery).

    Args:
        net: the embedding network (not the DDP wrapper).
        dataset: yields (image, label), with `.labels`.
        ks: the K of Recall@K.
        splits: the Splits `dataset` came from; when it has query and gallery (In-Shop) those are used instead.
        nmi: also return "nmi", the NMI of a k-means clustering of the embeddings (the official --do_nmi).
    Paper: MemVir Sec. 4 (Recall@K); R-Precision and MAP@R as Musgrave et al. 2020.
    """
    from . import metrics

    if splits is not None and splits.query is not None and dataset is splits.test:
        query, gallery = embed(net, splits.query, device, workers), embed(net, splits.gallery, device, workers)
        out = metrics.query_gallery_metrics(query, splits.query.labels, gallery, splits.gallery.labels, ks=ks)
        if nmi:  # the official code clusters the query and gallery embeddings together
            out["nmi"] = metrics.nmi(torch.cat([query, gallery]), [*splits.query.labels, *splits.gallery.labels])
        return out
    emb = embed(net, dataset, device, workers)
    out = metrics.retrieval_metrics(emb, dataset.labels, ks=ks)
    if nmi:
        out["nmi"] = metrics.nmi(emb, dataset.labels)
    return out


def evaluate_checkpoint(path, device, data=None, workers=0) -> tuple[dict, list]:
    """Rebuild a trained run from a checkpoint and evaluate it on its test classes (what --eval_best does).

    Args:
        path: a checkpoint written by memvir.train (e.g. <save_path>/checkpoints/best_recall_1.pt).
        data: the data folder, when it moved since training (None: the one in the checkpoint's config).
    Returns:
        (the evaluation: epoch, step and the metrics; the Recall@K list).
    """
    from .config import parse_k_list
    from .resolve import resolve_config
    from .experiment import build
    from .rundir import load_checkpoint, load_state

    if not os.path.exists(path):
        raise FileNotFoundError(f"--eval_best: {path} does not exist; train the model first (same --save_path)")
    ckpt = load_checkpoint(path, device, fields=("config", "model", "epoch", "step"))
    saved = resolve_config({**ckpt["config"], "eval_best": False, **({"data": data} if data else {})})
    exp = build(saved, device, pretrained=False)
    load_state(exp.net, ckpt, "model", path)
    ks = parse_k_list(saved.k_list)
    ev = {"epoch": ckpt["epoch"], "step": ckpt["step"],
          **evaluate(exp.net, exp.splits.test, ks, device, workers, exp.splits, nmi=saved.do_nmi)}
    return ev, ks


def embedding_diagnostics(net, splits, device, ks, workers=0, max_items=None, pca_k=10) -> dict:
    """Measure retrieval and the geometry of the embedding space on the train (seen) and test (unseen) classes.

    The train split is embedded without augmentation (glyphs: augment=False; image folders: the test split's
    evaluation transform), as the test split is. Per side, over all its items against each other (In-Shop's test:
    the retrieval metrics of its queries against its gallery, as `evaluate`, and the geometry of both together):

        {side}_recall@K, {side}_r_precision, {side}_map_at_r   memvir.metrics.retrieval_metrics
        {side}_uniformity       Wang & Isola, t = 2 (lower = more spread over the sphere)
        {side}_alignment        Wang & Isola, alpha = 2 (lower = same-class pairs closer)
        {side}_pca_share@{pca_k}   variance share of the top pca_k principal components (1 = a pca_k-dim subspace)
        {side}_effective_rank   Roy & Vetterli (how many directions the embeddings use)
        {side}_items, {side}_classes   what was measured

    for side = train and test, then gap_{metric} = train_{metric} - test_{metric} for every retrieval metric
    (gap_recall@K, gap_r_precision, gap_map_at_r): how much better the seen classes are retrieved than the unseen.

    Args:
        net: the embedding network (not the DDP wrapper).
        splits: memvir.data.Splits (train, test; In-Shop also query and gallery).
        ks: the K of Recall@K.
        max_items: None (default) = every training image; else whole training classes, in a fixed random order
            (seed 0), as many as fit in max_items images: a deterministic subsample for large training sets.
        pca_k: the k of the PCA variance share (at most the embedding size D).
    Returns:
        a flat dict of python floats (ints for the counts).
    Paper: MemVir says it relieves a "strong focus on seen classes"; Wang & Isola, ICML 2020; Roy & Vetterli 2007.
    """
    from . import metrics

    train, train_labels = _unaugmented(splits.train, splits.test), np.asarray(splits.train.labels)
    if max_items is not None:
        keep = _whole_classes(train_labels, max_items)  # (m,) indices, sorted
        train, train_labels = torch.utils.data.Subset(train, keep), train_labels[keep]
    train_emb = embed(net, train, device, workers)  # (n_train, D) unit rows
    sides = {"train": (train_emb, train_labels, metrics.retrieval_metrics(train_emb, train_labels, ks=ks))}
    if splits.query is not None:  # In-Shop: queries against the gallery
        query, gallery = embed(net, splits.query, device, workers), embed(net, splits.gallery, device, workers)
        scores = metrics.query_gallery_metrics(query, splits.query.labels, gallery, splits.gallery.labels, ks=ks)
        sides["test"] = (torch.cat([query, gallery]), np.concatenate([splits.query.labels, splits.gallery.labels]),
                         scores)
    else:
        test_emb = embed(net, splits.test, device, workers)  # (n_test, D)
        sides["test"] = (test_emb, np.asarray(splits.test.labels),
                         metrics.retrieval_metrics(test_emb, splits.test.labels, ks=ks))

    out = {}
    for side, (emb, labels, scores) in sides.items():
        out.update({f"{side}_{key}": value for key, value in scores.items()})
        out[f"{side}_uniformity"] = metrics.uniformity(emb, t=2.0)
        out[f"{side}_alignment"] = metrics.alignment(emb, labels, alpha=2.0)
        out[f"{side}_pca_share@{pca_k}"] = metrics.pca_variance_share(emb, pca_k)
        out[f"{side}_effective_rank"] = metrics.effective_rank(emb)
        out[f"{side}_items"], out[f"{side}_classes"] = len(labels), len(np.unique(labels))
    for key in sides["test"][2]:
        out[f"gap_{key}"] = out[f"train_{key}"] - out[f"test_{key}"]
    return out


def _unaugmented(train, test):
    """A shallow copy of the train dataset that serves its images as evaluation does (no random augmentation)."""
    plain = copy.copy(train)
    if hasattr(train, "augment"):  # GlyphDataset: the only randomness is its shift
        plain.augment = False
    elif hasattr(train, "transform") and hasattr(test, "transform"):  # image folders: the test split's transform
        plain.transform = test.transform
    else:
        raise ValueError(f"splits.train: expected a dataset with `augment` (glyphs) or `transform` (image folders) "
                         f"to embed without augmentation, got {type(train).__name__}")
    return plain


def _whole_classes(labels, max_items):
    """Indices (sorted) of whole classes, in a seeded random order, as many as fit in max_items items."""
    if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 2:
        raise ValueError(f"max_items: expected None or an integer >= 2, got {max_items!r}")
    classes, counts = np.unique(labels, return_counts=True)
    order = np.random.default_rng(0).permutation(len(classes))
    fits = np.cumsum(counts[order]) <= max_items  # (C,) a prefix of the shuffled classes
    keep = np.flatnonzero(np.isin(labels, classes[order][fits]))
    if len(keep) < 2:
        raise ValueError(f"max_items={max_items}: expected room for at least 2 items of whole training classes "
                         f"(the first class drawn has {counts[order][0]})")
    return keep
