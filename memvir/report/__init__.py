"""The results layer: tables and figures from run folders only (`python -m memvir report`), what the chapters read.

Results flow one way:

    results/runs/<profile>/<run>/     one folder per run (memvir/rundir/), trained by memvir/pipeline.py
    results/report/<profile>/         runs.csv, evaluations.csv, tables (CSV and Markdown), figures (PNG and SVG);
                                      machine.csv: each run's wall time and CPU kernels, which no comparison reads
    results/reference/<profile>/      the same, committed: the report we made, that yours is compared with
    the book's chapters               read those tables and figures; they never write here

One job per file:

    runs.py       reading run folders: a row per run, the selections of a run's value (best, val, last)
    stats.py      paired comparisons, Holm's correction (one family definition for the whole book)
    rows.py       what a profile's rows are (loss, memory, budget, ...) and report.json's records of them
    verdicts.py   what a report decides: the trusted selection, sides and tallies, what a result could have
                  detected, the rules a profile declares, said in words
    tables.py     the official README's tables, paired and study tables, the paper's, the calibration rule
    figures.py    bars, learning and budget curves, the curriculum (PNG and SVG, fixed metadata)
    embedding.py  the mechanism's diagnostics and the t-SNE figures, from checkpoints
    reference.py  your report against the committed reference: bit for bit, then by the seeds
    answer.py     the book's answer on its first page, across the committed reports' regimes
    validation.py how well the validation classes rank and pick like the test classes
    build.py      the report assembled and written atomically, and its command line
    chapter.py    what a chapter takes: comparisons, one said in words, a table shown

The tables have the layout of the official README (Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.), values in
percent. Every name below is importable as `memvir.report.NAME`, as the chapters do.
"""
from . import answer, build, chapter, embedding, figures, reference, rows, runs, stats, tables, validation, verdicts
from .build import *  # noqa: F401,F403  (each room's __all__: the public names, importable from here)
from .chapter import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .figures import *  # noqa: F401,F403
from .reference import *  # noqa: F401,F403
from .rows import *  # noqa: F401,F403
from .runs import *  # noqa: F401,F403
from .stats import *  # noqa: F401,F403
from .tables import *  # noqa: F401,F403
from .verdicts import *  # noqa: F401,F403
from .answer import *  # noqa: F401,F403
from .validation import *  # noqa: F401,F403

__all__ = [*runs.__all__, *stats.__all__, *tables.__all__, *figures.__all__, *embedding.__all__,
           *reference.__all__, *rows.__all__, *build.__all__, *chapter.__all__, *verdicts.__all__,
           *answer.__all__, *validation.__all__]
