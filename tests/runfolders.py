"""Hand-made profiles and run folders for the report and pipeline tests (what memvir.train would write), and
the parameters cell of a chapter read without papermill."""
import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_repo(tmp_path, profile_text, notebook=True):
    """A repository skeleton: configs/t.yml and (a copy of) notebooks/05_training.ipynb."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "notebooks").mkdir()
    if notebook:
        shutil.copy(ROOT / "notebooks" / "05_training.ipynb", tmp_path / "notebooks")
    path = tmp_path / "configs" / "t.yml"
    path.write_text(profile_text)
    return path


GOOD = """
description: a test
notebook: notebooks/05_training.ipynb
seeds: [0, 1]
common: {data_name: glyphs, epochs: 2}
rows:
  - label: A
    params: {loss: Norm_SoftMax}
  - label: MemVir + A
    baseline: A
    params: {loss: Norm_SoftMax, memvir: true, mem_num_step: 2, mem_step_gap: 1, warm_epoch: 1}
book: {curriculum: MemVir + A, tsne: MemVir + A, training: MemVir + A}
"""


def fake_run(folder, seed, values, finished=True, memvir=False, params=None):
    """A run folder as memvir.train writes it; values: {metric: [value per evaluation]} (fractions); params: the
    run's flags for its config.json (the pipeline compares them with the profile's)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**(params or {}), "seed": seed, "batch_size": 8}))
    evals = []
    for i in range(len(values["recall@1"])):
        evals.append({"epoch": 2 * (i + 1), "step": 10 * (i + 1), "wall_time": float(i),
                      **{k: v[i] for k, v in values.items()}})
    best = {k: {"epoch": evals[int(np.argmax(v))]["epoch"], "step": 0, "value": max(v)} for k, v in values.items()}
    (folder / "metrics.json").write_text(json.dumps({"evaluations": evals, "best": best, "last": evals[-1],
                                                     "finished": finished}))
    steps = pd.DataFrame({"step": range(6), "epoch": [1] * 3 + [2] * 3, "loss": 1.0, "lr": 0.1,
                          "num_taken": [0, 0, 0, 1, 1, 2] if memvir else 0})
    steps["num_classes_in_use"] = 4 * (1 + steps["num_taken"])
    steps["num_embeddings_in_use"] = 8 * (1 + steps["num_taken"])
    steps.to_csv(folder / "steps.csv", index=False)


def values_for(row, seed):
    base = 0.5 + 0.01 * seed + (0.02 if row == "MemVir + A" else 0.0)
    return {"recall@1": [base, base + 0.1], "r_precision": [base - 0.2, base - 0.25],
            "map_at_r": [base - 0.3, base - 0.29]}


def finished_profile(tmp_path):
    from memvir.profile import load_profile

    prof = load_profile(make_repo(tmp_path, GOOD))
    for run in prof.runs:
        fake_run(run.folder, run.seed, values_for(run.row, run.seed),
                 memvir=run.row == "MemVir + A", params=run.params)
    return prof


def parameters_cell(path):
    """{name: value} of the cell tagged parameters of a py:percent notebook, read with ast (not with papermill)."""
    cells = re.split(r"^# %%", Path(path).read_text(), flags=re.M)
    (cell,) = [c for c in cells if re.match(r' tags=\[[^\]]*"parameters"', c)]  # hide-input may be beside it
    out = {}
    for node in ast.parse(cell.split("\n", 1)[1]).body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.dump(node)
        out[node.targets[0].id] = node.value.value
    return out
