"""Tables and figures from run folders (`python -m memvir report`), and the driver of `make reproduce`.

Results flow one way:

    configs/<profile>.yml             the runs of a profile: rows (a loss, with or without MemVir) x seeds
    results/runs/<profile>/<run>/     one folder per run, written by memvir.train through notebooks/05_training.ipynb:
                                      05_training.ipynb (executed), config.json, metrics.json, steps.csv, events
    results/report/<profile>/         runs.csv, evaluations.csv, tables (CSV and Markdown), figures (PNG and SVG)
    book/_build/src/chapters/         the chapters, executed with papermill on those files; then `make book`

Everything here reads only the files of that contract (memvir/train.py writes them); nothing scrapes notebooks.
The tables have the layout of the official README (Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.), values in
percent: `Mean` over the runs, `Std.` the sample standard deviation (ddof=1), `Diff.` a MemVir row's mean minus
its baseline row's mean. The paper's code keeps the best value over training's evaluations on the test set;
a profile says which value its tables use (`table_value`), and the report always gives both.

Chapter: notebooks/06_results.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["METRICS", "ROOT", "Profile", "Row", "Run", "load_profile", "run_name", "run_state", "read_run",
           "collect", "runs_table", "paired_differences", "table_from_runs", "paired_from_runs", "paper_table",
           "paper_results", "formatted", "markdown_table", "load_trained", "save_figure", "bar_figure",
           "learning_curves_figure", "curriculum_figure", "build_report", "execute_run", "execute_chapters",
           "chapters", "chapter_parameters", "notebook_parameters", "warm_data", "execute_defaults", "main"]

ROOT = Path(__file__).resolve().parents[1]  # the repository memvir was installed from (editable install)
METRICS = {"recall@1": "Recall@1", "r_precision": "RP", "map_at_r": "MAP@R"}  # key in metrics.json -> column name
VALUES = ("best", "last")  # best over training's evaluations (as the official code records it) or the last one
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ----------------------------------------------------------------------------------------------------------------
# Profiles: which runs make up a table
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One row of the result tables: a loss with or without MemVir, run once per seed."""
    label: str  # e.g. "MemVir + Norm-SoftMax", as the official README names its rows
    params: dict  # parameters of notebooks/05_training.py (the train flags), common ones included
    baseline: str = ""  # the row this one is compared with ("" for a baseline)
    tag: str = ""  # appended to the run names when two rows would otherwise share them


@dataclass
class Run:
    """One run: a row at one seed, in its own folder named after its parameters."""
    name: str
    row: str
    seed: int
    params: dict  # the parameters cell of the training notebook, save_path included


@dataclass
class Profile:
    """A list of runs (configs/<name>.yml) and what the book shows of them."""
    name: str
    path: Path
    description: str
    notebook: Path  # executed once per run with papermill
    root: Path  # the repository the profile belongs to (configs/..): notebooks/ and results/ are there
    seeds: list
    rows: list  # [Row]
    table_value: str = "best"  # which value the three main tables use: "best" or "last"
    book: dict = field(default_factory=dict)  # {"curriculum": row, "training": row, "tsne": row}
    runs_dir: Path = None
    report_dir: Path = None

    @property
    def runs(self):
        """Every run, row by row, seed by seed."""
        out = []
        for row in self.rows:
            for seed in self.seeds:
                params = dict(row.params, seed=int(seed))
                name = run_name(params, row.tag)
                params["save_path"] = str(self.runs_dir / name)
                out.append(Run(name, row.label, int(seed), params))
        return out

    def run(self, row, seed=None):
        """Return the run of `row` at `seed` (default: the first seed)."""
        seed = self.seeds[0] if seed is None else seed
        for r in self.runs:
            if r.row == row and r.seed == seed:
                return r
        raise ValueError(f"{self.path}: no run for row {row!r} and seed {seed}; rows: {[r.label for r in self.rows]}")

    @property
    def baselines(self):
        """{MemVir row: its baseline row}."""
        return {r.label: r.baseline for r in self.rows if r.baseline}


def _expand(value, where):
    """Replace ${NAME} in a string with the environment variable NAME; a missing one is an error."""
    if not isinstance(value, str):
        return value

    def sub(m):
        if not os.environ.get(m.group(1)):
            raise ValueError(f"{where}: needs the variable {m.group(1)} (e.g. `make reproduce PROFILE=... "
                             f"{m.group(1)}=/path/...`), which is not set")
        return os.environ[m.group(1)]

    return _VAR.sub(sub, value)


def _check_scalar(key, value, where):
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise ValueError(f"{where}: parameter {key!r} must be a flat scalar (str, int, float, bool), got {value!r}")


def load_profile(profile, runs_root=None, report_root=None):
    """Read a profile: a name in configs/ (cpu, paper, ...) or a path to a YAML file.

    Args:
        profile: "cpu" reads configs/cpu.yml (of the current folder, else of ROOT); a path ending in .yml/.yaml
            is read as it is. The repository of a profile is the folder above its configs/.
        runs_root: folder of run folders (default <repository>/results/runs); runs go to runs_root/<profile>/.
        report_root: folder of reports (default <repository>/results/report); the report: report_root/<profile>/.
    """
    import yaml

    path = Path(profile)
    if path.suffix not in (".yml", ".yaml"):
        # A name: configs/<name>.yml of the repository we are in (the Makefile runs from its root), else of the
        # repository memvir was installed from.
        here = Path.cwd() / "configs" / f"{profile}.yml"
        path = here if here.is_file() else ROOT / "configs" / f"{profile}.yml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yml"))
        raise FileNotFoundError(f"profile {profile!r}: no file {path}; known profiles: {', '.join(known)}")
    path = path.resolve()
    root = path.parent.parent  # configs/<name>.yml -> the repository
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with keys description, notebook, seeds, common, rows")
    unknown = set(spec) - {"description", "notebook", "seeds", "common", "rows", "table_value", "book"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected description, notebook, seeds, common, "
                         f"rows, table_value, book")
    for key in ("notebook", "seeds", "rows"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}")
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds must be distinct, got {seeds}")
    if not isinstance(spec["rows"], list) or not spec["rows"]:
        raise ValueError(f"{path}: rows must be a non-empty list of {{label, params, baseline}}")
    common = spec.get("common") or {}
    if not isinstance(common, dict):
        raise ValueError(f"{path}: common must be a mapping of parameters")
    for k, v in common.items():
        _check_scalar(k, v, f"{path} common")
    rows, labels = [], set()
    for i, r in enumerate(spec["rows"]):
        if not isinstance(r, dict) or "label" not in r:
            raise ValueError(f"{path}: rows[{i}] must be a mapping with a label and params")
        extra = set(r) - {"label", "params", "baseline", "tag"}
        if extra:
            raise ValueError(f"{path}: rows[{i}] has unknown keys {sorted(extra)}; expected label, params, "
                             f"baseline, tag")
        if r["label"] in labels:
            raise ValueError(f"{path}: two rows are labelled {r['label']!r}")
        labels.add(r["label"])
        params = dict(common, **(r.get("params") or {}))
        for k, v in params.items():
            _check_scalar(k, v, f"{path} rows[{i}]")
        params = {k: _expand(v, f"{path} rows[{i}] {k}") for k, v in params.items()}
        for k in ("seed", "save_path"):
            if k in params:
                raise ValueError(f"{path}: rows[{i}] sets {k!r}; the pipeline sets it per run")
        rows.append(Row(r["label"], params, r.get("baseline") or "", str(r.get("tag") or "")))
    for r in rows:
        if r.baseline and r.baseline not in labels:
            raise ValueError(f"{path}: row {r.label!r} has baseline {r.baseline!r}, which is not a row label")
    table_value = spec.get("table_value", "best")
    if table_value not in VALUES:
        raise ValueError(f"{path}: table_value must be one of {VALUES}, got {table_value!r}")
    book = spec.get("book") or {}
    for k, v in book.items():
        if k not in ("curriculum", "training", "tsne") or v not in labels:
            raise ValueError(f"{path}: book.{k} must name a row (keys curriculum, training, tsne), got {v!r}")
    notebook = root / spec["notebook"]
    if not notebook.is_file():
        raise FileNotFoundError(f"{path}: notebook {notebook} does not exist")
    runs_root = Path(runs_root).resolve() if runs_root else root / "results" / "runs"
    report_root = Path(report_root).resolve() if report_root else root / "results" / "report"
    prof = Profile(path.stem, path, str(spec.get("description", "")).strip(), notebook, root, list(seeds), rows,
                   table_value, book, runs_root / path.stem, report_root / path.stem)
    names = [r.name for r in prof.runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: rows give the same run name {dup[0]!r}; give one of them a `tag`")
    return prof


def run_name(params, tag=""):
    """Name a run folder after its parameters, e.g. glyphs_normsoftmax_memvir1_N5_M20_U24_e36_seed0.

    Args:
        params: the run's parameters; uses data_name, loss, memvir, mem_num_step, mem_step_gap, warm_epoch, epochs,
            seed.
        tag: optional suffix (before the seed) for rows that differ in anything else.
    """
    for key in ("data_name", "loss", "epochs", "seed"):
        if key not in params:
            raise ValueError(f"run parameters: missing {key!r} (needed to name the run folder)")
    loss = str(params["loss"]).lower().replace("_", "").replace("-", "")
    parts = [str(params["data_name"]).lower(), loss]
    if _truthy(params.get("memvir", 0)):
        parts.append(f"memvir1_N{params['mem_num_step']}_M{params['mem_step_gap']}_U{params.get('warm_epoch', 0)}")
    else:
        parts.append("memvir0")
    parts.append(f"e{params['epochs']}")
    if tag:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", tag):
            raise ValueError(f"run tag must be letters, digits, '.' or '-', got {tag!r}")
        parts.append(tag)
    parts.append(f"seed{params['seed']}")
    return "_".join(parts)


def _truthy(v):
    return str(v).lower() in ("1", "true", "t", "yes")


# ----------------------------------------------------------------------------------------------------------------
# Reading run folders
# ----------------------------------------------------------------------------------------------------------------


def run_state(folder):
    """Return "finished", "partial" (metrics.json says finished: false) or "missing" (no metrics.json)."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        return "missing"
    try:
        done = json.loads(path.read_text()).get("finished") is True
    except (json.JSONDecodeError, AttributeError):
        return "partial"  # being written, or damaged: the run has to go on
    return "finished" if done else "partial"


def read_run(folder):
    """Read a run folder: (config dict, metrics dict, steps DataFrame or None).

    Args:
        folder: a run folder written by memvir.train (config.json, metrics.json, steps.csv).
    """
    folder = Path(folder)
    out = []
    for name in ("config.json", "metrics.json"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run {folder.name} has not been trained "
                                    f"(make runs, or python -m memvir report --run {folder.name})")
        try:
            out.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    metrics = out[1]
    for key in ("evaluations", "best", "last", "finished"):
        if key not in metrics:
            raise ValueError(f"{folder / 'metrics.json'}: missing key {key!r}; expected evaluations, best, last, "
                             f"finished (see memvir/train.py)")
    steps_path = folder / "steps.csv"
    steps = pd.read_csv(steps_path) if steps_path.is_file() else None
    return out[0], metrics, steps


def collect(profile, partial=False):
    """Read every run of a profile into one table: a row per run, best and last value of each metric.

    Args:
        profile: a Profile (or a name for load_profile).
        partial: False: every run must be finished (else ValueError naming the first one that is not);
            True: leave out runs that are not finished.
    Returns:
        (runs, evaluations): runs has columns row, baseline, seed, name, epochs_evaluated, wall_time and
        best_<metric>, best_<metric>_epoch, last_<metric> for every metric of METRICS (fractions);
        evaluations has row, seed, name, epoch, step, wall_time and the metrics, one line per evaluation.
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    baselines = profile.baselines
    rows, evals = [], []
    for run in profile.runs:
        folder = profile.runs_dir / run.name
        state = run_state(folder)
        if state != "finished":
            if partial:
                continue
            raise ValueError(f"run {folder} is {state} (metrics.json 'finished' is not true): run `make runs "
                             f"PROFILE={profile.name}` first, or pass --partial to report the finished ones")
        config, metrics, _ = read_run(folder)
        if int(config.get("seed", run.seed)) != run.seed:
            raise ValueError(f"{folder / 'config.json'}: seed {config.get('seed')} but the folder is for seed "
                             f"{run.seed}")
        line = {"row": run.row, "baseline": baselines.get(run.row, ""), "seed": run.seed, "name": run.name,
                "epochs_evaluated": metrics["last"].get("epoch"), "wall_time": metrics["last"].get("wall_time")}
        for key in METRICS:
            best = metrics["best"].get(key)
            if best is None or key not in metrics["last"]:
                raise ValueError(f"{folder / 'metrics.json'}: no {key!r} in 'best' and 'last'")
            line[f"best_{key}"] = float(best["value"])
            line[f"best_{key}_epoch"] = int(best["epoch"])
            line[f"last_{key}"] = float(metrics["last"][key])
        rows.append(line)
        for e in metrics["evaluations"]:
            evals.append({"row": run.row, "seed": run.seed, "name": run.name, "epoch": e["epoch"],
                          "step": e.get("step"), "wall_time": e.get("wall_time"),
                          **{k: e[k] for k in e if k.startswith("recall@") or k in METRICS}})
    columns = ["row", "baseline", "seed", "name", "epochs_evaluated", "wall_time"]
    for key in METRICS:
        columns += [f"best_{key}", f"best_{key}_epoch", f"last_{key}"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(evals)


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def _values(label, values):
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"runs[{label!r}]: expected a non-empty list of finite numbers, got {values!r}")
    return v


def runs_table(runs, baselines=None):
    """Lay out per-run results as the official README does: Loss | 1 | ... | n | Mean | Diff. | Std.

    Means and differences are computed from the unrounded values, then everything is rounded to 2 decimals.

    Args:
        runs: {row label: [value of run 1, run 2, ...]}, in the units to show (percent); rows keep this order.
        baselines: {MemVir row label: baseline row label}; `Diff.` = row mean - baseline mean, "-" for the others.
    Returns:
        DataFrame with columns Loss, "1".."n" (n = the most runs of any row; NaN where a row has fewer),
        Mean, Diff. (float or "-"), Std. (sample standard deviation, ddof=1; NaN for a single run).
    """
    baselines = dict(baselines or {})
    if not runs:
        raise ValueError("runs: expected at least one row")
    values = {label: _values(label, v) for label, v in runs.items()}
    for row, base in baselines.items():
        if row not in values or base not in values:
            missing = row if row not in values else base
            raise ValueError(f"baselines: {missing!r} is not a row of runs (rows: {list(values)})")
        if row == base:
            raise ValueError(f"baselines: row {row!r} is its own baseline")
    n = max(v.size for v in values.values())
    means = {label: float(v.mean()) for label, v in values.items()}
    records = []
    for label, v in values.items():
        rec = {"Loss": label}
        for i in range(n):
            rec[str(i + 1)] = round(float(v[i]), 2) if i < v.size else np.nan
        rec["Mean"] = round(means[label], 2)
        rec["Diff."] = round(means[label] - means[baselines[label]], 2) if label in baselines else "-"
        rec["Std."] = round(float(v.std(ddof=1)), 2) if v.size > 1 else np.nan
        records.append(rec)
    return pd.DataFrame(records, columns=["Loss", *[str(i + 1) for i in range(n)], "Mean", "Diff.", "Std."])


def paired_differences(runs, baselines):
    """Compare each MemVir row with its baseline seed by seed.

    Args:
        runs: {row label: {seed: value}} (percent).
        baselines: {MemVir row label: baseline row label}.
    Returns:
        DataFrame with columns Loss, Baseline, Pairs (seeds both rows have), Mean (mean of row - baseline over
        those seeds), Std. (ddof=1), Positive ("k/n": seeds where the row is better), all rounded to 2 decimals,
        and p: the two-sided p-value of a paired t-test (mean difference 0), rounded to 3 decimals.
    """
    from scipy import stats

    records = []
    for row, base in baselines.items():
        if row not in runs or base not in runs:
            raise ValueError(f"baselines: {row if row not in runs else base!r} is not a row of runs")
        seeds = sorted(set(runs[row]) & set(runs[base]))
        d = np.array([runs[row][s] - runs[base][s] for s in seeds], dtype=float)
        sd = float(d.std(ddof=1)) if d.size > 1 else np.nan
        p = float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1)) if sd > 0 else np.nan
        records.append({"Loss": row, "Baseline": base, "Pairs": len(seeds),
                        "Mean": round(float(d.mean()), 2) if d.size else np.nan,
                        "Std.": round(sd, 2), "Positive": f"{int((d > 0).sum())}/{d.size}", "p": round(p, 3)})
    return pd.DataFrame(records, columns=["Loss", "Baseline", "Pairs", "Mean", "Std.", "Positive", "p"])


def _per_row(runs, metric, value):
    if metric not in METRICS or value not in VALUES:
        raise ValueError(f"metric must be one of {list(METRICS)} and value one of {VALUES}, got {metric!r}, "
                         f"{value!r}")
    col = f"{value}_{metric}"
    out = {}
    for row, group in runs.groupby("row", sort=False):
        out[row] = dict(zip(group["seed"].astype(int), 100.0 * group[col].astype(float)))
    return out


def _baselines(runs):
    pairs = runs[["row", "baseline"]].drop_duplicates()
    return {r: b for r, b in zip(pairs["row"], pairs["baseline"]) if isinstance(b, str) and b}


def table_from_runs(runs, metric, value="best"):
    """Build one result table (percent) from `collect`'s runs (or runs.csv): runs_table per row, seeds in order."""
    per_row = _per_row(runs, metric, value)
    base = {r: b for r, b in _baselines(runs).items() if r in per_row and b in per_row}
    return runs_table({r: [v[s] for s in sorted(v)] for r, v in per_row.items()}, base)


def paired_from_runs(runs, metric, value="best"):
    """Paired-by-seed differences (percent) of every MemVir row against its baseline, from runs.csv."""
    per_row = _per_row(runs, metric, value)
    base = {r: b for r, b in _baselines(runs).items() if r in per_row and b in per_row}
    return paired_differences(per_row, base)


def paper_results(name="cars196_5runs"):
    """Read a table of numbers the paper reports (memvir/paper_results/<name>.csv; '#' lines are comments)."""
    path = Path(__file__).resolve().parent / "paper_results" / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise FileNotFoundError(f"{path} does not exist; known: {known}")
    return pd.read_csv(path, comment="#")


def _paper_label(loss, memvir):
    return f"MemVir + {loss}" if int(memvir) else loss


def paper_table(metric):
    """The official README's CARS196 table of `metric` (five runs per row), rebuilt with runs_table."""
    df = paper_results("cars196_5runs")
    df = df[df["metric"] == metric]
    if df.empty:
        raise ValueError(f"metric must be one of {sorted(set(paper_results('cars196_5runs')['metric']))}, "
                         f"got {metric!r}")
    runs = {_paper_label(r.loss, r.memvir): [getattr(r, f"run{i}") for i in range(1, 6)] for r in df.itertuples()}
    baselines = {_paper_label(r.loss, 1): r.loss for r in df.itertuples() if int(r.memvir)}
    return runs_table(runs, baselines)


def formatted(df):
    """Return a table as strings in the README's style: 2 decimals, signed differences, '-' where empty."""
    signed = {"Diff."} | ({"Mean"} if "Pairs" in df.columns else set())  # paired tables: Mean is a difference

    def cell(col, v):
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, (float, np.floating)):
            return f"{v:+.2f}" if col in signed else f"{v:.3f}" if col == "p" else f"{v:.2f}"
        return str(v)

    return pd.DataFrame([[cell(c, v) for c, v in zip(df.columns, rec)] for rec in df.itertuples(index=False)],
                        columns=df.columns)


def markdown_table(df):
    """Render a table as Markdown in the README's style (signed Diff., '-' for missing)."""
    f = formatted(df)
    lines = [" | ".join(f.columns), " | ".join("--" for _ in f.columns)]
    lines += [" | ".join(rec) for rec in f.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def _groups(runs):
    """Group rows by baseline: [(baseline row, [its rows: the baseline first, then its MemVir rows])]."""
    order = list(dict.fromkeys(runs["row"]))
    base = _baselines(runs)
    groups = {}
    for row in order:
        root = base.get(row, row)
        groups.setdefault(root, [root] if root in order else [])
        if row != root:
            groups[root].append(row)
    return list(groups.items())


def save_figure(fig, folder, stem):
    """Save a figure as folder/stem.png and folder/stem.svg (reproducible: no dates, fixed SVG ids)."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.hashsalt": stem}):
        fig.savefig(folder / f"{stem}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(folder / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return [folder / f"{stem}.png", folder / f"{stem}.svg"]


def bar_figure(runs, value="best"):
    """Recall@1, RP and MAP@R with and without MemVir per loss: mean over seeds, error bar = std, dots = seeds."""
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        per_row = _per_row(runs, metric, value)
        x, ticks, lo = 0.0, [], np.inf
        for gi, (root, members) in enumerate(groups):
            start = x
            for mi, row in enumerate(members):
                v = np.array(list(per_row[row].values()))
                lo = min(lo, v.min())
                k = mi if root in members else mi + 1  # colour 0 is the baseline's (absent from a partial report)
                short = "baseline" if row == root else (row.replace(root, "").strip(" +") or row)
                ax.bar(x, v.mean(), width=0.8, color=colors[k % 10], alpha=0.85, label=short if gi == 0 else None)
                if v.size > 1:
                    ax.errorbar(x, v.mean(), yerr=v.std(ddof=1), color="black", capsize=3, lw=1)
                ax.plot(np.full(v.size, x), v, "o", ms=3, color="black", alpha=0.6)
                x += 1
            ticks.append(((start + x - 1) / 2, root))
            x += 0.6
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
        top = max(max(v.values()) for v in per_row.values())
        ax.set_ylim(max(0.0, lo - 0.3 * (top - lo + 1.0)), top + 0.15 * (top - lo + 1.0))
        ax.set_title(f"{title} ({value}), %")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def learning_curves_figure(evaluations, runs):
    """Every metric over training epochs: the mean over seeds of each row, shaded between min and max."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    order = list(dict.fromkeys(runs["row"]))
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        for i, row in enumerate(order):
            e = evaluations[evaluations["row"] == row]
            g = e.groupby("epoch")[metric].agg(["mean", "min", "max"]) * 100
            ax.plot(g.index, g["mean"], color=colors[i % 10], label=row, lw=1.5)
            ax.fill_between(g.index, g["min"], g["max"], color=colors[i % 10], alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} on the test classes, %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def curriculum_figure(steps_by_row, num_classes=None, batch_size=None):
    """Classes and embeddings in the loss at each training step (MemVir's curriculum), one line per run.

    Args:
        steps_by_row: {label: steps.csv DataFrame (step, epoch, num_classes_in_use, num_embeddings_in_use)}.
        num_classes, batch_size: C and B, drawn as dotted lines when given.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = plt.get_cmap("tab10").colors
    for i, (label, s) in enumerate(steps_by_row.items()):
        for ax, col in zip(axes, ("num_classes_in_use", "num_embeddings_in_use")):
            ax.plot(s["step"], s[col], color=colors[(i + 1) % 10], label=label, lw=1.2)
    for ax, ref, title in ((axes[0], num_classes, "classes in the loss"),
                           (axes[1], batch_size, "embeddings in the loss")):
        if ref:
            ax.axhline(ref, ls=":", color="grey", lw=1)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def load_trained(run_dir, checkpoint="last", device="cpu"):
    """Load a trained run from its folder: network, criterion (MemVir with its memory, or the bare loss), data.

    Args:
        run_dir: a run folder written by memvir.train.
        checkpoint: "last" (the newest checkpoints/epoch_*.pt: the memory as training left it) or a file name in
            checkpoints/ such as "best_recall_1.pt".
    Returns:
        (net in eval mode, criterion, Splits, config dict, checkpoint epoch).
    """
    from . import train as _train
    from .data import build_datasets
    from .losses import build_loss
    from .memory import MemVir
    from .models import build_model

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if checkpoint == "last":
        paths = sorted(ckpt_dir.glob("epoch_[0-9]*.pt"))
        if not paths:
            raise FileNotFoundError(f"{ckpt_dir}: no epoch_*.pt checkpoint; train the run first")
        path = paths[-1]
    else:
        path = ckpt_dir / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; checkpoints there: "
                                    f"{sorted(p.name for p in ckpt_dir.glob('*.pt'))}")
    ckpt = _train.load_checkpoint(path, device)
    cfg = ckpt["config"]
    if cfg["data_name"] == "glyphs":
        splits = build_datasets("glyphs", data=cfg["data"], image_size=cfg["input_size"],
                                num_classes=cfg["num_classes"], instances_per_class=cfg["instances_per_class"],
                                min_fonts=cfg["min_fonts"], seed=cfg["glyph_seed"], val_classes=cfg["val_classes"])
    else:
        splits = build_datasets(cfg["data_name"], data=cfg["data"], backbone=cfg["backbone"],
                                input_size=cfg["input_size"])
    net = build_model(cfg["backbone"], cfg["dim"], cfg["pooling_type"], "none",
                      in_channels=1 if cfg["data_name"] == "glyphs" else 3)
    net.load_state_dict(ckpt["model"])
    net.to(device).eval()
    loss = build_loss(cfg["loss"], splits.num_classes, cfg["dim"], cfg["scale"])
    criterion = MemVir(loss, cfg["mem_num_step"], cfg["mem_step_gap"], cfg["warm_epoch"]) if cfg["memvir"] else loss
    criterion.load_state_dict(ckpt["criterion"])
    return net, criterion, splits, cfg, int(ckpt["epoch"])


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def build_report(profile, out=None, partial=False, log=print):
    """Write runs.csv, evaluations.csv, the tables (CSV + tables.md) and the figures of a profile.

    Args:
        profile: a Profile or a name for load_profile.
        out: output folder (default: the profile's report_dir, results/report/<profile>).
        partial: report only the finished runs instead of failing on the first unfinished one.
    Returns:
        the output folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    out = Path(out) if out else profile.report_dir
    runs, evaluations = collect(profile, partial=partial)
    if runs.empty:
        raise ValueError(f"no finished run in {profile.runs_dir}: nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False, float_format="%.6f")
    evaluations.to_csv(out / "evaluations.csv", index=False, float_format="%.6f")

    meaning = {"best": "the best over the evaluations on the test set, as the official code records it",
               "last": "the last evaluation"}[profile.table_value]
    md = [f"# Results: profile `{profile.name}`", "", profile.description, "",
          f"Tables use the **{profile.table_value}** value of each run ({meaning}); values in percent, seeds "
          f"{sorted(set(runs['seed']))}. Each heading says which value its table uses.", ""]
    for value in VALUES:
        for metric, title in METRICS.items():
            table = table_from_runs(runs, metric, value)
            stem = f"table_{metric.replace('@', '_at_')}" + ("" if value == profile.table_value else f"_{value}")
            table.to_csv(out / f"{stem}.csv", index=False)
            md += [f"## {title} ({value})", "", markdown_table(table), ""]
        for metric, title in METRICS.items():
            paired = paired_from_runs(runs, metric, value)
            if not paired.empty:
                paired.to_csv(out / f"paired_{metric.replace('@', '_at_')}_{value}.csv", index=False)
                md += [f"## {title} ({value}): MemVir minus baseline, paired by seed", "", markdown_table(paired), ""]
    (out / "tables.md").write_text("\n".join(md))

    fig = bar_figure(runs, profile.table_value)
    save_figure(fig, out / "figures", "bars")
    plt.close(fig)
    fig = learning_curves_figure(evaluations, runs)
    save_figure(fig, out / "figures", "learning_curves")
    plt.close(fig)
    memvir_rows = [r for r in profile.rows if _truthy(r.params.get("memvir", 0))]
    steps, C, B = {}, None, None
    for r in memvir_rows:
        run = profile.run(r.label)
        if run.name in set(runs["name"]):
            config, _, s = read_run(profile.runs_dir / run.name)
            if s is not None:
                steps[r.label] = s
                C, B = C or s["num_classes_in_use"].min(), B or config.get("batch_size")
    if steps:
        fig = curriculum_figure(steps, C, B)
        save_figure(fig, out / "figures", "curriculum")
        plt.close(fig)
    summary = {
        "profile": profile.name, "config": str(profile.path.relative_to(profile.root)),
        "table_value": profile.table_value, "runs": int(len(runs)), "expected_runs": len(profile.runs),
        "partial": bool(len(runs) < len(profile.runs)), "rows": [r.label for r in profile.rows],
        "baselines": profile.baselines, "seeds": profile.seeds,
        "data_name": str(profile.rows[0].params.get("data_name", "")).lower(), "description": profile.description}
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"report: {len(runs)} of {len(profile.runs)} runs -> {out}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Executing notebooks (papermill)
# ----------------------------------------------------------------------------------------------------------------


def notebook_parameters(path):
    """Return {name: default} of a notebook's cell tagged `parameters` (papermill's own reading of it)."""
    import papermill

    return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}


def _papermill(input_path, output_path, parameters, kernel, log):
    import papermill

    known = notebook_parameters(input_path)
    unknown = sorted(set(parameters) - set(known))
    if unknown:  # papermill would inject them anyway, and the notebook would ignore them
        raise ValueError(f"{input_path}: no parameter(s) {unknown} in its `parameters` cell; it has {sorted(known)}")
    log(f"papermill {Path(input_path).name} -> {output_path}")
    # The kernel runs in notebooks/, as when a reader opens the notebook; paths passed here are absolute.
    papermill.execute_notebook(str(input_path), str(output_path), parameters=parameters, kernel_name=kernel,
                               cwd=str(Path(input_path).resolve().parent), progress_bar=False, log_output=False)


def execute_run(profile, name, kernel="python3", log=print):
    """Train one run of a profile by executing the training notebook with its parameters; skip it if finished.

    A run killed half-way leaves metrics.json with finished: false and its checkpoints; executing it again resumes
    (memvir.train picks up the last checkpoint in save_path).

    Args:
        profile: a Profile or a name for load_profile.
        name: the run's name (see `--list-runs`).
        kernel: the Jupyter kernel; "python3" is the interpreter running this code.
    Returns:
        "skipped" or "done".
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    runs = {r.name: r for r in profile.runs}
    if name not in runs:
        raise ValueError(f"run {name!r} is not in profile {profile.name} ({profile.path}); its runs: "
                         f"{', '.join(runs)}")
    run = runs[name]
    folder = Path(run.params["save_path"])
    if run_state(folder) == "finished":
        log(f"skip {name}: finished")
        return "skipped"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # resume=True: a run killed half-way continues from its last checkpoint instead of starting afresh.
    _papermill(profile.notebook, folder / profile.notebook.name, {**run.params, "resume": True}, kernel, log)
    if run_state(folder) != "finished":
        raise RuntimeError(f"{folder}: the notebook ran to the end but metrics.json does not say finished: true")
    log(f"done {name} in {time.time() - start:.0f} s")
    return "done"


def chapter_parameters(profile):
    """The parameters each chapter gets when the pipeline builds the book from a profile's runs."""
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    params = {"01_overview": {"profile": str(profile.path)}, "03_losses": {},
              "06_results": {"report_dir": str(profile.report_dir)}}
    common = profile.rows[0].params
    if str(common.get("data_name", "")).lower() == "glyphs":
        params["02_data"] = {k: common[k] for k in ("input_size", "num_classes", "instances_per_class",
                                                    "min_fonts", "glyph_seed") if k in common}
    else:
        params["02_data"] = {}
    if "curriculum" in profile.book:
        run = profile.run(profile.book["curriculum"])
        params["04_memvir"] = {"run_dir": run.params["save_path"]}
    else:
        params["04_memvir"] = {}
    if "tsne" in profile.book:
        row = profile.book["tsne"]
        base = profile.baselines.get(row)
        if not base:
            raise ValueError(f"{profile.path}: book.tsne row {row!r} needs a baseline")
        params["07_embedding_space"] = {"memvir_run": profile.run(row).params["save_path"],
                                        "baseline_run": profile.run(base).params["save_path"],
                                        "figure_dir": str(profile.report_dir / "figures")}
    else:
        params["07_embedding_space"] = {}
    return params


def chapters(root=ROOT):
    """The chapter notebooks of a repository, in reading order: notebooks/NN_*.ipynb."""
    return sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute_chapters(profile, out, only=None, kernel="python3", log=print):
    """Execute the chapter notebooks for the book with this profile's runs and report; copy the training chapter.

    The training chapter (05) is the executed notebook of the profile's `book.training` run, not a new run.

    Args:
        profile: a Profile or a name for load_profile.
        out: folder for the executed chapters (book/_build/src/chapters).
        only: a chapter's name (e.g. "06_results") to execute that one only.
    """
    import shutil

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = chapter_parameters(profile)
    notebooks = chapters(profile.root)
    if only is not None:
        notebooks = [nb for nb in notebooks if nb.stem == only]
        if not notebooks:
            raise ValueError(f"--only {only!r}: no notebook {profile.root / 'notebooks' / (only + '.ipynb')}; "
                             f"chapters: {[nb.stem for nb in chapters(profile.root)]}")
    for nb in notebooks:
        if nb.name == profile.notebook.name:  # the training chapter: a run's own executed notebook
            row = profile.book.get("training", profile.rows[0].label)
            src = Path(profile.run(row).params["save_path"]) / nb.name
            if not src.is_file():
                raise FileNotFoundError(f"{src} does not exist: run {profile.run(row).name} first (make runs)")
            shutil.copyfile(src, out / nb.name)
            log(f"copy {src} -> {out / nb.name}")
            continue
        # A chapter that does not depend on the profile (no entry) runs with its default parameters.
        _papermill(nb, out / nb.name, params.get(nb.stem, {}), kernel, log)
    return out


def execute_defaults(paths, kernel="python3", log=print):
    """Execute notebooks in place with their default parameters (what `make sync` commits for nbval and the book).

    Unlike papermill, this adds no run metadata (times, paths) to the notebook, so re-executing an unchanged
    notebook changes only its outputs.

    Args:
        paths: .ipynb files; each runs in its own folder, as when a reader opens it.
    """
    import nbclient
    import nbformat

    for path in map(Path, paths):
        if path.suffix != ".ipynb" or not path.is_file():
            raise FileNotFoundError(f"{path}: expected an existing .ipynb file")
        log(f"execute {path}")
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, kernel_name=kernel, record_timing=False,
                                resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
        nbformat.write(nb, path)


def warm_data(profile, log=print):
    """Render (and cache) a glyph profile's data set once, before parallel runs would each render it."""
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    seen = set()
    for row in profile.rows:
        p = row.params
        if str(p.get("data_name", "")).lower() != "glyphs":
            continue
        # train flag -> render_glyphs argument
        names = {"input_size": "image_size", "num_classes": "num_classes", "glyph_seed": "seed",
                 "instances_per_class": "instances_per_class", "min_fonts": "min_fonts"}
        key = tuple((names[k], p[k]) for k in names if k in p)
        if key in seen:
            continue
        seen.add(key)
        from .data.glyphs import render_glyphs

        render_glyphs(**dict(key))
        log(f"glyphs ready: {dict(key)}")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    """`python -m memvir report`: build the tables and figures of a profile (and drive `make reproduce`)."""
    parser = argparse.ArgumentParser(
        prog="python -m memvir report", description=__doc__.split("\n", 1)[0],
        epilog="Without an action option: read every run of the profile and write its report "
               "(results/report/<profile>/: runs.csv, tables, figures).")
    parser.add_argument("--profile", default="cpu", help="configs/<name>.yml or a path to a profile (default cpu)")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--report-root", default=None, help="folder of reports (default results/report)")
    parser.add_argument("--out", default=None, help="report folder (default <report-root>/<profile>)")
    parser.add_argument("--partial", action="store_true", help="report the finished runs only")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel for papermill (default python3)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list-runs", action="store_true", help="print the profile's run names, one a line")
    action.add_argument("--run", metavar="NAME", help="train one run (papermill); skipped when finished")
    action.add_argument("--chapters", metavar="DIR", help="execute the book's chapters on this profile into DIR")
    parser.add_argument("--only", metavar="CHAPTER", help="with --chapters: only this chapter (e.g. 06_results)")
    action.add_argument("--warm-data", action="store_true", help="render the profile's glyph data set once")
    action.add_argument("--execute-defaults", nargs="+", metavar="NOTEBOOK",
                        help="execute these notebooks in place with their default parameters (make sync)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.execute_defaults:
            execute_defaults(args.execute_defaults, kernel=args.kernel, log=lambda s: print(s, flush=True))
            return 0
        profile = load_profile(args.profile, args.runs_root, args.report_root)
        if args.list_runs:
            print("\n".join(r.name for r in profile.runs))
        elif args.run:
            execute_run(profile, args.run, kernel=args.kernel, log=lambda s: print(s, flush=True))
        elif args.chapters:
            execute_chapters(profile, args.chapters, only=args.only, kernel=args.kernel,
                             log=lambda s: print(s, flush=True))
        elif args.warm_data:
            warm_data(profile, log=lambda s: print(s, flush=True))
        else:
            build_report(profile, args.out, partial=args.partial, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # papermill's execution errors: say which notebook failed, briefly
        if type(exc).__name__ in ("PapermillExecutionError", "CellExecutionError"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
