"""memvir.extras: a library call that needs a module of an extra not installed says, in one line, which extra to
install (issue 32, finding 12). "Not installed" is made real in a subprocess: the path finder is told not to find
the module, so every finder after it (memvir's last) is asked, as when the package is absent."""
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

HIDE = """
import sys, importlib.machinery as m
class Hide(m.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == {module!r} else m.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hide if f is m.PathFinder else f for f in sys.meta_path]
"""


def run_without(module, code):
    script = HIDE.format(module=module) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def extra_of(distribution):
    """The extra of pyproject.toml that lists `distribution` (the oracle: the file, not the installed metadata)."""
    (extra,) = [e for e, reqs in EXTRAS.items() if any(r.split(">")[0].split("<")[0].split("=")[0].strip()
                                                      == distribution for r in reqs)]
    return extra


@pytest.mark.parametrize("module,distribution,code", [
    ("faiss", "faiss-cpu", "import numpy as np, memvir\n"
                           "memvir.retrieval_metrics(np.eye(6, 4, dtype='float32'), np.arange(6) % 2)"),
    ("matplotlib", "matplotlib", "from memvir.data.glyphs import render_glyphs\n"
                                 "render_glyphs(num_classes=4, instances_per_class=2)"),
    ("PIL", "pillow", "from memvir.data.folder import load_rgb\nload_rgb('x.png')"),
    ("yaml", "pyyaml", "from memvir.profile import load_profile\nload_profile('cpu')"),
    ("pandas", "pandas", "import memvir.report"),
])
def test_a_missing_extra_is_one_line_naming_it(module, distribution, code):
    done = run_without(module, code)
    extra = extra_of(distribution)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last == (f"ModuleNotFoundError: No module named {module!r}: memvir needs it for "
                                             f"this, and its '{extra}' extra installs it: pip install "
                                             f"'memvir[{extra}]'"), done.stderr


def test_a_users_own_import_is_left_as_python_says_it():
    done = run_without("faiss", "import memvir\nimport faiss")
    assert done.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'faiss'"


def test_the_command_line_says_it_in_one_line(tmp_path):
    done = run_without("faiss", f"""
        import sys
        from memvir.__main__ import main
        sys.exit(main(["train", "--data_name", "glyphs", "--epochs", "1", "--num_classes", "8",
                       "--instances_per_class", "4", "--input_size", "16", "--batch_size", "8", "--dim", "8",
                       "--save_path", {str(tmp_path / 'run')!r}, "--no_progress"]))
        """)
    assert done.returncode != 0
    assert "pip install 'memvir[train]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
