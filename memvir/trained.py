"""A trained run read back from a checkpoint, as the results layer takes it: the embeddings of its next batch, of
its memory's taken steps and of test images, its proxies, its diagnostics; and `python -m memvir report`, which
hands `load` to the report (memvir.report imports no training code).

    run = load("results/runs/cpu/<name>")      # the last epoch checkpoint
    run.next_batch(), run.taken(), run.proxies()  # (B, D), [(n, D), ...], (C, D) numpy arrays
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import parse_k_list
from .data.samplers import BatchSampler, EpochSeeded
from .evaluation import embed, embedding_diagnostics
from .experiment import load_trained
from .report import build

__all__ = ["TrainedRun", "load", "main"]


class TrainedRun:
    """A run folder's checkpoint, loaded (memvir.experiment.load_trained): the network in eval mode, the criterion
    (MemVir with its memory, or the bare loss), the data, the config dict and the checkpoint's epoch.

    Args:
        folder: a run folder written by memvir.train.
        checkpoint: "last" (the newest checkpoints/epoch_*.pt) or a file name in checkpoints/.
    """

    def __init__(self, folder, checkpoint="last", device="cpu"):
        self.folder, self.device = Path(folder), device
        self.net, self.criterion, self.splits, self.cfg, self.epoch = load_trained(folder, checkpoint, device)
        self.is_memvir = hasattr(self.criterion, "taken")
        self.criterion_name = type(self.criterion).__name__
        self.test_labels = self.splits.test.labels  # (n_test,)

    def diagnostics(self):
        """memvir.evaluation.embedding_diagnostics of this checkpoint: seen against unseen classes, uniformity, ..."""
        return embedding_diagnostics(self.net, self.splits, torch.device(self.device), parse_k_list(self.cfg["k_list"]))

    def next_batch(self):
        """The first training batch of the epoch after the checkpoint, embedded by its network: (B, D)."""
        cfg = self.cfg
        sampler = BatchSampler(self.splits.train.labels, cfg["batch_size"], cfg["n_instance"], seed=cfg["seed"])
        sampler.set_epoch(self.epoch)
        train = EpochSeeded(self.splits.train, cfg["seed"])  # augmented as training would: the same every time
        train.set_epoch(self.epoch)
        with torch.no_grad():
            images = torch.stack([train[i][0] for i in next(iter(sampler))])  # (B, channels, H, W)
            return self.net(images, l2_norm=True).numpy()  # (B, D)

    def taken(self):
        """The embeddings of each past step MemVir would take next (MemVir.taken(), newest first): [(n, D), ...]."""
        return [step.embeddings.numpy() for step in self.criterion.taken()]

    def proxies(self):
        """The current proxies as the loss compares them: (C, D)."""
        loss = self.criterion.loss
        return loss.embed_proxies(loss.proxies.detach()).numpy()

    def embed_test(self, idx):
        """The test images `idx` embedded by the network: (len(idx), D)."""
        return embed(self.net, torch.utils.data.Subset(self.splits.test, idx), torch.device("cpu")).numpy()


def load(folder, checkpoint="last"):
    """Load a trained run: the loader the report's embedding figures and diagnostics are given."""
    return TrainedRun(folder, checkpoint)


def main(argv=None):
    """`python -m memvir report`: memvir.report.build's command line, with this loader of checkpoints."""
    return build.main(argv, load=load)
