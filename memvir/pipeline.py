"""The pipeline of `make reproduce`: profiles, their runs (papermill), the book's chapters, and cluster commands.

    configs/<profile>.yml         the runs of a profile: rows (a loss, with or without MemVir) x seeds
    python -m memvir pipeline --profile P --list-runs [--unfinished]   the run names (not finished: Make's targets)
    python -m memvir pipeline --profile P --run NAME         train one run: notebooks/05_training.ipynb, papermill
    python -m memvir pipeline --profile P --print-commands   a shell line per unfinished run (xargs -P, Slurm, ...)
    python -m memvir pipeline --profile P --chapters DIR     execute the chapters on P's runs and report
    python -m memvir pipeline --profile P --stage-book SRC   the book's source: exactly P's executed chapters

A run folder (memvir/rundir/) counts as finished when its metrics.json says so *and* the executed training
notebook in it is complete: a pipeline killed between the two is run again (the training resumes as finished).
A chapter declares what it takes in its `parameters` cell; the pipeline offers every value it knows of a profile
(`known_values`) to the chapters that declare it, as paths relative to the chapter, so no page shows where it
was built. The library names no chapter. What a profile says: memvir/profile.py; tables and figures:
memvir/report/.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from . import portable
from .files import SIGPIPE_STATUS, atomic_folder, os_error_line, reader_gone
from .profile import ROOT, Profile, check_run_folder, load_profile, variables
from .rundir import read_metrics, run_state

__all__ = ["notebook_complete", "run_finished", "execute_run",
           "run_command", "known_values", "chapters", "execute_chapters", "stage_book", "execute_defaults",
           "warm_data", "main"]


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
    try:
        read_metrics(run.folder)
    except ValueError:  # damaged: training it again rebuilds the file from the run's checkpoint (memvir.train)
        return False
    check_run_folder(run)
    return notebook_complete(run.folder / profile.notebook.name)


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
    try:
        nb = papermill.execute_notebook(str(input_path), str(output_path), parameters=parameters,
                                        kernel_name=kernel, cwd=str(Path(input_path).resolve().parent),
                                        progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as exc:  # the cell's error in one line; its traceback is in the file
        raise RuntimeError(f"{output_path}: cell {exc.exec_count} raised {exc.ename}: "
                           f"{' '.join(str(exc.evalue).split())} (the executed notebook shows where)") from None
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
    env.update({k: os.environ[k] for k in variables(profile.path) if k in os.environ})
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (f"cd {shlex.quote(str(profile.root))} && {assign} {shlex.quote(sys.executable)} -m memvir pipeline "
            f"--profile {shlex.quote(str(profile.path))} --runs-root {shlex.quote(str(profile.runs_dir.parent))} "
            f"--run {shlex.quote(run.name)}")


# ----------------------------------------------------------------------------------------------------------------
# Chapters: executed on a profile's runs and report, then staged for the book
# ----------------------------------------------------------------------------------------------------------------


def known_values(profile):
    """Every value the pipeline can give a chapter, by parameter name (paths absolute; made relative later)."""
    values = {"profile": profile.path, "report_dir": profile.report_dir, "reference_dir": profile.reference_dir}
    if profile.compare == "table4":  # the Table-4 chapter reads this profile's report
        values["table4_dir"] = profile.report_dir
    if len(profile.groups) > 1 and "main" in profile.groups:  # a study: the study chapter reads its report
        values["study_dir"] = profile.report_dir
    values[f"{profile.name}_dir"] = profile.report_dir  # a chapter that reads several profiles names each so
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
        values["figure_dir"] = profile.report_dir / "figures"  # the report draws the t-SNE figures of book.tsne only
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
    if not chapters_dir.is_dir():
        what = "is not a folder" if chapters_dir.exists() else "does not exist"
        raise FileNotFoundError(f"--from {chapters_dir}: {what}; expected the folder of executed chapters (`make "
                                f"chapters` writes one)")
    wanted = [nb.name for nb in chapters(root)]
    missing = [n for n in wanted if not notebook_complete(chapters_dir / n) and chapters_dir.resolve() !=
               (Path(root) / "notebooks").resolve()]
    missing += [n for n in wanted if not (chapters_dir / n).is_file() and n not in missing]
    if missing:
        raise FileNotFoundError(f"{chapters_dir}: chapter(s) {missing} not executed; run `make chapters PROFILE=...` "
                                f"first, or `make book CHAPTERS_FROM=notebooks` for the committed notebooks")
    with atomic_folder(src, _check_staged, "--stage-book: the book's source folder") as tmp:
        (Path(tmp) / "chapters").mkdir()
        book = Path(root) / "book"
        for f in [*book.glob("*.yml"), *book.glob("*.md"), *book.glob("*.bib")]:
            shutil.copy(f, Path(tmp) / f.name)
        if (book / "_static").is_dir():  # the theme's extra CSS
            shutil.copytree(book / "_static", Path(tmp) / "_static")
        for n in wanted:
            shutil.copy(chapters_dir / n, Path(tmp) / "chapters" / n)
    log(f"book source: {len(wanted)} chapters from {chapters_dir} -> {src}")
    return src


def _check_staged(folder):
    """Refuse to replace a folder that stage_book did not write (no _toc.yml beside chapters/): it is the user's."""
    if not ((Path(folder) / "_toc.yml").is_file() and (Path(folder) / "chapters").is_dir()):
        raise ValueError(f"{folder}: holds files but is not a staged book (no _toc.yml and chapters/), and staging "
                         f"replaces the folder whole: choose another --stage-book folder (or move those files away)")


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
    from .experiment import build_splits
    from .pretrain import PRETRAINED_GLYPHS, pretrain_backbone
    from .resolve import resolve_config

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    seen, pretrained = set(), set()
    for row in profile.rows:
        cfg = resolve_config({k: v for k, v in row.params.items() if k != "resume"})
        key = (cfg.data_name, cfg.input_size, cfg.num_classes, cfg.instances_per_class, cfg.min_fonts,
               cfg.glyph_seed)
        if cfg.data_name == "glyphs" and key not in seen:
            seen.add(key)
            build_splits(cfg)  # renders into the cache, or reads it
            log(f"glyphs ready: {cfg.num_classes} classes x {cfg.instances_per_class} at {cfg.input_size} px")
        if cfg.pretrained == PRETRAINED_GLYPHS and (key, cfg.backbone) not in pretrained:
            pretrained.add((key, cfg.backbone))  # a backbone taught the other glyph classes, once (cached)
            log(f"pretrained backbone ready: {pretrain_backbone(cfg, log=log)}")


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
    parser.add_argument("--unfinished", action="store_true",
                        help="with --list-runs: only the runs not finished (make runs skips the rest unspawned)")
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
    if args.unfinished and not args.list_runs:
        print("error: --unfinished goes with --list-runs only", file=sys.stderr)
        return 1
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
            by_seed = sorted(profile.runs, key=lambda r: r.seed)  # Make starts a seed's rows together: whole pairs
            print("\n".join(r.name for r in by_seed if not (args.unfinished and run_finished(profile, r))))
        elif args.print_commands:
            print("\n".join(run_command(profile, r) for r in profile.runs if not run_finished(profile, r)))
        elif args.run:
            execute_run(profile, args.run, kernel=args.kernel, log=log)
        elif args.warm_data:
            warm_data(profile, log=log)
        elif args.chapters:
            execute_chapters(profile, args.chapters, only=args.only, kernel=args.kernel, log=log)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout is gone (`| head`): a listing ends quietly
        reader_gone()
        return SIGPIPE_STATUS
    except OSError as exc:  # ours name the file already; the system's (a full disk, a read-only folder) in one line
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # nbclient's execution errors (make sync): say which notebook failed, in one line
        if type(exc).__name__ in ("PapermillExecutionError", "CellExecutionError"):
            print(f"error: {getattr(exc, 'ename', '')}: {' '.join(str(getattr(exc, 'evalue', exc)).split())}",
                  file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
