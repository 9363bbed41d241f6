"""Read each benchmark's official annotation files into a plan: one Entry per image of the output tree, its split
and class, and the split sizes every paper reports (EXPECTED) to compare it with (memvir/data/prepare.py)."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

from .source import PrepareError

# Split sizes reported by every deep-metric-learning paper since Oh Song et al. (2016); MemVir Sec. 4.1.
EXPECTED = {
    "cars196": {"train classes": 98, "train images": 8054, "test classes": 98, "test images": 8131},
    "cub200": {"train classes": 100, "train images": 5864, "test classes": 100, "test images": 5924},
    "sop": {"train classes": 11318, "train images": 59551, "test classes": 11316, "test images": 60502},
    "inshop": {"train classes": 3997, "train images": 25882, "query images": 14218, "gallery images": 12612},
}


@dataclass
class Entry:
    """One image of the output tree: OUT/<split>/<cls>/<name>, whose contents come from `key` in --src."""
    split: str   # "train", "test", "test/query", "test/gallery"
    cls: str     # class folder name
    path: str    # image path as written in the annotation file
    key: str = ""
    name: str = ""
    where: str = ""  # the annotation line it comes from ("<file>, line 12"), for messages


@dataclass
class Annotations:
    """What a benchmark's annotation files say: the entries, and where to look for the images they name."""
    entries: list[Entry]
    source: str                                   # the annotation file the image paths come from (for messages)
    bases: list[str]                              # candidate folders (keys) the paths are relative to
    problems: list[str] = field(default_factory=list)  # empty classes and the like, reported before writing


def _require(index, basename, what):
    key = index.find(basename)
    if key is None:
        raise FileNotFoundError(f"no {basename} under {index.src}{' or its archives' if index.archives else ''} "
                                f"(expected {what})")
    return key


def _bases(key, *suffixes):
    """Candidate folders for relative image paths: the annotation's folder and each folder above it."""
    parts = key.split("/")[:-1]
    dirs = ["/".join(parts[:i]) + "/" if i else "" for i in range(len(parts), -1, -1)]
    return [d + s for d in dirs for s in suffixes]


def _lines(index, key, expect):
    """Return the non-empty lines of a text annotation file, each with its 1-based line number."""
    try:
        text = index.read(key).decode("utf-8-sig")  # -sig: a byte-order mark is not part of the first line
    except UnicodeDecodeError as exc:
        raise PrepareError(f"{index.items[key].describe()}: not UTF-8 text ({exc}); expected {expect}") from exc
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _fields(index, key, i, line, n, expect, ints=()):
    parts = line.split()
    bad = len(parts) != n
    if not bad:
        try:
            for j in ints:
                parts[j] = int(parts[j])
        except ValueError:
            bad = True
    if bad:
        raise PrepareError(f"{index.items[key].describe()}, line {i}: {line.strip()!r}; expected {expect}")
    return parts


CARS_TXT_FORMAT = "'<image path>,<class 1..196>' lines, e.g. 'car_ims/000001.jpg,1'"


def _cars_entry(cls, path, where):
    """Classes 1-98 train, 99-196 test; the folder is the bare class number, as the official prepare_cars.py."""
    return Entry("train" if cls <= 98 else "test", str(cls), path, where=where)


def _read_cars_mat(index, key):
    """The entries of Stanford's cars_annos.mat (a struct array `annotations`; its `test` flag is ignored)."""
    import numpy as np
    import scipy.io

    where = index.items[key].describe()
    try:
        mat = scipy.io.loadmat(io.BytesIO(index.read(key)), simplify_cells=True)
    except Exception as exc:
        raise PrepareError(f"cannot read {where}: {exc} (expected a MATLAB .mat file)") from exc
    anns = mat.get("annotations")
    if isinstance(anns, dict):  # a one-element struct array is squeezed to a dict
        anns = [anns]
    if anns is None or len(anns) == 0 or not isinstance(anns[0], dict):
        raise PrepareError(f"{where}: expected a struct array 'annotations' (fields relative_im_path, class, ...)")
    for f in ("relative_im_path", "class"):
        if f not in anns[0]:
            raise PrepareError(f"{where}: 'annotations' has no field {f!r} (has {sorted(anns[0])})")
    entries = []
    for i, a in enumerate(anns):
        cls = int(np.asarray(a["class"]).item())
        if not 1 <= cls <= 196:
            raise PrepareError(f"{where}: image {a['relative_im_path']} has class {cls}; expected 1..196")
        entries.append(_cars_entry(cls, str(a["relative_im_path"]), f"{where}, annotations[{i}]"))
    return entries


def _read_cars_txt(index, key):
    """The entries of the official repository's cars_annos.txt: '<path>,<class>' per line.

    The official dataset/prepare_cars.py reads the first two comma-separated fields of each line (the path
    relative to the file's folder, the class number) and ignores any further ones; so do we.
    """
    where = index.items[key].describe()
    entries = []
    for i, line in _lines(index, key, CARS_TXT_FORMAT):
        parts = [p.strip() for p in line.split(",")]
        try:
            cls = int(parts[1]) if len(parts) >= 2 and parts[0] else 0
        except ValueError:
            cls = 0
        if not 1 <= cls <= 196:
            raise PrepareError(f"{where}, line {i}: {line.strip()!r}; expected {CARS_TXT_FORMAT}")
        entries.append(_cars_entry(cls, parts[0], f"{where}, line {i}"))
    return entries


def read_cars196(index):
    """Classes 1-98 train, 99-196 test, from cars_annos.mat or cars_annos.txt (both given: they must agree)."""
    found = {name: index.find(name) for name in ("cars_annos.mat", "cars_annos.txt")}
    if not any(found.values()):
        raise FileNotFoundError(f"no cars_annos.mat or cars_annos.txt under {index.src}"
                                f"{' or its archives' if index.archives else ''} (expected the CARS196 annotation "
                                f"file next to car_ims/: Stanford's cars_annos.mat or the official MemVir "
                                f"repository's cars_annos.txt)")
    read = {"cars_annos.mat": _read_cars_mat, "cars_annos.txt": _read_cars_txt}
    lists = {name: read[name](index, key) for name, key in found.items() if key}
    if len(lists) == 2:
        as_set = {name: {(e.split, e.cls, e.path) for e in entries} for name, entries in lists.items()}
        differ = sorted(as_set["cars_annos.mat"] ^ as_set["cars_annos.txt"], key=lambda t: t[2])
        if differ:
            raise PrepareError(f"{index.items[found['cars_annos.mat']].describe()} and "
                               f"{index.items[found['cars_annos.txt']].describe()} disagree on {len(differ)} "
                               f"image(s), e.g. {differ[0][2]} (class {differ[0][1]}); expected the same images "
                               f"and classes in both: remove the one you do not trust")
    name = "cars_annos.mat" if "cars_annos.mat" in lists else "cars_annos.txt"  # Stanford's own file first
    return Annotations(lists[name], index.items[found[name]].describe(), _bases(found[name], ""))


def read_cub200(index):
    """Classes 1-100 train, 101-200 test, from images.txt, image_class_labels.txt and classes.txt."""
    k_img = _require(index, "images.txt", "CUB_200_2011/images.txt ('<image id> <path under images/>' lines)")
    folder = k_img.rsplit("/", 1)[0] + "/" if "/" in k_img else ""
    keys = {}
    for name, expect in (("image_class_labels.txt", "'<image id> <class id>' lines"),
                         ("classes.txt", "'<class id> <class name>' lines")):
        keys[name] = folder + name
        if keys[name] not in index.items:
            raise FileNotFoundError(f"no {name} next to {index.items[k_img].describe()} (expected {expect})")
    paths, lines = {}, {}
    for i, line in _lines(index, k_img, "'<image id> <path>'"):
        img_id, path = _fields(index, k_img, i, line, 2, "'<image id> <path>'", ints=(0,))
        if img_id in paths:
            raise PrepareError(f"{index.items[k_img].describe()}, line {i}: image id {img_id} appears twice")
        paths[img_id], lines[img_id] = path, i
    k_lab, k_cls = keys["image_class_labels.txt"], keys["classes.txt"]
    names, name_lines = {}, {}
    for i, line in _lines(index, k_cls, "'<class id> <class name>'"):
        cid, name = _fields(index, k_cls, i, line, 2, "'<class id> <class name>'", ints=(0,))
        names[cid], name_lines[cid] = name.replace("/", "_"), i
    labels = {}
    for i, line in _lines(index, k_lab, "'<image id> <class id>'"):
        img_id, cid = _fields(index, k_lab, i, line, 2, "'<image id> <class id>'", ints=(0, 1))
        if img_id not in paths:
            raise PrepareError(f"{index.items[k_lab].describe()}, line {i}: image id {img_id} is not in "
                               f"{index.items[k_img].describe()}")
        if cid not in names:
            raise PrepareError(f"{index.items[k_lab].describe()}, line {i}: class {cid} is not in "
                               f"{index.items[k_cls].describe()}")
        labels[img_id] = cid
    unlabelled = sorted(set(paths) - set(labels))
    if unlabelled:
        raise PrepareError(f"{index.items[k_lab].describe()}: no class for image id(s) {unlabelled[:5]} "
                           f"({len(unlabelled)} in all); expected one line per image of images.txt")
    # The class folder is named after classes.txt, the image after images.txt: `where` names both lines.
    entries = [Entry("train" if labels[i] <= 100 else "test", names[labels[i]], paths[i],
                     where=f"{index.items[k_cls].describe()}, line {name_lines[labels[i]]} and "
                           f"{index.items[k_img].describe()}, line {lines[i]}") for i in sorted(paths)]
    problems = [f"class {cid} ({names[cid]}) of {index.items[k_cls].describe()} has no images in "
                f"{index.items[k_lab].describe()}; expected at least one"
                for cid in sorted(set(names) - set(labels.values()))]
    # An empty folder under images/ is a class whose pictures went missing (e.g. an interrupted unpacking).
    images_dir = os.path.join(index.src, *folder.split("/"), "images")
    if index.items[k_img].path and os.path.isdir(images_dir):
        for d in sorted(os.scandir(images_dir), key=lambda d: d.name):
            if d.is_dir() and not any(os.scandir(d.path)):
                problems.append(f"empty class folder {d.path}; expected the class's images in it")
    return Annotations(entries, index.items[k_img].describe(), _bases(k_img, "images/"), problems)


SOP_HEADER = "image_id class_id super_class_id path"


def read_sop(index):
    """Ebay_train.txt -> train (11,318 classes), Ebay_test.txt -> test (11,316 classes)."""
    entries, sources, bases = [], [], []
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        key = _require(index, name, f"Stanford_Online_Products/{name} with header '{SOP_HEADER}'")
        lines = _lines(index, key, f"header '{SOP_HEADER}'")
        first = lines[0][1] if lines else ""
        if first.split() != SOP_HEADER.split():
            raise PrepareError(f"{index.items[key].describe()}: first line {first!r}; "
                               f"expected the header '{SOP_HEADER}'")
        for i, line in lines[1:]:
            _, cid, _, path = _fields(index, key, i, line, 4, f"'{SOP_HEADER}' (four fields)", ints=(0, 1, 2))
            entries.append(Entry(split, f"{cid:05d}", path, where=f"{index.items[key].describe()}, line {i}"))
        sources.append(index.items[key].describe())
        bases = bases or _bases(key, "")
    return Annotations(entries, " and ".join(sources), bases)


INSHOP_STATUS = {"train": "train", "query": "test/query", "gallery": "test/gallery"}


def read_inshop(index):
    """list_eval_partition.txt: train items -> train, query -> test/query, gallery -> test/gallery."""
    expect = ("a count, the header 'image_name item_id evaluation_status', "
              "then 'img/... id_XXXXXXXX train|query|gallery' lines")
    key = _require(index, "list_eval_partition.txt", f"Eval/list_eval_partition.txt: {expect}")
    where = index.items[key].describe()
    lines = _lines(index, key, expect)
    if len(lines) < 2 or not lines[0][1].strip().isdigit() or lines[1][1].split()[:1] != ["image_name"]:
        raise PrepareError(f"{where}: first two lines {[l for _, l in lines[:2]]}; expected {expect}")
    entries = []
    for i, line in lines[2:]:
        path, item, status = _fields(index, key, i, line, 3, expect)
        if status not in INSHOP_STATUS:
            raise PrepareError(f"{where}, line {i}: evaluation_status {status!r}; expected train, query or gallery")
        entries.append(Entry(INSHOP_STATUS[status], item, path, where=f"{where}, line {i}"))
    if int(lines[0][1]) != len(entries):
        raise PrepareError(f"{where}: first line says {int(lines[0][1])} images but {len(entries)} image lines "
                           f"follow; expected the count to match (a truncated download?)")
    # The official download keeps the annotation in Eval/ and the images in Img/img/ (Img/img.zip).
    return Annotations(entries, where, _bases(key, "", "Img/"))


READERS = {"cars196": read_cars196, "cub200": read_cub200, "sop": read_sop, "inshop": read_inshop}
# The annotation files of each benchmark (kept in memory when met inside an archive).
TEXT_NAMES = {"cars196": ["cars_annos.mat", "cars_annos.txt"],
              "cub200": ["images.txt", "image_class_labels.txt", "classes.txt"],
              "sop": ["Ebay_train.txt", "Ebay_test.txt"], "inshop": ["list_eval_partition.txt"]}


def _resolve(index, ann):
    """Attach each entry's --src key; return the keys that are missing. The base with most hits is chosen."""
    def hits(base):
        return sum((base + e.path) in index.items for e in ann.entries)

    base = max(ann.bases, key=hits)  # max keeps the first (nearest) base on ties
    missing = []
    for e in ann.entries:
        e.key = base + e.path
        if e.key not in index.items:
            missing.append(e.path)
    return base, missing


def _plain_name(name):
    """True when `name` is one ordinary folder or file name: joined under a folder, it stays in that folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and not os.path.isabs(name))


def _check_names(entries):
    """Refuse annotation content that would become a path outside --out (a class named '../x', an absolute item
    id): the member names of archives are filtered when read, but class names and item ids are annotation text."""
    for e in entries:
        for what, value in (("class folder", e.cls), ("file name", e.name)):
            if not _plain_name(value):
                raise PrepareError(f"{e.where}: {what} {value!r} is not a plain name (it holds '/', '\\', '..' or "
                                   f"is empty) and would be written outside --out; expected the official "
                                   f"annotations (nothing was written)")


def _name_files(entries):
    """Name each output file by its basename; where two would clash in one folder, by its whole path."""
    groups = {}
    for e in entries:
        groups.setdefault((e.split, e.cls, e.path.rsplit("/", 1)[-1]), []).append(e)
    for (_, _, base), group in groups.items():
        for e in group:
            e.name = base if len(group) == 1 else e.path.replace("/", "__")
    _check_names(entries)
    seen = {}
    for e in entries:
        dest = f"{e.split}/{e.cls}/{e.name}"
        if dest in seen:
            raise PrepareError(f"the annotations name {e.path} twice (both would become {dest}); expected each "
                               f"image once")
        seen[dest] = e


def count(entries):
    """Return {"train classes": ..., "train images": ..., ...}: the numbers of the EXPECTED table."""
    out = {}
    for e in entries:
        split = e.split.rsplit("/", 1)[-1]  # test/query -> query
        out.setdefault(split, [set(), 0])
        out[split][0].add(e.cls)
        out[split][1] += 1
    flat = {}
    for split, (classes, n) in out.items():
        flat[f"{split} classes"] = len(classes)
        flat[f"{split} images"] = n
    return flat


def compare_counts(name, counts):
    """Return one line per number that differs from the paper's split (EXPECTED), empty when all agree."""
    return [f"{what}: found {counts.get(what, 0):,}, expected {want:,}"
            for what, want in EXPECTED[name].items() if counts.get(what, 0) != want]
