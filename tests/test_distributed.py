"""Tests for several processes (memvir.distributed): a 2-process gloo run through torchrun follows the loss curve of a
1-process run with the same global batch, MemVir included; only rank 0 writes files."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memvir import distributed
from memvir.train import train

ROOT = Path(__file__).resolve().parents[1]
# 21 train glyph classes of 9 images = 189 images; batches of 32: five full batches and one of 29, which the two
# ranks split 15 + 14 (uneven slices). Frozen BatchNorm: on CPU each process would otherwise keep its own statistics.
FLAGS = dict(num_classes=42, instances_per_class=9, input_size=16, batch_size=32, dim=16, epochs=2, check_epoch=1,
             freeze_BN=True, memvir=True, mem_num_step=2, mem_step_gap=0, warm_epoch=0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_steps(run):
    with open(os.path.join(run, "steps.csv")) as fh:
        return list(csv.DictReader(fh))


def test_two_processes_match_one_process(tmp_path):
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    ref = train({**FLAGS, "save_path": one, "progress": False})

    argv = [f"--{k}={v}" for k, v in FLAGS.items()] + [f"--save_path={two}", "--no_progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "memvir", "train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout

    rows1, rows2 = read_steps(one), read_steps(two)
    assert len(rows1) == len(rows2) == 2 * 6
    for r1, r2 in zip(rows1, rows2):
        # Same global batch, same classes and memory rows in use, same loss up to float summation order.
        for key in ("step", "epoch", "num_taken", "num_classes_in_use", "num_embeddings_in_use"):
            assert r1[key] == r2[key], key
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), abs=1e-4)
    assert int(rows2[-1]["num_taken"]) == 2  # the memory was in use

    with open(os.path.join(two, "metrics.json")) as fh:
        metrics = json.load(fh)
    for e1, e2 in zip(ref["evaluations"], metrics["evaluations"]):
        assert e2["epoch"] == e1["epoch"] and e2["step"] == e1["step"]
        assert e2["map_at_r"] == pytest.approx(e1["map_at_r"], abs=1e-3)
    p1 = torch.load(os.path.join(one, "checkpoints", "epoch_00002.pt"), weights_only=True)["criterion"]
    p2 = torch.load(os.path.join(two, "checkpoints", "epoch_00002.pt"), weights_only=True)["criterion"]
    torch.testing.assert_close(p2["loss.proxies"], p1["loss.proxies"], atol=1e-4, rtol=0)
    # Only rank 0 writes: one event file, one set of outputs.
    assert len([f for f in os.listdir(two) if f.startswith("events.out.tfevents")]) == 1


@pytest.mark.parametrize("env,expected", [
    ({}, distributed.DistInfo(0, 1, 0)),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, distributed.DistInfo(1, 4, 1)),
    ({"RANK": "0", "WORLD_SIZE": "1"}, distributed.DistInfo(0, 1, 0)),
])
def test_env_is_read_as_torchrun_sets_it(env, expected):
    info = distributed.from_env(env)
    assert info == expected and info.enabled is (expected.world_size > 1)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_bad_env_is_refused(env):
    with pytest.raises(ValueError, match="RANK"):
        distributed.from_env(env)


def test_one_process_gather_is_the_identity():
    emb, labels = torch.randn(5, 3, requires_grad=True), torch.arange(5)
    out, lab = distributed.gather_batch(emb, labels, distributed.DistInfo())
    assert out is emb and lab is labels
