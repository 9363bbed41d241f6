"""memvir.pipeline: run names, profiles, runs through papermill (finished = metrics and notebook complete),
chapter parameters (declared by the chapter, relative paths), the book's staging, cluster commands."""
import json
import re
import shlex
from pathlib import Path

import pytest

from memvir import pipeline, rundir
from memvir.profile import load_profile
from runfolders import GOOD, ROOT, finished_profile as _finished_profile, make_repo
from runfolders import parameters_cell as notebook_defaults


@pytest.fixture
def finished_profile(tmp_path):
    return _finished_profile(tmp_path)


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
    assert rundir.run_name(params, tag) == name


def test_run_name_needs_its_parameters():
    with pytest.raises(ValueError, match="'epochs'"):
        rundir.run_name(dict(data_name="glyphs", loss="x", seed=0))


PROFILES = sorted(p.stem for p in (ROOT / "configs").glob("*.yml"))


@pytest.mark.parametrize("name", PROFILES)
def test_profile_parameters_exist_in_the_training_notebook(name, monkeypatch):
    monkeypatch.setenv("DATA", "/data/x")
    monkeypatch.setenv("PRETRAINED", "/weights/y.pth")
    prof = load_profile(name)
    defaults = notebook_defaults(ROOT / "notebooks" / "05_training.py")
    for run in prof.runs:
        for key, value in run.params.items():
            assert key in defaults, f"{name}: {key} is not a parameter of notebooks/05_training.py"
            want = type(defaults[key])
            if defaults[key] == "":  # an optional flag ("" in the cell is None): any scalar
                want = (str, int, float)
            assert isinstance(value, want) or (want is float and type(value) is int), (name, key, value, want)
    names = [r.name for r in prof.runs]
    assert len(set(names)) == len(names) == sum(len(r.seeds or prof.seeds) for r in prof.rows)
    assert all(r.folder.parent == ROOT / "results" / "runs" / (prof.shares or name) and "save_path" not in r.params
               for r in prof.runs)


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
    prof = load_profile("paper")
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
        load_profile("paper")


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
    (lambda s: s + "groups: {q: [A, Z]}\n", "groups.q names 'Z'"),
    (lambda s: s + "groups: {q: []}\n", "groups must map"),
    (lambda s: s + "calibrate: [85, 65]\n", "calibrate must be a range"),
    (lambda s: s + "shares: ../elsewhere\n", "shares must name another profile"),
])
def test_bad_profiles(tmp_path, edit, match):
    path = make_repo(tmp_path, edit(GOOD))
    with pytest.raises(ValueError, match=match):
        load_profile(path)


def test_missing_profile_and_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="known profiles"):
        load_profile("no_such_profile")
    path = make_repo(tmp_path, GOOD, notebook=False)
    with pytest.raises(FileNotFoundError, match="05_training.ipynb"):
        load_profile(path)


@pytest.mark.parametrize("content,state", [(None, "missing"), ("{", "partial"), ('{"finished": false}', "partial"),
                                           ('{"finished": true}', "finished")])
def test_run_state(tmp_path, content, state):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    assert rundir.run_state(tmp_path) == state


def test_known_values_point_at_the_runs(finished_profile):
    values = pipeline.known_values(finished_profile)
    assert values["run_dir"] == finished_profile.run("MemVir + A").folder
    assert values["baseline_run"] == finished_profile.run("A").folder
    assert values["report_dir"] == finished_profile.report_dir
    assert values["reference_dir"] == finished_profile.root / "results" / "reference" / "t"
    # What each chapter takes of them (by declaring it), written out here: the library names no chapter, so a
    # chapter that stops declaring a value it needs, or a value renamed on one side, shows up as a difference.
    declared = {nb.stem: set(notebook_defaults(nb.with_suffix(".py"))) & set(values)
                for nb in pipeline.chapters(ROOT)}
    assert {k: v for k, v in declared.items() if v} == {
        "01_overview": {"profile"}, "04_evaluation": {"report_dir"}, "04_memvir": {"run_dir"},
        "06_results": {"report_dir", "reference_dir"},
        "07_embedding_space": {"figure_dir", "memvir_run", "baseline_run"}}


def test_paths_given_to_a_chapter_are_relative(finished_profile, tmp_path):
    chapter = ROOT / "notebooks" / "06_results.ipynb"
    rel = pipeline._relative(finished_profile.report_dir, chapter.parent)
    assert not Path(rel).is_absolute() and (chapter.parent / rel).resolve() == finished_profile.report_dir.resolve()


def test_cli(finished_profile, capsys):
    path = str(finished_profile.path)
    assert pipeline.main(["--profile", path, "--list-runs"]) == 0
    by_seed = [r.name for seed in (0, 1) for r in finished_profile.runs if r.seed == seed]  # whole pairs first
    assert capsys.readouterr().out.split() == by_seed
    assert pipeline.main(["--profile", path, "--run", "nope"]) == 1
    err = capsys.readouterr().err
    assert "run 'nope' is not in profile" in err and "it has 4 runs" in err and "--list-runs" in err
    assert len(err.strip().splitlines()) == 1 and finished_profile.runs[-1].name not in err  # not all 4 names
    assert pipeline.main(["--profile", "no_such_profile", "--list-runs"]) == 1


def complete_notebook(path, status="completed"):
    cells = [{"cell_type": "code", "metadata": {"papermill": {"status": s}}, "source": "", "outputs": []}
             for s in ("completed", status)]
    path.write_text(json.dumps({"cells": cells, "metadata": {"papermill": {}}, "nbformat": 4,
                                "nbformat_minor": 5}))


@pytest.mark.parametrize("status,complete", [("completed", True), ("pending", False), ("running", False)])
def test_notebook_complete(tmp_path, status, complete):
    complete_notebook(tmp_path / "n.ipynb", status)
    assert pipeline.notebook_complete(tmp_path / "n.ipynb") is complete
    assert pipeline.notebook_complete(tmp_path / "missing.ipynb") is False


def test_finished_training_with_a_half_executed_notebook_is_not_finished(finished_profile):
    run = finished_profile.runs[0]
    assert rundir.run_state(run.folder) == "finished"
    complete_notebook(run.folder / "05_training.ipynb", "pending")  # killed before papermill wrote the end
    assert not pipeline.run_finished(finished_profile, run)
    complete_notebook(run.folder / "05_training.ipynb")
    assert pipeline.run_finished(finished_profile, run)


def test_a_finished_folder_made_with_other_flags_is_refused(finished_profile):
    """Run names hold only some flags: a finished run of another benchmark must not pass for this one."""
    run = finished_profile.runs[0]
    complete_notebook(run.folder / "05_training.ipynb")
    assert pipeline.run_finished(finished_profile, run)
    config = json.loads((run.folder / "config.json").read_text())
    # A flag the profile sets (loss) differs; one it leaves to the notebook (num_classes) is the folder's own.
    (run.folder / "config.json").write_text(json.dumps({**config, "num_classes": 77, "loss": "Proxy_NCA"}))
    with pytest.raises(ValueError, match=r"other flags \(--loss: 'Proxy_NCA' there, 'Norm_SoftMax' now; "
                                         r"--scale: 12.0 there, 23.0 now\): move that folder away"):
        pipeline.run_finished(finished_profile, run)


def test_a_profile_can_share_the_run_folders_of_another(tmp_path):
    path = make_repo(tmp_path, GOOD + "shares: other\n")
    prof = load_profile(path)
    assert prof.runs_dir == tmp_path / "results" / "runs" / "other"
    assert all(r.folder.parent == tmp_path / "results" / "runs" / "other" for r in prof.runs)
    (tmp_path / "b").mkdir()
    assert load_profile(make_repo(tmp_path / "b", GOOD)).runs_dir.name == "t"


def test_print_commands_lists_the_unfinished_runs_as_shell_lines(finished_profile, capsys):
    for run in finished_profile.runs[1:]:
        complete_notebook(run.folder / "05_training.ipynb")
    assert pipeline.main(["--profile", str(finished_profile.path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # runs[0] has no executed notebook
    words = shlex.split(lines[0])
    assert words[:2] == ["cd", str(finished_profile.root)] and words[-2:] == ["--run", finished_profile.runs[0].name]
    assert "OMP_NUM_THREADS=1" in words


def test_list_runs_unfinished_names_exactly_the_runs_print_commands_would_run(finished_profile, capsys):
    """Make's targets (`--list-runs --unfinished`): a run whose notebook is missing or incomplete is listed, a
    finished one is not; plain `--list-runs` still names every run."""
    complete_notebook(finished_profile.runs[1].folder / "05_training.ipynb")
    complete_notebook(finished_profile.runs[2].folder / "05_training.ipynb", status="running")
    for run in finished_profile.runs[3:]:
        complete_notebook(run.folder / "05_training.ipynb")
    path = str(finished_profile.path)
    assert pipeline.main(["--profile", path, "--list-runs", "--unfinished"]) == 0
    assert capsys.readouterr().out.split() == [finished_profile.runs[i].name for i in (0, 2)]
    assert pipeline.main(["--profile", path, "--list-runs"]) == 0
    assert len(capsys.readouterr().out.split()) == len(finished_profile.runs) == 4
    assert pipeline.main(["--profile", path, "--print-commands", "--unfinished"]) == 1
    assert capsys.readouterr().err.strip() == "error: --unfinished goes with --list-runs only"


def test_stage_book_refuses_a_missing_chapter(tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    with pytest.raises(FileNotFoundError, match="not executed"):
        pipeline.stage_book(tmp_path / "src", executed, log=lambda s: None)
    src = pipeline.stage_book(tmp_path / "src", ROOT / "notebooks", log=lambda s: None)  # the committed ones
    assert sorted(p.name for p in (src / "chapters").iterdir()) == [nb.name for nb in pipeline.chapters(ROOT)]


# ---- one real run through papermill ----------------------------------------------------------------------------

TINY = """
description: a tiny glyph run
notebook: notebooks/05_training.ipynb
seeds: [0]
common: {data_name: glyphs, num_classes: 8, instances_per_class: 4, val_classes: 0, input_size: 32, batch_size: 8,
         epochs: 3, check_epoch: 1, dim: 16, workers: 0}
rows:
  - label: MemVir + A
    params: {loss: Norm_SoftMax, memvir: true, mem_num_step: 2, mem_step_gap: 1, warm_epoch: 1}
"""


def test_execute_run_trains_then_skips(tmp_path):
    prof = load_profile(make_repo(tmp_path, TINY))
    (run,) = prof.runs
    assert pipeline.execute_run(prof, run.name, log=lambda s: None) == "done"
    folder = run.folder
    assert folder.name == "glyphs_normsoftmax_memvir1_N2_M1_U1_e3_seed0"
    assert (folder / "05_training.ipynb").exists() and rundir.run_state(folder) == "finished"
    config, metrics, steps = rundir.read_run(folder)
    assert (config["seed"], config["epochs"], config["mem_num_step"], config["dim"]) == (0, 3, 2, 16)
    assert [e["epoch"] for e in metrics["evaluations"]] == [1, 2, 3]
    # 16 train images, batch 8: 2 steps per epoch; pushes from step 2 on, one step taken from step 4 (M=1).
    assert list(steps["num_taken"]) == [0, 0, 0, 0, 1, 1]
    assert pipeline.execute_run(prof, run.name, log=lambda s: None) == "skipped"


def test_a_damaged_metrics_json_is_rebuilt_by_running_again_and_a_failing_run_is_one_line(tmp_path, capsys):
    import torch

    prof = load_profile(make_repo(tmp_path, TINY))
    (run,) = prof.runs
    pipeline.execute_run(prof, run.name, log=lambda s: None)
    written = (run.folder / "metrics.json").read_bytes()
    argv = ["--profile", str(prof.path), "--runs-root", str(prof.runs_dir.parent), "--run", run.name]
    for damage in (b'{"evaluations": [', written.replace(b'"finished": true', b'"finished": 1')):
        (run.folder / "metrics.json").write_bytes(damage)
        assert not pipeline.run_finished(prof, run)  # damaged: not finished, whatever it says
        assert pipeline.main(argv) == 0, capsys.readouterr().err
        assert (run.folder / "metrics.json").read_bytes() == written  # rebuilt from the checkpoint, not retrained
    capsys.readouterr()
    newest = run.folder / "checkpoints" / "epoch_00003.pt"
    ckpt = torch.load(newest, weights_only=True)
    torch.save({**ckpt, "format": ckpt["format"] + 1}, newest)
    (run.folder / "metrics.json").write_text("{")
    assert pipeline.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {run.folder / '05_training.ipynb'}: cell ") and "raised CheckpointRefused: " in err
    assert err.endswith("checkpoints/epoch_00003.pt: written by a newer memvir (checkpoint format 2; this memvir "
                        "reads format 1): upgrade memvir to use it, or use another --save_path (the executed "
                        "notebook shows where)\n")


def test_executed_run_notebook_shows_no_absolute_path(tmp_path):
    prof = load_profile(make_repo(tmp_path, TINY))
    (run,) = prof.runs
    pipeline.execute_run(prof, run.name, log=lambda s: None)
    text = (run.folder / "05_training.ipynb").read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text
    assert pipeline.notebook_complete(run.folder / "05_training.ipynb")


# ---- search and Table-4 profiles -------------------------------------------------------------------------------

SEARCH = """
description: a search
notebook: notebooks/05_training.ipynb
seeds: [0, 1]
select: map_at_r
common: {data_name: glyphs, epochs: 2, val_classes: 4}
rows:
  - {label: N s8, tag: s8, params: {loss: Norm_SoftMax, scale: 8.0}}
  - {label: N s16, tag: s16, params: {loss: NormSoftmax, scale: 16.0}}
  - {label: C m1, tag: m1, params: {loss: CosFace, margin: 0.1}}
  - {label: C m2, tag: m2, params: {loss: cosface, margin: 0.2}}
"""


def test_validation_choice_reads_only_the_validation_classes(tmp_path):
    from memvir import report
    from runfolders import fake_run

    prof = load_profile(make_repo(tmp_path, SEARCH))
    # Validation MAP@R by row (the test-class values say the opposite, so a choice made on them would differ).
    val = {"N s8": 0.30, "N s16": 0.40, "C m1": 0.55, "C m2": 0.50}
    for run in prof.runs:
        test = 0.9 - val[run.row]
        fake_run(run.folder, run.seed, {"recall@1": [test], "r_precision": [test], "map_at_r": [test]})
        metrics = json.loads((run.folder / "metrics.json").read_text())
        metrics["last"]["val"] = {"map_at_r": val[run.row] + 0.01 * run.seed}
        (run.folder / "metrics.json").write_text(json.dumps(metrics))
    choice = report.validation_choice(prof)
    assert list(choice["loss"]) == ["Norm_SoftMax", "Norm_SoftMax", "CosFace", "CosFace"]
    assert list(choice.loc[choice["chosen"], "row"]) == ["N s16", "C m1"]
    assert list(choice["val_map_at_r"]) == [30.5, 40.5, 55.5, 50.5]  # percent, mean over the two seeds
    with pytest.raises(ValueError, match="select needs validation classes"):
        (tmp_path / "b").mkdir()
        load_profile(make_repo(tmp_path / "b", SEARCH.replace("val_classes: 4", "val_classes: 0")))


def test_table4_profile_uses_the_validation_choice():
    """configs/table4.yml trains each loss with the hyper-parameters its search chose (the committed selection)."""
    import pandas as pd

    from memvir.registry import canonical_loss_name

    selection = pd.read_csv(ROOT / "results" / "reference" / "table4_search" / "selection.csv")
    chosen = selection[selection["chosen"]].set_index("loss")
    prof = load_profile("table4")
    assert prof.compare == "table4"
    for row in prof.rows:
        loss = canonical_loss_name(row.params["loss"])
        for key in ("scale", "margin"):
            want = chosen.loc[loss, key]
            got = row.params.get(key)
            assert (pd.isna(want) and got is None) or float(got) == float(want), (row.label, key, got, want)
    baselines = prof.baselines
    assert len(baselines) == 6 and all(m == f"MemVir + {b}" for m, b in baselines.items())


def test_a_chapter_declaring_a_known_value_means_that_value():
    """The pipeline gives every chapter the known values its cell names; a cell must not reuse such a name for
    something else (chapter 03's toy once called its class count num_classes, and make reproduce gave it 400).
    A benchmark value's default must be the default profile's, a path's default a relative path."""
    values = pipeline.known_values(load_profile("cpu"))
    for nb in pipeline.chapters(ROOT):
        cell = notebook_defaults(nb.with_suffix(".py"))
        for name in set(cell) & set(values):
            if isinstance(values[name], Path):
                assert isinstance(cell[name], str) and not Path(cell[name]).is_absolute(), (nb.stem, name)
            else:
                assert cell[name] == values[name], (nb.stem, name, cell[name], values[name])


def test_the_default_benchmark_is_the_calibration_choice():
    """configs/cpu.yml trains on the benchmark configs/calibrate.yml's rule chose (the committed calibration)."""
    import pandas as pd

    calibration = pd.read_csv(ROOT / "results" / "reference" / "calibrate" / "calibration.csv")
    (chosen,) = calibration.loc[calibration["chosen"], "row"]
    calibrate = load_profile("calibrate")
    low, high = calibrate.calibrate
    mean = float(calibration.loc[calibration["chosen"], "mean"].iloc[0])
    assert low <= mean <= high
    benchmark = next(r for r in calibrate.rows if r.label == chosen).params
    for name in ("cpu", "study"):
        for row in load_profile(name).rows:
            for key in ("data_name", "input_size", "num_classes", "instances_per_class", "min_fonts", "val_classes",
                        "glyph_seed", "backbone", "dim", "batch_size", "modellr", "centerlr"):
                assert row.params[key] == benchmark[key], (name, row.label, key)


def test_a_study_profile_offers_its_report_to_the_study_chapter(tmp_path):
    """A profile with several groups of comparisons is a study: the chapter that declares study_dir reads it."""
    one = load_profile(make_repo(tmp_path, GOOD + "groups: {main: [MemVir + A]}\n"))
    assert "study_dir" not in pipeline.known_values(one)
    (tmp_path / "b").mkdir()
    groups = "groups: {main: [MemVir + A], all: [A, MemVir + A]}\n"
    study = load_profile(make_repo(tmp_path / "b", GOOD + groups))
    assert pipeline.known_values(study)["study_dir"] == study.report_dir
    assert "study_dir" in notebook_defaults(ROOT / "notebooks" / "06_study.py")
    (tmp_path / "c").mkdir()  # several groups but no `main`: not the study chapter's shape (controls, splits)
    other = load_profile(make_repo(tmp_path / "c", GOOD + "groups: {x: [MemVir + A], y: [A, MemVir + A]}\n"))
    assert "study_dir" not in pipeline.known_values(other)


def test_figures_are_offered_only_by_a_profile_whose_report_draws_them(tmp_path, finished_profile):
    """The report draws the t-SNE figures for book.tsne only: a profile without it must not send the embedding
    chapter to read figures that are not there (it draws its own from small runs instead)."""
    assert pipeline.known_values(finished_profile)["figure_dir"] == finished_profile.report_dir / "figures"
    (tmp_path / "plain").mkdir()
    plain = load_profile(make_repo(tmp_path / "plain", GOOD.replace(", tsne: MemVir + A", "")))
    assert "tsne" not in plain.book
    assert not {"figure_dir", "memvir_run", "baseline_run"} & set(pipeline.known_values(plain))


def test_every_profile_offers_its_report_by_name(tmp_path):
    """A chapter that reads several profiles declares <profile>_dir for each: it gets the report made here."""
    prof = load_profile(make_repo(tmp_path, GOOD))
    assert pipeline.known_values(prof)[f"{prof.name}_dir"] == prof.report_dir


@pytest.mark.parametrize("name", PROFILES)
def test_a_glyph_profile_names_its_whole_benchmark(name, monkeypatch):
    """The benchmark of a profile is the profile's, not the training notebook's defaults (which may change)."""
    monkeypatch.setenv("DATA", "/data/x")
    monkeypatch.setenv("PRETRAINED", "/weights/y.pth")
    for row in load_profile(name).rows:
        if row.params.get("data_name") == "glyphs":
            missing = {"input_size", "num_classes", "instances_per_class", "min_fonts", "val_classes",
                       "glyph_seed"} - set(row.params)
            assert not missing, (name, row.label, missing)


@pytest.mark.parametrize("name", PROFILES)
def test_every_run_of_a_profile_is_a_valid_training_config(name, monkeypatch):
    """What the training notebook will build: its defaults, then the run's parameters (a default meant for one
    loss, such as Norm-SoftMax's scale, must not reach a row of another loss unchecked)."""
    from memvir.config import FLAG_NAMES
    from memvir.resolve import config_from_parameters

    monkeypatch.setenv("DATA", "/data/x")
    monkeypatch.setenv("PRETRAINED", "/weights/y.pth")
    defaults = notebook_defaults(ROOT / "notebooks" / "05_training.py")
    for run in load_profile(name).runs:
        cell = {**defaults, **run.params, "save_path": str(run.folder)}
        config_from_parameters(**{k: v for k, v in cell.items() if k in FLAG_NAMES})


def test_a_broken_profile_is_one_line_with_its_line_and_column(tmp_path, capsys):
    path = make_repo(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1"))  # an unclosed list, line 4
    with pytest.raises(ValueError) as err:
        load_profile(path)
    # PyYAML marks where it noticed: line 5 (common: ...), column 7, the ':' a flow list cannot hold
    assert str(err.value) == f"{path}:5:7: not valid YAML (expected ',' or ']', but got ':')"
    assert pipeline.main(["--profile", str(path), "--list-runs"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {err.value}"]


def test_a_row_may_run_its_own_seeds(tmp_path):
    """A row whose other seeds another profile ran (PROFILE=decisive reuses protocol's) lists only its own."""
    text = GOOD.replace("  - label: MemVir + A\n", "  - label: MemVir + A\n    seeds: [1, 5]\n")
    prof = load_profile(make_repo(tmp_path, text))
    assert [(r.row, r.seed) for r in prof.runs] == [("A", 0), ("A", 1), ("MemVir + A", 1), ("MemVir + A", 5)]
    for bad in ("[]", "[1, 1]", "[-1]", "[true]", "3", "[1.5]"):
        (tmp_path / bad.replace("[", "_")).mkdir()
        path = make_repo(tmp_path / bad.replace("[", "_"), GOOD.replace(
            "  - label: MemVir + A\n", f"  - label: MemVir + A\n    seeds: {bad}\n"))
        with pytest.raises(ValueError, match=r"rows\[1\]\.seeds must be a non-empty list of distinct integers"):
            load_profile(path)


# ---- a profile is data: what it says never runs, never chooses a path outside the run folders (issue 32) -------

def _payload(marker):
    """Python that creates `marker` when it reaches a notebook cell unescaped (papermill writes `"{str(value)}"`
    for a type it does not know, such as bytes: the quote ends the string)."""
    return f'";open({json.dumps(str(marker))}, "w");"'  # double quotes only: repr(bytes) keeps them as they are


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("value,says", [
    ("!!binary {b64}", "!!binary"),  # bytes: papermill's last-resort translation writes str(bytes) unescaped
    ("!!set {{{quoted}: null}}", "!!set"),
    ("!!omap [{{a: {quoted}}}]", "!!omap"),
    ("!!pairs [{{a: {quoted}}}]", "!!pairs"),
    ("!!timestamp 2021-10-11", "!!timestamp"),
    ("2021-10-11", "!!timestamp"),  # implicit: a date reaches the notebook as datetime.date
    ("!mine {quoted}", "!mine"),
])
def test_a_profile_value_that_is_not_plain_data_never_reaches_the_notebook(tmp_path, capsys, value, says):
    import base64

    marker = tmp_path / "MARKER"
    payload = _payload(marker)
    text = TINY.replace("dim: 16, workers: 0}", "dim: 16, workers: 0,\n         k_list: "
                        + value.format(b64=base64.b64encode(payload.encode()).decode(),
                                       quoted=json.dumps(payload)) + "}")
    path = make_repo(tmp_path, text)
    line = text.splitlines().index(next(l for l in text.splitlines() if "k_list" in l)) + 1
    runs_root = tmp_path / "runs"
    assert pipeline.main(["--profile", str(path), "--runs-root", str(runs_root), "--run",
                          "glyphs_normsoftmax_memvir1_N2_M1_U1_e3_seed0"]) == 1
    err = _one_error_line(capsys)
    assert f"t.yml:{line}: common.k_list is a {says} value" in err and "expected a plain" in err
    assert not marker.exists() and not runs_root.exists()


@pytest.mark.parametrize("edit,lines", [
    (lambda s: s.replace("seeds: [0]\n", "seeds: [0]\nseeds: [1]\n"), "(lines 4 and 5)"),
    (lambda s: s.replace("epochs: 3,", "epochs: 1, epochs: 3,"), "(lines 6 and 6)"),
    (lambda s: s + "rows:\n  - label: B\n    params: {loss: Proxy_NCA}\n", "(lines 7 and 10)"),
])
def test_a_key_given_twice_is_refused_with_its_lines(tmp_path, capsys, edit, lines):
    text = edit(TINY)
    path = make_repo(tmp_path, text)
    assert pipeline.main(["--profile", str(path), "--list-runs"]) == 1
    err = _one_error_line(capsys)
    assert "is given twice " + lines in err and "t.yml" in err


@pytest.mark.parametrize("seeds", ["[true]", "[0, false]", "[1.0]"])
def test_seeds_are_integers_not_booleans(tmp_path, seeds):
    path = make_repo(tmp_path, TINY.replace("seeds: [0]", f"seeds: {seeds}"))
    with pytest.raises(ValueError, match=r"seeds must be a non-empty list of integers"):
        load_profile(path)


@pytest.mark.parametrize("key,value", [
    ("loss", "Norm_SoftMax/../../../ESC"), ("loss", "/ESC"), ("epochs", '"1/../../../ESC"'),
    ("data_name", "glyphs/../../../ESC"), ("mem_num_step", '"2/../../../../ESC"'), ("warm_epoch", '"1/../../ESC"'),
    ("loss", '"Norm SoftMax"'),
])
@pytest.mark.parametrize("action", [["--run", "x"], ["--list-runs"], ["--print-commands"], ["--warm-data"]])
def test_a_run_name_made_from_values_is_checked_before_anything_is_written(tmp_path, capsys, key, value, action):
    text = re.sub(rf"\b{key}: [^,}}\n]+", f"{key}: {value}", TINY, count=1)  # in common or in the row
    assert text != TINY
    repo = tmp_path / "repo"
    repo.mkdir()
    path = make_repo(repo, text)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert pipeline.main(["--profile", str(path), "--runs-root", str(repo / "runs"), *action]) == 1
    err = _one_error_line(capsys)
    assert f"t.yml: parameter {key}=" in err and "run folder's name" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing anywhere


@pytest.mark.parametrize("notebook", ["../outside.ipynb", "ABSOLUTE", "notebooks/05_training.py"])
def test_a_profile_runs_only_a_notebook_of_its_repository(tmp_path, notebook):
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "outside.ipynb").write_text((ROOT / "notebooks" / "05_training.ipynb").read_text())
    notebook = str(tmp_path / "outside.ipynb") if notebook == "ABSOLUTE" else notebook
    path = make_repo(repo, TINY.replace("notebook: notebooks/05_training.ipynb", f"notebook: {notebook}"))
    with pytest.raises(ValueError, match=r"t\.yml: notebook .*(outside the profile's repository|\.ipynb file)"):
        load_profile(path)


@pytest.mark.parametrize("action", ["--list-runs", "--print-commands"])
def test_a_listing_whose_reader_is_gone_ends_quietly(tmp_path, action):
    """`... --list-runs | head -3`: the reader closes the pipe; the listing ends without a word (issue 32, 13)."""
    import subprocess
    import sys

    seeds = ", ".join(map(str, range(3000)))  # ~6,000 lines: more than a pipe's buffer holds
    path = make_repo(tmp_path, TINY.replace("seeds: [0]", f"seeds: [{seeds}]"))
    proc = subprocess.Popen([sys.executable, "-m", "memvir", "pipeline", "--profile", str(path), action],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does once it has its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first and err == "" and proc.returncode == 141  # 128 + SIGPIPE: what a shell shows for a Unix tool
