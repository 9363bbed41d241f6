"""memvir as a library: the wheel and sdist build and say what they need, the core installs beside an older torch
and runs the README's library blocks there, and `import memvir` stays light.

Oracles: the built files themselves (their METADATA and member lists, read with zipfile and tarfile), a fresh virtual
environment with torch 2.13.0 (the oldest torch pyproject.toml admits; its CPU wheel is on our machines' disks),
and sys.modules in fresh interpreters.
"""
import email
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from test_readme import LIBRARY_PRINTS, library_blocks

ROOT = Path(__file__).resolve().parents[1]
OLDEST_TORCH = "2.13.0"
HEAVY = ("pandas", "matplotlib", "faiss", "tensorboard", "torch.utils.tensorboard", "sklearn", "scipy", "yaml")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist of this checkout, and the wheel built from that sdist (build's default: what a user's pip does),
    offline with the installed setuptools (no isolation); nothing is written in the checkout but the egg-info."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_metadata_states_ranges_and_extras(dist):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert meta["Name"] == "memvir" and meta["Requires-Python"] == ">=3.10"
    assert meta["Description-Content-Type"] == "text/markdown" and "MemVir" in meta.get_payload()
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(core) == ["numpy>=1.24", "torch>=2.13"], core
    assert set(meta.get_all("Provides-Extra")) == {"train", "vision", "book", "dev", "gpu"}
    assert not [r for r in meta.get_all("Requires-Dist") if "==" in r.split(";")[0]]  # ranges, never pins
    # What the library and the report need at run time: every module, the paper's numbers (package data).
    for member in ("memvir/memory.py", "memvir/report/build.py", "memvir/paper_results/cars196_5runs.csv"):
        assert member in names, member
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "results/"))]


def test_sdist_holds_what_a_build_needs(dist, tmp_path):
    _, sdist = dist
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        t.extractall(tmp_path, filter="data")
    for member in ("pyproject.toml", "README.md", "memvir/__init__.py", "memvir/report/__init__.py",
                   "memvir/paper_results/table4_recall_at_1.csv"):
        assert member in names, member
    # A wheel built from the unpacked sdist alone (no git checkout) has the same modules.
    (folder,) = tmp_path.iterdir()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "w"), str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (again,) = (tmp_path / "w").glob("*.whl")
    with zipfile.ZipFile(again) as a, zipfile.ZipFile(dist[0]) as b:
        assert sorted(n for n in a.namelist() if n.endswith(".py")) == \
            sorted(n for n in b.namelist() if n.endswith(".py"))


def test_import_memvir_stays_light():
    code = ("import sys, json, memvir; memvir.MemVir; memvir.losses.NormSoftmax; memvir.registry.build_loss; "
            f"memvir.pml.PMLLoss; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("blocked,argv,extra", [
    ("pandas", ["report", "--profile", "cpu"], "train"),
    ("yaml", ["pipeline", "--profile", "cpu", "--list-runs"], "train"),
    ("papermill", ["pipeline", "--profile", "cpu", "--chapters", "{tmp}", "--only", "01_overview"], "book")])
def test_a_missing_extra_is_named_in_one_line(blocked, argv, extra, tmp_path):
    # The module made unimportable, as in an environment with the core only.
    code = f"import sys; sys.modules[{blocked!r}] = None\nfrom memvir.__main__ import main\nsys.exit(main(sys.argv[1:]))"
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"error: `python -m memvir {argv[0]}` needs the module {blocked!r}, which the {extra!r} extra installs: "
        f"pip install 'memvir[{extra}]'")


@pytest.fixture(scope="module")
def oldest_torch_venv(dist, tmp_path_factory):
    """A fresh virtual environment: torch 2.13.0, the wheel with its core only, and pytorch-metric-learning."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch = subprocess.run([*pip, f"torch=={OLDEST_TORCH}"], capture_output=True, text=True, timeout=1200)
    if torch.returncode:
        pytest.skip(f"torch {OLDEST_TORCH} cannot be installed here: {torch.stderr.strip().splitlines()[-1:]}")
    for what in ([str(dist[0])], ["pytorch-metric-learning"]):
        done = subprocess.run([*pip, *what], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-2000:]
    return venv / "bin" / "python"


@pytest.mark.parametrize("block", [0, 1], ids=["ours", "pml"])
def test_readme_library_blocks_run_on_the_oldest_torch(oldest_torch_venv, block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text("import torch\nassert torch.__version__.startswith('" + OLDEST_TORCH + "'), torch.__version__\n"
                      + library_blocks()[block])
    done = subprocess.run([str(oldest_torch_venv), str(script)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)  # not the checkout: the installed wheel is what imports
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == LIBRARY_PRINTS[block]
    where = subprocess.run([str(oldest_torch_venv), "-c", "import memvir; print(memvir.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert "site-packages" in where, where


# ---- `pip install 'memvir[train]'` beside a user's torch: it stays, and the glyph benchmark trains (issue 32) -----


def test_installing_train_keeps_the_users_torch(oldest_torch_venv, dist, tmp_path):
    """pip's own resolution (--dry-run --report) beside torch 2.13.0: nothing of torch's is installed or replaced.
    (An unbounded torchvision in [train] made pip take the newest, which pins its own torch: 6 GB of CUDA wheels.)"""
    report = tmp_path / "report.json"
    done = subprocess.run([str(oldest_torch_venv), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--dry-run", "--report", str(report), f"memvir[train] @ {dist[0].as_uri()}"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"faiss-cpu", "matplotlib", "scipy"} <= names | _installed(oldest_torch_venv), names  # it resolved [train]
    moved = sorted(n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-"))
    assert not moved, moved


def _installed(python):
    done = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)
    return {p["name"].lower() for p in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def train_venv(oldest_torch_venv, dist):
    """The oldest-torch environment with the `train` extra installed (after the core-only tests above)."""
    done = subprocess.run([str(oldest_torch_venv), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           f"memvir[train] @ {dist[0].as_uri()}"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return oldest_torch_venv


def test_the_glyph_benchmark_trains_beside_the_users_torch(train_venv, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([str(train_venv), "-m", "memvir", "train", "--data_name", "glyphs", "--num_classes", "20",
                           "--instances_per_class", "10", "--input_size", "16", "--batch_size", "32", "--dim", "16",
                           "--epochs", "1", "--no_progress", "--data", str(tmp_path / "glyphs"), "--save_path",
                           str(run)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["finished"] is True
    version = subprocess.run([str(train_venv), "-c", "import torch, importlib.util as u; "
                              "print(torch.__version__, u.find_spec('torchvision') is None)"],
                             capture_output=True, text=True, timeout=300).stdout.split()
    assert version == [OLDEST_TORCH + "+cpu", "True"] or version == [OLDEST_TORCH, "True"], version

