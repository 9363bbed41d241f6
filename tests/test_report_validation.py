"""memvir.report.validation: how the validation classes rank and pick like the test classes. Oracles: Spearman's
formula 1 - 6 sum d^2 / (n (n^2 - 1)) on hand-made ranks without ties, and regrets and epochs worked by hand."""
import pandas as pd
import pytest

from memvir.report import validation_agreement


def evaluations(runs):
    """{(row, seed): [(epoch, test, val), ...]} -> evaluations.csv's lines (map_at_r, val_map_at_r)."""
    return pd.DataFrame([{"row": row, "seed": seed, "epoch": epoch, "map_at_r": test, "val_map_at_r": val}
                         for (row, seed), evals in runs.items() for epoch, test, val in evals])


def runs_table(runs):
    """The same runs as runs.csv's lines: the best test value and epoch, the test value at the epoch of the best
    validation value and that epoch (the first of ties, as max() keeps it)."""
    lines = []
    for (row, seed), evals in runs.items():
        best = max(evals, key=lambda e: e[1])
        picked = max(evals, key=lambda e: e[2])
        lines.append({"row": row, "seed": seed, "best_map_at_r": best[1], "best_map_at_r_epoch": best[0],
                      "val_map_at_r": picked[1], "val_map_at_r_epoch": picked[0]})
    return pd.DataFrame(lines)


def test_rank_correlation_regret_and_epochs_by_hand():
    # Four rows, one seed each, last evaluations (test, val): a (0.50, 0.80), b (0.60, 0.70), c (0.70, 0.90),
    # d (0.40, 0.60). Test ranks a2 b3 c4 d1, validation ranks a3 b2 c4 d1: d^2 = 1 + 1 = 2, rho = 1 - 12/60 = 0.8.
    runs = {("a", 0): [(4, 0.45, 0.82), (8, 0.50, 0.80)],  # val picks epoch 4 (0.45), test's best is 8 (0.50)
            ("b", 0): [(4, 0.55, 0.60), (8, 0.60, 0.70)],
            ("c", 0): [(4, 0.72, 0.85), (8, 0.70, 0.90)],  # val picks 8 (0.70), test's best is 4 (0.72)
            ("d", 0): [(4, 0.30, 0.50), (8, 0.40, 0.60)]}
    out = validation_agreement(runs_table(runs), evaluations(runs), {"loss": ["a", "b", "c", "d"]}).iloc[0]
    assert out["rows"] == 4 and out["spearman"] == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))
    assert (out["chosen"], out["test_best"]) == ("c", "c") and out["regret"] == 0
    assert out["epoch_same"] == pytest.approx(2 / 4)  # b and d pick their best test epoch
    assert out["epoch_cost"] == pytest.approx(100 * (0.05 + 0.02) / 4)


def test_the_choice_is_of_mean_values_over_seeds_and_its_regret_is_on_test():
    # x: val 0.9 and 0.7 (mean 0.8), test 0.5 and 0.5; y: val 0.75 both, test 0.6 both. Validation chooses x
    # (0.80 > 0.75), test prefers y: the choice costs 10 points of test.
    runs = {("x", 0): [(1, 0.5, 0.9)], ("x", 1): [(1, 0.5, 0.7)],
            ("y", 0): [(1, 0.6, 0.75)], ("y", 1): [(1, 0.6, 0.75)]}
    out = validation_agreement(runs_table(runs), evaluations(runs), {"g": ["x", "y"]}).iloc[0]
    assert (out["chosen"], out["test_best"], out["regret"]) == ("x", "y", pytest.approx(10.0))
    assert pd.isna(out["spearman"])  # two rows rank nothing worth a correlation


def test_a_group_with_no_rows_in_the_evaluations_is_an_error():
    with pytest.raises(ValueError, match=r"group 'g': none of its rows \['z'\]"):
        one = {("x", 0): [(1, 0.5, 0.9)]}
        validation_agreement(runs_table(one), evaluations(one), {"g": ["z"]})
