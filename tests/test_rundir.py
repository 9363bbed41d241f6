"""Tests for memvir.rundir, the run folder's format: atomic files, checkpoints (damaged, refused, fallen back
from), the one-owner lock, steps.csv, the random generators' state, run names."""
import csv
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from memvir import rundir as R
from memvir.files import atomic_json


def ckpt(epoch, value=1.0):
    return {"format": R.CHECKPOINT_FORMAT, "epoch": epoch, "w": torch.full((3,), value)}


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


def test_atomic_json_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_json({"version": 1}, path)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_json({"version": 2, "big": list(range(10000))}, path)
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind


def test_atomic_json_writes_nan_as_null(tmp_path):
    atomic_json({"a": float("nan"), "b": [1.0, float("inf")]}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None]}


def test_checkpoint_keeps_the_old_file_when_serialisation_fails(tmp_path, monkeypatch):
    R.save_checkpoint(ckpt(1), str(tmp_path), 1, 0, [])
    path = tmp_path / "epoch_00001.pt"

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("killed while writing")

    real_save = torch.save
    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        R.save_checkpoint(ckpt(1, 0.0), str(tmp_path), 1, 0, [])
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(R.load_checkpoint(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["epoch_00001.pt"]


def test_max_to_keep_and_best_links(tmp_path):
    for epoch in (1, 2, 3):
        R.save_checkpoint(ckpt(epoch, epoch), str(tmp_path), epoch, 2, ["recall@1"] if epoch == 2 else [])
    assert sorted(os.listdir(tmp_path)) == ["best_recall_1.pt", "epoch_00002.pt", "epoch_00003.pt"]
    assert os.path.samefile(tmp_path / "best_recall_1.pt", tmp_path / "epoch_00002.pt")


# ----------------------------------------------------------------------------------------------------------------
# Damaged and refused checkpoints


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_bytes, lambda p: p.write_bytes(b"")])
def test_damaged_checkpoint_names_the_file_in_one_line(tmp_path, damage):
    R.save_checkpoint(ckpt(1), str(tmp_path), 1, 0, [])
    path = tmp_path / "epoch_00001.pt"
    damage(path)
    with pytest.raises(R.CheckpointError) as err:
        R.load_checkpoint(str(path))
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < 400


def test_newest_damaged_checkpoint_falls_back_to_the_older_one(tmp_path):
    for epoch in (1, 2):
        R.save_checkpoint(ckpt(epoch, epoch), str(tmp_path), epoch, 0, [])
    truncate(tmp_path / "epoch_00002.pt")
    said = []
    path, loaded = R.latest_checkpoint(str(tmp_path), warn=said.append)
    assert path.endswith("epoch_00001.pt") and loaded["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["epoch_00001.pt", "epoch_00002.pt.corrupt"]  # kept aside, not deleted
    assert len(said) == 1 and "epoch_00002.pt" in said[0] and "epoch_00001.pt" in said[0]


def test_only_checkpoint_damaged_is_one_clear_error(tmp_path):
    R.save_checkpoint(ckpt(1), str(tmp_path), 1, 1, [])
    flip_bytes(tmp_path / "epoch_00001.pt")
    with pytest.raises(R.CheckpointError, match="No older checkpoint"):
        R.latest_checkpoint(str(tmp_path), warn=lambda s: None)
    assert os.listdir(tmp_path) == ["epoch_00001.pt.corrupt"]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_code_running_pickle_is_refused_without_torch_advice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "epoch_00001.pt"
    torch.save({"format": R.CHECKPOINT_FORMAT, "payload": RunsCode()}, path)
    with pytest.raises(R.CheckpointError) as err:
        R.latest_checkpoint(str(tmp_path))
    message = str(err.value)
    assert "refused" in message and "weights_only" not in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists() and path.exists()  # never executed, never moved


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "epoch_00001.pt"
    path.write_bytes(pickle.dumps(RunsCode(), protocol=2))
    with pytest.raises(R.CheckpointError):
        R.load_checkpoint(str(path))
    assert not (tmp_path / "PWNED").exists()


def training_checkpoint(epoch):
    """A checkpoint with every field memvir.train writes (R.TRAINING_FIELDS), of the types it writes them."""
    history = R.new_history()
    R.record_evaluation(history, {"epoch": epoch, "step": 4 * epoch, "recall@1": 0.5, "r_precision": 0.25,
                                  "map_at_r": 0.125, "wall_time": 1.0})
    return {"format": R.CHECKPOINT_FORMAT, "config": {"seed": 0}, "epoch": epoch, "step": 4 * epoch,
            "elapsed": 1.5, "model": {"w": torch.ones(3)}, "criterion": {"proxies": torch.zeros(2, 3)},
            "optimizer": {"state": {}, "param_groups": []}, "lrs": [0.1], "scaler": {},
            "sampler": {"seed": 0, "epoch": epoch}, "rng": R.get_rng_state(), "history": history,
            "early_stop_count": 0, "data": {"sha256": "0123456789abcdef"}}


def test_a_newer_checkpoint_format_is_refused_and_left_in_place(tmp_path):
    for epoch in (1, 2):
        R.save_checkpoint({**training_checkpoint(epoch), "format": R.CHECKPOINT_FORMAT + (epoch == 2)},
                          str(tmp_path), epoch, 0, [])
    with pytest.raises(R.CheckpointRefused) as err:
        R.latest_checkpoint(str(tmp_path), warn=pytest.fail, fields=R.TRAINING_FIELDS)
    assert str(err.value) == (f"{tmp_path / 'epoch_00002.pt'}: written by a newer memvir (checkpoint format "
                              f"{R.CHECKPOINT_FORMAT + 1}; this memvir reads format {R.CHECKPOINT_FORMAT}): "
                              f"upgrade memvir to use it, or use another --save_path")
    assert sorted(os.listdir(tmp_path)) == ["epoch_00001.pt", "epoch_00002.pt"]  # nothing moved aside


def drop(key):
    def edit(ckpt):
        del ckpt[key]
    return edit


def put(path, value):
    def edit(ckpt):
        *outer, last = path.split(".")
        target = ckpt
        for k in outer:
            target = target[k]
        target[last] = value
    return edit


@pytest.mark.parametrize("edit,words", [
    (drop("history"), "its field 'history' is missing"),
    (drop("model"), "its field 'model' is missing"),
    (drop("rng"), "its field 'rng' is missing"),
    (put("epoch", "2"), "its field 'epoch' is the text '2'; expected an integer"),
    (put("epoch", True), "its field 'epoch' is true (a boolean); expected an integer"),
    (put("model", [1, 2]), "its field 'model' is a list; expected a mapping from names to tensors"),
    (put("model.w", 3.0), "its field 'model.w' is the number 3.0; expected a tensor"),
    (put("rng.numpy.pos", "x"), "its field 'rng.numpy.pos' is the text 'x'; expected an integer"),
    (put("rng.torch", None), "its field 'rng.torch' is null; expected a tensor"),
    (put("optimizer", {"state": {}}), "its field 'optimizer.param_groups' is missing"),
    (put("history.finished", "yes"), "its field 'history': 'finished' is the text 'yes'; expected true or false"),
    (put("history.best", []), "its field 'history': 'best' is a list; expected a mapping"),
    (put("data", "abc"), "its field 'data' is the text 'abc'; expected a mapping"),
])
def test_a_checkpoint_missing_a_field_or_of_another_type_is_set_aside(tmp_path, edit, words):
    for epoch in (1, 2):
        R.save_checkpoint(training_checkpoint(epoch), str(tmp_path), epoch, 0, [])
    ckpt = torch.load(tmp_path / "epoch_00002.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "epoch_00002.pt")
    said = []
    path, loaded = R.latest_checkpoint(str(tmp_path), warn=said.append, fields=R.TRAINING_FIELDS)
    assert path.endswith("epoch_00001.pt") and loaded["epoch"] == 1
    assert said == [f"{tmp_path / 'epoch_00002.pt'}: damaged: {words}; moved it aside to epoch_00002.pt.corrupt "
                    f"and resumed from epoch_00001.pt"]
    assert sorted(os.listdir(tmp_path)) == ["epoch_00001.pt", "epoch_00002.pt.corrupt"]


def test_a_checkpoint_the_caller_found_damaged_is_set_aside(tmp_path):
    for epoch in (1, 2):
        R.save_checkpoint(training_checkpoint(epoch), str(tmp_path), epoch, 0, [])
    bad = R.CheckpointError(f"{tmp_path / 'epoch_00002.pt'}: damaged: its field 'model' does not fit")
    said = []
    path, _ = R.latest_checkpoint(str(tmp_path), warn=said.append, damaged=(str(tmp_path / "epoch_00002.pt"), bad))
    assert path.endswith("epoch_00001.pt") and len(said) == 1 and said[0].startswith(str(bad))
    assert sorted(os.listdir(tmp_path)) == ["epoch_00001.pt", "epoch_00002.pt.corrupt"]


# ----------------------------------------------------------------------------------------------------------------
# metrics.json: checked, and rebuilt from a checkpoint's history


@pytest.mark.parametrize("text,words", [
    ('{"evaluations": [', "not valid JSON (Expecting value: line 1 column 18 (char 17))"),
    ("[]", "expected a mapping with keys evaluations, best, last, finished, got a list"),
    ('{"evaluations": 3, "best": {}, "last": null, "finished": true}', "'evaluations' is the number 3; expected a "
                                                                       "list"),
    ('{"evaluations": [], "best": {}, "last": null}', "missing key 'finished'; expected evaluations, best, last, "
                                                      "finished (see memvir/rundir/history.py)"),
    ('{"evaluations": [{"epoch": "1"}], "best": {}, "last": null, "finished": false}',
     "'evaluations'[0]: 'epoch' is the text '1'; expected an integer"),
    ('{"evaluations": [], "best": {"recall@1": 0.5}, "last": null, "finished": true}',
     "'best'/'recall@1' is the number 0.5; expected a mapping with an integer 'epoch' and a finite number 'value'"),
    ('{"evaluations": [{"epoch": 1, "map_at_r": "high"}], "best": {}, "last": null, "finished": true}',
     "'evaluations'[0]: 'map_at_r' is the text 'high'; expected a finite number or null"),
])
def test_a_damaged_metrics_json_is_named_and_rebuilt_from_the_history(tmp_path, text, words):
    history = training_checkpoint(2)["history"]
    history["finished"] = True
    atomic_json(history, tmp_path / "metrics.json")
    written = (tmp_path / "metrics.json").read_bytes()
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(ValueError) as err:
        R.read_metrics(tmp_path)
    assert str(err.value) == f"{tmp_path / 'metrics.json'}: {words}"
    said = R.repair_metrics(tmp_path, history, "ckpt.pt")
    assert said == f"{tmp_path / 'metrics.json'}: {words}; rebuilt it from the history in ckpt.pt"
    assert (tmp_path / "metrics.json").read_bytes() == written  # what training wrote, byte for byte
    assert R.repair_metrics(tmp_path, history, "ckpt.pt") is None  # whole now: nothing to do


# ----------------------------------------------------------------------------------------------------------------
# One owner per run folder


HOLD = textwrap.dedent("""
    import sys, time
    from memvir.rundir import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_owner_is_refused_with_the_pid_and_a_kill_frees_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(R.RunFolderBusy, match=f"pid {holder.pid}"):
            R.RunLock(str(tmp_path)).__enter__()
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait()
    with R.RunLock(str(tmp_path)):  # the kernel released the lock with the process
        pass


@pytest.mark.parametrize("make,kind", [(lambda p: p.mkdir(), "a folder"), (lambda p: os.mkfifo(p), "a FIFO"),
                                       (lambda p: p.symlink_to(p.parent / "elsewhere"), "a symbolic link")])
def test_a_lock_that_is_not_a_regular_file_is_one_line(tmp_path, make, kind):
    make(tmp_path / ".lock")
    with pytest.raises(ValueError) as err:
        R.RunLock(str(tmp_path)).__enter__()  # a FIFO would block open() forever without the check
    assert str(err.value) == (f"{tmp_path / '.lock'}: is {kind}, not the run folder's lock (a regular file that "
                              f"memvir creates and holds while it trains there); remove it, then run again")
    assert not (tmp_path / "elsewhere").exists()


def test_a_failed_start_removes_the_folders_it_made_and_nothing_else(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError, match="bad flag"):
        with R.run_folder(str(run)), R.RunLock(str(run)):
            raise ValueError("bad flag")
    assert os.listdir(tmp_path) == []  # run, b and a were made for it: all gone
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError):
        with R.run_folder(str(tmp_path / "mine" / "run")), R.RunLock(str(tmp_path / "mine" / "run")):
            raise ValueError("bad flag")
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(tmp_path / "mine") == []  # "mine" was there before
    (tmp_path / "mine" / "run").mkdir()
    with pytest.raises(ValueError):
        with R.run_folder(str(tmp_path / "mine" / "run")), R.RunLock(str(tmp_path / "mine" / "run")):
            raise ValueError("bad flag")
    assert os.listdir(tmp_path / "mine" / "run") == [".lock"]  # an existing run folder is never removed
    with pytest.raises(ValueError):
        with R.run_folder(str(tmp_path / "x")):
            (tmp_path / "x" / "config.json").write_text("{}")
            raise ValueError("failed after writing")
    assert os.listdir(tmp_path / "x") == ["config.json"]  # not empty: kept


def test_new_owner_removes_stale_temporaries(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "metrics.json.tmp4242", tmp_path / "checkpoints" / "epoch_00003.pt.tmp99"]
    keep = [tmp_path / "notes.tmp", tmp_path / "checkpoints" / "epoch_00002.pt"]
    for p in stale + keep:
        p.write_text("x")
    with R.RunLock(str(tmp_path)):
        assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# ----------------------------------------------------------------------------------------------------------------
# steps.csv, generators, names


def test_steps_log_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,epoch,loss,lr,num_taken,num_classes_in_use,num_embeddings_in_use\n"
                    "0,1,2.5,0.1,0,10,32\n1,1,2.4,0.1,0,10,32\n2,2,2.3,0.1,0,10,32\n3,2,2.")  # cut by a kill
    log = R.StepLog(str(path), keep_below=2)
    log.write(2, 2, 2.25, 0.1, 0, 10, 32)
    log.close()
    with open(path) as fh:
        rows = list(csv.reader(fh))
    assert rows[1:] == [["0", "1", "2.5", "0.1", "0", "10", "32"], ["1", "1", "2.4", "0.1", "0", "10", "32"],
                        ["2", "2", "2.25", "0.1", "0", "10", "32"]]


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # numpy keeps a cached Gaussian: part of the state
    random.gauss(0, 1)
    torch.save({"rng": R.get_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    R.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
