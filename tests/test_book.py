"""The book: its table of contents and notebooks/ agree, it builds offline with warnings as errors from the
executed notebooks, and a browser shows the results chapter with its tables and figures."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import CHROMIUM_FLAGS, chromium

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))]


def test_toc_lists_every_chapter_in_order():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    assert toc["format"] == "jb-book" and (BOOK / f"{toc['root']}.md").exists()
    files = [c["file"] for c in toc["chapters"]]
    assert [f for f in files if f.startswith("chapters/")] == [f"chapters/{c}" for c in CHAPTERS]
    for f in files:
        if not f.startswith("chapters/"):
            assert (BOOK / f"{f}.md").exists(), f


def test_intro_links_every_chapter():
    intro = (BOOK / "intro.md").read_text()
    assert re.findall(r"\{doc\}`chapters/(\w+)`", intro) == CHAPTERS


def test_config_builds_offline_without_executing():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"  # the pipeline executes, the build never does
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]  # MathJax without a CDN
    for bib in config["bibtex_bibfiles"]:
        assert (BOOK / bib).exists()
    cited = set(re.findall(r"\{cite\}`([\w,]+)`", "".join(
        p.read_text() for p in [*(ROOT / "notebooks").glob("*.py"), BOOK / "intro.md"])))
    keys = set(re.findall(r"@\w+\{(\w+),", (BOOK / "references.bib").read_text()))
    assert {k for c in cited for k in c.split(",")} <= keys


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Stage the book as `make book` does (chapters: the committed executed notebooks) and build it with -W."""
    from memvir.pipeline import stage_book

    tmp = tmp_path_factory.mktemp("book")
    src = stage_book(tmp / "src", ROOT / "notebooks", root=ROOT, log=lambda s: None)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", "-W", "--keep-going", "--path-output",
           str(tmp), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "_build" / "html"


def test_download_button_gives_the_notebook(built):
    # sphinx-book-theme's download menu (use_download_button) links the page's .ipynb: the file must be there.
    for c in CHAPTERS:
        page = built / "chapters" / f"{c}.html"
        links = set(re.findall(r'href="([^"#?]+\.ipynb)"', page.read_text()))
        assert links, f"{c}.html offers no .ipynb download (use_download_button in book/_config.yml)"
        for link in links:
            assert not link.startswith(("http:", "https:", "/")), link
            target = (page.parent / link).resolve()
            assert target.is_file() and target.name == f"{c}.ipynb", f"{c}.html: {link} does not resolve"


def absolute_paths(text, machine_paths):
    """The absolute paths of the build machine that `text` shows: given ones and any under /tmp, /root, /home."""
    found = {p for p in machine_paths if p in text}
    found |= set(re.findall(r"(?<![\w.~/-])/(?:tmp|root|home|Users)/[\w.-]+", text))
    return found


def test_absolute_path_check_sees_one():
    assert absolute_paths('profile = "/tmp/clone/configs/cpu.yml"', []) == {"/tmp/clone"}
    assert absolute_paths("<code>/root/.cache</code> and /home/u", []) == {"/root/.cache", "/home/u"}
    assert absolute_paths("https://x.org/home/page ../results/report ~/downloads/cars", []) == set()
    assert absolute_paths("at /srv/build/memvir/x.py", ["/srv/build/memvir"]) == {"/srv/build/memvir"}


def test_no_absolute_path_of_the_build_machine(built):
    # A published page must not show where it was built (papermill's injected parameters, warnings, tracebacks).
    machine = [str(ROOT), str(built.parents[1]), sys.prefix]  # the checkout, the build folder, the venv
    shown = {}
    for page in sorted(built.rglob("*.html")):
        text = page.read_text(errors="replace")
        if found := absolute_paths(text, machine):
            shown[str(page.relative_to(built))] = sorted(found)
    assert not shown, shown


def test_book_has_every_chapter(built):
    for c in CHAPTERS:
        page = (built / "chapters" / f"{c}.html").read_text()
        assert "<h1>" in page and "Traceback" not in page, c
    # MathJax comes with the book (sphinx-mathjax-offline), not from a CDN.
    page = (built / "chapters" / "03_losses.html").read_text()
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert scripts and not [s for s in scripts if s.startswith(("http:", "https:", "//"))], scripts


def test_results_chapter_in_a_browser(built, tmp_path):
    page = built / "chapters" / "06_results.html"
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    tables = re.findall(r"<table.*?</table>", dom, flags=re.S)
    header = "<th>Loss</th>"
    ours = [t for t in tables if header in t and "<th>Mean</th>" in t and "<th>Diff.</th>" in t]
    assert len(ours) >= 6, "the three result tables, ours and the paper's, side by side"
    assert "MemVir + Norm-SoftMax" in ours[0] and "<th>Std.</th>" in ours[0]
    for title in ("Recall@1", "RP", "MAP@R"):
        assert f">{title}<" in dom or f">{title}</" in dom, title
    images = re.findall(r'<img[^>]+src="([^"]+)"', dom)
    assert len(images) >= 3, "the figures (bars, learning curves, curriculum)"
    for src in images:  # every figure is a file of the built book (no data: URI, no network)
        assert not src.startswith(("http:", "https:")), src
        if not src.startswith("data:"):
            assert (page.parent / src).resolve().exists(), src


def test_code_font_fits_ninety_columns(built):
    # The chapters keep code within 90 characters (test_notebooks.py); the theme's column holds ~80 at its default
    # code size, so book/_static/memvir.css makes it smaller, and the staged book must carry it.
    page = (built / "chapters" / "04_memvir.html").read_text()
    assert re.search(r'href="[^"]*_static/memvir\.css', page), "book/_static/memvir.css is not linked"


def test_api_reference_is_generated_from_the_docstrings(built):
    page = (built / "api.html").read_text()
    # autodoc's anchors for the public API, with their signatures and the docstrings' Args sections.
    for name in ("memvir.MemVir", "memvir.losses.NormSoftmax", "memvir.losses.SoftTriple", "memvir.registry.build_loss",
                 "memvir.pml.PMLLoss", "memvir.metrics.retrieval_metrics", "memvir.data.build_datasets"):
        assert f'id="{name}"' in page, name
    import memvir

    first_line = memvir.MemVir.__doc__.splitlines()[0]
    assert first_line.split(" (")[0] in page  # the docstring itself, not a copy that could drift
    assert "num_steps" in page and "&gt;&gt;&gt;" in page  # an argument and a doctest example
