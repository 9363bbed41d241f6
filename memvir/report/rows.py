"""What a profile's rows are and what report.json says of them: each row's facts (loss, memory, N, M, U, budget,
start, split, baseline) and memory schedule, the summary's first keys, the profile's rules and headline regimes as
records. Read by the report's build and by the chapters (through report.json), so that no one parses a label.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import batches_per_epoch
from .runs import selections
from .stats import COMPARISON_COLUMNS
from .verdicts import TRUSTED_RULE, evaluate_rule, lines_of, trusted_selection

__all__ = ["LOSS_NAMES", "row_facts", "memory_schedule", "json_records", "summary_head", "rules_and_headline"]


def json_records(df, columns, digits=4):
    """A table as flat JSON records: floats rounded, NaN as null."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(v) else round(float(v), digits)
        return v
    return [{c: cell(v) for c, v in zip(columns, rec)} for rec in df[columns].itertuples(index=False)]


def memory_schedule(params):
    """MemVir's schedule in steps for a glyph row (its profile params): what "a full memory" meant in that run.

    Returns a dict: steps_per_epoch (memvir.train's sampler over the train classes' images), span (N(M+1), the
    steps the memory holds), full_memory_steps (steps that took all N past steps: the memory, empty at epoch U,
    is full after `span` pushes, one per step; what metrics.json's full_memory_steps counts), spans (that over
    span); the paper's CARS196 runs: official_schedule.
    """
    train_classes = int(params["num_classes"]) // 2 - int(params.get("val_classes", 0))
    images = train_classes * int(params["instances_per_class"])
    steps = batches_per_epoch(images, int(params["batch_size"]), int(params.get("n_instance", 1)))
    N, M, U = (int(params.get(k) or 0) for k in ("mem_num_step", "mem_step_gap", "warm_epoch"))
    span = N * (M + 1)
    full = max(0, (int(params["epochs"]) - U) * steps - span) if params.get("memvir") else 0
    return {"steps_per_epoch": steps, "span": span, "full_memory_steps": full,
            "spans": full / span if span else 0.0}


# The losses as the paper's tables name them (memvir/paper_results), by their official spelling (Loss.name).
LOSS_NAMES = {"Norm_SoftMax": "Norm-SoftMax", "Proxy_NCA": "Proxy-NCA", "SoftMax_vanilla": "Softmax",
              "CosFace": "CosFace", "ArcFace": "ArcFace", "Proxy_Anchor": "Proxy-Anchor", "Soft_Triple": "SoftTriple"}


def row_facts(row):
    """What a profile row is, so that no one parses its label: its loss (canonical), its memory (MemVir, a past
    step's proxies alone, the current proxies' copies, learned negatives, XBM, or none) with N, M and U, its budget
    (epochs, a rate decay), its start (pretrained or not), its glyph split and its baseline.

    Args:
        row: a memvir.profile.Row.
    """
    from ..files import parse_bool
    from ..registry import LOSSES

    p = row.params
    memvir = parse_bool(p.get("memvir", False))
    if memvir:
        memory = {"both": "MemVir", "proxies": "past proxies", "embeddings": "past embeddings",
                  "current": "current proxies"}[str(p.get("mem_virtual") or "both")]
    elif int(p.get("C") or 0) > 0:
        memory = "learned negatives"
    elif int(p.get("xbm_size") or 0) > 0:
        memory = "XBM"
    else:
        memory = "none"
    decay = int(p.get("decay_step") or 0)
    cls = LOSSES.get(str(p["loss"]).lower().replace("_", "").replace("-", ""))
    return {"loss": LOSS_NAMES.get(cls.name if cls else "", str(p["loss"])), "memory": memory,
            "N": int(p.get("mem_num_step") or 0) if memvir else None,
            "M": int(p.get("mem_step_gap") or 0) if memvir else None,
            "U": int(p.get("warm_epoch") or 0) if memvir else None,
            "epochs": int(p["epochs"]), "decay_epoch": decay if 0 < decay < int(p["epochs"]) else None,
            "pretrained": str(p.get("pretrained") or "none") != "none", "split": int(p.get("glyph_seed") or 0),
            "baseline": row.baseline or None, "schedule": _schedule(p) if memvir else None}


def _schedule(params):
    """memory_schedule of a glyph row (steps per epoch, the memory's span, full-memory steps, spans); None for a
    data set the report cannot count here."""
    needed = ("num_classes", "instances_per_class", "batch_size", "epochs")
    if str(params.get("data_name", "")).lower() != "glyphs" or any(k not in params for k in needed):
        return None  # counted from the profile's own values only
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in memory_schedule(params).items()}


def summary_head(profile, runs):
    """report.json's first keys: the profile, its runs, its rows and what each row is, the selections and the one
    its verdicts trust."""
    return {"profile": profile.name, "config": str(profile.path.relative_to(profile.root)),
            "table_value": profile.table_value, "selections": selections(runs), "runs": int(len(runs)),
            "expected_runs": profile.expected_runs, "partial": bool(len(runs) < profile.expected_runs),
            "rows": [r.label for r in profile.rows], "baselines": profile.baselines, "seeds": profile.seeds,
            "data_name": str(profile.rows[0].params.get("data_name", "")).lower(),
            "description": profile.description, "trusted_selection": trusted_selection(selections(runs)),
            "trusted_rule": TRUSTED_RULE, "row_facts": {r.label: row_facts(r) for r in profile.rows},
            "groups": profile.groups, "contrasts": {k: [list(p) for p in v] for k, v in profile.contrasts.items()}}


def rules_and_headline(profile, comparisons, summary):
    """The profile's rules evaluated on its comparisons, and its regimes for the book's first page, into
    `summary` (report.json). A partial report (--partial) leaves out a rule or a regime whose comparisons have no
    finished pair yet; a complete one fails on it."""
    def unless_unfinished(make, *args):
        try:
            return make(*args)
        except ValueError:
            if summary.get("partial"):
                return None
            raise

    if profile.rules:  # the decisions the profile declared before its runs
        rules = {name: unless_unfinished(evaluate_rule, name, rule, comparisons)
                 for name, rule in profile.rules.items()}
        summary["rules"] = {name: rule for name, rule in rules.items() if rule is not None}
    if profile.headline:  # its regimes on the book's first page (memvir.report.answer)
        regimes = [unless_unfinished(_headline, entry, comparisons) for entry in profile.headline]
        summary["headline"] = [r for r in regimes if r is not None]


def _headline(entry, comparisons):
    """A regime the profile puts on the book's first page: its words, its comparisons (trusted selection, MAP@R) as
    records, those of its control (what the comparator alone gains) where it names one, and the size of the
    profile's Holm family."""
    lines = lines_of(comparisons, [tuple(p) for p in entry["lines"]])
    family = comparisons[(comparisons["metric"] == "map_at_r") & (comparisons["selection"] == lines["selection"][0])]
    out = {**{k: v for k, v in entry.items() if k not in ("lines", "control")},
           "family": int(len(family.drop_duplicates(["row", "baseline"]))),
           "lines": json_records(lines, COMPARISON_COLUMNS, 6)}
    if entry.get("control"):
        out["control"] = json_records(lines_of(comparisons, [tuple(p) for p in entry["control"]]),
                                       COMPARISON_COLUMNS, 6)
    return out


