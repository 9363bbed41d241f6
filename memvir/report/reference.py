"""Your run against ours: a report beside the committed reference of its profile, bit for bit, then by the seeds.

The reference (results/reference/<profile>/) is what we committed; `make reproduce` writes yours to
results/report/<profile>/ and never over it. MACHINE_FILE (wall times, kernels) is never compared.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import MACHINE_FILE, METRICS, SELECTION_NAMES, values_by_row
from .stats import study_comparisons

__all__ = ["kernels_summary", "against_reference", "against_reference_text"]


def _result_files(folder):
    """{relative path: bytes} of a report's result files: everything but MACHINE_FILE."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MACHINE_FILE}


def kernels_summary(folder):
    """How a report's runs computed, in words: "portable kernels at AVX2 (x86_64), 20 runs" (MACHINE_FILE)."""
    path = Path(folder) / MACHINE_FILE
    if not path.is_file():
        return "kernels not recorded"
    m = pd.read_csv(path, dtype=str, keep_default_na=False)
    kinds = m.groupby(["kernels", "cpu_capability", "machine"], sort=False).size()
    return "; ".join(("kernels not recorded" if mode == "unrecorded" else
                      f"{mode} kernels at {cap} ({machine})") + f", {n} run{'s' * (n != 1)}"
                     for (mode, cap, machine), n in kinds.items())


def against_reference(yours, ours):
    """Compare a report (your runs) with the committed reference of its profile: bit for bit, then by the seeds.

    Args:
        yours: a report folder (results/report/<profile>); ours: the reference (results/reference/<profile>).
    Returns:
        dict: same_folder (one folder given twice), equal (every result file of ours is in yours, byte for byte;
        MACHINE_FILE is not compared), files {same, different, missing, extra: [relative paths]}, kernels
        {yours, ours: kernels_summary}, selection (the tables' value), rows and verdicts (None when equal):
        rows: a line per row and metric: ours and yours (mean over the seeds, percent), diff (yours - ours),
        spread (ours' seed-to-seed standard deviation, ddof=1), within (|diff| <= spread);
        verdicts: a line per comparison (row against its baseline) and metric: the paired difference and Holm
        significance in ours and in yours (study_comparisons, one family over the profile's comparisons),
        same_sign, same_significance.
    """
    yours, ours = Path(yours), Path(ours)
    a, b = _result_files(ours), _result_files(yours)
    files = {"same": [f for f in a if f in b and a[f] == b[f]], "different": [f for f in a if f in b and a[f] != b[f]],
             "missing": [f for f in a if f not in b], "extra": [f for f in b if f not in a]}
    out = {"same_folder": yours.resolve() == ours.resolve(), "files": files,
           "equal": not (files["different"] or files["missing"] or files["extra"]),
           "kernels": {"yours": kernels_summary(yours), "ours": kernels_summary(ours)}, "rows": None,
           "verdicts": None}
    summary = json.loads((ours / "report.json").read_text())
    out["selection"] = value = summary["table_value"]
    if out["equal"]:
        return out
    runs = {who: pd.read_csv(folder / "runs.csv") for who, folder in (("ours", ours), ("yours", yours))}
    rows = []
    for metric, title in METRICS.items():
        per = {who: values_by_row(r, metric, value) for who, r in runs.items()}
        for row, seeds in per["ours"].items():
            o = np.array(list(seeds.values()))
            y = np.array(list(per["yours"].get(row, {}).values()) or [np.nan])
            spread = float(o.std(ddof=1)) if o.size > 1 else np.nan
            diff = float(y.mean() - o.mean())
            rows.append({"row": row, "metric": title, "ours": float(o.mean()), "yours": float(y.mean()),
                         "diff": diff, "spread": spread, "within": bool(abs(diff) <= spread)})
    out["rows"] = pd.DataFrame(rows)
    baselines = {r: b for r, b in summary["baselines"].items()}
    if baselines:
        both = [study_comparisons(r, {"all": list(baselines)}, baselines) for r in (runs["ours"], runs["yours"])]
        keep = ["row", "baseline", "metric", "selection"]
        merged = both[0][keep + ["diff_mean", "p_holm", "significant"]].merge(
            both[1][keep + ["diff_mean", "p_holm", "significant"]], on=keep, how="left", suffixes=("_ours", "_yours"))
        merged = merged[merged["selection"] == value].reset_index(drop=True)
        merged["same_sign"] = np.sign(merged["diff_mean_ours"]) == np.sign(merged["diff_mean_yours"])
        merged["same_significance"] = merged["significant_ours"] == merged["significant_yours"]
        out["verdicts"] = merged
    return out


def against_reference_text(result):
    """`against_reference`'s outcome as the results chapter says it: a line when equal, else a short paragraph."""
    k, files = result["kernels"], result["files"]
    if result["same_folder"]:
        return ("This page was built from the committed reference itself. `make reproduce` builds it from your "
                "own runs and compares them with ours here.")
    if result["equal"]:
        return (f"**Your run equals ours bit for bit**: all {len(files['same'])} result files (runs, evaluations, "
                f"tables, figures) are byte-identical. Yours: {k['yours']}; ours: {k['ours']}.")
    changed = len(files["different"]) + len(files["missing"]) + len(files["extra"])
    rows = result["rows"]
    text = (f"**Your run differs from ours** in {changed} of {len(files['same']) + changed} result files "
            f"(yours: {k['yours']}; ours: {k['ours']}). Row means ({SELECTION_NAMES[result['selection']]}) move by "
            f"at most {rows['diff'].abs().max():.2f} points; {int(rows['within'].sum())} of {len(rows)} moves are "
            f"within our seed-to-seed standard deviation.")
    v = result["verdicts"]
    if v is not None and len(v):
        same = v["same_sign"] & v["same_significance"]
        if same.all():
            text += f" Every one of the {len(v)} paired verdicts (sign and Holm significance) is the same."
        else:
            moved = "; ".join(f"{r.row} {METRICS[r.metric]}" for r in v[~same].itertuples())
            text += f" {int((~same).sum())} of {len(v)} paired verdicts changed (sign or significance): {moved}."
    return text
