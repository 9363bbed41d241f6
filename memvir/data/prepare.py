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

This file writes; what --src holds is read by memvir/data/source.py, the annotations by memvir/data/annotations.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

from ..files import SIGPIPE_STATUS, atomic_json, os_error_line, reader_gone  # standard library only: cheap
from . import canonical_data_name  # the one table of data-set names and aliases
from .annotations import EXPECTED, READERS, TEXT_NAMES, _check_names, _name_files, _resolve, compare_counts, count
from .folder import check_images  # folder.py imports numpy only, no torch
from .source import CHUNK, PrepareError, SourceIndex, _archive_stem, _iter_archive, _safe_member

MANIFEST = "memvir_prepare.json"
STAGING = ".memvir-staging"
RAW = "raw"
EXTRACTED_MARKER = ".memvir-extracted.json"
MODES = ("symlink", "hardlink", "copy")


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
