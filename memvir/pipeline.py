"""The pipeline of `make reproduce`: profiles, their runs (papermill), the book's chapters, and cluster commands.

    configs/<profile>.yml         the runs of a profile: rows (a loss, with or without MemVir) x seeds
    python -m memvir pipeline --profile P --list-runs        the run names, one a line (Make's targets)
    python -m memvir pipeline --profile P --run NAME         train one run: notebooks/05_training.ipynb, papermill
    python -m memvir pipeline --profile P --print-commands   a shell line per unfinished run (xargs -P, Slurm, ...)
    python -m memvir pipeline --profile P --chapters DIR     execute the chapters on P's runs and report
    python -m memvir pipeline --profile P --stage-book SRC   the book's source: exactly P's executed chapters

A run folder (memvir/rundir.py) counts as finished when its metrics.json says so *and* the executed training
notebook in it is complete: a pipeline killed between the two is run again (the training resumes as finished).
A chapter declares what it takes in its `parameters` cell; the pipeline offers every value it knows of a profile
(`known_values`) to the chapters that declare it, as paths relative to the chapter, so no page shows where it
was built. The library names no chapter. Tables and figures are memvir/report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import portable
from .rundir import run_name, run_state

__all__ = ["ROOT", "Row", "Run", "Profile", "load_profile", "notebook_complete", "run_finished", "execute_run",
           "run_command", "known_values", "chapters", "execute_chapters", "stage_book", "execute_defaults",
           "warm_data", "main"]

ROOT = Path(__file__).resolve().parents[1]  # the repository memvir was installed from (editable install)
TABLE_VALUES = ("best", "last")  # which value of a run the tables use: best over training (official) or last
PROFILE_KEYS = ("description", "notebook", "seeds", "common", "rows", "table_value", "book", "select", "compare",
                "calibrate", "groups", "runs")  # the keys of configs/<profile>.yml
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
    params: dict  # the training notebook's parameters (train flags) but save_path, which is the folder's
    folder: Path  # <runs root>/<profile>/<name>


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
    select: str = ""  # a search profile: the metric (on the validation classes) that picks each loss's row
    calibrate: tuple = ()  # a calibration profile: the target range (percent) of the baseline's test Recall@1
    groups: dict = field(default_factory=dict)  # {name: [row, ...]}: a study's questions, a table (figure) each
    shares: str = ""  # another profile whose run folders this one uses (identical rows are the same runs)
    compare: str = ""  # "table4": the report lays the paper's Table 4 beside the profile's rows
    book: dict = field(default_factory=dict)  # {"curriculum": row, "training": row, "tsne": row}
    runs_dir: Path = None
    report_dir: Path = None  # the report of the runs made here (results/report/<name>, not in git)
    reference_dir: Path = None  # the committed report the book compares it with (results/reference/<name>)

    @property
    def runs(self):
        """Every run, row by row, seed by seed."""
        out = []
        for row in self.rows:
            for seed in self.seeds:
                params = dict(row.params, seed=int(seed))
                name = run_name(params, row.tag)
                out.append(Run(name, row.label, int(seed), params, self.runs_dir / name))
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
            The committed reference a report is compared with is always <repository>/results/reference/<profile>/:
            `make reproduce` never writes there (`python -m memvir report --promote` does, on purpose).
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
    unknown = set(spec) - set(PROFILE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {', '.join(PROFILE_KEYS)}")
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
    if table_value not in TABLE_VALUES:
        raise ValueError(f"{path}: table_value must be one of {TABLE_VALUES}, got {table_value!r}")
    book = spec.get("book") or {}
    for k, v in book.items():
        if k not in ("curriculum", "training", "tsne") or v not in labels:
            raise ValueError(f"{path}: book.{k} must name a row (keys curriculum, training, tsne), got {v!r}")
    notebook = root / spec["notebook"]
    if not notebook.is_file():
        raise FileNotFoundError(f"{path}: notebook {notebook} does not exist")
    runs_root = Path(runs_root).resolve() if runs_root else root / "results" / "runs"
    report_root = Path(report_root).resolve() if report_root else root / "results" / "report"
    select, compare = str(spec.get("select") or ""), str(spec.get("compare") or "")
    if compare not in ("", "table4"):
        raise ValueError(f"{path}: compare must be table4 (the paper's Table 4), got {compare!r}")
    if select and select not in ("recall@1", "r_precision", "map_at_r"):
        raise ValueError(f"{path}: select must be recall@1, r_precision or map_at_r, got {select!r}")
    if select and not all(int(r.params.get("val_classes", 0)) > 0 for r in rows):
        raise ValueError(f"{path}: select needs validation classes: set val_classes > 0 for every row")
    calibrate = spec.get("calibrate") or ()
    if calibrate and not (isinstance(calibrate, list) and len(calibrate) == 2
                          and all(isinstance(v, (int, float)) for v in calibrate) and calibrate[0] < calibrate[1]):
        raise ValueError(f"{path}: calibrate must be a range [low, high] of Recall@1 in percent, got {calibrate!r}")
    groups = spec.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, list) and g for g in groups.values()):
        raise ValueError(f"{path}: groups must map a name to a non-empty list of row labels")
    for name, members in groups.items():
        for label in members:
            if label not in labels:
                raise ValueError(f"{path}: groups.{name} names {label!r}, which is not a row label")
    shares = str(spec.get("runs") or "")
    if shares and not re.fullmatch(r"[A-Za-z0-9_-]+", shares):
        raise ValueError(f"{path}: runs must name another profile (its run folders are shared), got {shares!r}")
    prof = Profile(path.stem, path, str(spec.get("description", "")).strip(), notebook, root, list(seeds), rows,
                   table_value=table_value, book=book, runs_dir=runs_root / (shares or path.stem),
                   report_dir=report_root / path.stem, reference_dir=root / "results" / "reference" / path.stem,
                   select=select, compare=compare,
                   calibrate=tuple(float(v) for v in calibrate), groups=groups, shares=shares)
    names = [r.name for r in prof.runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: rows give the same run name {dup[0]!r}; give one of them a `tag`")
    return prof




# ----------------------------------------------------------------------------------------------------------------
# Runs: the training notebook executed once per run
# ----------------------------------------------------------------------------------------------------------------


def notebook_complete(path):
    """True when papermill executed every code cell of the notebook at `path` to the end, without an error."""
    try:
        with open(path) as fh:
            nb = json.load(fh)  # plain JSON: no nbformat import (and its schema machinery) for a check
    except (OSError, ValueError):
        return False
    if nb.get("metadata", {}).get("papermill", {}).get("exception"):
        return False
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    return bool(cells) and all(c.get("metadata", {}).get("papermill", {}).get("status") == "completed"
                               for c in cells)


def run_finished(profile, run):
    """A run is finished when metrics.json says so and its executed training notebook is complete.

    A finished folder made with other flags (a profile whose benchmark changed, same run names) is an error, never
    taken for this run: run names hold only some of the flags.
    """
    if run_state(run.folder) != "finished":
        return False
    check_run_folder(run)
    return notebook_complete(run.folder / profile.notebook.name)


def check_run_folder(run):
    """Raise a ValueError (one line) when run.folder's config.json was made with flags other than run.params."""
    from dataclasses import asdict

    from .config import FIELDS, RESUME_MAY_DIFFER, resolve_config

    try:
        saved = {k: v for k, v in json.loads((run.folder / "config.json").read_text()).items() if k in FIELDS}
        then = asdict(resolve_config(saved))
    except (OSError, ValueError):
        return  # no readable config: training itself will say what is wrong
    # The flags the profile sets must be the folder's; the others are the training notebook's defaults.
    now = asdict(resolve_config({**saved, **{k: v for k, v in run.params.items() if k != "resume"}}))
    diffs = [f"--{k}: {then[k]!r} there, {now[k]!r} now" for k in now
             if k not in RESUME_MAY_DIFFER and then[k] != now[k]]
    if diffs:
        raise ValueError(f"{run.folder} holds a run made with other flags ({'; '.join(diffs)}): move that folder "
                         f"away (or pass --runs-root) to train this run")


def _relative(path, start):
    """`path` relative to `start` (a chapter's folder), so that an executed notebook shows no absolute path."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def notebook_parameters(path):
    """Return {name: default} of a notebook's cell tagged `parameters` (papermill's own reading of it)."""
    import papermill

    return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}


def _papermill(input_path, output_path, parameters, kernel, log):
    """Execute a notebook in its own folder (as a reader opens it) and leave no build path in the output."""
    import papermill

    known = notebook_parameters(input_path)
    unknown = sorted(set(parameters) - set(known))
    if unknown:  # papermill would inject them anyway, and the notebook would ignore them
        raise ValueError(f"{input_path}: no parameter(s) {unknown} in its `parameters` cell; it has {sorted(known)}")
    log(f"papermill {Path(input_path).name} -> {output_path}")
    nb = papermill.execute_notebook(str(input_path), str(output_path), parameters=parameters, kernel_name=kernel,
                                    cwd=str(Path(input_path).resolve().parent), progress_bar=False,
                                    log_output=False)
    # The injected cell repeats the parameters: fold it behind the theme's toggle. Papermill's metadata records
    # the absolute input and output paths: keep only the file names.
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.metadata["tags"] = [*cell.metadata["tags"], "hide-input"]
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = Path(meta[key]).name
    import nbformat

    nbformat.write(nb, str(output_path))


def execute_run(profile, name, kernel="python3", log=print):
    """Train one run of a profile by executing the training notebook with its parameters; skip it if finished.

    A run killed half-way leaves metrics.json with finished: false and its checkpoints; executing it again resumes
    (memvir.train picks up the newest checkpoint). A run whose training finished but whose notebook did not is
    executed again too: the training part then only reads the finished run.

    Returns:
        "skipped" or "done".
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    runs = {r.name: r for r in profile.runs}
    if name not in runs:
        shown = ", ".join(list(runs)[:3])
        raise ValueError(f"run {name!r} is not in profile {profile.name} ({profile.path}); it has {len(runs)} runs "
                         f"({shown}, ...; `--list-runs` prints them all)")
    run = runs[name]
    if run_finished(profile, run):
        log(f"skip {name}: finished")
        return "skipped"
    run.folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    notebook_dir = profile.notebook.parent
    # resume=True: a run killed half-way continues from its last checkpoint instead of starting afresh.
    params = {**run.params, "save_path": _relative(run.folder, notebook_dir), "resume": True}
    _papermill(profile.notebook, run.folder / profile.notebook.name, params, kernel, log)
    if not run_finished(profile, run):
        raise RuntimeError(f"{run.folder}: the notebook ran to the end but metrics.json does not say finished: true")
    log(f"done {name} in {time.time() - start:.0f} s")
    return "done"


def run_command(profile, run):
    """One self-contained shell line that trains `run` (for xargs -P, a Slurm array, any scheduler)."""
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if portable.SWITCH in os.environ:  # the job keeps the kernels' mode it was printed with (memvir/portable.py)
        env[portable.SWITCH] = os.environ[portable.SWITCH]
    env.update({k: os.environ[k] for k in sorted(set(_VAR.findall(profile.path.read_text()))) if k in os.environ})
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (f"cd {shlex.quote(str(profile.root))} && {assign} {shlex.quote(sys.executable)} -m memvir pipeline "
            f"--profile {shlex.quote(str(profile.path))} --runs-root {shlex.quote(str(profile.runs_dir.parent))} "
            f"--run {shlex.quote(run.name)}")


# ----------------------------------------------------------------------------------------------------------------
# Chapters: executed on a profile's runs and report, then staged for the book
# ----------------------------------------------------------------------------------------------------------------


def known_values(profile):
    """Every value the pipeline can give a chapter, by parameter name (paths absolute; made relative later)."""
    values = {"profile": profile.path, "report_dir": profile.report_dir, "figure_dir": profile.report_dir / "figures",
              "reference_dir": profile.reference_dir}
    if profile.compare == "table4":  # the Table-4 chapter reads this profile's report
        values["table4_dir"] = profile.report_dir
    if len(profile.groups) > 1:  # a study (several groups of comparisons): the study chapter reads its report
        values["study_dir"] = profile.report_dir
    common = profile.rows[0].params
    if str(common.get("data_name", "")).lower() == "glyphs":  # the benchmark the runs trained on
        values.update({k: common[k] for k in ("input_size", "num_classes", "instances_per_class", "min_fonts",
                                              "glyph_seed", "val_classes") if k in common})
    if "curriculum" in profile.book:
        values["run_dir"] = profile.run(profile.book["curriculum"]).folder
    if "tsne" in profile.book:
        row = profile.book["tsne"]
        base = profile.baselines.get(row)
        if not base:
            raise ValueError(f"{profile.path}: book.tsne row {row!r} needs a baseline")
        values["memvir_run"], values["baseline_run"] = profile.run(row).folder, profile.run(base).folder
    return values


def chapters(root=ROOT):
    """The chapter notebooks of a repository, in reading order: notebooks/NN_*.ipynb."""
    return sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute_chapters(profile, out, only=None, kernel="python3", log=print):
    """Execute the chapters for the book with this profile's runs and report into `out`.

    Each chapter gets the known values its parameters cell declares. The training notebook is not executed
    again: its chapter is the executed notebook of the profile's `book.training` run, which must be complete.

    Args:
        out: folder for the executed chapters (the Makefile's book/_build/chapters/<profile>).
        only: a chapter's name (e.g. "06_results") to execute that one only.
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    values = known_values(profile)
    notebooks = chapters(profile.root)
    if only is not None:
        notebooks = [nb for nb in notebooks if nb.stem == only]
        if not notebooks:
            raise ValueError(f"--only {only!r}: no notebook {profile.root / 'notebooks' / (only + '.ipynb')}; "
                             f"chapters: {[nb.stem for nb in chapters(profile.root)]}")
    for nb in notebooks:
        if nb.name == profile.notebook.name:  # the training chapter: a run's own executed notebook
            run = profile.run(profile.book.get("training", profile.rows[0].label))
            src = run.folder / nb.name
            if not notebook_complete(src):
                raise FileNotFoundError(f"{src} is missing or was not executed to the end: run {run.name} first "
                                        f"(make runs PROFILE={profile.name})")
            shutil.copyfile(src, out / nb.name)
            log(f"copy {src} -> {out / nb.name}")
            continue
        declared = notebook_parameters(nb)
        params = {k: (_relative(v, nb.parent) if isinstance(v, Path) else v)
                  for k, v in values.items() if k in declared}
        _papermill(nb, out / nb.name, params, kernel, log)
    return out


def stage_book(src, chapters_dir, root=ROOT, log=print):
    """Lay out the book's source in `src`: book/'s files and exactly the chapters found in `chapters_dir`.

    Every chapter of the table of contents must be there (executed by `make chapters`, or notebooks/ itself for
    the committed notebooks): a missing one is an error, never a silent substitute.
    """
    src, chapters_dir = Path(src), Path(chapters_dir)
    wanted = [nb.name for nb in chapters(root)]
    missing = [n for n in wanted if not notebook_complete(chapters_dir / n) and chapters_dir.resolve() !=
               (Path(root) / "notebooks").resolve()]
    missing += [n for n in wanted if not (chapters_dir / n).is_file() and n not in missing]
    if missing:
        raise FileNotFoundError(f"{chapters_dir}: chapter(s) {missing} not executed; run `make chapters PROFILE=...` "
                                f"first, or `make book CHAPTERS_FROM=notebooks` for the committed notebooks")
    if src.exists():
        shutil.rmtree(src)
    (src / "chapters").mkdir(parents=True)
    book = Path(root) / "book"
    for f in [*book.glob("*.yml"), *book.glob("*.md"), *book.glob("*.bib")]:
        shutil.copy(f, src / f.name)
    if (book / "_static").is_dir():  # the theme's extra CSS
        shutil.copytree(book / "_static", src / "_static")
    for n in wanted:
        shutil.copy(chapters_dir / n, src / "chapters" / n)
    log(f"book source: {len(wanted)} chapters from {chapters_dir} -> {src}")
    return src


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
    from .config import resolve_config
    from .experiment import build_splits

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    seen = set()
    for row in profile.rows:
        cfg = resolve_config({k: v for k, v in row.params.items() if k != "resume"})
        key = (cfg.data_name, cfg.input_size, cfg.num_classes, cfg.instances_per_class, cfg.min_fonts,
               cfg.glyph_seed)
        if cfg.data_name != "glyphs" or key in seen:
            continue
        seen.add(key)
        build_splits(cfg)  # renders into the cache, or reads it
        log(f"glyphs ready: {cfg.num_classes} classes x {cfg.instances_per_class} at {cfg.input_size} px")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    """`python -m memvir pipeline`: what `make reproduce` drives (runs, chapters, the book's source)."""
    parser = argparse.ArgumentParser(prog="python -m memvir pipeline", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", default="cpu", help="configs/<name>.yml or a path to a profile (default cpu)")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--report-root", default=None, help="folder of reports (default results/report)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel for papermill (default python3)")
    parser.add_argument("--only", metavar="CHAPTER", help="with --chapters: only this chapter (e.g. 06_results)")
    parser.add_argument("--from", dest="chapters_from", metavar="DIR", help="with --stage-book: executed chapters")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list-runs", action="store_true", help="print the profile's run names, one a line")
    action.add_argument("--print-commands", action="store_true",
                        help="print one self-contained shell command per unfinished run")
    action.add_argument("--run", metavar="NAME", help="train one run (papermill); skipped when finished")
    action.add_argument("--warm-data", action="store_true", help="render the profile's glyph data set once")
    action.add_argument("--chapters", metavar="DIR", help="execute the book's chapters on this profile into DIR")
    action.add_argument("--stage-book", metavar="SRC", help="lay out the book's source from --from DIR")
    action.add_argument("--execute-defaults", nargs="+", metavar="NOTEBOOK",
                        help="execute these notebooks in place with their default parameters (make sync)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if args.execute_defaults:
            execute_defaults(args.execute_defaults, kernel=args.kernel, log=log)
            return 0
        if args.stage_book:
            stage_book(args.stage_book, args.chapters_from or "notebooks", log=log)
            return 0
        profile = load_profile(args.profile, args.runs_root, args.report_root)
        if args.list_runs:
            print("\n".join(r.name for r in profile.runs))
        elif args.print_commands:
            print("\n".join(run_command(profile, r) for r in profile.runs if not run_finished(profile, r)))
        elif args.run:
            execute_run(profile, args.run, kernel=args.kernel, log=log)
        elif args.warm_data:
            warm_data(profile, log=log)
        elif args.chapters:
            execute_chapters(profile, args.chapters, only=args.only, kernel=args.kernel, log=log)
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
