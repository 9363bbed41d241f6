"""Tests of the pretrained glyph backbone (memvir/pretrain.py, --pretrained glyphs).

A small pool (Latin and Greek blocks, computed once in a temporary cache) and a tiny recipe keep the module at
seconds. Oracles: the benchmark's own characters rendered by render_glyphs (disjointness is a set intersection
written here), a second pretraining in another cache (determinism), the file's tensors against the run's network.
"""
import dataclasses

import pytest
import torch

from memvir import pretrain
from memvir.resolve import resolve_config
from memvir.data import glyphs as G

RANGES = ((0x0020, 0x017F), (0x0370, 0x03FF))  # Latin, Latin-1, Latin Extended-A, Greek
TINY = {"instances_per_class": 3, "epochs": 2, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(G, "CODE_POINT_RANGES", RANGES)
        directory = tmp_path_factory.mktemp("glyph_cache")
        G.glyph_pool(1, cache_dir=directory)
        yield directory


@pytest.fixture(autouse=True)
def tiny_recipe(monkeypatch):
    monkeypatch.setattr(pretrain, "RECIPE", TINY)


def config(cache, num_classes=None, **kw):
    pool = len(G.render_glyphs(16, 8, 1, None, 0, cache).chars)
    return resolve_config({"data_name": "glyphs", "input_size": 16, "min_fonts": 8, "instances_per_class": 4,
                           "num_classes": num_classes or pool - 6, "pretrained": "glyphs", **kw}), pool


def test_pretraining_classes_are_the_pool_minus_the_benchmark(cache):
    cfg, pool = config(cache)
    images, labels, chars = pretrain.pretraining_classes(cfg, cache)
    bench = G.render_glyphs(16, 8, 4, cfg.num_classes, cfg.glyph_seed, cache).chars  # train, val and test classes
    whole = G.render_glyphs(16, 8, 1, None, cfg.glyph_seed, cache).chars
    assert len(chars) == pool - cfg.num_classes == 6
    assert not set(chars) & set(bench)
    assert set(chars) | set(bench) == set(whole)
    assert images.shape == (6 * TINY["instances_per_class"], 16, 16)
    assert sorted(set(labels.tolist())) == list(range(6))


def test_built_once_deterministic_and_loaded_by_a_run(cache, tmp_path, monkeypatch):
    from memvir.experiment import build

    cfg, _ = config(cache)
    monkeypatch.setenv("MEMVIR_CACHE", str(cache))
    path = pretrain.pretrain_backbone(cfg, log=lambda line: None)
    again = pretrain.pretrain_backbone(cfg, cache_dir=tmp_path, log=lambda line: None)  # elsewhere, from nothing
    a, b = torch.load(path, weights_only=True), torch.load(again, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def refuse(*args):
        raise AssertionError("trained again although the file is there")

    monkeypatch.setattr(pretrain, "_train", refuse)
    assert pretrain.pretrain_backbone(cfg, log=lambda line: None) == path
    net = build(cfg).net  # the run's network starts from the file (its embedding layer is new)
    got = net.backbone.state_dict()
    assert all(torch.equal(got[k], a[k]) for k in a)
    fresh = build(dataclasses.replace(cfg, pretrained="none")).net.backbone.state_dict()
    assert any(not torch.equal(fresh[k], a[k]) for k in a if k.endswith("weight"))  # it is not the random init


def test_a_change_of_recipe_is_another_file(cache, monkeypatch):
    cfg, _ = config(cache)
    _, _, chars = pretrain.pretraining_classes(cfg, cache)
    first = pretrain.backbone_file(cfg, chars, cache)
    monkeypatch.setattr(pretrain, "RECIPE", {**TINY, "epochs": 3})
    assert pretrain.backbone_file(cfg, chars, cache) != first


def test_refused_in_one_line(cache):
    cfg, pool = config(cache, num_classes=None)
    whole, _ = config(cache, num_classes=pool)
    with pytest.raises(ValueError, match=r"--pretrained glyphs: the benchmark takes \d+ of the \d+ .*--num_classes"):
        pretrain.pretrain_backbone(whole, cache_dir=cache)
    with pytest.raises(ValueError, match="--pretrained glyphs: expected --data_name glyphs and --backbone glyphcnn"):
        pretrain.pretrain_backbone(dataclasses.replace(cfg, backbone="resnet18"), cache_dir=cache)
