"""Files shared between the splits of a prepared folder: the same file twice, or the same bytes twice.

Retrieval on classes never trained on is the whole point of the benchmarks (MemVir Sec. 4.1): a test image that
is also a training image makes the test measure memory. Two kinds are told apart:

  * the same file: a test class that is a link to ../train, a link inside a test class to a train class, a hard
    link. Nothing of the benchmarks' own does this; it is a mistake in preparing the folder, and it is refused.
  * the same bytes in two files: a copy. Photos of products get reused across listings, so a benchmark may hold a
    few such pairs of its own; they are counted and warned of in one line, not refused.

Cost: one stat per image; only files whose size equals a file's of another split are read, first their first
64 KB, and only those that still agree are hashed whole.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict

__all__ = ["SharedFiles", "shared_files"]

HEAD = 64 << 10


class SharedFiles:
    """What two or more splits share: `same_file` and `same_bytes`, each a list of (split, path, split, path)."""

    def __init__(self, same_file, same_bytes):
        self.same_file, self.same_bytes = same_file, same_bytes

    @staticmethod
    def describe(pairs, how, root):
        """One line: the count, the splits they join, an example (paths relative to `root`, the data folder)."""
        a, pa, b, pb = pairs[0]
        joined = sorted({" and ".join(sorted((x, y))) for x, _, y, _ in pairs})
        return (f"{len(pairs)} image(s) of {', '.join(joined)} {how}, e.g. {os.path.relpath(pa, root)} and "
                f"{os.path.relpath(pb, root)}")


def _digest(path, limit=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if limit is not None:
            h.update(f.read(limit))
        else:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.digest()


def shared_files(splits):
    """Return the SharedFiles between the splits.

    Args:
        splits: {split name: list of image paths}; links are followed (a link to an image is that image).
    """
    by_inode, by_size = {}, defaultdict(list)
    same_file = []
    for split, paths in splits.items():
        for path in paths:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            first = by_inode.get(key)
            if first is None:
                by_inode[key] = (split, path)
                by_size[st.st_size].append((split, path))
            elif first[0] != split:
                same_file.append((first[0], first[1], split, path))
    same_bytes = []
    for group in by_size.values():
        if len({split for split, _ in group}) < 2:  # sizes met in one split only: nothing to compare
            continue
        for limit in (HEAD, None):  # the first 64 KB, then (for what still agrees across splits) the whole file
            buckets = defaultdict(list)
            for split, path in group:
                buckets[_digest(path, limit)].append((split, path))
            buckets = [b for b in buckets.values() if len({split for split, _ in b}) > 1]
            group = [item for bucket in buckets for item in bucket]
        for (split, path), *rest in buckets:
            same_bytes += [(split, path, s, p) for s, p in rest if s != split]
    return SharedFiles(same_file, same_bytes)
