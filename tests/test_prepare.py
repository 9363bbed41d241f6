"""Tests for `python -m memvir prepare` on miniature copies of the four official downloads.

Each builder writes the official file formats (a MATLAB struct array via scipy.io.savemat, the text lists, tiny
JPEGs; optionally as .tgz/.zip archives) and returns the oracle: for every split, the partition of its images
into classes, as sets of image contents. Images are identified by their bytes, so the checks do not depend on
how prepare names folders or files.
"""
import hashlib
import io
import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from memvir.data import prepare as P
from memvir.data import source

# The split sizes every paper reports (the table), written out independently of prepare.EXPECTED.
PAPER = {
    "cars196": {"train classes": 98, "train images": 8054, "test classes": 98, "test images": 8131},
    "cub200": {"train classes": 100, "train images": 5864, "test classes": 100, "test images": 5924},
    "sop": {"train classes": 11318, "train images": 59551, "test classes": 11316, "test images": 60502},
    "inshop": {"train classes": 3997, "train images": 25882, "query images": 14218, "gallery images": 12612},
}


def jpeg(seed):
    """A tiny JPEG whose bytes are unique to `seed`."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def digest(data):
    return hashlib.sha1(data).hexdigest()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def tar_and_remove(src, folder, archive):
    """Replace src/folder by the archive src/archive holding it (as the official .tgz files do)."""
    with tarfile.open(os.path.join(src, archive), "w:gz") as tf:
        tf.add(os.path.join(src, folder), arcname=folder)
    shutil.rmtree(os.path.join(src, folder))


def add_oracle(oracle, split, cls, data):
    oracle.setdefault(split, {}).setdefault(cls, set()).add(digest(data))


# ---------------------------------------------------------------------------------------------------------------
# Miniature downloads. Each returns {split: {class: {image digests}}}.

def make_cars(src, archive=False, classes=(1, 2, 98, 99, 150, 196), per_class=2, annotation="mat"):
    """annotation: "mat" (Stanford's cars_annos.mat), "txt" (the official MemVir repository's cars_annos.txt:
    '<path>,<class>' per line, as its dataset/prepare_cars.py reads it) or "both"."""
    oracle, rows = {}, []
    for i, (cls, k) in enumerate((c, k) for c in classes for k in range(per_class)):
        data, rel = jpeg(1000 + i), f"car_ims/{i + 1:06d}.jpg"
        write(os.path.join(src, rel), data)
        # `test` alternates: the classification split, which the retrieval split must ignore.
        rows.append((rel, 1, 2, 30, 40, cls, i % 2))
        add_oracle(oracle, "train" if cls <= 98 else "test", cls, data)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    anns = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        anns[0, i] = row
    names = np.array([f"Car model {c}" for c in range(1, 197)], dtype=object).reshape(1, -1)
    if annotation in ("mat", "both"):
        scipy.io.savemat(os.path.join(src, "cars_annos.mat"), {"annotations": anns, "class_names": names})
    if annotation in ("txt", "both"):
        write(os.path.join(src, "cars_annos.txt"), "".join(f"{row[0]},{row[5]}\n" for row in rows))
    if archive:
        tar_and_remove(src, "car_ims", "car_ims.tgz")
    return oracle


def make_cub(src, archive=False, classes=(1, 7, 100, 101, 150, 200), per_class=2):
    root = os.path.join(src, "CUB_200_2011")
    oracle, images, labels = {}, [], []
    names = {c: f"{c:03d}.Bird_{c}" for c in classes}
    img_id = 0
    for cls in classes:
        for k in range(per_class):
            img_id += 1
            data, rel = jpeg(2000 + img_id), f"{names[cls]}/Bird_{cls}_{k:04d}.jpg"
            write(os.path.join(root, "images", rel), data)
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {cls}")
            add_oracle(oracle, "train" if cls <= 100 else "test", cls, data)
    write(os.path.join(root, "images.txt"), "\n".join(images) + "\n")
    write(os.path.join(root, "image_class_labels.txt"), "\n".join(labels) + "\n")
    write(os.path.join(root, "classes.txt"), "\n".join(f"{c} {names[c]}" for c in classes) + "\n")
    if archive:
        tar_and_remove(src, "CUB_200_2011", "CUB_200_2011.tgz")
    return oracle


def make_sop(src, archive=False):
    root = os.path.join(src, "Stanford_Online_Products")
    oracle = {}
    # (file, class, super class, super folder); class ids of the test file continue after the train ones.
    layout = {"train": [(1, 1, "bicycle_final"), (1, 1, "bicycle_final"), (2, 1, "bicycle_final"),
                        (3, 2, "chair_final"), (3, 2, "chair_final")],
              "test": [(4, 1, "bicycle_final"), (4, 1, "bicycle_final"), (5, 2, "chair_final")]}
    n = 0
    for split, rows in layout.items():
        lines = ["image_id class_id super_class_id path"]
        for cls, sup, folder in rows:
            n += 1
            data, rel = jpeg(3000 + n), f"{folder}/{100000 + cls}_{n}.JPG"
            write(os.path.join(root, rel), data)
            lines.append(f"{n} {cls} {sup} {rel}")
            add_oracle(oracle, split, cls, data)
        write(os.path.join(root, f"Ebay_{split}.txt"), "\n".join(lines) + "\n")
    if archive:
        tar_and_remove(src, "Stanford_Online_Products", "Stanford_Online_Products.tgz")
    return oracle


def make_inshop(src, archive=False):
    oracle, lines = {}, []
    rows = [("MEN/Denim", 1, "01_1_front.jpg", "train"), ("MEN/Denim", 1, "01_2_side.jpg", "train"),
            ("MEN/Tees", 2, "01_1_front.jpg", "train"),
            ("WOMEN/Dresses", 3, "01_1_front.jpg", "query"), ("WOMEN/Dresses", 3, "02_1_front.jpg", "gallery"),
            # the same item under two categories, same file name: both must survive
            ("WOMEN/Skirts", 3, "02_1_front.jpg", "gallery"),
            ("WOMEN/Dresses", 4, "01_1_front.jpg", "query"), ("WOMEN/Dresses", 4, "01_2_side.jpg", "query"),
            ("WOMEN/Dresses", 4, "01_3_back.jpg", "gallery"), ("WOMEN/Tees", 5, "01_1_front.jpg", "gallery")]
    for i, (cat, item, name, status) in enumerate(rows):
        data, rel = jpeg(4000 + i), f"img/{cat}/id_{item:08d}/{name}"
        write(os.path.join(src, "Img", rel), data)
        lines.append(f"{rel}   id_{item:08d}   {status}")
        add_oracle(oracle, {"train": "train", "query": "test/query", "gallery": "test/gallery"}[status], item, data)
    write(os.path.join(src, "Eval", "list_eval_partition.txt"),
          f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n")
    if archive:  # the official img.zip, kept in Img/
        with zipfile.ZipFile(os.path.join(src, "Img", "img.zip"), "w") as zf:
            for dirpath, _, files in os.walk(os.path.join(src, "Img", "img")):
                for f in files:
                    full = os.path.join(dirpath, f)
                    zf.write(full, os.path.relpath(full, os.path.join(src, "Img")))
        shutil.rmtree(os.path.join(src, "Img", "img"))
    return oracle


MAKERS = {"cars196": make_cars, "cub200": make_cub, "sop": make_sop, "inshop": make_inshop}


def tree_partition(out, split):
    """{class folder: {image digests}} of OUT/<split>, read through the links."""
    root = os.path.join(out, *split.split("/"))
    found = {}
    for cls in os.listdir(root):
        for f in os.listdir(os.path.join(root, cls)):
            with open(os.path.join(root, cls, f), "rb") as fh:
                found.setdefault(cls, []).append(digest(fh.read()))
    return found


def as_partition(mapping):
    """The partition as a set of frozensets (class names dropped); duplicates would be caught before."""
    return {frozenset(v) for v in mapping.values()}


def snapshot(folder):
    """Every path under folder with its kind, content digest and link target: compares trees exactly."""
    snap = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, folder)
            if os.path.islink(p):
                snap[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                snap[rel] = ("dir",)
            else:
                st = os.stat(p)
                with open(p, "rb") as f:
                    snap[rel] = ("file", digest(f.read()), st.st_mtime_ns, st.st_ino)
    return snap


def run(*argv):
    return P.main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,archive", [("cars196", False), ("cars196", True), ("cub200", False),
                                          ("cub200", True), ("sop", False), ("sop", True),
                                          ("inshop", False), ("inshop", True)])
def test_split_rules_and_counts(tmp_path, name, archive, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    oracle = MAKERS[name](str(src), archive=archive)
    before = snapshot(src)
    assert run(name, "--src", src, "--out", out, "--force") == 0
    for split, classes in oracle.items():
        found = tree_partition(out, split)
        assert sum(len(v) for v in found.values()) == sum(len(v) for v in classes.values())  # no duplicates
        assert as_partition(found) == as_partition(classes)
    if name == "inshop":  # query and gallery are folders of test/, not classes
        assert sorted(os.listdir(out / "test")) == ["gallery", "query"]
    manifest = json.loads((out / "memvir_prepare.json").read_text())
    assert manifest["state"] == "complete" and manifest["dataset"] == name
    # The counts the manifest reports are those of the oracle.
    for split, classes in oracle.items():
        label = split.rsplit("/", 1)[-1]
        assert manifest["counts"][f"{label} images"] == sum(len(v) for v in classes.values())
        assert manifest["counts"][f"{label} classes"] == len(classes)
    assert snapshot(src) == before  # the downloads are untouched
    if archive:  # members were extracted under OUT/raw (symlink mode), and the links resolve there
        assert os.path.isdir(out / "raw")
        some = next(iter((out / "train").iterdir()))
        link = next(iter(some.iterdir()))
        assert os.path.realpath(link).startswith(os.path.realpath(out / "raw"))


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
@pytest.mark.parametrize("archive", [False, True])
def test_modes_and_idempotence(tmp_path, mode, archive, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    oracle = make_cars(str(src), archive=archive)
    before = snapshot(src)
    assert run("cars196", "--src", src, "--out", out, "--mode", mode, "--force") == 0
    first = snapshot(out)
    for split in ("train", "test"):
        assert as_partition(tree_partition(out, split)) == as_partition(oracle[split])
        for cls in (out / split).iterdir():
            for f in cls.iterdir():
                st = os.lstat(f)
                if mode == "symlink":
                    assert f.is_symlink()
                elif mode == "hardlink":
                    assert not f.is_symlink() and st.st_nlink == 2  # the original (or OUT/raw copy) and this
                else:
                    assert not f.is_symlink() and st.st_nlink == 1
    if mode == "copy":
        assert not (out / "raw").exists()  # archives go straight into the tree
    # Second run: same result, nothing rewritten (same inodes and mtimes), and it says so.
    capsys.readouterr()
    assert run("cars196", "--src", src, "--out", out, "--mode", mode, "--force") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(out) == first
    assert snapshot(src) == before


@pytest.mark.parametrize("archive", [False, True])
def test_changing_mode_rebuilds_without_duplicates(tmp_path, archive):
    src, out = tmp_path / "src", tmp_path / "out"
    oracle = make_cub(str(src), archive=archive)
    assert run("cub200", "--src", src, "--out", out, "--force") == 0
    assert run("cub200", "--src", src, "--out", out, "--mode", "copy", "--force") == 0
    for split in ("train", "test"):
        found = tree_partition(out, split)
        assert as_partition(found) == as_partition(oracle[split])
        assert sum(map(len, found.values())) == sum(map(len, oracle[split].values()))
        assert not any(f.is_symlink() for c in (out / split).iterdir() for f in c.iterdir())
    # no staging, old tree or unused extraction left
    assert sorted(os.listdir(out)) == ["memvir_prepare.json", "test", "train"]


def test_interrupted_run_is_redone(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    oracle = make_sop(str(src))
    assert run("sop", "--src", src, "--out", out, "--force") == 0
    # Simulate a crash during the swap: manifest says "writing", a staging folder is left, a split is gone.
    manifest = json.loads((out / "memvir_prepare.json").read_text())
    (out / "memvir_prepare.json").write_text(json.dumps(dict(manifest, state="writing")))
    shutil.rmtree(out / "test")
    (out / ".memvir-staging" / "train").mkdir(parents=True)
    assert run("sop", "--src", src, "--out", out, "--force") == 0
    assert as_partition(tree_partition(out, "test")) == as_partition(oracle["test"])
    assert json.loads((out / "memvir_prepare.json").read_text())["state"] == "complete"
    assert not (out / ".memvir-staging").exists()


def test_count_check_refuses_without_force(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src))  # 3 train classes x 2 images, 3 test classes x 2 images
    assert run("cars196", "--src", src, "--out", out) == 1
    err = capsys.readouterr().err
    for line in ("train classes: found 3, expected 98", "train images: found 6, expected 8,054",
                 "test classes: found 3, expected 98", "test images: found 6, expected 8,131", "--force"):
        assert line in err
    assert not out.exists()  # nothing written, not even the folder
    assert run("cars196", "--src", src, "--out", out, "--force") == 0
    assert "train images: found 6, expected 8,054" in capsys.readouterr().out  # still reported, as a warning


@pytest.mark.parametrize("name", list(PAPER))
def test_compare_counts_against_paper_table(name):
    assert P.compare_counts(name, dict(PAPER[name])) == []
    what = next(iter(PAPER[name]))
    off = dict(PAPER[name], **{what: PAPER[name][what] - 1})
    assert P.compare_counts(name, off) == [f"{what}: found {PAPER[name][what] - 1:,}, expected {PAPER[name][what]:,}"]


# ---------------------------------------------------------------------------------------------------------------
# CARS196 from the official repository's cars_annos.txt

# Classes 2 and 10 tell the official order from the numeric one. The official prepare_cars.py names each class
# folder by its bare number and main.py reads them with torchvision's ImageFolder, whose labels follow the sorted
# folder names: written out by hand here.
CARS_CLASSES = (1, 2, 10, 98, 99, 100, 196)
OFFICIAL_ORDER = {"train": ["1", "10", "2", "98"], "test": ["100", "196", "99"]}


@pytest.mark.parametrize("annotation", ["txt", "mat", "both"])
@pytest.mark.parametrize("archive", [False, True])
def test_cars_split_counts_and_official_class_order(tmp_path, annotation, archive, capsys):
    from memvir.data.folder import ImageFolderDataset

    src, out = tmp_path / "src", tmp_path / "out"
    oracle = make_cars(str(src), archive=archive, classes=CARS_CLASSES, per_class=3, annotation=annotation)
    assert run("cars196", "--src", src, "--out", out, "--force") == 0
    manifest = json.loads((out / "memvir_prepare.json").read_text())
    assert manifest["counts"] == {"train classes": 4, "train images": 12, "test classes": 3, "test images": 9}
    for split, order in OFFICIAL_ORDER.items():
        ds = ImageFolderDataset(out / split)
        assert ds.classes == order
        # each image's label is the official label of the class the annotation gave it
        label_of = {d: order.index(str(cls)) for cls, digests in oracle[split].items() for d in digests}
        for path, label in zip(ds.paths, ds.labels):
            with open(path, "rb") as f:
                assert label == label_of[digest(f.read())]
        assert len(ds) == len(label_of)


def test_cars_txt_and_mat_must_agree(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src), classes=CARS_CLASSES, annotation="both")
    lines = (src / "cars_annos.txt").read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + ",150"  # car_ims/000005.jpg: class 10 in the .mat
    (src / "cars_annos.txt").write_text("\n".join(lines) + "\n")
    assert run("cars196", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert "cars_annos.mat" in err and "cars_annos.txt" in err and "car_ims/000005.jpg" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["car_ims/000003.jpg", "car_ims/000003.jpg,ten", "car_ims/000003.jpg,197",
                                 "car_ims/000003.jpg,0", ",5", "car_ims/000003.jpg;5", "car_ims/000003.jpg,5.0"])
def test_bad_cars_txt_line(tmp_path, capsys, bad):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src), classes=CARS_CLASSES, annotation="txt")
    lines = (src / "cars_annos.txt").read_text().splitlines()
    lines[2] = bad
    (src / "cars_annos.txt").write_text("\n\n".join(lines) + "\n")  # blank lines between: line 5 is the bad one
    assert run("cars196", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line
    assert f"{src / 'cars_annos.txt'}, line 5: {bad!r}" in err
    assert "expected '<image path>,<class 1..196>'" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear message naming the file, and nothing written.

def _break_missing_annotation(src):
    os.remove(os.path.join(src, "cars_annos.mat"))
    return "cars_annos.mat"


def _break_missing_image(src):
    os.remove(os.path.join(src, "car_ims", "000003.jpg"))
    return "car_ims/000003.jpg"


def _break_truncated(src):
    """A JPEG cut short in its pixel data: its header still opens; only decoding notices."""
    path = os.path.join(src, "car_ims", "000004.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    write(path, buf.getvalue()[: int(len(buf.getvalue()) * 0.7)])
    with Image.open(path) as im:  # Image.open (and verify()) alone would let it through
        im.verify()
    return path


def _break_garbage(src):
    path = os.path.join(src, "car_ims", "000005.jpg")
    write(path, b"this is not a jpeg" * 10)
    return path


def _break_empty_file(src):
    path = os.path.join(src, "car_ims", "000006.jpg")
    write(path, b"")
    return path


def _break_mat(src):
    write(os.path.join(src, "cars_annos.mat"), b"MATLAB 5.0 MAT-file, but cut short")
    return "cars_annos.mat"


@pytest.mark.parametrize("breaker", [_break_missing_annotation, _break_missing_image, _break_truncated,
                                     _break_garbage, _break_empty_file, _break_mat])
def test_bad_cars_input(tmp_path, capsys, breaker):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src))
    named = breaker(str(src))
    before = snapshot(src)
    assert run("cars196", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert named in err and "expected" in err
    assert not out.exists()
    assert snapshot(src) == before


def test_truncated_jpeg_inside_archive(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src))
    _break_truncated(str(src))
    tar_and_remove(str(src), "car_ims", "car_ims.tgz")
    assert run("cars196", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert "car_ims.tgz" in err and "car_ims/000004.jpg" in err and "truncated" in err
    assert not out.exists()
    # --no-verify lets it through (the user's explicit choice)
    assert run("cars196", "--src", src, "--out", out, "--force", "--no-verify") == 0


def test_missing_src(tmp_path, capsys):
    assert run("cub200", "--src", tmp_path / "nowhere", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "expected" in err
    assert not (tmp_path / "out").exists()


def test_required_flags(tmp_path, capsys):
    assert run("cub200", "--out", tmp_path / "out") == 2  # argparse: --src is required
    assert "--src" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["src", "src/sub", "src/CUB_200_2011/images"])
def test_out_inside_src_is_refused(tmp_path, capsys, where):
    src = tmp_path / "src"
    make_cub(str(src))
    before = snapshot(src)
    assert run("cub200", "--src", src, "--out", tmp_path / where, "--force") == 1
    assert "inside --src" in capsys.readouterr().err
    assert snapshot(src) == before


def test_empty_class_folder(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cub(str(src))
    empty = src / "CUB_200_2011" / "images" / "042.Empty_Bird"
    empty.mkdir()
    assert run("cub200", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "empty class folder" in err
    assert not out.exists()


def test_class_without_images(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cub(str(src))
    with open(src / "CUB_200_2011" / "classes.txt", "a") as f:
        f.write("57 057.Lonely_Bird\n")
    assert run("cub200", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert "057.Lonely_Bird" in err and "classes.txt" in err and "no images" in err


@pytest.mark.parametrize("file,content,says", [
    ("Eval/list_eval_partition.txt", "3\nimage_name item_id evaluation_status\nimg/a.jpg id_1 train\n",
     "first line says 3"),
    ("Eval/list_eval_partition.txt", "1\nimage_name item_id evaluation_status\nimg/a.jpg id_1 valid\n",
     "evaluation_status 'valid'"),
    ("Eval/list_eval_partition.txt", "1\nimage_name item_id evaluation_status\nimg/a.jpg id_1\n", "line 3"),
])
def test_malformed_inshop_list(tmp_path, capsys, file, content, says):
    src, out = tmp_path / "src", tmp_path / "out"
    make_inshop(str(src))
    write(str(src / file), content)
    assert run("inshop", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert "list_eval_partition.txt" in err and says in err and "expected" in err
    assert not out.exists()


def test_sop_header_checked(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_sop(str(src))
    path = src / "Stanford_Online_Products" / "Ebay_test.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")  # header removed
    assert run("sop", "--src", src, "--out", out, "--force") == 1
    err = capsys.readouterr().err
    assert "Ebay_test.txt" in err and "image_id class_id super_class_id path" in err


def test_foreign_tree_in_out_is_left_alone(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src))
    write(str(out / "train" / "mine.txt"), "the user's own file")
    assert run("cars196", "--src", src, "--out", out, "--force") == 1
    assert "not written by `memvir prepare`" in capsys.readouterr().err
    assert (out / "train" / "mine.txt").read_text() == "the user's own file"


def test_prepared_tree_loads(tmp_path):
    """End to end: the prepared In-Shop tree through build_datasets: items share labels across query/gallery."""
    src, out = tmp_path / "src", tmp_path / "out"
    oracle = make_inshop(str(src))
    assert run("inshop", "--src", src, "--out", out, "--force") == 0
    from memvir.data import build_datasets

    with pytest.warns(UserWarning, match="3997"):
        splits = build_datasets("inshop", data=str(out), input_size=32)
    assert splits.num_classes == len(oracle["train"])
    content = {}
    for ds in (splits.query, splits.gallery):
        for path, label in zip(ds.paths, ds.labels):
            with open(path, "rb") as f:
                content[digest(f.read())] = int(label)
    # Oracle: two images share a label iff the list gave them the same item id.
    item_of = {d: item for split in ("test/query", "test/gallery") for item, ds in oracle[split].items() for d in ds}
    for a in content:
        for b in content:
            assert (content[a] == content[b]) == (item_of[a] == item_of[b])


def test_an_empty_annotation_file_is_refused_even_with_force(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_cars(str(src), classes=CARS_CLASSES, annotation="txt")
    (src / "cars_annos.txt").write_text("")
    assert run("cars196", "--src", src, "--out", out, "--force") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cars_annos.txt lists no image" in err[0] and not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# Archive members are streamed: memory does not grow with a member's size (a 110 KB zip held a 100 MB member).

BIG = 100 << 20  # bytes of zeros after a valid JPEG: compresses ~1000:1, decodes (a JPEG ends at its EOI marker)


def bomb_archive(src, kind):
    """make_inshop (zip: the official img.zip) or make_cars (tgz) with one image grown by BIG zero bytes; returns
    the sha1 of the grown image."""
    if kind == "zip":
        make_inshop(str(src))
        image = src / "Img" / "img" / "MEN" / "Denim" / "id_00000001" / "01_1_front.jpg"
    else:
        make_cars(str(src))
        image = src / "car_ims" / "000001.jpg"
    with open(image, "ab") as f:
        f.write(bytes(BIG))
    expected = hashlib.sha1(image.read_bytes()).hexdigest()
    if kind == "zip":
        with zipfile.ZipFile(src / "Img" / "img.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((src / "Img" / "img").rglob("*.jpg")):
                zf.write(path, path.relative_to(src / "Img").as_posix())
        shutil.rmtree(src / "Img" / "img")
    else:
        tar_and_remove(str(src), "car_ims", "car_ims.tgz")
    return expected


@pytest.mark.parametrize("verify", [[], ["--no-verify"]])
@pytest.mark.parametrize("mode", ["copy", "symlink"])
@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_archive_members_are_streamed_not_held_in_memory(tmp_path, capsys, kind, mode, verify):
    import tracemalloc

    src, out = tmp_path / "src", tmp_path / "out"
    expected = bomb_archive(src, kind)
    assert max(p.stat().st_size for p in src.rglob("*")) < BIG // 100  # the archive is small; its member is not
    tracemalloc.start()
    try:
        code = run("inshop" if kind == "zip" else "cars196", "--src", src, "--out", out, "--mode", mode, "--force",
                   *verify)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert peak < BIG // 4, f"peak {peak / 1e6:.1f} MB for a {BIG / 1e6:.0f} MB member"  # was 2 x BIG
    found = [p for split in ("train", "test") for p in (out / split).rglob("*.jpg") if p.stat().st_size > BIG]
    assert len(found) == 1 and hashlib.sha1(found[0].read_bytes()).hexdigest() == expected


def test_an_annotation_file_the_size_of_a_bomb_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(source, "TEXT_LIMIT", 1 << 20)  # a 1 MB limit stands for the 256 MB one
    src = tmp_path / "src"
    make_inshop(str(src))
    listing = src / "Eval" / "list_eval_partition.txt"
    with zipfile.ZipFile(src / "Eval.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Eval/list_eval_partition.txt", listing.read_bytes() + b" " * (2 << 20))
    shutil.rmtree(src / "Eval")
    assert run("inshop", "--src", src, "--out", tmp_path / "out", "--force") == 1
    assert capsys.readouterr().err == (f"error: {src / 'Eval.zip'}: Eval/list_eval_partition.txt: more than 1 MB; "
                                       f"expected an annotation file (the four benchmarks' are a few MB)\n")


# ---------------------------------------------------------------------------------------------------------------
# Annotation content that becomes a path (a class name, an item id) stays inside --out (issue 32, finding 1):
# member *names* are filtered when an archive is read, but this is annotation *text*.

def _inshop_item(src, marker):
    """In-Shop's item id_00000003 renamed in list_eval_partition.txt to `marker` (a path leaving --out)."""
    path = src / "Eval" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace("   id_00000003   ", f"   {marker}   "))
    return "list_eval_partition.txt", "line 6"  # the item's first line: the count, the header, three train lines


def _cub_class(src, marker):
    """CUB's class 101 named `marker` in classes.txt (its '/' become '_', as the official names have none)."""
    path = src / "CUB_200_2011" / "classes.txt"
    path.write_text(path.read_text().replace("101 101.Bird_101", f"101 {marker}"))
    return "classes.txt", "line 4"


ARCHIVE = {"inshop": lambda src: None,  # its annotation sits outside img.zip: the archive is made by make_inshop
           "cub200": lambda src: tar_and_remove(str(src), "CUB_200_2011", "CUB_200_2011.tgz")}


@pytest.mark.parametrize("name,breaker,payload", [
    ("inshop", _inshop_item, "../../../../ESCAPED"),  # relative to OUT/.memvir-staging/test/query
    ("inshop", _inshop_item, "ABSOLUTE"),  # replaced by an absolute path under tmp_path below
    ("inshop", _inshop_item, ".."),
    ("cub200", _cub_class, ".."),  # OUT/.memvir-staging/test/..: the images would land beside the splits
    ("cub200", _cub_class, "."),
])
@pytest.mark.parametrize("mode,archive", [("symlink", False), ("copy", False), ("symlink", True), ("copy", True)])
def test_annotation_text_never_becomes_a_path_outside_out(tmp_path, capsys, name, breaker, payload, mode, archive):
    src, out = tmp_path / "work" / "src", tmp_path / "work" / "out"
    MAKERS[name](str(src), archive=archive and name == "inshop")
    escaped = tmp_path / "ESCAPED"  # where "../../../../ESCAPED" from OUT/.memvir-staging/test/query lands
    payload = str(escaped) if payload == "ABSOLUTE" else payload
    file, line = breaker(src, payload)
    if archive:
        ARCHIVE[name](src)
    before = snapshot(tmp_path)
    assert run(name, "--src", src, "--out", out, "--mode", mode, "--force") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and file in err[0] and line in err[0] and repr(payload) in err[0] and "expected" in err[0]
    assert not escaped.exists() and not out.exists()
    assert snapshot(tmp_path) == before  # nothing written anywhere, nothing of --src touched
