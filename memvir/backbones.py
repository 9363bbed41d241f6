"""The backbone networks: BN-Inception, torchvision's ResNets without their classifier, and the small glyph CNN
(memvir.models puts a pooling and an embedding head on them)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
