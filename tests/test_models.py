"""Tests for memvir.models: shapes, the BN-Inception weight layout, pooling, freeze_bn, weight loading errors."""

import math
import os
import pickle
import socket
import struct
import types
import urllib.error
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

from memvir import models
from memvir.models import build_model, freeze_bn

# Small inputs keep every test fast on one CPU core; BN-Inception runs from 32 px up.
INPUT = {
    "bninception": (3, 64),
    "resnet18": (3, 64),
    "resnet34": (3, 64),
    "resnet50": (3, 64),
    "resnet101": (3, 64),
    "glyphcnn": (1, 32),
}
# Channels of the last feature map (before pooling), from the architectures' papers / torchvision.
FEATURE_DIM = {"bninception": 1024, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
               "glyphcnn": 128}

# Every convolution of the published BN-Inception (Cadene's pretrainedmodels `bninception`, weights file
# bn_inception-52deb4733.pth), transcribed from its layer definitions: name, in channels, out channels, kernel.
# Each conv `X` has weight and bias, and is followed by BatchNorm `X_bn` (weight, bias, running_mean, running_var).
BNINCEPTION_CONVS = """
conv1_7x7_s2 3 64 7
conv2_3x3_reduce 64 64 1
conv2_3x3 64 192 3
inception_3a_1x1 192 64 1
inception_3a_3x3_reduce 192 64 1
inception_3a_3x3 64 64 3
inception_3a_double_3x3_reduce 192 64 1
inception_3a_double_3x3_1 64 96 3
inception_3a_double_3x3_2 96 96 3
inception_3a_pool_proj 192 32 1
inception_3b_1x1 256 64 1
inception_3b_3x3_reduce 256 64 1
inception_3b_3x3 64 96 3
inception_3b_double_3x3_reduce 256 64 1
inception_3b_double_3x3_1 64 96 3
inception_3b_double_3x3_2 96 96 3
inception_3b_pool_proj 256 64 1
inception_3c_3x3_reduce 320 128 1
inception_3c_3x3 128 160 3
inception_3c_double_3x3_reduce 320 64 1
inception_3c_double_3x3_1 64 96 3
inception_3c_double_3x3_2 96 96 3
inception_4a_1x1 576 224 1
inception_4a_3x3_reduce 576 64 1
inception_4a_3x3 64 96 3
inception_4a_double_3x3_reduce 576 96 1
inception_4a_double_3x3_1 96 128 3
inception_4a_double_3x3_2 128 128 3
inception_4a_pool_proj 576 128 1
inception_4b_1x1 576 192 1
inception_4b_3x3_reduce 576 96 1
inception_4b_3x3 96 128 3
inception_4b_double_3x3_reduce 576 96 1
inception_4b_double_3x3_1 96 128 3
inception_4b_double_3x3_2 128 128 3
inception_4b_pool_proj 576 128 1
inception_4c_1x1 576 160 1
inception_4c_3x3_reduce 576 128 1
inception_4c_3x3 128 160 3
inception_4c_double_3x3_reduce 576 128 1
inception_4c_double_3x3_1 128 160 3
inception_4c_double_3x3_2 160 160 3
inception_4c_pool_proj 576 128 1
inception_4d_1x1 608 96 1
inception_4d_3x3_reduce 608 128 1
inception_4d_3x3 128 192 3
inception_4d_double_3x3_reduce 608 160 1
inception_4d_double_3x3_1 160 192 3
inception_4d_double_3x3_2 192 192 3
inception_4d_pool_proj 608 128 1
inception_4e_3x3_reduce 608 128 1
inception_4e_3x3 128 192 3
inception_4e_double_3x3_reduce 608 192 1
inception_4e_double_3x3_1 192 256 3
inception_4e_double_3x3_2 256 256 3
inception_5a_1x1 1056 352 1
inception_5a_3x3_reduce 1056 192 1
inception_5a_3x3 192 320 3
inception_5a_double_3x3_reduce 1056 160 1
inception_5a_double_3x3_1 160 224 3
inception_5a_double_3x3_2 224 224 3
inception_5a_pool_proj 1056 128 1
inception_5b_1x1 1024 352 1
inception_5b_3x3_reduce 1024 192 1
inception_5b_3x3 192 320 3
inception_5b_double_3x3_reduce 1024 192 1
inception_5b_double_3x3_1 192 224 3
inception_5b_double_3x3_2 224 224 3
inception_5b_pool_proj 1024 128 1
"""
# Published parameter count of the whole ImageNet model (osmr/imgclsmob's table, "From Cadene/pretrained...pytorch"),
# minus its 1024 -> 1000 classifier `last_linear`.
BNINCEPTION_TOTAL_PARAMS = 11_295_240
BNINCEPTION_FEATURE_PARAMS = BNINCEPTION_TOTAL_PARAMS - (1024 * 1000 + 1000)  # = 10,270,240


def reference_bninception_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the weights file's feature part (no num_batches_tracked: the file predates it)."""
    shapes = {}
    for line in BNINCEPTION_CONVS.strip().splitlines():
        name, cin, cout, k = line.split()
        cin, cout, k = int(cin), int(cout), int(k)
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}_bn.{p}"] = (cout,)
    return shapes


def randomise_bn_stats(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-default running stats and affine params, so that loading them is observable."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def published_format(state: dict) -> dict:
    """Rewrite a BNInception state_dict the way the public file stores it: with the ImageNet classifier, no
    num_batches_tracked, BatchNorm tensors as (1, C) (as some Caffe ports store them), plain dict, no metadata."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = v.reshape(1, -1).clone() if "_bn." in k else v.clone()
    out["last_linear.weight"] = torch.randn(1000, 1024)
    out["last_linear.bias"] = torch.randn(1000)
    return out


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------------------------------------
# Shapes and the L2 norm.


@pytest.mark.parametrize("backbone", list(INPUT))
def test_output_shape_and_unit_norm(backbone):
    torch.manual_seed(0)
    channels, size = INPUT[backbone]
    net = build_model(backbone, dim=24)
    x = torch.randn(2, channels, size, size)
    feats = net.backbone(x)
    assert feats.shape[:2] == (2, FEATURE_DIM[backbone])
    assert net.feature_dim == FEATURE_DIM[backbone]
    # Every pooling type on the same backbone (building the big ResNets once keeps the test fast).
    for pooling_type in ("GAP", "GMP", "GAP,GMP"):
        net.pooling = models.GlobalPooling(pooling_type)
        emb = net(x)
        assert emb.shape == (2, 24), pooling_type
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_l2_norm_false_gives_the_unnormalised_embedding():
    torch.manual_seed(0)
    net = build_model("glyphcnn", dim=16).eval()
    x = torch.randn(3, 1, 32, 32)
    raw, unit = net(x, l2_norm=False), net(x)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(raw / raw.norm(dim=1, keepdim=True), unit)
    # The embedding is the linear layer applied to the pooled features (mean over positions for GAP).
    pooled = net.backbone(x).mean(dim=(2, 3))
    torch.testing.assert_close(raw, pooled @ net.embedding.linear.weight.T + net.embedding.linear.bias)


@pytest.mark.parametrize("size,side", [(224, 7), (64, 2), (32, 1)])
def test_bninception_feature_map_size(size, side):
    net = models.BNInception().eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, size, size)).shape == (1, 1024, side, side)


@pytest.mark.parametrize("backbone,channels,sides,refused", [("bninception", 3, range(14, 72), 42),
                                                            ("glyphcnn", 1, range(1, 20), 7),
                                                            ("resnet18", 3, range(1, 6), 0)])
def test_input_size_problem_agrees_with_a_real_forward(backbone, channels, sides, refused):
    # Oracle: the backbone itself, run on the CPU at every side (the check runs it on the meta device).
    net = models.build_model(backbone, dim=4, in_channels=channels).backbone.eval()

    def works(side):
        try:
            with torch.no_grad():
                net(torch.zeros(1, channels, side, side))
        except RuntimeError:
            return False
        return True

    real = {side: works(side) for side in sides}
    said = {side: models.input_size_problem(backbone, side, channels) for side in sides}
    assert {side: problem is None for side, problem in said.items()} == real
    good = [side for side in sides if real[side]]
    for side, problem in said.items():
        if problem is not None and side > good[0]:  # the nearest sides that work, on both sides of it
            assert problem["smallest"] == good[0]
            assert problem["below"] == max(g for g in good if g < side)
            if any(g > side for g in good):
                assert problem["above"] == min(g for g in good if g > side)
    assert len(real) - sum(real.values()) == refused  # BN-Inception: below 31, and 39-62 (its branches differ)


def test_embedding_uses_nn_linear_default_init():
    # nn.Linear's default (as the official net/embedding.py): uniform in +-1/sqrt(fan_in) for weight and bias.
    torch.manual_seed(0)
    net = build_model("glyphcnn", dim=512)
    bound = 1 / math.sqrt(128)
    w, b = net.embedding.linear.weight, net.embedding.linear.bias
    assert w.shape == (512, 128)
    assert w.abs().max() <= bound and b.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound  # spread over the whole interval, not a narrower init
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # std of U(-a, a) is a / sqrt(3)


# ----------------------------------------------------------------------------------------------------------------------
# BN-Inception: the published weight layout.


def test_bninception_state_dict_matches_published_file_layout():
    state = models.BNInception().state_dict()
    ref = reference_bninception_shapes()
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert got == ref
    assert len(ref) == 69 * 6  # 69 convolutions, each with a BatchNorm
    # A few keys spelled out, as they appear in the file.
    assert got["conv1_7x7_s2.weight"] == (64, 3, 7, 7)
    assert got["conv1_7x7_s2_bn.running_var"] == (64,)
    assert got["inception_3c_3x3.weight"] == (160, 128, 3, 3)
    assert got["inception_4e_double_3x3_2.weight"] == (256, 256, 3, 3)
    assert got["inception_5b_1x1.weight"] == (352, 1024, 1, 1)
    assert got["inception_5b_double_3x3_2_bn.weight"] == (224,)
    assert got["inception_5b_pool_proj.weight"] == (128, 1024, 1, 1)
    assert got["inception_5b_pool_proj_bn.running_mean"] == (128,)


def test_bninception_parameter_count_matches_published_model():
    net = models.BNInception()
    n = sum(p.numel() for p in net.parameters())
    assert n == BNINCEPTION_FEATURE_PARAMS == 10_270_240
    ref = reference_bninception_shapes()
    assert n == sum(math.prod(s) for k, s in ref.items() if "running" not in k)


# The pooling layers of the published model: name -> (kind, stride, padding); all 3x3 with ceil_mode=True.
BNINCEPTION_POOLS = {
    "pool1_3x3_s2": ("max", 2, 0), "pool2_3x3_s2": ("max", 2, 0),
    "inception_3a_pool": ("avg", 1, 1), "inception_3b_pool": ("avg", 1, 1), "inception_3c_pool": ("max", 2, 0),
    "inception_4a_pool": ("avg", 1, 1), "inception_4b_pool": ("avg", 1, 1), "inception_4c_pool": ("avg", 1, 1),
    "inception_4d_pool": ("avg", 1, 1), "inception_4e_pool": ("max", 2, 0),
    "inception_5a_pool": ("avg", 1, 1), "inception_5b_pool": ("max", 1, 1),
}


def test_bninception_pooling_layers_match_published_model():
    net = models.BNInception()
    pools = {n: m for n, m in net.named_modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))}
    assert pools.keys() == BNINCEPTION_POOLS.keys()
    for name, (kind, stride, padding) in BNINCEPTION_POOLS.items():
        m = pools[name]
        assert isinstance(m, nn.MaxPool2d if kind == "max" else nn.AvgPool2d), name
        assert (m.kernel_size, m.stride, m.padding, m.ceil_mode) in {(3, stride, padding, True),
                                                                    ((3, 3), (stride, stride), padding, True)}, name
        if kind == "avg":
            assert m.count_include_pad, name


@pytest.mark.parametrize("branch,channels", [
    ("inception_5b_1x1", range(0, 352)), ("inception_5b_3x3", range(352, 672)),
    ("inception_5b_double_3x3_2", range(672, 896)), ("inception_5b_pool_proj", range(896, 1024)),
])
def test_bninception_output_channel_order(branch, channels):
    # The published model concatenates 1x1 | 3x3 | double 3x3 | pool projection. Silencing one branch (a very
    # negative BatchNorm shift, so its ReLU outputs 0) must zero exactly that branch's channel range.
    # Train mode: BatchNorm uses batch statistics, so every other channel has positive values somewhere.
    torch.manual_seed(0)
    net = models.BNInception().train()
    with torch.no_grad():
        getattr(net, f"{branch}_bn").bias.fill_(-1e6)
        out = net(torch.randn(2, 3, 64, 64))  # (2, 1024, 2, 2)
    zero = (out == 0).all(dim=(0, 2, 3))  # (1024,) channels that are zero everywhere
    assert zero.nonzero().flatten().tolist() == list(channels)


def test_bninception_weights_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    src = models.BNInception()
    randomise_bn_stats(src)
    path = tmp_path / "bninception_backbone.pth"
    torch.save(src.state_dict(), path)
    net = build_model("bninception", dim=8, pretrained=str(path))
    assert_same_state(net.backbone, src)


def test_bninception_loads_a_file_in_the_published_format(tmp_path):
    # The public file carries a 1000-class head and (in some ports) BatchNorm tensors shaped (1, C).
    torch.manual_seed(2)
    src = models.BNInception()
    randomise_bn_stats(src, seed=3)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(published_format(src.state_dict()), path)
    net = build_model("bninception", dim=8, pretrained=path)  # a pathlib.Path works too
    assert_same_state(net.backbone, src)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.backbone.eval()(x), src.eval()(x))


def test_state_dict_without_num_batches_tracked_loads(tmp_path):
    # A modern state_dict (with version metadata) from which BatchNorm's step counters were removed.
    src = models.GlyphCNN()
    randomise_bn_stats(src)
    state = src.state_dict()
    for k in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[k]
    path = tmp_path / "glyph.pth"
    torch.save(state, path)
    net = build_model("glyphcnn", dim=8, pretrained=str(path))
    for k, v in state.items():
        assert torch.equal(net.backbone.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------------------------------
# Pooling against hand-computed values.

FMAP = torch.tensor(
    [
        # image 0: channel 0, channel 1 (2 x 3 maps: not square)
        [[[1.0, -2.0, 3.0], [0.0, 5.0, -1.0]], [[-4.0, -3.0, -2.0], [-1.0, -6.0, -5.0]]],
        # image 1
        [[[2.0, 2.0, 2.0], [2.0, 2.0, 8.0]], [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    ]
)  # (B=2, C=2, H=2, W=3)
GAP = torch.tensor([[6 / 6, -21 / 6], [18 / 6, 0.5 / 6]])  # sums of the six entries / 6
GMP = torch.tensor([[5.0, -1.0], [8.0, 0.5]])


@pytest.mark.parametrize(
    "pooling_type,expected",
    [("GAP", GAP), ("GMP", GMP), ("GAP,GMP", GAP + GMP), ("gmp, gap", GAP + GMP)],
)
def test_pooling_against_hand_computed_values(pooling_type, expected):
    torch.testing.assert_close(models.GlobalPooling(pooling_type)(FMAP), expected)
    net = build_model("glyphcnn", dim=8, pooling_type=pooling_type)
    torch.testing.assert_close(net.pooling(FMAP), expected)


@pytest.mark.parametrize("bad", ["", "GeM", "GAP,avg", "GAP;GMP", None, ["GAP"]])
def test_bad_pooling_type(bad):
    with pytest.raises(ValueError, match="pooling_type"):
        build_model("glyphcnn", dim=8, pooling_type=bad)


# ----------------------------------------------------------------------------------------------------------------------
# freeze_bn.


@pytest.mark.parametrize("backbone", ["glyphcnn", "bninception", "resnet18"])
def test_freeze_bn_keeps_running_stats_and_trains_affine(backbone):
    torch.manual_seed(0)
    channels, size = INPUT[backbone]
    net = build_model(backbone, dim=8)
    randomise_bn_stats(net)
    net.train()
    assert freeze_bn(net) is net
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    x = torch.randn(4, channels, size, size) * 3 + 1
    emb = net(x)
    emb[:, 0].sum().backward()
    for m, (mean, var, count) in zip(bns, before):
        assert not m.training
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, count)
        assert m.weight.grad is not None and m.bias.grad is not None
    assert net.training and net.embedding.training  # only BatchNorm is switched
    assert sum(m.weight.grad.abs().sum() for m in bns) > 0
    # Frozen BatchNorm normalises with the running statistics: the same output as the whole net in eval mode.
    with torch.no_grad():
        torch.testing.assert_close(emb.detach(), net.eval()(x))


def test_without_freeze_bn_running_stats_move():
    # The control for the test above: in plain train mode BatchNorm updates its statistics.
    torch.manual_seed(0)
    net = build_model("glyphcnn", dim=8).train()
    mean = net.backbone.features[1].running_mean.clone()
    net(torch.randn(4, 1, 32, 32) + 2)
    assert not torch.equal(net.backbone.features[1].running_mean, mean)


# ----------------------------------------------------------------------------------------------------------------------
# pretrained="imagenet": downloads through torch.hub (mocked here: no network in tests).


@pytest.mark.parametrize(
    "backbone,file_name",
    [("bninception", "bn_inception-52deb4733.pth"), ("resnet18", "resnet18-f37072fd.pth")],  # torchvision's V1 file
)
def test_imagenet_offline_fails_fast_with_a_clear_error(monkeypatch, backbone, file_name):
    seen = {}

    def offline(url, **kwargs):
        seen["url"], seen["timeout"] = url, socket.getdefaulttimeout()
        seen["calls"] = seen.get("calls", 0) + 1
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    old_timeout = socket.getdefaulttimeout()
    with pytest.raises(RuntimeError) as err:
        build_model(backbone, dim=8, pretrained="imagenet")
    assert seen["calls"] == 1  # fails fast: one attempt, no retry loop (time is the benchmarks' business)
    assert seen["url"].endswith("/" + file_name)
    # The download ran under a finite socket timeout, restored afterwards.
    assert seen["timeout"] is not None and 0 < seen["timeout"] <= 60
    assert socket.getdefaulttimeout() == old_timeout
    msg = str(err.value)
    assert "pretrained=" in msg and "'none'" in msg and "name resolution" in msg


def test_imagenet_weights_are_loaded_when_the_download_works(monkeypatch):
    torch.manual_seed(3)
    src = torchvision.models.resnet18(weights=None)  # stands in for torchvision's ImageNet file (with `fc`)
    randomise_bn_stats(src)
    urls = []

    def fake_download(url, **kwargs):
        urls.append(url)
        return src.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    net = build_model("resnet18", dim=8, pretrained="imagenet")
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        src.eval(), net.eval()
        expected = src.layer4(src.layer3(src.layer2(src.layer1(src.maxpool(src.relu(src.bn1(src.conv1(x))))))))
        torch.testing.assert_close(net.backbone(x), expected)


def test_glyphcnn_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="glyphcnn"):
        build_model("glyphcnn", dim=8, pretrained="imagenet")


# ----------------------------------------------------------------------------------------------------------------------
# Bad input.


def test_wrong_backbone_name():
    with pytest.raises(ValueError, match="backbone must be one of bninception, resnet18"):
        build_model("resnet152", dim=8)


@pytest.mark.parametrize("kwargs,match", [
    ({"dim": 0}, "dim"), ({"dim": 8.0}, "dim"), ({"dim": 8, "in_channels": 0}, "in_channels"),
    ({"dim": 8, "pretrained": None}, "pretrained"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("glyphcnn", **kwargs)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("glyphcnn", dim=8, pretrained=str(path))


def _bad_state(kind: str) -> dict:
    state = dict(models.BNInception().state_dict())
    if kind == "missing":
        for k in [k for k in state if k.startswith("inception_5b_")]:
            del state[k]
    elif kind == "shape":
        state["conv1_7x7_s2.weight"] = torch.zeros(64, 1, 7, 7)
    elif kind == "unexpected":
        state["inception_6a_1x1.weight"] = torch.zeros(1)
    return state


@pytest.mark.parametrize("kind,expected", [
    ("missing", ["42 missing keys", "inception_5b_1x1.weight", "more"]),
    ("shape", ["1 shape mismatches", "conv1_7x7_s2.weight: file (64, 1, 7, 7) vs model (64, 3, 7, 7)"]),
    ("unexpected", ["1 unexpected keys", "inception_6a_1x1.weight"]),
])
def test_weights_file_that_does_not_fit(tmp_path, kind, expected):
    path = tmp_path / f"{kind}.pth"
    torch.save(_bad_state(kind), path)
    with pytest.raises(ValueError) as err:
        build_model("bninception", dim=8, pretrained=str(path))
    msg = str(err.value)
    assert str(path) in msg and "pretrained='none'" in msg
    for part in expected:
        assert part in msg


def test_resnet_file_does_not_fit_bninception(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        build_model("bninception", dim=8, pretrained=str(path))


@pytest.mark.parametrize("content", ["text", "list"])
def test_file_that_is_not_a_state_dict(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("not a torch file")
    else:
        torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="weights.pth"):
        build_model("glyphcnn", dim=8, pretrained=str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Old weight files. The published bn_inception-52deb4733.pth predates torch 1.6's zip format and may come from
# Python 2. Files are made here the ways old torch made them:
# - the legacy (pre-zip) format: today's torch.save(..., _use_new_zipfile_serialization=False) still writes it;
# - Python 2's pickler: protocol 2 (its torch.save default), and a Python 2 `str` is bytes, which its pickler writes
#   as SHORT_BINSTRING ('U', one length byte, the raw bytes) or BINSTRING ('T', 4-byte length) -- the rule of Python
#   2.7's pickle.py `save_string`. Py2Pickler below is CPython 3's pure-Python pickler with that one rule put back:
#   each str is written as its latin1 bytes (latin1 maps characters 0-255 one to one onto bytes), so a key holding
#   "\xe9" is the byte string a latin1-encoded Python 2 source would have made. Everything else (ints, dicts,
#   tuples, GLOBAL opcodes for torch's classes) protocol 2 writes the same in both Pythons;
# - torch <= 0.3 tensors: those pickled as torch._utils._rebuild_tensor(storage, offset, size, stride) (its
#   Tensor.__reduce__), before _rebuild_tensor_v2 added requires_grad and hooks.


class Py2Pickler(pickle._Pickler):
    """Pickle str the way Python 2 pickled its byte strings; optionally tensors the way torch 0.3 did."""

    rebuild_v1 = False

    def save_py2_str(self, obj):
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_py2_str

    def reducer_override(self, obj):
        if self.rebuild_v1 and type(obj) is torch.Tensor:
            with warnings.catch_warnings():  # TypedStorage is deprecated; torch 0.3 files hold nothing else
                warnings.simplefilter("ignore", UserWarning)
                storage = obj.storage()
            return torch._utils._rebuild_tensor, (storage, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return NotImplemented


def py2_pickle_module(rebuild_v1: bool = False) -> types.ModuleType:
    """A stand-in for the `pickle` module that torch.save(pickle_module=...) drives."""
    module = types.ModuleType("py2_pickle")
    module.Pickler = type("Pickler", (Py2Pickler,), {"rebuild_v1": rebuild_v1})
    module.dump = lambda obj, f, protocol=2: module.Pickler(f, protocol).dump(obj)
    return module


def save_old(state: dict, path, how: str) -> None:
    if how == "legacy":  # torch 1.0-1.5 under Python 3
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif how == "legacy_protocol2":
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    elif how in ("python2", "python2_torch03"):  # Python 2 (torch 0.4 tensors, or torch 0.3 ones)
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=2,
                   pickle_module=py2_pickle_module(rebuild_v1=how == "python2_torch03"))
    raw = path.read_bytes()
    assert not raw.startswith(b"PK")  # the legacy format, not a zip archive
    if how.startswith("python2"):  # keys are Python 2 byte strings, not unicode
        key = b"conv1_7x7_s2.weight"
        assert b"U" + bytes([len(key)]) + key in raw and b"X" + struct.pack("<I", len(key)) + key not in raw
    if how == "python2_torch03":
        assert b"_rebuild_tensor\n" in raw and b"_rebuild_tensor_v2" not in raw


@pytest.mark.parametrize("how", ["legacy", "legacy_protocol2", "python2", "python2_torch03"])
def test_bninception_loads_an_old_format_file(tmp_path, how):
    torch.manual_seed(6)
    src = models.BNInception()
    randomise_bn_stats(src)
    path = tmp_path / "bn_inception-52deb4733.pth"
    save_old(published_format(src.state_dict()), path, how)
    net = build_model("bninception", dim=8, pretrained=str(path))
    assert_same_state(net.backbone, src)


def test_python2_file_with_latin1_keys_loads_as_latin1(tmp_path):
    # A byte string that is not UTF-8 (0xe9 alone) makes torch.load's default decoding fail; latin1 reads it.
    state = {"features.0.weight": torch.randn(4, 1, 3, 3), "caf\xe9.scale": torch.arange(3.0)}
    path = tmp_path / "py2_latin1.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=2, pickle_module=py2_pickle_module())
    assert b"U\x0acaf\xe9.scale" in path.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        torch.load(path, weights_only=True)  # what the retry is for
    loaded = models._read_state_dict_file(path)
    assert list(loaded) == ["features.0.weight", "café.scale"]
    torch.testing.assert_close(loaded["café.scale"], torch.arange(3.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unexpected keys \(café.scale\)"):  # and the key reaches the fit check
        build_model("glyphcnn", dim=8, pretrained=str(path))


@pytest.mark.parametrize("odd_key", [False, True])
def test_imagenet_bninception_from_the_hub_cache_in_python2_format(tmp_path, monkeypatch, odd_key):
    # pretrained="imagenet" with the file already in torch.hub's cache (no network): the real
    # load_state_dict_from_url reads it. odd_key: a non-UTF-8 byte in a key (here inside the dropped classifier,
    # to keep the file loadable) makes torch.hub's own weights_only load fail; the latin1 retry reads the cache.
    torch.manual_seed(7)
    src = models.BNInception()
    randomise_bn_stats(src)
    state = published_format(src.state_dict())
    if odd_key:
        state["last_linear.\xe9"] = torch.zeros(1)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    save_old(state, cache / models.BNINCEPTION_URL.rsplit("/", 1)[-1], "python2")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    if odd_key:  # what the retry is for (the cached file is found: nothing is downloaded)
        with pytest.raises(UnicodeDecodeError):
            torch.hub.load_state_dict_from_url(models.BNINCEPTION_URL, map_location="cpu", weights_only=True)
    net = build_model("bninception", dim=8, pretrained="imagenet")
    assert_same_state(net.backbone, src)


def plant_marker(path):
    """What a malicious weights file would run on load: here it only creates `path`."""
    with open(path, "w") as f:
        f.write("ran")
    return {}


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return plant_marker, (self.marker,)


class SystemCall:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.mark.parametrize("how", ["zip", "legacy", "python2"])
@pytest.mark.parametrize("payload", ["own_function", "os.system"])
def test_file_holding_code_is_refused_and_never_runs(tmp_path, how, payload):
    marker = tmp_path / "marker"
    state = {"features.0.weight": torch.randn(4, 1, 3, 3),
             "x": Planted(marker) if payload == "own_function" else SystemCall()}
    path = tmp_path / "evil.pth"
    if how == "zip":
        torch.save(state, path)
    elif how == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=2,
                   pickle_module=py2_pickle_module())
    with pytest.raises(ValueError) as info:
        build_model("glyphcnn", dim=8, pretrained=str(path))
    msg = str(info.value)
    assert "\n" not in msg and "evil.pth" in msg and "holds more than tensors" in msg
    assert ("plant_marker" if payload == "own_function" else "system") in msg
    assert not marker.exists()
    if payload == "own_function":  # the oracle: an ordinary unpickler does run it
        torch.load(path, weights_only=False)
        assert marker.read_text() == "ran"


# ----------------------------------------------------------------------------------------------------------------------
# Grey input with 3-channel pretrained weights; input conventions.


def test_in_channels_1_sums_pretrained_first_conv(tmp_path):
    torch.manual_seed(4)
    src = models.ResNetBackbone(18)
    randomise_bn_stats(src)
    path = tmp_path / "resnet18_backbone.pth"
    torch.save(src.state_dict(), path)
    grey = build_model("resnet18", dim=8, pretrained=str(path), in_channels=1).backbone.eval()
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # a grey image gives what the RGB net gives to that image repeated on R, G and B
        torch.testing.assert_close(grey(x), src.eval()(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="in_channels=2"):
        build_model("resnet18", dim=8, pretrained=str(path), in_channels=2)


def test_grey_backbone_round_trip(tmp_path):
    # Weights saved from a 1-channel backbone load back into a 1-channel one as they are.
    torch.manual_seed(5)
    src = build_model("bninception", dim=8, in_channels=1).backbone
    randomise_bn_stats(src)
    path = tmp_path / "grey.pth"
    torch.save(src.state_dict(), path)
    assert_same_state(build_model("bninception", dim=8, pretrained=str(path), in_channels=1).backbone, src)
    with pytest.raises(ValueError, match=r"conv1_7x7_s2.weight: file \(64, 1, 7, 7\) vs model \(64, 3, 7, 7\)"):
        build_model("bninception", dim=8, pretrained=str(path))  # but not into an RGB one


@pytest.mark.parametrize("backbone,channels", [("resnet18", 1), ("bninception", 1), ("glyphcnn", 3)])
def test_random_init_with_other_in_channels(backbone, channels):
    net = build_model(backbone, dim=8, in_channels=channels)
    assert net(torch.randn(2, channels, 64, 64)).shape == (2, 8)


def test_model_input_conventions():
    assert {b: models.model_input(b) for b in models.BACKBONES} == {
        "bninception": "bgr255", "resnet18": "imagenet", "resnet34": "imagenet", "resnet50": "imagenet",
        "resnet101": "imagenet", "glyphcnn": "glyph",
    }
    # The values the official main.py uses (BGR means in 0..255 for BN-Inception; torchvision's for ResNets).
    assert models.INPUT_NORMALIZATION["bgr255"] == {
        "order": "BGR", "scale": 255.0, "mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0)}
    assert models.INPUT_NORMALIZATION["imagenet"]["mean"] == (0.485, 0.456, 0.406)
    assert models.INPUT_NORMALIZATION["imagenet"]["std"] == (0.229, 0.224, 0.225)
    assert build_model("glyphcnn", dim=8).input_kind == "glyph"
    with pytest.raises(ValueError, match="backbone"):
        models.model_input("vgg16")


@pytest.mark.parametrize("content,said", [
    (b"my notes\n", "is not a torch weights file (it starts with b'my notes\\n': a text file)"),
    (b"", "is not a torch weights file (an empty file)"),
    (b"\x01\x02binary", "is not a torch weights file (it starts with b'\\x01\\x02binary')"),
    (b"PK\x03\x04 cut", "as a state_dict with torch.load (RuntimeError: PytorchStreamReader failed reading zip "
                        "archive: not a ZIP archive; a truncated or damaged file?)")])
def test_a_pretrained_file_that_is_not_weights_says_what_it_is(tmp_path, content, said):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        build_model("glyphcnn", dim=8, pretrained=str(path))
    assert said in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
