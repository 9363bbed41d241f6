"""Reading run folders into tables: a row per run (collect), the selections of a run's value, the choice of a search,
the budget at which a row stops improving (plateau_budget), the runs a profile reuses from another's reference
(reused).

What a value of a run is: SELECTIONS (best test value, test value at the best validation epoch, last), named in
SELECTION_NAMES and explained in SELECTION_MEANING, the one place the three are defined. Everything here reads
only the files of the run folder's format (memvir/rundir/); nothing scrapes notebooks.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from ..files import os_error_line
from ..profile import Profile, check_run_folder, load_profile
from ..rundir import KERNELS_KEY, read_metrics, read_run, run_state

__all__ = ["METRICS", "SELECTIONS", "SELECTION_NAMES", "SELECTION_MEANING", "MACHINE_COLUMNS", "MACHINE_FILE",
           "collect", "reused", "mixed", "selections", "values_by_row", "baselines_of", "validation_choice",
           "plateau_budget"]


METRICS = {"recall@1": "Recall@1", "r_precision": "RP", "map_at_r": "MAP@R"}  # key in metrics.json -> column name


SELECTIONS = ("best", "val", "last")  # which evaluation gives a run's value: best test, best validation, last


SELECTION_NAMES = {"best": "best test epoch", "val": "best validation epoch",
                   "last": "last epoch"}  # how a run's value was picked, in words ("best": as the official code)


SELECTION_MEANING = {"best": "the best test value over the evaluations, as the official code records it",
                     "val": "the test value at the evaluation with the best validation value of the same metric",
                     "last": "the test value at the last evaluation"}


# What the machine did, per run: its clock and its CPU kernels (memvir.portable). Never a result: the report writes
# them to MACHINE_FILE, which no comparison of two reports reads, so that a bitwise reproduction is one.
MACHINE_COLUMNS = ["wall_time", "kernels", "cpu_capability", "machine"]


MACHINE_FILE = "machine.csv"


def _val_selected(evaluations, key):
    """The test value of `key` at the evaluation whose validation `key` is highest (the earliest of ties), its epoch.

    (NaN, NaN) when no evaluation has a validation `key` (a run trained without val_classes).
    """
    chosen, top = None, -math.inf
    for e in evaluations:
        v = (e.get("val") or {}).get(key)
        if v is not None and math.isfinite(float(v)) and float(v) > top:  # strictly higher: the earliest of ties
            chosen, top = e, float(v)
    if chosen is None:
        return np.nan, np.nan
    return float(chosen.get(key, np.nan)), int(chosen["epoch"])


def collect(profile, partial=False):
    """Read every run of a profile into one table: a row per run, its value of each metric under each selection.

    A selection (SELECTIONS) says which evaluation of a run gives its value: "best" the best test value over
    training (what the official code records), "val" the test value at the evaluation with the best validation
    value of the same metric (the earliest of ties; NaN for a run without validation classes), "last" the last.

    Args:
        profile: a Profile (or a name for load_profile).
        partial: False: every run must be finished (else ValueError naming the first one that is not);
            True: leave out runs that are not finished.
    Returns:
        (runs, evaluations): runs has columns row, baseline, seed, name, epochs_evaluated and best_<metric>,
        best_<metric>_epoch, last_<metric>, val_<metric>, val_<metric>_epoch for every metric of METRICS
        (fractions, test classes), then MACHINE_COLUMNS (what the machine did: never a result); evaluations has
        row, seed, name, epoch, step, the test metrics and the validation ones as val_<metric> (NaN when absent),
        one line per evaluation.
    """
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    baselines = profile.baselines
    rows, evals, seen = [], [], {}
    for run in profile.runs:
        folder = run.folder
        state = run_state(folder)
        if state != "missing":  # damaged: never taken for unfinished (or finished), whatever --partial says
            try:
                read_metrics(folder)
            except ValueError as exc:
                raise ValueError(f"{exc}; the run's checkpoint holds its history: its training command (python -m "
                                 f"memvir pipeline --profile {profile.path} --run {run.name}, with the same "
                                 f"--runs-root) rebuilds the file") from None
        if state != "finished":
            if partial:
                continue
            raise ValueError(f"run {folder} is {state} (metrics.json 'finished' is not true): run `make runs "
                             f"PROFILE={profile.name}` first, or pass --partial to report the finished ones")
        _check_own_files(folder, seen)
        check_run_folder(run)  # made with the profile's flags, or refused (as the pipeline refuses to skip it)
        config, metrics, _ = read_run(folder)
        if int(config.get("seed", run.seed)) != run.seed:
            raise ValueError(f"{folder / 'config.json'}: seed {config.get('seed')} but the folder is for seed "
                             f"{run.seed}")
        kernels = config.get(KERNELS_KEY) or {}  # a run made before kernels were recorded: unknown
        line = {"row": run.row, "baseline": baselines.get(run.row, ""), "seed": run.seed, "name": run.name,
                "epochs_evaluated": metrics["last"].get("epoch"), "wall_time": metrics["last"].get("wall_time"),
                "kernels": kernels.get("mode", "unrecorded"), "cpu_capability": kernels.get("cpu_capability", ""),
                "machine": kernels.get("machine", "")}
        for key in METRICS:
            best = metrics["best"].get(key)
            if best is None or key not in metrics["last"]:
                raise ValueError(f"{folder / 'metrics.json'}: no {key!r} in 'best' and 'last'")
            line[f"best_{key}"] = float(best["value"])
            line[f"best_{key}_epoch"] = int(best["epoch"])
            line[f"last_{key}"] = float(metrics["last"][key])
            line[f"val_{key}"], line[f"val_{key}_epoch"] = _val_selected(metrics["evaluations"], key)
        rows.append(line)
        for e in metrics["evaluations"]:
            val = e.get("val") or {}
            evals.append({"row": run.row, "seed": run.seed, "name": run.name, "epoch": e["epoch"],
                          "step": e.get("step"),
                          **{k: e[k] for k in e if k.startswith("recall@") or k in METRICS},
                          **{f"val_{k}": np.nan for k in METRICS},
                          **{f"val_{k}": float(val[k]) for k in val if k.startswith("recall@") or k in METRICS}})
    columns = ["row", "baseline", "seed", "name", "epochs_evaluated"]
    for key in METRICS:
        columns += [f"best_{key}", f"best_{key}_epoch", f"last_{key}", f"val_{key}", f"val_{key}_epoch"]
    runs, evaluations = pd.DataFrame(rows, columns=columns + MACHINE_COLUMNS), pd.DataFrame(evals)
    if not profile.reuse:
        return runs, evaluations
    more_runs, more_evals = reused(profile)
    order = {row.label: i for i, row in enumerate(profile.rows)}  # row by row, seed by seed, as profile.runs

    def in_order(df):
        df = df.assign(_order=df["row"].map(order)).sort_values(["_order", "seed"], kind="stable")
        return df.drop(columns="_order").reset_index(drop=True)

    return (in_order(pd.concat([runs, more_runs[runs.columns]], ignore_index=True)),
            in_order(pd.concat([evaluations, more_evals], ignore_index=True)))


def reused(profile):
    """The runs a profile takes from another profile's committed reference (its `reuse` key), as collect's lines.

    For each row and seed of `reuse`, the other profile's run with the same seed and exactly the same flags (else
    ValueError: a run is reused only where it is the run this profile would make) is read from that profile's
    results/reference/ folder: its line of runs.csv (values rounded to 6 decimals there), its evaluations and its
    machine.csv line, under this profile's row label and baseline. Its kernels say where it came from, so that
    `mixed` names the pairs whose two runs were made on other kernels (earlier caps, another machine).
    """
    reuse = profile.reuse
    other = load_profile(profile.path.parent / f"{reuse['profile']}.yml")  # a profile of the same repository
    folder = other.reference_dir
    try:
        runs, evals, machine = (pd.read_csv(folder / f) for f in ("runs.csv", "evaluations.csv", MACHINE_FILE))
    except OSError as exc:
        raise ValueError(f"{profile.path}: reuse reads PROFILE={other.name}'s committed reference, and "
                         f"{os_error_line(exc)}") from None
    labels = {row.label: row for row in profile.rows}
    lines, kept = [], []
    for label in reuse["rows"]:
        for seed in reuse["seeds"]:
            params = dict(labels[label].params, seed=seed)
            run = next((r for r in other.runs if r.params == params), None)
            line = runs[runs["name"] == run.name] if run else runs.iloc[:0]
            if run is None or len(line) != 1 or line["row"].iloc[0] != run.row:
                raise ValueError(f"{profile.path}: reuse: PROFILE={other.name} has no finished run of row {label!r} "
                                 f"at seed {seed} with the same flags in {folder / 'runs.csv'}; expected one, or "
                                 f"drop that seed from reuse.seeds")
            made = machine[machine["name"] == run.name]  # what the machine did: empty in a report without it
            made = made.iloc[0] if len(made) else {"wall_time": np.nan, "kernels": "unrecorded",
                                                   "cpu_capability": "", "machine": ""}
            lines.append(dict(line.iloc[0], row=label, baseline=profile.baselines.get(label, ""),
                              wall_time=made["wall_time"], cpu_capability=made["cpu_capability"],
                              machine=made["machine"], kernels=f"{made['kernels']} (PROFILE={other.name}'s reference)"))
            kept.append(evals[evals["name"] == run.name].assign(row=label))
    return pd.DataFrame(lines), pd.concat(kept, ignore_index=True)


def _check_own_files(folder, seen):
    """Refuse a run whose config.json or metrics.json is not its own: a link (to another seed's, say), or the file
    of a run already read. memvir.train writes both in place (memvir.files.atomic_write), never as links."""
    for name in ("config.json", "metrics.json"):
        path = folder / name
        st = os.stat(path)  # through a link: the file that would be read
        key = (st.st_dev, st.st_ino)  # a hard link is the same file as well
        if os.path.islink(path) or key in seen:
            other = f"the {name} of {seen[key]}" if key in seen else os.path.realpath(path)
            raise ValueError(f"{path}: is a link to {other}, not this run's own file; expected the file memvir.train "
                             f"wrote there (a run is reported once, as itself)")
        seen[key] = folder


def mixed(runs, profile):
    """What the report mixes or leaves out, one line each: unfinished runs left out (--partial), rows compared with
    their baselines over other seeds, runs on more than one kind of CPU kernels (memvir.portable)."""
    lines = []
    done = set(zip(runs["row"], runs["seed"]))
    left = [r.name for r in profile.runs if (r.row, r.seed) not in done]
    if left:
        lines.append(f"left out {len(left)} unfinished run(s) (--partial): {', '.join(left[:3])}"
                     f"{' ...' if len(left) > 3 else ''}")
    seeds = runs.groupby("row")["seed"].apply(lambda s: sorted(int(x) for x in s)).to_dict()
    for row, base in baselines_of(runs).items():
        if row in seeds and base in seeds and seeds[row] != seeds[base]:
            common = sorted(set(seeds[row]) & set(seeds[base]))
            lines.append(f"{row} has seeds {seeds[row]}, its baseline {base} {seeds[base]}: its Diff. is over the "
                         f"seeds both have, {common}")
    kinds = runs["kernels"].value_counts()
    if len(kinds) > 1:
        lines.append("the runs mix CPU kernels (" + ", ".join(f"{k}: {n}" for k, n in kinds.items())
                     + "): their floats differ in the last bits, so comparisons pair two machines' rounding "
                       "(machine.csv says which run is which)")
        kernels = {(r, s): k for r, s, k in zip(runs["row"], runs["seed"], runs["kernels"])}  # (row, seed) -> kind
        for row, other in [*baselines_of(runs).items(), *(p for ps in profile.contrasts.values() for p in ps)]:
            two = sorted(int(s) for (r, s), kind in kernels.items()
                         if r == row and (other, s) in kernels and kernels[other, s] != kind)  # a pair, two kinds
            if two:
                lines.append(f"{row} against {other}: the pairs of seeds {two} were made on two kinds of kernels")
    return lines


def selections(runs):
    """The selections a report can use: best, val (only when every run has validation metrics) and last."""
    has_val = all(f"val_{k}" in runs and np.isfinite(runs[f"val_{k}"].astype(float)).all() for k in METRICS)
    return [s for s in SELECTIONS if s != "val" or (has_val and len(runs))]


def values_by_row(runs, metric, value):
    if metric not in METRICS or value not in SELECTIONS:
        raise ValueError(f"metric must be one of {list(METRICS)} and value one of {SELECTIONS}, got {metric!r}, "
                         f"{value!r}")
    col = f"{value}_{metric}"
    out = {}
    for row, group in runs.groupby("row", sort=False):
        out[row] = dict(zip(group["seed"].astype(int), 100.0 * group[col].astype(float)))
    return out


def baselines_of(runs):
    pairs = runs[["row", "baseline"]].drop_duplicates()
    return {r: b for r, b in zip(pairs["row"], pairs["baseline"]) if isinstance(b, str) and b}


def validation_choice(profile, metric=None):
    """For each loss of a search profile, its rows ranked by `metric` on the validation classes; the best chosen.

    Reads only the validation scores ("val" of the last evaluation in metrics.json), never the test classes', so
    the choice cannot be tuned on what the tables report. Rows are grouped by their (canonical) loss; a row's
    value is the mean over its seeds.

    Returns:
        DataFrame: loss, row, scale, margin, val_<metric> (percent), chosen (the best of its loss).
    """
    from ..registry import canonical_loss_name

    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    metric = metric or profile.select
    records = []
    for row in profile.rows:
        values = []
        for run in (r for r in profile.runs if r.row == row.label):
            if run_state(run.folder) != "finished":
                raise ValueError(f"run {run.folder} is not finished: run `make runs PROFILE={profile.name}` first")
            val = (read_run(run.folder)[1]["last"] or {}).get("val") or {}
            if val.get(metric) is None:
                raise ValueError(f"{run.folder / 'metrics.json'}: the last evaluation has no val {metric!r} (was "
                                 f"it trained with val_classes > 0?)")
            values.append(100 * float(val[metric]))
        records.append({"loss": canonical_loss_name(row.params["loss"]), "row": row.label,
                        "scale": row.params.get("scale"), "margin": row.params.get("margin"),
                        f"val_{metric}": round(float(np.mean(values)), 2)})
    df = pd.DataFrame(records)
    best = df.groupby("loss", sort=False)[f"val_{metric}"].transform("max")
    df["chosen"] = df[f"val_{metric}"] == best
    return df


def plateau_budget(evaluations, rows, metric, min_gain, tail):
    """The converged budget of each row: the first epoch that no later evaluation beats by `min_gain` points.

    v(e) is the mean over seeds of the validation `metric` (percent) at evaluation epoch e. B is the smallest e
    with at least `tail` epochs of evaluations after it such that max over e' > e of v(e') - v(e) < min_gain.
    Only the validation classes are read.

    Args:
        evaluations: collect's evaluations (val_<metric> columns).
        rows: row labels, in order.
    Returns:
        DataFrame: row, budget (NaN when no epoch qualifies: train longer), val_<metric> at the budget, best_later
        (the highest later v), last_epoch, seeds.
    """
    col, records = f"val_{metric}", []
    for row in rows:
        e = evaluations[evaluations["row"] == row]
        v = (100 * e[col].astype(float)).groupby(e["epoch"]).mean().sort_index()  # (evaluations,) v(e)
        epochs, values = v.index.to_numpy(), v.to_numpy()
        last = int(epochs[-1]) if len(epochs) else 0
        budget = at = later = np.nan
        for i, epoch in enumerate(epochs):
            if epoch + tail > last:
                break
            best_later = values[i + 1:].max()
            if best_later - values[i] < min_gain:
                budget, at, later = int(epoch), round(float(values[i]), 2), round(float(best_later), 2)
                break
        records.append({"row": row, "budget": budget, col: at, "best_later": later, "last_epoch": last,
                        "seeds": int(e["seed"].nunique()) if len(e) else 0})
    return pd.DataFrame(records)
