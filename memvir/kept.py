"""Finished runs kept in git: their small files under results/kept/<profile>/<run>/, no checkpoints.

    python -m memvir keep --profile P             copy every finished run's small files into results/kept/P/
    python -m memvir keep --profile P --restore   lay them back into the run folders that lack a finished run

A long profile (hours of CPU) spans sessions, and a later session may start on a fresh machine without
results/runs/. What makes a run count as finished and reportable is small: its config.json (the flags and kernels),
its metrics.json (every evaluation, the best and the last) and the executed training notebook (the pipeline's proof
that it ran to the end). Kept in git, they let the next machine skip the run and report it; checkpoints stay
behind (a kept run cannot be resumed, only reported; its t-SNE and embedding figures need a retraining).
"""
from __future__ import annotations

import argparse
import shutil
import sys

from .files import os_error_line
from .pipeline import run_finished
from .profile import load_profile
from .rundir import read_run, run_state

__all__ = ["KEPT_FILES", "kept_folder", "keep", "restore", "main"]

KEPT_FILES = ("config.json", "metrics.json")  # and the profile's executed training notebook


def kept_folder(profile, run):
    """Where `run`'s small files are kept: <repository>/results/kept/<profile>/<run name>/."""
    return profile.root / "results" / "kept" / profile.name / run.name


def _files(profile):
    return (*KEPT_FILES, profile.notebook.name)


def keep(profile, log=print):
    """Copy each finished run's small files into its kept folder (again only when they changed). Returns the count.

    Only runs that the pipeline counts as finished are kept (memvir.pipeline.run_finished: metrics.json says so, the
    flags are the profile's, the notebook ran to the end), so an unfinished or foreign folder never lands in git.
    """
    count = 0
    for run in profile.runs:
        if not run_finished(profile, run):
            continue
        target = kept_folder(profile, run)
        target.mkdir(parents=True, exist_ok=True)
        for name in _files(profile):
            source = run.folder / name
            if not (target / name).exists() or (target / name).read_bytes() != source.read_bytes():
                shutil.copyfile(source, target / name)
        count += 1
    log(f"kept {count} finished run(s) of {profile.name} in {profile.root / 'results' / 'kept' / profile.name}")
    return count


def restore(profile, log=print):
    """Lay kept runs back into the profile's run folders that hold no finished run. Returns the count.

    A run folder that exists and is finished is left as it is (the machine's own copy wins); one that exists but is
    unfinished is left too, with a line: its checkpoints may be newer work, and a finished copy beside them would
    be mixed with them.
    """
    count = 0
    for run in profile.runs:
        source = kept_folder(profile, run)
        if not (source / "metrics.json").is_file():
            continue
        read_run(source)  # a damaged kept copy: one line naming its file (ValueError)
        state = run_state(run.folder)
        if state == "finished":
            continue
        if state != "missing":
            log(f"not restored {run.name}: {run.folder} holds an unfinished run (resume it, or remove it to take "
                f"the kept copy)")
            continue
        run.folder.mkdir(parents=True, exist_ok=True)
        for name in _files(profile):
            shutil.copyfile(source / name, run.folder / name)
        count += 1
    log(f"restored {count} kept run(s) of {profile.name} into {profile.runs_dir}")
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m memvir keep", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True, help="configs/<name>.yml or a path to a profile")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--restore", action="store_true", help="lay the kept runs back into the run folders")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.runs_root)
        (restore if args.restore else keep)(profile, log=lambda s: print(s, flush=True))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0
