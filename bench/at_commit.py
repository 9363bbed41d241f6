"""memvir's losses.py and memory.py as they were at a git commit, imported beside today's (for before/after runs).

    losses, memory = modules_at("eaace4d")   # memory.MemVir, losses.NormSoftmax of then

The two files (and checks.py, declare.py where the commit has them) are read with `git show`, written to a temporary
folder and imported under other names (memvir_losses_<tag>, memvir_memory_<tag>, ...); the rest of the package (pml, config) is today's. Raises OSError or
subprocess.CalledProcessError without git history (a copy of the working tree, as on a GPU machine).
"""
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def modules_at(commit, tag="then"):
    """Return (losses, memory): the modules of memvir/losses.py and memvir/memory.py at `commit`."""
    folder = Path(tempfile.mkdtemp(prefix="memvir_at_commit_"))
    try:
        _import_both(commit, tag, folder)
    finally:
        shutil.rmtree(folder)  # the modules are loaded; their files are no longer read
    return sys.modules[f"memvir_losses_{tag}"], sys.modules[f"memvir_memory_{tag}"]


def _import_both(commit, tag, folder):
    # checks.py and declare.py (split out of losses.py by issue 33) come from the commit too, where it has them:
    # today's DECLARED would refuse a second class under a taken name.
    loaded = []
    for name in ("checks", "declare", "losses", "memory"):
        shown = subprocess.run(["git", "show", f"{commit}:memvir/{name}.py"], capture_output=True, text=True,
                               check=name in ("losses", "memory"))
        if shown.returncode:
            continue
        source = shown.stdout
        for earlier in loaded:
            source = source.replace(f"from .{earlier} import", f"from memvir_{earlier}_{tag} import")
        loaded.append(name)
        # The memory's option names lived in config.py before they moved into memory.py (today's are the same).
        source = source.replace("from .config import MEM_FILLS, MEM_VIRTUALS", "from memvir.memory import MEM_FILLS, "
                                "MEM_VIRTUALS")
        for rel in (".pml", ".config"):  # the rest of the package as it is now
            source = source.replace(f"from {rel} import", f"from memvir{rel} import")
        path = folder / f"memvir_{name}_{tag}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"memvir_{name}_{tag}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # memory's import of the losses finds this one
        spec.loader.exec_module(module)
