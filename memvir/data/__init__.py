"""Data: the glyph benchmark (embedded, the default) and the paper's four benchmarks as prepared image folders.

    splits = build_datasets("cars196", data="data/cars196")   # after `python -m memvir prepare cars196 ...`
    splits.train.labels, splits.num_classes                   # (n,) int64, 98
    loader = DataLoader(splits.train, batch_sampler=BatchSampler(splits.train.labels, 128))

Every dataset yields (image tensor, int label) and carries `.labels` (numpy int64), so samplers and metrics never
load an image to learn a label.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np

# Re-exports, imported on first use: `python -m memvir prepare` then never pays for importing torch.
_LAZY = {"ImageFolderDataset": "folder", "ImageListDataset": "folder", "ImageLoadError": "folder",
         "load_rgb": "folder", "BatchSampler": "samplers", "EpochSeeded": "samplers", "train_transform": "transforms",
         "test_transform": "transforms"}
__all__ = ["Splits", "build_datasets", "check_evaluation_images", "DATA_NAMES", "canonical_data_name", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The one table of data-set names (memvir.data.prepare and memvir.train read it too): every accepted spelling ->
# the canonical name. The aliases are the official main.py's (car, cub, stanfordonlineproducts, ...) and the
# official downloads' folder names (CUB_200_2011, Stanford_Online_Products, In-shop); see canonical_data_name.
DATA_NAMES = {"cars196": "cars196", "car": "cars196", "cars": "cars196",
              "cub200": "cub200", "cub": "cub200", "cub_200_2011": "cub200",
              "sop": "sop", "stanfordonlineproducts": "sop", "stanford_online_products": "sop",
              "inshop": "inshop", "in_shop": "inshop",
              "glyphs": "glyphs", "custom": "custom"}


def canonical_data_name(name):
    """Return the canonical data-set name of `name` (any case, '-' or '_'), or None when it is not one."""
    return DATA_NAMES.get(str(name).lower().replace("-", "_"))


# Number of training classes C of each benchmark (the official code hard-codes them as args.C).
PAPER_NUM_CLASSES = {"cars196": 98, "cub200": 100, "sop": 11318, "inshop": 3997}
LAYOUT = ("DATA/train/<class>/<image> and DATA/test/<class>/<image> (In-Shop: DATA/train/<item>/<image>, "
          "DATA/test/query/<item>/<image>, DATA/test/gallery/<item>/<image>), as written by "
          "`python -m memvir prepare <name> --src DOWNLOADS --out DATA`")


@dataclass
class Splits:
    """The datasets of one benchmark; each yields (image, label) and has `.labels` (numpy int64)."""
    train: Dataset
    test: Dataset          # In-Shop: gallery then query images, labelled by item (as the official test/ folder)
    num_classes: int       # C: the number of training classes (the proxies of the loss)
    query: Dataset | None = None    # In-Shop only
    gallery: Dataset | None = None  # In-Shop only
    val: Dataset | None = None      # glyphs with val_classes > 0 only


def _glyph_splits(data, glyph_kwargs):
    from .glyphs import GlyphDataset, glyph_splits, render_glyphs  # the glyph module is optional for this one

    kwargs = dict(glyph_kwargs)
    val_classes = kwargs.pop("val_classes", 0)
    if data is not None:
        kwargs.setdefault("cache_dir", data)  # for glyphs, `data` is where rendered glyph sets are cached
    parts = glyph_splits(render_glyphs(**kwargs), val_classes=val_classes)
    made = {name: GlyphDataset(p.images, p.labels, train=(name == "train"), chars=p.chars)
            for name, p in parts.items()}
    return Splits(train=made["train"], test=made["test"], val=made.get("val"), num_classes=len(parts["train"].chars))


def _folder(path, transform, classes=None):
    from .folder import ImageFolderDataset

    try:
        return ImageFolderDataset(path, transform=transform, classes=classes)
    except (FileNotFoundError, ValueError) as exc:  # the same error, with the whole layout spelled out
        raise type(exc)(f"{exc}. Expected layout: {LAYOUT}") from exc


def build_datasets(data_name, data=None, backbone="bninception", input_size=224, decode="pil", **glyph_kwargs):
    """Build the train and test datasets (In-Shop: also query and gallery) of a benchmark.

    Args:
        data_name: cars196, cub200, sop, inshop (prepared folders), custom (any folder in that layout) or glyphs;
            the aliases of DATA_NAMES (car, cub, stanfordonlineproducts, in_shop, ...) too, in any case.
        data: the prepared folder (DATA/train, DATA/test); for glyphs, an optional cache folder.
        backbone: "bninception" or "resnet*": picks the image normalisation (memvir.data.transforms).
        input_size: side of the square crops (224 in the paper).
        decode: how training images are decoded: "pil" (official), "draft" or "gpu" (memvir.data.transforms).
        **glyph_kwargs: for glyphs only: render_glyphs' options and val_classes (memvir.data.glyphs).
    Returns:
        Splits with num_classes = the number of training classes.
    """
    name = canonical_data_name(data_name)
    if name is None:
        raise ValueError(f"data_name {data_name!r}; expected one of {', '.join(dict.fromkeys(DATA_NAMES.values()))}"
                         f" or an alias ({', '.join(k for k, v in DATA_NAMES.items() if k != v)})")
    if name == "glyphs":
        if decode != "pil":
            raise ValueError(f"decode={decode!r}: glyphs are rendered tensors, not image files; expected 'pil'")
        return _glyph_splits(data, glyph_kwargs)
    if glyph_kwargs:
        raise ValueError(f"options {sorted(glyph_kwargs)} apply to data_name='glyphs' only, not {data_name!r}; "
                         f"expected only data, backbone and input_size for a folder benchmark")
    if data is None:
        raise ValueError(f"data_name={data_name!r} needs data=<folder>; expected layout: {LAYOUT}")
    data = os.fspath(data)
    if not os.path.isdir(data):
        what = "is not a folder" if os.path.exists(data) else "does not exist"
        raise FileNotFoundError(f"data folder {data} {what}; expected layout: {LAYOUT}")
    manifest = os.path.join(data, "memvir_prepare.json")
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                state = json.load(f)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{manifest}: not valid JSON ({exc}); expected `memvir prepare`'s manifest of {data}: "
                             f"re-run the same prepare command") from None
        if not isinstance(state, dict):
            raise ValueError(f"{manifest}: expected a mapping (`memvir prepare`'s manifest of {data}), got a "
                             f"{type(state).__name__}; re-run the same prepare command")
        state = state.get("state")
        if state != "complete":
            raise ValueError(f"{manifest} says state={state!r}: `memvir prepare` was interrupted while writing "
                             f"{data}; expected 'complete': re-run the same prepare command")

    from .folder import ImageListDataset
    from .transforms import test_transform, train_transform

    train = _folder(os.path.join(data, "train"), train_transform(backbone, input_size, decode=decode))
    if name == "inshop":
        tf = test_transform(backbone, input_size)
        q_dir, g_dir = os.path.join(data, "test", "query"), os.path.join(data, "test", "gallery")
        for d in (q_dir, g_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{d} {'is not a folder' if os.path.exists(d) else 'does not exist'}; "
                                        f"expected layout: {LAYOUT}")
        # One item -> label map for both, so that a query's label equals its gallery matches' labels.
        items = sorted({e.name for d in (q_dir, g_dir) for e in os.scandir(d) if e.is_dir()})
        query, gallery = _folder(q_dir, tf, items), _folder(g_dir, tf, items)
        test = ImageListDataset(gallery.paths + query.paths, np.concatenate([gallery.labels, query.labels]),
                                transform=tf, classes=items)
        splits = Splits(train=train, test=test, query=query, gallery=gallery, num_classes=len(train.classes))
    else:
        test = _folder(os.path.join(data, "test"), test_transform(backbone, input_size))
        splits = Splits(train=train, test=test, num_classes=len(train.classes))
    _check_disjoint(data, {"train": train.paths, **({"query": splits.query.paths, "gallery": splits.gallery.paths}
                                                  if name == "inshop" else {"test": test.paths})})
    want = PAPER_NUM_CLASSES.get(name)
    if want is not None and splits.num_classes != want:
        warnings.warn(f"{data}/train has {splits.num_classes} classes; the paper's {name} has {want} "
                      f"(fine for a miniature; otherwise check the --src given to `memvir prepare`)", stacklevel=2)
    return splits


def _check_disjoint(data, paths):
    """Refuse a file that two splits share (a link, a hard link); warn of byte-identical copies (data/overlap.py)."""
    from .overlap import SharedFiles, shared_files

    shared = shared_files(paths)
    if shared.same_file:
        what = SharedFiles.describe(shared.same_file, "are the same file (a link or hard link)", data)
        raise ValueError(f"{data}: {what}; expected disjoint splits: the test classes must be unseen in training "
                         f"(remove the links, or re-run `python -m memvir prepare`)")
    if shared.same_bytes:
        what = SharedFiles.describe(shared.same_bytes, "hold the same bytes", data)
        warnings.warn(f"{data}: {what}: copies across the splits (a benchmark may hold a few of its own; many mean "
                      f"the splits leak)", stacklevel=3)


def check_evaluation_images(splits, workers=1):
    """Decode every image of the evaluation splits once (JPEGs at 1/8 scale, on a thread pool, ~1 ms an image).

    Raises:
        ValueError naming the first damaged image, its split and how many are damaged.
    """
    from .folder import check_images

    for name in ("test", "query", "gallery", "val"):
        paths = getattr(getattr(splits, name, None), "paths", None)
        bad = check_images(((p, p) for p in paths), max(1, workers)) if paths else {}
        if bad:
            path, reason = sorted(bad.items())[0]
            raise ValueError(f"{path}: cannot read this {name} image ({reason}); {len(bad)} bad {name} image(s) in "
                             f"all: re-run `python -m memvir prepare`, or remove the file")
