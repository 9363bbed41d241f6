"""What the results chapters take from a report, and only that: its comparisons, one picked and said in words, a
table shown compactly. A chapter imports this and computes no statistic of its own (memvir/report/stats.py does).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

from .rows import memory_schedule  # noqa: F401  (a chapter's name for it, as before)
from .runs import selections
from .stats import describe
from .tables import formatted
from .verdicts import trusted_selection

__all__ = ["comparisons", "summary", "status", "table_means", "plateau_said", "official_schedule", "schedules",
           "study_regime", "pick", "said", "mechanism_sentences", "STYLES", "html_table", "download_link"]

# The chapters' table styles: right-aligned numbers; a study table's first column (its row labels) on the left.
STYLES = {"results": "<style>.results td, .results th {padding: 0.15em 0.6em; text-align: right}</style>",
          "study": "<style>.study td, .study th {padding: 0.15em 0.6em; text-align: right; white-space: nowrap}"
                   " .study td:first-child {text-align: left; white-space: normal}</style>"}


def comparisons(folder):
    """Every paired comparison of a report, its comparisons.csv (the report computed them; a chapter never does).

    A report written before the seeds ahead were stored as an integer (`ahead`) has them as text "k/n" in a column
    `positive`: read here, once, into `ahead`.
    """
    path = Path(folder) / "comparisons.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no comparisons in this report; a report of an older format is rebuilt "
                                f"from its own files by `python -m memvir report --profile P --rebuild {folder}`")
    c = pd.read_csv(path)
    if "ahead" not in c and "positive" in c:
        c["ahead"] = [int(str(k).split("/")[0]) for k in c.pop("positive")]
    return c


def summary(folder):
    """A report's report.json, with what a report of an older format lacks derived as the report derives it: its
    selections (from runs.csv's columns) and the selection its verdicts trust (verdicts.trusted_selection)."""
    folder = Path(folder)
    s = json.loads((folder / "report.json").read_text())
    if "selections" not in s:
        s["selections"] = selections(pd.read_csv(folder / "runs.csv"))
    s.setdefault("trusted_selection", trusted_selection(s["selections"]))
    return s


def pick(table, row, metric, selection, group=None):
    """The comparison of `row` with its baseline for one metric and selection (and group), as a dict."""
    c = table[(table["row"] == row) & (table["metric"] == metric) & (table["selection"] == selection)]
    if group is not None:
        c = c[c["group"] == group]
    if c.empty:
        raise ValueError(f"no comparison of {row!r} for {metric} at {selection}"
                         + (f" in group {group!r}" if group else ""))
    return c.iloc[0].to_dict()


def said(table, row, metric, selection, group=None):
    """That comparison in words (stats.describe): difference, interval, seeds ahead, Holm p, verdict."""
    return describe(pick(table, row, metric, selection, group))


def mechanism_sentences(mech):
    """The mechanism's paired diagnostics (mechanism.csv's lines) in words, one sentence a row: how the seen-minus-
    unseen MAP@R gap, the unseen classes' MAP@R and their uniformity move against the row's baseline."""
    lines = []
    for row in dict.fromkeys(mech["row"]):
        m = mech[mech["row"] == row].set_index("quantity")
        gap, test = m.loc["gap_map_at_r"], m.loc["test_map_at_r"]
        lines.append(f"{row}: the seen-minus-unseen MAP@R gap moves by {100 * gap['diff_mean']:+.2f} points "
                     f"[{100 * gap['ci_low']:+.2f}, {100 * gap['ci_high']:+.2f}], unseen MAP@R by "
                     f"{100 * test['diff_mean']:+.2f} points, the unseen classes' uniformity by "
                     f"{m.loc['test_uniformity', 'diff_mean']:+.2f} (lower: more spread)")
    return lines


def html_table(table, kind="results", style=True):
    """A table in the README's number format as compact HTML, after its style (STYLES[kind]) unless style=False
    (several tables under one style)."""
    return (STYLES[kind] if style else "") + formatted(table).to_html(index=False, classes=kind, border=0)


def download_link(path, text=None):
    """An HTML link that downloads a report file (a CSV) from the page itself: the file travels inside the page as a
    data: URL, so the link works in the built book, offline, with no copy of the report beside it."""
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<a download="{path.name}" href="data:text/csv;base64,{data}">{text or "Download " + path.name}'
            f"</a> ({path.stat().st_size / 1024:.0f} KB)")


def status(folder, name):
    """One line on a profile's report: how many runs it holds (partial or not) and what its runs cost in hours of
    one core (machine.csv), or how to make it when there is none."""
    folder = Path(folder)
    if not (folder / "report.json").is_file():
        return f"*Not run yet: `make -j2 reproduce PROFILE={name}` (the plan and the rule are in `configs/{name}.yml`).*"
    s = json.loads((folder / "report.json").read_text())
    partial = " (**partial**: the numbers will change as the rest finish)" if s["partial"] else ""
    hours = pd.read_csv(folder / "machine.csv")["wall_time"].sum() / 3600
    return (f"`PROFILE={name}`: {s['runs']} runs of {s['expected_runs']}{partial}; its runs took {hours:.1f} hours "
            f"of one core in all, so `make -j2 reproduce PROFILE={name}` about half that on two.")


def table_means(folder, selection, metric="map_at_r", column="Mean"):
    """{row: mean over its seeds} of a report's table at one selection (its table_<metric>[_selection].csv's Mean
    column, percent; or another of its columns, "Std."): the report's own numbers, not computed again."""
    folder = Path(folder)
    value = json.loads((folder / "report.json").read_text())["table_value"]
    stem = f"table_{metric.replace('@', '_at_')}" + ("" if selection == value else f"_{selection}")
    t = pd.read_csv(folder / f"{stem}.csv")
    return dict(zip(t["Loss"], t[column]))


def plateau_said(folder):
    """The converged budget of each row of a plateau report in words: B, its validation MAP@R, and how much the test
    classes' MAP@R (mean over seeds) still moves from B to the last epoch."""
    folder = Path(folder)
    budget = pd.read_csv(folder / "plateau.csv")
    ev = pd.read_csv(folder / "evaluations.csv")
    test = ev.groupby(["row", "epoch"])["map_at_r"].mean().mul(100)  # (rows x epochs,) mean over seeds
    said = []
    for _, r in budget[budget["budget"].notna()].iterrows():
        rise = test[r["row"]].iloc[-1] - test[(r["row"], r["budget"])]
        said.append(f"{r['row']}: B = {r['budget']:g} epochs (validation MAP@R {r['val_map_at_r']:.1f}, never "
                    f"beaten by 0.5 points later); the test classes' MAP@R still moves {rise:+.1f} points from B to "
                    f"epoch {r['last_epoch']}")
    return said


CARS196_TRAIN_IMAGES = 8054  # CARS196 classes 1-98 (the paper's Sec. 4.1)
OFFICIAL_MEMVIR = {  # configs/official_cars196.txt's MemVir lines: batch, epochs, N, M, U
    "MemVir + Norm-SoftMax (CARS196)": (128, 2000, 45, 10, 40),
    "MemVir + Proxy-NCA (CARS196)": (128, 2000, 20, 25, 40)}


def official_schedule():
    """The paper's CARS196 MemVir runs as memory_schedule counts them: steps per epoch, epochs, U, the span
    N(M+1), full-memory steps and spans (the official README's command lines)."""
    records = []
    for row, (batch, epochs, N, M, U) in OFFICIAL_MEMVIR.items():
        steps = -(-CARS196_TRAIN_IMAGES // batch)
        full = (epochs - U) * steps - N * (M + 1)
        records.append({"Row": row, "steps/epoch": steps, "epochs": epochs, "U": U, "N(M+1)": N * (M + 1),
                        "full-memory steps": full, "spans": round(full / (N * (M + 1)), 1)})
    return pd.DataFrame(records)


def schedules(summary, rows=None):
    """The MemVir rows of a report (report.json's row_facts) with their memory schedule: epochs, U, the span,
    full-memory steps, spans; `rows` (labels) to keep some only."""
    records = []
    for label, f in summary["row_facts"].items():
        if f.get("schedule") and (rows is None or label in rows):
            s = f["schedule"]
            records.append({"Row": label, "steps/epoch": s["steps_per_epoch"], "epochs": f["epochs"], "U": f["U"],
                            "N(M+1)": s["span"], "full-memory steps": s["full_memory_steps"],
                            "spans": round(s["spans"], 1)})
    return pd.DataFrame(records)


def study_regime(folder, selection):
    """Where a study's runs stood: their budgets, the full-memory spans of its MemVir rows, and in how many runs the
    best test epoch and the `selection`'s epoch were the last evaluation (runs still improving)."""
    folder = Path(folder)
    s = json.loads((folder / "report.json").read_text())
    runs = pd.read_csv(folder / "runs.csv")
    last = pd.read_csv(folder / "evaluations.csv").groupby("name")["epoch"].max()
    at_end = {sel: int((runs[f"{sel}_map_at_r_epoch"] == runs["name"].map(last)).sum()) for sel in ("best", selection)}
    memvir = [f for f in s["row_facts"].values() if f.get("schedule") and f["memory"] == "MemVir"]
    spans = [f["schedule"]["spans"] for f in memvir]
    epochs = sorted({f["epochs"] for f in memvir})
    return {"epochs": (epochs[0], epochs[-1]), "spans": (min(spans), max(spans)), "at_end": at_end, "runs": len(runs)}
