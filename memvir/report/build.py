"""The report of a profile, assembled and written (`python -m memvir report`): runs.csv, evaluations.csv,
machine.csv, the tables (CSV and tables.md), the figures, report.json; the folder written as a whole
(memvir.files.atomic_folder: a failure, a full disk included, leaves the previous report as it was).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from ..files import SIGPIPE_STATUS, atomic_folder, atomic_write, os_error_line, parse_bool, reader_gone
from ..profile import Profile, load_profile
from ..rundir import epoch_checkpoints, read_run
from .embedding import mechanism_comparisons, mechanism_diagnostics, tsne_epochs_figure, tsne_figures
from .figures import bar_figure, curriculum_figure, curves_figure, forest_figure, learning_curves_figure, save_figure
from .reference import against_reference
from .runs import (MACHINE_COLUMNS, MACHINE_FILE, METRICS, SELECTION_MEANING, collect, mixed, plateau_budget,
                   selections, validation_choice)
from .stats import COMPARISON_COLUMNS, HOLM_FAMILY, study_comparisons
from .rows import json_records, rules_and_headline, summary_head
from .tables import (CALIBRATION_RULE, calibration_choice, markdown_table, mechanism_table, paired_from_runs,
                     study_table, table4_comparison, table_from_runs)

__all__ = ["build_report", "rebuild_report", "main"]


def _study_markdown(comparisons, groups):
    md = ["## Study: each row minus its baseline, paired by seed", "",
          "Percentage points of the test classes. Δ: the mean of the per-seed differences with its 95% interval "
          "(Student's t, n - 1 degrees of freedom); p_holm: the two-sided paired t-test's p-value after Holm's "
          f"correction, whose family is {HOLM_FAMILY}; * where p_holm < 0.05; k/n: seeds where the row is higher. "
          "Selections: " + "; ".join(f"{s}, {SELECTION_MEANING[s]}" for s in dict.fromkeys(comparisons["selection"]))
          + ". Every comparison, R-Precision too: comparisons.csv.", ""]
    for group in groups:
        table = study_table(comparisons, group)
        md += [f"### Group `{group}`", "", markdown_table(table) if not table.empty else
               "No row of this group has a baseline: nothing to compare.", ""]
    return md


def _calibration_outcome(choice, profile):
    low, high = profile.calibrate
    chosen = choice[choice["chosen"]]
    if len(chosen):
        c = chosen.iloc[0]
        return f"**{c['row']}** is chosen ({c['note']}): mean best test Recall@1 {c['mean']:.2f}%."
    note = choice[choice["note"] != ""]
    closest = f" on {note.iloc[0]['row']}, the row closest to {(low + high) / 2:g}" if len(note) else ""
    return f"No row is chosen: knob 2 needed{closest}."


def _mechanism_markdown(compared):
    return ["## Mechanism: embedding diagnostics of the last checkpoints", "",
            "Each row minus its baseline, paired by seed, in the diagnostics' own units (fractions, not percent). "
            "Descriptive: no test is corrected for multiplicity here, and none decides anything (per run: "
            "diagnostics.csv; paired: mechanism.csv).", "", markdown_table(mechanism_table(compared)), ""]


def build_report(profile, out=None, partial=False, log=print, load=None):
    """Write runs.csv, evaluations.csv, the tables (CSV + tables.md) and the figures of a profile.

    What a profile's keys add: groups (a study): comparisons.csv (study_comparisons), a table per group in
    tables.md, figures/curves_<group> for every group named budgets*; calibrate: calibration.csv and its section
    (calibration_choice); a group named "mechanism": diagnostics.csv (its rows and their baselines, last
    checkpoints, mechanism_diagnostics) and mechanism.csv; book.tsne on a run with more than one epoch
    checkpoint: figures/tsne_epochs.

    report.json holds profile, config, table_value, selections, runs, expected_runs, partial, rows, baselines,
    seeds, data_name, description, and where the profile has them (flat records; NaN written as null):
        study: a record per line of comparisons.csv: group, row, baseline, metric, selection, pairs,
            baseline_mean, row_mean, diff_mean, diff_sd, ci_low, ci_high (percent), p, p_holm, significant,
            positive ("k/n"); holm_family: what a Holm family is, in words.
        calibration: {low, high, chosen (the row, or null), outcome (a sentence)}.
        mechanism: a record per line of mechanism.csv: row, baseline, quantity, pairs, baseline_mean, row_mean,
            diff_mean, ci_low, ci_high, p, positive (the diagnostics' units).

    Args:
        profile: a Profile or a name for load_profile.
        out: output folder (default: the profile's report_dir, results/report/<profile>).
        partial: report only the finished runs instead of failing on the first unfinished one.
        load: `load(folder, checkpoint)` -> a trained run, for the mechanism and the t-SNE figures
            (memvir.trained.load; `python -m memvir report` passes it).
    Returns:
        the output folder.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    final = Path(out) if out else profile.report_dir
    runs, evaluations = collect(profile, partial=partial)
    if runs.empty:
        raise ValueError(f"no finished run in {profile.runs_dir}: nothing to report")
    with atomic_folder(final, _check_report, "--out: the report's folder") as tmp:
        _write_report(profile, Path(tmp), runs, evaluations, log, _checkpoint_reader(load))
    log(f"report: {len(runs)} of {profile.expected_runs} runs -> {final}")
    for line in mixed(runs, profile):  # what the tables leave out or mix, one line each
        log(f"report: warning: {line}")
    return final


def rebuild_report(profile, folder, log=print):
    """Bring a report to the current format in place, from its own files, without the run folders; every number it
    holds stays as it is.

    The seeds ahead of each comparison become an integer column `ahead` (comparisons.csv, mechanism.csv and their
    records in report.json; the text "k/n" they replace is read once, here); a report without comparisons.csv (a
    profile without groups: every row with a baseline in one group "main") gets it from runs.csv, with its section
    of tables.md, as a build writes them; report.json gets the keys a build writes now (selections, the trusted
    selection, the rows' facts, the profile's rules and headline, evaluated on the comparisons); the forest figure
    is drawn again from comparisons.csv. The other files (runs.csv, the tables, the other figures) are kept byte
    for byte: runs.csv holds rounded values, so the files computed from unrounded ones are not computed again.
    For the committed references when the report's format changes: their run folders are not in git.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    profile = load_profile(profile) if not isinstance(profile, Profile) else profile
    folder = Path(folder)
    runs = pd.read_csv(folder / "runs.csv")
    old = json.loads((folder / "report.json").read_text())
    with atomic_folder(folder, _check_report, "the report's folder") as tmp:
        tmp = Path(tmp)
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        summary = summary_head(profile, runs)
        groups = profile.groups or ({"main": list(profile.baselines)} if profile.baselines else {})
        if (tmp / "comparisons.csv").is_file():
            _ahead_as_integer(tmp / "comparisons.csv")
            summary.update(study=[_ahead_record(r) for r in old["study"]], holm_family=old["holm_family"])
        elif groups or profile.contrasts:
            comparisons = study_comparisons(runs, groups, profile.baselines, profile.contrasts)
            write_csv(comparisons, tmp / "comparisons.csv", "%.6f")
            md = (tmp / "tables.md").read_text().split("\n")
            md += _study_markdown(comparisons, [*groups, *profile.contrasts])
            atomic_write(tmp / "tables.md", lambda fh: fh.write("\n".join(md)), mode="w")
            summary.update(study=json_records(comparisons, COMPARISON_COLUMNS), holm_family=HOLM_FAMILY)
        if "study" in summary:
            comparisons = pd.read_csv(tmp / "comparisons.csv")
            rules_and_headline(profile, comparisons, summary)
            lines = {**groups, **{k: [row for row, _ in v] for k, v in profile.contrasts.items()}}
            fig = forest_figure(comparisons, lines)
            save_figure(fig, tmp / "figures", "forest")
            plt.close(fig)
        for key in ("calibration", "plateau"):
            if key in old:
                summary[key] = old[key]
        if "mechanism" in old:
            _ahead_as_integer(tmp / "mechanism.csv")
            summary["mechanism"] = [_ahead_record(r) for r in old["mechanism"]]
        atomic_write(tmp / "report.json", lambda fh: fh.write(json.dumps(summary, indent=1) + "\n"), mode="w")
    log(f"report: {folder} brought to the current format from its own files ({len(runs)} runs)")
    return folder


def _ahead_record(record):
    """A comparison's record of an older report with its seeds ahead as an integer (`ahead` for "k/n" `positive`)."""
    if "positive" not in record:  # already in the current format
        return record
    out = {k: v for k, v in record.items() if k != "positive"}
    out["ahead"] = int(str(record["positive"]).split("/")[0])
    return out


def _ahead_as_integer(path):
    """Rewrite a CSV's "k/n" column `positive` as the integer column `ahead`, every other cell as it is (text)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "positive" in df:
        df["positive"] = [k.split("/")[0] for k in df["positive"]]
        df = df.rename(columns={"positive": "ahead"})
        write_csv(df, path)


def _check_report(folder):
    """Refuse to replace a folder that is not a memvir report (no report.json): it is the user's."""
    if not (Path(folder) / "report.json").is_file():
        raise ValueError(f"{folder}: holds files but no report.json, so it is not a memvir report; the report "
                         f"replaces its folder whole: choose another --out (or move those files away)")


def promote(out, reference):
    """Copy the report `out` over the committed reference, as a whole (atomic_folder)."""
    with atomic_folder(reference, _check_report, "the reference report's folder") as tmp:
        shutil.copytree(out, tmp, dirs_exist_ok=True)


def _checkpoint_reader(load):
    """`load`, or a stand-in that says in one line who has one (the results layer imports no training code)."""
    def missing(folder, checkpoint="last"):
        raise ValueError(f"{folder}: reading a checkpoint needs a loader; build the report with "
                         f"`python -m memvir report` or build_report(..., load=memvir.trained.load)")
    return load or missing


def _write_report(profile, out, runs, evaluations, log, load):
    """Every file of the report, into the (temporary) folder `out`."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_csv(runs[["row", "seed", "name", *MACHINE_COLUMNS]], out / MACHINE_FILE, "%.1f")
    runs = runs.drop(columns=MACHINE_COLUMNS)
    write_csv(runs, out / "runs.csv", "%.6f")
    write_csv(evaluations, out / "evaluations.csv", "%.6f")
    summary = summary_head(profile, runs)
    md = _main_tables(profile, runs, out) + _study_sections(profile, runs, evaluations, out, summary, load)
    atomic_write(out / "tables.md", lambda fh: fh.write("\n".join(md)), mode="w")
    _figures(profile, runs, evaluations, out / "figures", log, load)
    atomic_write(out / "report.json", lambda fh: fh.write(json.dumps(summary, indent=1) + "\n"), mode="w")


def write_csv(df, path, float_format=None):
    """Write a table as CSV, atomically (memvir.files.atomic_write)."""
    atomic_write(path, lambda fh: df.to_csv(fh, index=False, float_format=float_format), mode="w")


def _main_tables(profile, runs, out):
    """The official layout's tables and the paired ones under each selection, Table 4, a search's choice."""
    md = [f"# Results: profile `{profile.name}`", "", profile.description, "",
          f"Tables use the **{profile.table_value}** value of each run ({SELECTION_MEANING[profile.table_value]}); "
          f"values in percent, seeds {sorted(set(runs['seed']))}. Each heading says which value its table uses.", ""]
    for selection in selections(runs):
        for metric, title in METRICS.items():
            table = table_from_runs(runs, metric, selection)
            stem = (f"table_{metric.replace('@', '_at_')}"
                    + ("" if selection == profile.table_value else f"_{selection}"))
            write_csv(table, out / f"{stem}.csv")
            md += [f"## {title} ({selection})", "", markdown_table(table), ""]
        for metric, title in METRICS.items():
            paired = paired_from_runs(runs, metric, selection)
            if not paired.empty:
                write_csv(paired, out / f"paired_{metric.replace('@', '_at_')}_{selection}.csv")
                md += [f"## {title} ({selection}): MemVir minus baseline, paired by seed", "",
                       markdown_table(paired), ""]
    if profile.compare == "table4":  # the paper's Table 4 beside ours
        table = table4_comparison(runs, profile.table_value)
        write_csv(table, out / "table4.csv")
        md += [f"## Table 4 ({profile.table_value}): ours on glyphs beside the paper's Recall@1", "",
               markdown_table(table), ""]
    if profile.select:  # a search profile: the hyper-parameters chosen on the validation classes
        choice = validation_choice(profile)
        write_csv(choice, out / "selection.csv")
        md += [f"## The choice: best validation {METRICS[profile.select]} per loss", "", markdown_table(choice), ""]
    return md


def _study_sections(profile, runs, evaluations, out, summary, load):
    """A study's comparisons (groups; a profile with baselines and no groups: one group "main" of its rows with a
    baseline), its rules and its headline, a calibration's choice, a converged budget, the mechanism's diagnostics:
    files, sections and their records in `summary` (report.json)."""
    md = []
    groups = profile.groups or ({"main": list(profile.baselines)} if profile.baselines else {})
    if groups or profile.contrasts:  # each row against its baseline (or the other row of a contrast), Holm
        comparisons = study_comparisons(runs, groups, profile.baselines, profile.contrasts)
        write_csv(comparisons, out / "comparisons.csv", "%.6f")
        md += _study_markdown(comparisons, [*groups, *profile.contrasts])
        summary.update(study=json_records(comparisons, COMPARISON_COLUMNS), holm_family=HOLM_FAMILY)
        rules_and_headline(profile, comparisons, summary)
    if profile.calibrate:
        choice = calibration_choice(profile, runs)
        write_csv(choice, out / "calibration.csv", "%.4f")
        low, high = profile.calibrate
        outcome = _calibration_outcome(choice, profile)
        md += ["## Calibration: the rule's choice", "",
               f"The rule ({profile.path.name}): " + CALIBRATION_RULE.format(low=low, high=high,
                                                                            middle=(low + high) / 2) + ". " + outcome,
               "", markdown_table(choice), ""]
        picked = choice.loc[choice["chosen"], "row"]
        summary["calibration"] = {"low": low, "high": high, "chosen": picked.iloc[0] if len(picked) else None,
                                  "outcome": outcome}
    if profile.plateau:  # a budget profile: where each row stops improving on the validation classes
        rule = profile.plateau
        budget = plateau_budget(evaluations, [r.label for r in profile.rows], **rule)
        write_csv(budget, out / "plateau.csv", "%.2f")
        md += ["## The converged budget", "", f"The rule ({profile.path.name}): the first evaluation epoch with "
               f"{rule['tail']} epochs of evaluations after it that no later evaluation beats by {rule['min_gain']} "
               f"points or more of validation {METRICS[rule['metric']]} (mean over seeds).", "",
               markdown_table(budget), ""]
        summary["plateau"] = json_records(budget, list(budget.columns))
    if "mechanism" in profile.groups:
        rows = set(profile.groups["mechanism"])
        rows |= {profile.baselines[r] for r in rows if r in profile.baselines}
        diagnostics = mechanism_diagnostics(profile, runs, rows, load)
        write_csv(diagnostics, out / "diagnostics.csv", "%.6f")
        compared = mechanism_comparisons(diagnostics, profile.baselines)
        write_csv(compared, out / "mechanism.csv", "%.6f")
        if not compared.empty:
            md += _mechanism_markdown(compared)
            summary["mechanism"] = json_records(compared, list(compared.columns))
    return md


def _figures(profile, runs, evaluations, folder, log, load):
    """Bars, learning curves, budget curves, the curriculum and the t-SNE figures (chapter 07 only reads them)."""
    import matplotlib.pyplot as plt

    figures = {"bars": bar_figure(runs, profile.table_value), "learning_curves": learning_curves_figure(evaluations,
                                                                                                          runs)}
    for group, members in profile.groups.items():
        if group.startswith("budgets"):  # the training-budget questions: how the gap moves with the epochs
            figures[f"curves_{re.sub(r'[^A-Za-z0-9_-]+', '_', group)}"] = curves_figure(evaluations, members)
    if profile.plateau:  # the validation curve the budget is read from, beside the test one
        metric = profile.plateau["metric"]
        figures["curves_plateau"] = curves_figure(evaluations, [r.label for r in profile.rows],
                                                  (f"val_{metric}", metric))
    steps, C, B = {}, None, None
    for r in profile.rows:
        run = profile.run(r.label)
        if parse_bool(r.params.get("memvir", False)) and run.name in set(runs["name"]):
            config, _, s = read_run(run.folder)
            if s is not None:
                steps[r.label] = s
                C, B = C or s["num_classes_in_use"].min(), B or config.get("batch_size")
    if steps:
        figures["curriculum"] = curriculum_figure(steps, C, B)
    if (folder.parent / "comparisons.csv").is_file():  # the verdict as a picture, drawn from the file itself
        groups = profile.groups or {"main": list(profile.baselines)}
        lines = {**groups, **{k: [row for row, _ in v] for k, v in profile.contrasts.items()}}
        figures["forest"] = forest_figure(pd.read_csv(folder.parent / "comparisons.csv"), lines)
    for stem, fig in figures.items():
        save_figure(fig, folder, stem)
        plt.close(fig)
    if "tsne" in profile.book:
        run = profile.run(profile.book["tsne"])
        base = profile.run(profile.baselines[run.row])
        if not all(epoch_checkpoints(r.folder / "checkpoints") for r in (run, base)):
            log(f"report: no t-SNE figures: {run.folder} or {base.folder} has no checkpoint")
        elif {run.name, base.name} <= set(runs["name"]):
            tsne_figures(load(run.folder, "last"), load(base.folder, "last"), folder)
        if len(epoch_checkpoints(run.folder / "checkpoints")) > 1 and run.name in set(runs["name"]):
            tsne_epochs_figure(run.folder, folder, load)  # a run that kept its epochs (max_to_keep 0)


def main(argv=None, load=None):
    """`python -m memvir report --profile P`: write the tables and figures of a profile's finished runs.

    `load` reads the checkpoints of the mechanism and the t-SNE figures: memvir.trained.main passes it."""
    parser = argparse.ArgumentParser(prog="python -m memvir report", description=__doc__.split("\n", 1)[0],
                                     epilog="Writes results/report/<profile>/: runs.csv, tables, figures, and says "
                                            "whether it equals the committed results/reference/<profile>/. The "
                                            "runs themselves: python -m memvir pipeline.")
    parser.add_argument("--profile", default="cpu", help="configs/<name>.yml or a path to a profile (default cpu)")
    parser.add_argument("--runs-root", default=None, help="folder of run folders (default results/runs)")
    parser.add_argument("--report-root", default=None, help="folder of reports (default results/report)")
    parser.add_argument("--out", default=None, help="report folder (default <report-root>/<profile>)")
    parser.add_argument("--partial", action="store_true", help="report the finished runs only")
    parser.add_argument("--rebuild", metavar="FOLDER", default=None,
                        help="rebuild the report in FOLDER (e.g. results/reference/<profile>) from its own runs.csv, "
                             "evaluations.csv and machine.csv, in the current format, without the run folders")
    parser.add_argument("--answer", action="store_true",
                        help="write the book's answer (book/intro.md, README.md, book/_static/answer.png) from the "
                             "committed reports of every profile that declares a headline")
    parser.add_argument("--promote", action="store_true",
                        help="then copy the report over the committed reference (results/reference/<profile>): "
                             "for the maintainers, after checking it; `make reproduce` never does this")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        profile = load_profile(args.profile, args.runs_root, args.report_root)
        if args.answer:
            from .answer import write_answer

            write_answer(profile.root, log=lambda s: print(s, flush=True))
            return 0
        if args.rebuild:
            rebuild_report(profile, args.rebuild, log=lambda s: print(s, flush=True))
            return 0
        out = build_report(profile, args.out, partial=args.partial, log=lambda s: print(s, flush=True), load=load)
        reference = profile.reference_dir
        if args.promote:
            promote(out, reference)
            print(f"report: promoted to the reference {reference}")
        elif (reference / "report.json").is_file():  # say, never silently, whether the reference was reproduced
            result = against_reference(out, reference)
            changed = [*result["files"]["different"], *result["files"]["missing"], *result["files"]["extra"]]
            print(f"report: equal to the committed reference {reference} bit for bit ({len(result['files']['same'])}"
                  f" files; {result['kernels']['yours']})" if result["equal"] else
                  f"report: differs from the committed reference {reference} in {len(changed)} files ({changed[0]}"
                  f"{', ...' if len(changed) > 1 else ''}); yours: {result['kernels']['yours']}, the reference: "
                  f"{result['kernels']['ours']}. The results chapter's 'Your run against ours' compares them")
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout is gone (`| head`): a listing ends quietly
        reader_gone()
        return SIGPIPE_STATUS
    except OSError as exc:  # ours name the file already; the system's (a full disk, a read-only --out) in one line
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0
