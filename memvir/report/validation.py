"""How well the validation classes stand in for the test classes: do they rank a search's rows as the test classes
do, and do they pick the epoch the test classes would (issue 31, part 1: "a validation set that ranks like the
test").

Read from a report's files (runs.csv and evaluations.csv), so that it measures a committed report as well as a fresh
one: the validation value of a run is that of its last evaluation, as a search chooses
(memvir.report.runs.validation_choice); the epoch validation picks is the one runs.csv holds (memvir.report.runs).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["validation_agreement"]


def validation_agreement(runs, evaluations, groups, metric="map_at_r"):
    """Per group of rows (a search's loss), how the validation classes agree with the test classes.

    Args:
        runs: a report's runs (runs.csv: best_<metric>, best_<metric>_epoch, val_<metric>, val_<metric>_epoch per
            run, the selections memvir.report.runs.collect made), fractions.
        evaluations: a report's evaluations (row, seed, epoch, <metric>, val_<metric>), fractions.
        groups: {group: [row labels]}, e.g. a search's rows by loss.
        metric: recall@1, r_precision or map_at_r.
    Returns:
        DataFrame, a line per group (percent and points):
            rows              how many rows the group ranks
            spearman          rank correlation, across the rows, of the mean (over seeds) last-evaluation
                              validation and test values
            chosen, test_best the row with the best mean validation value, and with the best mean test value
            regret            the test value of test_best minus chosen's: what the choice costs on test (points)
            epoch_same        share of the runs whose best validation epoch is also their best test epoch
            epoch_cost        mean over runs of (best test value) - (test value at the best validation epoch)
    """
    from scipy import stats  # deferred, as in the report's other rooms: scipy.stats is a third of its import time

    col, val = metric, f"val_{metric}"
    records = []
    for group, members in groups.items():
        e = evaluations[evaluations["row"].isin(members)].sort_values(["row", "seed", "epoch"], kind="stable")
        if e.empty:
            raise ValueError(f"group {group!r}: none of its rows {members} is in the evaluations")
        last = e.groupby(["row", "seed"], sort=False).tail(1)  # (runs,) each run's last evaluation
        means = 100 * last.groupby("row", sort=False)[[val, col]].mean()  # (rows, 2)
        r = runs[runs["row"].isin(members)]  # (runs,) the best test and the validation-picked epoch, as collected
        same = r[f"val_{metric}_epoch"] == r[f"best_{metric}_epoch"]
        cost = 100 * (r[f"best_{metric}"] - r[f"val_{metric}"])
        rho = stats.spearmanr(means[val], means[col]).statistic if len(means) > 2 else np.nan
        chosen, test_best = means[val].idxmax(), means[col].idxmax()
        records.append({"group": group, "rows": len(means), "spearman": round(float(rho), 4),
                        "chosen": chosen, "test_best": test_best,
                        "regret": round(float(means.loc[test_best, col] - means.loc[chosen, col]), 2),
                        "epoch_same": round(float(np.mean(same)), 4), "epoch_cost": round(float(np.mean(cost)), 2)})
    return pd.DataFrame(records)
