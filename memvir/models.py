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
The three backbones live in memvir/backbones.py, reading and downloading weights in memvir/weights.py.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import BNInception, GlyphCNN, ResNetBackbone
from .weights import BNINCEPTION_URL, DOWNLOAD_TIMEOUT_S, WeightsUnavailable  # noqa: F401 (memvir.models.X, as before)
from .weights import _download_imagenet_weights, _read_state_dict_file, load_backbone_weights

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


def model_input(backbone: str) -> str:
    """Return the input normalisation `backbone` expects: "bgr255", "imagenet" or "glyph".

    Args:
        backbone: one of `BACKBONES`.
    """
    return MODEL_INPUT[_check_backbone(backbone)]


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
