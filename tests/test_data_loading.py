"""Tests for the data-loading interface: image folders, the paper's transforms, the batch sampler, build_datasets."""
import json
import os
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from memvir.data import Splits, build_datasets
from memvir.data.folder import ImageFolderDataset, ImageLoadError
from memvir.data.samplers import BatchSampler
from memvir.data import transforms as TF
from images import photo


def solid(path, rgb, size=(20, 14)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, rgb).save(path, "PNG")  # PNG: the pixel values survive exactly


def make_tree(root, spec):
    """spec: {class: number of images}; image k of class c is solid colour (10 * class index, k, 0)."""
    for ci, (cls, n) in enumerate(sorted(spec.items())):
        for k in range(n):
            solid(os.path.join(root, cls, f"img{k}.png"), (10 * ci, k, 0))


# ----------------------------------------------------------------------------------------------------------------
# ImageFolderDataset

def test_folder_labels_follow_sorted_class_names(tmp_path):
    make_tree(tmp_path, {"zebra": 2, "ant": 3, "moth": 1})
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.labels.dtype == np.int64 and len(ds) == 6
    # Oracle: the label of each path is the rank of its parent folder's name among the sorted names.
    for path, label in zip(ds.paths, ds.labels):
        assert label == sorted(["zebra", "ant", "moth"]).index(os.path.basename(os.path.dirname(path)))
    image, label = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and isinstance(label, int)


@pytest.mark.parametrize("target", ["..", ".", "../../c000"], ids=["parent", "itself", "a-sibling-class"])
def test_a_link_to_a_folder_already_read_is_refused(tmp_path, target):
    # A link back into the tree would count its images again, or (a loop) forty levels deep: one line instead.
    make_tree(tmp_path, {"c000": 2, "c001": 2})
    os.symlink(target, tmp_path / "c001" / "loop")
    if target == "../../c000":
        os.remove(tmp_path / "c001" / "loop")
        (tmp_path / "c001" / "sub").mkdir()
        os.symlink("../../c000", tmp_path / "c001" / "sub" / "again")
        os.symlink("../../c000", tmp_path / "c001" / "again2")
    with pytest.raises(ValueError, match="is a link to a folder already read"):
        ImageFolderDataset(tmp_path)


def test_a_link_to_a_folder_outside_is_read_once(tmp_path):
    make_tree(tmp_path / "elsewhere", {"x": 3})
    make_tree(tmp_path / "root", {"a": 1, "b": 1})
    os.symlink(tmp_path / "elsewhere" / "x", tmp_path / "root" / "a" / "more")
    ds = ImageFolderDataset(tmp_path / "root")
    assert len(ds) == 5 and list(ds.labels) == [0, 0, 0, 0, 1]


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    make_tree(tmp_path, {"a": 1, "b": 1})
    os.mkfifo(tmp_path / "b" / "stuck.png")  # reading it would block forever
    with pytest.raises(ValueError, match=r"stuck\.png is not a regular file"):
        ImageFolderDataset(tmp_path)


def test_an_unreadable_class_folder_is_named():
    """Mode 0 on a class folder: an error naming it, not an empty class. Root reads any folder, so as root (CI)
    the reader runs in a child process that drops to the user `nobody` first."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from memvir.files import os_error_line

    root = tempfile.mkdtemp(prefix="memvir-unreadable-")  # /tmp: a child as `nobody` can reach it
    try:
        make_tree(root, {"a": 1, "b": 1})
        for folder, _, _ in os.walk(root):
            os.chmod(folder, 0o755)
        os.chmod(os.path.join(root, "b"), 0)
        if os.geteuid() != 0:
            with pytest.raises(PermissionError) as info:
                ImageFolderDataset(root)
            line = os_error_line(info.value)
        else:
            # The interpreter may live under /root (mode 700): the child starts as root, imports what the reader
            # needs, then becomes `nobody`, for whom mode 0 denies.
            code = ("import os, sys\nfrom memvir.data.folder import ImageFolderDataset\n"
                    "from memvir.files import os_error_line\nImageFolderDataset(sys.argv[2])\n"
                    "os.setgid(65534)\nos.setuid(65534)\ntry:\n    ImageFolderDataset(sys.argv[1])\n"
                    "except PermissionError as e:\n    print(os_error_line(e))\n")
            readable = tempfile.mkdtemp(prefix="memvir-readable-")  # warms the reader's lazy imports as root
            make_tree(readable, {"a": 1})
            done = subprocess.run([sys.executable, "-c", code, root, readable], capture_output=True, text=True,
                                  cwd="/")
            shutil.rmtree(readable)
            line = done.stdout.strip()
            assert done.returncode == 0, done.stderr[-2000:]
        assert os.path.join(root, "b") in line and "\n" not in line, line
    finally:
        os.chmod(os.path.join(root, "b"), 0o755)
        shutil.rmtree(root)


def test_folder_imposed_classes(tmp_path):
    make_tree(tmp_path, {"b": 1, "d": 1})
    ds = ImageFolderDataset(tmp_path, classes=["a", "b", "c", "d"])
    assert sorted(ds.labels.tolist()) == [1, 3]
    with pytest.raises(ValueError, match="not among"):
        ImageFolderDataset(tmp_path, classes=["a", "b"])


def test_corrupt_image_names_its_path(tmp_path):
    make_tree(tmp_path, {"a": 2})
    bad = tmp_path / "a" / "img1.png"
    bad.write_bytes(bad.read_bytes()[:30])
    ds = ImageFolderDataset(tmp_path)
    ds[0]
    with pytest.raises(ImageLoadError, match=str(bad)):
        ds[ds.paths.index(str(bad))]
    assert issubclass(ImageLoadError, ValueError)


@pytest.mark.parametrize("case", ["missing", "no_classes", "empty_class", "broken_link"])
def test_folder_layout_errors(tmp_path, case):
    root = tmp_path / "root"
    if case == "missing":
        err, named = FileNotFoundError, root
    elif case == "no_classes":
        root.mkdir()
        (root / "loose.jpg").write_bytes(b"")
        err, named = ValueError, root
    elif case == "empty_class":
        make_tree(root, {"a": 1})
        (root / "b").mkdir()
        err, named = ValueError, root / "b"
    else:
        make_tree(root, {"a": 1})
        os.symlink(tmp_path / "gone.jpg", root / "a" / "x.jpg")
        err, named = FileNotFoundError, root / "a" / "x.jpg"
    with pytest.raises(err, match=str(named)) as info:
        ImageFolderDataset(root)
    assert "expected" in str(info.value)


def test_non_image_files_warn(tmp_path):
    make_tree(tmp_path, {"a": 1})
    (tmp_path / "a" / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="notes.txt"):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 1


# ----------------------------------------------------------------------------------------------------------------
# Transforms: a solid colour gives the normalised value in closed form.

@pytest.mark.parametrize("backbone", ["bninception", "resnet50"])
@pytest.mark.parametrize("bgr", [True, False])
@pytest.mark.parametrize("which", ["train", "test"])
def test_transform_values(backbone, bgr, which):
    rgb = (200, 100, 30)
    make = TF.train_transform if which == "train" else TF.test_transform
    x = make(backbone, input_size=24, bgr=bgr)(Image.new("RGB", (40, 30), rgb))
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    order = rgb[::-1] if bgr else rgb
    if backbone == "bninception":  # Caffe style: 0..255, minus (104, 117, 128), std 1
        want = [order[c] - (104, 117, 128)[c] for c in range(3)]
    else:  # torchvision ImageNet statistics on 0..1
        want = [(order[c] / 255 - (0.485, 0.456, 0.406)[c]) / (0.229, 0.224, 0.225)[c] for c in range(3)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full_like(x[c], want[c]), atol=1e-4)


def test_test_transform_is_resize_then_center_crop():
    # Oracle: a left/right split image; after Resize(256) on the shorter side and a centred 224 crop of a
    # 512 x 256 image, columns 0..223 come from x in [144, 368): the centre, where the halves meet at 256.
    im = Image.new("RGB", (512, 256), (0, 0, 0))
    im.paste((255, 255, 255), (256, 0, 512, 256))
    x = TF.test_transform("resnet18", input_size=224, bgr=False)(im)
    assert x.shape == (3, 224, 224)
    row = x[0, 112]
    assert (row[:100] < 0).all() and (row[124:] > 0).all()  # black left of the centre, white right of it


@pytest.mark.parametrize("which", ["train", "test"])
def test_transforms_pickle(which):
    t = getattr(TF, f"{which}_transform")("bninception", 32)
    t2 = pickle.loads(pickle.dumps(t))  # DataLoader workers under spawn pickle them
    im = Image.new("RGB", (40, 40), (1, 2, 3))
    torch.manual_seed(0)
    a = t(im)
    torch.manual_seed(0)
    assert torch.equal(a, t2(im))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="glyphcnn"):
        TF.train_transform("glyphcnn")


# ----------------------------------------------------------------------------------------------------------------
# BatchSampler

def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4), (7, 16), (1, 1)])
def test_shuffle_covers_each_index_once(n, batch_size):
    s = BatchSampler(np.arange(n) % 3, batch_size, seed=5)
    for epoch in range(3):
        batches = epoch_batches(s, epoch)
        assert sorted(i for b in batches for i in b) == list(range(n))  # a permutation: nothing lost, no repeats
        tail = [n % batch_size] if n % batch_size else []
        assert [len(b) for b in batches] == [batch_size] * (n // batch_size) + tail
        assert len(s) == len(batches)


def test_order_is_a_function_of_seed_and_epoch():
    labels = np.repeat(np.arange(20), 5)
    for n_instance in (1, 4):
        a = BatchSampler(labels, 20, n_instance=n_instance, seed=3)
        b = BatchSampler(labels, 20, n_instance=n_instance, seed=3)
        runs = [epoch_batches(a, e) for e in range(3)]
        # a "resumed" sampler that starts at epoch 2 sees exactly epoch 2
        assert epoch_batches(b, 2) == runs[2]
        assert runs[0] != runs[1]
        assert epoch_batches(BatchSampler(labels, 20, n_instance=n_instance, seed=4), 0) != runs[0]
        # and the global random state plays no part
        np.random.seed(0)
        torch.manual_seed(0)
        assert epoch_batches(a, 1) == runs[1]


def test_drop_last():
    s = BatchSampler(np.zeros(10, dtype=int), 4, drop_last=True)
    batches = epoch_batches(s, 0)
    assert [len(b) for b in batches] == [4, 4] and len(s) == 2


@pytest.mark.parametrize("n,batch_size,world_size", [(24, 8, 2), (25, 8, 4), (26, 8, 2), (9, 6, 3), (17, 8, 4)])
@pytest.mark.parametrize("n_instance", [1, 2])
def test_ranks_split_each_global_batch(n, batch_size, world_size, n_instance):
    labels = np.arange(n) % 5
    if batch_size % n_instance:
        pytest.skip("not a valid combination")
    whole = epoch_batches(BatchSampler(labels, batch_size, n_instance=n_instance, seed=1), 4)
    per_rank = [epoch_batches(BatchSampler(labels, batch_size, n_instance=n_instance, seed=1, rank=r,
                                           world_size=world_size), 4) for r in range(world_size)]
    lengths = {len(p) for p in per_rank}
    assert len(lengths) == 1  # every rank takes the same number of steps
    steps = lengths.pop()
    assert steps == len(BatchSampler(labels, batch_size, n_instance=n_instance, rank=1, world_size=world_size))
    for t in range(steps):
        # Oracle: the ranks' parts, concatenated in rank order, are the single-process global batch.
        assert sum((p[t] for p in per_rank), []) == whole[t]
        if len(whole[t]) == batch_size:
            assert all(len(p[t]) == batch_size // world_size for p in per_rank)
    # A final batch smaller than world_size is dropped (it cannot give every rank an image).
    rest = n % batch_size if n_instance == 1 else 0
    assert steps == n // batch_size + int(rest >= world_size)


@pytest.mark.parametrize("num_classes,per_class,batch_size,n_instance", [(10, 5, 8, 2), (10, 6, 12, 4),
                                                                        (3, 6, 12, 2), (4, 4, 8, 4)])
def test_class_balanced_batches(num_classes, per_class, batch_size, n_instance):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    s = BatchSampler(labels, batch_size, n_instance=n_instance, seed=2)
    P = batch_size // n_instance
    for epoch in range(3):
        batches = epoch_batches(s, epoch)
        assert len(batches) == len(labels) // batch_size == len(s)  # the official number of steps
        for b in batches:
            assert len(b) == batch_size
            # Oracle: group the batch by label; per class, count images (with repeats when drawn twice).
            classes, counts = np.unique(labels[b], return_counts=True)
            assert all(c % n_instance == 0 for c in counts)
            if P < num_classes:  # distinct classes, n_instance distinct images each
                assert len(classes) == P and (counts == n_instance).all()
                assert len(set(b)) == batch_size
            else:  # P >= C: classes drawn with replacement, as the official sampler does; each draw is still
                # n_instance distinct images of its class (every class here has per_class >= n_instance images)
                assert all(len(set(np.asarray(b)[labels[b] == c].tolist())) >= n_instance for c in classes)


def test_small_classes_are_topped_up_with_repeats():
    # class 0 has one image, class 1 has two; n_instance = 3
    labels = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3])
    s = BatchSampler(labels, 6, n_instance=3, seed=0)
    seen = set()
    for epoch in range(30):
        for b in epoch_batches(s, epoch):
            for c in np.unique(labels[b]):
                idx = [i for i in b if labels[i] == c]
                assert len(idx) == 3
                # every image of the class is present before any repeats
                assert set(idx) == set(np.flatnonzero(labels == c))
                seen.add(int(c))
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs,named", [
    (dict(batch_size=6, n_instance=4), "n_instance"),
    (dict(batch_size=2, n_instance=4), "n_instance"),
    (dict(batch_size=6, world_size=4), "world_size"),
    (dict(batch_size=8, rank=2, world_size=2), "rank"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, n_instance=0), "n_instance"),
    (dict(batch_size=40, n_instance=2), "batch_size=40"),
])
def test_sampler_bad_arguments(kwargs, named):
    with pytest.raises(ValueError, match=named):
        BatchSampler(np.arange(20) % 4, **kwargs)


def test_sampler_feeds_a_dataloader(tmp_path):
    make_tree(tmp_path, {"a": 3, "b": 2, "c": 3})
    ds = ImageFolderDataset(tmp_path, transform=TF.test_transform("bninception", 8))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BatchSampler(ds.labels, 4, n_instance=2, seed=0))
    for x, y in loader:
        assert x.shape == (4, 3, 8, 8)
        assert sorted(np.unique(y.numpy(), return_counts=True)[1].tolist()) == [2, 2]


# ----------------------------------------------------------------------------------------------------------------
# build_datasets

def test_build_folder_benchmark(tmp_path):
    make_tree(tmp_path / "train", {"001": 2, "002": 3})
    make_tree(tmp_path / "test", {"150": 2, "151": 1, "152": 2})
    with pytest.warns(UserWarning, match="98"):
        splits = build_datasets("CARS196", data=str(tmp_path), input_size=16)
    assert isinstance(splits, Splits) and splits.num_classes == 2
    assert len(splits.train) == 5 and len(splits.test) == 5 and splits.query is None
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 1] and splits.test.labels.tolist() == [0, 0, 1, 2, 2]
    x, y = splits.test[2]
    assert x.shape == (3, 16, 16) and y == 1
    # custom: any folder in this layout, no paper check
    assert build_datasets("custom", data=tmp_path, backbone="resnet18", input_size=16).num_classes == 2


def test_build_inshop_shares_item_labels(tmp_path):
    make_tree(tmp_path / "train", {"id_1": 2})
    make_tree(tmp_path / "test" / "query", {"id_3": 1, "id_5": 2})
    make_tree(tmp_path / "test" / "gallery", {"id_3": 2, "id_4": 1, "id_5": 1})
    with pytest.warns(UserWarning):
        s = build_datasets("inshop", data=tmp_path, input_size=16)
    item = lambda p: os.path.basename(os.path.dirname(p))
    for a_paths, a_labels in ((s.query.paths, s.query.labels), (s.gallery.paths, s.gallery.labels)):
        for b_paths, b_labels in ((s.query.paths, s.query.labels), (s.gallery.paths, s.gallery.labels)):
            for pa, la in zip(a_paths, a_labels):
                for pb, lb in zip(b_paths, b_labels):
                    assert (la == lb) == (item(pa) == item(pb))
    # test = gallery then query, as the official ImageFolder over test/ lists them
    assert s.test.paths == s.gallery.paths + s.query.paths
    assert s.test.labels.tolist() == s.gallery.labels.tolist() + s.query.labels.tolist()


@pytest.mark.parametrize("case", ["none", "missing", "a_file", "no_train", "no_test", "empty_class", "interrupted",
                                  "damaged_manifest", "manifest_list", "inshop_no_query", "unknown_name",
                                  "glyph_option"])
def test_build_errors(tmp_path, case):
    name, data, kwargs = "cub200", tmp_path, {}
    make_tree(tmp_path / "train", {"a": 1})
    make_tree(tmp_path / "test", {"b": 1})
    if case == "none":
        data, err, match = None, ValueError, "data="
    elif case == "missing":
        data, err, match = tmp_path / "nope", FileNotFoundError, str(tmp_path / "nope")
    elif case == "no_train":
        os.rename(tmp_path / "train", tmp_path / "training")
        err, match = FileNotFoundError, str(tmp_path / "train")
    elif case == "no_test":
        os.rename(tmp_path / "test", tmp_path / "testing")
        err, match = FileNotFoundError, str(tmp_path / "test")
    elif case == "empty_class":
        (tmp_path / "test" / "c").mkdir()
        err, match = ValueError, str(tmp_path / "test" / "c")
    elif case == "a_file":
        (tmp_path / "notes.txt").write_text("mine")
        data, err, match = tmp_path / "notes.txt", FileNotFoundError, f"{tmp_path / 'notes.txt'} is not a folder"
    elif case == "interrupted":
        (tmp_path / "memvir_prepare.json").write_text(json.dumps({"state": "writing"}))
        err, match = ValueError, "interrupted"
    elif case == "damaged_manifest":
        (tmp_path / "memvir_prepare.json").write_text('{"state": "comp')
        err, match = ValueError, re.escape(f"{tmp_path / 'memvir_prepare.json'}: not valid JSON (Unterminated")
    elif case == "manifest_list":
        (tmp_path / "memvir_prepare.json").write_text("[]")
        err, match = ValueError, re.escape(f"{tmp_path / 'memvir_prepare.json'}: expected a mapping")
    elif case == "inshop_no_query":
        name, err, match = "inshop", FileNotFoundError, str(tmp_path / "test" / "query")
    elif case == "unknown_name":
        name, err, match = "cars197", ValueError, "cars197"
    else:
        kwargs, err, match = {"num_fonts": 3}, ValueError, "glyphs"
    with pytest.raises(err, match=match) as info:
        build_datasets(name, data=data, **kwargs)
    assert "expected" in str(info.value)


# Every spelling a user may give (the official main.py's aliases, the downloads' folder names), written by hand.
SPELLINGS = {"cars196": "cars196", "CARS196": "cars196", "car": "cars196", "Cars": "cars196",
             "cub200": "cub200", "cub": "cub200", "CUB_200_2011": "cub200", "cub-200-2011": "cub200",
             "sop": "sop", "StanfordOnlineProducts": "sop", "Stanford_Online_Products": "sop",
             "inshop": "inshop", "in_shop": "inshop", "In-shop": "inshop",
             "glyphs": "glyphs", "GLYPHS": "glyphs", "custom": "custom"}


def test_the_alias_table_is_the_documented_one():
    from memvir.data import DATA_NAMES, canonical_data_name

    assert set(DATA_NAMES) == {s.lower().replace("-", "_") for s in SPELLINGS}  # no alias more, none less
    for spelling, name in SPELLINGS.items():
        assert canonical_data_name(spelling) == name
    assert canonical_data_name("cars197") is None and canonical_data_name("cars 196") is None


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_alias_works_in_build_datasets(tmp_path, monkeypatch, spelling):
    name = SPELLINGS[spelling]
    if name == "glyphs":  # the glyph path is taken: it calls the renderer (stubbed)
        glyphs = pytest.importorskip("memvir.data.glyphs")

        def render(**kwargs):
            raise LookupError("the glyph renderer was called")

        monkeypatch.setattr(glyphs, "render_glyphs", render)
        with pytest.raises(LookupError, match="renderer was called"):
            build_datasets(spelling, data=tmp_path)
        return
    make_tree(tmp_path / "train", {"a": 1})
    make_tree(tmp_path / "test", {"b": 1})
    if name == "inshop":
        make_tree(tmp_path / "test" / "query", {"b": 1})
        make_tree(tmp_path / "test" / "gallery", {"b": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = build_datasets(spelling, data=tmp_path, input_size=8)
    said = [str(w.message) for w in caught]
    # The paper check names the canonical benchmark (custom has none); only In-Shop has query and gallery.
    assert any(f"the paper's {name} has" in m for m in said) == (name != "custom"), said
    assert (splits.query is not None) == (name == "inshop")


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_alias_works_in_prepare(tmp_path, spelling):
    from memvir.data import prepare as P

    name = SPELLINGS[spelling]
    if name in ("glyphs", "custom"):
        with pytest.raises(P.PrepareError, match="needs no `prepare`"):
            P.prepare(spelling, src=tmp_path / "nowhere", out=tmp_path / "out")
        return
    # Accepted: it gets as far as looking for the downloads, and names the canonical benchmark.
    with pytest.raises(FileNotFoundError, match=f"the official {name} files"):
        P.prepare(spelling, src=tmp_path / "nowhere", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_glyphs_wiring(monkeypatch, tmp_path):
    """build_datasets("glyphs") passes the options through and wraps each split (rendering is glyphs.py's job,
    tested there; here it is replaced by a stub, since the first real rendering takes half a minute)."""
    glyphs = pytest.importorskip("memvir.data.glyphs")
    calls = {}

    def render(**kwargs):
        calls["render"] = kwargs
        return "the glyph set"

    def splits(glyph_set, val_classes=0):
        calls["splits"] = (glyph_set, val_classes)
        part = lambda labels, chars: glyphs.GlyphSplit(images=np.zeros((len(labels), 8, 8), np.uint8),
                                                      labels=np.array(labels), chars=chars,
                                                      classes=np.arange(len(chars)))
        return {"train": part([0, 1, 2, 2], list("abc")), "val": part([0], list("d")),
                "test": part([0, 1, 1], list("ef"))}

    monkeypatch.setattr(glyphs, "render_glyphs", render)
    monkeypatch.setattr(glyphs, "glyph_splits", splits)
    s = build_datasets("glyphs", data=tmp_path, num_classes=12, seed=3, val_classes=1)
    assert calls == {"render": {"num_classes": 12, "seed": 3, "cache_dir": tmp_path},
                     "splits": ("the glyph set", 1)}
    assert s.num_classes == 3
    assert [len(d) for d in (s.train, s.val, s.test)] == [4, 1, 3]
    assert s.train.labels.tolist() == [0, 1, 2, 2] and s.test.labels.dtype == np.int64
    x, y = s.test[1]
    assert x.shape == (1, 8, 8) and y == 1


# ----------------------------------------------------------------------------------------------------------------
# --decode draft / gpu: the official augmentation with a cheaper decoder. Oracle: the official PIL pipeline
# (train_transform(decode="pil"), torchvision's RandomResizedCrop + RandomHorizontalFlip on a full decode).

def official(path, seed):
    torch.manual_seed(seed)
    return TF.train_transform("bninception", 224)(Image.open(path).convert("RGB"))


def via(decode, path, seed):
    torch.manual_seed(seed)
    out = TF.train_transform("bninception", 224, decode=decode).from_file(path)
    return TF.EncodedBatch([out]).to("cpu")[0] if decode == "gpu" else out


def test_draft_factor_is_the_largest_that_keeps_the_crop_at_input_size():
    assert [TF.draft_factor(h, 10_000, 224) for h in (223, 224, 447, 448, 895, 896, 1791, 1792, 5000)] == \
        [1, 1, 1, 2, 2, 4, 4, 8, 8]
    assert TF.draft_factor(2000, 300, 224) == 1  # the shorter side of the crop decides


@pytest.mark.parametrize("decode", ["draft", "gpu"])
@pytest.mark.parametrize("size", [(700, 480), (1800, 1300), (150, 100)])
def test_same_seed_same_crop_up_to_resampling(tmp_path, decode, size):
    # At one seed every path draws the same box and flip; the outputs then differ only by the resampling.
    path = photo(tmp_path / "a.jpg", size)
    full = Image.open(path).convert("RGB")
    reduced = 0
    for seed in range(12):
        a, b = official(path, seed), via(decode, path, seed)
        assert b.shape == a.shape == (3, 224, 224) and b.dtype == a.dtype
        diff = (a - b).abs()
        torch.manual_seed(seed)
        (top, left, h, w), flip = TF.crop_params(*full.size)
        factor = TF.draft_factor(h, w, 224)
        if decode == "gpu":  # decode_jpeg and PIL use libjpeg alike; uint8 resampling may round the other way
            assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.05
        elif factor == 1:  # no reduction possible: exactly the official pipeline
            assert diff.max() == 0
        else:
            reduced += 1
            # Yardstick: the official crop resampled with bicubic instead of bilinear (another filter, same image).
            alt = full.crop((left, top, left + w, top + h)).resize((224, 224), Image.BICUBIC)
            alt = TF.T.Compose([TF.RGBToBGR()] + TF._tail("bninception"))(
                alt.transpose(Image.FLIP_LEFT_RIGHT) if flip else alt)
            yardstick = (a - alt).abs().mean()
            assert diff.mean() < 1.0 and diff.mean() < 2.5 * yardstick and diff.max() <= 8  # grey levels of 255
    if decode == "draft" and size == (1800, 1300):
        assert reduced >= 6  # the test exercised the reduced decode (factors 2 and 4 at this size)


def edge_stats(x):
    """(red at the left edge, red at the right edge, green at the top, green at the bottom, mean of each
    channel) of a BGR x255 - mean output of `photo`: red rises with x and green with y, so the first four are
    the crop box (and flip) as the output shows it."""
    bgr = x + torch.tensor(TF.BNINCEPTION_MEAN).view(3, 1, 1)
    return [bgr[2, :, 0].mean(), bgr[2, :, -1].mean(), bgr[1, 0].mean(), bgr[1, -1].mean(), *bgr.mean((1, 2))]


@pytest.mark.parametrize("decode", ["draft", "gpu"])
def test_same_output_distribution_over_independent_draws(tmp_path, decode):
    # Independent seeds for the two paths: a two-sample Kolmogorov-Smirnov test on the crop box (read from the
    # coordinate-coded image) and on the channel means, 300 draws each; and the flip rate.
    from scipy.stats import binomtest, ks_2samp

    path = photo(tmp_path / "a.jpg", (1000, 760))
    n = 300
    ref = np.array([[float(v) for v in edge_stats(official(path, s))] for s in range(n)])
    new = np.array([[float(v) for v in edge_stats(via(decode, path, 10_000 + s))] for s in range(n)])
    for k in range(ref.shape[1]):
        assert ks_2samp(ref[:, k], new[:, k]).pvalue > 1e-3, k
    flipped = int((new[:, 0] > new[:, 1]).sum())  # red falls from left to right: a flipped crop
    assert binomtest(flipped, n, 0.5).pvalue > 1e-3
    # The KS test can fail: the same check against a crop of the wrong size distribution does.
    torch.manual_seed(0)
    small = np.array([[float(v) for v in edge_stats(TF.T.Compose([TF.T.RandomResizedCrop(224, scale=(0.08, 0.5)),
                                                                   TF.T.RandomHorizontalFlip()] + TF._tail(
        "bninception"))(TF.RGBToBGR()(Image.open(path).convert("RGB"))))] for _ in range(n)])
    assert ks_2samp(ref[:, 1] - ref[:, 0], small[:, 1] - small[:, 0]).pvalue < 1e-3


@pytest.mark.parametrize("decode", ["draft", "gpu"])
def test_decoders_through_the_dataloader(tmp_path, decode):
    # The training path: ImageFolderDataset + EpochSeeded + DataLoader (workers), batches as the official one.
    from memvir.data.samplers import EpochSeeded

    for c in range(2):
        for k in range(3):
            photo(tmp_path / f"c{c}" / f"{k}.jpg", (400 + 90 * k, 300 + 60 * c), seed=3 * c + k, gray=k == 1)
    solid(str(tmp_path / "c1" / "png.png"), (200, 10, 30), size=(300, 260))  # a PNG goes through PIL in the worker
    batches = {}
    for how in ("pil", decode):
        ds = EpochSeeded(ImageFolderDataset(tmp_path, TF.train_transform("bninception", 224, decode=how)), seed=7)
        ds.set_epoch(3)
        loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=1 if how != "pil" else 0)
        (images, labels), = list(loader)
        if how == "gpu":
            assert isinstance(images, TF.EncodedBatch) and len(images) == 7
            images = images.to("cpu", non_blocking=True)  # what train.py does with a batch
        batches[how] = images, labels
    (a, la), (b, lb) = batches["pil"], batches[decode]
    assert torch.equal(la, lb) and b.shape == a.shape == (7, 3, 224, 224)
    assert (a - b).abs().mean() < 0.5 and (a - b).abs().max() <= (1.0 + 1e-4 if decode == "gpu" else 8)


@pytest.mark.parametrize("decode", ["draft", "gpu"])
def test_damaged_jpeg_names_its_file(tmp_path, decode):
    path = photo(tmp_path / "c" / "bad.jpg", (600, 400))
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 3])  # the header survives: the error comes at decode time
    tf = TF.train_transform("bninception", 224, decode=decode)
    with pytest.raises(ImageLoadError, match=path.replace(".", r"\.")):
        item = tf.from_file(path)
        if decode == "gpu":
            TF.EncodedBatch([item]).to("cpu")
    with open(path, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ImageLoadError, match=path.replace(".", r"\.")):
        tf.from_file(path)


def test_decode_flag_is_checked(tmp_path):
    from memvir.resolve import resolve_config

    make_tree(tmp_path / "train", {"a": 1})
    make_tree(tmp_path / "test", {"b": 1})
    for decode, kind in (("pil", "Compose"), ("draft", "DraftTrainTransform"), ("gpu", "EncodedTrainTransform")):
        splits = build_datasets("custom", data=tmp_path, decode=decode)
        assert type(splits.train.transform).__name__ == kind
        assert type(splits.test.transform).__name__ == "Compose"  # evaluation keeps the official transform
    with pytest.raises(ValueError, match=r"^--decode='nvjpeg': expected one of pil, draft, gpu$"):
        build_datasets("custom", data=tmp_path, decode="nvjpeg")
    with pytest.raises(ValueError, match=r"^--decode='nvjpeg'"):
        resolve_config({"data_name": "custom", "data": str(tmp_path), "decode": "nvjpeg"})
    with pytest.raises(ValueError, match="glyphs are rendered tensors"):
        resolve_config({"data_name": "glyphs", "decode": "gpu"})
    assert resolve_config({"data_name": "custom", "data": str(tmp_path)}).decode == "pil"  # the official default


@pytest.mark.parametrize("decode", ["draft", "gpu"])
def test_decoders_pickle(decode):
    t = TF.train_transform("bninception", 32, decode=decode)
    assert repr(pickle.loads(pickle.dumps(t))) == repr(t)


# ----------------------------------------------------------------------------------------------------------------
# Train and test share no image (issue 32, finding 5): the same file is refused, the same bytes warned of


def distinct_tree(root, spec, seed0=0):
    """spec: {class: number of images}; every image a different photograph (distinct bytes)."""
    seed = seed0
    for cls, n in sorted(spec.items()):
        for k in range(n):
            photo(root / cls / f"img{k}.jpg", (24, 20), seed=seed)
            seed += 1


def leak(tmp_path, how):
    """A train/test tree whose test split reaches a train image in the way `how` says; returns the count."""
    distinct_tree(tmp_path / "train", {"a": 2, "b": 3})
    distinct_tree(tmp_path / "test", {"c": 2, "d": 2}, seed0=100)
    test, train = tmp_path / "test", tmp_path / "train"
    if how == "class_is_a_link_to_train":
        os.symlink("../train", test / "e")  # test/e/a/img0.jpg ... : all five train images
        return 5
    if how == "link_inside_a_test_class":
        os.symlink(os.path.join("..", "..", "train", "b"), test / "c" / "more")
        return 3
    if how == "hard_link":
        os.link(train / "a" / "img1.jpg", test / "d" / "img9.jpg")
        return 1
    if how == "file_symlink":
        os.symlink(train / "b" / "img2.jpg", test / "c" / "img9.jpg")
        return 1
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["class_is_a_link_to_train", "link_inside_a_test_class", "hard_link", "file_symlink"])
def test_a_test_image_that_is_a_train_image_is_refused(tmp_path, how):
    n = leak(tmp_path, how)
    with pytest.raises(ValueError) as err:
        build_datasets("custom", data=tmp_path, backbone="resnet18", input_size=16)
    msg = str(err.value)
    assert f": {n} image(s) of test and train are the same file" in msg and "expected disjoint splits" in msg
    assert "\n" not in msg


def test_byte_identical_copies_across_splits_are_counted_in_one_warning(tmp_path):
    distinct_tree(tmp_path / "train", {"a": 2, "b": 3})
    distinct_tree(tmp_path / "test", {"c": 2, "d": 2}, seed0=100)
    for src, dst in (("a/img0.jpg", "c/copy.jpg"), ("b/img2.jpg", "d/copy.jpg")):
        (tmp_path / "test" / dst).write_bytes((tmp_path / "train" / src).read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = build_datasets("custom", data=tmp_path, backbone="resnet18", input_size=16)
    lines = [str(w.message) for w in caught if "same bytes" in str(w.message)]
    assert len(lines) == 1 and ": 2 image(s) of test and train hold the same bytes" in lines[0]
    assert len(splits.test) == 6  # warned, not refused: a benchmark may hold a few copies of its own


def test_distinct_splits_say_nothing(tmp_path):
    distinct_tree(tmp_path / "train", {"a": 2, "b": 3})
    distinct_tree(tmp_path / "test", {"c": 2, "d": 2}, seed0=100)
    # same size, same first bytes, other content: read whole before it counts
    body = (tmp_path / "train" / "a" / "img0.jpg").read_bytes()
    (tmp_path / "test" / "c" / "img0.jpg").write_bytes(body[:-3] + bytes(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_datasets("custom", data=tmp_path, backbone="resnet18", input_size=16)


def test_inshop_query_and_gallery_are_checked_too(tmp_path):
    distinct_tree(tmp_path / "train", {"id_1": 2})
    distinct_tree(tmp_path / "test" / "query", {"id_3": 1}, seed0=10)
    distinct_tree(tmp_path / "test" / "gallery", {"id_3": 2}, seed0=20)
    os.link(tmp_path / "test" / "query" / "id_3" / "img0.jpg", tmp_path / "test" / "gallery" / "id_3" / "img7.jpg")
    with pytest.raises(ValueError, match=r": 1 image\(s\) of gallery and query are the same file"):
        build_datasets("inshop", data=tmp_path, input_size=16)


# ----------------------------------------------------------------------------------------------------------------
# Every image mode PIL opens becomes 8-bit RGB faithfully, or is refused naming the file (issue 32, finding 6)

GREY16 = np.array([[0, 1, 128, 129, 257], [1000, 32767, 32896, 65278, 65535]], dtype=np.uint16)  # (2, 5)
EIGHT = np.floor(GREY16 / 65535 * 255 + 0.5).astype(np.uint8)  # the 8-bit value of each, written out


def pgm16(path, values, maxval=65535):
    """A binary PGM written by hand (P5, big-endian 16-bit samples): PIL has no writer for it."""
    h, w = values.shape
    path.write_bytes(f"P5\n{w} {h}\n{maxval}\n".encode() + values.astype(">u2").tobytes())
    return path


def png16(path, values):
    """A 16-bit greyscale PNG written by hand (colour type 0, bit depth 16), independent of PIL's writer."""
    import struct
    import zlib

    h, w = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def tiff16(path, values, endian):
    Image.fromarray(values.astype(endian + "u2")).save(path, "TIFF")  # I;16 (little-endian) or I;16B
    return path


SIXTEEN = {"png16": lambda p: png16(p / "a.png", GREY16), "pgm16": lambda p: pgm16(p / "a.pgm", GREY16),
           "tiff16_le": lambda p: tiff16(p / "a.tif", GREY16, "<"),
           "tiff16_be": lambda p: tiff16(p / "a.tif", GREY16, ">")}


@pytest.mark.parametrize("kind", sorted(SIXTEEN))
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, kind):
    from memvir.data.folder import load_rgb

    path = SIXTEEN[kind](tmp_path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I;16L", "I")  # what makes it 16-bit in PIL's eyes
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (2, 5, 3) and (rgb == EIGHT[:, :, None]).all()


def test_a_pgm_with_another_maxval_is_scaled_by_it(tmp_path):
    from memvir.data.folder import load_rgb

    values = np.array([[0, 100, 511, 512, 1023]])
    rgb = np.asarray(load_rgb(pgm16(tmp_path / "a.pgm", values, maxval=1023)))[..., 0].astype(int)
    assert np.abs(rgb - values / 1023 * 255).max() <= 1  # within rounding of the two scalings


@pytest.mark.parametrize("mode,values", [("I", np.array([[0, 70000, -5, 2**31 - 1]], dtype=np.int32)),
                                         ("F", np.array([[0.0, 0.5, 1.0, 3.5]], dtype=np.float32))])
@pytest.mark.parametrize("decode", ["pil", "draft", "gpu"])
def test_pixels_with_no_fixed_range_are_refused_naming_the_file(tmp_path, mode, values, decode):
    from memvir.data.folder import check_image, load_rgb

    path = tmp_path / "c" / "a.tif"
    path.parent.mkdir()
    Image.fromarray(values, mode).save(path, "TIFF")
    assert Image.open(path).mode == mode
    says = rf"cannot read image {re.escape(str(path))}: mode {mode} .*no fixed range"
    with pytest.raises(ImageLoadError, match=says):
        if decode == "pil":
            load_rgb(path)
        else:
            TF.train_transform("bninception", 16, decode=decode).from_file(path)
    assert f"mode {mode}" in check_image(str(path))  # `prepare` finds it before writing anything


def _rgb_of(path):
    from memvir.data.folder import load_rgb

    return np.asarray(load_rgb(path)).astype(int)


def test_palette_grey_alpha_and_cmyk_files_convert_to_their_colours(tmp_path):
    # P: each index shows its palette entry; LA: the grey on all three channels; CMYK: the print formula
    # R = 255 (1 - C/255)(1 - K/255), within one unit of rounding.
    idx = np.array([[0, 1, 2, 1]], dtype=np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255]
    p = Image.fromarray(idx, "P")
    p.putpalette(palette + [0] * (768 - len(palette)))
    p.save(tmp_path / "p.png")
    assert (_rgb_of(tmp_path / "p.png")[0] == np.array(palette).reshape(3, 3)[idx[0]]).all()
    la = np.array([[[7, 255], [130, 0], [250, 128]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (_rgb_of(tmp_path / "la.png")[0] == la[0, :, :1]).all()
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 64, 100], [30, 60, 90, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    c, k = cmyk[0, :, :3].astype(float), cmyk[0, :, 3:].astype(float)
    assert np.abs(_rgb_of(tmp_path / "c.tif")[0] - 255 * (1 - c / 255) * (1 - k / 255)).max() <= 1


@pytest.mark.parametrize("decode", ["draft", "gpu"])
def test_the_other_decoders_scale_sixteen_bit_the_same(tmp_path, decode):
    # A constant 16-bit image: whatever the crop and flip, every output pixel is the 8-bit value's.
    path = png16(tmp_path / "a.png", np.full((40, 50), 40000, dtype=np.uint16))
    Image.fromarray(np.full((40, 50), round(40000 / 65535 * 255), dtype=np.uint8), "L").save(tmp_path / "b.png")
    tf = TF.train_transform("bninception", 16, decode=decode)
    a, b = tf.from_file(path), tf.from_file(tmp_path / "b.png")
    if decode == "gpu":
        a, b = a.pixels, b.pixels  # (3, H, W) uint8: what the device resizes
    assert torch.equal(a, b)
