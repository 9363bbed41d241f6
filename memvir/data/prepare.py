"""Prepare the paper's four benchmarks from their official downloads: `python -m memvir prepare`.

    python -m memvir prepare cars196 --src ~/downloads/cars --out data/cars196 [--mode symlink|hardlink|copy]

`--src` is a folder holding the official files, unpacked or as archives (`.tgz`, `.tar.gz`, `.tar`, `.zip`):

    cars196  cars_annos.mat (Stanford's) or cars_annos.txt (the official MemVir repository's), and car_ims/
             (or car_ims.tgz)
    cub200   CUB_200_2011/ (or CUB_200_2011.tgz): images.txt, image_class_labels.txt, classes.txt, images/
    sop      Stanford_Online_Products/ (or its .zip): Ebay_train.txt, Ebay_test.txt and the image folders
    inshop   Eval/list_eval_partition.txt and Img/img/ (or img.zip)

`--out` receives the ImageFolder-style tree that `memvir.data.build_datasets` (and the official code) reads:

    OUT/train/<class>/<image>           the first half of the classes (In-Shop: the 3,997 training items)
    OUT/test/<class>/<image>            the other half (CARS196, CUB-200-2011, SOP)
    OUT/test/query/<item>/<image>       In-Shop queries;  the official main.py reads OUT/test as one ImageFolder
    OUT/test/gallery/<item>/<image>     In-Shop gallery;  whose two "classes" are gallery (0) and query (1)
    OUT/raw/<archive name>/...          archive members, extracted here for --mode symlink/hardlink
    OUT/memvir_prepare.json             manifest: dataset, mode, counts; "state" is "complete" once all is written

The images are linked (`symlink`, the default: no extra disk; `hardlink`: same file system only) or copied;
the files in `--src` are only ever read, never moved or deleted. With archives and `--mode copy`, members are
extracted straight into the tree (no OUT/raw).

Everything is validated before anything is written: the annotation files parse, every image they name exists
and decodes (a cheap reduced-size JPEG decode, which catches truncated files; `--no-verify` skips it), no class
is empty, and the split sizes equal the ones every paper reports (the EXPECTED table); a difference is refused
unless `--force`. The tree is built in OUT/.memvir-staging and renamed into place, so an interrupted run leaves
either the previous complete tree or a manifest whose state says "writing"; re-running is always safe and, when
nothing changed, writes nothing.

The splits are the standard ones of deep metric learning (Oh Song et al., CVPR 2016; MemVir Sec. 4.1):
CARS196 classes 1-98 train / 99-196 test (the annotation's own `test` flag is the classification split and is
ignored), CUB-200-2011 classes 1-100 / 101-200, SOP's Ebay_train/Ebay_test files, In-Shop's evaluation partition.
CARS196 class folders are named as the official dataset/prepare_cars.py names them, by the bare class number
(1 ... 196), so their sorted order, which is ImageFolder's label order, is the official code's (1, 10, 11, ..., 19, 2,
20, ...) and label i is the same car model in both.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..files import SIGPIPE_STATUS, atomic_json, os_error_line, reader_gone  # standard library only: cheap
from . import canonical_data_name  # the one table of data-set names and aliases
from .folder import IMAGE_SUFFIXES, check_images  # folder.py imports numpy only, no torch

# Split sizes reported by every deep-metric-learning paper since Oh Song et al. (2016); MemVir Sec. 4.1.
EXPECTED = {
    "cars196": {"train classes": 98, "train images": 8054, "test classes": 98, "test images": 8131},
    "cub200": {"train classes": 100, "train images": 5864, "test classes": 100, "test images": 5924},
    "sop": {"train classes": 11318, "train images": 59551, "test classes": 11316, "test images": 60502},
    "inshop": {"train classes": 3997, "train images": 25882, "query images": 14218, "gallery images": 12612},
}
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
MANIFEST = "memvir_prepare.json"
STAGING = ".memvir-staging"
RAW = "raw"
EXTRACTED_MARKER = ".memvir-extracted.json"
MODES = ("symlink", "hardlink", "copy")
# Archive members are streamed, never held whole in memory: a member is copied in chunks of CHUNK bytes, and one
# decoded for --verify is spooled (in memory up to SPOOL_BYTES, on disk beyond). An annotation file is kept in
# memory; the four benchmarks' largest is ~4 MB, so one over TEXT_LIMIT is refused (a zip bomb, not annotations).
CHUNK = 1 << 20
SPOOL_BYTES = 8 << 20
TEXT_LIMIT = 256 << 20


class PrepareError(ValueError):
    """Bad input to `prepare`: the message names the file and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# What --src holds: plain files and archive members, both addressed by a posix path relative to --src.

@dataclass(frozen=True)
class Item:
    """One file visible in --src: a plain file (`path`) or a member of an archive (`archive`, `member`)."""
    key: str                    # posix path relative to --src; an archive's members sit in the archive's folder
    path: str | None = None     # absolute path of a plain file
    archive: str | None = None  # absolute path of the archive holding it
    member: str | None = None   # its name inside the archive

    def describe(self):
        return self.path if self.path else f"{self.archive} (member {self.member})"


def _is_archive(name):
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path):
    name = os.path.basename(path)
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):  # ".tar.gz" before ".tar"
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_member(name):
    """Return the normalised member name, or None when it would escape the extraction folder."""
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [s for s in p.parts if s not in ("", ".")]
    if p.is_absolute() or not parts or ".." in parts:
        return None
    return "/".join(parts)


class SourceIndex:
    """Every file under --src, plain or inside an archive, by its posix path relative to --src.

    Archives are opened only when the plain files lack something the annotations need; their members are read
    in one streaming pass that keeps the (small) annotation files and, with `verify`, decodes each image.
    """

    def __init__(self, src, text_names, verify=True, workers=4):
        self.src = os.path.abspath(src)
        self.text_names = set(text_names)  # basenames of annotation files to keep in memory when met in archives
        self.verify, self.workers = verify, workers
        self.items: dict[str, Item] = {}
        self.blobs: dict[str, bytes] = {}  # annotation files found inside archives
        self.bad: dict[str, str] = {}      # archive members that failed check_image
        self.archives: list[str] = []
        self.archives_scanned = False
        self._walk()

    def _walk(self):
        seen = set()
        for root, dirs, files in os.walk(self.src, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:  # a symlink cycle
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            rel_root = os.path.relpath(root, self.src)
            for name in sorted(files):
                path = os.path.join(root, name)
                key = name if rel_root == "." else PurePosixPath(*Path(rel_root).parts, name).as_posix()
                if _is_archive(name) and os.path.isfile(path):
                    self.archives.append(path)
                self.items[key] = Item(key, path=path)

    def scan_archives(self, log):
        """Index the members of every archive under --src (plain files keep precedence)."""
        if self.archives_scanned:
            return
        self.archives_scanned = True
        for archive in self.archives:
            prefix = os.path.relpath(os.path.dirname(archive), self.src)
            prefix = "" if prefix == "." else PurePosixPath(*Path(prefix).parts).as_posix() + "/"
            log(f"reading {archive} ({'decoding every image' if self.verify else 'listing members'}) ...")
            unsafe = []

            def members():
                for name, open_member in _iter_archive(archive):
                    member = _safe_member(name)
                    if member is None:
                        unsafe.append(name)
                        continue
                    key = prefix + member
                    if key in self.items:  # an unpacked copy next to the archive wins
                        continue
                    self.items[key] = Item(key, archive=archive, member=name)
                    base = member.rsplit("/", 1)[-1]
                    if base in self.text_names:
                        with open_member() as fh:
                            self.blobs[key] = _read_text(fh, f"{archive}: {name}")
                    elif self.verify and base.lower().endswith(IMAGE_SUFFIXES):
                        with open_member() as fh:
                            yield key, _spool(fh)  # check_image reads and closes it

            try:
                self.bad.update(check_images(members(), self.workers))
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
                raise PrepareError(f"cannot read archive {archive}: {exc} (expected a readable "
                                   f"{'/'.join(ARCHIVE_SUFFIXES)} archive)") from exc
            if unsafe:
                log(f"warning: {archive}: ignored {len(unsafe)} member(s) whose names leave the archive's folder "
                    f"(absolute or '..'), e.g. {unsafe[0]!r}")

    def find(self, basename):
        """Return the shallowest key whose file name is `basename`, or None."""
        hits = [k for k in self.items if k.rsplit("/", 1)[-1] == basename]
        return min(hits, key=lambda k: (k.count("/"), k)) if hits else None

    def read(self, key):
        item = self.items[key]
        if item.path:
            with open(item.path, "rb") as f:
                return _read_text(f, item.path)
        return self.blobs[key]


def _iter_archive(path):
    """Yield (member name, open()) for the regular files of a tar or zip archive, in stored order; open() gives a
    binary file object of the member, read as it is decompressed (a member is never read whole at once)."""
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
    else:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:  # streaming: a .tgz is decompressed once
                if m.isfile():
                    yield m.name, (lambda m=m: tf.extractfile(m))


def _read_text(fh, where):
    """The bytes of an annotation file, at most TEXT_LIMIT of them (read in chunks: read(n) would allocate n)."""
    data = bytearray()
    while chunk := fh.read(CHUNK):
        data += chunk
        if len(data) > TEXT_LIMIT:
            raise PrepareError(f"{where}: more than {TEXT_LIMIT >> 20} MB; expected an annotation file (the four "
                               f"benchmarks' are a few MB)")
    return bytes(data)


def _spool(fh):
    """Copy a member into a file object that stays in memory up to SPOOL_BYTES and spills to disk beyond."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    shutil.copyfileobj(fh, spool, CHUNK)
    spool.seek(0)
    return spool


# ----------------------------------------------------------------------------------------------------------------
# Reading each benchmark's annotations into a plan: one Entry per image of the output tree.

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


# ----------------------------------------------------------------------------------------------------------------
# Writing: archives to OUT/raw (or straight into the tree for --mode copy), the tree in OUT/.memvir-staging,
# then renamed into place.

def _plan_digest(name, mode, entries, index):
    h = hashlib.sha1(f"{name}\n{mode}\n".encode())
    for e in entries:
        h.update(f"{e.split}/{e.cls}/{e.name}\t{index.items[e.key].describe()}\n".encode())
    return h.hexdigest()


def _read_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}; it should be the JSON manifest of a previous "
                           f"`memvir prepare` (remove it and the tree it describes to start afresh)") from exc


def _write_manifest(out, manifest):
    atomic_json(manifest, os.path.join(out, MANIFEST))  # the manifest is always whole


def _tree_counts(out, splits):
    """Count class folders and files actually on disk under OUT/<split> (the check after writing)."""
    counts = {}
    for split in splits:
        root = os.path.join(out, split)
        classes = [d for d in os.scandir(root) if d.is_dir()] if os.path.isdir(root) else []
        label = split.rsplit("/", 1)[-1]
        counts[f"{label} classes"] = len(classes)
        counts[f"{label} images"] = sum(len(os.listdir(d.path)) for d in classes)
    return counts


def _extract(archive, targets, log):
    """Write archive members to files: targets maps member name -> list of destination paths."""
    log(f"extracting {len(targets):,} files from {archive} ...")
    left = dict(targets)
    for name, open_member in _iter_archive(archive):
        dests = left.pop(name, None)
        if dests:
            for dest in dests:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open_member() as src, open(dests[0], "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)  # streamed: a member of any size costs CHUNK bytes of memory
            for dest in dests[1:]:
                shutil.copyfile(dests[0], dest)
        if not left:
            break
    if left:
        raise PrepareError(f"{archive} changed while preparing: {len(left)} member(s) gone, e.g. {next(iter(left))}")


def _extract_raw(out, archive, members, log):
    """Extract `members` of `archive` to OUT/raw/<archive name>/ unless an identical extraction is there."""
    dest = os.path.join(out, RAW, _archive_stem(archive))
    st = os.stat(archive)
    marker = {"archive": archive, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "members": hashlib.sha1("\n".join(sorted(members)).encode()).hexdigest()}
    marker_path = os.path.join(dest, EXTRACTED_MARKER)
    if os.path.exists(dest):  # ours (checked by _check_raw before anything was written)
        with open(marker_path) as f:
            if json.load(f) == marker:
                return dest
    partial = dest + ".partial"
    if os.path.exists(partial):  # ours: left by an interrupted run
        shutil.rmtree(partial)
    try:
        _extract(archive, {m: [os.path.join(partial, *_safe_member(m).split("/"))] for m in members}, log)
        atomic_json(marker, os.path.join(partial, EXTRACTED_MARKER))  # inside .partial, renamed into place below
    except BaseException:  # a full disk, Ctrl-C: no half extraction is left (the next run would remove it too)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(dest):  # an older extraction of a changed archive (it has our marker)
        shutil.rmtree(dest)
    os.rename(partial, dest)
    return dest


def _build_tree(out, staging, entries, index, mode, log):
    """Link or copy every entry into staging/<split>/<cls>/<name> (links point to where the tree will be)."""
    _check_names(entries)  # every destination below is staging/<split>/<class>/<name>, inside --out
    for folder in sorted({f"{e.split}/{e.cls}" for e in entries}):
        os.makedirs(os.path.join(staging, *folder.split("/")))
    by_archive = {}
    for e in entries:
        item = index.items[e.key]
        if item.archive:
            by_archive.setdefault(item.archive, []).append((item.member, e))
    if mode == "copy":  # archive members go straight into the tree: the copy is the extraction
        for archive, pairs in by_archive.items():
            targets = {}
            for m, e in pairs:
                targets.setdefault(m, []).append(os.path.join(staging, *e.split.split("/"), e.cls, e.name))
            _extract(archive, targets, log)
    else:
        raw = {a: _extract_raw(out, a, sorted({m for m, _ in pairs}), log) for a, pairs in by_archive.items()}
    verb = {"symlink": "linking", "hardlink": "hard-linking", "copy": "copying"}[mode]
    log(f"{verb} {len(entries):,} images ...")
    for e in entries:
        item = index.items[e.key]
        dest = os.path.join(staging, *e.split.split("/"), e.cls, e.name)
        if item.archive:
            if mode == "copy":
                continue
            source = os.path.join(raw[item.archive], *_safe_member(item.member).split("/"))
        else:
            source = item.path
        if mode == "symlink":
            final_dir = os.path.join(out, *e.split.split("/"), e.cls)
            # Into OUT/raw: relative, so OUT can be moved as a whole; into --src: absolute.
            target = os.path.relpath(source, final_dir) if item.archive else os.path.abspath(source)
            os.symlink(target, dest)
        elif mode == "hardlink":
            os.link(source, dest)
        else:
            shutil.copy2(source, dest)


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _remove_unused_raw(out, entries, index, mode):
    """Delete our extractions under OUT/raw that the tree no longer links to (e.g. after --mode copy)."""
    raw = os.path.join(out, RAW)
    if not os.path.isdir(raw):
        return
    used = set() if mode == "copy" else {_archive_stem(index.items[e.key].archive)
                                         for e in entries if index.items[e.key].archive}
    for d in os.scandir(raw):
        if d.name not in used and os.path.exists(os.path.join(d.path, EXTRACTED_MARKER)):
            shutil.rmtree(d.path)
    if not os.listdir(raw):
        os.rmdir(raw)


def _check_out(name, src, out):
    """Refuse an --out that would be written inside --src or holds a tree we did not write; return its manifest."""
    src_r, out_r = os.path.realpath(src), os.path.realpath(out)
    if _inside(out_r, src_r):
        raise PrepareError(f"--out {out} is inside --src {src}; expected an output folder outside the downloads "
                           f"(the originals are never written to)")
    if any(_inside(src_r, os.path.join(out_r, d)) for d in ("train", "test", RAW, STAGING)):
        raise PrepareError(f"--src {src} is inside the folders that --out {out} rewrites (train, test, {RAW}); "
                           f"expected the downloads somewhere else")
    if os.path.exists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out} is a file; expected a folder (it will be created if missing)")
    manifest = _read_manifest(out) if os.path.isdir(out) else None
    if manifest is None and os.path.isdir(out):
        for split in ("train", "test"):
            if os.path.exists(os.path.join(out, split)):
                raise PrepareError(f"{os.path.join(out, split)} exists but was not written by `memvir prepare` "
                                   f"(no {MANIFEST}); expected an empty or new --out: remove it or choose another")
    if manifest and manifest.get("dataset") != name:
        raise PrepareError(f"{out} holds a prepared {manifest.get('dataset')} tree; expected a new --out for {name}")
    return manifest


def _check_raw(out, archives):
    """Refuse extraction folders that would collide, or that exist under OUT/raw without our marker."""
    stems = [_archive_stem(a) for a in archives]
    if len(set(stems)) < len(stems):
        raise PrepareError(f"archives {archives} would share an extraction folder under {os.path.join(out, RAW)}; "
                           f"expected archive names that differ without their extension")
    for stem in stems:
        dest = os.path.join(out, RAW, stem)
        try:
            if os.path.exists(dest):
                with open(os.path.join(dest, EXTRACTED_MARKER)) as f:
                    json.load(f)
        except (OSError, ValueError):
            raise PrepareError(f"{dest} exists but was not extracted by `memvir prepare` (no valid "
                               f"{EXTRACTED_MARKER}); expected {os.path.join(out, RAW)} to hold only our "
                               f"extractions: move it away") from None


def _check_hardlink(src, out):
    """os.link fails across file systems: say so before anything is written."""
    parent = os.path.realpath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.stat(parent).st_dev != os.stat(src).st_dev:
        raise PrepareError(f"--mode hardlink needs --src {src} and --out {out} on the same file system; "
                           f"expected --mode symlink or copy here")


def prepare(name, src, out, mode="symlink", force=False, verify=True, workers=None, log=print):
    """Validate the official files of benchmark `name` in `src`, then write its ImageFolder tree to `out`.

    Args:
        name: cars196, cub200, sop or inshop (the official code's aliases are accepted too).
        src: folder holding the official files, unpacked or as archives; only read.
        out: output folder (created); see the module docstring for its layout.
        mode: "symlink", "hardlink" or "copy": how images enter the tree.
        force: accept split sizes that differ from the paper's (EXPECTED).
        verify: decode every image once (reduced-size JPEG decode) before writing anything.
        workers: threads for that decoding (default: the CPU count, at most 16).
        log: where progress lines go.
    Returns:
        The manifest (also in OUT/memvir_prepare.json): dataset, mode, counts, expected, mismatches, state.
    Raises:
        PrepareError (a ValueError) or FileNotFoundError naming the file and what was expected; nothing is
        written when one is raised during validation.
    """
    name, src, out, old, workers = _check_request(name, src, out, mode, workers)
    # 1. Read the annotations; open the archives only when the unpacked files lack something.
    index = SourceIndex(src, TEXT_NAMES[name], verify=verify, workers=workers)
    entries = _read_annotations(name, src, index, log)

    # 2. The split sizes against the paper's.
    counts = count(entries)
    mismatches = compare_counts(name, counts)
    if mismatches and not force:
        raise PrepareError(f"{name} in {src} does not have the paper's split sizes:\n  " + "\n  ".join(mismatches)
                           + "\nnothing was written; pass --force to prepare it anyway")
    for line in mismatches:
        log(f"warning (--force): {name} {line}")
    splits = sorted({e.split for e in entries})
    digest = _plan_digest(name, mode, entries, index)
    if old and old.get("state") == "complete" and old.get("plan") == digest and _tree_counts(out, splits) == counts:
        log(f"{out} already holds this {name} tree ({mode}); nothing to do")
        return old

    # 3. Every image decodes (archive members were decoded while the archives were read).
    if verify:
        _verify_images(entries, index, workers, log)
    if mode == "hardlink" and any(index.items[e.key].path for e in entries):
        _check_hardlink(src, out)
    if mode != "copy":
        _check_raw(out, sorted({index.items[e.key].archive for e in entries if index.items[e.key].archive}))

    # 4. Write: staging tree, then swap it in; the manifest says "writing" while the swap happens.
    manifest = {"dataset": name, "state": "writing", "mode": mode, "src": src, "splits": splits,
                "counts": counts, "expected": EXPECTED[name], "mismatches": mismatches, "plan": digest,
                "layout": "OUT/<split>/<class>/<image>; In-Shop: OUT/test/query/<item>/, OUT/test/gallery/<item>/"}
    _write_tree(out, entries, index, mode, manifest, log)
    for what, n in counts.items():
        want = EXPECTED[name].get(what)
        log(f"  {what:<16} {n:>7,}" + ("" if want is None else "  ok" if want == n else f"  (paper: {want:,})"))
    log(f"prepared {name} in {out} ({mode})")
    return manifest


def _check_request(name, src, out, mode, workers):
    """The canonical name, absolute src and out, the manifest already in out (or None), the decoding threads."""
    key = canonical_data_name(name)
    if key in ("glyphs", "custom"):
        raise PrepareError(f"dataset {name!r} needs no `prepare` (glyphs are rendered on first use; custom is any "
                           f"folder already in the layout); expected one of {', '.join(READERS)}")
    if key not in READERS:
        raise PrepareError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)} or an alias of "
                           f"memvir.data.DATA_NAMES")
    if mode not in MODES:
        raise PrepareError(f"--mode {mode!r}; expected one of {', '.join(MODES)}")
    if not src or not os.path.exists(src):
        raise FileNotFoundError(f"--src {src} does not exist; expected the folder holding the official "
                                f"{key} files (see `python -m memvir prepare --help`)")
    if not os.path.isdir(src):
        raise PrepareError(f"--src {src} is a file; expected the folder that holds it (archives are found inside)")
    src, out = os.path.abspath(src), os.path.abspath(out)
    old = _check_out(key, src, out)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise PrepareError(f"--workers {workers!r}; expected a positive integer")
    return key, src, out, old, workers or min(16, os.cpu_count() or 1)


def _read_annotations(name, src, index, log):
    """The benchmark's entries, every listed image found (unpacked, else in the archives), their files named."""
    try:
        ann = READERS[name](index)
        base, missing = _resolve(index, ann)
    except FileNotFoundError:
        if not index.archives:
            raise
        ann, missing = None, True
    if missing and index.archives and not index.archives_scanned:
        index.scan_archives(log)
        ann = READERS[name](index)
        base, missing = _resolve(index, ann)
    if ann.problems:
        raise PrepareError("; ".join(ann.problems))
    if not ann.entries:  # an empty annotation file would be prepared as a "complete" tree of nothing, even --force
        raise PrepareError(f"{ann.source} lists no image; expected the {name} annotations (nothing was written)")
    if missing:
        where = os.path.join(src, *base.split("/")) if base else src
        raise FileNotFoundError(
            f"{ann.source} names {len(missing):,} image(s) that are not in {where}"
            f"{' or its archives' if index.archives else ''}: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; expected every listed image to exist")
    _name_files(ann.entries)
    return ann.entries


def _verify_images(entries, index, workers, log):
    """Decode every unpacked image once; raise naming the ones that do not decode (nothing written yet)."""
    plain = [(e.key, index.items[e.key].path) for e in entries if index.items[e.key].path]
    if plain:
        log(f"decoding {len(plain):,} images (skip with --no-verify) ...")
    bad = check_images(plain, workers)
    bad.update({k: index.bad[k] for k in (e.key for e in entries) if k in index.bad})
    if bad:
        lines = [f"{index.items[k].describe()}: {why}" for k, why in sorted(bad.items())]
        raise PrepareError(f"{len(bad)} image(s) cannot be decoded (expected readable images; nothing was "
                           f"written; --no-verify skips this check):\n  " + "\n  ".join(lines[:10])
                           + ("\n  ..." if len(lines) > 10 else ""))


def _write_tree(out, entries, index, mode, manifest, log):
    """Build the tree in a staging folder, swap it in for train/ and test/, and mark the manifest complete."""
    os.makedirs(out, exist_ok=True)
    staging = os.path.join(out, STAGING)
    if os.path.lexists(staging):  # left by an interrupted run: only our links and copies
        shutil.rmtree(staging)
    try:
        _build_tree(out, staging, entries, index, mode, log)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_manifest(out, manifest)
    old_splits = os.path.join(staging, "old")
    os.makedirs(old_splits)
    for top in ("train", "test"):  # both exist for every benchmark; an existing one is ours (_check_out)
        if os.path.lexists(os.path.join(out, top)):
            os.rename(os.path.join(out, top), os.path.join(old_splits, top))
        if os.path.isdir(os.path.join(staging, top)):
            os.rename(os.path.join(staging, top), os.path.join(out, top))
    shutil.rmtree(staging)  # the previous tree: links and copies only (rmtree never follows links)
    _remove_unused_raw(out, entries, index, mode)
    written = _tree_counts(out, manifest["splits"])
    if written != manifest["counts"]:
        raise RuntimeError(f"{out}: wrote {written} but planned {manifest['counts']}; please report this bug")
    manifest["state"] = "complete"
    _write_manifest(out, manifest)


def main(argv=None):
    """Run `python -m memvir prepare`; return the exit status (0 ok, 1 bad input, 2 bad usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m memvir prepare",
        description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="cars196 | cub200 | sop | inshop")
    parser.add_argument("--src", required=True, help="folder with the official files (unpacked or archives)")
    parser.add_argument("--out", required=True, help="output folder for OUT/train, OUT/test (created)")
    parser.add_argument("--mode", default="symlink", choices=MODES,
                        help="how images enter the tree (default symlink; the originals are never moved)")
    parser.add_argument("--force", action="store_true", help="accept split sizes that differ from the paper's")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not decode every image before writing (faster, but corrupt files pass)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, <= 16)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code or 0)
    try:
        prepare(args.name, args.src, args.out, mode=args.mode, force=args.force, verify=args.verify,
                workers=args.workers, log=lambda s: print(s, flush=True))
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout is gone (`| head`): a listing ends quietly
        reader_gone()
        return SIGPIPE_STATUS
    except OSError as exc:  # permissions, a full disk, a read-only --out: the path and what to do, in one line
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
