"""memvir.config: the one flag list. The parser, the training notebook's parameters cell and a run's config.json
are checked against TrainConfig's fields, read here from the dataclass itself, so a flag added in one place only
fails a test; the official README lines are checked in tests/test_train.py."""
import dataclasses
import json
from pathlib import Path

import pytest

from memvir import config as C
from memvir import resolve as R
from runfolders import parameters_cell
from memvir.train import train

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(C.TrainConfig)}
NOTEBOOK_ONLY = {"resume"}  # the training notebook's own switch (start afresh or resume), not a train flag


def test_parser_has_one_argument_per_field_with_its_default():
    from memvir.registry import flag_help

    actions = {a.dest: a for a in R.build_parser()._actions if a.dest != "help"}
    assert set(actions) == set(FIELDS)
    for name, action in actions.items():
        f = FIELDS[name]
        if name == "progress":  # --no_progress: the official spelling is the negative one
            assert action.option_strings == ["--no_progress"] and action.default is True
            continue
        assert action.default == f.default, name
        assert f"--{name}" in action.option_strings or f.metadata["names"], name
        assert action.help and f.metadata["help"].format_map(flag_help()) in action.help, name


def test_training_notebook_cell_sets_exactly_the_flags():
    cell = parameters_cell(ROOT / "notebooks" / "05_training.py")
    assert set(cell) - NOTEBOOK_ONLY == set(FIELDS), (
        f"not flags: {sorted(set(cell) - NOTEBOOK_ONLY - set(FIELDS))}; "
        f"flags the cell cannot set: {sorted(set(FIELDS) - set(cell))}")
    params = {k: v for k, v in cell.items() if k not in NOTEBOOK_ONLY}
    cfg = R.config_from_parameters(**params)  # the cell's defaults are a valid config
    assert cfg.data_name == "glyphs"


def test_config_from_parameters_refuses_unknown_and_missing():
    cell = {name: ("" if f.default is None else f.default) for name, f in FIELDS.items()}
    with pytest.raises(ValueError, match=r"not training flags: \['colour'\]"):
        R.config_from_parameters(**cell, colour="red")
    del cell["epochs"]
    with pytest.raises(ValueError, match=r"missing flags: \['epochs'\]"):
        R.config_from_parameters(**cell)


def test_config_json_holds_every_flag_and_rebuilds_the_config(tmp_path):
    train(dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
               epochs=1, progress=False, save_path=str(tmp_path)))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved.pop("kernels")) == {"mode", "cpu_capability", "machine", "why_native", "caps"}  # not a flag
    assert set(saved) == set(FIELDS)
    again = R.config_from_parameters(**{k: ("" if v is None else v) for k, v in saved.items()})
    assert dataclasses.asdict(again) == saved


@pytest.mark.parametrize("argv,match", [(["--epochs", "x"], "--epochs"), (["--nope", "1"], "unrecognized"),
                                        (["--memvir", "maybe"], "true/false"), (["-C", "0"], "-C")])
def test_bad_flags_are_one_line(argv, match):
    with pytest.raises(ValueError, match=match) as err:
        R.config_from_argv(argv)
    assert "\n" not in str(err.value)


def test_profile_defaults_come_from_the_fields():
    glyphs, cars = R.resolve_config({}), R.resolve_config({"data_name": "cars196", "data": "x"})
    for name, f in FIELDS.items():
        prof = f.metadata["profile"]
        if prof["glyphs"] is not None:
            assert getattr(glyphs, name) == prof["glyphs"], name
        if prof["official"] is not None:
            assert getattr(cars, name) == prof["official"], name


@pytest.mark.parametrize("spelling,name", [("ArcFace", "ArcFace"), ("arcface", "ArcFace"), ("cos_face", "CosFace"),
                                           ("Proxy_Anchor", "Proxy_Anchor"), ("ProxyAnchor", "Proxy_Anchor"),
                                           ("Soft_Triple", "Soft_Triple"), ("softtriple", "Soft_Triple"),
                                           ("SoftMax_vanilla", "SoftMax_vanilla"), ("Softmax", "SoftMax_vanilla"),
                                           ("NormSoftmax", "Norm_SoftMax"), ("proxy-nca", "Proxy_NCA")])
def test_loss_spellings(spelling, name):
    assert R.resolve_config({"loss": spelling}).loss == name


def test_loss_hyper_parameters_default_to_the_loss_and_are_refused_where_absent():
    # Written out from the papers' (and PML's) defaults, not read from memvir.losses.
    expected = {"CosFace": (64.0, 0.35, None, None), "ArcFace": (64.0, 0.5, None, None),
                "Proxy_Anchor": (32.0, 0.1, None, None), "Soft_Triple": (20.0, 0.01, 10, 0.1),
                "Norm_SoftMax": (23.0, None, None, None), "SoftMax_vanilla": (1.0, None, None, None)}
    for loss, values in expected.items():
        cfg = R.resolve_config({"loss": loss})
        assert (cfg.scale, cfg.margin, cfg.centers_per_class, cfg.gamma) == values, loss
    assert R.config_from_argv(["--loss", "Proxy_Anchor", "--alpha", "16", "--margin", "0.2"]).scale == 16.0
    with pytest.raises(ValueError, match="Norm_SoftMax has no margin; the losses with one: ArcFace, CosFace"):
        R.resolve_config({"loss": "Norm_SoftMax", "margin": 0.2})
    with pytest.raises(ValueError, match="--pml with --train_with_l2norm=False"):
        R.resolve_config({"pml": True, "train_with_l2norm": False})
    # The official code's scale (1.0) is for its own two losses; a new loss keeps its own on an image benchmark.
    assert R.resolve_config({"data_name": "cars196", "data": "x", "loss": "CosFace"}).scale == 64.0
