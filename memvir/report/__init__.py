"""The results layer: tables and figures from run folders only (`python -m memvir report`), what the chapters read.

Results flow one way:

    results/runs/<profile>/<run>/     one folder per run (memvir/rundir.py), trained by memvir/pipeline.py
    results/report/<profile>/         runs.csv, evaluations.csv, tables (CSV and Markdown), figures (PNG and SVG);
                                      machine.csv: each run's wall time and CPU kernels, which no comparison reads
    results/reference/<profile>/      the same, committed: the report we made, that yours is compared with
    the book's chapters               read those tables and figures; they never write here

One job per file:

    runs.py       reading run folders: a row per run, the selections of a run's value (best, val, last)
    stats.py      paired comparisons, Holm's correction (one family definition for the whole book), verdicts
    tables.py     the official README's tables, paired and study tables, the paper's, the calibration rule
    figures.py    bars, learning and budget curves, the curriculum (PNG and SVG, fixed metadata)
    embedding.py  the mechanism's diagnostics and the t-SNE figures, from checkpoints
    reference.py  your report against the committed reference: bit for bit, then by the seeds
    build.py      the report assembled and written atomically, and its command line
    chapter.py    what a chapter takes: comparisons, one said in words, a table shown

The tables have the layout of the official README (Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.), values in
percent. Every name below is importable as `memvir.report.NAME`, as the chapters do.
"""
from .build import build_report, main
from .chapter import STYLES, comparisons, html_table, pick, said
from .embedding import (mechanism_comparisons, mechanism_diagnostics, tsne_epoch_choice, tsne_epochs_figure,
                        tsne_figures)
from .figures import bar_figure, curriculum_figure, curves_figure, learning_curves_figure, save_figure
from .reference import against_reference, against_reference_text, kernels_summary
from .runs import (MACHINE_COLUMNS, MACHINE_FILE, METRICS, SELECTION_MEANING, SELECTION_NAMES, SELECTIONS,
                   baselines_of, collect, selections, validation_choice, values_by_row)
from .stats import (COMPARISON_COLUMNS, HOLM_FAMILY, STUDY_METRICS, describe, holm, paired_comparison,
                    study_comparisons, verdict)
from .tables import (CALIBRATION_RULE, calibration_choice, formatted, markdown_table, paired_differences,
                     paired_from_runs, paper_results, paper_table, runs_table, study_table, table4_comparison,
                     table_from_runs)

__all__ = ["build_report", "main", "STYLES", "comparisons", "html_table", "pick", "said", "mechanism_comparisons",
           "mechanism_diagnostics", "tsne_epoch_choice", "tsne_epochs_figure", "tsne_figures", "bar_figure",
           "curriculum_figure", "curves_figure", "learning_curves_figure", "save_figure", "against_reference",
           "against_reference_text", "kernels_summary", "MACHINE_COLUMNS", "MACHINE_FILE", "METRICS",
           "SELECTION_MEANING", "SELECTION_NAMES", "SELECTIONS", "baselines_of", "collect", "selections",
           "validation_choice", "values_by_row", "COMPARISON_COLUMNS", "HOLM_FAMILY", "STUDY_METRICS", "describe",
           "holm", "paired_comparison", "study_comparisons", "verdict", "CALIBRATION_RULE", "calibration_choice",
           "formatted", "markdown_table", "paired_differences", "paired_from_runs", "paper_results", "paper_table",
           "runs_table", "study_table", "table4_comparison", "table_from_runs"]
