"""What a report decides, the one place it is decided: the selection a verdict trusts, a comparison's side (a gain,
a loss, within the noise), tallies of comparisons and of seeds, what a non-significant result could have detected,
the rules a profile declares (evaluated here, written to report.json), and those decisions said in words.

A chapter reads these (through report.json or these functions) and decides nothing itself; the statistics they
rest on are memvir/report/stats.py's, on unrounded values.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .runs import SELECTION_NAMES

__all__ = ["TRUSTED_RULE", "trusted_selection", "side", "sides", "tally", "detectable", "holm_threshold",
           "share_words", "SHARE_WORDS", "number", "plural", "span", "evaluate_rule", "RULE_KINDS", "lines_of",
           "said_lines", "epochs_share", "family_size",
           "said_pairs", "shares_by_selection",
           "group_pairs", "find_rows", "row_pairs",
           "selection_flips"]


TRUSTED_RULE = ("the best validation epoch where the runs have validation classes, else the last epoch; never "
                "the best test epoch, which the test classes choose")


def trusted_selection(selections):
    """The selection a verdict trusts (TRUSTED_RULE): "val" when the report has it, else "last".

    Args:
        selections: the report's selections (report.json's "selections", or a comparisons table's column).
    """
    return "val" if "val" in set(selections) else "last"


def side(c, alpha=0.05):
    """A comparison's side: "gain" or "loss" when Holm's corrected p is below alpha, else "noise" (also when it
    cannot be tested: fewer than two paired seeds)."""
    p = c.get("p_holm", c.get("p"))
    if p is None or not np.isfinite(p) or p >= alpha:
        return "noise"
    return "gain" if c["diff_mean"] > 0 else "loss"


def sides(lines):
    """How the seeds of some comparisons fall: comparisons with every seed ahead, with every seed behind, and the
    seeds ahead and paired in all (integers)."""
    ahead, pairs = lines["ahead"].astype(int), lines["pairs"].astype(int)
    return {"all_ahead": int(((ahead == pairs) & (pairs > 0)).sum()), "all_behind": int((ahead == 0).sum()),
            "seeds_ahead": int(ahead.sum()), "seeds": int(pairs.sum()), "n": int(len(lines))}


def tally(lines):
    """Significant gains, significant losses and the rest among some comparisons, those with an uncorrected p below
    0.05 (integers), and the rows of each."""
    s = [side(c) for c in lines.to_dict("records")]
    rows = list(lines["row"])
    return {"n": len(s), "gains": s.count("gain"), "losses": s.count("loss"), "noise": s.count("noise"),
            "uncorrected": int((lines["p"] < 0.05).sum()),
            "gain_rows": [r for r, x in zip(rows, s) if x == "gain"],
            "loss_rows": [r for r, x in zip(rows, s) if x == "loss"]}


def holm_threshold(n, m, alpha=0.05):
    """How many standard deviations of the seeds' differences a mean paired difference must be to pass the first
    step of Holm's correction in a family of m (p < alpha / m, two-sided, n - 1 degrees of freedom):
    t(1 - alpha / (2m), n - 1) / sqrt(n)."""
    from scipy import stats

    if n < 2 or m < 1:
        return math.nan
    return float(stats.t.ppf(1 - alpha / (2 * m), n - 1)) / math.sqrt(n)


def detectable(c, m, alpha=0.05):
    """What a comparison could have detected, in its own unit: the smallest mean paired difference that would have
    passed Holm's first step in a family of m at the spread of differences its seeds showed (holm_threshold x
    diff_sd), the same uncorrected (the half-width of its 95% interval), and the most it still allows in each
    direction (the interval's ends)."""
    sd, n = float(c["diff_sd"]), int(c["pairs"])
    return {"holm": holm_threshold(n, m, alpha) * sd, "uncorrected": holm_threshold(n, 1, alpha) * sd,
            "at_most": float(c["ci_high"]), "at_least": float(c["ci_low"])}


# How much of a gain the epochs alone give, in words: the first share threshold a value reaches (fractions).
SHARE_WORDS = ((0.9, "nearly all"), (0.5, "most"), (0.25, "a part"), (0.0, "little"))


def share_words(share):
    """A share (a fraction) in words, by SHARE_WORDS: 0.94 "nearly all", 0.80 "most"."""
    for low, words in SHARE_WORDS:
        if share >= low:
            return words
    return "none"


def epochs_share(alone, paper):
    """The share of a paper-style gain (MemVir long against a short baseline) that the epochs alone give (the long
    baseline against the same short one): alone / paper, from their mean paired differences."""
    return float(alone["diff_mean"]) / float(paper["diff_mean"])


NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def number(k):
    """A count in words up to ten ("no", "one", ...), in digits above."""
    return NUMBERS[k] if 0 <= k < len(NUMBERS) else str(k)


def plural(k, noun, nouns=None):
    """ "1 loss", "2 losses", "no loss": a count that agrees with its noun."""
    word = noun if k == 1 else (nouns or (noun + "es" if noun.endswith(("s", "x")) else noun + "s"))
    return f"{k if k else 'no'} {word}"


def span(values, unit="MAP@R points", signed=False):
    """A range of magnitudes in words: "2.3 to 2.9 MAP@R points" (one value: "2.3 MAP@R points")."""
    low, high = min(values), max(values)
    f = "{:+.2f}" if signed else "{:.2f}"
    return (f.format(low) if f.format(low) == f.format(high) else f"{f.format(low)} to {f.format(high)}") + \
        (f" {unit}" if unit else "")


def lines_of(comparisons, pairs, metric="map_at_r", selection=None):
    """The comparisons named by (row, group) pairs, in that order, at one metric and selection (the trusted one by
    default): a DataFrame. A pair that is not in the table is an error naming it."""
    selection = selection or trusted_selection(comparisons["selection"])
    c = comparisons[(comparisons["metric"] == metric) & (comparisons["selection"] == selection)]
    out = []
    for row, group in pairs:
        hit = c[(c["row"] == row) & (c["group"] == group)]
        if hit.empty:
            raise ValueError(f"no comparison of {row!r} in group {group!r} for {metric} at {selection}")
        out.append(hit.iloc[0])
    return pd.DataFrame(out).reset_index(drop=True)


def _named(c):
    return f"{c['row']} {c['diff_mean']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def _how_many(k, n):
    """ "both comparisons", "all 6 comparisons", "1 comparison", "2 comparisons" (k of n)."""
    if k == n == 2:
        return "both comparisons"
    return f"all {n} comparisons" if k == n > 2 else plural(k, "comparison")


def said_lines(lines, m, unit="MAP@R"):
    """Some comparisons in words a person would write, by how they fall (side): the significant losses and gains
    with their size and seeds ("lost in all 6 comparisons (Holm p < 0.05), by 2.26 to 2.89 MAP@R points, in all
    30 seeds"), each named when there are two or fewer; the rest within the noise, named with their intervals and
    what the design could have detected (detectable, in a Holm family of m).
    """
    records = lines.to_dict("records")
    n, parts = len(records), []
    for what, word in (("loss", "lost"), ("gain", "gained")):
        hit = [c for c in records if side(c) == what]
        if not hit:
            continue
        ahead, seeds = sum(int(c["ahead"]) for c in hit), sum(int(c["pairs"]) for c in hit)
        every = ahead == 0 if what == "loss" else ahead == seeds
        seeds_said = f"in all {seeds} seeds" if every else f"ahead in {ahead} of {seeds} seeds"
        size = (f": {'; '.join(_named(c) for c in hit)}," if len(hit) <= 2
                else f", by {span([abs(c['diff_mean']) for c in hit], unit + ' points')},")
        parts.append(f"{word} in {_how_many(len(hit), n)} (Holm p < 0.05){size} {seeds_said}")
    quiet = [c for c in records if side(c) == "noise"]
    if quiet:
        need = [detectable(c, m)["holm"] for c in quiet]
        parts.append(f"within the noise in {_how_many(len(quiet), n)}: {'; '.join(_named(c) for c in quiet)}; "
                     f"with {int(quiet[0]['pairs'])} seeds and {m} comparisons in the Holm family, a difference "
                     f"had to be {span(need, 'points')} to pass")
    return "; ".join(parts)


RULE_KINDS = ("gains",)  # what a profile's rule can be (profile.yml `rules:`)


def evaluate_rule(name, rule, comparisons):
    """Evaluate a rule a profile declares (`rules:` in its file) on its comparisons; a dict for report.json.

    kind "gains": each candidate lists (row, group) comparisons; a candidate passes when every one of them is a
    significant gain (Holm) at the rule's metric and selection (default: MAP@R, the trusted selection). The rule
    passes when at least `at_least` candidates pass ("all": every candidate).

    Returns:
        {name, kind, metric, selection, at_least, candidates: {candidate: passed}, passing: [candidates],
        passed: bool, says: the rule's own sentence for its outcome}.
    """
    if rule.get("kind") not in RULE_KINDS:
        raise ValueError(f"rules.{name}: kind must be one of {RULE_KINDS}, got {rule.get('kind')!r}")
    metric = rule.get("metric", "map_at_r")
    selection = rule.get("selection") or trusted_selection(comparisons["selection"])
    outcome = {}
    for candidate, pairs in rule["candidates"].items():
        lines = lines_of(comparisons, [tuple(p) for p in pairs], metric, selection)
        outcome[candidate] = all(side(c) == "gain" for c in lines.to_dict("records"))
    need = len(outcome) if rule.get("at_least", "all") == "all" else int(rule["at_least"])
    passing = [k for k, ok in outcome.items() if ok]
    passed = len(passing) >= need
    return {"name": name, "kind": rule["kind"], "metric": metric, "selection": selection,
            "lines": [list(p) for pairs in rule["candidates"].values() for p in pairs],
            "selection_name": SELECTION_NAMES[selection], "at_least": need, "candidates": outcome,
            "passing": passing, "passed": passed, "says": rule["says"]["pass" if passed else "fail"]}


def group_pairs(summary, group):
    """The (row, group) pairs of a report's group (its rows with a baseline) or contrast (each pair's first row),
    from report.json's groups, contrasts and baselines: the comparisons a chapter asks about, by name."""
    if group in summary.get("contrasts", {}):
        return [(row, group) for row, _ in summary["contrasts"][group]]
    return [(row, group) for row in summary["groups"][group] if row in summary["baselines"]]


def selection_flips(comparisons, rows, selection, metrics=("recall@1", "map_at_r")):
    """Each row's difference under every selection, and the rows whose sign is not the same under the official
    selection (best test epoch) and `selection`: (table: Row, Metric, Δ <selection>..., flips: its lines that flip)."""
    from .runs import METRICS

    records = []
    for row in rows:
        for metric in metrics:
            c = comparisons[(comparisons["row"] == row) & (comparisons["metric"] == metric)]
            c = c.drop_duplicates("selection").set_index("selection")["diff_mean"]
            records.append({"Row": row, "Metric": METRICS[metric], **{f"Δ {k}": v for k, v in c.items()}})
    table = pd.DataFrame(records)
    flips = table[(table["Δ best"] > 0) != (table[f"Δ {selection}"] > 0)]
    return table, flips


def find_rows(summary, **facts):
    """The rows of a report whose facts (report.json's row_facts: loss, memory, epochs, U, ...) are those given."""
    return [row for row, f in summary["row_facts"].items() if all(f.get(k) == v for k, v in facts.items())]


def row_pairs(summary, rows):
    """Each row with the first group of the report that compares it with its baseline: (row, group) pairs."""
    return [(row, next(g for g, members in summary["groups"].items() if row in members)) for row in rows]


def family_size(comparisons, metric="map_at_r", selection=None):
    """The number of comparisons in a Holm family of the report (stats.HOLM_FAMILY): distinct (row, baseline) at one
    metric and selection (the trusted one by default)."""
    selection = selection or trusted_selection(comparisons["selection"])
    c = comparisons[(comparisons["metric"] == metric) & (comparisons["selection"] == selection)]
    return int(len(c.drop_duplicates(["row", "baseline"])))


def said_pairs(comparisons, pairs, selection=None, metric="map_at_r"):
    """The comparisons named by (row, group) pairs in words (said_lines), at one selection (trusted by default),
    with the report's own Holm family size."""
    lines = lines_of(comparisons, pairs, metric, selection)
    return said_lines(lines, family_size(comparisons, metric, lines["selection"][0]))


def shares_by_selection(comparisons, paper_pairs, control_pairs, facts):
    """The share of a paper-style gain the epochs alone give, per selection and loss, in words: "best validation
    epoch: nearly all for Norm-SoftMax (94%), most for Proxy-NCA (80%)"; a list of such phrases."""
    out = []
    for selection in dict.fromkeys(comparisons["selection"]):
        paper = lines_of(comparisons, paper_pairs, selection=selection).to_dict("records")
        alone = lines_of(comparisons, control_pairs, selection=selection).to_dict("records")
        said = [f"{share_words(epochs_share(a, c))} for {facts[c['row']]['loss']} ({100 * epochs_share(a, c):.0f}%)"
                for a, c in zip(alone, paper)]
        out.append(f"{SELECTION_NAMES[selection]}: " + ", ".join(said))
    return out
