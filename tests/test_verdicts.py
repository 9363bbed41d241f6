"""What the report decides (memvir/report/verdicts.py) and the answer on the book's first page (answer.py), against
oracles written here: Student's t from scipy, the paper's printed numbers, rules applied by hand to the committed
comparisons, and a legacy report brought to the current format with every number kept."""
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

import memvir.report as report

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "results" / "reference"


def line(diff, p_holm, ahead=0, pairs=3, sd=1.0, row="R", group="g"):
    half = stats.t.ppf(0.975, pairs - 1) * sd / math.sqrt(pairs)
    return {"row": row, "group": group, "baseline": "B", "metric": "map_at_r", "selection": "val", "pairs": pairs,
            "diff_mean": diff, "diff_sd": sd, "ci_low": diff - half, "ci_high": diff + half, "p": p_holm / 2,
            "p_holm": p_holm, "significant": p_holm < 0.05, "ahead": ahead}


@pytest.mark.parametrize("diff,p_holm,want", [(1.0, 0.01, "gain"), (-1.0, 0.01, "loss"), (-1.0, 0.2, "noise"),
                                              (2.0, float("nan"), "noise")])
def test_side_reads_holm(diff, p_holm, want):
    assert report.side(line(diff, p_holm)) == want


def test_tally_and_sides_count_integers():
    lines = pd.DataFrame([line(-2, 0.01, 0, 5, row="a"), line(-1, 0.3, 1, 5, row="b"), line(1, 0.02, 5, 5, row="c")])
    t = report.tally(lines)
    assert (t["n"], t["gains"], t["losses"], t["noise"], t["uncorrected"]) == (3, 1, 1, 1, 2)
    assert t["loss_rows"] == ["a"] and t["gain_rows"] == ["c"]
    assert report.sides(lines) == {"all_ahead": 1, "all_behind": 1, "seeds_ahead": 6, "seeds": 15, "n": 3}


@pytest.mark.parametrize("n,m", [(3, 54), (3, 6), (5, 12), (5, 1)])
def test_holm_threshold_is_students_t(n, m):
    assert report.holm_threshold(n, m) == pytest.approx(stats.t.ppf(1 - 0.05 / (2 * m), n - 1) / math.sqrt(n))


def test_detectable_passes_exactly_at_holms_first_step():
    """A mean difference of `holm` at that SD gives a paired t-test p of exactly 0.05 / m (two-sided)."""
    c = line(0.3, 0.5, pairs=3, sd=0.39)
    need = report.detectable(c, 6)
    t = need["holm"] / (0.39 / math.sqrt(3))
    assert 2 * stats.t.sf(t, 2) == pytest.approx(0.05 / 6)
    assert need["uncorrected"] == pytest.approx(c["ci_high"] - c["diff_mean"])
    assert need["at_most"] == c["ci_high"]


@pytest.mark.parametrize("share,words", [(0.94, "nearly all"), (0.9, "nearly all"), (0.8, "most"), (0.3, "a part"),
                                         (0.1, "little"), (-0.2, "none")])
def test_share_words(share, words):
    assert report.share_words(share) == words


@pytest.mark.parametrize("k,said", [(0, "no losses"), (1, "1 loss"), (2, "2 losses"), (6, "6 losses")])
def test_plural_agrees_in_number(k, said):
    assert report.plural(k, "loss") == said


def test_said_lines_says_size_seeds_and_what_could_pass():
    lines = pd.DataFrame([line(-2.27, 0.001, 0, 5, row="a"), line(-2.89, 0.001, 0, 5, row="b"),
                          line(-2.26, 0.001, 0, 5, row="c")])
    assert report.said_lines(lines, 6) == ("lost in all 3 comparisons (Holm p < 0.05), by 2.26 to 2.89 MAP@R points, "
                                           "in all 15 seeds")
    quiet = pd.DataFrame([line(0.70, 0.16, 3, 3, sd=0.39, row="x")])
    said = report.said_lines(quiet, 6)
    need = stats.t.ppf(1 - 0.025 / 6, 2) * 0.39 / math.sqrt(3)
    assert said.startswith("within the noise in 1 comparison: x +0.70 [") and f"had to be {need:.2f} points" in said


def test_the_rule_for_a_named_option_applied_by_hand():
    """configs/controls.yml's rule on the committed comparisons, by hand: a loss passes when past proxies are a
    significant MAP@R gain (best validation epoch) over the baseline and over the current copies."""
    c = report.comparisons(REF / "controls")
    c = c[(c["metric"] == "map_at_r") & (c["selection"] == "val")]
    rule = json.loads((REF / "controls" / "report.json").read_text())["rules"]["named_option"]
    by_hand = {}
    for loss, group in (("Norm-SoftMax", "normsoftmax"), ("Proxy-NCA", "proxynca"), ("Softmax", "softmax"),
                        ("CosFace", "cosface"), ("ArcFace", "arcface"), ("Proxy-Anchor", "proxyanchor")):
        two = c[(c["row"] == f"past proxies + {loss}") & c["group"].isin([group, "past_vs_current"])]
        assert len(two) == 2
        by_hand[loss] = bool((two["p_holm"] < 0.05).all() and (two["diff_mean"] > 0).all())
    assert rule["candidates"] == by_hand and rule["passed"] == (sum(by_hand.values()) >= 2) is False


def test_the_pretraining_gate_reads_the_last_epoch():
    c = report.comparisons(REF / "pretrained")
    gate = c[(c["group"] == "pretraining") & (c["metric"] == "map_at_r") & (c["selection"] == "last")]
    rule = json.loads((REF / "pretrained" / "report.json").read_text())["rules"]["gate"]
    assert rule["selection"] == "last" and len(gate) == 2
    assert rule["passed"] == bool(((gate["p_holm"] < 0.05) & (gate["diff_mean"] > 0)).all()) is True


def test_evaluate_rule_on_a_made_table():
    table = pd.DataFrame([line(1.0, 0.01, row="a", group="x"), line(1.0, 0.01, row="a", group="y"),
                          line(1.0, 0.3, row="b", group="x")])
    rule = {"kind": "gains", "at_least": 1, "candidates": {"A": [["a", "x"], ["a", "y"]], "B": [["b", "x"]]},
            "says": {"pass": "yes", "fail": "no"}}
    out = report.evaluate_rule("r", rule, table)
    assert out["candidates"] == {"A": True, "B": False} and out["passed"] and out["says"] == "yes"
    assert not report.evaluate_rule("r", dict(rule, at_least="all"), table)["passed"]
    with pytest.raises(ValueError, match="no comparison of 'c' in group 'x'"):
        report.evaluate_rule("r", dict(rule, candidates={"C": [["c", "x"]]}), table)


def test_the_papers_claimed_effect_is_its_printed_difference():
    assert report.paper_claim() == {"Norm-SoftMax": 3.27, "Proxy-NCA": 2.72}  # official README, CARS196 MAP@R


def test_the_answer_counts_what_the_reports_hold():
    """The first sentence's counts over the equal-budget regimes, counted here from each profile's comparisons.csv
    (the regimes' lines as the profiles declare them)."""
    from memvir.profile import load_profile

    lines = []
    for name in ("study", "splits", "pretrained", "converged", "protocol"):
        c = report.comparisons(REF / name)
        c = c[(c["metric"] == "map_at_r") & (c["selection"] == "val")]
        for entry in load_profile(name).headline:
            if entry["equal_budget"]:
                lines += [c[(c["row"] == r) & (c["group"] == g)].iloc[0] for r, g in entry["lines"]]
    losses = [x for x in lines if x["p_holm"] < 0.05 and x["diff_mean"] < 0]
    assert not any(x["p_holm"] < 0.05 and x["diff_mean"] > 0 for x in lines)
    first = report.answer_sentences(report.regimes(REF))[0]
    behind = sum(x["diff_mean"] < 0 for x in lines)
    assert (f"in none of the {len(lines)} comparisons of the five regimes we ran: it was behind in {behind} and a "
            f"significant loss in {len(losses)}, by {min(-x['diff_mean'] for x in losses):.2f} to "
            f"{max(-x['diff_mean'] for x in losses):.2f} points.") in first


def test_rebuild_keeps_every_number_of_a_legacy_report(tmp_path):
    """The default profile's committed report (seeds ahead as text "k/n") brought to the current format: every
    cell of comparisons.csv the same, `positive` k/n become `ahead` k, the other files byte for byte."""
    folder = tmp_path / "cpu"
    shutil.copytree(REF / "cpu", folder)
    report.rebuild_report("cpu", folder, log=lambda s: None)
    old = pd.read_csv(REF / "cpu" / "comparisons.csv", dtype=str, keep_default_na=False)
    new = pd.read_csv(folder / "comparisons.csv", dtype=str, keep_default_na=False)
    if "positive" in old:
        assert list(old["positive"]) == [f"{k}/{n}" for k, n in zip(new["ahead"], new["pairs"])]
    for col in (c for c in old.columns if c != "positive"):
        assert list(old[col]) == list(new[col]), col
    for path in (REF / "cpu").rglob("*"):
        if path.is_file() and path.name not in ("comparisons.csv", "report.json") and "forest" not in path.name:
            assert (folder / path.relative_to(REF / "cpu")).read_bytes() == path.read_bytes(), path.name
    summary = json.loads((folder / "report.json").read_text())
    assert summary["trusted_selection"] == "val" and summary["row_facts"]["MemVir + Norm-SoftMax"]["U"] == 16


@pytest.mark.parametrize("extra,match", [
    ("headline: [{regime: r, order: 1, lines: [[MemVir + A, nope]]}]\n", r"headline\[0\] must list \[row, group\]"),
    ("rules: {x: {kind: gains, candidates: {a: [[A, main]]}, says: {pass: p, fail: f}}}\n",
     r"rules.x must list \[row, group\] pairs.*\['A', 'main'\] is not one"),
])
def test_a_profile_names_only_its_own_comparisons(tmp_path, extra, match):
    from memvir.profile import load_profile
    from runfolders import GOOD, make_repo

    with pytest.raises(ValueError, match=match):
        load_profile(make_repo(tmp_path, GOOD + "groups: {main: [MemVir + A]}\n" + extra))
    ok = "headline: [{regime: r, order: 1, equal_budget: true, lines: [[MemVir + A, main]]}]\n"
    (tmp_path / "b").mkdir()
    profile = load_profile(make_repo(tmp_path / "b", GOOD + "groups: {main: [MemVir + A]}\n" + ok))
    assert profile.headline[0]["order"] == 1


def test_a_partial_report_leaves_out_a_regime_without_finished_pairs(tmp_path):
    """A regime whose row has no finished run: out of a --partial report's report.json (it is not on the first
    page until its pairs are there); a complete report of the same runs would fail, and once they finish it is in."""
    import runfolders
    from memvir.profile import load_profile

    extra = ("groups: {main: [MemVir + A]}\n"
             "headline: [{regime: r, order: 1, equal_budget: true, lines: [[MemVir + A, main]]}]\n")
    profile = load_profile(runfolders.make_repo(tmp_path, runfolders.GOOD + extra))
    for run in profile.runs:
        runfolders.fake_run(run.folder, run.seed, runfolders.values_for(run.row, run.seed), params=run.params,
                            finished=run.row == "A")
    out = report.build_report(profile, partial=True, log=lambda s: None)
    assert json.loads((out / "report.json").read_text())["headline"] == []
    for run in profile.runs:
        metrics = json.loads((run.folder / "metrics.json").read_text())
        (run.folder / "metrics.json").write_text(json.dumps({**metrics, "finished": True}))
    out = report.build_report(profile, log=lambda s: None)
    (regime,) = json.loads((out / "report.json").read_text())["headline"]
    assert [(c["row"], c["baseline"], c["pairs"]) for c in regime["lines"]] == [("MemVir + A", "A", 2)]


@pytest.mark.parametrize("highs,said", [
    ((1.0, 2.0), "that excludes the paper's claimed +3.27 for Norm-SoftMax and +2.72 for Proxy-NCA."),
    ((1.0, 3.0), "that excludes the paper's claimed +3.27 for Norm-SoftMax, not its +2.72 for Proxy-NCA."),
    ((4.0, 3.0), "that does not exclude the paper's claimed +3.27 for Norm-SoftMax and +2.72 for Proxy-NCA."),
])
def test_the_answer_says_what_a_quiet_decisive_comparison_still_allows(highs, said):
    """Each decisive comparison that is not significant: its interval's upper end, "at most", against the paper's
    printed claim (+3.27 / +2.72 MAP@R, official README, CARS196)."""
    lines = []
    for loss, high in zip(("Norm-SoftMax", "Proxy-NCA"), highs):
        c = line(0.5, 0.3, ahead=2)
        lines.append(dict(c, loss=loss, ci_high=high))
    entry = {"regime": "r", "equal_budget": True, "decisive": True, "lines": lines, "selection_name": "x",
             "family": 2}
    last = report.answer_sentences([entry])[-1]
    assert last == (f"Trained as long, MemVir adds at most {highs[0]:+.2f} MAP@R points for Norm-SoftMax and at most "
                    f"{highs[1]:+.2f} for Proxy-NCA to its baseline (the upper ends of the 95% intervals): " + said)


def test_a_significant_decisive_comparison_is_said_as_the_gain_not_as_a_bound():
    lines = [dict(line(2.0, 0.01, ahead=3), loss="Norm-SoftMax"), dict(line(2.0, 0.02, ahead=3), loss="Proxy-NCA")]
    entry = {"regime": "r", "equal_budget": True, "decisive": True, "lines": lines, "selection_name": "x",
             "family": 2}
    sentences = report.answer_sentences([entry])
    assert sentences[0] == "**MemVir delivers** (r)." and not any("at most" in s for s in sentences)


def test_a_loss_the_paper_claims_nothing_for_gets_its_bound_without_a_verdict():
    entry = {"regime": "r", "equal_budget": True, "decisive": True, "selection_name": "x", "family": 1,
             "lines": [dict(line(0.5, 0.3, ahead=2), loss="Softmax", ci_high=1.5)]}
    assert report.answer_sentences([entry])[-1] == ("Trained as long, MemVir adds at most +1.50 MAP@R points for "
                                                    "Softmax to its baseline (the upper ends of the 95% intervals).")
