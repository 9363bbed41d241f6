"""Embed a split with a trained network and score it: Recall@K, R-Precision, MAP@R (and NMI on request).

The metrics themselves are memvir.metrics (pure functions of a neighbour table, fed by a faiss search); this file
only runs the network over a dataset in its order, as the official test loader does.
"""
from __future__ import annotations

import os

import torch

__all__ = ["EVAL_BATCH_SIZE", "embed", "evaluate", "evaluate_checkpoint"]

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
    from .config import parse_k_list, resolve_config
    from .experiment import build
    from .rundir import load_checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"--eval_best: {path} does not exist; train the model first (same --save_path)")
    ckpt = load_checkpoint(path, device)
    saved = resolve_config({**ckpt["config"], "eval_best": False, **({"data": data} if data else {})})
    exp = build(saved, device, pretrained=False)
    exp.net.load_state_dict(ckpt["model"])
    ks = parse_k_list(saved.k_list)
    ev = {"epoch": ckpt["epoch"], "step": ckpt["step"],
          **evaluate(exp.net, exp.splits.test, ks, device, workers, exp.splits, nmi=saved.do_nmi)}
    return ev, ks
