"""memvir.report: the README's tables rebuilt from its per-run numbers, profiles, run folders -> report, the CLI.

Oracles: the official README's printed Mean / Diff. / Std. (memvir/paper_results/cars196_5runs.csv), its four
training commands (configs/official_cars196.txt), statistics written out here, and hand-made run folders.
"""
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runfolders
from memvir import report
from memvir.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
PAPER = pd.read_csv(ROOT / "memvir" / "paper_results" / "cars196_5runs.csv", comment="#")


# ---- runs_table against the README ---------------------------------------------------------------------------


def _label(loss, memvir):
    return f"MemVir + {loss}" if memvir else loss


@pytest.mark.parametrize("metric", ["recall@1", "r_precision", "map_at_r"])
def test_runs_table_reproduces_readme(metric):
    rows = PAPER[PAPER["metric"] == metric]
    runs = {_label(r.loss, r.memvir): [getattr(r, f"run{i}") for i in range(1, 6)] for r in rows.itertuples()}
    baselines = {_label(r.loss, 1): r.loss for r in rows.itertuples() if r.memvir}
    table = report.runs_table(runs, baselines)
    assert list(table.columns) == ["Loss", "1", "2", "3", "4", "5", "Mean", "Diff.", "Std."]
    assert list(table["Loss"]) == list(runs)  # rows in the given order
    for r, t in zip(rows.itertuples(), table.itertuples(index=False)):
        assert t[6] == pytest.approx(r.mean, abs=1e-9), (r.loss, r.memvir, "Mean")
        assert t[8] == pytest.approx(r.std, abs=1e-9), (r.loss, r.memvir, "Std.")
        if r.memvir:
            assert t[7] == pytest.approx(r.diff, abs=1e-9), (r.loss, r.memvir, "Diff.")
        else:
            assert t[7] == "-" and math.isnan(r.diff)
        assert list(t[1:6]) == [getattr(r, f"run{i}") for i in range(1, 6)]


def test_paper_table_is_the_readme_markdown():
    # The README prints its Recall@1 table exactly like this (rows and signs included).
    expected = """Loss | 1 | 2 | 3 | 4 | 5 | Mean | Diff. | Std.
-- | -- | -- | -- | -- | -- | -- | -- | --
Norm-SoftMax | 83.38 | 83.25 | 83.25 | 83.18 | 83.05 | 83.22 | - | 0.12
MemVir + Norm-SoftMax | 86.36 | 86.05 | 86.26 | 85.92 | 85.95 | 86.11 | +2.89 | 0.19
Proxy-NCA | 83.74 | 83.69 | 83.62 | 83.32 | 83.06 | 83.49 | - | 0.29
MemVir + Proxy-NCA | 86.84 | 85.93 | 86.27 | 85.93 | 85.99 | 86.19 | +2.71 | 0.39"""
    assert report.markdown_table(report.paper_table("recall@1")) == expected


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [10.5, 10.25], [0.1, 0.7, 0.2, 0.9, 0.3]])
def test_runs_table_statistics(values):
    base = [v - 1.5 for v in values[:2]] + [0.0]
    table = report.runs_table({"base": base, "ours": values}, {"ours": "base"}).set_index("Loss")
    assert table.loc["ours", "Mean"] == round(statistics.fmean(values), 2)
    assert table.loc["ours", "Std."] == round(statistics.stdev(values), 2)  # sample std, ddof = 1
    assert table.loc["ours", "Diff."] == round(statistics.fmean(values) - statistics.fmean(base), 2)
    assert table.loc["base", "Diff."] == "-"
    n = max(len(values), len(base))
    assert [c for c in table.columns if c.isdigit()] == [str(i) for i in range(1, n + 1)]
    if len(base) != len(values):  # the row with fewer runs has empty cells at the end
        assert math.isnan(table.loc["base" if len(base) < n else "ours", str(n)])


def test_runs_table_single_run_has_no_std():
    table = report.runs_table({"a": [80.0]})
    assert math.isnan(table.loc[0, "Std."]) and table.loc[0, "Mean"] == 80.0


@pytest.mark.parametrize("runs,baselines,match", [
    ({}, {}, "at least one row"),
    ({"a": []}, {}, r"runs\['a'\]"),
    ({"a": [1.0, float("nan")]}, {}, r"runs\['a'\]"),
    ({"a": [1.0]}, {"b": "a"}, "'b' is not a row"),
    ({"a": [1.0]}, {"a": "z"}, "'z' is not a row"),
    ({"a": [1.0]}, {"a": "a"}, "its own baseline"),
])
def test_runs_table_bad_input(runs, baselines, match):
    with pytest.raises(ValueError, match=match):
        report.runs_table(runs, baselines)


def test_paired_differences_by_seed():
    base = {0: 60.0, 1: 61.0, 2: 59.0, 3: 58.0}
    ours = {0: 61.0, 1: 60.5, 2: 60.0, 7: 99.0}  # seed 7 has no partner, seed 3 neither
    t = report.paired_differences({"b": base, "m": ours}, {"m": "b"}).iloc[0]
    d = [1.0, -0.5, 1.0]
    assert (t["Loss"], t["Baseline"], t["Pairs"], t["Positive"]) == ("m", "b", 3, "2/3")
    assert t["Mean"] == round(statistics.fmean(d), 2) and t["Std."] == round(statistics.stdev(d), 2)
    # paired t-test: t = 0.5 / (0.866 / sqrt 3) = 1.0 exactly; with 2 degrees of freedom the two-sided p-value is
    # 1 - 1/sqrt(1 + 2/t^2) = 1 - 1/sqrt(3) (Student's t with 2 d.o.f. has a closed-form distribution).
    assert t["p"] == round(1 - 1 / math.sqrt(3), 3)


# ---- run folders -> report -------------------------------------------------------------------------------------


@pytest.fixture
def finished_profile(tmp_path):
    return runfolders.finished_profile(tmp_path)


def test_build_report(finished_profile):
    out = report.build_report(finished_profile, log=lambda s: None)
    assert out == finished_profile.root / "results" / "report" / "t"
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["row"]) == ["A", "A", "MemVir + A", "MemVir + A"]
    r = runs.set_index(["row", "seed"])
    assert r.loc[("MemVir + A", 1), "best_recall@1"] == pytest.approx(0.63)  # max over evaluations
    assert r.loc[("MemVir + A", 1), "last_r_precision"] == pytest.approx(0.28)  # last evaluation
    assert r.loc[("A", 0), "best_map_at_r_epoch"] == 4
    table = pd.read_csv(out / "table_recall_at_1.csv").set_index("Loss")
    assert table.loc["MemVir + A", "Mean"] == pytest.approx(round(100 * (0.62 + 0.63) / 2, 2))
    assert float(table.loc["MemVir + A", "Diff."]) == pytest.approx(2.0)
    assert table.loc["A", "Std."] == pytest.approx(round(100 * statistics.stdev([0.6, 0.61]), 2))
    last = pd.read_csv(out / "table_r_precision_last.csv").set_index("Loss")
    assert last.loc["A", "Mean"] == pytest.approx(100 * (0.25 + 0.26) / 2)
    paired = pd.read_csv(out / "paired_map_at_r_best.csv").iloc[0]
    assert (paired["Pairs"], paired["Positive"], paired["Mean"]) == (2, "2/2", pytest.approx(2.0))
    for stem in ("bars", "learning_curves", "curriculum"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    md = (out / "tables.md").read_text()
    assert "## MAP@R (best)" in md and "MemVir + A | 62.00 | 63.00 | 62.50 | +2.00 | 0.71" in md
    summary = json.loads((out / "report.json").read_text())
    assert summary["runs"] == summary["expected_runs"] == 4 and not summary["partial"]


def test_report_refuses_unfinished_runs(finished_profile):
    folder = finished_profile.runs[1].folder
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))
    with pytest.raises(ValueError, match=re.escape(str(folder)) + " is partial"):
        report.build_report(finished_profile, log=lambda s: None)
    out = report.build_report(finished_profile, partial=True, log=lambda s: None)
    assert len(pd.read_csv(out / "runs.csv")) == 3 and json.loads((out / "report.json").read_text())["partial"]


@pytest.mark.parametrize("partial", [[], ["--partial"]])
@pytest.mark.parametrize("text,words", [
    ("{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1, 2]", "expected a mapping with keys evaluations, best, last, finished, got a list"),
    ('{"evaluations": [], "best": {}, "last": [], "finished": true}', "'last' is a list; expected a mapping or null"),
    ('{"evaluations": [], "best": {}, "last": null, "finished": "true"}', "'finished' is the text 'true'; expected "
                                                                          "true or false"),
])
def test_a_damaged_metrics_json_is_one_line_naming_it_and_the_repair(finished_profile, capsys, partial, text,
                                                                      words):
    run = finished_profile.runs[2]
    (run.folder / "metrics.json").write_text(text)
    assert report.main(["--profile", str(finished_profile.path), *partial]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {run.folder / 'metrics.json'}: {words}; the run's checkpoint holds its history: its "
                   f"training command (python -m memvir pipeline --profile {finished_profile.path} --run {run.name}, "
                   f"with the same --runs-root) rebuilds the file\n")
    assert not finished_profile.report_dir.exists()


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_failed_report_leaves_the_previous_one_whole(finished_profile, monkeypatch):
    out = report.build_report(finished_profile, log=lambda s: None)
    before = snapshot(out)
    (finished_profile.runs[0].folder / "metrics.json").write_text(
        (finished_profile.runs[0].folder / "metrics.json").read_text().replace("0.5", "0.45"))

    def fails(*args, **kwargs):  # half-way: the tables are written, the figures are not
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(report.build, "curriculum_figure", fails)
    with pytest.raises(RuntimeError, match="the figure failed"):
        report.build_report(finished_profile, log=lambda s: None)
    assert snapshot(out) == before  # the previous report, not half of the new one
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary folder left


def test_a_report_never_replaces_a_folder_that_is_not_one(finished_profile, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("mine too")
    for out in (mine, tmp_path / "notes.txt"):
        assert report.main(["--profile", str(finished_profile.path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {mine}: holds files but no report.json, so it is not a memvir report; the report "
                   f"replaces its folder whole: choose another --out (or move those files away)",
                   f"error: {tmp_path / 'notes.txt'}: exists and is not a folder; expected a folder (or nothing "
                   f"there) (--out: the report's folder)"]
    assert (mine / "thesis.tex").read_text() == "years of work" and (tmp_path / "notes.txt").read_text() == "mine too"
    assert report.main(["--profile", str(finished_profile.path), "--out", str(tmp_path / "new")]) == 0
    assert report.main(["--profile", str(finished_profile.path), "--out", str(tmp_path / "new")]) == 0  # ours


def test_cli(finished_profile):
    path = str(finished_profile.path)
    assert report.main(["--profile", "no_such_profile"]) == 1
    assert report.main(["--profile", path]) == 0
    assert (finished_profile.report_dir / "tables.md").exists()


def test_table4_comparison_pairs_by_seed_with_a_t_interval():
    # Two seeds per row; the paired differences of Recall@1 are +2 and +4 points: mean 3, sd sqrt(2),
    # t(0.975, 1) = 12.706 (a printed table), so the 95% interval is 3 +- 12.706 * sqrt(2) / sqrt(2).
    rows = []
    for seed, (base, mem) in enumerate([(0.60, 0.62), (0.70, 0.74)]):
        for row, v, b in (("Norm-SoftMax", base, ""), ("MemVir + Norm-SoftMax", mem, "Norm-SoftMax")):
            rows.append({"row": row, "baseline": b, "seed": seed, **{f"best_{k}": v for k in report.METRICS}})
    rows += [{"row": "SoftTriple", "baseline": "", "seed": s, **{f"best_{k}": 0.5 for k in report.METRICS}}
             for s in (0, 1)]
    table = report.table4_comparison(pd.DataFrame(rows)).set_index("Loss")
    assert table.loc["Norm-SoftMax", "Δ Recall@1 [95% CI]"] == "+3.00 [-9.71, +15.71]"
    assert table.loc["Norm-SoftMax", "Recall@1"] == f"65.00 ± {statistics.stdev([60, 70]):.2f}"
    assert table.loc["Norm-SoftMax", "paper CARS196"] == "83.3 → 86.8"  # the paper's Table 4
    assert table.loc["SoftTriple", "MemVir Recall@1"] == "-" and table.loc["SoftTriple", "paper CARS196"] == "84.5"


@pytest.mark.parametrize("p,p_holm,diff,said", [
    (0.001, 0.004, 1.2, "+1.20 points [95% CI +0.20, +2.20], ahead in 3/5 seeds (Holm p = 0.004): a gain"),
    (0.001, 0.004, -1.2, "-1.20 points [95% CI -2.20, -0.20], ahead in 3/5 seeds (Holm p = 0.004): a loss"),
    (0.02, 0.3, 1.2, "+1.20 points [95% CI +0.20, +2.20], ahead in 3/5 seeds (Holm p = 0.300): not significant "
                     "once corrected for the number of comparisons"),
    (0.4, 1.0, 0.1, "+0.10 points [95% CI -0.90, +1.10], ahead in 3/5 seeds (Holm p = 1.000): within the "
                    "seed-to-seed noise"),
    (float("nan"), float("nan"), 0.0, None)])
def test_verdict_reads_the_corrected_p(p, p_holm, diff, said):
    c = {"diff_mean": diff, "ci_low": diff - 1, "ci_high": diff + 1, "ahead": 3, "pairs": 5, "p": p, "p_holm": p_holm}
    if said is None:
        assert report.verdict(c) == "not testable (fewer than two paired seeds)"
    else:
        assert report.describe(c) == said


# ---- your run against ours: a report beside the committed reference -------------------------------------------


def _set_value(run, metric, values):
    """Rewrite a fake run's metric (fractions per evaluation) in its metrics.json, as a rerun elsewhere would."""
    m = json.loads((run.folder / "metrics.json").read_text())
    for e, v in zip(m["evaluations"], values):
        e[metric] = v
    m["best"][metric] = {"epoch": 0, "step": 0, "value": max(values)}
    m["last"] = m["evaluations"][-1]
    (run.folder / "metrics.json").write_text(json.dumps(m))


def test_machine_facts_leave_the_compared_files(finished_profile):
    run = finished_profile.runs[0]
    config = json.loads((run.folder / "config.json").read_text())
    config["kernels"] = {"mode": "portable", "cpu_capability": "AVX2", "machine": "x86_64"}
    (run.folder / "config.json").write_text(json.dumps(config))
    out = report.build_report(finished_profile, log=lambda s: None)
    assert "wall_time" not in pd.read_csv(out / "runs.csv") and "wall_time" not in pd.read_csv(out / "evaluations.csv")
    machine = pd.read_csv(out / "machine.csv", keep_default_na=False)
    assert list(machine["wall_time"]) == [1.0] * 4  # fake_run's last evaluation has wall_time 1.0
    assert list(machine["kernels"]) == ["portable", "unrecorded", "unrecorded", "unrecorded"]
    assert report.kernels_summary(out) == ("portable kernels at AVX2 (x86_64), 1 run; kernels not recorded, "
                                           "3 runs")


def test_against_reference_equal_bit_for_bit(finished_profile, capsys):
    import shutil

    out = report.build_report(finished_profile, log=lambda s: None)
    shutil.copytree(out, finished_profile.reference_dir)
    # A slower machine: other wall times, the same results.
    m = json.loads((finished_profile.runs[0].folder / "metrics.json").read_text())
    m["last"]["wall_time"] = 999.0
    (finished_profile.runs[0].folder / "metrics.json").write_text(json.dumps(m))
    assert report.main(["--profile", str(finished_profile.path)]) == 0
    said = capsys.readouterr().out
    assert "equal to the committed reference" in said and "bit for bit" in said
    result = report.against_reference(out, finished_profile.reference_dir)
    assert result["equal"] and result["rows"] is None and not result["same_folder"]
    n = len([p for p in out.rglob("*") if p.is_file()]) - 1  # every file but machine.csv
    assert sorted(result["files"]["same"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                                      if p.is_file() and p.name != "machine.csv")
    assert report.against_reference_text(result).startswith(f"**Your run equals ours bit for bit**: all {n} ")
    same = report.against_reference(finished_profile.reference_dir, finished_profile.reference_dir)
    assert same["same_folder"] and "committed reference itself" in report.against_reference_text(same)


def test_against_reference_differences_and_verdicts(finished_profile, capsys):
    import shutil

    out = report.build_report(finished_profile, log=lambda s: None)
    shutil.copytree(out, finished_profile.reference_dir)
    # Yours: MemVir + A at seed 1 falls from 0.63 to 0.40 best Recall@1 (below its baseline's 0.61).
    run = finished_profile.run("MemVir + A", 1)
    _set_value(run, "recall@1", [0.30, 0.40])
    assert report.main(["--profile", str(finished_profile.path)]) == 0
    said = capsys.readouterr().out
    assert "differs from the committed reference" in said and "Your run against ours" in said
    result = report.against_reference(out, finished_profile.reference_dir)
    assert not result["equal"] and "runs.csv" in result["files"]["different"]
    rows = result["rows"].set_index(["row", "metric"])
    ours = [62.0, 63.0]  # best Recall@1 of MemVir + A, seeds 0 and 1 (values_for: 0.52 + 0.1, 0.53 + 0.1)
    assert rows.loc[("MemVir + A", "Recall@1"), "diff"] == pytest.approx((62.0 + 40.0) / 2 - sum(ours) / 2)
    assert rows.loc[("MemVir + A", "Recall@1"), "spread"] == pytest.approx(statistics.stdev(ours))
    assert not rows.loc[("MemVir + A", "Recall@1"), "within"] and rows.loc[("A", "Recall@1"), "within"]
    assert rows.loc[("A", "MAP@R"), "diff"] == 0
    v = result["verdicts"].set_index("metric")
    # Ours: MemVir + A is +2 points at both seeds; yours: +2 at seed 0, 40 - 61 at seed 1: the mean's sign flips.
    assert v.loc["recall@1", "diff_mean_ours"] == pytest.approx(2.0)
    assert v.loc["recall@1", "diff_mean_yours"] == pytest.approx((2.0 - 21.0) / 2)
    assert not v.loc["recall@1", "same_sign"] and v.loc["map_at_r", "same_sign"]
    text = report.against_reference_text(result)
    assert "Your run differs from ours" in text and "MemVir + A Recall@1" in text


def test_promote_writes_the_reference_and_reproduce_never_does(finished_profile):
    assert report.main(["--profile", str(finished_profile.path)]) == 0
    assert not finished_profile.reference_dir.exists()
    assert report.main(["--profile", str(finished_profile.path), "--promote"]) == 0
    assert (finished_profile.reference_dir / "runs.csv").read_bytes() == \
        (finished_profile.report_dir / "runs.csv").read_bytes()


# ---- the report reads each run as the run its profile describes, and says what it leaves out or mixes ----------


def _profile_with_flags(tmp_path):
    """GOOD with flags the profile sets for every row (as configs/cpu.yml sets modellr and dim), runs finished."""
    text = runfolders.GOOD.replace("common: {data_name: glyphs, epochs: 2}",
                                   "common: {data_name: glyphs, epochs: 2, modellr: 0.001, dim: 16}")
    from memvir.profile import load_profile

    prof = load_profile(runfolders.make_repo(tmp_path, text))
    for run in prof.runs:
        runfolders.fake_run(run.folder, run.seed, runfolders.values_for(run.row, run.seed),
                            memvir=run.row == "MemVir + A", params=run.params)
    return prof


def test_a_run_made_with_other_flags_is_not_reported_as_the_profiles(tmp_path, capsys):
    prof = _profile_with_flags(tmp_path)
    run = prof.runs[3]
    config = json.loads((run.folder / "config.json").read_text())
    (run.folder / "config.json").write_text(json.dumps({**config, "modellr": 0.1, "dim": 8}))
    for partial in ([], ["--partial"]):
        assert report.main(["--profile", str(prof.path), *partial]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {run.folder} holds a run made with other flags (")
        assert "--modellr: 0.1 there, 0.001 now" in err[0] and "--dim: 8 there, 16 now" in err[0]
    assert not prof.report_dir.exists()


@pytest.mark.parametrize("name,link", [("metrics.json", "symlink"), ("metrics.json", "hardlink"),
                                       ("config.json", "symlink")])
def test_a_metrics_json_that_is_another_seeds_is_refused(finished_profile, capsys, name, link):
    import os

    this, other = finished_profile.runs[1].folder, finished_profile.runs[0].folder  # row A, seeds 1 and 0
    (this / name).unlink()
    os.symlink(other / name, this / name) if link == "symlink" else os.link(other / name, this / name)
    if name == "config.json":  # the seed check would say it first; this is about the file, not its content
        config = json.loads((other / name).read_text())
        (other / name).unlink()
        (other / name).write_text(json.dumps({k: v for k, v in config.items() if k != "seed"}))
    assert report.main(["--profile", str(finished_profile.path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {this / name}: is a link to ") and "own file" in err[0]


def test_runs_on_two_kinds_of_kernels_are_said_in_one_line(finished_profile):
    for i, run in enumerate(finished_profile.runs):
        config = json.loads((run.folder / "config.json").read_text())
        config["kernels"] = {"mode": "portable" if i % 2 else "native", "cpu_capability": "AVX2", "machine": "x"}
        (run.folder / "config.json").write_text(json.dumps(config))
    lines = []
    report.build_report(finished_profile, log=lines.append)
    said = [l for l in lines if "kernels" in l]
    assert len(said) == 1 and "the runs mix CPU kernels (native: 2, portable: 2)" in said[0]


def test_a_partial_table_compares_a_row_with_its_baseline_over_the_seeds_both_have(finished_profile):
    a1 = next(r for r in finished_profile.runs if (r.row, r.seed) == ("A", 1))
    _set_value(a1, "recall@1", [0.1, 0.2])  # A: 60 at seed 0, 20 at seed 1
    m1 = next(r for r in finished_profile.runs if (r.row, r.seed) == ("MemVir + A", 1))
    metrics = json.loads((m1.folder / "metrics.json").read_text())
    (m1.folder / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))  # MemVir: seed 0 only, 62
    lines = []
    out = report.build_report(finished_profile, partial=True, log=lines.append)
    table = pd.read_csv(out / "table_recall_at_1.csv").set_index("Loss")
    assert float(table.loc["MemVir + A", "Diff."]) == pytest.approx(62 - 60)  # not 62 - (60 + 20) / 2
    assert table.loc["A", "Mean"] == pytest.approx(40)  # the baseline's own mean is over all its seeds
    assert f"report: warning: left out 1 unfinished run(s) (--partial): {m1.name}" in lines
    assert ("report: warning: MemVir + A has seeds [0], its baseline A [0, 1]: its Diff. is over the seeds both "
            "have, [0]") in lines


# ---- reuse: seeds another profile ran with the same flags, read from its committed reference ------------------


REUSING = """
description: reuses t's MemVir runs at seeds 0 and 1
notebook: notebooks/05_training.ipynb
seeds: [0, 1, 2]
common: {data_name: glyphs, epochs: 2}
rows:
  - label: A
    params: {loss: Norm_SoftMax}
  - label: MemVir + A
    baseline: A
    seeds: [2]
    params: {loss: Norm_SoftMax, memvir: true, mem_num_step: 2, mem_step_gap: MEM_GAP, warm_epoch: 1}
reuse: {profile: t, seeds: [0, 1], rows: [MemVir + A]}
"""


def _reusing_profile(finished_profile, gap=1):
    """configs/u.yml beside t.yml; t's report promoted to its reference; u's own runs finished with values 0.3."""
    report.build_report(finished_profile, out=finished_profile.reference_dir, log=lambda s: None)
    path = finished_profile.root / "configs" / "u.yml"
    path.write_text(REUSING.replace("MEM_GAP", str(gap)))
    prof = load_profile(path)
    for run in prof.runs:
        runfolders.fake_run(run.folder, run.seed, {k: [0.3, 0.3] for k in ("recall@1", "r_precision", "map_at_r")},
                            params=run.params)
    return prof


def test_a_reused_run_is_the_other_profiles_line_under_this_profiles_row(finished_profile):
    prof = _reusing_profile(finished_profile)
    assert prof.expected_runs == 3 + 1 + 2
    runs, evaluations = report.collect(prof)
    assert list(zip(runs["row"], runs["seed"])) == [("A", 0), ("A", 1), ("A", 2), ("MemVir + A", 0),
                                                    ("MemVir + A", 1), ("MemVir + A", 2)]
    r = runs.set_index(["row", "seed"])
    for seed in (0, 1):  # t's values (runfolders.values_for), not u's 0.3
        mine = runfolders.values_for("MemVir + A", seed)
        assert r.loc[("MemVir + A", seed), "best_recall@1"] == pytest.approx(max(mine["recall@1"]))
        assert r.loc[("MemVir + A", seed), "last_map_at_r"] == pytest.approx(mine["map_at_r"][-1])
        assert r.loc[("MemVir + A", seed), "baseline"] == "A"
        assert r.loc[("MemVir + A", seed), "kernels"] == "unrecorded (PROFILE=t's reference)"
    assert r.loc[("MemVir + A", 2), "best_recall@1"] == pytest.approx(0.3)
    reused = evaluations[(evaluations["row"] == "MemVir + A") & (evaluations["seed"] < 2)]
    assert sorted(reused["map_at_r"]) == pytest.approx(sorted(runfolders.values_for("MemVir + A", 0)["map_at_r"]
                                                              + runfolders.values_for("MemVir + A", 1)["map_at_r"]))
    lines = report.mixed(runs, prof)
    assert "MemVir + A against A: the pairs of seeds [0, 1] were made on two kinds of kernels" in lines


def test_a_run_with_other_flags_is_never_reused(finished_profile):
    prof = _reusing_profile(finished_profile, gap=3)  # t's MemVir runs have mem_step_gap 1
    with pytest.raises(ValueError, match=r"u.yml: reuse: PROFILE=t has no finished run of row 'MemVir \+ A' at "
                                         r"seed 0 with the same flags"):
        report.collect(prof)


@pytest.mark.parametrize("reuse,said", [
    ("{profile: t, seeds: [2], rows: [MemVir + A]}", "reuse.seeds [2] of row 'MemVir + A' are seeds the row runs"),
    ("{profile: t, seeds: [0], rows: [B]}", "reuse.rows names 'B', which is not a row label"),
    ("{profile: u, seeds: [0], rows: [A]}", "reuse names this profile itself"),
    ("{profile: t, seeds: [true], rows: [A]}", "reuse must be {profile:"),
    ("{profile: t, seeds: [0]}", "reuse must be {profile:"),
])
def test_a_bad_reuse_is_one_line_naming_the_file(finished_profile, reuse, said):
    path = finished_profile.root / "configs" / "u.yml"
    path.write_text(REUSING.replace("MEM_GAP", "1").replace("{profile: t, seeds: [0, 1], rows: [MemVir + A]}",
                                                            reuse))
    with pytest.raises(ValueError, match=re.escape(said)) as err:
        load_profile(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_rows_run_is_at_its_own_first_seed(finished_profile):
    path = finished_profile.root / "configs" / "u.yml"
    path.write_text(REUSING.replace("MEM_GAP", "1"))
    assert load_profile(path).run("MemVir + A").seed == 2  # the profile's seeds start at 0; the row's at 2
