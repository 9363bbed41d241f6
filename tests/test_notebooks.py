"""The notebooks: py:percent sources paired with executed .ipynb files, one parameters cell of flat scalars,
the library imported and never redefined. (nbval re-executes the .ipynb files in `make test`.)"""
import ast
import importlib
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
IDS = [p.stem for p in SOURCES]


def cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def code(nb):
    """The notebook's code as one module (magics and shell escapes would not parse; the notebooks have none)."""
    return ast.parse("\n\n".join(c.source for c in nb.cells if c.cell_type == "code"))


@pytest.fixture(scope="module", params=SOURCES, ids=IDS)
def pair(request):
    py = request.param
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make sync`"
    return jupytext.read(py), jupytext.read(ipynb)


def test_there_are_chapters():
    # Reading order is sorted order; a number may be shared (04_evaluation before 04_memvir), none skipped.
    numbers = sorted({int(p.stem[:2]) for p in SOURCES})
    assert numbers == list(range(1, len(numbers) + 1)), "NN_ numbers 01, 02, ... without a gap"
    assert not sorted(set((ROOT / "notebooks").glob("*.ipynb")) - {p.with_suffix(".ipynb") for p in SOURCES})


LINE_LIMIT = 90  # characters of code that fit the book's page column without a sideways scroll bar


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_code_lines_fit_the_page_column(py):
    long = [f"{py.name}, cell {i}: {len(line)} characters: {line[:50]}..."
            for i, c in enumerate(jupytext.read(py).cells) if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > LINE_LIMIT]
    assert not long, "\n".join(long)


def test_line_limit_catches_a_long_line(tmp_path):
    # The check above reads cells through jupytext: a long line in a code cell is seen, one in Markdown is not.
    py = tmp_path / "99_x.py"
    py.write_text("# %% [markdown]\n# " + "m" * 120 + "\n\n# %%\nx = 1  # " + "c" * 100 + "\n")
    cells = jupytext.read(py).cells
    assert [c.cell_type for c in cells] == ["markdown", "code"]
    assert [len(line) > LINE_LIMIT for line in cells[1].source.splitlines()] == [True]


def test_pair_in_sync(pair):
    py, ipynb = pair
    assert cells(py) == cells(ipynb), "the .py and the .ipynb differ: run `make sync`"
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert ipynb.metadata["kernelspec"]["name"] == "memvir"


def test_executed_with_default_parameters(pair):
    _, ipynb = pair
    tags = [t for c in ipynb.cells for t in c.metadata.get("tags", ())]
    assert "injected-parameters" not in tags, "executed with papermill parameters, not the defaults"
    for c in ipynb.cells:
        if c.cell_type == "code" and c.source.strip():
            assert c.execution_count is not None, f"not executed: {c.source[:60]!r} (run `make sync`)"
            assert not [o for o in c.outputs if o.output_type == "error"], c.source[:60]


def test_one_parameters_cell_of_flat_scalars(pair):
    py, _ = pair
    params = [c for c in py.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    assert params[0].cell_type == "code"
    body = ast.parse(params[0].source).body
    assert body, "an empty parameters cell"
    for node in body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            ast.unparse(node)
        value = node.value
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):  # -1
            value = value.operand
        assert isinstance(value, ast.Constant) and type(value.value) in (str, int, float, bool), ast.unparse(node)


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_papermill_reads_the_parameters(py):
    # papermill parses the parameters cell line by line and gives up on some comments (quotes, "="): it must see
    # every name the cell assigns, or `make reproduce` cannot pass that parameter.
    import papermill

    (cell,) = [c for c in jupytext.read(py).cells if "parameters" in c.metadata.get("tags", ())]
    names = [n.targets[0].id for n in ast.parse(cell.source).body]
    assert list(papermill.inspect_notebook(str(py.with_suffix(".ipynb")))) == names


def public_names():
    names = set()
    for module in ("memvir", "memvir.losses", "memvir.memory", "memvir.metrics", "memvir.report", "memvir.train",
                   "memvir.models", "memvir.data", "memvir.data.glyphs"):
        names |= set(getattr(importlib.import_module(module), "__all__", ()))
    return names


def test_imports_memvir_and_redefines_nothing(pair):
    py, _ = pair
    tree = code(py)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "memvir" in imported
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & public_names(), f"redefines the library's {sorted(defined & public_names())}"


def test_chapter_has_a_title(pair):
    py, _ = pair
    first = py.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the book takes the title from here"
