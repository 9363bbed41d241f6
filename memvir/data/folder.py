"""Datasets over prepared image folders: ROOT/<class>/<image>, classes in sorted order (like torchvision's).

`python -m memvir prepare` writes such folders (memvir/data/prepare.py); any other folder in this layout works
too (data_name "custom"). Unlike torchvision's ImageFolder, labels are a numpy array (`.labels`) that samplers
and metrics read without touching an image, an image that cannot be read names its path, and class names can be
imposed (`classes=`), so In-Shop's query and gallery folders share one item -> label map. A link back to a folder
already read, or anything but a regular file named like an image, is refused. `check_images` decodes images ahead
of use (training's evaluation splits, `prepare`'s every image), each cheaply, on threads. Like GlyphDataset, these
are not subclasses of torch.utils.data.Dataset (DataLoader needs only __len__ and __getitem__), so this module, and
`python -m memvir prepare` which reads IMAGE_SUFFIXES from it, never import torch.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

# The file suffixes that count as images (lower case), here and in memvir.data.prepare.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageLoadError(ValueError):
    """An image file that PIL cannot read; the message names the file."""


# 16-bit grey pixels (PNG, TIFF, SGI; PIL names the byte order): 0..65535. PIL's convert("RGB") clips them at 255,
# so an ordinary 16-bit image came out 99.6% white; they are scaled here instead. PIL opens 16-bit PGM/PPM and
# (older PIL) PNG grey as mode "I" with the same range; "I" from other formats (TIFF) and "F" are 32-bit integer
# and float pixels with no range to scale by, and are refused. Every other mode PIL opens (1, L, LA, P, PA, RGB,
# RGBA, RGBX, CMYK, YCbCr, LAB, HSV, 16-bit RGB, which PIL reads as 8-bit RGB) converts correctly with convert().
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_I = ("PNG", "PPM")  # formats whose mode "I" holds 0..65535


def _mode_problem(image):
    """Why an opened image's mode cannot be made 8-bit RGB faithfully, or None."""
    if image.mode in ("I", "F") and not (image.mode == "I" and image.format in SIXTEEN_BIT_I):
        kind = "32-bit integer" if image.mode == "I" else "32-bit float"
        return (f"mode {image.mode} ({kind} pixels of {image.format or 'unknown'} format) has no fixed range to "
                f"scale to 0..255; expected an 8- or 16-bit image (convert it, e.g. to a 16-bit PNG)")
    return None


def to_rgb(image, path):
    """Return an opened PIL image as 8-bit RGB, 16-bit grey scaled (v / 257, rounded); ImageLoadError if it cannot."""
    from PIL import Image

    problem = _mode_problem(image)
    if problem:
        raise ImageLoadError(f"cannot read image {path}: {problem}")
    if image.mode in SIXTEEN_BIT or image.mode == "I":
        grey = np.rint(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8)  # (H, W): 65535 -> 255
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")  # convert() loads the pixels, so the file can be closed afterwards


def load_rgb(path):
    """Read an image file as an RGB PIL image (grey, 16-bit, palette, CMYK files are converted), or raise
    ImageLoadError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return to_rgb(im, path)
    except ImageLoadError:
        raise
    except Exception as exc:  # OSError, SyntaxError, DecompressionBombError, ...: all mean "unreadable"
        raise ImageLoadError(f"cannot read image {path}: {type(exc).__name__}: {exc} (expected a readable "
                             f"image file; `python -m memvir prepare` verifies each one)") from exc


@contextlib.contextmanager
def open_image(path):
    """Open an image file lazily (header read, pixels not yet) for a transform that decodes it itself (`draft`,
    `gpu`); any failure inside the block, at open or at decode, becomes an ImageLoadError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"cannot read image {path}: {type(exc).__name__}: {exc} (expected a readable "
                             f"image file; `python -m memvir prepare` verifies each one)") from exc


class ImageListDataset:
    """Images given as a list of paths with integer labels; items are (transform(image), label).

    Args:
        paths: list of n image paths.
        labels: (n,) integer labels.
        transform: callable on an RGB PIL image (e.g. memvir.data.transforms.test_transform()), or None; or
            one with `reads_files = True` and `from_file(path)` (memvir.data.transforms' draft and gpu decoders).
        classes: class names, `classes[label]`; optional.
    """

    def __init__(self, paths, labels, transform=None, classes=None):
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (n,)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"paths ({len(self.paths)}) and labels ({len(self.labels)}) differ in length")
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if getattr(self.transform, "reads_files", False):  # --decode draft / gpu: the transform opens the file
            return self.transform.from_file(self.paths[index]), int(self.labels[index])
        image = load_rgb(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self):
        n_cls = len(self.classes) if self.classes is not None else len(np.unique(self.labels))
        return f"{type(self).__name__}({len(self)} images, {n_cls} classes)"


class ImageFolderDataset(ImageListDataset):
    """The images under root/<class>/ (searched recursively); label = index of <class> in the sorted class list.

    Args:
        root: folder of class folders.
        transform: callable on an RGB PIL image, or None.
        classes: impose this class list (every folder must be in it); default: the sorted folder names.
    Raises:
        FileNotFoundError: root is missing, or an image is a link whose target is gone.
        ValueError: root has no class folders, or a class folder holds no image.
    """

    layout = "ROOT/<class>/<image>"

    def __init__(self, root, transform=None, classes=None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root} does not exist or is not a folder; expected a folder of class "
                                    f"folders, {self.layout}")
        found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise ValueError(f"{root} has no class folders; expected {self.layout}")
        classes = found if classes is None else list(classes)
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise ValueError(f"{root}: class folder(s) {unknown[:5]} are not among the {len(classes)} given classes")
        paths, labels, skipped, broken = [], [], [], []
        seen = set()  # the real folders walked: a link back into one (a loop, another class) would repeat its images
        for c in found:
            n_before, n_broken = len(paths), len(broken)
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, c), followlinks=True, onerror=_raise):
                real = os.path.realpath(dirpath)
                if real in seen:
                    raise ValueError(f"{dirpath} is a link to a folder already read ({real}): its images would "
                                     f"count twice or, in a loop, many times; expected each image once (remove "
                                     f"the link)")
                seen.add(real)
                dirnames.sort()
                for name in sorted(filenames):
                    path = os.path.join(dirpath, name)
                    if name.startswith("."):
                        continue  # .DS_Store and the like
                    if not name.lower().endswith(IMAGE_SUFFIXES):
                        skipped.append(path)
                    elif not os.path.exists(path):  # a symlink whose target moved
                        broken.append(path)
                    elif not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the first read forever
                        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device); expected an "
                                         f"image file")
                    else:
                        paths.append(path)
                        labels.append(index[c])
            if len(paths) == n_before and len(broken) == n_broken:
                raise ValueError(f"empty class folder {os.path.join(root, c)}; expected at least one image "
                                 f"({', '.join(IMAGE_SUFFIXES)}) in each class folder of {root}")
        if broken:
            raise FileNotFoundError(
                f"{len(broken)} image(s) under {root} are links to files that are gone, e.g. {broken[0]} -> "
                f"{os.readlink(broken[0]) if os.path.islink(broken[0]) else '?'}; expected the --src of "
                f"`memvir prepare` in place (re-run it, or prepare with --mode copy)")
        if skipped:
            warnings.warn(f"{root}: ignored {len(skipped)} file(s) that are not images by their extension, "
                          f"e.g. {skipped[0]}", stacklevel=2)
        super().__init__(paths, labels, transform=transform, classes=classes)
        self.root = root
        self.class_to_idx = index


# Checking images before they are needed: training checks its evaluation splits (a damaged image would end the first
# evaluation, an epoch late) and `prepare` checks every image before it writes a tree.


def check_image(source):
    """Decode an image (a path, bytes, or a binary file object, which is read and closed) cheaply; return None when
    it is readable, else the reason.

    JPEGs are decoded at 1/8 scale (`Image.draft`): the whole entropy-coded stream is still read, so a truncated
    or corrupt file fails, at about a third of the cost of a full decode (`Image.verify` alone misses truncation).
    """
    from PIL import Image

    try:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        if hasattr(source, "read"):
            size = source.seek(0, io.SEEK_END)
            source.seek(0)
        else:
            size = os.path.getsize(source)
        if size == 0:
            return "empty file (0 bytes)"
        with Image.open(source) as im:
            if (problem := _mode_problem(im)) is not None:  # what training would refuse, found here first
                return problem
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(exc).__name__}: {exc}"
    finally:
        if hasattr(source, "close"):
            source.close()
    return None


def check_images(jobs, workers):
    """Run `check_image` over (key, source) pairs on a thread pool; return {key: reason} for the bad ones."""
    bad = {}
    # PIL releases the GIL while decoding, so threads scale; at most 4 jobs per worker are held in memory.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = {}
        for key, source in jobs:
            pending[pool.submit(check_image, source)] = key
            if len(pending) >= 4 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if (reason := fut.result()) is not None:
                        bad[pending[fut]] = reason
                    del pending[fut]
        for fut, key in pending.items():
            if (reason := fut.result()) is not None:
                bad[key] = reason
    return bad


def _raise(error):
    """os.walk's onerror: an unreadable folder is an error naming it, not a folder that looks empty."""
    raise error
