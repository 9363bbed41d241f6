"""What `prepare --src` holds: its plain files and the members of its archives, each addressed by a posix path
relative to --src (SourceIndex), read as text or streamed, never unpacked whole (memvir/data/prepare.py)."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .folder import IMAGE_SUFFIXES, check_images  # folder.py imports numpy only, no torch

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
# Archive members are streamed, never held whole in memory: a member is copied in chunks of CHUNK bytes, and one
# decoded for --verify is spooled (in memory up to SPOOL_BYTES, on disk beyond). An annotation file is kept in
# memory; the four benchmarks' largest is ~4 MB, so one over TEXT_LIMIT is refused (a zip bomb, not annotations).
CHUNK = 1 << 20
SPOOL_BYTES = 8 << 20
TEXT_LIMIT = 256 << 20


class PrepareError(ValueError):
    """Bad input to `prepare`: the message names the file and what was expected."""


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
