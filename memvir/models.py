"""Embedding networks: backbone -> global pooling -> linear embedding -> L2 norm.

The MemVir paper trains every loss on the same network (MemVir, implementation details): an
ImageNet-pretrained BN-Inception whose 1024-channel feature map is globally pooled, projected to a
`dim`-dimensional embedding by one linear layer, and L2-normalised. The official code builds it from
`net/bninception.py`, `net/pooling.py` and `net/embedding.py`; this module does the same with

- `BNInception`: the BN-Inception (Inception-v2) trunk, with parameter names identical to the weights file
  used throughout the deep-metric-learning literature (Cadene's `bn_inception-52deb4733.pth`), so those
  weights load unchanged;
- `ResNetBackbone`: torchvision's ResNet-18/34/50/101 without its classifier;
- `GlyphCNN`: a small CNN for the 32 px, 1-channel glyph benchmark that trains in minutes on a CPU;
- `GlobalPooling` (GAP, GMP, or their sum) and `Embedding` (linear, then optional L2 norm).

`build_model` assembles them and loads pretrained weights; `freeze_bn` reproduces the official `--freeze_BN`;
`input_size_problem` says, before any training, when an input side does not go through a backbone.
Each backbone expects its own input normalisation; `MODEL_INPUT` says which (see `INPUT_NORMALIZATION`).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import os
import pickle
import socket
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------------
# Which input each backbone expects. The data pipeline reads this to pick its normalisation.

MODEL_INPUT = {
    "bninception": "bgr255",  # BGR channel order, pixel values 0..255, minus a per-channel mean (Caffe convention)
    "resnet18": "imagenet",  # RGB, values 0..1, minus mean, divided by std (torchvision convention)
    "resnet34": "imagenet",
    "resnet50": "imagenet",
    "resnet101": "imagenet",
    "glyphcnn": "glyph",  # the 1-channel float tensor that memvir.data.glyphs.GlyphDataset yields, as is
}
BACKBONES = tuple(MODEL_INPUT)

# The numbers behind the two image conventions: x = (pixels_in_[0,1] * scale - mean) / std, channels in `order`.
INPUT_NORMALIZATION = {
    # BN-Inception was trained in Caffe on BGR images in 0..255; mean is (B, G, R) = (104, 117, 128), no std.
    "bgr255": {"order": "BGR", "scale": 255.0, "mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0)},
    "imagenet": {"order": "RGB", "scale": 1.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}

# Public ImageNet weights. BN-Inception: Cadene's pretrainedmodels port of Xiong et al.'s Caffe model (the file the
# official MemVir code downloads). ResNets: torchvision's IMAGENET1K_V1, the weights `pretrained=True` gave when the
# official code was written.
BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
DOWNLOAD_TIMEOUT_S = 20.0  # seconds without a byte from the server before a download gives up


class WeightsUnavailable(RuntimeError):
    """Public weights that cannot be had here (offline, a failed or damaged download).

    Attributes: url (where they are published), file (its name: what to pass as a local copy), cache (the folder
    torch.hub takes them from), reason (what went wrong, in one line).
    """

    def __init__(self, message, url, cache, reason):
        super().__init__(message)
        self.url, self.file, self.cache, self.reason = url, url.rsplit("/", 1)[-1], cache, reason


def model_input(backbone: str) -> str:
    """Return the input normalisation `backbone` expects: "bgr255", "imagenet" or "glyph".

    Args:
        backbone: one of `BACKBONES`.
    """
    return MODEL_INPUT[_check_backbone(backbone)]


# ----------------------------------------------------------------------------------------------------------------------
# BN-Inception (Ioffe & Szegedy 2015, "Inception-v2"): a stem, then ten inception blocks.
#
# Every convolution is followed by BatchNorm and ReLU. Parameters live flat on the module, named exactly as in the
# published weights file: conv `inception_3a_1x1`, its BatchNorm `inception_3a_1x1_bn`, and so on.

# Inception blocks, in order. Each block concatenates up to four branches along channels:
#   1x1:    1x1 conv                                  (absent when n1x1 == 0)
#   3x3:    1x1 reduce -> 3x3 conv                    (the 3x3 has the block's stride)
#   double: 1x1 reduce -> 3x3 conv -> 3x3 conv        (the second 3x3 has the block's stride)
#   pool:   3x3 avg/max pool -> 1x1 projection        (no projection when proj == 0; stride-2 pools pass through)
# name, in_ch, n1x1, n3x3_reduce, n3x3, ndouble_reduce, ndouble, pool, proj, stride -> out_ch
_INCEPTION_BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),  # -> 256 channels, 28x28 at 224 px input
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),  # -> 320
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),  # -> 576, 14x14
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),  # -> 576
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),  # -> 576
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),  # -> 608
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),  # -> 608
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),  # -> 1056, 7x7
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),  # -> 1024
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),  # -> 1024
)


class BNInception(nn.Module):
    """BN-Inception feature extractor: (B, 3, H, W) -> (B, 1024, H/32, W/32), e.g. 7x7 at 224 px.

    The state_dict has the keys and shapes of `bn_inception-52deb4733.pth` minus its ImageNet classifier
    (`last_linear.*`). Inputs are BGR in 0..255 minus (104, 117, 128) (`INPUT_NORMALIZATION["bgr255"]`).
    The smallest input that runs is 32x32 px. Paper: MemVir, implementation details (backbone); Ioffe & Szegedy 2015.
    """

    feature_dim = 1024
    first_conv = "conv1_7x7_s2"
    classifier_prefixes = ("last_linear.",)  # the weights file's ImageNet head, not part of this module

    def __init__(self, in_channels: int = 3):
        super().__init__()
        # Stem: 224 -> 112 (7x7/2 conv) -> 56 (3x3/2 max pool) -> 56 (1x1, 3x3 convs) -> 28 (3x3/2 max pool).
        self._add_conv_bn("conv1_7x7_s2", in_channels, 64, 7, stride=2)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._add_conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._add_conv_bn("conv2_3x3", 64, 192, 3)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        # Inception blocks. self.blocks[i] = (list of conv chains, pool module name, pool projection name or None).
        self.blocks: list[tuple[list[list[str]], str, str | None]] = []
        for name, cin, n1x1, n3r, n3, ndr, nd, pool, proj, stride in _INCEPTION_BLOCKS:
            p = f"inception_{name}"
            chains = []
            if n1x1:
                self._add_conv_bn(f"{p}_1x1", cin, n1x1, 1)
                chains.append([f"{p}_1x1"])
            self._add_conv_bn(f"{p}_3x3_reduce", cin, n3r, 1)
            self._add_conv_bn(f"{p}_3x3", n3r, n3, 3, stride=stride)
            chains.append([f"{p}_3x3_reduce", f"{p}_3x3"])
            self._add_conv_bn(f"{p}_double_3x3_reduce", cin, ndr, 1)
            self._add_conv_bn(f"{p}_double_3x3_1", ndr, nd, 3)
            self._add_conv_bn(f"{p}_double_3x3_2", nd, nd, 3, stride=stride)
            chains.append([f"{p}_double_3x3_reduce", f"{p}_double_3x3_1", f"{p}_double_3x3_2"])
            # Stride-1 pools keep the size (padding 1); stride-2 pools halve it (no padding, ceil mode).
            padding = 1 if stride == 1 else 0
            if pool == "avg":  # count_include_pad=True (the default) matches the Caffe model
                self.add_module(f"{p}_pool", nn.AvgPool2d(3, stride=stride, padding=padding, ceil_mode=True))
            else:
                self.add_module(f"{p}_pool", nn.MaxPool2d(3, stride=stride, padding=padding, ceil_mode=True))
            if proj:
                self._add_conv_bn(f"{p}_pool_proj", cin, proj, 1)
            self.blocks.append((chains, f"{p}_pool", f"{p}_pool_proj" if proj else None))

    def _add_conv_bn(self, name: str, cin: int, cout: int, k: int, stride: int = 1) -> None:
        # Conv keeps its bias (the published weights have one) although BatchNorm follows.
        self.add_module(name, nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))

    def _conv_bn_relu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, f"{name}_bn")(getattr(self, name)(x))
        return F.relu(x, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the feature map.

        Args:
            x: (B, 3, H, W) images, BGR 0..255 minus mean; H, W >= 32.
        Returns:
            (B, 1024, h, w) features, h = w = 7 at 224 px.
        """
        x = self._conv_bn_relu("conv1_7x7_s2", x)  # (B, 64, H/2, W/2)
        x = self.pool1_3x3_s2(x)  # (B, 64, H/4, W/4)
        x = self._conv_bn_relu("conv2_3x3", self._conv_bn_relu("conv2_3x3_reduce", x))  # (B, 192, H/4, W/4)
        x = self.pool2_3x3_s2(x)  # (B, 192, H/8, W/8)
        for chains, pool, proj in self.blocks:
            outs = []
            for chain in chains:
                y = x
                for name in chain:
                    y = self._conv_bn_relu(name, y)
                outs.append(y)
            y = getattr(self, pool)(x)
            outs.append(self._conv_bn_relu(proj, y) if proj else y)
            x = torch.cat(outs, dim=1)  # (B, out_ch, h, w)
        return x


# ----------------------------------------------------------------------------------------------------------------------
# ResNets from torchvision, without the classifier. Attribute names equal torchvision's, so torchvision weight files
# load into it once their `fc.*` keys are dropped.


class ResNetBackbone(nn.Module):
    """ResNet feature extractor: (B, C, H, W) -> (B, 512 or 2048, H/32, W/32).

    Inputs are RGB in 0..1, ImageNet mean/std normalised (`INPUT_NORMALIZATION["imagenet"]`).
    Official code: `--backbone resnet18..resnet101`. Paper: He et al. 2016.
    """

    first_conv = "conv1"
    classifier_prefixes = ("fc.",)  # torchvision's ImageNet head, not part of this module

    def __init__(self, depth: int, in_channels: int = 3):
        super().__init__()
        import torchvision  # the ResNets only: the glyph CNN and BN-Inception train without it (the `vision` extra)

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.feature_dim = net.fc.in_features  # 512 (ResNet-18/34) or 2048 (ResNet-50/101)
        self.conv1 = net.conv1
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the feature map.

        Args:
            x: (B, C, H, W) normalised images.
        Returns:
            (B, feature_dim, H/32, W/32) features.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (B, 128 or 512, H/8, W/8)
        return self.layer4(self.layer3(x))  # (B, feature_dim, H/32, W/32)


# ----------------------------------------------------------------------------------------------------------------------
# A small CNN for the glyph benchmark: four 3x3 conv-BN-ReLU stages of 16-32-64-128 channels, 2x2 max pool between
# them, so a 32 px glyph becomes a (128, 4, 4) map. About 0.1 M parameters; fast enough to train on one CPU core.


class GlyphCNN(nn.Module):
    """Glyph feature extractor: (B, 1, 32, 32) -> (B, 128, 4, 4).

    Args:
        in_channels: input channels (1 for glyphs).
        widths: channels of the four conv stages.
    """

    classifier_prefixes = ()

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))  # halve the map before widening: keeps every stage equally cheap
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        # Channels-last (NHWC) tensors make CPU max pooling and BatchNorm markedly faster (fwd+bwd at batch 128 on
        # one core: about 0.55 -> 0.4 ms/image). Only the memory layout changes; values and state_dict keys do not.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the feature map.

        Args:
            x: (B, in_channels, H, W) glyphs.
        Returns:
            (B, 128, H/8, W/8) features.
        """
        return self.features(x.contiguous(memory_format=torch.channels_last))


# ----------------------------------------------------------------------------------------------------------------------
# Pooling and embedding heads.

POOLING_TYPES = ("GAP", "GMP")


class GlobalPooling(nn.Module):
    """Pool a feature map over all positions: GAP (mean), GMP (max), or the sum of both ("GAP,GMP").

    The official net/pooling.py sums the chosen poolings too; it pools with a square kernel the size of the map's
    height, which equals global pooling for the square maps it meets. Here pooling is over the whole map, whatever
    its shape. Official code: `--pooling_type GAP | GMP | GAP,GMP`.

    Args:
        pooling_type: "GAP", "GMP" or "GAP,GMP" (case and spaces ignored).
    """

    def __init__(self, pooling_type: str = "GAP"):
        super().__init__()
        self.methods = _parse_pooling(pooling_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool.

        Args:
            x: (B, C, H, W) feature map.
        Returns:
            (B, C) pooled features.
        """
        out = 0
        if "GAP" in self.methods:
            out = out + x.mean(dim=(2, 3))  # (B, C)
        if "GMP" in self.methods:
            out = out + x.amax(dim=(2, 3))  # (B, C)
        return out

    def extra_repr(self) -> str:
        return ",".join(self.methods)


class Embedding(nn.Module):
    """Project pooled features to the embedding: x -> W x + b, then L2-normalise.

    nn.Linear's default initialisation, as the official net/embedding.py.

    Args:
        in_dim: pooled feature size (the backbone's channels).
        dim: embedding size D.
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor, l2_norm: bool = True) -> torch.Tensor:
        """Embed.

        Args:
            x: (B, in_dim) pooled features.
            l2_norm: divide each row by its L2 norm.
        Returns:
            (B, dim) embeddings, unit length when l2_norm.
        """
        x = self.linear(x)  # (B, D)
        return F.normalize(x, p=2, dim=1) if l2_norm else x


class EmbeddingNet(nn.Module):
    """Backbone -> global pooling -> linear embedding -> L2 norm: (B, C, H, W) -> (B, D).

    Attributes:
        backbone, pooling, embedding: the three parts (the trainer may give them different learning rates).
        backbone_name: the name passed to `build_model`.
        input_kind: the input normalisation the backbone expects (`MODEL_INPUT`).
        feature_dim: channels of the backbone's feature map.
    Paper: MemVir, implementation details.
    """

    def __init__(self, backbone: nn.Module, pooling: GlobalPooling, embedding: Embedding, backbone_name: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.embedding = embedding
        self.backbone_name = backbone_name
        self.input_kind = MODEL_INPUT[backbone_name]
        self.feature_dim = backbone.feature_dim

    def forward(self, x: torch.Tensor, l2_norm: bool = True) -> torch.Tensor:
        """Embed a batch of images.

        Args:
            x: (B, C, H, W) images, normalised as `self.input_kind` says.
            l2_norm: L2-normalise the embeddings (the official `--train_with_l2norm`, on by default).
        Returns:
            (B, D) embeddings.
        """
        feats = self.backbone(x)  # (B, feature_dim, h, w)
        pooled = self.pooling(feats)  # (B, feature_dim)
        return self.embedding(pooled, l2_norm=l2_norm)  # (B, D)


# ----------------------------------------------------------------------------------------------------------------------
# Assembly and weights.


def build_model(
    backbone: str,
    dim: int,
    pooling_type: str = "GAP",
    pretrained: str | os.PathLike = "none",
    in_channels: int | None = None,
) -> EmbeddingNet:
    """Build an embedding network and load its backbone weights.

    Args:
        backbone: "bninception", "resnet18", "resnet34", "resnet50", "resnet101" or "glyphcnn".
        dim: embedding size D.
        pooling_type: "GAP", "GMP" or "GAP,GMP".
        pretrained: "imagenet" (download the public ImageNet weights, or take them from the torch.hub cache),
            a path to a backbone state_dict file (a published weights file, classifier keys allowed, or a
            `model.backbone.state_dict()` saved with torch.save), or "none" (random initialisation).
        in_channels: image channels; default 3, or 1 for "glyphcnn". With pretrained weights and in_channels=1,
            the first convolution's filters are summed over RGB (a grey image then gives the response the
            3-channel net gives to that image repeated thrice).
    Returns:
        EmbeddingNet in train mode; its embedding layer is randomly initialised.
    Raises:
        ValueError: bad argument or a weights file that does not fit the backbone.
        FileNotFoundError: `pretrained` is neither "imagenet" nor "none" and no such file exists.
        WeightsUnavailable (a RuntimeError): "imagenet" weights cannot be downloaded (e.g. offline).
    Paper: MemVir, implementation details (ImageNet-pretrained BN-Inception; the README's runs use `--dim=512`).
    """
    backbone = _check_backbone(backbone)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int (the embedding size), got {dim!r}")
    pooling = GlobalPooling(pooling_type)
    if in_channels is None:
        in_channels = 1 if backbone == "glyphcnn" else 3
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    source = _check_pretrained(pretrained, backbone)

    net = _make_backbone(backbone, in_channels)
    if source != "none":
        if source == "imagenet":
            state, where = _download_imagenet_weights(backbone), f"ImageNet weights for {backbone!r}"
        else:
            state, where = _read_state_dict_file(source), f"pretrained file {str(source)!r}"
        first = getattr(net, "first_conv", None)  # BN-Inception and ResNets; GlyphCNN files load as they are
        w = state.get(f"{first}.weight") if first and isinstance(state, Mapping) else None
        if in_channels != 3 and isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[1] == 3:
            # RGB weights for a grey (or other) input: load into the RGB net, then adapt its first conv.
            net = _make_backbone(backbone, 3)
            load_backbone_weights(net, state, where)
            _adapt_first_conv(net, in_channels)
        else:
            load_backbone_weights(net, state, where)
    return EmbeddingNet(net, pooling, Embedding(net.feature_dim, dim), backbone)


def freeze_bn(module: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of `module` in eval mode; return `module`.

    Running means and variances then stay as they are (ImageNet statistics for a pretrained backbone), while the
    BatchNorm scale and shift still get gradients and train, as the official `--freeze_BN` does. `module.train()`
    undoes it: call freeze_bn again after every `train()`. Meant for pretrained backbones; a randomly initialised
    one would be stuck with running statistics (0, 1).

    Args:
        module: any module, e.g. an EmbeddingNet.
    Official code: `--freeze_BN` (used in every run of its README).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


def load_backbone_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], where: str = "state_dict") -> None:
    """Load a state_dict into a backbone strictly, after two harmless normalisations.

    Dropped: the ImageNet classifier keys (`last_linear.*` in the BN-Inception file, `fc.*` in torchvision's).
    Reshaped: BatchNorm tensors stored as (1, C), as in some Caffe-converted BN-Inception files, become (C,).
    Anything else that does not match (missing or unexpected keys, other shapes) raises ValueError.

    Args:
        backbone: a BNInception, ResNetBackbone or GlyphCNN.
        state: the weights, name -> tensor.
        where: where the weights came from, for error messages.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where} is not a state_dict (a mapping from parameter name to tensor); got {type(state)}")
    own = backbone.state_dict()
    fixed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if key.startswith(tuple(backbone.classifier_prefixes)):
            continue
        if key in own and value.dim() == 2 and value.shape[0] == 1 and own[key].shape == value.shape[1:]:
            value = value.reshape(own[key].shape)  # (1, C) -> (C,)
        fixed[key] = value
    if hasattr(state, "_metadata"):  # module versions, e.g. whether BatchNorm had num_batches_tracked yet
        fixed._metadata = state._metadata  # type: ignore[attr-defined]

    missing = [k for k in own if k not in fixed and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in fixed if k not in own]
    wrong = [
        f"{k}: file {tuple(fixed[k].shape)} vs model {tuple(own[k].shape)}"
        for k in fixed
        if k in own and fixed[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        problems = []
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if items:
                more = f", ... ({len(items) - 5} more)" if len(items) > 5 else ""
                problems.append(f"{len(items)} {what} ({', '.join(items[:5])}{more})")
        raise ValueError(
            f"{where} does not fit backbone {type(backbone).__name__}: {'; '.join(problems)}. Pass a state_dict of "
            f"this backbone (or its published ImageNet weights file), or pretrained='none' for random init."
        )
    for k in own:  # files saved before PyTorch 0.4 have no BatchNorm step counter; start it at 0
        if k.endswith("num_batches_tracked") and k not in fixed:
            fixed[k] = torch.zeros_like(own[k])
    backbone.load_state_dict(fixed, strict=True)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers.


def _check_backbone(backbone: str) -> str:
    if not isinstance(backbone, str) or backbone.lower() not in MODEL_INPUT:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {backbone!r}")
    return backbone.lower()


def _parse_pooling(pooling_type: str) -> tuple[str, ...]:
    names = pooling_type.split(",") if isinstance(pooling_type, str) else []
    methods = tuple(dict.fromkeys(n.strip().upper() for n in names))  # unique, in the given order
    if not methods or any(m not in POOLING_TYPES for m in methods):
        raise ValueError(f"pooling_type must be 'GAP', 'GMP' or 'GAP,GMP'; got {pooling_type!r}")
    return methods


def _check_pretrained(pretrained: str | os.PathLike, backbone: str) -> str | os.PathLike:
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be 'imagenet', 'none' or a file path; got {pretrained!r}")
    if isinstance(pretrained, str) and pretrained.lower() in ("imagenet", "none"):
        if pretrained.lower() == "imagenet" and backbone == "glyphcnn":
            raise ValueError("pretrained='imagenet' is not available for backbone 'glyphcnn'; use 'none' or a file")
        return pretrained.lower()
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"pretrained={str(pretrained)!r} is neither 'imagenet', 'none' nor an existing weights file"
        )
    return pretrained


def _make_backbone(backbone: str, in_channels: int) -> nn.Module:
    if backbone == "bninception":
        return BNInception(in_channels)
    if backbone == "glyphcnn":
        return GlyphCNN(in_channels)
    return ResNetBackbone(int(backbone.removeprefix("resnet")), in_channels)


def _read_state_dict_file(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """Read a weights file with torch.load(weights_only=True): zip files (torch >= 1.6) and the legacy format alike.

    Python 2 wrote `str` keys as byte strings (pickle opcode SHORT_BINSTRING); torch.load decodes them as UTF-8, which
    fails on a non-UTF-8 byte. Such a file is read again with encoding="latin1" (every byte is a latin1 character), as
    torch.load's documentation advises for Python 2 files; still weights_only, so nothing but tensors, plain
    containers and torch's own rebuild functions is ever constructed, and no code in the file runs.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a legacy pickle
        kind = "an empty file" if not head else f"it starts with {head!r}" + (
            ": a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "")
        raise ValueError(f"pretrained file {str(path)!r} is not a torch weights file ({kind}); expected a "
                         f"state_dict saved with torch.save (.pt, .pth)")
    try:
        return _torch_load_weights(path, encoding="utf-8")  # torch.load's own default
    except UnicodeDecodeError:  # a Python 2 byte string that is not UTF-8
        return _torch_load_weights(path, encoding="latin1")  # never fails to decode: every byte is a character


def _torch_load_weights(path: str | os.PathLike, encoding: str) -> Mapping[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch warns that pickle_load_args need weights_only=False, but its restricted unpickler does honour
            # `encoding` (it decodes byte strings with it).
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            return torch.load(path, map_location="cpu", weights_only=True, encoding=encoding)
    except UnicodeDecodeError:
        raise
    except pickle.UnpicklingError as e:
        # torch's message is paragraphs of advice around one line that says what was refused; keep that line.
        paragraphs = [p.strip() for p in str(e).split("\n\n") if p.strip()]
        reason = paragraphs[-2] if len(paragraphs) >= 2 else (paragraphs or [type(e).__name__])[-1]
        what = "holds more than tensors" if "GLOBAL" in reason else "is not a torch weights file"
        raise ValueError(
            f"pretrained file {str(path)!r} {what} (torch.load with weights_only=True: {' '.join(reason.split())}); "
            f"expected a state_dict of tensors"
        ) from None
    except Exception as e:  # truncated archives, empty files, text files, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's advice cut
        raise ValueError(
            f"cannot read pretrained file {str(path)!r} as a state_dict with torch.load ({type(e).__name__}: {first}"
            f"; a truncated or damaged file?)"
        ) from None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's downloader calls urlopen without a timeout; a default socket timeout makes it fail fast offline.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_imagenet_weights(backbone: str) -> Mapping[str, torch.Tensor]:
    if backbone == "bninception":
        url = BNINCEPTION_URL
    else:
        import torchvision

        weights = torchvision.models.get_model_weights(backbone)
        url = weights.IMAGENET1K_V1.url
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    said = io.StringIO()  # torch.hub's "Downloading: ..." line: shown once the download worked, else only our error
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stdout(said):
            # Uses the file in torch.hub's cache (~/.cache/torch/hub/checkpoints) when it is there; the hash prefix in
            # the file name is checked after a download.
            state = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        sys.stdout.write(said.getvalue())
        return state
    except UnicodeDecodeError:  # downloaded, but a Python 2 file with non-UTF-8 strings: read it as latin1
        return _read_state_dict_file(os.path.join(cache, url.rsplit("/", 1)[-1]))
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts and refused connections are OSErrors
        reason = " ".join(str(e).split()) or type(e).__name__
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # a hash that does not match, a damaged cache file
        reason = f"the file does not read as the published weights: {' '.join(str(e).split())[:160]}"
    raise WeightsUnavailable(
        f"cannot download the ImageNet weights for backbone {backbone!r} from {url} ({reason}). Either download "
        f"that file on a machine with internet and put it in {cache}, or pass its path as pretrained='/path/to/"
        f"{url.rsplit('/', 1)[-1]}', or pass pretrained='none' to train from random initialisation.",
        url, cache, reason) from None


# ----------------------------------------------------------------------------------------------------------------------
# Which input sides go through a backbone: found on the meta device (shapes only, no arithmetic, no memory).


def input_size_problem(backbone: str, size: int, in_channels: int | None = None) -> dict | None:
    """Say whether a square input of `size` pixels goes through `backbone`, before any training does.

    A backbone's feature map collapses below some side (BN-Inception: 31 px), and BN-Inception's branches only
    line up for some sides (31-38, 63-70, ..., 223-230 px: its pooling rounds up, its convolutions down).

    Returns:
        None when it does; else {"reason": torch's words, "smallest": the smallest side that works, "below",
        "above": the nearest sides that work (below is None when there is none)}.
    """
    backbone = _check_backbone(backbone)
    in_channels = in_channels or (1 if backbone == "glyphcnn" else 3)
    reason = _side_problem(backbone, size, in_channels)
    if reason is None:
        return None
    fits = lambda side: _side_problem(backbone, side, in_channels) is None  # noqa: E731
    smallest = next(side for side in range(1, 4097) if fits(side))
    below = next((side for side in range(size - 1, smallest - 1, -1) if fits(side)), None)
    above = next(side for side in range(max(size + 1, smallest), 8193) if fits(side))
    return {"reason": reason, "smallest": smallest, "below": below, "above": above}


@functools.lru_cache(maxsize=None)
def _side_problem(backbone: str, side: int, in_channels: int) -> str | None:
    with torch.device("meta"):
        net = _meta_backbone(backbone, in_channels)
        try:
            with torch.no_grad():
                net(torch.empty(1, in_channels, side, side))
        except RuntimeError as e:
            return " ".join(str(e).split())
    return None


@functools.lru_cache(maxsize=None)
def _meta_backbone(backbone: str, in_channels: int) -> nn.Module:
    with torch.device("meta"):
        return _make_backbone(backbone, in_channels).eval()


def _adapt_first_conv(backbone: nn.Module, in_channels: int) -> None:
    """Replace the first conv of a 3-channel pretrained backbone by an `in_channels` one (only 1 is supported)."""
    if in_channels != 1:
        raise ValueError(
            f"in_channels={in_channels} cannot reuse 3-channel pretrained weights; use in_channels=1 or 3, "
            f"or pretrained='none'"
        )
    conv: nn.Conv2d = backbone.get_submodule(backbone.first_conv)
    new = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))  # (out, 1, k, k): grey x == RGB (x, x, x)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(backbone, backbone.first_conv, new)
