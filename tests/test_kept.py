"""memvir.kept: a profile's finished runs kept in git (config.json, metrics.json, the executed notebook; no
checkpoints) and laid back on a fresh machine, where the pipeline then skips them and the report reads them.

Oracle: the pipeline's own definition of a finished run (run_finished) and the files' bytes."""
import json
import shutil

from memvir import kept, pipeline
from memvir.profile import load_profile
from runfolders import finished_profile
from test_pipeline import complete_notebook


def finish_all(profile):
    for run in profile.runs:
        complete_notebook(run.folder / profile.notebook.name)


def test_keep_then_restore_on_a_fresh_machine(tmp_path):
    profile = finished_profile(tmp_path)
    finish_all(profile)
    unfinished = profile.runs[-1]
    (unfinished.folder / profile.notebook.name).unlink()  # killed before papermill wrote its notebook
    (unfinished.folder / "checkpoints").mkdir()
    (unfinished.folder / "checkpoints" / "epoch_00002.pt").write_bytes(b"weights")
    assert kept.keep(profile, log=lambda s: None) == len(profile.runs) - 1
    root = tmp_path / "results" / "kept" / profile.name
    assert sorted(p.name for p in root.iterdir()) == sorted(r.name for r in profile.runs[:-1])
    assert not list(root.rglob("*.pt")) and not (root / unfinished.name).exists()
    for run in profile.runs[:-1]:
        for name in ("config.json", "metrics.json", profile.notebook.name):
            assert (root / run.name / name).read_bytes() == (run.folder / name).read_bytes()

    shutil.rmtree(profile.runs_dir)  # the next session's machine: no results/runs/
    fresh = load_profile(profile.path)
    assert [r.name for r in fresh.runs if pipeline.run_finished(fresh, r)] == []
    assert kept.restore(fresh, log=lambda s: None) == len(profile.runs) - 1
    done = [r.name for r in fresh.runs if pipeline.run_finished(fresh, r)]
    assert done == [r.name for r in profile.runs[:-1]]  # skipped by `make runs`; the last one is trained again


def test_restore_leaves_a_machines_own_runs_alone(tmp_path):
    profile = finished_profile(tmp_path)
    finish_all(profile)
    kept.keep(profile, log=lambda s: None)
    first, second = profile.runs[0], profile.runs[1]
    own = (first.folder / "metrics.json").read_text()
    metrics = json.loads((second.folder / "metrics.json").read_text())
    (second.folder / "metrics.json").write_text(json.dumps({**metrics, "finished": False}))  # half-way here
    lines = []
    assert kept.restore(profile, log=lines.append) == 0
    assert (first.folder / "metrics.json").read_text() == own
    assert not json.loads((second.folder / "metrics.json").read_text())["finished"]
    assert any(line.startswith(f"not restored {second.name}: ") for line in lines)


def test_the_command_keeps_and_names_a_bad_profile_in_one_line(tmp_path, capsys):
    profile = finished_profile(tmp_path)
    finish_all(profile)
    assert kept.main(["--profile", str(profile.path)]) == 0
    assert f"kept {len(profile.runs)} finished run(s)" in capsys.readouterr().out
    assert kept.main(["--profile", str(tmp_path / "none.yml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
