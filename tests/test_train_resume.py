"""Tests for memvir.train's checkpoints: a killed run resumes to the same numbers (bitwise, CPU, --deterministic),
changed flags are refused, files are written atomically, the RNG states survive torch.load(weights_only=True)."""
import csv
import json
import os
import random

import numpy as np
import pytest
import torch

from memvir import train as T
from memvir.train import main, train

# 20 glyph classes (10 train) of 10 images at 16 px, batches of 32 (4 steps per epoch); MemVir on from epoch 2, so
# the memory is full of stored steps when a run is killed in epoch 3.
RUN = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
           epochs=4, check_epoch=1, deterministic=True, memvir=True, mem_num_step=3, mem_step_gap=1, warm_epoch=1,
           progress=False)


class Killed(Exception):
    pass


def kill_at(step_to_kill):
    def on_step(step, epoch, loss):
        if step == step_to_kill:
            raise Killed(f"killed after step {step}")
    return on_step


def without_wall_time(metrics):
    return [{k: v for k, v in e.items() if k != "wall_time"} for e in metrics["evaluations"]]


def load(run, epoch):
    return torch.load(os.path.join(run, "checkpoints", f"epoch_{epoch:05d}.pt"), weights_only=True)


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("uninterrupted"))
    return run, train({**RUN, "save_path": run})


@pytest.mark.parametrize("kill_step", [10, 12])  # in the middle of epoch 3; right after epoch 3's last step
def test_killed_run_resumes_bitwise(uninterrupted, tmp_path, kill_step):
    ref_run, ref = uninterrupted
    run = str(tmp_path)
    with pytest.raises(Killed):
        train({**RUN, "save_path": run}, on_step=kill_at(kill_step))
    res = train({**RUN, "save_path": run})  # the same command again
    assert without_wall_time(res) == without_wall_time(ref)
    assert res["best"] == ref["best"] and res["finished"]
    a, b = load(ref_run, 4), load(run, 4)
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["criterion"], b["criterion"])  # proxies and the MemVir memory
    assert a["step"] == b["step"] == 16
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(sa, sb)
    with open(os.path.join(ref_run, "steps.csv")) as fa, open(os.path.join(run, "steps.csv")) as fb:
        assert fa.read() == fb.read()  # the rows the killed run wrote after its checkpoint were replaced
    with open(os.path.join(run, "metrics.json")) as fh:
        assert without_wall_time(json.load(fh)) == without_wall_time(ref)


def test_epochs_may_grow(uninterrupted, tmp_path):
    ref_run, ref = uninterrupted
    run = str(tmp_path)
    train({**RUN, "epochs": 2, "save_path": run})
    res = train({**RUN, "epochs": 4, "save_path": run})
    assert without_wall_time(res) == without_wall_time(ref)  # check_epoch=1: the same evaluations
    assert_same_tensors(load(ref_run, 4)["criterion"], load(run, 4)["criterion"])
    with pytest.raises(ValueError, match="--epochs=3.*epoch 4"):
        train({**RUN, "epochs": 3, "save_path": run})


def test_finished_run_is_not_trained_again(uninterrupted, tmp_path):
    ref_run, ref = uninterrupted
    before = os.path.getmtime(os.path.join(ref_run, "checkpoints", "epoch_00004.pt"))
    res = train({**RUN, "save_path": ref_run, "workers": 1, "progress": True})  # flags that may differ
    assert without_wall_time(res) == without_wall_time(ref)
    assert os.path.getmtime(os.path.join(ref_run, "checkpoints", "epoch_00004.pt")) == before


@pytest.mark.parametrize("changed", [{"modellr": 0.5}, {"loss": "ProxyNCA"}, {"mem_step_gap": 2},
                                     {"seed": 1, "freeze_BN": True}])
def test_resume_with_other_flags_is_refused(uninterrupted, changed):
    ref_run, _ = uninterrupted
    with pytest.raises(ValueError) as info:
        train({**RUN, **changed, "save_path": ref_run})
    message = str(info.value)
    assert all(f"--{k}" in message for k in changed) and "--epochs" not in message


def test_refused_resume_on_the_command_line(uninterrupted, capsys):
    ref_run, _ = uninterrupted
    argv = ["--num_classes", "20", "--instances_per_class", "10", "--input_size", "16", "--batch_size", "32",
            "--dim", "16", "--epochs", "4", "--check_epoch", "1", "--deterministic", "--memvir=1",
            "--mem_num_step", "3", "--mem_step_gap", "1", "--warm_epoch", "1", "--save_path", ref_run,
            "--scale", "30"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--scale: 23.0 there, 30.0 now" in err


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


def test_atomic_json_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    T.atomic_json({"version": 1}, path)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(T.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        T.atomic_json({"version": 2, "big": list(range(10000))}, path)
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind


def test_checkpoint_keeps_the_old_file_when_serialisation_fails(tmp_path, monkeypatch):
    T.save_checkpoint({"format": T.CHECKPOINT_FORMAT, "w": torch.ones(3)}, str(tmp_path), 1, 0, [])
    path = tmp_path / "epoch_00001.pt"
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        T.save_checkpoint({"format": T.CHECKPOINT_FORMAT, "w": torch.zeros(3)}, str(tmp_path), 1, 0, [])
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(T.load_checkpoint(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["epoch_00001.pt"]


def test_run_survives_a_failed_metrics_write(uninterrupted, tmp_path, monkeypatch):
    ref_run, ref = uninterrupted
    run = str(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if dst.endswith("metrics.json") and os.path.exists(dst):  # the second write of metrics.json
            raise OSError("killed during the rename")
        real_replace(src, dst)

    monkeypatch.setattr(T.os, "replace", replace)
    with pytest.raises(OSError):
        train({**RUN, "save_path": run})
    monkeypatch.setattr(T.os, "replace", real_replace)
    with open(os.path.join(run, "metrics.json")) as fh:
        assert without_wall_time(json.load(fh)) == without_wall_time(ref)[:1]  # epoch 1's file, whole
    assert load(run, 2)["epoch"] == 2  # the checkpoint is written before metrics.json: the rerun goes on from it
    train({**RUN, "save_path": run})
    with open(os.path.join(run, "metrics.json")) as fh:
        assert without_wall_time(json.load(fh)) == without_wall_time(ref)


def test_best_links_are_made_on_resume_after_a_kill_between(tmp_path, monkeypatch):
    real_link = T.link_best

    def killed_before_linking(path, ckpt_dir, metrics):
        raise Killed("killed between the checkpoint and its best_* links")

    monkeypatch.setattr(T, "link_best", killed_before_linking)
    flags = {**RUN, "epochs": 1, "save_path": str(tmp_path)}
    with pytest.raises(Killed):
        train(flags)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["epoch_00001.pt"]
    monkeypatch.setattr(T, "link_best", real_link)
    train(flags)  # finished already: nothing to train, but the first evaluation is the best of every metric
    for name in ("best_recall_1.pt", "best_r_precision.pt", "best_map_at_r.pt"):
        assert os.path.samefile(ckpt_dir / name, ckpt_dir / "epoch_00001.pt")


def test_steps_log_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,epoch,loss,lr,num_taken,num_classes_in_use,num_embeddings_in_use\n"
                    "0,1,2.5,0.1,0,10,32\n1,1,2.4,0.1,0,10,32\n2,2,2.3,0.1,0,10,32\n3,2,2.")  # cut by a kill
    log = T.StepLog(str(path), keep_below=2)
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
    torch.save({"rng": T.get_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    T.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_eval_best_evaluates_the_best_checkpoint(uninterrupted):
    ref_run, ref = uninterrupted
    res = train({**RUN, "save_path": ref_run, "eval_best": True})
    best = ref["best"]["recall@1"]
    assert res["last"]["epoch"] == best["epoch"] and res["last"]["recall@1"] == best["value"]
    match = [e for e in ref["evaluations"] if e["epoch"] == best["epoch"]][0]
    assert without_wall_time({"evaluations": [res["last"]]}) == without_wall_time({"evaluations": [match]})
