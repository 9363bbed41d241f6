"""Mini-batches of indices (a seeded shuffle, or the official class-balanced sampler), and seeded augmentation.

Use with `DataLoader(dataset, batch_sampler=BatchSampler(dataset.labels, ...))` and call `set_epoch(epoch)` before
each epoch: the batches are a pure function of (seed, epoch), so a run resumed at epoch e sees the batches the
uninterrupted run saw, and every rank of a distributed run agrees on each global batch without communicating.

Class-balanced batches follow utils/custom_loader.py of the official code: each batch draws
P = batch_size // n_instance classes, then n_instance images of each; the classes are distinct when P is smaller
than the number of classes, otherwise drawn with replacement; an epoch is len(labels) // batch_size such batches,
each drawn independently (so an epoch need not show every image). One deviation: the official sampler crashes
on a class with fewer than n_instance images; here such a class contributes all its images (shuffled), topped
up by repeats drawn with replacement.

The MemVir paper trains with n_instance = 1 (MemVir Sec. 4.1), i.e. the plain shuffle, whose last, smaller batch
is kept as the official DataLoader(shuffle=True) keeps it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import batches_per_epoch


class BatchSampler(Sampler):
    """Yield lists of dataset indices, one per (local part of a) mini-batch.

    Args:
        labels: (n,) integer class labels of the dataset (dataset.labels).
        batch_size: B, the global batch size (all ranks together).
        n_instance: images per class in a batch; 1 = plain shuffle, > 1 = class-balanced (B divisible by it).
        seed: base seed; epoch e uses the generator seeded by (seed, e).
        rank, world_size: this process's share: rank r gets rows [r B/W, (r+1) B/W) of each global batch.
        drop_last: drop a final batch smaller than B (only meaningful for n_instance = 1; default False there).
            With world_size > 1 a final batch smaller than world_size is always dropped, and a larger one is
            split into near-equal parts, so that every rank takes the same number of steps.
    """

    def __init__(self, labels, batch_size, n_instance=1, seed=0, rank=0, world_size=1, drop_last=False):
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
        for name, value, low in (("batch_size", batch_size, 1), ("n_instance", n_instance, 1),
                                 ("world_size", world_size, 1), ("seed", seed, 0), ("rank", rank, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
        if rank >= world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}; expected each "
                             f"rank to get batch_size / world_size images")
        if n_instance > 1:
            if batch_size < n_instance or batch_size % n_instance:
                raise ValueError(f"batch_size={batch_size} is not a multiple of n_instance={n_instance}; expected "
                                 f"batch_size = (classes per batch) x n_instance")
            if len(labels) < batch_size:
                raise ValueError(f"{len(labels)} images give no batch of batch_size={batch_size} "
                                 f"(the class-balanced sampler draws len(labels) // batch_size batches)")
            if drop_last is False:
                drop_last = True  # class-balanced batches are always full; there is no last partial batch
        self.labels = labels
        self.batch_size, self.n_instance, self.seed = int(batch_size), int(n_instance), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        # members[c]: dataset indices of the c-th class (sorted by label), ascending.
        self.members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the epoch whose batches the next iteration yields."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: expected an integer >= 0")
        self.epoch = int(epoch)

    def global_batches(self, epoch=None):
        """Return the epoch's global batches: a list of index arrays, each of B indices (the last maybe fewer)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        n, B = len(self.labels), self.batch_size
        if self.n_instance == 1:
            perm = rng.permutation(n)
            batches = [perm[i:i + B] for i in range(0, n, B)]
            if batches and (len(batches[-1]) < B) and (self.drop_last or len(batches[-1]) < self.world_size):
                batches.pop()
            return batches
        per_batch = B // self.n_instance  # P classes per batch
        C = len(self.members)
        batches = []
        for _ in range(n // B):
            chosen = rng.choice(C, per_batch, replace=per_batch >= C)  # official: distinct iff P < C
            rows = []
            for c in chosen:
                idx = self.members[c]
                if len(idx) >= self.n_instance:
                    rows.append(rng.choice(idx, self.n_instance, replace=False))
                else:  # deviation: the official sampler raises here
                    rows.append(np.concatenate([rng.permutation(idx),
                                                rng.choice(idx, self.n_instance - len(idx), replace=True)]))
            batches.append(np.concatenate(rows))
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            # Full batches split into equal B/W parts; a short last batch into near-equal ones.
            yield np.array_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self):
        return batches_per_epoch(len(self.labels), self.batch_size, self.n_instance, self.world_size, self.drop_last)


class EpochSeeded(Dataset):
    """Wrap a dataset so that item i of epoch e is drawn with torch's generator seeded by (seed, e, i).

    The random crops, flips and shifts of an image then depend neither on the process that loads it (DDP ranks,
    DataLoader workers) nor on what ran before, so a resumed or a multi-process run augments exactly as a
    one-process uninterrupted run does. The caller's generator state is restored after each item.
    """

    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        self.labels = dataset.labels

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(index)) % (2**63)
        gen = torch.default_generator  # the CPU generator that transforms draw from (torch.manual_seed is slower)
        saved = gen.get_state()
        try:
            gen.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            gen.set_state(saved)
