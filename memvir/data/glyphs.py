"""Glyphs: the embedded default benchmark, rendered from the TrueType fonts that matplotlib ships.

Deep metric learning is judged on classes never seen in training (CARS196, CUB200, SOP, In-Shop all split by
class), so the default data set needs many classes and an open-set split. Here a class is a Unicode character and
an instance is that character drawn in one of matplotlib's fonts (DejaVu, STIX, Computer Modern) plus a small
random augmentation. About 1,500 characters (1,505 with matplotlib 3.11's fonts: Latin with diacritics, Greek,
Cyrillic, Armenian, Georgian, punctuation, modifier letters) have 10 or more distinct renders, about 13 each,
which makes a fine-grained task: classes differ by an accent or a hook.

Pipeline (each step is a function below):
    1. candidate_fonts: matplotlib's ttf fonts minus the traps (LastResortHE, STIXNonUni*, STIXSiz*, *Display).
    2. _select_pool (cached as JSON): which fonts really draw which character (fontTools cmap, no .notdef, no
       empty glyph, the Computer Modern glyph-name rule), homoglyphs removed, renders grouped into distinct ones.
    3. render_glyphs (cached as .npz): the classes chosen by a seeded shuffle of the pool, each instance one
       distinct render of the class plus a random affine warp and stroke-thickness change, fitted inside the image.
    4. glyph_splits: the first half of the classes train, the rest test (like CARS196), optionally a validation
       split carved from the train classes.
    5. GlyphDataset: (1, H, W) float tensors, ink = 1 on a 0 background, normalised by GLYPH_MEAN / GLYPH_STD.

Everything is deterministic: the same parameters give byte-identical arrays on any machine with the same
matplotlib fonts and FreeType (the version matplotlib bundles), because the rasteriser is FreeType and the warp is
written with exactly-rounded float64 numpy arithmetic only (no BLAS; the augmentation's sin/cos are rounded to
multiples of 2**-20 so that libm differences of an ulp cannot reach a pixel). The pool selection compares blurred
float renders against thresholds; it is cached, and its key holds the font bytes, FreeType's and Unicode's
versions and every constant it uses.
The data notebook shows contact sheets (contact_sheet) and per-class statistics (font_stats).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import unicodedata
from pathlib import Path

import numpy as np

from ..files import atomic_write, with_hint  # standard library only: cheap to import

FORMAT_VERSION = 1  # bump when anything below changes the pixels or the pool; it is part of every cache key

# ---- geometry: where a glyph goes in an N x N image (all lengths are fractions of N unless said otherwise) ----
EM = 0.64  # one em of the font is 0.64 N, so cap height ~ 0.47 N and x-height ~ 0.35 N (DejaVu Sans)
Y_MID = 0.35  # height above the baseline (in em) that lands at the image centre: the middle of -0.24 .. 0.93 em
SAFE = 0.38  # a glyph's box must lie within +-0.38 N of the centre before augmentation, else it is scaled down
PAD = 1.0  # pixels: after augmentation no ink may reach the outermost row or column (a final fit guarantees it)
SUPER = 2  # masters are rasterised at 2x and every output pixel averages 2 x 2 samples (anti-aliasing)

# ---- augmentation of one instance (uniform ranges) ----
ROTATION_DEG = 8.0  # +- degrees
SCALE = (0.90, 1.10)  # isotropic scale
SHEAR = 0.15  # +- horizontal shear (a slant of ~8.5 degrees)
SHIFT = 0.05  # +- fraction of N, each axis
THICKNESS = (-0.3, 1.0)  # blend towards a 3x3 erosion (<0) or dilation (>0) of the 2x master (1 = +1 px stroke)

# ---- pool selection (a reference render of every (character, font) pair, compared after a blur) ----
REF_SIZE = 48  # reference canvas (pixels, em = 31 px), renders placed with sub-pixel accuracy
REF_BLUR = 0.6  # Gaussian sigma (reference pixels): absorbs anti-aliasing differences, keeps a breve apart from a caron
SAME_TOL = 0.15  # two renders are "the same" when their blurred images differ by at most this (ink 0..1) anywhere
BOX_TOL = 2  # reference pixels: renders whose ink boxes differ more than this on any side are never the same
MAJORITY = 0.5  # two characters are homoglyphs when the same in at least this fraction of the fonts they share

# ---- GlyphDataset normalisation: mean and std of the ink (0..1) over the default set (400 x 20 at 32 px) ----
GLYPH_MEAN = 0.086
GLYPH_STD = 0.247

# Candidate code points: None takes every code point the fonts map; a tuple of (first, last) ranges narrows the
# pool (the tests use a few blocks to stay fast). Part of the cache key.
CODE_POINT_RANGES = None

_EXCLUDED_FONTS = (
    "LastResortHE",  # maps every code point to a placeholder glyph: it would "draw" everything
    "STIXNonUni",  # private-use code points only
    "STIXSiz",  # big-delimiter size variants of the STIXGeneral glyphs
)
_EXCLUDED_RANGES = (
    (0x2500, 0x259F),  # box drawing and block elements: lines and shades, not characters
    (0x2800, 0x28FF),  # Braille patterns: dot grids
)


def font_dir() -> Path:
    """Return matplotlib's folder of TrueType fonts (mpl-data/fonts/ttf)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def candidate_fonts(directory=None) -> list[Path]:
    """Return the font files used for rendering, sorted by file name.

    Excluded: LastResortHE (placeholder glyphs for every code point), STIXNonUni* (private use only), STIXSiz*
    (size variants of big delimiters), and DejaVu*Display (copies of DejaVu Sans / Serif glyphs).

    Args:
        directory: folder of .ttf files; default font_dir().
    """
    directory = font_dir() if directory is None else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"font directory {directory} does not exist; expected matplotlib's mpl-data/fonts/ttf")
    fonts = []
    for path in sorted(directory.glob("*.ttf")):
        if path.stem.startswith(_EXCLUDED_FONTS) or path.stem.endswith("Display"):
            continue
        fonts.append(path)
    if not fonts:
        raise FileNotFoundError(f"no usable .ttf font in {directory}")
    return fonts


def is_candidate_char(cp: int) -> bool:
    """Say whether a code point may become a class: no combining mark, space, control, format, private use,
    unassigned code point, box drawing, block element or Braille pattern (and inside CODE_POINT_RANGES)."""
    if unicodedata.category(chr(cp))[0] in "MZC":  # M*: combining marks, Z*: spaces, C*: control/format/private
        return False
    if CODE_POINT_RANGES is not None and not any(lo <= cp <= hi for lo, hi in CODE_POINT_RANGES):
        return False
    return not any(lo <= cp <= hi for lo, hi in _EXCLUDED_RANGES)


def default_cache_dir() -> Path:
    """Return $MEMVIR_CACHE if set, else ~/.cache/memvir."""
    env = os.environ.get("MEMVIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memvir"


# ------------------------------------------------------------------------------------------------------------
# Fonts: which glyph draws a code point, and its bitmap
# ------------------------------------------------------------------------------------------------------------


class _Face:
    """One font file: the fontTools cmap (which glyph a code point maps to) and a FreeType rasteriser."""

    def __init__(self, path: Path):
        from matplotlib import ft2font

        self.path = Path(path)
        self.name = self.path.stem
        self._ft = ft2font.FT2Font(str(self.path))
        self._flags = ft2font.LoadFlags
        self.units_per_em = self._ft.units_per_EM

    def glyphs(self) -> dict[int, int]:
        """Return {code point: glyph id} of the glyphs this font really has for candidate characters.

        A Computer Modern font (cm*) uses TeX encoding behind a Unicode-looking cmap (cmr10 maps '"' to a closing
        quote, cmmi10 maps '!' to omega), so there a glyph counts only when its name is a standard name of that
        code point (fontTools.agl.toUnicode(name) == the character).
        """
        from fontTools import agl
        from fontTools.ttLib import TTFont

        font = TTFont(str(self.path), lazy=True)
        cmap = font.getBestCmap() or {}
        is_tex = self.name.startswith("cm")
        out = {}
        for cp in sorted(cmap):
            name = cmap[cp]
            if name == ".notdef" or not is_candidate_char(cp):
                continue
            if is_tex and agl.toUnicode(name) != chr(cp):
                continue
            gid = font.getGlyphID(name)
            if gid > 0:
                out[cp] = gid
        font.close()
        return out

    def box_em(self, gid: int) -> tuple[float, float, float, float]:
        """Return the glyph's control box (xmin, ymin, xmax, ymax) in em, y up from the baseline."""
        xmin, ymin, xmax, ymax = self._ft.load_glyph(gid, self._flags.NO_SCALE).bbox
        self._ft.clear()  # FT2Font keeps every loaded glyph until cleared
        u = self.units_per_em
        return xmin / u, ymin / u, xmax / u, ymax / u

    def render(self, gid: int, em_px: float) -> tuple[np.ndarray, int, int]:
        """Rasterise a glyph (unhinted, anti-aliased) at em_px pixels per em.

        Returns:
            bitmap: uint8 (h, w) coverage 0..255; column 0 starts `left` px right of the glyph origin, row 0 is
            `top` px above the baseline (FreeType's bitmap box: the control box rounded outwards to whole pixels).
        """
        self._ft.set_size(em_px, 72)  # points at 72 dpi are pixels
        glyph = self._ft.load_glyph(gid, self._flags.NO_HINTING)  # hinting would make renders size-dependent
        xmin, ymin, xmax, ymax = glyph.bbox  # 26.6 fixed point
        left, right, bottom, top = xmin // 64, -(-xmax // 64), ymin // 64, -(-ymax // 64)
        bitmap = np.zeros((top - bottom, right - left), np.uint8)
        if bitmap.size:
            self._ft.draw_glyph_to_bitmap(bitmap, -left, 0, glyph)
        self._ft.clear()
        return bitmap, left, top


def _fit(box_em) -> float:
    """Return the scale (<= 1) that brings a glyph's box within SAFE of the image centre (wide Œ, &, Ж, tall ∫)."""
    xmin, ymin, xmax, ymax = box_em
    reach = max((xmax - xmin) / 2, ymax - Y_MID, Y_MID - ymin)  # em from the anchor to the farthest box side
    return min(1.0, SAFE / (EM * reach)) if reach > 0 else 1.0


# ------------------------------------------------------------------------------------------------------------
# Pool selection: which characters become classes, drawn by which fonts
# ------------------------------------------------------------------------------------------------------------


def _pool_key(fonts) -> str:
    """Hash everything the pool and the pixels depend on: font bytes, FreeType, Unicode data, our constants."""
    from matplotlib import ft2font

    h = hashlib.sha256()
    constants = (FORMAT_VERSION, EM, Y_MID, SAFE, PAD, SUPER, REF_SIZE, REF_BLUR, SAME_TOL, BOX_TOL, MAJORITY,
                 CODE_POINT_RANGES)
    h.update(repr((constants, ft2font.__freetype_version__, unicodedata.unidata_version)).encode())
    for path in fonts:
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _reference_renders(face: _Face):
    """Render every candidate glyph of a font at its canonical place on the reference canvas, lightly blurred.

    The bitmap is shifted by its sub-pixel phase (linear interpolation), so two copies of one outline with
    different side bearings land on the same pixels; the light blur absorbs what anti-aliasing leaves.

    Returns:
        cps: int64 (n,) code points; feats: uint8 (n, R, R) renders (R = REF_SIZE); boxes: int32 (n, 4) ink box
        (top, bottom, left, right) on the canvas.
    """
    from scipy.ndimage import gaussian_filter

    n = REF_SIZE
    cps, placed, boxes = [], [], []
    for cp, gid in face.glyphs().items():
        box = face.box_em(gid)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # no outline (a space-like glyph)
        em_px = n * EM * _fit(box)
        bitmap, left, top = face.render(gid, em_px)
        if not bitmap.any():
            continue  # an outline too thin to cover any pixel: nothing visible
        # Canvas position of bitmap pixel (0, 0)'s centre, as in _Master with SUPER = 1: the integer part places
        # the bitmap, the fractional part becomes a linear sub-pixel shift.
        u = left + 0.5 - em_px * (box[0] + box[2]) / 2 + n / 2
        v = 0.5 - top + em_px * Y_MID + n / 2
        col0, row0 = math.floor(u), math.floor(v)
        rows, cols = np.nonzero(bitmap.any(1))[0], np.nonzero(bitmap.any(0))[0]
        cps.append(cp)
        placed.append((bitmap, row0, col0, u - col0, v - row0))  # phase in [0, 1): shift right / down by it
        boxes.append((row0 + rows[0], row0 + rows[-1] + 1, col0 + cols[0], col0 + cols[-1] + 1))
    feats = np.zeros((len(cps), n, n), np.uint8)
    for start in range(0, len(cps), 1024):  # chunks bound the memory of the float canvases
        chunk = placed[start:start + 1024]
        canvas = np.zeros((len(chunk), n, n), np.float32)  # (chunk, R, R) coverage 0..255
        for k, (bitmap, row0, col0, _, _) in enumerate(chunk):
            h, w = bitmap.shape  # fitted glyphs are well inside the canvas; the slices clip just in case
            canvas[k, max(row0, 0):row0 + h, max(col0, 0):col0 + w] = \
                bitmap[max(-row0, 0):n - row0, max(-col0, 0):n - col0]
        fx = np.array([p[3] for p in chunk], np.float32)[:, None, None]  # (chunk, 1, 1)
        fy = np.array([p[4] for p in chunk], np.float32)[:, None, None]
        canvas[:, :, 1:] = (1 - fx) * canvas[:, :, 1:] + fx * canvas[:, :, :-1]  # linear sub-pixel shift right
        canvas[:, 1:, :] = (1 - fy) * canvas[:, 1:, :] + fy * canvas[:, :-1, :]  # and down
        blurred = gaussian_filter(canvas, sigma=(0, REF_BLUR, REF_BLUR))
        feats[start:start + len(chunk)] = np.rint(np.clip(blurred, 0, 255)).astype(np.uint8)
    return np.array(cps, np.int64), feats, np.array(boxes, np.int32).reshape(-1, 4)


def _max_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest absolute pixel difference (0..1) between blurred renders a, b: (..., r, r) uint8 -> (...)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return d.reshape(d.shape[:-2] + (d.shape[-2] * d.shape[-1],)).max(-1) / 255.0


def _same_pairs_in_font(cps, feats, boxes):
    """Yield (cp_a, cp_b) with cp_a < cp_b whose renders in this font are the same (<= SAME_TOL apart).

    Exact prefilters keep this fast: the ink boxes must agree within BOX_TOL, then the means over 8 x 8 and 4 x 4
    blocks must differ by at most the tolerance too (a block mean never differs more than the largest pixel
    difference), and only the survivors are compared pixel by pixel.
    """
    n, r = len(cps), feats.shape[-1]
    if n < 2:
        return
    tol = SAME_TOL * 255.0 + 1e-3
    coarse = [feats.reshape(n, r // b, b, r // b, b).astype(np.float32).mean(axis=(2, 4)).reshape(n, -1)
              for b in (8, 4)]  # (n, 36), (n, 144) block means
    for start in range(0, n, 256):  # chunks keep the (chunk, n) box comparison small
        stop = min(start + 256, n)
        close = np.ones((stop - start, n), bool)  # (chunk, n)
        for side in range(4):  # top, bottom, left, right
            close &= np.abs(boxes[start:stop, side, None] - boxes[None, :, side]) <= BOX_TOL
        close[:, :stop] &= np.arange(start, stop)[:, None] < np.arange(stop)[None, :]  # each pair once
        i, j = np.nonzero(close)
        i += start
        for c in coarse:
            keep = np.abs(c[i] - c[j]).max(-1) <= tol
            i, j = i[keep], j[keep]
        same = _max_diff(feats[i], feats[j]) <= SAME_TOL
        yield from zip(cps[i[same]].tolist(), cps[j[same]].tolist())


def _group_renders(feats: np.ndarray, usable: np.ndarray) -> list[list[int]]:
    """Group one character's renders into distinct ones: a render joins the first group whose first render is
    the same (<= SAME_TOL), else starts a new group. Oblique faces that draw a symbol unslanted thus land in the
    upright face's group.

    Args:
        feats: uint8 (k, r, r) the character's blurred reference renders, one per font, in font order.
        usable: bool (k,) which of them may be used.

    Returns:
        groups of positions 0..k-1.
    """
    same = _max_diff(feats[:, None], feats[None, :]) <= SAME_TOL  # (k, k)
    groups = []
    for i in np.nonzero(usable)[0].tolist():
        for group in groups:
            if same[group[0], i]:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _select_pool(fonts) -> dict:
    """Decide, once, which characters are classes and which fonts draw them (cached by _load_pool).

    Steps: render every candidate glyph of every font on a reference canvas; find pairs of characters that render
    the same in one font; characters that are the same in at least half the fonts they share are homoglyphs
    (Latin A / Greek Alpha / Cyrillic A, micro sign / mu, K / Kelvin sign, hyphen variants): keep the one with the
    most distinct renders (ties: lowest code point); for the remaining same-in-one-font pairs (en / em dash in
    monospace) drop that font's render from both; finally group each character's fonts into distinct renders.

    Returns:
        dict with "fonts" (names), "chars" {"%04X": [[font index, ...] per distinct render]}, "homoglyphs"
        {"%04X" dropped: "%04X" kept}.
    """
    faces = [_Face(path) for path in fonts]
    feats_by_char: dict[int, dict[int, np.ndarray]] = {}  # cp -> font index -> blurred render
    same: dict[tuple[int, int], set[int]] = {}  # (cp_a, cp_b) -> fonts in which they render the same
    for fi, face in enumerate(faces):
        cps, feats, boxes = _reference_renders(face)
        for cp, feat in zip(cps.tolist(), feats):
            feats_by_char.setdefault(cp, {})[fi] = feat
        for pair in _same_pairs_in_font(cps, feats, boxes):
            same.setdefault(pair, set()).add(fi)

    def groups_of(cp, exclude=()):  # -> [[font index, ...] per distinct render]
        fonts_of_char = sorted(feats_by_char[cp])
        usable = np.array([f not in exclude for f in fonts_of_char])
        feats = np.stack([feats_by_char[cp][f] for f in fonts_of_char])
        return [[fonts_of_char[i] for i in g] for g in _group_renders(feats, usable)]

    # Homoglyphs: greedy, richest character first, so the kept one is the better class.
    n_renders = {cp: len(groups_of(cp)) for cp in feats_by_char}
    partners: dict[int, set[int]] = {}
    for (a, b), fonts_same in same.items():
        shared = len(feats_by_char[a].keys() & feats_by_char[b].keys())
        if len(fonts_same) >= MAJORITY * shared:
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
    kept, homoglyphs = set(), {}
    for cp in sorted(feats_by_char, key=lambda c: (-n_renders[c], c)):
        twin = min((p for p in partners.get(cp, ()) if p in kept), default=None)
        if twin is None:
            kept.add(cp)
        else:
            homoglyphs[f"{cp:04X}"] = f"{twin:04X}"

    # Same in a minority of fonts: those renders are ambiguous, drop them from both characters.
    ambiguous: dict[int, set[int]] = {}
    for (a, b), fonts_same in same.items():
        if a in kept and b in kept:
            ambiguous.setdefault(a, set()).update(fonts_same)
            ambiguous.setdefault(b, set()).update(fonts_same)
    chars = {}
    for cp in sorted(kept):
        groups = groups_of(cp, exclude=ambiguous.get(cp, ()))
        if groups:
            chars[f"{cp:04X}"] = groups
    return {"fonts": [face.name for face in faces], "chars": chars, "homoglyphs": homoglyphs}


def _cache_write(path: Path, write) -> None:
    """Write a cache file atomically (memvir.files.atomic_write), creating the cache folder first; an OSError (a
    full disk, a read-only or misplaced cache folder) carries the hint of where the cache can go instead."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as exc:
        raise with_hint(exc, "the glyph cache: set MEMVIR_CACHE to a writable folder with room") from None


def _load_pool(cache_dir=None) -> dict:
    """Return the pool table (see _select_pool) plus "key" and "font_paths", from the cache or computed."""
    fonts = candidate_fonts()
    key = _pool_key(fonts)
    path = Path(default_cache_dir() if cache_dir is None else cache_dir) / f"glyph_pool_{key}.json"
    table = None
    if path.exists():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = None  # a damaged cache file is recomputed and replaced
        if table is not None and (table.get("key") != key or table.get("fonts") != [p.stem for p in fonts]):
            table = None
    if table is None:
        table = {"key": key, **_select_pool(fonts)}
        _cache_write(path, lambda fh: fh.write(json.dumps(table).encode()))
    table["font_paths"] = fonts
    return table


def glyph_pool(min_fonts: int = 10, cache_dir=None) -> list[str]:
    """Return the characters with at least min_fonts distinct renders, in code point order.

    Args:
        min_fonts: minimum number of distinct renders (fonts drawing the character differently).
        cache_dir: folder of the pool cache; default $MEMVIR_CACHE or ~/.cache/memvir.
    """
    _check_int("min_fonts", min_fonts, 1)
    table = _load_pool(cache_dir)
    return [chr(int(h, 16)) for h, groups in table["chars"].items() if len(groups) >= min_fonts]


# ------------------------------------------------------------------------------------------------------------
# Rendering instances
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GlyphSet:
    """A rendered glyph data set.

    images: uint8 (n, H, W), ink 255 on 0; labels: int64 (n,) class index in [0, C), in the fixed class order;
    chars: list of C characters (class -> character); params: the parameters and provenance it was made with;
    fonts: int16 (n,) index into params["fonts"] of the font each instance was drawn in.
    """

    images: np.ndarray
    labels: np.ndarray
    chars: list
    params: dict
    fonts: np.ndarray | None = None

    def __repr__(self):
        n, h, w = self.images.shape
        return f"GlyphSet({n} images of {h}x{w}, {len(self.chars)} classes, seed={self.params.get('seed')})"


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        expect = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {expect}, got {value}")


class _Master:
    """One distinct render of a class at 2x resolution, with its dilation and erosion for stroke thickness."""

    def __init__(self, face: _Face, gid: int, image_size: int):
        box = face.box_em(gid)
        em_px = image_size * EM * _fit(box) * SUPER
        bitmap, left, top = face.render(gid, em_px)
        m = np.pad(bitmap.astype(np.float64) / 255.0, 3)  # 3 zero pixels: room for dilation and bilinear reads
        left, top = left - 3, top + 3
        self.base = m
        shifted = [np.pad(m, 1)[1 + dy:1 + dy + m.shape[0], 1 + dx:1 + dx + m.shape[1]]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        self.dilated = np.maximum.reduce(shifted)
        self.eroded = np.minimum.reduce(shifted)
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        # Index box that can receive ink: 1 for the dilation, 1 for bilinear reads between pixel centres.
        self.ink_box = (cols[0] - 2.0, rows[0] - 2.0, cols[-1] + 2.0, rows[-1] + 2.0)  # (c0, r0, c1, r1)
        # Canonical position: master pixel (c, r) has its centre at canvas point (c, r) / SUPER + offset, which
        # puts the box centre at the image centre horizontally and Y_MID em above the baseline at mid-height.
        cx = (box[0] + box[2]) / 2
        self.offset = ((left + 0.5 - em_px * cx) / SUPER + image_size / 2,
                       (0.5 - top + em_px * Y_MID) / SUPER + image_size / 2)


def _quantize(x: float) -> float:
    """Round to a multiple of 2**-20, so that 1-ulp differences between platforms' sin/cos cannot reach pixels."""
    return round(x * 1048576.0) / 1048576.0


def _augmentation(rng: np.random.Generator, n: int, image_size: int) -> list[tuple]:
    """Draw n augmentations: (A (2, 2), t (2,), thickness), A = scale * rotation @ shear, t in pixels."""
    angle = rng.uniform(-ROTATION_DEG, ROTATION_DEG, n) * (math.pi / 180)
    scale = rng.uniform(SCALE[0], SCALE[1], n)
    shear = rng.uniform(-SHEAR, SHEAR, n)
    shift = rng.uniform(-SHIFT, SHIFT, (n, 2)) * image_size
    thickness = rng.uniform(THICKNESS[0], THICKNESS[1], n)
    out = []
    for a, s, k, t, th in zip(angle.tolist(), scale.tolist(), shear.tolist(), shift.tolist(), thickness.tolist()):
        c, si = math.cos(a), math.sin(a)
        A = [[s * c, s * (c * k - si)], [s * si, s * (si * k + c)]]  # s * [[c, -si], [si, c]] @ [[1, k], [0, 1]]
        out.append(([[_quantize(v) for v in row] for row in A], [_quantize(v) for v in t], _quantize(th)))
    return out


def _draw(master: _Master, A, t, thickness: float, image_size: int) -> np.ndarray:
    """Warp one master into an N x N uint8 image: canonical place, then p -> C + A (p - C) + t, fitted inside.

    The forward map of master index (c, r) to canvas point q is q = C + A ((c, r) / SUPER + offset - C) + t with
    C the image centre; if the mapped ink box leaves [PAD, N - PAD], the map is scaled about C and shifted back, so
    wide glyphs are never clipped. Each output pixel averages SUPER x SUPER bilinear samples of the master.
    """
    n = image_size
    if thickness >= 0:  # thicker: towards the 3x3 dilation
        m = master.base + thickness * (master.dilated - master.base)
    else:  # thinner: towards the 3x3 erosion
        m = master.base + (-thickness) * (master.eroded - master.base)
    (a00, a01), (a10, a11) = A
    cx = cy = n / 2
    ox, oy = master.offset
    c0, r0, c1, r1 = master.ink_box
    corners = [(c / SUPER + ox - cx, r / SUPER + oy - cy) for c in (c0, c1) for r in (r0, r1)]  # relative to C
    xs = [a00 * u + a01 * v + t[0] for u, v in corners]
    ys = [a10 * u + a11 * v + t[1] for u, v in corners]
    room = n - 2 * PAD
    g = min(1.0, room / (max(xs) - min(xs)), room / (max(ys) - min(ys)))  # scale down only if it cannot fit
    tx, ty = g * t[0], g * t[1]
    lo_x, hi_x = g * (min(xs) - t[0]) + tx + cx, g * (max(xs) - t[0]) + tx + cx
    lo_y, hi_y = g * (min(ys) - t[1]) + ty + cy, g * (max(ys) - t[1]) + ty + cy
    tx += max(0.0, PAD - lo_x) - max(0.0, hi_x - (n - PAD))  # shift back inside (at most one side is out)
    ty += max(0.0, PAD - lo_y) - max(0.0, hi_y - (n - PAD))
    # Inverse map: master index p = SUPER * ((gA)^-1 (q - C - t) + C - offset).
    det = g * g * (a00 * a11 - a01 * a10)
    i00, i01, i10, i11 = g * a11 / det, -g * a01 / det, -g * a10 / det, g * a00 / det
    q = (np.arange(n * SUPER, dtype=np.float64) + 0.5) / SUPER  # sample centres, (n * SUPER,)
    qx, qy = q[None, :] - (cx + tx), q[:, None] - (cy + ty)  # (1, nS), (nS, 1)
    px = SUPER * ((i00 * qx + i01 * qy) + (cx - ox))  # (nS, nS) master column
    py = SUPER * ((i10 * qx + i11 * qy) + (cy - oy))  # (nS, nS) master row
    h, w = m.shape
    px = np.clip(px, 0.0, w - 1.0)  # outside the master -> its zero border
    py = np.clip(py, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(px), w - 2.0)
    y0 = np.minimum(np.floor(py), h - 2.0)
    wx, wy = px - x0, py - y0
    xi, yi = x0.astype(np.intp), y0.astype(np.intp)
    top = (1.0 - wx) * m[yi, xi] + wx * m[yi, xi + 1]
    bottom = (1.0 - wx) * m[yi + 1, xi] + wx * m[yi + 1, xi + 1]
    s = (1.0 - wy) * top + wy * bottom  # (nS, nS) ink 0..1
    acc = np.zeros((n, n))
    for dy in range(SUPER):  # fixed summation order: identical on every machine
        for dx in range(SUPER):
            acc = acc + s[dy::SUPER, dx::SUPER]
    ink = acc / (SUPER * SUPER)
    return np.floor(np.clip(ink, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render_classes(table: dict, class_cps: list[int], image_size: int, instances_per_class: int, seed: int):
    """Render instances_per_class images of each character (see render_glyphs for the seeding).

    Returns:
        images: uint8 (len(class_cps) * instances_per_class, N, N) grouped by class; fonts: int16 (same n,) font
        index of each image.
    """
    n, k_max = image_size, instances_per_class
    images = np.zeros((len(class_cps) * k_max, n, n), np.uint8)
    fonts_used = np.zeros(len(class_cps) * k_max, np.int16)
    faces: dict[int, _Face] = {}
    glyph_ids: dict[int, dict[int, int]] = {}
    for ci, cp in enumerate(class_cps):
        groups = table["chars"][f"{cp:04X}"]  # distinct renders, each a list of font indices
        rng = np.random.default_rng([seed, 1, cp])
        perm = rng.permutation(len(groups))
        which = perm[np.arange(k_max) % len(groups)]  # (instances,) distinct render of each instance, used evenly
        augs = _augmentation(rng, k_max, n)
        masters = {}
        for k, (g, (A, t, thickness)) in enumerate(zip(which.tolist(), augs)):
            fi = groups[g][0]  # the first font of a group stands for the group
            if g not in masters:
                if fi not in faces:
                    faces[fi] = _Face(table["font_paths"][fi])
                    glyph_ids[fi] = faces[fi].glyphs()
                masters[g] = _Master(faces[fi], glyph_ids[fi][cp], n)
            images[ci * k_max + k] = _draw(masters[g], A, t, thickness, n)
            fonts_used[ci * k_max + k] = fi
    return images, fonts_used


def _render_path(cache: Path, key: str, image_size, min_fonts, instances_per_class, num_classes, seed) -> Path:
    """Cache file of a rendered set: named by its parameters, the pool key and a hash of the augmentation."""
    aug = hashlib.sha256(repr((ROTATION_DEG, SCALE, SHEAR, SHIFT, THICKNESS)).encode()).hexdigest()[:8]
    return cache / (f"glyphs_{key}_{aug}_s{image_size}_f{min_fonts}_i{instances_per_class}"
                    f"_c{num_classes}_seed{seed}.npz")


def render_glyphs(image_size: int = 32, min_fonts: int = 10, instances_per_class: int = 20,
                  num_classes: int | None = 400, seed: int = 0, cache_dir=None) -> GlyphSet:
    """Render (or load from the cache) the glyph benchmark.

    Classes: the pool (characters with >= min_fonts distinct renders, in code point order) is shuffled with
    numpy's default_rng([seed, 0]) and the first num_classes are taken; that order is the fixed class order, so
    train (the first half) and test both span all scripts. Instance i of a class is drawn in distinct render
    perm[i % R] (perm a seeded permutation of the class's R renders: the renders are used evenly) with an
    augmentation drawn from default_rng([seed, 1, code point]), so a class's images do not depend on which other
    classes were chosen. Cached as .npz under cache_dir keyed by all parameters and the fonts.

    Args:
        image_size: side N of the square images (16..256).
        min_fonts: minimum number of distinct renders (fonts that draw the character differently) per class.
        instances_per_class: images per class.
        num_classes: number of classes C (2..pool size); None takes the whole pool.
        seed: seed of the class choice and of the augmentations.
        cache_dir: cache folder; default $MEMVIR_CACHE or ~/.cache/memvir.

    Returns:
        GlyphSet: images uint8 (C * instances_per_class, N, N) grouped by class, labels int64, chars, params.
    """
    _check_int("image_size", image_size, 16, 256)
    _check_int("min_fonts", min_fonts, 1)
    _check_int("instances_per_class", instances_per_class, 1)
    if num_classes is not None:
        _check_int("num_classes", num_classes, 2)
    _check_int("seed", seed, 0)
    cache = Path(default_cache_dir() if cache_dir is None else cache_dir)
    table = _load_pool(cache)
    pool = [int(h, 16) for h, groups in table["chars"].items() if len(groups) >= min_fonts]
    if num_classes is None:
        num_classes = len(pool)
    if num_classes > len(pool) or num_classes < 2:
        raise ValueError(f"num_classes must be in [2, {len(pool)}] (the characters with >= {min_fonts} distinct "
                         f"renders, min_fonts={min_fonts}), got {num_classes}")
    path = _render_path(cache, table["key"], image_size, min_fonts, instances_per_class, num_classes, seed)
    if path.exists():
        try:
            return _load_glyph_set(path)
        except (OSError, ValueError, KeyError):
            pass  # damaged: render again and replace it

    order = np.random.default_rng([seed, 0]).permutation(len(pool))[:num_classes]
    class_cps = [pool[i] for i in order.tolist()]
    images, fonts_used = _render_classes(table, class_cps, image_size, instances_per_class, seed)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), instances_per_class)
    params = {
        "image_size": image_size, "min_fonts": min_fonts, "instances_per_class": instances_per_class,
        "num_classes": num_classes, "seed": seed,
        "pool_size": len(pool), "pool_key": table["key"], "format_version": FORMAT_VERSION, "fonts": table["fonts"],
        "augmentation": {"rotation_deg": ROTATION_DEG, "scale": list(SCALE), "shear": SHEAR, "shift": SHIFT,
                         "thickness": list(THICKNESS)},
    }
    glyph_set = GlyphSet(images, labels, [chr(c) for c in class_cps], params, fonts_used)
    _cache_write(path, lambda fh: np.savez(fh, images=images, labels=labels, fonts=fonts_used,
                                           chars=np.array(class_cps, np.int64),
                                           params=np.array(json.dumps(params))))
    return glyph_set


def _load_glyph_set(path: Path) -> GlyphSet:
    with np.load(path, allow_pickle=False) as z:
        return GlyphSet(images=z["images"], labels=z["labels"], chars=[chr(c) for c in z["chars"].tolist()],
                        params=json.loads(str(z["params"])), fonts=z["fonts"])


# ------------------------------------------------------------------------------------------------------------
# Splits and the torch Dataset
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GlyphSplit:
    """The images of some classes: labels re-numbered 0..C_split-1; classes: their indices in the GlyphSet."""

    images: np.ndarray
    labels: np.ndarray
    chars: list
    classes: np.ndarray

    def __repr__(self):
        n, h, w = self.images.shape
        return f"GlyphSplit({n} images of {h}x{w}, {len(self.chars)} classes: {''.join(self.chars[:10])}...)"


def glyph_splits(glyph_set: GlyphSet, val_classes: int = 0) -> dict[str, GlyphSplit]:
    """Split by class, like CARS196: the first C // 2 classes (in the GlyphSet's order) train, the rest test.

    With val_classes > 0, the last val_classes of the train classes become "val" (classes unseen in training,
    for honest model selection) and "train" keeps the others.

    Args:
        glyph_set: from render_glyphs.
        val_classes: number of train classes moved to a validation split (0 .. C // 2 - 1).
    """
    num_classes = len(glyph_set.chars)
    n_train = num_classes // 2
    _check_int("val_classes", val_classes, 0, max(n_train - 1, 0))
    bounds = {"train": (0, n_train - val_classes), "test": (n_train, num_classes)}
    if val_classes:
        bounds["val"] = (n_train - val_classes, n_train)
    labels = np.asarray(glyph_set.labels)
    out = {}
    for name, (lo, hi) in bounds.items():
        mask = (labels >= lo) & (labels < hi)
        out[name] = GlyphSplit(images=glyph_set.images[mask], labels=(labels[mask] - lo).astype(np.int64),
                               chars=list(glyph_set.chars[lo:hi]), classes=np.arange(lo, hi))
    return out


class GlyphDataset:
    """Serve glyph images as (float tensor (1, H, W), int label): a map-style dataset for torch's DataLoader.

    x = (ink / 255 - GLYPH_MEAN) / GLYPH_STD, ink = 1 on a 0 background. When augmenting (default: train=True)
    each item is shifted by up to max_shift pixels in each direction (torch's RNG, so DataLoader workers' seeding
    applies), never flipped: a mirrored glyph is another character. Not a subclass of torch.utils.data.Dataset, so
    that rendering never imports torch; DataLoader only needs __len__ and __getitem__.

    Args:
        images: uint8 (n, H, W).
        labels: (n,) integer class labels.
        train: training split (turns the augmentation on unless augment says otherwise).
        chars: optional list of characters, class -> character.
        augment: override the augmentation choice.
        max_shift: pixels of random shift when augmenting.
    """

    def __init__(self, images, labels, train: bool, chars=None, augment: bool | None = None, max_shift: int = 2):
        images = np.asarray(images)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of shape (n, H, W), got {images.dtype} {images.shape}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}")
        if chars is not None and len(labels) and labels.max() >= len(chars):
            raise ValueError(f"labels go up to {labels.max()} but chars has only {len(chars)} entries")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.chars = None if chars is None else list(chars)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.max_shift = int(max_shift)

    @classmethod
    def from_split(cls, split: GlyphSplit, train: bool, **kwargs) -> "GlyphDataset":
        """Build from a GlyphSplit (keeps its chars)."""
        return cls(split.images, split.labels, train, chars=split.chars, **kwargs)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        import torch

        x = torch.from_numpy(self.images[index]).to(torch.float32).div_(255.0)  # (H, W) ink 0..1
        if self.augment and self.max_shift > 0:
            s = self.max_shift
            dy, dx = (torch.randint(-s, s + 1, (2,))).tolist()
            padded = torch.nn.functional.pad(x, (s, s, s, s))  # (H + 2s, W + 2s), zero = background
            h, w = x.shape
            x = padded[s - dy:s - dy + h, s - dx:s - dx + w]
        x = (x - GLYPH_MEAN) / GLYPH_STD
        return x.unsqueeze(0), int(self.labels[index])  # (1, H, W), label


# ------------------------------------------------------------------------------------------------------------
# Looking at the data
# ------------------------------------------------------------------------------------------------------------


def contact_sheet(glyph_set, classes=8, per_class=10, path=None, title=None):
    """Draw a few classes, one class per row (label: the character and its code point), ink black on white.

    Args:
        glyph_set: a GlyphSet or GlyphSplit.
        classes: number of classes from the start of the class order, or a sequence of class indices.
        per_class: images per row (the first ones of each class).
        path: if given, save the figure there as PNG.
        title: optional figure title.

    Returns:
        matplotlib Figure with len(classes) x per_class axes.
    """
    import matplotlib.pyplot as plt

    num_classes = len(glyph_set.chars)
    if isinstance(classes, (int, np.integer)):
        _check_int("classes", classes, 1, num_classes)
        classes = list(range(classes))
    classes = [int(c) for c in classes]
    if not classes or min(classes) < 0 or max(classes) >= num_classes:
        raise ValueError(f"classes must be non-empty class indices in [0, {num_classes}), got {classes}")
    _check_int("per_class", per_class, 1)
    labels = np.asarray(glyph_set.labels)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(0.55 * per_class + 1.0, 0.6 * len(classes)),
                             squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.25})
    fig.subplots_adjust(left=1.0 / (0.55 * per_class + 1.0), right=0.98, top=0.98 if title is None else 0.9,
                        bottom=0.02)
    for row, c in enumerate(classes):
        idx = np.nonzero(labels == c)[0][:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(idx):
                ax.imshow(glyph_set.images[idx[col]], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        char = glyph_set.chars[c]
        # Only the code point when DejaVu Sans (matplotlib's text font) lacks the character: no missing-glyph boxes.
        label = f"{char}  U+{ord(char):04X}" if _dejavu_has(ord(char)) else f"U+{ord(char):04X}"
        axes[row, 0].text(-0.15, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100, facecolor="white"))
    return fig


_DEJAVU_CMAP = None


def _dejavu_has(cp: int) -> bool:
    global _DEJAVU_CMAP
    if _DEJAVU_CMAP is None:
        from fontTools.ttLib import TTFont

        _DEJAVU_CMAP = set(TTFont(str(font_dir() / "DejaVuSans.ttf"), lazy=True).getBestCmap())
    return cp in _DEJAVU_CMAP


_SCRIPTS = {"LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN", "COPTIC", "HEBREW", "ARABIC", "NKO", "TIFINAGH",
            "CANADIAN", "LISU", "VAI", "OGHAM", "RUNIC", "GOTHIC", "OLD", "PHOENICIAN", "LAO", "THAI", "HIRAGANA"}
_KINDS = {"L": "letter", "N": "number", "P": "punctuation", "S": "symbol"}


def font_stats(glyph_set: GlyphSet | None = None, min_fonts: int = 1, cache_dir=None):
    """Return per-class statistics as a pandas DataFrame: char, codepoint, name, script (a word of the Unicode
    name: LATIN, GREEK, ...; COMMON if none), category, kind (letter, number, punctuation, symbol), num_fonts
    (fonts that draw it, after the clean-up), num_renders (distinct renders), fonts.

    Args:
        glyph_set: one row per class of this set (in class order, with a "class" column); default: one row per
            pool character with >= min_fonts distinct renders, in code point order.
        min_fonts: threshold for the pool rows (ignored with glyph_set).
        cache_dir: folder of the pool cache.
    """
    import pandas as pd

    table = _load_pool(cache_dir)
    if glyph_set is not None:
        cps = [ord(c) for c in glyph_set.chars]
    else:
        _check_int("min_fonts", min_fonts, 1)
        cps = [int(h, 16) for h, groups in table["chars"].items() if len(groups) >= min_fonts]
    rows = []
    for cp in cps:
        groups = table["chars"].get(f"{cp:04X}", [])
        name = unicodedata.name(chr(cp), "")
        category = unicodedata.category(chr(cp))
        words = name.split()
        script = next((w for w in words if w in _SCRIPTS), "COMMON")  # COMMON: punctuation, symbols, digits, ...
        fonts = [table["fonts"][f] for g in groups for f in g]
        rows.append({"char": chr(cp), "codepoint": f"U+{cp:04X}", "name": name, "script": script,
                     "category": category, "kind": _KINDS.get(category[0], "other"), "num_fonts": len(fonts),
                     "num_renders": len(groups), "fonts": ", ".join(fonts)})
    df = pd.DataFrame(rows)
    if glyph_set is not None:
        df.insert(0, "class", np.arange(len(cps)))
    return df
