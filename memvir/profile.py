"""What a profile file says (configs/<name>.yml): its rows, their runs and folders, the groups of comparisons.

    rows      a loss with or without MemVir (label, the training notebook's params, its baseline row)
    seeds     each row runs once per seed: a Run, in a folder named after its parameters
    reuse     seeds of some rows that another profile ran with the same flags: the report reads them from that
              profile's committed reference instead of running them again
    groups    a study's questions (rows compared with their baselines); contrasts: pairs of other rows compared
              the same way; calibrate, select, plateau, compare, book: what the report and the chapters make of them

Read by the pipeline (which runs the profile) and by the report (which reads its runs); it runs nothing itself.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .plainyaml import load_plain
from .rundir import run_name

__all__ = ["ROOT", "TABLE_VALUES", "PROFILE_KEYS", "Row", "Run", "Profile", "load_profile", "variables",
           "check_run_folder"]

ROOT = Path(__file__).resolve().parents[1]  # the repository memvir was installed from (editable install)
TABLE_VALUES = ("best", "last")  # which value of a run the tables use: best over training (official) or last
PROFILE_KEYS = ("description", "notebook", "seeds", "common", "rows", "table_value", "book", "select", "compare",
                "calibrate", "groups", "shares", "plateau", "contrasts", "rules",
                "headline", "reuse")  # the keys of configs/<profile>.yml
PLATEAU_KEYS = ("metric", "min_gain", "tail")  # plateau: the converged-budget rule (memvir.report.runs.plateau_budget)
BOOK_KEYS = ("curriculum", "training", "tsne")  # book: which row's first-seed run each chapter shows
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Row:
    """One row of the result tables: a loss with or without MemVir, run once per seed."""
    label: str  # e.g. "MemVir + Norm-SoftMax", as the official README names its rows
    params: dict  # parameters of notebooks/05_training.py (the train flags), common ones included
    baseline: str = ""  # the row this one is compared with ("" for a baseline)
    tag: str = ""  # appended to the run names when two rows would otherwise share them
    seeds: list = None  # this row's seeds when not the profile's (a row whose other seeds another profile ran)


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
    plateau: dict = field(default_factory=dict)  # a budget profile: {metric, min_gain (points), tail (epochs)}
    groups: dict = field(default_factory=dict)  # {name: [row, ...]}: a study's questions, a table (figure) each
    contrasts: dict = field(default_factory=dict)  # {name: [(row, other row), ...]}: pairs besides row/baseline
    shares: str = ""  # another profile whose run folders this one uses (YAML `shares`; identical rows, same runs)
    compare: str = ""  # "table4": the report lays the paper's Table 4 beside the profile's rows
    book: dict = field(default_factory=dict)  # {"curriculum": row, "training": row, "tsne": row}
    rules: dict = field(default_factory=dict)  # {name: rule}: decisions the report evaluates (report.verdicts)
    headline: list = field(default_factory=list)  # [{regime, order, lines: [(row, group)]}]: the book's first page
    reuse: dict = field(default_factory=dict)  # {profile, seeds, rows}: runs read from that profile's reference
    runs_dir: Path = None
    report_dir: Path = None  # the report of the runs made here (results/report/<name>, not in git)
    reference_dir: Path = None  # the committed report the book compares it with (results/reference/<name>)

    @property
    def runs(self):
        """Every run, row by row, seed by seed."""
        out = []
        for row in self.rows:
            for seed in row.seeds or self.seeds:
                params = dict(row.params, seed=int(seed))
                name = run_name(params, row.tag)
                out.append(Run(name, row.label, int(seed), params, self.runs_dir / name))
        return out

    def run(self, row, seed=None):
        """Return the run of `row` at `seed` (default: the row's first seed)."""
        for r in self.runs:
            if r.row == row and (r.seed == seed or seed is None):
                return r
        raise ValueError(f"{self.path}: no run for row {row!r} and seed {seed}; rows: {[r.label for r in self.rows]}")

    @property
    def expected_runs(self):
        """How many runs its report holds when complete: its own runs and the ones it reuses."""
        return len(self.runs) + len(self.reuse.get("rows", [])) * len(self.reuse.get("seeds", []))

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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's `true` is not the seed 1


def _is_seed_list(value):
    """A non-empty list of distinct integers >= 0 (a row's seeds, the seeds a profile reuses)."""
    return (isinstance(value, list) and bool(value) and len(set(value)) == len(value)
            and all(_is_int(s) and s >= 0 for s in value))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(key, value, where):
    """A parameter reaches the notebook's parameters cell: exactly a str, int, float or bool, nothing else."""
    if type(value) not in (str, int, float, bool):
        raise ValueError(f"{where}: parameter {key!r} must be a flat scalar (str, int, float, bool), got "
                         f"{type(value).__name__} {value!r}")


def variables(path):
    """The environment variables a profile file names (${NAME}), sorted."""
    return sorted(set(_VAR.findall(Path(path).read_text())))


def _find(profile):
    """The file of a profile: a path ending in .yml/.yaml, or configs/<name>.yml here, else of ROOT."""
    path = Path(profile)
    if path.suffix not in (".yml", ".yaml"):
        # A name: configs/<name>.yml of the repository we are in (the Makefile runs from its root), else of the
        # repository memvir was installed from.
        here = Path.cwd() / "configs" / f"{profile}.yml"
        path = here if here.is_file() else ROOT / "configs" / f"{profile}.yml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yml"))
        raise FileNotFoundError(f"profile {profile!r}: no file {path}; known profiles: {', '.join(known)}")
    return path.resolve()


def _read(path):
    """The profile's mapping, its keys checked; a YAML error is one line with the file, line and column."""
    spec = load_plain(path, path.read_text())  # plain data only, each key once (memvir/plainyaml.py)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with keys description, notebook, seeds, common, rows")
    unknown = set(spec) - set(PROFILE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {', '.join(PROFILE_KEYS)}")
    for key in ("notebook", "seeds", "rows"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}")
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds must be distinct, got {seeds}")
    return spec


def _rows(spec, path):
    """The profile's rows: common parameters under each row's own, every value a scalar, ${VAR} expanded."""
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
        extra = set(r) - {"label", "params", "baseline", "tag", "seeds"}
        if extra:
            raise ValueError(f"{path}: rows[{i}] has unknown keys {sorted(extra)}; expected label, params, "
                             f"baseline, tag, seeds")
        seeds = r.get("seeds")
        if seeds is not None and not _is_seed_list(seeds):
            raise ValueError(f"{path}: rows[{i}].seeds must be a non-empty list of distinct integers >= 0, got "
                             f"{seeds!r}")
        for k in ("label", "baseline"):
            if r.get(k) is not None and not isinstance(r[k], str):
                raise ValueError(f"{path}: rows[{i}].{k} must be a string (a row's label), got {r[k]!r}")
        if r["label"] in labels:
            raise ValueError(f"{path}: two rows are labelled {r['label']!r}")
        labels.add(r["label"])
        if not isinstance(r.get("params") or {}, dict):
            raise ValueError(f"{path}: rows[{i}].params must be a mapping of parameters, got {r['params']!r}")
        params = dict(common, **(r.get("params") or {}))
        for k, v in params.items():
            _check_scalar(k, v, f"{path} rows[{i}]")
        params = {k: _expand(v, f"{path} rows[{i}] {k}") for k, v in params.items()}
        for k in ("seed", "save_path"):
            if k in params:
                raise ValueError(f"{path}: rows[{i}] sets {k!r}; the pipeline sets it per run")
        rows.append(Row(r["label"], params, r.get("baseline") or "", str(r.get("tag") or ""), seeds))
    for r in rows:
        if r.baseline and r.baseline not in labels:
            raise ValueError(f"{path}: row {r.label!r} has baseline {r.baseline!r}, which is not a row label")
    return rows


def _options(spec, path, rows):
    """What the report and the chapters make of the rows: {table_value, book, select, compare, calibrate, plateau,
    groups, contrasts, shares}, each checked."""
    labels = {r.label for r in rows}
    table_value = spec.get("table_value", "best")
    if table_value not in TABLE_VALUES:
        raise ValueError(f"{path}: table_value must be one of {TABLE_VALUES}, got {table_value!r}")
    book = spec.get("book") or {}
    if not isinstance(book, dict):
        raise ValueError(f"{path}: book must map {', '.join(BOOK_KEYS)} to row labels, got {book!r}")
    for k, v in book.items():
        if k not in BOOK_KEYS or not isinstance(v, str) or v not in labels:
            raise ValueError(f"{path}: book.{k} must name a row (keys {', '.join(BOOK_KEYS)}), got {v!r}")
    select, compare = str(spec.get("select") or ""), str(spec.get("compare") or "")
    if compare not in ("", "table4"):
        raise ValueError(f"{path}: compare must be table4 (the paper's Table 4), got {compare!r}")
    if select and select not in ("recall@1", "r_precision", "map_at_r"):
        raise ValueError(f"{path}: select must be recall@1, r_precision or map_at_r, got {select!r}")
    if select and not all(int(r.params.get("val_classes", 0)) > 0 for r in rows):
        raise ValueError(f"{path}: select needs validation classes: set val_classes > 0 for every row")
    calibrate = spec.get("calibrate") or ()
    if calibrate and not (isinstance(calibrate, list) and len(calibrate) == 2
                          and all(_is_number(v) for v in calibrate) and calibrate[0] < calibrate[1]):
        raise ValueError(f"{path}: calibrate must be a range [low, high] of Recall@1 in percent, got {calibrate!r}")
    plateau = spec.get("plateau") or {}
    if plateau and not (isinstance(plateau, dict) and set(plateau) == set(PLATEAU_KEYS)
                        and plateau["metric"] in ("recall@1", "r_precision", "map_at_r")
                        and all(_is_number(plateau[k]) and plateau[k] > 0 for k in PLATEAU_KEYS[1:])):
        raise ValueError(f"{path}: plateau must be {{metric: recall@1 | r_precision | map_at_r, min_gain: points > 0, "
                         f"tail: epochs > 0}}, got {plateau!r}")
    if plateau and not all(int(r.params.get("val_classes", 0)) > 0 for r in rows):
        raise ValueError(f"{path}: plateau reads the validation classes: set val_classes > 0 for every row")
    groups = spec.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, list) and g for g in groups.values()):
        raise ValueError(f"{path}: groups must map a name to a non-empty list of row labels")
    for name, members in groups.items():
        for label in members:
            if not isinstance(label, str) or label not in labels:
                raise ValueError(f"{path}: groups.{name} names {label!r}, which is not a row label")
    contrasts = spec.get("contrasts") or {}
    if not isinstance(contrasts, dict) or not all(
            isinstance(pairs, list) and pairs and all(isinstance(p, list) and len(p) == 2 and p[0] != p[1]
                                                     for p in pairs) for pairs in contrasts.values()):
        raise ValueError(f"{path}: contrasts must map a name to a non-empty list of [row, other row] pairs")
    for name, pairs in contrasts.items():
        bad = [label for pair in pairs for label in pair if not isinstance(label, str) or label not in labels]
        if bad or name in groups:
            raise ValueError(f"{path}: contrasts.{name} " + (f"names {bad[0]!r}, which is not a row label" if bad
                                                              else "has the name of a group"))
        rows_once = [p[0] for p in pairs]
        if len(set(rows_once)) < len(rows_once):
            raise ValueError(f"{path}: contrasts.{name} compares one row twice; give each pair its own contrast")
    rules, headline = spec.get("rules") or {}, spec.get("headline") or []
    named = {(row, g) for g, members in groups.items() for row in members}
    named |= {(p[0], g) for g, pairs in contrasts.items() for p in pairs}
    for what, pairs in [*((f"rules.{k}", [p for c in (r.get("candidates") or {}).values() for p in c])
                          for k, r in rules.items()),
                        *((f"headline[{i}]", e.get("lines") or []) for i, e in enumerate(headline))]:
        bad = [p for p in pairs if not (isinstance(p, list) and len(p) == 2 and tuple(p) in named)]
        if bad or not pairs:
            raise ValueError(f"{path}: {what} must list [row, group] pairs of the profile's groups and contrasts"
                             + (f"; {bad[0]!r} is not one" if bad else ""))
    shares = str(spec.get("shares") or "")
    if shares and not re.fullmatch(r"[A-Za-z0-9_-]+", shares):
        raise ValueError(f"{path}: shares must name another profile (its run folders are shared), got {shares!r}")
    return {"table_value": table_value, "book": book, "select": select, "compare": compare,
            "calibrate": tuple(float(v) for v in calibrate), "plateau": dict(plateau), "groups": groups,
            "contrasts": {k: [tuple(p) for p in v] for k, v in contrasts.items()}, "shares": shares,
            "rules": rules, "headline": headline, "reuse": _reuse(spec.get("reuse"), path, rows, spec["seeds"])}


def _reuse(reuse, path, rows, seeds):
    """The `reuse` key checked: {profile: a name, seeds: [int], rows: [row label]}, each seed one the row does not
    run itself (a run is reported once). Whether the other profile ran those rows with the same flags is checked
    when the report reads them (memvir.report.runs.reused)."""
    if not reuse:
        return {}
    by_label = {r.label: r for r in rows}
    if not (isinstance(reuse, dict) and set(reuse) == {"profile", "seeds", "rows"}
            and isinstance(reuse["profile"], str) and re.fullmatch(r"[A-Za-z0-9_-]+", reuse["profile"])
            and _is_seed_list(reuse["seeds"])
            and isinstance(reuse["rows"], list) and reuse["rows"] and all(isinstance(r, str) for r in reuse["rows"])):
        raise ValueError(f"{path}: reuse must be {{profile: another profile's name, seeds: [distinct integers >= 0], "
                         f"rows: [row labels]}}, got {reuse!r}")
    if reuse["profile"] == path.stem:
        raise ValueError(f"{path}: reuse names this profile itself; expected another profile")
    for label in reuse["rows"]:
        if label not in by_label:
            raise ValueError(f"{path}: reuse.rows names {label!r}, which is not a row label")
        twice = sorted(set(reuse["seeds"]) & set(by_label[label].seeds or seeds))
        if twice:
            raise ValueError(f"{path}: reuse.seeds {twice} of row {label!r} are seeds the row runs itself; a run is "
                             f"reported once (give the row `seeds:` without them)")
    return {"profile": reuse["profile"], "seeds": [int(s) for s in reuse["seeds"]], "rows": list(reuse["rows"])}


def _notebook(path, root, name):
    """The profile's training notebook: an existing .ipynb inside the profile's repository (`root`).

    The pipeline executes it once per run with the rows' parameters, so a profile runs that notebook's code: the
    file must belong to the repository the profile lives in (not `../elsewhere.ipynb`, not an absolute path).
    """
    if not isinstance(name, str) or not name.endswith(".ipynb"):
        raise ValueError(f"{path}: notebook must be the path of an .ipynb file in {root}, got {name!r}")
    notebook = (root / name).resolve()
    if not notebook.is_relative_to(root.resolve()):
        raise ValueError(f"{path}: notebook {name!r} is outside the profile's repository {root}; expected a "
                         f"notebook of that repository (e.g. notebooks/05_training.ipynb): the pipeline executes it")
    if not notebook.is_file():
        raise FileNotFoundError(f"{path}: notebook {root / name} does not exist")
    return root / name


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
    path = _find(profile)
    root = path.parent.parent  # configs/<name>.yml -> the repository
    spec = _read(path)
    rows = _rows(spec, path)
    options = _options(spec, path, rows)
    notebook = _notebook(path, root, spec["notebook"])
    runs_root = Path(runs_root).resolve() if runs_root else root / "results" / "runs"
    report_root = Path(report_root).resolve() if report_root else root / "results" / "report"
    for flag, folder in (("--runs-root", runs_root), ("--report-root", report_root)):
        if folder.exists() and not folder.is_dir():  # a folder of folders, or nothing there yet
            raise ValueError(f"{flag} {folder}: is a file; expected a folder (or nothing there)")
    prof = Profile(path.stem, path, str(spec.get("description", "")).strip(), notebook, root, list(spec["seeds"]),
                   rows, runs_dir=runs_root / (options["shares"] or path.stem), report_dir=report_root / path.stem,
                   reference_dir=root / "results" / "reference" / path.stem, **options)
    try:
        names = [r.name for r in prof.runs]  # checks every run name before anything is written (rundir.run_name)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: rows give the same run name {dup[0]!r}; give one of them a `tag`")
    return prof


def check_run_folder(run):
    """Raise a ValueError (one line) when run.folder's config.json was made with flags other than run.params.

    A finished folder made with other flags (a profile whose benchmark changed, same run names, a run trained by
    hand into the folder) is never taken for this run: run names hold only some of the flags. The pipeline
    refuses to skip such a folder and the report refuses to read it as the profile's run.
    """
    from .config import FIELDS, RESUME_MAY_DIFFER
    from .resolve import resolve_config

    try:
        saved = {k: v for k, v in json.loads((run.folder / "config.json").read_text()).items() if k in FIELDS}
        then = asdict(resolve_config(saved))
    except (OSError, ValueError, AttributeError):
        return  # no readable config: training (or read_run) says what is wrong
    # The flags the profile sets must be the folder's; the others are the training notebook's defaults.
    now = asdict(resolve_config({**saved, **{k: v for k, v in run.params.items() if k != "resume"}}))
    diffs = [f"--{k}: {then[k]!r} there, {now[k]!r} now" for k in now
             if k not in RESUME_MAY_DIFFER and then[k] != now[k]]
    if diffs:
        raise ValueError(f"{run.folder} holds a run made with other flags ({'; '.join(diffs)}): move that folder "
                         f"away (or pass --runs-root); it is not this profile's run {run.name}")
