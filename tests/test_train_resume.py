"""Tests for memvir.train's checkpoints: a killed run resumes to the same numbers (bitwise, CPU, --deterministic),
changed flags are refused, files are written atomically, the RNG states survive torch.load(weights_only=True)."""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from memvir import rundir
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


# ----------------------------------------------------------------------------------------------------------------
# Resume with MemVir is bitwise where the fast path's cache matters (issue 11): at D=16 the recomputed cache
# happened to agree with the incremental one; at these settings it did not.

# The paper's D=512; a kill in epoch 4 resumes from epoch 3, when 8 steps have been pushed into the 6 slots.
RUN_512 = {**RUN, "dim": 512, "epochs": 5}
# The glyph profile's MemVir (configs/cpu.yml: D=128, N=5, M=20, warm-up 16 of 24 epochs) shrunk to warm-up 8 of 12
# epochs of 38 steps: a kill in epoch 12 resumes from epoch 11, when 114 steps have been pushed into the 105 slots.
RUN_GLYPH = dict(data_name="glyphs", num_classes=20, instances_per_class=15, input_size=16, batch_size=4, dim=128,
                 epochs=12, check_epoch=4, deterministic=True, memvir=True, mem_num_step=5, mem_step_gap=20,
                 warm_epoch=8, progress=False)


def newest_checkpoint(run):
    return torch.load(max(glob.glob(os.path.join(run, "checkpoints", "epoch_*.pt"))), weights_only=True)


def assert_same_run(ref_run, run, epochs):
    """The final checkpoints hold the same tensors and the two metrics.json the same numbers (less wall time)."""
    a, b = load(ref_run, epochs), load(run, epochs)
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["criterion"], b["criterion"])  # proxies, the memory and its cache
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_tensors(sa, sb)
    with open(os.path.join(ref_run, "metrics.json")) as fa, open(os.path.join(run, "metrics.json")) as fb:
        assert without_wall_time(json.load(fa)) == without_wall_time(json.load(fb))


@pytest.fixture(scope="module")
def uninterrupted_512(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("uninterrupted_512"))
    train({**RUN_512, "save_path": run})
    return run


@pytest.mark.parametrize("flags,kill_step,resume_epoch", [(RUN_512, 14, 3), (RUN_GLYPH, 11 * 38 + 19, 11)],
                         ids=["D512", "glyph_profile"])
def test_memvir_resume_is_bitwise(uninterrupted_512, tmp_path_factory, tmp_path, flags, kill_step, resume_epoch):
    if flags is RUN_512:
        ref_run = uninterrupted_512
    else:
        ref_run = str(tmp_path_factory.mktemp("uninterrupted_glyph"))
        train({**flags, "save_path": ref_run})
    run = str(tmp_path)
    with pytest.raises(Killed):
        train({**flags, "save_path": run}, on_step=kill_at(kill_step))
    ckpt = newest_checkpoint(run)
    capacity = flags["mem_num_step"] * (flags["mem_step_gap"] + 1)
    assert ckpt["epoch"] == resume_epoch and int(ckpt["criterion"]["num_pushed"]) > capacity  # wrapped around
    train({**flags, "save_path": run})
    assert_same_run(ref_run, run, flags["epochs"])


# The child trains until `pause_step`, says so and waits to be killed: a real kill -9 at a known step, after the
# checkpoint of the previous epoch and with steps.csv rows and TensorBoard events written after it.
CHILD = """
import json, sys, time
import torch
from memvir.train import train
flags, pause_step = json.loads(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))  # the parent's: the same floats
def on_step(step, epoch, loss):
    if step == pause_step:
        print("paused", flush=True)
        time.sleep(600)
train(flags, on_step=on_step)
"""


def test_memvir_resume_after_kill_9(uninterrupted_512, tmp_path):
    run = str(tmp_path)
    flags = {**RUN_512, "save_path": run}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(flags), "14", str(torch.get_num_threads())],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        for line in child.stdout:  # the run's log, then "paused" (or the end, if it failed)
            out.append(line)
            if line == "paused\n":
                break
        assert out and out[-1] == "paused\n", "".join(out)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert newest_checkpoint(run)["epoch"] == 3
    train(flags)  # the same command again, in this process
    assert_same_run(uninterrupted_512, run, RUN_512["epochs"])
    with open(os.path.join(uninterrupted_512, "steps.csv")) as fa, open(os.path.join(run, "steps.csv")) as fb:
        assert fa.read() == fb.read()


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
# Files written while training (the format itself: tests/test_rundir.py)


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
    real_link = rundir.checkpoints.link_best  # where save_checkpoint finds it

    def killed_before_linking(path, ckpt_dir, metrics):
        raise Killed("killed between the checkpoint and its best_* links")

    monkeypatch.setattr(rundir.checkpoints, "link_best", killed_before_linking)
    flags = {**RUN, "epochs": 1, "save_path": str(tmp_path)}
    with pytest.raises(Killed):
        train(flags)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["epoch_00001.pt"]
    monkeypatch.setattr(rundir.checkpoints, "link_best", real_link)
    train(flags)  # finished already: nothing to train, but the first evaluation is the best of every metric
    for name in ("best_recall_1.pt", "best_r_precision.pt", "best_map_at_r.pt"):
        assert os.path.samefile(ckpt_dir / name, ckpt_dir / "epoch_00001.pt")


def test_eval_best_evaluates_the_best_checkpoint(uninterrupted):
    ref_run, ref = uninterrupted
    res = train({**RUN, "save_path": ref_run, "eval_best": True})
    best = ref["best"]["recall@1"]
    assert res["last"]["epoch"] == best["epoch"] and res["last"]["recall@1"] == best["value"]
    match = [e for e in ref["evaluations"] if e["epoch"] == best["epoch"]][0]
    assert without_wall_time({"evaluations": [res["last"]]}) == without_wall_time({"evaluations": [match]})
