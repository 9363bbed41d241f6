"""memvir.train under misuse and failure: two owners of one run folder, a damaged newest checkpoint, divergence,
a resume on other data, damaged images, and the official flags that change the loss (-C, --train_with_l2norm,
--do_nmi). Each failure is one line that says what happened and what to change."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvir.train import TrainingError, main, train

TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
            progress=False)
ARGS = ["--num_classes", "20", "--instances_per_class", "10", "--input_size", "16", "--batch_size", "32",
        "--dim", "16", "--no_progress"]


def run_cli(args, capsys):
    code = main(ARGS + args)
    return code, capsys.readouterr().err


# ---- one owner per run folder ---------------------------------------------------------------------------------


def test_second_process_in_the_same_run_folder_is_refused(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "memvir", "train", *ARGS, "--epochs", "200", "--save_path", str(tmp_path)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "steps.csv").exists() and time.time() < deadline:  # it holds the lock by now
            time.sleep(0.2)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"another process (pid {first.pid}) is training" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()  # kill -9: the lock goes with the process
        first.wait()
    done = subprocess.run([*cmd[:-4], "--epochs", "1", "--save_path", str(tmp_path / "other")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---- a damaged newest checkpoint ------------------------------------------------------------------------------


def test_damaged_newest_checkpoint_falls_back_and_the_run_ends_the_same(tmp_path, capsys):
    ref = train({**TINY, "epochs": 3, "check_epoch": 1, "deterministic": True, "save_path": str(tmp_path / "ref")})
    run = tmp_path / "run"
    train({**TINY, "epochs": 2, "check_epoch": 1, "deterministic": True, "max_to_keep": 0, "save_path": str(run)})
    newest = run / "checkpoints" / "epoch_00002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated in place
    res = train({**TINY, "epochs": 3, "check_epoch": 1, "deterministic": True, "max_to_keep": 0,
                 "save_path": str(run)})
    out = capsys.readouterr().out
    assert "epoch_00002.pt" in out and "moved it aside" in out and "resumed from epoch_00001.pt" in out
    assert (run / "checkpoints" / "epoch_00002.pt.corrupt").exists()
    strip = lambda r: [{k: v for k, v in e.items() if k != "wall_time"} for e in r["evaluations"]]  # noqa: E731
    assert strip(res) == strip(ref)


def test_only_checkpoint_damaged_is_one_line_on_the_command_line(tmp_path, capsys):
    assert main(ARGS + ["--epochs", "1", "--save_path", str(tmp_path)]) == 0
    (tmp_path / "checkpoints" / "epoch_00001.pt").write_bytes(b"\x00" * 100)
    code, err = run_cli(["--epochs", "2", "--save_path", str(tmp_path)], capsys)
    assert code == 2 and "No older checkpoint" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---- divergence -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--modellr", "1e10"], ["--modellr", "1e6", "--optimizer", "sgd"],
                                   ["--modellr", "1e38", "--centerlr", "1e38"]])
def test_divergence_stops_in_training_with_one_line(tmp_path, capsys, flags):
    code, err = run_cli(["--epochs", "3", "--save_path", str(tmp_path), *flags], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step "), err
    assert "lower --modellr" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists() or json.loads((tmp_path / "metrics.json").read_text())


# ---- resuming on other data -----------------------------------------------------------------------------------


def make_folder(root, classes, per_class=3, bad=None):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 255, (1, 1, 3)) + rng.integers(-20, 20, (30, 40, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k}.jpg")
    if bad is not None:
        (root / bad).write_bytes((root / bad).read_bytes()[:200])  # a truncated JPEG
    return root


FOLDER = ["--data_name", "custom", "--backbone", "resnet18", "--pretrained", "none", "--input_size", "32",
          "--dim", "8", "--batch_size", "4", "--workers", "0", "--no_progress"]


def test_resume_on_data_with_other_classes_names_both_counts(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(FOLDER + ["--data", str(make_folder(tmp_path / "a", 4)), "--epochs", "1", "--save_path", run]) == 0
    capsys.readouterr()
    code = main(FOLDER + ["--data", str(make_folder(tmp_path / "b", 5)), "--epochs", "2", "--save_path", run])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "trained on other data (train 12 images in 4 classes" in err and "train 15 images in 5 classes" in err


def test_resume_on_other_images_of_the_same_classes_is_refused(tmp_path, capsys):
    # Same classes, so the proxies fit: only the data's fingerprint can tell (a run once resumed on 6 of 24 images).
    run = str(tmp_path / "run")
    assert main(FOLDER + ["--data", str(make_folder(tmp_path / "a", 4)), "--epochs", "1", "--save_path", run]) == 0
    capsys.readouterr()
    fewer = make_folder(tmp_path / "b", 4, per_class=1)
    code = main(FOLDER + ["--data", str(fewer), "--epochs", "2", "--save_path", run])
    err = capsys.readouterr().err
    assert code == 2 and "train 12 images in 4 classes" in err and "train 4 images in 4 classes" in err
    assert main(FOLDER + ["--data", str(tmp_path / "a"), "--epochs", "2", "--save_path", run]) == 0  # the same: on


@pytest.mark.parametrize("workers", ["0", "2"])
def test_damaged_training_image_is_one_line_with_workers(tmp_path, capsys, workers):
    data = make_folder(tmp_path / "d", 4, bad="train/c1/2.jpg")
    code = main([*FOLDER[:-3], "--workers", workers, "--no_progress", "--data", str(data), "--epochs", "1",
                 "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "c1/2.jpg" in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and len(lines[0]) < 400 and "Traceback" not in err


def test_damaged_test_image_is_found_before_training(tmp_path, capsys):
    data = make_folder(tmp_path / "d", 4, bad="test/c3/0.jpg")
    code = main(FOLDER + ["--data", str(data), "--epochs", "1", "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "test/c3/0.jpg" in err and "test image" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # no epoch was trained (and lost)


# ---- the official flags that change the loss ------------------------------------------------------------------


def test_minus_C_adds_proxies_that_are_only_negatives(tmp_path):
    res = train({**TINY, "epochs": 1, "C": 14, "save_path": str(tmp_path)})
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00001.pt", weights_only=True)
    assert tuple(ckpt["criterion"]["proxies"].shape) == (14, 16) and res["finished"]  # 10 classes + 4 negatives
    with pytest.raises(ValueError, match="-C=5: the training data has 10 classes"):
        train({**TINY, "epochs": 1, "C": 5, "save_path": str(tmp_path / "small")})


def test_train_with_l2norm_false_feeds_raw_embeddings_to_the_loss(tmp_path, monkeypatch):
    from memvir.losses import NormSoftmax

    seen = []
    forward = NormSoftmax.forward

    def record(self, emb, labels, proxies=None, **kwargs):
        seen.append(emb.detach().norm(dim=1))
        return forward(self, emb, labels, proxies, **kwargs)

    monkeypatch.setattr(NormSoftmax, "forward", record)
    train({**TINY, "epochs": 1, "train_with_l2norm": False, "save_path": str(tmp_path / "raw")})
    raw = torch.cat(seen)
    seen.clear()
    train({**TINY, "epochs": 1, "save_path": str(tmp_path / "unit")})
    unit = torch.cat(seen)
    assert torch.allclose(unit, torch.ones_like(unit), atol=1e-5)
    assert (raw - 1).abs().max() > 0.05  # the head's raw rows, as the official code without its l2 norm


def test_do_nmi_is_computed_and_logged(tmp_path):
    res = train({**TINY, "epochs": 1, "do_nmi": True, "save_path": str(tmp_path)})
    nmi = res["last"]["nmi"]
    assert 0.0 <= nmi <= 1.0
    assert "nmi" not in train({**TINY, "epochs": 1, "save_path": str(tmp_path / "no")})["last"]


def test_batch_larger_than_the_training_set_warns(tmp_path, capsys):
    code, err = run_cli(["--epochs", "1", "--batch_size", "256", "--save_path", str(tmp_path)], capsys)
    assert code == 0 and "warning: --batch_size=256 is larger than the training set (100 images)" in err


# ---- more of what a user gets wrong: each one line ------------------------------------------------------------


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "memvir", "train", "--data_name", "glyphs", *ARGS, "--epochs", "200",
           "--save_path", str(tmp_path)]
    # Ctrl-C as a terminal sends it: the child's SIGINT at its default, also when the tests themselves run with it
    # ignored (a shell's background job, `make test &`, ignores SIGINT, and a child inherits that: Python then
    # never raises KeyboardInterrupt and the run would train to its end).
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "metrics.json").exists() and time.time() < deadline:  # an epoch is saved: mid-run
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    err = first.communicate(timeout=120)[1]
    assert first.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == ("interrupted: the run resumes from its last checkpoint when the same "
                                            "command runs again"), err[-2000:]
    assert "Traceback" not in err
    last = max(int(p.stem.split("_")[1]) for p in (tmp_path / "checkpoints").glob("epoch_*.pt"))
    again = subprocess.run([*cmd[:-3], str(last + 1), "--save_path", str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=300)  # the same run, one more epoch: it resumes
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["last"]["epoch"] == last + 1


def test_a_decay_rate_that_grows_the_rate_is_refused(tmp_path, capsys):
    code, err = run_cli(["--data_name", "glyphs", "--decay_rate", "1e300", "--save_path", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == ("error: --decay_rate=1e+300: expected a factor in (0, 1] (the rates are "
                                         "multiplied by it every --decay_step epochs)")


def test_a_damaged_config_json_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    code, err = run_cli(["--data_name", "glyphs", "--epochs", "1", "--save_path", str(tmp_path)], capsys)
    assert code == 2 and err.strip().startswith(f"error: {tmp_path / 'config.json'}: not valid JSON (")


def test_a_damaged_steps_csv_is_named(tmp_path):
    from memvir.rundir import read_run

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text(json.dumps({"evaluations": [], "best": {}, "last": None,
                                                       "finished": True}))
    (tmp_path / "steps.csv").write_text('step,epoch\n1,"2\n')
    with pytest.raises(ValueError, match=r"steps\.csv: not a readable CSV"):
        read_run(tmp_path)


def test_a_single_training_class_warns(tmp_path, capsys):
    import shutil

    make_folder(tmp_path / "data", 2)
    shutil.rmtree(tmp_path / "data" / "train" / "c1")  # one training class, two test classes
    code = main([*FOLDER, "--data", str(tmp_path / "data"), "--epochs", "1", "--save_path", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: the training split has a single class: every proxy loss is 0" in err


# ---- runs that repair themselves, or say in one line why they cannot -------------------------------------------


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished run of two epochs with every checkpoint kept, and its metrics.json after each epoch."""
    run = tmp_path_factory.mktemp("two_epochs") / "run"
    flags = ARGS + ["--check_epoch", "1", "--max_to_keep", "0", "--deterministic", "1", "--save_path", str(run)]
    assert main(flags + ["--epochs", "1"]) == 0
    first = (run / "metrics.json").read_bytes()
    assert main(flags + ["--epochs", "2"]) == 0
    return run, flags, first, (run / "metrics.json").read_bytes()


def copy_run(two_epochs, tmp_path):
    import shutil

    run, flags, first, last = two_epochs
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", flags[:-1] + [str(tmp_path / "run")], first, last


@pytest.mark.parametrize("damage", ["invalid", "truncated", "types", "list", "behind", "missing"])
def test_a_finished_run_rebuilds_a_damaged_metrics_json_from_its_checkpoint(two_epochs, tmp_path, capsys, damage):
    run, flags, first, last = copy_run(two_epochs, tmp_path)
    metrics = run / "metrics.json"
    if damage == "missing":
        metrics.unlink()
    else:
        metrics.write_bytes({"invalid": b"{not json", "truncated": last[: len(last) // 2], "list": b"[]",
                             "types": last.replace(b'"finished": true', b'"finished": "yes"'),
                             "behind": first}[damage])  # behind: a kill between the checkpoint and this file
    capsys.readouterr()
    assert main(flags + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    repaired = [ln for ln in out.splitlines() if "rebuilt it" in ln]
    assert repaired == [f"warning: {metrics}: {repaired[0].split(': ', 2)[2].split('; rebuilt')[0]}; rebuilt it "
                        f"from the history in {run / 'checkpoints' / 'epoch_00002.pt'}"], out
    assert metrics.read_bytes() == last  # what training wrote at its last epoch, byte for byte
    assert not list((run / "checkpoints").glob("epoch_00003.pt"))  # nothing was trained again


def edit_checkpoint(path, edit):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def test_a_checkpoint_of_a_newer_memvir_is_refused_in_one_line_and_kept(two_epochs, tmp_path, capsys):
    run, flags, _, _ = copy_run(two_epochs, tmp_path)
    newest = run / "checkpoints" / "epoch_00002.pt"
    edit_checkpoint(newest, lambda c: c.update(format=c["format"] + 1))
    before = sorted(p.name for p in (run / "checkpoints").iterdir()), (run / "steps.csv").read_bytes()
    code, err = run_cli(flags[len(ARGS):] + ["--epochs", "3"], capsys)
    assert code == 2 and err.strip() == (f"error: {newest}: written by a newer memvir (checkpoint format 2; this "
                                         f"memvir reads format 1): upgrade memvir to use it, or use another "
                                         f"--save_path")
    assert (sorted(p.name for p in (run / "checkpoints").iterdir()), (run / "steps.csv").read_bytes()) == before


def shrink(key):
    def edit(ckpt):
        ckpt["model"][key] = ckpt["model"][key][:3]
    return edit


@pytest.mark.parametrize("edit,words", [
    (lambda c: c.pop("history"), "damaged: its field 'history' is missing"),
    (lambda c: c.pop("optimizer"), "damaged: its field 'optimizer' is missing"),
    (lambda c: c.update(epoch="2"), "damaged: its field 'epoch' is the text '2'; expected an integer"),
    (lambda c: c["rng"]["python"].update(state="x"), "damaged: its field 'rng.python.state' is the text 'x'"),
    (lambda c: c["history"].update(best=[]), "damaged: its field 'history': 'best' is a list; expected a mapping"),
    (shrink("embedding.linear.weight"), "damaged: its field 'model' does not fit the run its config describes"),
    (lambda c: c["criterion"].clear(), "damaged: its field 'criterion' does not fit the run its config describes"),
    (lambda c: c["optimizer"].update(param_groups=[]), "damaged: its field 'optimizer' does not fit the run"),
])
def test_a_checkpoint_missing_a_field_or_of_another_type_is_set_aside_and_the_run_goes_on(two_epochs, tmp_path,
                                                                                          capsys, edit, words):
    run, flags, _, _ = copy_run(two_epochs, tmp_path)
    newest = run / "checkpoints" / "epoch_00002.pt"
    edit_checkpoint(newest, edit)
    capsys.readouterr()
    assert main(flags + ["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {newest}: {words}" in out and "moved it aside to epoch_00002.pt.corrupt and resumed from " \
                                                   "epoch_00001.pt" in out, out
    assert (run / "checkpoints" / "epoch_00002.pt.corrupt").exists()
    assert json.loads((run / "metrics.json").read_text())["last"]["epoch"] == 3  # epochs 2 and 3 trained again
    assert main(flags + ["--epochs", "3"]) == 0 and "moved it aside" not in capsys.readouterr().out  # once only


def test_the_only_checkpoint_missing_a_field_is_one_line(tmp_path, capsys):
    assert main(ARGS + ["--epochs", "1", "--max_to_keep", "1", "--save_path", str(tmp_path)]) == 0
    edit_checkpoint(tmp_path / "checkpoints" / "epoch_00001.pt", lambda c: c.pop("rng"))
    code, err = run_cli(["--epochs", "2", "--max_to_keep", "1", "--save_path", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'checkpoints' / 'epoch_00001.pt'}: damaged: its field 'rng' is "
                          f"missing; moved it aside to epoch_00001.pt.corrupt. No older checkpoint is left")


@pytest.mark.parametrize("make,kind", [(lambda p: p.mkdir(), "a folder"), (lambda p: os.mkfifo(p), "a FIFO"),
                                       (lambda p: p.symlink_to("/dev/null"), "a symbolic link")])
def test_a_lock_that_is_not_a_file_is_one_line_on_the_command_line(tmp_path, capsys, make, kind):
    tmp_path.joinpath("run").mkdir()
    make(tmp_path / "run" / ".lock")
    code, err = run_cli(["--epochs", "1", "--save_path", str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip() == (f"error: {tmp_path / 'run' / '.lock'}: is {kind}, not the run folder's "
                                         f"lock (a regular file that memvir creates and holds while it trains "
                                         f"there); remove it, then run again")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing trained


# ---- a start that fails: one line, and no run folder left behind -----------------------------------------------


@pytest.mark.parametrize("flags,says", [
    (["-C", "3"], "error: -C=3: the training data has 10 classes; expected -C >= 10"),
    (["--data_name", "custom", "--data", "{tmp}/nowhere", *FOLDER[2:6]], "error: data folder {tmp}/nowhere does "
     "not exist; expected layout"),
    (["--data_name", "custom", "--data", "{tmp}/a_file", *FOLDER[2:6]], "error: data folder {tmp}/a_file is not a "
     "folder; expected layout"),
    (["--pretrained", "{tmp}/a_file"], "error: pretrained file '{tmp}/a_file' is not a torch weights file"),
    (["--backbone", "bninception"], "error: --input_size=16: 16 px images do not go through --backbone "
     "bninception"),
])
def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, flags, says):
    (tmp_path / "a_file").write_text("notes")
    run = tmp_path / "results" / "runs" / "one"
    code, err = run_cli([f.format(tmp=tmp_path) for f in flags] + ["--epochs", "1", "--save_path", str(run)], capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(says.format(tmp=tmp_path)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # results/runs/one: all three made, all gone


@pytest.mark.parametrize("size,expected", [(16, "expected --input_size >= 31, the smallest side that works"),
                                           (40, "expected a side that works, e.g. 38 or 63 (the smallest: 31)"),
                                           (150, "expected a side that works, e.g. 134 or 159 (the smallest: 31)")])
def test_an_input_size_the_backbone_cannot_take_is_one_line_before_training(tmp_path, capsys, size, expected):
    folder = make_folder(tmp_path / "data", 2, per_class=1)
    code, err = run_cli([*FOLDER[:2], "--data", str(folder), "--backbone", "bninception", "--pretrained", "none",
                         "--input_size", str(size), "--epochs", "1", "--save_path", str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert line.startswith(f"error: --input_size={size}: {size} px images do not go through --backbone bninception ")
    assert line.endswith(expected) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("failure", ["offline", "timeout", "garbage"])
def test_imagenet_weights_that_cannot_be_had_are_one_line(tmp_path, capsys, monkeypatch, failure):
    import socket
    import urllib.error

    def download(url, dst, *args, **kwargs):  # torch.hub's downloader, as it fails here
        if failure == "garbage":  # a proxy's error page saved as the file
            with open(dst, "w") as fh:
                fh.write("<html>blocked</html>")
            return
        raise (urllib.error.URLError("[Errno -3] Temporary failure in name resolution") if failure == "offline"
               else socket.timeout("timed out"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    code, err = run_cli(["--backbone", "resnet18", "--pretrained", "imagenet", "--input_size", "32", "--epochs", "1",
                         "--save_path", str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert line.startswith("error: --pretrained imagenet: cannot download the ImageNet weights of --backbone "
                           "resnet18 from https://download.pytorch.org/models/resnet18-f37072fd.pth (")
    assert line.endswith(f"pass a local copy with --pretrained /path/to/resnet18-f37072fd.pth (or put it in "
                         f"{tmp_path / 'hub' / 'hub' / 'checkpoints'}), or train from random initialisation with "
                         f"--pretrained none")
    assert not (tmp_path / "run").exists()


# ---- starting afresh removes only a run's own files (issue 32, finding 4) --------------------------------------


def snapshot(folder):
    """{relative path: bytes (None for a folder)} of everything under folder."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_start_afresh_removes_a_real_run_and_keeps_its_notebooks(two_epochs, tmp_path):
    from memvir.rundir import start_afresh

    run, *_ = copy_run(two_epochs, tmp_path)
    (run / "05_training.ipynb").write_text("{}")  # papermill's executed notebook beside the run
    written = sorted(p.name for p in run.rglob("*") if p.is_file())
    assert {"config.json", "metrics.json", "steps.csv", "epoch_00002.pt"} <= set(written)
    start_afresh(run)
    assert sorted(os.listdir(run)) == [".lock", "05_training.ipynb"]


@pytest.mark.parametrize("config", ['{"documentclass": "article"}', '["not", "a", "mapping"]', "{not json", None])
def test_start_afresh_refuses_a_folder_that_is_not_a_run(tmp_path, config):
    from memvir.rundir import start_afresh

    folder = tmp_path / "thesis"
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "src" / "main.py").write_text("print('mine')")
    if config is not None:
        (folder / "config.json").write_text(config)
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"which is not a memvir run's; starting afresh removes only"):
        start_afresh(folder)
    assert snapshot(folder) == before


def test_a_run_folder_with_a_user_file_in_it_is_refused_whole(two_epochs, tmp_path):
    from memvir.rundir import start_afresh

    run, *_ = copy_run(two_epochs, tmp_path)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "my_model.pt").write_bytes(b"mine")
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"checkpoints/my_model\.pt, notes\.txt"):
        start_afresh(run)
    assert snapshot(run) == before


def test_the_training_notebook_with_resume_false_never_deletes_a_users_folder(tmp_path):
    """The issue's case: papermill -p save_path <folder> -p resume False on a folder with a config.json."""
    import papermill

    root = Path(__file__).resolve().parents[1]
    folder = tmp_path / "thesis"
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "src" / "main.py").write_text("print('mine')")
    (folder / "config.json").write_text('{"documentclass": "article"}')
    before = snapshot(folder)
    with pytest.raises(papermill.PapermillExecutionError, match="not a memvir run's"):
        papermill.execute_notebook(str(root / "notebooks" / "05_training.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"save_path": str(folder), "resume": False}, kernel_name="python3",
                                   cwd=str(root / "notebooks"), progress_bar=False)
    assert snapshot(folder) == before


def test_a_foreign_config_json_is_one_line_not_a_list_of_differences(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"name": "my project", "version": 3}')
    code, err = run_cli(["--data_name", "glyphs", "--epochs", "1", "--save_path", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == (f"error: {tmp_path / 'config.json'}: not a memvir run's config (expected a "
                                         f"mapping with data_name, loss, epochs, seed, as memvir.train writes); this "
                                         f"folder is not a run folder: use another --save_path")


# ---- messages that name what to change (issue 32, finding 10) ---------------------------------------------------


def test_a_last_batch_of_one_image_with_batchnorm_is_one_line(tmp_path, capsys):
    make_folder(tmp_path / "data", 2)  # 6 training images; batches of 5 leave one
    code, err = run_cli([*FOLDER, "--data", str(tmp_path / "data"), "--batch_size", "5", "--epochs", "1",
                         "--save_path", str(tmp_path / "run")], capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: a training batch holds a single image (6 training images, --batch_size=5")
    assert "--freeze_BN 1" in lines[0] and "Expected more than 1 value" not in err


def test_divergence_names_the_scale_too_and_no_checkpoint_that_is_not_there(tmp_path, capsys):
    code, err = run_cli(["--epochs", "2", "--centerlr", "1e30", "--save_path", str(tmp_path / "run")], capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: training diverged at step 0"), err
    assert "No checkpoint was written yet" in lines[0] and "checkpoints" not in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "--centerlr (now 1e+30)" in lines[0] and "--scale (now 23)" in lines[0]


@pytest.mark.parametrize("flags,says", [(["--scale", "1e39"], "error: --scale=1e+39: expected a number > 0 and at "
                                                              "most 1e+06 (the logit scale"),
                                        (["--scale", "2e6"], "error: --scale=2000000.0: expected a number > 0")])
def test_a_scale_whose_logits_overflow_is_refused_before_training(tmp_path, capsys, flags, says):
    code, err = run_cli(["--epochs", "1", "--save_path", str(tmp_path / "run"), *flags], capsys)
    assert code == 2 and err.strip().startswith(says), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,names", [(["-C", str(10**12)], "-C=1000000000000 proxies x --dim=16"),
                                         (["--dim", str(2 * 10**11)], "--dim=200000000000")])
def test_out_of_memory_names_the_flag_that_sizes_it(tmp_path, capsys, flags, names):
    code, err = run_cli(["--epochs", "1", "--save_path", str(tmp_path / "run"), *flags], capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: out of memory on cpu"), err
    assert names in lines[0] and "--dim, -C" in lines[0]


def test_class_names_that_are_not_utf8_train_under_the_c_locale(tmp_path):
    root = os.fsencode(tmp_path / "data")
    rng = np.random.default_rng(0)
    for split in (b"train", b"test"):
        for cls in (b"caf\xe9" + split[:2], b"b" + split[:2]):  # Latin-1 bytes: not UTF-8
            os.makedirs(os.path.join(root, split, cls))
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
                    os.fsdecode(os.path.join(root, split, cls, b"%d.jpg" % k)))
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "memvir", "train", *FOLDER, "--data", str(tmp_path / "data"),
                           "--epochs", "1", "--save_path", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["finished"] is True


@pytest.mark.parametrize("edit,says", [
    (lambda m: m["last"].update({"recall@1": float("nan")}), "'last': 'recall@1' is the number nan; expected a "
                                                            "finite number or null"),
    (lambda m: m["evaluations"][0].update({"map_at_r": float("inf")}), "'evaluations'[0]: 'map_at_r' is the number "
                                                                      "inf"),
    (lambda m: m["best"]["recall@1"].update({"value": float("nan")}), "and 'value' the number nan; expected a "
                                                                     "mapping with an integer 'epoch' and a finite"),
])
def test_nan_in_a_metrics_json_names_the_file(two_epochs, tmp_path, edit, says):
    from memvir.rundir import read_metrics

    run, *_ = copy_run(two_epochs, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    edit(metrics)
    (run / "metrics.json").write_text(json.dumps(metrics))  # json writes NaN and Infinity, and reads them back
    with pytest.raises(ValueError) as err:
        read_metrics(run)
    assert str(err.value).startswith(f"{run / 'metrics.json'}: ") and says in str(err.value)
