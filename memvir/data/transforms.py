"""The paper's image transforms (those of the official MemVir code), as picklable top-level objects.

Order, as in the official main.py:
    train: RGB -> BGR, RandomResizedCrop(input_size), RandomHorizontalFlip, ToTensor, x scale, Normalize
    test:  RGB -> BGR, Resize(256), CenterCrop(input_size),                 ToTensor, x scale, Normalize
BN-Inception was trained in Caffe on BGR images in 0..255 with the channel means subtracted, so its input is
x * 255 - (104, 117, 128) with std 1. ResNets get torchvision's ImageNet normalisation (scale 1).

Note: the official code swaps to BGR for the ResNets too, although the ImageNet mean/std it then applies are in
RGB order (and torchvision's ResNets were trained on RGB). We keep that (`bgr=True`) so that our runs reproduce
the paper's; pass `bgr=False` for the textbook ResNet input. The glyph benchmark has its own transforms
(memvir/data/glyphs.py).
"""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # RGB order, on 0..1 inputs
BNINCEPTION_MEAN, BNINCEPTION_STD = (104.0, 117.0, 128.0), (1.0, 1.0, 1.0)  # BGR order, on 0..255 inputs
RESIZE = 256  # the test-time shorter side before the centre crop, whatever input_size is (official code)


class RGBToBGR:
    """Swap the channels of an RGB PIL image to BGR order (returned as a PIL image in mode "RGB")."""

    def __call__(self, image):
        from PIL import Image

        if image.mode != "RGB":
            raise ValueError(f"RGBToBGR expects an RGB image, got mode {image.mode!r}")
        r, g, b = image.split()
        return Image.merge("RGB", (b, g, r))

    def __repr__(self):
        return "RGBToBGR()"


class Scale:
    """Multiply a tensor by a constant (255 turns ToTensor's 0..1 back into BN-Inception's 0..255)."""

    def __init__(self, factor):
        self.factor = float(factor)

    def __call__(self, x):
        return x * self.factor

    def __repr__(self):
        return f"Scale({self.factor:g})"


def normalization(backbone):
    """Return (mean, std, scale) of the input the backbone was pretrained on: x * scale, then (x - mean) / std."""
    name = str(backbone).lower()
    if name == "bninception":
        return BNINCEPTION_MEAN, BNINCEPTION_STD, 255.0
    if name.startswith("resnet"):
        return IMAGENET_MEAN, IMAGENET_STD, 1.0
    raise ValueError(f"backbone {backbone!r} has no image transform here; expected bninception or resnet18/34/50/101 "
                     f"(the glyph CNN uses memvir.data.glyphs)")


def _tail(backbone):
    mean, std, scale = normalization(backbone)
    return [T.ToTensor(), Scale(scale), T.Normalize(mean=mean, std=std)]


def train_transform(backbone="bninception", input_size=224, bgr=True):
    """Build the training transform: random resized crop and horizontal flip; RGB PIL image -> (3, S, S) tensor.

    Args:
        backbone: "bninception" or "resnet*": picks the normalisation.
        input_size: S, the crop side (224 in the paper).
        bgr: swap to BGR first, as the official code does for every backbone.
    """
    head = [RGBToBGR()] if bgr else []
    return T.Compose(head + [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()] + _tail(backbone))


def test_transform(backbone="bninception", input_size=224, bgr=True, resize=RESIZE):
    """Build the evaluation transform: shorter side to `resize`, centre crop; RGB PIL image -> (3, S, S) tensor.

    Args:
        backbone: "bninception" or "resnet*": picks the normalisation.
        input_size: S, the crop side (224 in the paper).
        bgr: swap to BGR first, as the official code does for every backbone.
        resize: shorter side before cropping (256 in the official code).
    """
    head = [RGBToBGR()] if bgr else []
    return T.Compose(head + [T.Resize(resize), T.CenterCrop(input_size)] + _tail(backbone))
