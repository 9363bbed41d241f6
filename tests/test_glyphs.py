"""Tests of the glyph benchmark (memvir/data/glyphs.py).

The pool is computed once for this module, in a temporary cache, on a few Unicode blocks that hold every trap
(Latin with Œ and &, Greek Alpha / mu, Cyrillic Zhe, the Kelvin sign, spaces, combining marks, box drawing,
Braille, private use), so the module runs in seconds. Oracles come from outside the module under test: fontTools
cmaps and glyph names, FreeType bitmaps drawn here, unicodedata, arithmetic written out in the test.
"""
import os
import unicodedata

import numpy as np
import pytest

from memvir.data import glyphs as G

RANGES = (
    (0x0020, 0x017F),  # Basic Latin, Latin-1 (micro sign, multiplication sign, NBSP), Latin Extended-A (Œ)
    (0x0300, 0x036F),  # combining diacritical marks (a trap: never classes)
    (0x0370, 0x03FF),  # Greek (Alpha, mu)
    (0x0400, 0x045F),  # Cyrillic (Zhe, Cyrillic A)
    (0x2000, 0x206F),  # general punctuation: spaces, hyphen variants, dashes
    (0x2100, 0x214F),  # letterlike symbols (Kelvin sign, Ohm sign)
    (0x2500, 0x25FF),  # box drawing, block elements, geometric shapes
    (0x2800, 0x28FF),  # Braille
    (0xE000, 0xF8FF),  # private use
)
SMALL = dict(image_size=20, min_fonts=8, instances_per_class=3, num_classes=12, seed=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A temporary cache holding the pool of RANGES (computed once for the module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(G, "CODE_POINT_RANGES", RANGES)
        directory = tmp_path_factory.mktemp("glyph_cache")
        G.glyph_pool(1, cache_dir=directory)  # selects and caches the pool
        yield directory


@pytest.fixture(scope="module")
def pool_table(cache):
    return G._load_pool(cache)


def _cmap(font_stem):
    from fontTools.ttLib import TTFont

    return TTFont(str(G.font_dir() / f"{font_stem}.ttf"), lazy=True).getBestCmap()


def _bitmap(font_stem, char, size=40):
    """FreeType bitmap of one character, drawn here without memvir (an independent oracle)."""
    from matplotlib import ft2font

    font = ft2font.FT2Font(str(G.font_dir() / f"{font_stem}.ttf"))
    font.set_size(size, 72)
    glyph = font.load_char(ord(char), ft2font.LoadFlags.NO_HINTING)
    image = np.zeros((3 * size, 3 * size), np.uint8)
    font.draw_glyph_to_bitmap(image, size, size // 2, glyph)
    return image


# ---- determinism, cache, parameters ----


def test_two_renders_are_byte_identical(cache, tmp_path):
    import shutil

    for name in os.listdir(cache):  # a second cache that shares only the pool: the set is rendered again
        if name.startswith("glyph_pool_"):
            shutil.copy(cache / name, tmp_path / name)
    a = G.render_glyphs(**SMALL, cache_dir=cache)
    b = G.render_glyphs(**SMALL, cache_dir=tmp_path)
    assert a.images.dtype == np.uint8 and a.images.shape == (12 * 3, 20, 20)
    assert a.images.tobytes() == b.images.tobytes() and a.chars == b.chars and a.params == b.params
    other = G.render_glyphs(**{**SMALL, "seed": 4}, cache_dir=cache)
    assert other.images.tobytes() != a.images.tobytes()  # the seed matters


def test_cache_hit_loads_without_rendering(cache, monkeypatch):
    params = {**SMALL, "seed": 11}  # a set no other test renders: the first call is a miss
    rendered = []
    real = G._render_classes

    def counting(table, class_cps, *args, **kwargs):
        rendered.append(list(class_cps))
        return real(table, class_cps, *args, **kwargs)

    monkeypatch.setattr(G, "_render_classes", counting)
    first = G.render_glyphs(**params, cache_dir=cache)
    assert len(rendered) == 1 and [chr(c) for c in rendered[0]] == first.chars  # miss: rendered once
    second = G.render_glyphs(**params, cache_dir=cache)
    assert len(rendered) == 1  # hit: loaded from the file, the renderer not called
    assert second.images.tobytes() == first.images.tobytes()
    assert np.array_equal(second.labels, first.labels) and second.chars == first.chars
    assert np.array_equal(second.fonts, first.fonts) and second.params == first.params
    # A damaged cache file is a miss: rendered again, and replaced by the same set.
    (path,) = cache.glob("glyphs_*_seed11.npz")
    path.write_bytes(b"not an npz file")
    third = G.render_glyphs(**params, cache_dir=cache)
    assert len(rendered) == 2 and third.images.tobytes() == first.images.tobytes()
    assert G.render_glyphs(**params, cache_dir=cache).chars == first.chars and len(rendered) == 2
    assert not [n for n in os.listdir(cache) if ".tmp" in n]  # no leftovers of the atomic writes


def test_pool_cache_hit_does_not_select_again(tmp_path, monkeypatch):
    selected = []

    def select(fonts):  # a stand-in for the (slow) selection: an empty pool over the real fonts
        selected.append(len(fonts))
        return {"fonts": [p.stem for p in fonts], "chars": {}, "homoglyphs": []}

    monkeypatch.setattr(G, "_select_pool", select)
    first = G._load_pool(tmp_path / "new" / "cache")  # a miss, in a folder that does not exist yet
    assert selected == [len(G.candidate_fonts())]
    second = G._load_pool(tmp_path / "new" / "cache")
    assert len(selected) == 1 and second == first  # a hit: read from the file
    (path,) = (tmp_path / "new" / "cache").glob("glyph_pool_*.json")
    path.write_text("{")  # damaged: selected again
    G._load_pool(tmp_path / "new" / "cache")
    assert len(selected) == 2


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMVIR_CACHE", str(tmp_path / "here"))
    assert G.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MEMVIR_CACHE")
    assert G.default_cache_dir() == G.Path.home() / ".cache" / "memvir"


def test_params_are_recorded(cache):
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    for name, value in SMALL.items():
        assert gs.params[name] == value
    assert gs.params["pool_size"] == len(G.glyph_pool(SMALL["min_fonts"], cache_dir=cache))
    assert len(gs.chars) == SMALL["num_classes"] == len(set(gs.chars))
    assert np.array_equal(gs.labels, np.repeat(np.arange(12), 3))  # grouped by class, in class order
    assert gs.labels.dtype == np.int64


def test_class_order_is_the_seeded_shuffle_of_the_pool(cache):
    pool = G.glyph_pool(SMALL["min_fonts"], cache_dir=cache)  # code point order
    assert pool == sorted(pool, key=ord)
    order = np.random.default_rng([SMALL["seed"], 0]).permutation(len(pool))  # the documented rule
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    assert gs.chars == [pool[i] for i in order[:SMALL["num_classes"]]]


# ---- the open-set split ----


@pytest.mark.parametrize("num_classes,val_classes", [(12, 0), (13, 0), (12, 2), (20, 5)])
def test_split_by_class(cache, num_classes, val_classes):
    gs = G.render_glyphs(**{**SMALL, "num_classes": num_classes}, cache_dir=cache)
    splits = G.glyph_splits(gs, val_classes=val_classes)
    half = num_classes // 2  # first half train (val carved from its end), rest test
    expected = {"train": range(0, half - val_classes), "test": range(half, num_classes)}
    if val_classes:
        expected["val"] = range(half - val_classes, half)
    assert set(splits) == set(expected)
    seen = set()
    for name, classes in expected.items():
        split = splits[name]
        assert split.chars == [gs.chars[c] for c in classes]
        assert not seen & set(split.chars)  # disjoint class sets
        seen |= set(split.chars)
        assert len(split.labels) == len(classes) * SMALL["instances_per_class"] == len(split.images)
        assert set(split.labels.tolist()) == set(range(len(classes)))  # contiguous 0..C_split-1
        for label, image in zip(split.labels, split.images):  # each image is the original of its class
            original = np.nonzero(gs.labels == classes[0] + label)[0]
            assert any(np.array_equal(image, gs.images[i]) for i in original)
    assert len(seen) == num_classes


@pytest.mark.parametrize("val_classes", [-1, 6, 7])
def test_split_rejects_bad_val_classes(cache, val_classes):
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    with pytest.raises(ValueError, match="val_classes"):
        G.glyph_splits(gs, val_classes=val_classes)


# ---- the traps ----


def test_excluded_fonts_are_never_used(cache):
    on_disk = {p.stem for p in G.font_dir().glob("*.ttf")}
    assert "LastResortHE-Regular" in on_disk  # the trap exists in this matplotlib
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    for name in gs.params["fonts"]:
        assert not name.startswith(("LastResortHE", "STIXNonUni", "STIXSiz")) and not name.endswith("Display")
    assert {n for n in on_disk if n.startswith(("DejaVu", "STIXGeneral", "cm")) and "Display" not in n} == \
        set(gs.params["fonts"])


@pytest.mark.parametrize("cp,ok", [
    (0x41, True), (0x152, True), (0x20, False), (0xA0, False), (0x2003, False), (0x301, False), (0xAD, False),
    (0xE000, False), (0xF6C5, False), (0x2500, False), (0x2588, False), (0x2801, False), (0x0A, False),
])
def test_candidate_characters(cp, ok):
    assert G.is_candidate_char(cp) == ok


def test_pool_has_no_space_combining_private_or_box_characters(pool_table):
    chars = [chr(int(h, 16)) for h in pool_table["chars"]]
    # The fonts do map such code points inside RANGES, so the filter had work to do.
    dejavu = set(_cmap("DejaVuSans"))
    assert {0x20, 0x301, 0x2003, 0x2500, 0x2801} <= dejavu
    assert any(0xE000 <= cp <= 0xF8FF for cp in dejavu)
    for c in chars:
        assert unicodedata.category(c) not in {"Mn", "Mc", "Me", "Zs", "Zl", "Zp", "Co", "Cc", "Cf", "Cs", "Cn"}
        assert not (0x2500 <= ord(c) <= 0x259F or 0x2800 <= ord(c) <= 0x28FF)


def test_computer_modern_glyph_name_rule(pool_table):
    cmmi, cmr = _cmap("cmmi10"), _cmap("cmr10")
    assert cmmi[ord("!")] == "omega" and cmr[ord('"')] == "quotedblright"  # the TeX-encoding traps
    faces = {name: G._Face(G.font_dir() / f"{name}.ttf") for name in ("cmmi10", "cmr10")}
    assert ord("!") not in faces["cmmi10"].glyphs() and ord('"') not in faces["cmr10"].glyphs()
    assert ord("A") in faces["cmmi10"].glyphs() and ord("!") in faces["cmr10"].glyphs()  # standard names kept
    fonts = pool_table["fonts"]
    used_by = {h: {fonts[f] for g in groups for f in g} for h, groups in pool_table["chars"].items()}
    assert "cmmi10" not in used_by["0021"] and "cmr10" not in used_by.get("0022", set())
    assert "cmr10" in used_by["0041"]


def test_homoglyphs_are_dropped_keeping_one(pool_table):
    # Oracle: in DejaVu Sans, Latin A and Greek Alpha are the same bitmap (drawn here with FreeType).
    assert np.array_equal(_bitmap("DejaVuSans", "A"), _bitmap("DejaVuSans", "\u0391"))
    assert np.array_equal(_bitmap("DejaVuSans", "K"), _bitmap("DejaVuSans", "\u212a"))
    pool = {chr(int(h, 16)) for h in pool_table["chars"]}
    for group in ["A\u0391\u0410", "K\u212a", "\u00b5\u03bc", "-\u2010\u2011", "\u03a9\u2126", "e\u0435"]:
        assert len(pool & set(group)) == 1, group  # exactly one of them survives
    assert "A" in pool and "K" in pool


@pytest.mark.parametrize("pair", ["lI", "O0", "x\u00d7", "\u00eb\u00e8", "\u0115\u011b", "oO"])
def test_confusable_but_different_pairs_are_kept(pool_table, pair):
    pool = {chr(int(h, 16)) for h in pool_table["chars"]}
    assert set(pair) <= pool


def test_wide_glyphs_are_not_clipped(cache):
    table = G._load_pool(cache)
    wide = "\u0152&\u0416W\u0429@%"  # Œ & Ж W Щ @ %
    for size in (16, 32):
        images, _ = G._render_classes(table, [ord(c) for c in wide], size, 24, seed=0)
        border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
        assert border.max() == 0
        # and they are not shrunk to nothing: ink spans most of the width in some instance of each glyph
        for k in range(len(wide)):
            cols = np.nonzero(images[k * 24:(k + 1) * 24].max(axis=(0, 1)))[0]
            assert cols[-1] - cols[0] + 1 >= 0.6 * size


def test_rendered_set_borders_are_empty(cache):
    gs = G.render_glyphs(image_size=24, min_fonts=5, instances_per_class=3, num_classes=None, cache_dir=cache)
    assert len(gs.chars) == gs.params["pool_size"] > 300
    border = np.concatenate([gs.images[:, 0], gs.images[:, -1], gs.images[:, :, 0], gs.images[:, :, -1]], axis=1)
    assert border.max() == 0
    flat = gs.images.reshape(len(gs.images), -1)
    assert (flat.max(1) > 64).all() and ((flat > 32).sum(1) >= 4).all()  # every image has visible ink


@pytest.mark.parametrize("min_fonts", [5, 10])
def test_every_class_has_min_fonts_distinct_renders(cache, min_fonts):
    gs = G.render_glyphs(image_size=16, min_fonts=min_fonts, instances_per_class=min_fonts, num_classes=30,
                         seed=1, cache_dir=cache)
    stats = G.font_stats(gs, cache_dir=cache)
    assert (stats["num_renders"] >= min_fonts).all() and list(stats["char"]) == gs.chars
    cmaps = {name: set(_cmap(name)) for name in gs.params["fonts"]}
    for c in range(len(gs.chars)):
        used = gs.fonts[gs.labels == c]
        assert len(set(used.tolist())) == min_fonts  # instances cycle through distinct renders of distinct fonts
        # oracle: at least min_fonts font files really map the character
        assert sum(ord(gs.chars[c]) in cmap for cmap in cmaps.values()) >= min_fonts
        # oracle: the fonts standing for the distinct renders draw pairwise different bitmaps (FreeType, here)
        if c < 5:
            names = [gs.params["fonts"][f] for f in sorted(set(used.tolist()))]
            bitmaps = {_crop(_bitmap(name, gs.chars[c])).tobytes() for name in names}
            assert len(bitmaps) == len(names)


def _crop(image):
    rows, cols = np.nonzero(image.any(1))[0], np.nonzero(image.any(0))[0]
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


# ---- looking at it ----


def test_contact_sheet_has_one_row_per_class(cache, tmp_path):
    from PIL import Image

    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    path = tmp_path / "sheet.png"
    fig = G.contact_sheet(gs, classes=[0, 3, 5, 7, 11], per_class=3, path=path)
    assert len(fig.axes) == 5 * 3
    assert np.array_equal(fig.axes[3].images[0].get_array(), gs.images[gs.labels == 3][0])  # row 1 = class 3
    image = np.asarray(Image.open(path).convert("L"))
    inked = (image < 200).any(axis=1)  # rows of pixels with any ink
    bands = int(inked[0]) + int(np.sum(inked[1:] & ~inked[:-1]))  # runs of inked pixel rows
    assert bands == 5
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_font_stats_of_the_pool(cache):
    stats = G.font_stats(min_fonts=8, cache_dir=cache)
    assert list(stats["char"]) == G.glyph_pool(8, cache_dir=cache)
    assert (stats["num_fonts"] >= stats["num_renders"]).all() and (stats["num_renders"] >= 8).all()
    row = stats.set_index("char").loc["A"]
    assert row["script"] == "LATIN" and row["codepoint"] == "U+0041" and row["kind"] == "letter"


# ---- the torch dataset ----


def test_dataset_items_and_normalisation(cache):
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    split = G.glyph_splits(gs)["test"]
    ds = G.GlyphDataset(split.images, split.labels, train=False, chars=split.chars)
    assert len(ds) == len(split.labels) and ds.labels.dtype == np.int64 and ds.chars == split.chars
    x, y = ds[4]
    assert tuple(x.shape) == (1, 20, 20) and str(x.dtype) == "torch.float32" and y == split.labels[4]
    expected = (split.images[4].astype(np.float64) / 255.0 - G.GLYPH_MEAN) / G.GLYPH_STD
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)


def test_train_augmentation_only_translates(cache):
    import torch

    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    ds = G.GlyphDataset(gs.images, gs.labels, train=True, max_shift=2)
    torch.manual_seed(0)
    background = (0.0 - G.GLYPH_MEAN) / G.GLYPH_STD
    for i in range(0, len(ds), 3):
        x = ds[i][0][0].numpy()
        original = (gs.images[i] / 255.0 - G.GLYPH_MEAN) / G.GLYPH_STD
        padded = np.pad(original, 2, constant_values=background)
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if np.allclose(x, padded[2 - dy:22 - dy, 2 - dx:22 - dx], atol=1e-5)]
        assert shifts, "the augmented image is not a translate of the original (a flip or warp?)"


@pytest.mark.parametrize("kwargs,says", [
    (dict(images=np.zeros((3, 8, 8), np.float32), labels=np.zeros(3, int)), "images must be uint8"),
    (dict(images=np.zeros((3, 8, 8), np.uint8), labels=np.zeros(2, int)), r"labels must be integers of shape \(3,\)"),
    (dict(images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, 2]), chars=["a", "b"]), "chars has only 2"),
])
def test_dataset_rejects_bad_input(kwargs, says):
    with pytest.raises(ValueError, match=says):
        G.GlyphDataset(train=False, **kwargs)


# ---- bad input ----


@pytest.mark.parametrize("override,name", [
    (dict(num_classes=10_000), "num_classes"),
    (dict(num_classes=1), "num_classes"),
    (dict(image_size=8), "image_size"),
    (dict(image_size=20.0), "image_size"),
    (dict(instances_per_class=0), "instances_per_class"),
    (dict(min_fonts=0), "min_fonts"),
    (dict(seed=-1), "seed"),
])
def test_bad_parameters_raise_naming_the_parameter(cache, override, name):
    with pytest.raises(ValueError, match=name):
        G.render_glyphs(**{**SMALL, **override}, cache_dir=cache)


def test_contact_sheet_rejects_bad_classes(cache):
    gs = G.render_glyphs(**SMALL, cache_dir=cache)
    with pytest.raises(ValueError, match="classes"):
        G.contact_sheet(gs, classes=[0, 12])
    with pytest.raises(ValueError, match="per_class"):
        G.contact_sheet(gs, classes=2, per_class=0)
