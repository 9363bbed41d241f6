"""A missing optional dependency is one line naming the extra that brings it: pip install 'memvir[train]'.

`pip install memvir` brings torch and numpy only (MemVir, the losses); training, evaluation, the data sets and the
report need the `train` extra, the pipeline the `book` extra (pyproject.toml). A library call that needs a module
of an extra that is not installed (memvir.retrieval_metrics needs faiss, the glyph renderer matplotlib) raised
a bare "No module named 'faiss'". A finder placed last on sys.meta_path, so consulted only for a module no other
finder has, turns that into the same ModuleNotFoundError (same `name`) with the extra to install, when memvir's
own code asked for it; any other import is left as it was.
"""
from __future__ import annotations

import re
import sys

__all__ = ["DISTRIBUTIONS", "extra_for", "install"]

# Import names that differ from the name of the distribution that brings them (all others are the same).
DISTRIBUTIONS = {"faiss": "faiss-cpu", "sklearn": "scikit-learn", "PIL": "pillow", "fontTools": "fonttools",
                 "yaml": "pyyaml", "pytorch_metric_learning": "pytorch-metric-learning"}


def extra_for(module):
    """The extra of memvir's installed metadata (pyproject.toml's optional-dependencies) that brings `module`."""
    from importlib import metadata

    top = module.split(".")[0]
    wanted = DISTRIBUTIONS.get(top, top).lower().replace("_", "-")
    try:
        requires = metadata.requires("memvir") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requires:  # e.g. 'faiss-cpu>=1.8; extra == "train"'
        name, extra = re.match(r"\s*([A-Za-z0-9._-]+)", line).group(1), re.search(r"extra\s*==\s*['\"]([^'\"]+)", line)
        if extra and name.lower().replace("_", "-") == wanted:
            return extra.group(1)
    return None


def _asked_by_memvir():
    """True when a frame of memvir's own code is on the stack (the import comes from a memvir call)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").split(".")[0] == "memvir":
            return True
        frame = frame.f_back
    return False


class _MissingExtra:
    """A meta path finder that finds nothing: it only says which extra brings a missing module memvir needs."""

    busy = False  # extra_for imports importlib.metadata, which may itself look for a module that is absent

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if "." in name or cls.busy or not _asked_by_memvir():
            return None
        cls.busy = True
        try:
            extra = extra_for(name)
        except Exception:  # importlib.metadata half imported (it was what looked): Python's own error stands
            extra = None
        finally:
            cls.busy = False
        if extra is None:
            return None
        raise ModuleNotFoundError(f"No module named {name!r}: memvir needs it for this, and its '{extra}' extra "
                                  f"installs it: pip install 'memvir[{extra}]'", name=name)


def install():
    """Put the finder last on sys.meta_path, once."""
    if not any(isinstance(f, _MissingExtra) for f in sys.meta_path):
        sys.meta_path.append(_MissingExtra())
