"""memvir.report's study side: the val selection, paired statistics, Holm, study comparisons, calibration, curves,
the mechanism's diagnostics and the t-SNE across epochs.

Oracles: scipy.stats.ttest_rel and a Student-t quantile written here; Holm-Bonferroni worked by hand; the
closed-form t distribution with 2 degrees of freedom; hand-made run folders whose numbers are recomputed here
with plain Python; the rule of configs/calibrate.yml applied by eye to hand-picked means.
"""
import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import runfolders
from memvir import report

T975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student's t quantile 0.975 by degrees of freedom (tables)


def t2_pvalue(t):
    """Two-sided p of Student's t with 2 degrees of freedom: its CDF is 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def val_run(run, test, val):
    """runfolders.fake_run, then each evaluation (and the last) carries validation metrics val[metric][i]."""
    folder = run.folder
    runfolders.fake_run(folder, run.seed, test, params=run.params)
    metrics = json.loads((folder / "metrics.json").read_text())
    for i, e in enumerate(metrics["evaluations"]):
        e["val"] = {k: v[i] for k, v in val.items()}
    metrics["last"] = metrics["evaluations"][-1]
    (folder / "metrics.json").write_text(json.dumps(metrics))


# ---- paired_comparison and holm ----------------------------------------------------------------------------


@pytest.mark.parametrize("base,row", [
    ([60.0, 61.5, 59.0, 58.2, 62.0], [61.0, 60.5, 60.0, 60.1, 63.3]),
    ([10.0, 11.0, 12.0, 13.0, 14.0], [9.0, 11.5, 11.0, 15.0, 13.2]),
])
def test_paired_comparison_against_scipy(base, row):
    seeds = [0, 3, 4, 7, 9]
    c = report.paired_comparison({s: v for s, v in zip(seeds, row)} | {11: 99.0},  # seed 11: no partner
                                 {s: v for s, v in zip(seeds, base)} | {12: float("nan"), 13: 1.0})
    d = [r - b for r, b in zip(row, base)]
    ref = stats.ttest_rel(row, base)
    assert c["pairs"] == 5 and c["ahead"] == sum(x > 0 for x in d) and isinstance(c["ahead"], int)
    assert c["diff_mean"] == pytest.approx(statistics.fmean(d))
    assert c["diff_sd"] == pytest.approx(statistics.stdev(d))
    assert (c["baseline_mean"], c["row_mean"]) == (pytest.approx(statistics.fmean(base)),
                                                   pytest.approx(statistics.fmean(row)))
    assert c["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    half = T975[4] * statistics.stdev(d) / math.sqrt(5)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(statistics.fmean(d) - half),
                                           pytest.approx(statistics.fmean(d) + half))
    lo, hi = ref.confidence_interval(0.95)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_paired_comparison_too_few_pairs():
    one = report.paired_comparison({0: 2.0, 1: 5.0}, {0: 1.0})
    assert (one["pairs"], one["diff_mean"], one["ahead"]) == (1, 1.0, 1)
    assert all(math.isnan(one[k]) for k in ("diff_sd", "ci_low", "ci_high", "p"))
    none = report.paired_comparison({0: 2.0}, {1: 1.0})
    assert none["pairs"] == 0 and none["ahead"] == 0 and math.isnan(none["diff_mean"])


def test_holm_by_hand():
    # m = 4 finite p-values; sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; the running
    # maximum makes the last 0.06. The NaN is not in the family (else the factors would be 5, 4, 3, 2).
    got = report.holm([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert math.isnan(got[1])
    assert np.delete(got, 1) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert report.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 1.2 clipped at 1; then the maximum
    assert report.holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # ties: 0.04 and max(0.04, 0.02)
    assert report.holm([]).size == 0


# ---- collect: the val selection ----------------------------------------------------------------------------


STUDY = """
description: a study
notebook: notebooks/05_training.ipynb
seeds: [0, 1, 2]
common: {data_name: glyphs, epochs: 6}
rows:
  - label: A
    params: {loss: Norm_SoftMax}
  - label: B
    baseline: A
    params: {loss: Norm_SoftMax, memvir: true, mem_num_step: 2, mem_step_gap: 1, warm_epoch: 1}
  - label: C
    baseline: A
    params: {loss: Proxy_NCA, memvir: true, mem_num_step: 2, mem_step_gap: 1, warm_epoch: 1}
groups:
  budgets_short: [A, B]
  more: [B, C]
"""

METRICS = ("recall@1", "r_precision", "map_at_r")


def study_values(row, seed):
    """(test, val): {metric: [value at epochs 2, 4, 6]}, different for each row, seed and metric."""
    rng = np.random.default_rng([ord(row), seed])
    test = {k: [round(float(v), 4) for v in rng.uniform(0.3, 0.9, 3)] for k in METRICS}
    val = {k: [round(float(v), 4) for v in rng.uniform(0.3, 0.9, 3)] for k in METRICS}
    return test, val


@pytest.fixture
def study(tmp_path):
    from memvir.pipeline import load_profile

    prof = load_profile(runfolders.make_repo(tmp_path, STUDY))
    for run in prof.runs:
        val_run(run, *study_values(run.row, run.seed))
    return prof


def test_collect_val_selection_ties_and_missing(tmp_path):
    from memvir.pipeline import load_profile

    prof = load_profile(runfolders.make_repo(tmp_path, runfolders.GOOD))
    test = {"recall@1": [0.5, 0.7, 0.6], "r_precision": [0.2, 0.3, 0.4], "map_at_r": [0.1, 0.15, 0.12]}
    val = {"recall@1": [0.9, 0.8, 0.9], "r_precision": [0.1, 0.5, 0.3], "map_at_r": [0.2, 0.2, 0.3]}
    first, *others = prof.runs
    val_run(first, test, val)
    for run in others:  # no validation classes
        runfolders.fake_run(run.folder, run.seed, runfolders.values_for(run.row, run.seed), params=run.params)
    runs, evaluations = report.collect(prof)
    r = runs.set_index("name").loc[first.name]
    assert r["val_recall@1"] == 0.5 and r["val_recall@1_epoch"] == 2  # val ties at epochs 2 and 6: the earliest
    assert r["val_r_precision"] == 0.3 and r["val_map_at_r"] == 0.12  # the test value where val peaks
    assert r["best_recall@1"] == 0.7 and r["last_recall@1"] == 0.6  # the other two selections unchanged
    assert runs.loc[runs["name"] != first.name, "val_recall@1"].isna().all()
    e = evaluations[evaluations["name"] == first.name]
    assert list(e["val_r_precision"]) == val["r_precision"]
    assert evaluations.loc[evaluations["name"] != first.name, "val_map_at_r"].isna().all()
    assert report.selections(runs) == ["best", "last"]  # not every run has val: the tables leave it out
    assert report.selections(runs[runs["name"] == first.name]) == ["best", "val", "last"]


def test_report_without_val_leaves_it_out(tmp_path):
    prof = runfolders.finished_profile(tmp_path)
    out = report.build_report(prof, log=lambda s: None)
    assert not list(out.glob("*_val.csv")) and "(val)" not in (out / "tables.md").read_text()
    assert json.loads((out / "report.json").read_text())["selections"] == ["best", "last"]


# ---- the study: comparisons.csv by hand --------------------------------------------------------------------


def hand_value(values, selection):
    test, val = values
    pick = {"best": lambda k: max(test[k]), "last": lambda k: test[k][-1],
            "val": lambda k: test[k][val[k].index(max(val[k]))]}[selection]
    return {k: 100 * pick(k) for k in METRICS}


def hand_comparison(row, selection, metric):
    d = [hand_value(study_values(row, s), selection)[metric] - hand_value(study_values("A", s), selection)[metric]
         for s in (0, 1, 2)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    t = mean / (sd / math.sqrt(3))
    return {"diff_mean": mean, "diff_sd": sd, "ci_low": mean - T975[2] * sd / math.sqrt(3),
            "ci_high": mean + T975[2] * sd / math.sqrt(3), "p": t2_pvalue(t),
            "ahead": sum(x > 0 for x in d)}


def test_build_report_study_comparisons_by_hand(study):
    out = report.build_report(study, log=lambda s: None)
    got = pd.read_csv(out / "comparisons.csv")
    # A has no baseline; B is in both groups: 2 + 4 lines of 3 metrics x 3 selections.
    assert list(got.groupby(["group", "row"], sort=False).size().index) == [
        ("budgets_short", "B"), ("more", "B"), ("more", "C")]
    assert len(got) == 3 * 9 and set(got["selection"]) == {"best", "val", "last"}
    for metric in METRICS:
        for sel in ("best", "val", "last"):
            hand = {row: hand_comparison(row, sel, metric) for row in ("B", "C")}
            lo, hi = sorted(hand, key=lambda r: hand[r]["p"])  # Holm, m = 2 (B counts once): 2 p1, max(2 p1, p2)
            holm = {lo: min(1.0, 2 * hand[lo]["p"]), hi: min(1.0, max(2 * hand[lo]["p"], hand[hi]["p"]))}
            for _, line in got[(got["metric"] == metric) & (got["selection"] == sel)].iterrows():
                h = hand[line["row"]]
                for key in ("diff_mean", "diff_sd", "ci_low", "ci_high", "p"):
                    assert line[key] == pytest.approx(h[key], abs=2e-6), (metric, sel, line["row"], key)
                assert line["p_holm"] == pytest.approx(holm[line["row"]], abs=2e-6)
                assert line["ahead"] == h["ahead"] and line["baseline"] == "A" and line["pairs"] == 3
                assert line["significant"] == (holm[line["row"]] < 0.05)
    md = (out / "tables.md").read_text()
    assert "### Group `budgets_short`" in md and "### Group `more`" in md and "val: Δ [95% CI]" in md
    b = hand_comparison("B", "val", "recall@1")
    assert f"{b['diff_mean']:+.2f} [{b['ci_low']:+.2f}, {b['ci_high']:+.2f}]" in md
    summary = json.loads((out / "report.json").read_text())
    assert summary["selections"] == ["best", "val", "last"] and "same metric and selection" in summary["holm_family"]
    first = summary["study"][0]
    assert first["group"] == "budgets_short" and first["diff_mean"] == round(got.loc[0, "diff_mean"], 4)
    assert (out / "figures" / "curves_budgets_short.png").stat().st_size > 1000
    assert not (out / "figures" / "curves_more.png").exists()  # only budgets* groups get curves
    assert (out / "table_recall_at_1_val.csv").exists()


# ---- curves_figure -----------------------------------------------------------------------------------------


def test_curves_figure_mean_and_t_band():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = {0: [0.5, 0.6], 1: [0.55, 0.7], 2: [0.6, 0.65]}  # seed -> recall@1 at epochs 2 and 4
    lines = [{"row": "X", "seed": s, "epoch": 2 * (i + 1), "recall@1": v[i], "map_at_r": v[i] / 2}
             for s, v in x.items() for i in range(2)]
    lines += [{"row": "Y", "seed": 0, "epoch": e, "recall@1": 0.4, "map_at_r": 0.2} for e in (2, 4)]
    fig = report.curves_figure(pd.DataFrame(lines), ["X", "Y"])
    ax = fig.axes[0]
    for i, epoch in enumerate((2, 4)):
        v = [100 * x[s][i] for s in x]
        mean, half = statistics.fmean(v), T975[2] * statistics.stdev(v) / math.sqrt(3)
        assert ax.lines[0].get_ydata()[i] == pytest.approx(mean)
        vert = ax.collections[0].get_paths()[0].vertices
        at = vert[np.isclose(vert[:, 0], epoch), 1]
        assert (at.min(), at.max()) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert list(ax.lines[1].get_ydata()) == pytest.approx([40.0, 40.0])
    assert sum(len(p.vertices) for p in ax.collections[1].get_paths()) == 0  # one seed: no band
    assert [a.get_title().split(" ")[0] for a in fig.axes] == ["Recall@1", "MAP@R"]
    plt.close(fig)


# ---- calibration -------------------------------------------------------------------------------------------


CALIBRATE = """
description: calibration
notebook: notebooks/05_training.ipynb
seeds: [0, 1]
calibrate: [65, 85]
common: {data_name: glyphs, loss: Norm_SoftMax, epochs: 4}
rows:
  - {label: r1, tag: r1, params: {num_classes: 10}}
  - {label: r2, tag: r2, params: {num_classes: 20}}
  - {label: r3, tag: r3, params: {num_classes: 30}}
  - {label: r4, tag: r4, params: {num_classes: 40}}
"""


def calibration_profile(tmp_path, means):
    """Four rows whose mean best test Recall@1 over seeds 0 and 1 is `means` (percent): seeds at mean -/+ 1."""
    from memvir.pipeline import load_profile

    prof = load_profile(runfolders.make_repo(tmp_path, CALIBRATE))
    for run in prof.runs:
        best = (means[int(run.row[1]) - 1] + (2 * run.seed - 1)) / 100
        runfolders.fake_run(run.folder, run.seed, {k: [best - 0.05, best] for k in METRICS}, params=run.params)
    return prof


@pytest.mark.parametrize("means,chosen,note", [
    ([80, 70, 60, 50], "r1", "the first in [65, 85]"),       # the first row is in range
    ([90, 88, 70, 66], "r3", "the first in [65, 85]"),       # a later one, and the first of two in range
    ([95, 88, 60, 50], "r2", "brackets [65, 85] with r3"),            # 88 and 60 bracket it: 88 is 13 from 75, 60 is 15
    ([95, 90, 64, 50], "r3", "brackets [65, 85] with r2"),            # 90 and 64: 64 is closer
    ([99, 95, 90, 86], None, "knob 2 needed"),               # all above, no bracket: knob 2, on r4 (closest)
])
def test_calibration_choice(tmp_path, means, chosen, note):
    prof = calibration_profile(tmp_path, means)
    got = report.calibration_choice(prof)
    assert list(got["row"]) == ["r1", "r2", "r3", "r4"]
    assert list(got["mean"]) == pytest.approx(means) and list(got["sd"]) == pytest.approx([math.sqrt(2)] * 4)
    assert list(got["in_range"]) == [65 <= m <= 85 for m in means]
    assert list(got.loc[got["chosen"], "row"]) == ([chosen] if chosen else [])
    noted = got[got["note"] != ""]
    assert len(noted) == 1 and note in noted["note"].iloc[0]
    assert noted["row"].iloc[0] == (chosen or "r4")


def test_calibration_in_the_report(tmp_path):
    out = report.build_report(calibration_profile(tmp_path, [99, 95, 90, 86]), log=lambda s: None)
    csv = pd.read_csv(out / "calibration.csv")
    assert not csv["chosen"].any()
    md = (out / "tables.md").read_text()
    assert "## Calibration" in md and "No row is chosen: knob 2 needed on r4" in md
    assert json.loads((out / "report.json").read_text())["calibration"]["chosen"] is None


# ---- the mechanism group (embedding_diagnostics stood in for) ----------------------------------------------


def test_mechanism_diagnostics_paired_by_seed(study):
    from types import SimpleNamespace

    study.groups["mechanism"] = ["B"]
    calls = []
    rank = {"A": 1.0, "B": 3.0, "C": 5.0}

    def fake_load(folder, checkpoint="last"):  # a trained run: its epoch and its diagnostics
        calls.append((folder.name, checkpoint))
        run = next(r for r in study.runs if r.folder == folder)
        found = {"test_recall@1": 0.5 + 0.1 * run.seed * rank[run.row], "test_effective_rank": rank[run.row]}
        return SimpleNamespace(epoch=6, diagnostics=lambda: found)

    with pytest.raises(ValueError, match="reading a checkpoint needs a loader"):  # the report alone has none
        report.build_report(study, log=lambda s: None)
    out = report.build_report(study, log=lambda s: None, load=fake_load)
    assert {c[1] for c in calls} == {"last"} and len(calls) == 6  # B and its baseline A, three seeds each
    diag = pd.read_csv(out / "diagnostics.csv")
    assert list(diag.columns) == ["row", "seed", "epoch", "test_recall@1", "test_effective_rank"]
    m = pd.read_csv(out / "mechanism.csv").set_index("quantity")
    d = [0.1 * s * (3.0 - 1.0) for s in (0, 1, 2)]  # B - A per seed
    assert m.loc["test_recall@1", "diff_mean"] == pytest.approx(statistics.fmean(d))
    assert m.loc["test_recall@1", "diff_sd"] == pytest.approx(statistics.stdev(d))
    assert m.loc["test_effective_rank", "diff_mean"] == pytest.approx(2.0)
    assert m.loc["test_effective_rank", "ahead"] == 3
    assert "## Mechanism" in (out / "tables.md").read_text()
    assert "Descriptive" in (out / "tables.md").read_text()


# ---- t-SNE across epochs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs,warm,expected", [
    ([10, 20, 30, 40, 50, 60, 200], 40, [40, 50, 200]),   # the paper's U = 40 (its panels: 50, 60, 200)
    ([45, 50, 60], 40, [45, 60]),                          # none at or before U
    ([2, 4], 40, [4]),                                     # none after U
    ([1, 2, 3], 1, [1, 2, 3]),
])
def test_tsne_epoch_choice(epochs, warm, expected):
    assert report.tsne_epoch_choice(epochs, warm) == expected


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real MemVir run on 10 glyph classes, 3 epochs (U = 1), every epoch checkpoint kept (a few seconds)."""
    from memvir.train import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    train({"data_name": "glyphs", "num_classes": 20, "instances_per_class": 10, "input_size": 16,
           "batch_size": 32, "dim": 16, "progress": False, "epochs": 3, "check_epoch": 3, "memvir": True,
           "mem_num_step": 2, "mem_step_gap": 0, "warm_epoch": 1, "max_to_keep": 0, "save_path": str(run)})
    return run


def test_tsne_epochs_figure_on_a_tiny_run(tiny_run, tmp_path, monkeypatch):
    run = tiny_run
    from memvir.report import embedding
    from memvir.trained import load

    loaded = []

    def spy(folder, checkpoint="last"):
        loaded.append(checkpoint)
        return load(folder, checkpoint)

    taken, panel = [], embedding._tsne_steps_panel

    def count(*args, **kwargs):
        taken.append(panel(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(embedding, "_tsne_steps_panel", count)
    png = report.tsne_epochs_figure(run, tmp_path / "figures", spy, perplexity=5.0)
    assert loaded == ["epoch_00001.pt", "epoch_00002.pt", "epoch_00003.pt"]
    # Epoch 1 is the warm-up (U = 1): the memory is empty. Epoch 2 pushed its 4 steps: N = 2 are taken.
    assert taken == [0, 2, 2]
    assert png.stat().st_size > 1000 and (tmp_path / "figures" / "tsne_epochs.svg").exists()


def test_mechanism_diagnostics_of_a_real_checkpoint(tiny_run):
    from types import SimpleNamespace

    from memvir.rundir import read_run
    from memvir.trained import load

    profile = SimpleNamespace(runs=[SimpleNamespace(row="B", seed=0, name="tiny", folder=tiny_run)])
    got = report.mechanism_diagnostics(profile, pd.DataFrame({"name": ["tiny"]}), {"B"}, load)
    last = read_run(tiny_run)[1]["last"]  # the training loop's own evaluation of the same (last) network
    assert (got.loc[0, "row"], got.loc[0, "seed"], got.loc[0, "epoch"]) == ("B", 0, 3)
    assert got.loc[0, "test_recall@1"] == pytest.approx(last["recall@1"])
    assert got.loc[0, "test_map_at_r"] == pytest.approx(last["map_at_r"])
    assert set(report.MECHANISM_SHOWN) <= set(got.columns)  # what a chapter shows is what the diagnostics write


def test_mechanism_sentences_say_each_rows_numbers():
    # mechanism.csv's lines for one row: the fractions become points (x100), the uniformity stays as it is.
    lines = pd.DataFrame({"row": ["B"] * 3, "baseline": ["A"] * 3,
                          "quantity": ["gap_map_at_r", "test_map_at_r", "test_uniformity"],
                          "diff_mean": [-0.0066, 0.0123, -0.05], "ci_low": [-0.0113, 0.0, -0.08],
                          "ci_high": [-0.0019, 0.02, -0.02]})
    (said,) = report.mechanism_sentences(lines)
    assert said == ("B: the seen-minus-unseen MAP@R gap moves by -0.66 points [-1.13, -0.19], unseen MAP@R by "
                    "+1.23 points, the unseen classes' uniformity by -0.05 (lower: more spread)")


def test_tsne_figures_are_the_same_every_time(tiny_run, tmp_path):
    # A report of the same runs must be the same bytes, whatever ran before in the process (a committed reference
    # is compared bit for bit): here torch's and numpy's global generators are left in two different states.
    import torch

    from memvir.trained import load

    for i, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        np.random.seed(seed)
        report.tsne_figures(load(tiny_run), load(tiny_run), tmp_path / str(i), test_classes=5, perplexity=5.0)
    for name in ("tsne_steps.png", "tsne_steps.svg", "tsne_test.png", "tsne_test.svg"):
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name


def test_forest_figure_draws_every_comparison_at_the_validation_epoch():
    import matplotlib

    matplotlib.use("Agg")
    rows = []
    for sel, shift in (("best", 100.0), ("val", 0.0)):  # best must not be drawn when val exists
        for g, r, m, d, sig in (("main", "R1", "map_at_r", -1.5, True), ("main", "R1", "recall@1", 0.5, False),
                                ("abl", "R2", "map_at_r", 2.0, False), ("abl", "R2", "recall@1", -3.0, True)):
            rows.append({"group": g, "row": r, "metric": m, "selection": sel, "diff_mean": d + shift,
                         "ci_low": d + shift - 1, "ci_high": d + shift + 1, "significant": sig})
    fig = report.forest_figure(pd.DataFrame(rows), {"main": ["R1"], "abl": ["R2"]})
    for ax, metric in zip(fig.axes, ("map_at_r", "recall@1")):
        points = [(ln.get_xdata()[0], ln.get_ydata()[0], ln.get_markerfacecolor()) for ln in ax.lines
                  if ln.get_marker() == "o"]
        want = [(r["diff_mean"], r["significant"]) for r in rows if r["selection"] == "val" and r["metric"] == metric]
        assert [(x, face != "white") for x, _, face in points] == want  # filled exactly where Holm says
        assert [y for _, y, _ in points] == [0.0, -1.0]  # the profile's group order, top to bottom
        assert any(list(ln.get_xdata()) == [0.0, 0.0] for ln in ax.lines)  # zero drawn
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["R1  [main]", "R2  [abl]"]
    assert "best validation epoch" in fig._suptitle.get_text()
    no_val = pd.DataFrame([dict(r, selection="last") for r in rows if r["selection"] == "val"])
    assert report.trusted_selection(no_val["selection"]) == "last"


def test_plateau_budget_by_hand():
    """Two seeds per row whose means are written out; the rule applied by hand (min_gain 0.5 points, tail 8)."""
    from memvir.report.runs import plateau_budget

    means = {"levels off": [50, 60, 64, 64.3, 64.4, 64.2],  # 12: nothing later beats 64 by 0.5 (64.4 - 64 = 0.4)
             "still rising": [50, 51, 52, 53, 54, 55],  # every epoch is beaten by a later one by >= 1: none
             "levels off late": [50, 51, 52, 53, 54, 54.1]}  # 20 would qualify but has only 4 epochs after it
    records = []
    for row, values in means.items():
        for seed, shift in ((0, -0.3), (1, +0.3)):  # mean over the two seeds = the written value
            for epoch, v in zip(range(4, 28, 4), values):
                records.append({"row": row, "seed": seed, "epoch": epoch, "val_map_at_r": (v + shift) / 100})
    got = plateau_budget(pd.DataFrame(records), list(means), "map_at_r", 0.5, 8).set_index("row")
    assert got.loc["levels off", "budget"] == 12 and got.loc["levels off", "val_map_at_r"] == pytest.approx(64)
    assert got.loc["levels off", "best_later"] == pytest.approx(64.4)
    assert math.isnan(got.loc["still rising", "budget"]) and math.isnan(got.loc["levels off late", "budget"])
    assert (got["last_epoch"] == 24).all() and (got["seeds"] == 2).all()


@pytest.mark.parametrize("plateau", ["{metric: map_at_r}", "{metric: loss, min_gain: 0.5, tail: 8}",
                                     "{metric: map_at_r, min_gain: -1, tail: 8}"])
def test_plateau_option_refused_in_one_line(tmp_path, plateau):
    from memvir.profile import load_profile

    (tmp_path / "configs").mkdir()
    (tmp_path / "nb.ipynb").write_text("{}")
    path = tmp_path / "configs" / "p.yml"
    path.write_text(f"notebook: nb.ipynb\nseeds: [0]\nplateau: {plateau}\ncommon: {{val_classes: 5}}\n"
                    "rows:\n- label: A\n  params: {loss: Norm_SoftMax}\n")
    with pytest.raises(ValueError, match=r"p\.yml: plateau must be \{metric"):
        load_profile(path)


def test_contrasts_compare_two_rows_in_the_same_family():
    """A contrast pairs a row with another row (not its baseline), by seed; Holm's family holds it with the rest."""
    from memvir.report.stats import study_comparisons

    values = {"base": [60.0, 61.0, 62.0], "a": [61.0, 62.5, 62.5], "b": [60.5, 61.0, 63.5]}
    runs = pd.DataFrame([{"row": row, "seed": s, **{f"{sel}_{m}": v[s] / 100 for sel in ("best", "last")
                                                   for m in ("recall@1", "r_precision", "map_at_r")}}
                         for row, v in values.items() for s in range(3)])
    c = study_comparisons(runs, {"g": ["a", "b"]}, {"a": "base", "b": "base"}, {"a_vs_b": [("a", "b")]})
    got = c[(c["group"] == "a_vs_b") & (c["metric"] == "map_at_r") & (c["selection"] == "last")].iloc[0]
    assert (got["row"], got["baseline"], got["pairs"]) == ("a", "b", 3)
    d = [x - y for x, y in zip(values["a"], values["b"])]
    assert got["diff_mean"] == pytest.approx(statistics.fmean(d))
    assert got["p"] == pytest.approx(stats.ttest_rel(values["a"], values["b"]).pvalue)
    family = c[(c["metric"] == "map_at_r") & (c["selection"] == "last")]
    assert len(family) == 3  # a-base, b-base, a-b: Holm over the three
    ps = sorted(family["p"])
    assert got["p_holm"] == pytest.approx(min(1, max((3 - i) * p for i, p in enumerate(ps) if p <= got["p"])))


@pytest.mark.parametrize("contrasts,match", [("{c: [[A, Z]]}", "contrasts.c names 'Z'"),
                                             ("{c: [[A, B], [A, Z]]}", "contrasts.c names 'Z'"),
                                             ("{c: [[A, B], [A, B]]}", "contrasts.c compares one row twice"),
                                             ("{c: [A, B]}", "contrasts must map a name to"),
                                             ("{g: [[A, B]]}", "contrasts.g has the name of a group")])
def test_contrasts_refused_in_one_line(tmp_path, contrasts, match):
    from memvir.profile import load_profile

    (tmp_path / "configs").mkdir()
    (tmp_path / "nb.ipynb").write_text("{}")
    path = tmp_path / "configs" / "p.yml"
    path.write_text(f"notebook: nb.ipynb\nseeds: [0]\ncontrasts: {contrasts}\ngroups: {{g: [B]}}\n"
                    "rows:\n- label: A\n  params: {loss: Norm_SoftMax}\n"
                    "- label: B\n  baseline: A\n  params: {loss: Norm_SoftMax, scale: 8.0}\n")
    with pytest.raises(ValueError, match=match):
        load_profile(path)
