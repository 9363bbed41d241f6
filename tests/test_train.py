"""Tests for memvir.train: the official command lines, the recipe (lr schedule, frozen BN, early stop), the run's
files, and bad input. Runs are tiny glyph sets (10 + 10 classes at 16 px) or a 4 + 4 class image folder."""
import csv
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvir import train as T
from memvir.train import TrainConfig, TrainingError, learning_rates, main, resolve_config, train

ROOT = Path(__file__).resolve().parents[1]
# 20 glyph classes (10 train, 10 test) of 10 images at 16 px; batches of 32: 4 steps per epoch (the last of 4 images).
TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
            progress=False)
TINY_ARGS = ["--num_classes", "20", "--instances_per_class", "10", "--input_size", "16", "--batch_size", "32",
             "--dim", "16", "--no_progress"]
STEPS_PER_EPOCH = math.ceil(100 / 32)


def official_commands():
    """The four command lines of configs/official_cars196.txt, each as a list of arguments after `python main.py`."""
    text = (ROOT / "configs" / "official_cars196.txt").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    commands = [c for c in " ".join(ln.rstrip("\\") for ln in lines).split("python main.py") if c.strip()]
    assert len(commands) == 4
    return [shlex.split(c) for c in commands]


def pasted_flags(args):
    """Oracle: the flags as written in the pasted text, {name: value or True}."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--(\w+)(?:=(.*))?", a)
        out[m.group(1)] = True if m.group(2) is None else m.group(2)
    return out


def make_car_folder(root, classes=4, per_class=3):
    """train/<class>/*.jpg and test/<class>/*.jpg, every class a flat colour with noise."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"{split}_class{c}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 255, (1, 1, 3)) + rng.integers(-20, 20, (30, 40, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k}.jpg")


# ----------------------------------------------------------------------------------------------------------------
# The official command lines


@pytest.mark.parametrize("index", range(4))
def test_official_command_parses_with_its_meaning(index):
    args = official_commands()[index]
    cfg = T.config_from_argv(args)
    flags = pasted_flags(args)
    loss = {"normsoftmax": "Norm_SoftMax", "proxynca": "Proxy_NCA"}[flags["loss"].lower().replace("_", "")]
    assert cfg.loss == loss
    for name in ("dim", "batch_size", "epochs", "decay_step", "decay_stop", "n_instance", "check_epoch",
                 "mem_num_step", "mem_step_gap", "warm_epoch"):
        if name in flags:
            assert getattr(cfg, name) == int(flags[name]), name
    assert cfg.scale == float(flags["scale"])
    assert cfg.freeze_BN is True and cfg.memvir is ("memvir" in flags)
    assert (cfg.data, cfg.data_name, cfg.save_path, cfg.gpu) == (flags["data"], "cars196", flags["save_path"], "0")
    # The official defaults for what the line does not set (main.py's argparse defaults).
    assert (cfg.modellr, cfg.centerlr, cfg.weight_decay, cfg.eps, cfg.decay_rate) == (1e-4, 1e-2, 1e-4, 0.01, 0.1)
    assert (cfg.backbone, cfg.pretrained, cfg.input_size, cfg.optimizer, cfg.init_type) == (
        "bninception", "imagenet", 224, "adam", "normal")
    assert cfg.k_list == "1,2,4,8" and cfg.max_to_keep == 1 and cfg.pooling_type == "GAP"


@pytest.mark.parametrize("index", range(4))
def test_official_command_runs_on_a_tiny_folder(index, tmp_path, monkeypatch, capsys):
    make_car_folder(tmp_path / "dataset" / "carDB")  # where the pasted --data=./dataset/carDB points
    monkeypatch.chdir(tmp_path)
    args = official_commands()[index]
    shrink = ["--epochs", "1", "--dim", "8", "--input_size", "32", "--pretrained", "none", "--workers", "0",
              "--no_progress"]
    assert main(args + shrink) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "98" in err  # the cars196 C of the paper vs the folder's 4: a warning
    run = tmp_path / pasted_flags(args)["save_path"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["evaluations"]] == [1] and metrics["finished"]
    ckpt = torch.load(run / "checkpoints" / "epoch_00001.pt", weights_only=True)
    proxies = ckpt["criterion"]["loss.proxies" if "memvir" in pasted_flags(args) else "proxies"]
    assert tuple(proxies.shape) == (4, 8)  # C follows the train folder, not the cars196 constant 98


@pytest.mark.parametrize("text,expected", [("--memvir", True), ("--memvir=1", True), ("--memvir=True", True),
                                           ("--memvir=t", True), ("--memvir=0", False), ("--memvir=False", False),
                                           ("--memvir=yes", True)])
def test_boolean_flags_parse_like_the_official(text, expected):
    args = [text, "--mem_num_step", "2"] if expected else [text]
    assert T.config_from_argv(args).memvir is expected


def test_defaults_per_data_name():
    glyphs, cars = resolve_config({}), resolve_config({"data_name": "CARS", "data": "x"})
    assert (glyphs.backbone, glyphs.dim, glyphs.batch_size, glyphs.modellr, glyphs.centerlr) == (
        "glyphcnn", 128, 128, 1e-3, 1e-2)
    assert (glyphs.num_classes, glyphs.input_size, glyphs.instances_per_class, glyphs.pretrained) == (
        400, 32, 20, "none")
    assert glyphs.scale == 23.0 and resolve_config({"loss": "ProxyNCA"}).scale == 12.0
    assert (cars.data_name, cars.dim, cars.epochs, cars.scale, cars.decay_step, cars.workers) == (
        "cars196", 64, 50, 1.0, 20, 5)
    assert resolve_config({"data_name": "sop", "data": "x"}).k_list == "1,10,100,1000"
    assert resolve_config({"data_name": "inshop", "data": "x"}).k_list == "1,10,20,40"
    assert resolve_config({"wd": 0.5, "b": 64, "j": 2, "no_progress": True}).weight_decay == 0.5


# ----------------------------------------------------------------------------------------------------------------
# The recipe


# Hand-written: base 1e-4 / 1e-2, decay 0.1 at the start of epochs divisible by decay_step, up to decay_stop.
LR_TABLES = [
    (dict(decay_step=2, decay_stop=100000), [1e-4, 1e-5, 1e-5, 1e-6, 1e-6, 1e-7]),
    (dict(decay_step=2, decay_stop=3), [1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]),
    (dict(decay_step=3, decay_stop=6), [1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-6]),
    (dict(decay_step=50, decay_stop=50), [1e-4] * 6),
]


@pytest.mark.parametrize("schedule,expected", LR_TABLES)
def test_learning_rate_table(schedule, expected):
    cfg = resolve_config({"modellr": 1e-4, "centerlr": 1e-2, **schedule})
    for epoch, lr in enumerate(expected, start=1):
        model_lr, center_lr = learning_rates(epoch, cfg)
        assert model_lr == pytest.approx(lr, rel=1e-12) and center_lr == pytest.approx(lr * 100, rel=1e-12)


def test_learning_rates_used_in_training(tmp_path):
    res = train({**TINY, "epochs": 4, "check_epoch": 4, "modellr": 1e-3, "centerlr": 1e-1, "decay_step": 2,
                 "decay_rate": 0.5, "save_path": str(tmp_path)})
    expected = {1: 1e-3, 2: 5e-4, 3: 5e-4, 4: 2.5e-4}  # by hand
    with open(tmp_path / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * STEPS_PER_EPOCH
    for row in rows:
        assert float(row["lr"]) == pytest.approx(expected[int(row["epoch"])], rel=1e-12)
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00004.pt", weights_only=True)
    assert ckpt["lrs"] == pytest.approx([2.5e-4, 2.5e-4, 2.5e-2], rel=1e-12)
    assert res["finished"]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_running_statistics(tmp_path, freeze):
    train({**TINY, "epochs": 1, "freeze_BN": freeze, "save_path": str(tmp_path)})
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00001.pt", weights_only=True)
    bn = [k.rsplit(".", 1)[0] for k in ckpt["model"] if k.endswith("running_mean")]
    assert bn
    for name in bn:
        mean, var = ckpt["model"][f"{name}.running_mean"], ckpt["model"][f"{name}.running_var"]
        count = int(ckpt["model"][f"{name}.num_batches_tracked"])
        untouched = torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.ones_like(var))
        # BatchNorm starts at mean 0, var 1 (nn.BatchNorm2d); frozen, it never moves; otherwise every step moves it.
        assert untouched is freeze and count == (0 if freeze else STEPS_PER_EPOCH)
        weight = ckpt["model"][f"{name}.weight"]
        assert not torch.equal(weight, torch.ones_like(weight))  # the affine part trains either way


def test_early_stop_counts_evaluations_without_gain(tmp_path):
    # Learning rates 0: nothing changes, so only the first evaluation improves a metric; with early_stop_epoch=2
    # the run stops at the second evaluation after it (the official counter).
    res = train({**TINY, "epochs": 10, "check_epoch": 1, "modellr": 0.0, "centerlr": 0.0, "early_stop_epoch": 2,
                 "freeze_BN": True, "save_path": str(tmp_path)})
    assert [e["epoch"] for e in res["evaluations"]] == [1, 2, 3]
    assert res["stopped_early"] == 3 and res["finished"]


@pytest.mark.parametrize("use_amp,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_amp_on_cpu_computes_in_bfloat16_and_keeps_float32_weights(tmp_path, monkeypatch, use_amp, dtype):
    from memvir.memory import MemVir

    seen = []
    forward = MemVir.forward

    def record(self, emb, labels, epoch):
        seen.append(emb.dtype)
        return forward(self, emb, labels, epoch)

    monkeypatch.setattr(MemVir, "forward", record)
    res = train({**TINY, "epochs": 1, "use_amp": use_amp, "memvir": True, "mem_num_step": 2, "mem_step_gap": 0,
                 "warm_epoch": 0, "save_path": str(tmp_path)})
    assert seen and set(seen) == {dtype}  # autocast reached the embedding head (bf16 on CPU), or did not
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00001.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["criterion"]["loss.proxies"].dtype == torch.float32 and res["finished"]


# ----------------------------------------------------------------------------------------------------------------
# What a run leaves behind


def test_glyph_cli_run_writes_every_output(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = ["--data_name", "glyphs", "--loss", "Norm_SoftMax", "--memvir", "1", "--mem_num_step", "2",
            "--mem_step_gap", "1", "--warm_epoch", "1", "--epochs", "5", "--check_epoch", "2", "--max_to_keep", "2",
            "--save_path", str(run), *TINY_ARGS]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^epoch \d+ step \d+: R@1 ", out, flags=re.M)) == 3  # one line per evaluation

    config = json.loads((run / "config.json").read_text())
    assert config["memvir"] is True and config["mem_num_step"] == 2 and config["loss"] == "Norm_SoftMax"

    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["evaluations"]] == [2, 4, 5]  # every check_epoch, and the last epoch
    assert [e["step"] for e in metrics["evaluations"]] == [2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH,
                                                            5 * STEPS_PER_EPOCH]
    for e in metrics["evaluations"]:
        assert set(e) == {"epoch", "step", "recall@1", "recall@2", "recall@4", "recall@8", "r_precision",
                          "map_at_r", "wall_time"}
    assert metrics["last"] == metrics["evaluations"][-1] and metrics["finished"] is True
    for key in ("recall@1", "r_precision", "map_at_r"):
        best = max(metrics["evaluations"], key=lambda e: e[key])
        assert metrics["best"][key]["value"] == best[key]

    with open(run / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "loss", "lr", "num_taken", "num_classes_in_use",
                             "num_embeddings_in_use"]
    assert [int(r["step"]) for r in rows] == list(range(5 * STEPS_PER_EPOCH))
    # MemVir by hand: memory fills from epoch 2 (warm_epoch 1); with N=2, M=1 a step takes the steps 2 and 4
    # before it, so the classes in use are 10 * (1 + number of those already stored).
    for r in rows:
        stored = max(0, int(r["step"]) - STEPS_PER_EPOCH)
        taken = min(2, stored // 2)
        assert int(r["num_taken"]) == taken and int(r["num_classes_in_use"]) == 10 * (1 + taken)

    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval_epoch/Recall_1", "eval_epoch/Recall_8", "eval_epoch/RP", "eval_epoch/MAP", "train/loss",
            "train/learning_rate", "train/num_classes_in_use"} <= tags
    assert [e.step for e in acc.Scalars("eval_epoch/Recall_1")] == [2, 4, 5]
    assert [e.value for e in acc.Scalars("eval_epoch/RP")] == pytest.approx(
        [e["r_precision"] for e in metrics["evaluations"]], rel=1e-6)

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best_map_at_r.pt", "best_r_precision.pt", "best_recall_1.pt", "epoch_00004.pt",
                     "epoch_00005.pt"]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, `error: ...`, exit status 2, naming what to change


@pytest.mark.parametrize("argv,named", [
    (["--no_such_flag", "1"], "--no_such_flag"),
    (["--loss", "Triplet"], "Norm_SoftMax"),
    (["--data_name", "cars196"], "--data"),
    (["--data_name", "imagenet"], "--data_name"),
    (["--memvir", "1", "--mem_num_step", "3", "--mem_step_gap", "-1"], "--mem_step_gap"),
    (["--data_name", "cars196", "--data", "x", "--memvir", "1"], "--mem_num_step"),  # official default N = -1
    (["--batch_size", "4", "--n_instance", "8"], "--batch_size"),
    (["--memvir", "maybe"], "--memvir"),
    (["--optimizer", "lamb"], "--optimizer"),
    (["--k_list", "1,x"], "--k_list"),
    (["--gpu", "first"], "--gpu"),
    (["--backbone", "vgg16"], "--backbone"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_flags_give_one_line_errors(argv, named, capsys, tmp_path):
    assert main(argv + ["--save_path", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("layout", ["missing", "no_test"])
def test_data_folder_not_in_layout(layout, tmp_path, capsys):
    data = tmp_path / "data"
    if layout == "no_test":
        make_car_folder(data, classes=2, per_class=1)
        for f in (data / "test").rglob("*.jpg"):
            f.unlink()
        for d in (data / "test").iterdir():
            d.rmdir()
        (data / "test").rmdir()
    argv = ["--data_name", "custom", "--data", str(data), "--backbone", "resnet18", "--pretrained", "none",
            "--workers", "0", "--save_path", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data) in err and "train/" in err


def test_out_of_memory_names_what_to_change(tmp_path, monkeypatch, capsys):
    from memvir.models import EmbeddingNet

    def oom(self, x, l2_norm=True):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(EmbeddingNet, "forward", oom)
    assert main(TINY_ARGS + ["--epochs", "1", "--save_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and all(f in err for f in ("--batch_size", "--use_amp",
                                                                            "--input_size"))


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    from memvir.losses import NormSoftmax

    calls = []
    forward = NormSoftmax.forward

    def nan_at_sixth_step(self, emb, labels, proxies=None, **kwargs):
        calls.append(1)
        loss = forward(self, emb, labels, proxies, **kwargs)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(NormSoftmax, "forward", nan_at_sixth_step)
    with pytest.raises(TrainingError, match=r"step 5 \(epoch 2\)"):  # the 6th step is step 5, counted from 0
        train({**TINY, "epochs": 3, "save_path": str(tmp_path)})
    good = torch.load(tmp_path / "checkpoints" / "epoch_00001.pt", weights_only=True)
    assert good["epoch"] == 1 and torch.isfinite(good["criterion"]["proxies"]).all()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*")) == ["epoch_00001.pt"]

    calls.clear()
    assert main(TINY_ARGS + ["--epochs", "3", "--save_path", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "error: training diverged at step 5 (epoch 2): the loss is nan" in err and "--modellr" in err


def test_gpu_flag_without_cuda_warns_and_uses_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.warns(UserWarning, match="no CUDA GPU"):
        res = train({**TINY, "epochs": 1, "gpu": "0", "save_path": str(tmp_path)})
    assert res["finished"]


def test_unknown_config_key(tmp_path):
    with pytest.raises(ValueError, match="unknown keys.*'epoch'"):
        train({"epoch": 3, "save_path": str(tmp_path)})
    with pytest.raises(ValueError, match="expected a TrainConfig"):
        resolve_config(["--epochs", "3"])
    assert resolve_config(TrainConfig(epochs=3)).epochs == 3
    assert resolve_config({"memvir": "0", "freeze_BN": "True"}).memvir is False
    with pytest.raises(ValueError, match="--freeze_BN"):
        resolve_config({"freeze_BN": "sometimes"})


@pytest.mark.parametrize("flags,said", [
    (["--warm_epoch", "5", "--epochs", "1"], "warning: --memvir 1 with --warm_epoch 5 >= --epochs 1: the memory is "
                                              "never used; this run is the loss alone (lower --warm_epoch or raise "
                                              "--epochs)"),
    (["--mem_num_step", "0", "--epochs", "1"], "warning: MemVir num_steps=0 (--mem_num_step 0): no past step is ever "
                                               "taken; this is the wrapped loss alone"),
    (["--mem_step_gap", "9", "--warm_epoch", "1", "--epochs", "2"], "warning: --memvir 1: the first past step is "
     "taken M + 1 = 10 steps after epoch 1, and only 4 steps follow: the memory is never used; this run is the loss "
     "alone"),
])
def test_a_memvir_run_that_never_uses_its_memory_says_so(tmp_path, capsys, flags, said):
    argv = ["--data_name", "glyphs", "--memvir", "1", "--mem_num_step", "2", "--mem_step_gap", "1", *flags,
            "--save_path", str(tmp_path / "run"), *TINY_ARGS]
    assert main(argv) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warned == [said]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["full_memory_steps"] == 0


def test_metrics_count_the_steps_with_a_full_memory(tmp_path, capsys):
    # 4 steps an epoch; the memory fills from epoch 2 (U = 1): 8 steps follow. Step j after the warm-up finds j
    # steps stored and takes those at positions M = 1 and 2M + 1 = 3 that exist: both (N = 2) from j = 4 on.
    argv = ["--data_name", "glyphs", "--memvir", "1", "--mem_num_step", "2", "--mem_step_gap", "1", "--warm_epoch",
            "1", "--epochs", "3", "--save_path", str(tmp_path / "run"), *TINY_ARGS]
    assert main(argv) == 0 and STEPS_PER_EPOCH == 4
    assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["full_memory_steps"] == 4
    without = ["--data_name", "glyphs", "--epochs", "1", "--save_path", str(tmp_path / "plain"), *TINY_ARGS]
    assert main(without) == 0
    assert "full_memory_steps" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
