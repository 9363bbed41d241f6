"""The results chapters only tell: they read report files and call report functions, and compute no statistic,
parse no report value out of text and decide nothing themselves (memvir/report/verdicts.py does). An AST check over
notebooks/06_*.py, and a check that no code cell is longer than a page (about 40 lines)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("06_*.py"))

STATISTICS = {"mean", "std", "var", "sem", "median", "quantile", "agg", "aggregate", "groupby", "sum", "cumsum",
              "ppf", "sf", "cdf", "isf", "ttest_rel", "ttest_1samp", "corr", "rank"}
PARSING = {"split", "rsplit", "removeprefix", "removesuffix", "startswith", "endswith", "partition", "rpartition",
           "str"}  # .str: pandas' string accessor
MODULES = {"scipy", "numpy", "statistics", "math", "memvir.profile"}  # numbers and profiles come from the report
DECISION_FIELDS = {"diff_mean", "ci_low", "ci_high", "p", "p_holm", "significant", "ahead", "positive", "pairs",
                   "diff_sd"}  # a report's statistics: a chapter shows them, the report decides on them
MAX_CELL_LINES, MAX_HELPER_LINES = 40, 12


def _field(node):
    """The report field a node reads (x["p_holm"], x.p_holm), or None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in DECISION_FIELDS:
        return node.slice.value
    if isinstance(node, ast.Attribute) and node.attr in DECISION_FIELDS:
        return node.attr
    return None


def _reads_field(node):
    return any(_field(n) for n in ast.walk(node))


def problems(source):
    """What a chapter's code does that only the report may: a list of "line N: what" strings."""
    out = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if any(name == m or name.startswith(m + ".") for m in MODULES):
                    out.append(f"line {line}: imports {name} (statistics and profiles are the report's)")
        elif isinstance(node, ast.Attribute) and node.attr in STATISTICS | PARSING:
            kind = "a statistic" if node.attr in STATISTICS else "string parsing"
            out.append(f"line {line}: .{node.attr} ({kind}: a report function's job)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_profile":
            out.append(f"line {line}: load_profile (the profile is read from the report)")
        elif isinstance(node, ast.Compare) and _reads_field(node):
            out.append(f"line {line}: compares a report statistic (a decision rule: the report's)")
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)) and _reads_field(node.test):
            out.append(f"line {line}: branches on a report statistic (a decision rule: the report's)")
        elif isinstance(node, ast.BoolOp) and _reads_field(node):
            out.append(f"line {line}: combines report statistics (a decision rule: the report's)")
        elif isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno > MAX_HELPER_LINES:
            out.append(f"line {line}: helper {node.name} of {node.end_lineno - node.lineno + 1} lines (a missing "
                       "report function)")
    return out


def cells(source):
    """The code cells of a py:percent chapter: (first line, lines)."""
    out, start, current, code = [], 1, [], False
    for i, text in enumerate(source.splitlines(), 1):
        if text.startswith("# %%"):
            if code:
                out.append((start, current))
            start, current, code = i, [], "[markdown]" not in text
        elif code:
            current.append(text)
    if code:
        out.append((start, current))
    return out


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_a_results_chapter_only_tells(chapter):
    found = problems(chapter.read_text())
    assert not found, f"{chapter.name}:\n" + "\n".join(found)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_code_cell_is_longer_than_a_page(chapter):
    for start, lines in cells(chapter.read_text()):
        body = [t for t in lines if t.strip()]
        assert len(body) <= MAX_CELL_LINES, f"{chapter.name}: the cell at line {start} has {len(body)} lines"


BAD = '''
from scipy.stats import t as student_t
import numpy as np
from memvir.profile import load_profile
k = c["positive"].str.split("/", expand=True)
loss = row.removeprefix("MemVir + ")
mean = runs.groupby("row")["val_map_at_r"].mean()
if d["significant"] and d["diff_mean"] > 0:
    passed.append(base)
ok = [x for x in gate if x["p_holm"] < 0.05]
def long_helper():
''' + "    x = 1\n" * 14


def test_the_check_finds_what_a_chapter_must_not_do():
    found = "\n".join(problems(BAD))
    for what in ("imports scipy.stats", "imports numpy", "imports memvir.profile", ".str (string parsing",
                 ".split (string parsing", ".removeprefix", ".groupby (a statistic", ".mean (a statistic",
                 "line 8: branches on a report statistic", "line 10: compares a report statistic",
                 "helper long_helper"):
        assert what in found, what
    assert problems("display(Markdown(report.said_pairs(c, pairs)))\nshow(table)\n") == []


def test_the_cell_check_counts_code_cells_only():
    text = "# %% [markdown]\n" + "# prose\n" * 60 + "# %% tags=['hide-input']\n" + "x = 1\n" * 41
    (start, lines), = cells(text)
    assert start == 62 and len(lines) == 41 and re.match(r"x = 1", lines[0])
