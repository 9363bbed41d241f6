"""memvir.report: the README's tables rebuilt from its per-run numbers, profiles, run folders -> report, the CLI.

Oracles: the official README's printed Mean / Diff. / Std. (memvir/paper_results/cars196_5runs.csv), its four
training commands (configs/official_cars196.txt), statistics written out here, and hand-made run folders.
"""
import ast
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memvir import report

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


# ---- run names and profiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("params,tag,name", [
    (dict(data_name="glyphs", loss="NormSoftmax", memvir=True, mem_num_step=5, mem_step_gap=20, warm_epoch=24,
          epochs=36, seed=0), "", "glyphs_normsoftmax_memvir1_N5_M20_U24_e36_seed0"),
    (dict(data_name="cars196", loss="Proxy_NCA", memvir=False, mem_num_step=20, epochs=130, seed=3), "",
     "cars196_proxynca_memvir0_e130_seed3"),
    (dict(data_name="glyphs", loss="Norm_SoftMax", epochs=24, seed=1), "wide",
     "glyphs_normsoftmax_memvir0_e24_wide_seed1"),
])
def test_run_name(params, tag, name):
    assert report.run_name(params, tag) == name


def test_run_name_needs_its_parameters():
    with pytest.raises(ValueError, match="'epochs'"):
        report.run_name(dict(data_name="glyphs", loss="x", seed=0))


def notebook_defaults(path):
    """{name: value} of the cell tagged parameters of a py:percent notebook, read with ast (not with papermill)."""
    cells = re.split(r"^# %%", path.read_text(), flags=re.M)
    (cell,) = [c for c in cells if c.startswith(' tags=["parameters"]')]
    out = {}
    for node in ast.parse(cell.split("\n", 1)[1]).body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.dump(node)
        out[node.targets[0].id] = node.value.value
    return out


PROFILES = sorted(p.stem for p in (ROOT / "configs").glob("*.yml"))


@pytest.mark.parametrize("name", PROFILES)
def test_profile_parameters_exist_in_the_training_notebook(name, monkeypatch):
    monkeypatch.setenv("DATA", "/data/x")
    monkeypatch.setenv("PRETRAINED", "/weights/y.pth")
    prof = report.load_profile(name)
    defaults = notebook_defaults(ROOT / "notebooks" / "05_training.py")
    for run in prof.runs:
        for key, value in run.params.items():
            assert key in defaults, f"{name}: {key} is not a parameter of notebooks/05_training.py"
            want = type(defaults[key])
            assert isinstance(value, want) or (want is float and type(value) is int), (name, key, value, want)
    names = [r.name for r in prof.runs]
    assert len(set(names)) == len(names) == len(prof.rows) * len(prof.seeds)
    assert all(Path(r.params["save_path"]).parent == ROOT / "results" / "runs" / name for r in prof.runs)


def official_commands():
    """The README's four commands as {comment: {flag: value}} (flags without a value are True)."""
    text = (ROOT / "configs" / "official_cars196.txt").read_text()
    out = {}
    for block in re.split(r"\n(?=# )", text):
        title, _, body = block.partition("\n")
        if "main.py" not in body:
            continue
        flags = {}
        for m in re.finditer(r"--(\w+)(?:=(\S+))?", body):
            flags[m.group(1)] = True if m.group(2) is None else m.group(2)
        out[title.lstrip("# ").strip()] = flags
    return out


def test_paper_profile_is_the_readme(monkeypatch):
    monkeypatch.setenv("DATA", "/data/carDB")
    monkeypatch.setenv("PRETRAINED", "/w/bn.pth")
    prof = report.load_profile("paper")
    commands = official_commands()
    assert sorted(commands) == sorted(r.label for r in prof.rows)
    for row in prof.rows:
        flags = commands[row.label]
        for key, value in flags.items():
            if key in ("gpu", "save_path", "data"):
                continue  # where the run goes and which GPU: set per run / per machine
            got = row.params[key]
            if value is True:
                assert got is True, (row.label, key)
            elif key == "memvir":
                assert got is (value == "1"), (row.label, key)
            elif isinstance(got, str):
                assert got == value, (row.label, key)
            else:
                assert float(got) == float(value), (row.label, key, got, value)
        assert row.params["data"] == "/data/carDB" and row.params["pretrained"] == "/w/bn.pth"
    assert prof.seeds == [0, 1, 2, 3, 4] and prof.baselines == {
        "MemVir + Norm-SoftMax": "Norm-SoftMax", "MemVir + Proxy-NCA": "Proxy-NCA"}


def test_paper_profile_needs_data(monkeypatch):
    monkeypatch.delenv("DATA", raising=False)
    monkeypatch.setenv("PRETRAINED", "/w")
    with pytest.raises(ValueError, match="needs the variable DATA"):
        report.load_profile("paper")


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


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.replace("seeds: [0, 1]", "seeds: []"), "seeds must be"),
    (lambda s: s.replace("seeds: [0, 1]", "seeds: [0, 0]"), "distinct"),
    (lambda s: s.replace("baseline: A", "baseline: Z"), "baseline 'Z'"),
    (lambda s: s + "colour: red\n", "unknown keys"),
    (lambda s: s.replace("{loss: Norm_SoftMax}", "{loss: Norm_SoftMax, seed: 3}"), "sets 'seed'"),
    (lambda s: s.replace("{loss: Norm_SoftMax}", "{loss: [1, 2]}"), "flat scalar"),
    (lambda s: s.replace("memvir: true, ", ""), "same run name"),
    (lambda s: s.replace("- label: MemVir + A", "- label: A"), "two rows"),
    (lambda s: s.replace("curriculum: MemVir + A", "curriculum: B"), "book.curriculum"),
])
def test_bad_profiles(tmp_path, edit, match):
    path = make_repo(tmp_path, edit(GOOD))
    with pytest.raises(ValueError, match=match):
        report.load_profile(path)


def test_missing_profile_and_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="known profiles"):
        report.load_profile("no_such_profile")
    path = make_repo(tmp_path, GOOD, notebook=False)
    with pytest.raises(FileNotFoundError, match="05_training.ipynb"):
        report.load_profile(path)


# ---- run folders -> report -------------------------------------------------------------------------------------


def fake_run(folder, seed, values, finished=True, memvir=False):
    """A run folder as memvir.train writes it; values: {metric: [value per evaluation]} (fractions)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"seed": seed, "batch_size": 8}))
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


@pytest.fixture
def finished_profile(tmp_path):
    prof = report.load_profile(make_repo(tmp_path, GOOD))
    for run in prof.runs:
        fake_run(Path(run.params["save_path"]), run.seed, values_for(run.row, run.seed),
                 memvir=run.row == "MemVir + A")
    return prof


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
    folder = Path(finished_profile.runs[1].params["save_path"])
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))
    with pytest.raises(ValueError, match=re.escape(str(folder)) + " is partial"):
        report.build_report(finished_profile, log=lambda s: None)
    out = report.build_report(finished_profile, partial=True, log=lambda s: None)
    assert len(pd.read_csv(out / "runs.csv")) == 3 and json.loads((out / "report.json").read_text())["partial"]


@pytest.mark.parametrize("content,state", [(None, "missing"), ("{", "partial"), ('{"finished": false}', "partial"),
                                           ('{"finished": true}', "finished")])
def test_run_state(tmp_path, content, state):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    assert report.run_state(tmp_path) == state


def test_chapter_parameters_point_at_the_runs(finished_profile):
    params = report.chapter_parameters(finished_profile)
    memvir_run = finished_profile.run("MemVir + A").params["save_path"]
    assert params["04_memvir"] == {"run_dir": memvir_run}
    assert params["07_embedding_space"]["baseline_run"] == finished_profile.run("A").params["save_path"]
    assert params["06_results"] == {"report_dir": str(finished_profile.report_dir)}
    for chapter, values in params.items():  # every parameter exists in that chapter's parameters cell
        assert set(values) <= set(notebook_defaults(ROOT / "notebooks" / f"{chapter}.py")), chapter


def test_cli(finished_profile, capsys):
    path = str(finished_profile.path)
    assert report.main(["--profile", path, "--list-runs"]) == 0
    assert capsys.readouterr().out.split() == [r.name for r in finished_profile.runs]
    assert report.main(["--profile", path, "--run", finished_profile.runs[0].name]) == 0  # finished: skipped
    assert "skip" in capsys.readouterr().out
    assert report.main(["--profile", path, "--run", "nope"]) == 1
    assert "run 'nope' is not in profile" in capsys.readouterr().err
    assert report.main(["--profile", "no_such_profile"]) == 1
    assert report.main(["--profile", path]) == 0
    assert (finished_profile.report_dir / "tables.md").exists()


# ---- one real run through papermill ----------------------------------------------------------------------------

TINY = """
description: a tiny glyph run
notebook: notebooks/05_training.ipynb
seeds: [0]
common: {data_name: glyphs, num_classes: 8, instances_per_class: 4, input_size: 32, batch_size: 8, epochs: 3,
         check_epoch: 1, dim: 16, workers: 0}
rows:
  - label: MemVir + A
    params: {loss: Norm_SoftMax, memvir: true, mem_num_step: 2, mem_step_gap: 1, warm_epoch: 1}
"""


def test_execute_run_trains_then_skips(tmp_path):
    prof = report.load_profile(make_repo(tmp_path, TINY))
    (run,) = prof.runs
    assert report.execute_run(prof, run.name, log=lambda s: None) == "done"
    folder = Path(run.params["save_path"])
    assert folder.name == "glyphs_normsoftmax_memvir1_N2_M1_U1_e3_seed0"
    assert (folder / "05_training.ipynb").exists() and report.run_state(folder) == "finished"
    config, metrics, steps = report.read_run(folder)
    assert (config["seed"], config["epochs"], config["mem_num_step"], config["dim"]) == (0, 3, 2, 16)
    assert [e["epoch"] for e in metrics["evaluations"]] == [1, 2, 3]
    # 16 train images, batch 8: 2 steps per epoch; pushes from step 2 on, one step taken from step 4 (M=1).
    assert list(steps["num_taken"]) == [0, 0, 0, 0, 1, 1]
    assert report.execute_run(prof, run.name, log=lambda s: None) == "skipped"
