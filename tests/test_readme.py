"""The README's numbers are the committed report's: its results table equals results/reference/cpu/tables.md (the
Mean ± Std. of each row and metric), and its paired sentence the paired tables beside it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TITLES = ("Recall@1", "RP", "MAP@R")


def markdown_tables(text):
    """{heading: [[cells], ...]} of every `a | b | c` table under a `## heading`."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif " | " in line and not set(line) <= set("-| ") and heading:
            out.setdefault(heading, []).append([c.strip() for c in line.split("|")])
    return out


def readme_results():
    """{(row, metric): (mean, std)} of the README's results table."""
    section = README[README.index("## What `make reproduce` shows"):README.index("## Layout")]
    lines = [ln for ln in section.splitlines() if ln.count(" | ") == 3 and "±" in ln]
    out = {}
    for ln in lines:
        row, *cells = [c.strip() for c in ln.split("|")]
        for title, cell in zip(TITLES, cells):
            mean, std = re.fullmatch(r"(-?[\d.]+) ± ([\d.]+)", cell).groups()
            out[(row, title)] = (mean, std)
    return out


def test_readme_results_table_is_the_committed_report():
    quoted = readme_results()
    assert len(quoted) == 12  # four rows x three metrics
    tables = markdown_tables((ROOT / "results" / "reference" / "cpu" / "tables.md").read_text())
    for title in TITLES:
        header, *rows = tables[f"{title} (best)"]
        mean, std = header.index("Mean"), header.index("Std.")
        for cells in rows:
            assert quoted[(cells[0], title)] == (cells[mean], cells[std]), (cells[0], title)


@pytest.mark.parametrize("metric,title", [("recall_at_1", "Recall@1"), ("r_precision", "RP"), ("map_at_r", "MAP@R")])
def test_readme_paired_differences_are_the_committed_report(metric, title):
    import pandas as pd

    paired = pd.read_csv(ROOT / "results" / "reference" / "cpu" / f"paired_{metric}_best.csv")
    sentence = " ".join(README[README.index("Paired by seed, MemVir minus its baseline"):].split("\n\n")[0].split())
    for _, row in paired.iterrows():
        text = f"{row['Mean']:+.2f} ± {row['Std.']:.2f}".replace("-", "−")
        assert text in sentence, (row["Loss"], title, text)


def library_blocks():
    """The README's two "MemVir in your own code" blocks: the one with our loss, the one with a PML loss."""
    out = []
    for start in ("## MemVir in your own code", "**On pytorch-metric-learning's losses.**"):
        section = README[README.index(start):]
        begin = section.index("```python") + len("```python")
        out.append(section[begin:section.index("```", begin)])
    return out


# What each block prints, from MemVir's rules: 42 epochs of 8 steps, the memory filling from epoch 40, holds 15
# steps before the last one; every (M+1) = 11th is taken from position M = 10: one step, so 98 + 98 classes. The
# PML block: 3 epochs of 5 steps from epoch 1 (U): 9 steps stored, positions 1, 3, 5 (M = 1), N = 3: 10 + 3 x 10.
LIBRARY_PRINTS = ["196 classes in the last step", "40 classes in the last step"]


@pytest.mark.parametrize("block", [0, 1], ids=["ours", "pml"])
def test_readme_library_examples_run_as_written(capsys, block):
    exec(compile(library_blocks()[block], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == LIBRARY_PRINTS[block]


WHERE_QUOTED = {  # profile: the groups of its report whose every comparison the README's table must quote
    "splits": None,  # all
    "pretrained": ["pretraining", "memvir", "proxies"],
    "controls": ["normsoftmax", "proxynca", "softmax", "cosface", "arcface", "proxyanchor", "past_vs_current"],
    "converged": ["budgets_normsoftmax", "budgets_proxynca", "memvir_vs_past"],
    "protocol": None,  # all: against the decayed baseline, against the long one, the epochs alone
}


def _where_section():
    return README[README.index("**Does MemVir deliver? The evidence, regime by regime.**"):README.index("## Layout")]


def _reference_lines(profile, groups):
    """{(row, against): [Δ [95% CI], k/n, Holm p]} of a committed report, as report.compact_table writes them."""
    import memvir.report as report

    c = report.comparisons(ROOT / "results" / "reference" / profile)
    lines = {}
    for group in groups or dict.fromkeys(c["group"]):
        mine = c[(c["group"] == group) & (c["metric"] == "map_at_r") & (c["selection"] == "val")]
        for _, row in report.compact_table(c, group, "val", ("map_at_r",)).iterrows():
            against = mine.loc[mine["row"] == row["Row"], "baseline"].iloc[0]
            lines[(row["Row"], against)] = [row["Δ MAP@R [95% CI]"], row["k/n"], row["Holm p"]]
    return lines


def test_readme_where_table_is_the_committed_reports():
    """Every line of the regimes' table equals report.compact_table of its profile's committed
    report (MAP@R, best validation epoch), cell for cell; and the groups WHERE_QUOTED names are quoted whole
    (controls: its past-proxies rows)."""
    quoted = {}
    for ln in _where_section().splitlines():
        cells = [c.strip() for c in ln.split("|")]
        if len(cells) == 6 and cells[0] in WHERE_QUOTED:
            quoted.setdefault(cells[0], {})[(cells[1], cells[2])] = cells[3:]
    assert set(quoted) == set(WHERE_QUOTED)
    for profile, groups in WHERE_QUOTED.items():
        want = _reference_lines(profile, groups)
        if profile == "controls":
            want = {k: v for k, v in want.items() if k[0].startswith("past proxies +")}
        assert quoted[profile] == want, profile


def test_readme_where_prose_numbers_are_the_reports():
    """The numbers the section's prose states: the pretraining's gains, the controls' run and comparison counts,
    and how many losses have past proxies ahead in every seed (of the current copies, of the baseline)."""
    import json

    import memvir.report as report

    section = " ".join(_where_section().split())
    pre = report.comparisons(ROOT / "results" / "reference" / "pretrained")
    gate = pre[(pre["group"] == "pretraining") & (pre["metric"] == "map_at_r") & (pre["selection"] == "val")]
    assert "(+{:.1f} and +{:.1f} MAP@R)".format(*gate["diff_mean"]) in section
    folder = ROOT / "results" / "reference" / "controls"
    c = report.comparisons(folder)
    c = c[(c["metric"] == "map_at_r") & (c["selection"] == "val")]
    runs = json.loads((folder / "report.json").read_text())["runs"]
    family = len(c.drop_duplicates(["row", "baseline"]))
    assert f"three seeds, {runs} runs" in section and f"(three seeds, {family} comparisons)" in section

    def all_ahead(groups):
        lines = c[c["group"].isin(groups) & c["row"].str.startswith("past proxies +")]
        return [r for r, k, n in zip(lines["row"], lines["ahead"], lines["pairs"]) if k == n == 3]

    conv = report.comparisons(ROOT / "results" / "reference" / "converged")
    conv = conv[(conv["metric"] == "map_at_r") & (conv["selection"] == "val")
                & conv["row"].str.startswith("MemVir") & conv["group"].str.startswith("budgets")]
    assert (conv["diff_mean"] < 0).all()
    assert "by {:.1f} to {:.1f} points".format(-conv["diff_mean"].max(), -conv["diff_mean"].min()) in section
    words = ["no", "one", "two", "three", "four", "five", "six"]
    assert f"seed for {words[len(all_ahead(['past_vs_current']))]} of six losses" in section
    ahead = all_ahead(["normsoftmax", "proxynca", "softmax", "cosface", "arcface", "proxyanchor"])
    named = ", ".join(r.removeprefix("past proxies + ") for r in ahead)
    assert f"ahead of the baseline in every seed for {words[len(ahead)]}, {named}." in section




def test_readme_where_protocol_prose_is_its_report():
    """The protocol bullet's numbers: MemVir against the decayed baseline, the long baseline against it, MemVir
    against the long one (best validation epoch), the last epoch's lead in every seed, and each long row's fall
    from its best test epoch to its last; and the decayed baseline against the constant-rate one at its budget."""
    import pandas as pd

    import memvir.report as report
    from memvir.profile import load_profile

    section = " ".join(_where_section().split())
    c = report.comparisons(ROOT / "results" / "reference" / "protocol")
    c = c[c["metric"] == "map_at_r"]

    def diffs(group_test, selection="val"):
        lines = c[c["group"].map(group_test) & (c["selection"] == selection)].drop_duplicates(["row", "baseline"])
        return lines.set_index("row")

    short = diffs(lambda g: g.startswith("budgets_"))
    alone = diffs(lambda g: g == "epochs_alone")
    long, long_last = diffs(lambda g: g.endswith("_vs_long")), diffs(lambda g: g.endswith("_vs_long"), "last")
    assert short["significant"].all() and not long["significant"].any()
    assert "against the decayed baseline: {:+.1f} (Norm-SoftMax) and {:+.1f} (Proxy-NCA), both passing Holm".format(
        *short["diff_mean"]) in section
    assert "gains {:+.1f} and {:+.1f} over the same decayed one".format(*alone["diff_mean"]) in section
    assert "MemVir against it, {:+.1f} and {:+.1f}, ahead in every seed but within the noise".format(
        *long["diff_mean"]) in section and (long["ahead"] == 3).all()
    assert (long_last["ahead"] == 3).all() and long_last["significant"].all()
    assert {f"{d:+.1f}" for d in long_last["diff_mean"]} == {"+2.2"}
    assert "MemVir is ahead of the long baseline by +2.2 for both losses, in every seed and passing Holm" in section
    best = diffs(lambda g: g.endswith("_vs_long"), "best")
    falls = best["baseline_mean"] - long_last["baseline_mean"], best["row_mean"] - long_last["row_mean"]
    assert ("the long baseline falls by {:.1f} and {:.1f} points, MemVir by {:.1f} and {:.1f}".format(
        *falls[0], *falls[1])) in section
    mean = {p: 100 * pd.read_csv(ROOT / "results" / "reference" / p / "runs.csv").groupby("row")["val_map_at_r"].mean()
            for p in ("protocol", "converged")}
    budget = {r.label: r.params["epochs"] for r in load_profile("protocol").rows}  # B of each decayed baseline
    bar = [(mean["protocol"][f"{loss}, paper schedule"],
            mean["converged"][f"{loss}, {budget[f'{loss}, paper schedule']} epochs"])
           for loss in ("Norm-SoftMax", "Proxy-NCA")]
    assert all(decayed < constant for decayed, constant in bar)
    assert ("(mean MAP@R {:.1f} against {:.1f} for Norm-SoftMax, {:.1f} against {:.1f} for Proxy-NCA)".format(
        *bar[0], *bar[1])) in section


def test_readme_where_costs_are_the_reports_machine_files():
    """Each profile's cost the section states: its runs' summed wall times in hours and its number of runs."""
    import pandas as pd

    section = " ".join(_where_section().split())
    for profile in ["tune", "splits", "plateau", "pretrained", "controls", "converged", "protocol"]:
        times = pd.read_csv(ROOT / "results" / "reference" / profile / "machine.csv")["wall_time"]
        stated = f"{profile} {times.sum() / 3600:.1f}" + (" hours" if profile == "tune" else "")
        assert f"{stated} ({len(times)}" in section, profile


def _map(profile, selection):
    import memvir.report as report

    c = report.comparisons(ROOT / "results" / "reference" / profile)
    return c[(c["metric"] == "map_at_r") & (c["selection"] == selection)]


def _holm_needs(n, m, sd):
    """The smallest mean paired difference passing Holm's first step (p < 0.05 / m), written out: t x sd / sqrt(n)."""
    import math

    from scipy import stats

    return stats.t.ppf(1 - 0.025 / m, n - 1) * sd / math.sqrt(n)


def test_readme_converged_says_which_losses_pass():
    """Issue 30, item 1: only the 2B row with a 3-epoch warm-up passes Holm; the two-thirds warm-up rows are within
    the noise, with the intervals' upper ends the README quotes; the 2% is of MemVir's run, 31% of the baseline's."""
    section = " ".join(_where_section().split())
    c = _map("converged", "val")
    c = c[c["group"].str.startswith("budgets") & c["row"].str.startswith("MemVir")].set_index("row")
    assert list(c.index[c["significant"]]) == ["MemVir + Norm-SoftMax, 152 epochs, U=3"]
    d = c.loc["MemVir + Norm-SoftMax, 152 epochs, U=3"]
    assert "only Norm-SoftMax at 2B with U=3 passes Holm ({:+.2f} [{:+.2f}, {:+.2f}])".format(
        d["diff_mean"], d["ci_low"], d["ci_high"]) in section
    two_thirds = c.loc[["MemVir + Norm-SoftMax, 76 epochs, U=51", "MemVir + Proxy-NCA, 96 epochs, U=64"]]
    assert not two_thirds["significant"].any()
    assert "their intervals reaching {:+.2f} and {:+.2f}".format(*two_thirds["ci_high"]) in section
    assert round(100 * 40 / 2000) == 2 and round(100 * 40 / 130) == 31  # the official README's U, epochs
    assert "is 2% of the run, the share of the paper's MemVir runs (40 of 2,000 epochs); 40 epochs are 31%" in section
    assert "still loses" not in section


def test_readme_pretrained_says_the_last_epoch_too():
    """Issue 30, item 2: at the last epoch (the gate's selection) MemVir at U=16 is a Holm-significant loss for both
    losses and past proxies + Proxy-NCA a significant gain, in all five seeds."""
    section = " ".join(_where_section().split())
    last = _map("pretrained", "last").set_index("row")
    memvir = last.loc[["MemVir + Norm-SoftMax, pretrained", "MemVir + Proxy-NCA, pretrained"]]
    assert memvir["significant"].all() and (memvir["diff_mean"] < 0).all() and (memvir["ahead"] == 0).all()
    assert "a Holm-significant loss for both losses ({:+.2f} and {:+.2f}, behind in all 5 seeds each)".format(
        *memvir["diff_mean"]) in section
    p = last.loc["past proxies + Proxy-NCA, pretrained"]
    assert p["significant"] and p["ahead"] == p["pairs"] == 5
    assert "a Holm-significant gain for Proxy-NCA ({:+.2f}, ahead in all 5 seeds)".format(p["diff_mean"]) in section
    val = _map("pretrained", "val").set_index("row").loc[memvir.index]
    assert not val["significant"].any()
    assert "within the noise at the best validation epoch ({:+.2f} and {:+.2f})".format(*val["diff_mean"]) in section


def test_readme_protocol_shares_and_what_could_be_detected():
    """Issue 30, item 3: the share of the paper-style gain the epochs alone give at each selection (written out:
    alone / paper), its words by the report's thresholds, and the smallest gain that would have passed Holm."""
    section = " ".join(_where_section().split())
    shares = {}
    for sel in ("val", "last", "best"):
        c = _map("protocol", sel)
        paper = c[c["group"].str.startswith("budgets")].set_index("baseline")["diff_mean"]
        alone = c[c["group"] == "epochs_alone"].set_index("baseline")["diff_mean"]
        shares[sel] = [round(100 * alone[f"{loss}, paper schedule"] / paper[f"{loss}, paper schedule"])
                       for loss in ("Norm-SoftMax", "Proxy-NCA")]
    assert "the epochs alone give {}% and {}% of the paper-style gain".format(*shares["val"]) in section
    assert "(nearly all for Norm-SoftMax, most for Proxy-NCA;" in section and shares["val"][0] >= 90 > shares["val"][1]
    assert "at the last epoch {}% and {}%, at the best test epoch, the official code's selection, {}% and {}%".format(
        *shares["last"], *shares["best"]) in section
    c = _map("protocol", "val")
    m = len(c.drop_duplicates(["row", "baseline"]))
    long = c[c["group"].str.endswith("_vs_long")]
    need = [_holm_needs(3, m, sd) for sd in long["diff_sd"]]
    assert "a gain had to be {:.1f} and {:.1f} points to pass Holm, and the intervals reach {:+.2f} and {:+.2f}".format(
        *need, *long["ci_high"]) in section
    assert "the epochs make nearly all of it" not in section


def test_readme_controls_say_what_they_could_detect():
    """Issue 30, item 4: with three seeds and a Holm family of 54, passing needs a mean difference 19 times the SD of
    the differences; the past-proxies rows' detectable effects, each from its own SD."""
    section = " ".join(_where_section().split())
    c = _map("controls", "val")
    m = len(c.drop_duplicates(["row", "baseline"]))
    assert m == 54 and round(_holm_needs(3, m, 1.0)) == 19
    assert "three seeds, 54 comparisons): a comparison passes only where its mean difference is 19 times" in section
    past = c[c["group"].isin(["normsoftmax", "proxynca", "softmax", "cosface", "arcface", "proxyanchor"])
             & c["row"].str.startswith("past proxies +")]
    need = [_holm_needs(3, m, sd) for sd in past["diff_sd"]]
    assert "could only have shown effects of {:.0f} to {:.0f} points".format(min(need), max(need)) in section


def test_readme_controls_call_the_current_copies_what_they_are():
    """Issue 30, item 5: the "current proxies" control measures staleness, not more negative classes; the README no
    longer reads it as "as many classes do better when they are past"."""
    section = " ".join(_where_section().split())
    assert "as many classes do better" not in section and "not more negative classes" in section
    assert "the sample's own class included" in section


def test_readme_opening_is_the_books_answer():
    """The README's opening and the book's first page say the same generated words, and they are what the answer
    function makes of the committed reports now (so neither can drift from the reports)."""
    import memvir.report as report

    start, end = report.ANSWER_MARKERS
    intro = (ROOT / "book" / "intro.md").read_text()
    said = README[README.index(start) + len(start):README.index(end)].strip()
    assert said == intro[intro.index(start) + len(start):intro.index(end)].strip()
    assert said == " ".join(report.answer_sentences(report.regimes(ROOT / "results" / "reference")))
    assert README.index(start) < README.index("## On a fresh machine")
    assert (ROOT / report.ANSWER_FIGURE).is_file()
