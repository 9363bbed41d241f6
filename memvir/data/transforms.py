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

Three ways to decode a training image (`--decode`), one augmentation: RandomResizedCrop's box and the flip are drawn
by the same calls on torch's generator in every path, so at one seed all three crop the same box of the same image.
    pil:   the official pipeline above: full PIL decode, crop, bilinear (antialiased) resize.
    draft: PIL's JPEG draft(): libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when the crop would be
           shrunk at least that much anyway (the largest factor that leaves the crop >= input_size px a side);
           the crop box is mapped to the reduced image. Only the resampling differs from `pil`.
    gpu:   the DataLoader workers read the file's bytes and draw the box and flip; the batch is decoded with
           torchvision.io.decode_jpeg on the training device (nvJPEG on CUDA) and cropped, resized, flipped and
           normalised there with tensor ops (`EncodedBatch.to(device)`, which train.py's `images.to(device)` calls).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch.utils.data._utils.collate import default_collate_fn_map
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from .decode import DECODE_PATHS, check_decode  # the names of --decode (no torchvision: config reads them)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # RGB order, on 0..1 inputs
BNINCEPTION_MEAN, BNINCEPTION_STD = (104.0, 117.0, 128.0), (1.0, 1.0, 1.0)  # BGR order, on 0..255 inputs
RESIZE = 256  # the test-time shorter side before the centre crop, whatever input_size is (official code)
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's defaults, which the paper uses
DRAFT_FACTORS = (8, 4, 2)  # the scales libjpeg decodes at besides 1 (PIL's JpegImageFile.draft)


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


def train_transform(backbone="bninception", input_size=224, bgr=True, decode="pil"):
    """Build the training transform: random resized crop and horizontal flip, -> (3, S, S) tensor.

    Args:
        backbone: "bninception" or "resnet*": picks the normalisation.
        input_size: S, the crop side (224 in the paper).
        bgr: swap to BGR first, as the official code does for every backbone.
        decode: "pil" (a transform of an RGB PIL image, the official one), "draft" or "gpu" (transforms that read
            the file themselves, `reads_files = True`; "gpu" yields an EncodedImage that the batch decodes on
            its device). See the module docstring.
    """
    decode = check_decode(decode)
    if decode == "draft":
        return DraftTrainTransform(backbone, input_size, bgr)
    if decode == "gpu":
        return EncodedTrainTransform(backbone, input_size, bgr)
    head = [RGBToBGR()] if bgr else []
    return T.Compose(head + [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()] + _tail(backbone))


# ----------------------------------------------------------------------------------------------------------------
# The random parameters, drawn exactly as the official transform draws them


def crop_params(width, height):
    """Draw RandomResizedCrop's box (top, left, h, w) for a width x height image, then the flip (bool).

    The same calls on torch's generator, in the same order, as T.RandomResizedCrop then T.RandomHorizontalFlip
    make on a PIL image of that size; only the image's size is needed, so no path decodes before drawing.
    """
    shape_only = torch.empty(()).expand(1, height, width)  # get_params reads the size only; no memory
    top, left, h, w = T.RandomResizedCrop.get_params(shape_only, list(CROP_SCALE), list(CROP_RATIO))
    flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip(p=0.5)'s draw
    return (top, left, h, w), flip


def draft_factor(h, w, input_size):
    """The largest DCT scale-down (8, 4, 2, else 1) that leaves an h x w crop >= input_size px on both sides."""
    for s in DRAFT_FACTORS:
        if min(h, w) >= s * input_size:
            return s
    return 1


def _open_image(path):
    from .folder import open_image  # the one place that turns a damaged file into an error naming it

    return open_image(path)


def _to_rgb(image, path):
    from .folder import to_rgb  # the one place that makes every image mode 8-bit RGB (16-bit scaled)

    return to_rgb(image, path)


class DraftTrainTransform:
    """decode="draft": the official train transform with the JPEG decoded at 1/s scale when the crop allows it.

    Reads the file itself (`reads_files`): the decoder must be told the scale before it decodes.
    """

    reads_files = True

    def __init__(self, backbone="bninception", input_size=224, bgr=True):
        self.input_size, self.bgr, self.tail = int(input_size), bool(bgr), T.Compose(_tail(backbone))

    def from_file(self, path):
        from PIL import Image

        S = self.input_size
        with _open_image(path) as image:
            W, H = image.size
            (top, left, h, w), flip = crop_params(W, H)
            s = draft_factor(h, w, S)
            if s > 1:
                # draft() picks the largest scale with W // scale >= requested: asking W // s gives exactly s.
                got = image.draft("RGB", (W // s, H // s))
                s = W / got[1][2] if got else 1  # got[1] = (0, 0, W / scale, H / scale); None: not a JPEG
            image = _to_rgb(image, path)  # decodes (at 1/s scale after a draft); 16-bit scaled, as load_rgb
        if s == 1:  # exactly the official crop, then resize
            image = image.crop((left, top, left + w, top + h)).resize((S, S), Image.BILINEAR)
        else:  # the same box on the reduced image: original pixel x covers [x / s, (x + 1) / s) there
            image = image.resize((S, S), Image.BILINEAR, box=(left / s, top / s, (left + w) / s, (top + h) / s))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if self.bgr:
            image = RGBToBGR()(image)
        return self.tail(image)  # (3, S, S)

    def __repr__(self):
        return f"DraftTrainTransform(input_size={self.input_size}, bgr={self.bgr}, {self.tail!r})"


# ----------------------------------------------------------------------------------------------------------------
# decode="gpu": bytes in the workers, pixels on the device


class EncodedImage:
    """One training image as a worker ships it: the file's bytes (or, for a non-JPEG file, its decoded pixels),
    the crop box and flip already drawn, and the output spec. The DataLoader collates these into an EncodedBatch."""

    __slots__ = ("path", "data", "pixels", "box", "flip", "spec")

    def __init__(self, path, data, pixels, box, flip, spec):
        self.path, self.data, self.pixels, self.box, self.flip, self.spec = path, data, pixels, box, flip, spec


class EncodedTrainTransform:
    """decode="gpu": read the bytes and draw the augmentation; EncodedBatch.to(device) does the pixel work."""

    reads_files = True

    def __init__(self, backbone="bninception", input_size=224, bgr=True):
        mean, std, scale = normalization(backbone)
        self.spec = (int(input_size), bool(bgr), tuple(mean), tuple(std), float(scale))

    def from_file(self, path):
        with _open_image(path) as image:  # reads the header only (and names the file if that fails)
            W, H = image.size
            jpeg = image.format == "JPEG" and image.mode in ("RGB", "L")  # CMYK and PNG: decoded here by PIL
            pixels = None if jpeg else TF.pil_to_tensor(_to_rgb(image, path))  # (3, H, W) uint8
        box, flip = crop_params(W, H)
        data = None
        if jpeg:
            with open(path, "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)  # (n,) the file's bytes
        return EncodedImage(str(path), data, pixels, box, flip, self.spec)

    def __repr__(self):
        S, bgr, mean, std, scale = self.spec
        return f"EncodedTrainTransform(input_size={S}, bgr={bgr}, mean={mean}, std={std}, scale={scale:g})"


class EncodedBatch:
    """A collated batch of EncodedImage; `.to(device)` decodes, crops, flips and normalises it there.

    `.to` returns the (B, 3, S, S) float tensor the PIL pipeline would have stacked, so a training loop that moves
    its batch with `images.to(device)` needs no change. Labels are collated beside it as usual.
    """

    def __init__(self, items):
        self.items = list(items)
        specs = {it.spec for it in self.items}
        if len(specs) != 1:
            raise ValueError(f"an EncodedBatch needs one output spec, got {len(specs)}")
        self.spec = specs.pop()

    def __len__(self):
        return len(self.items)

    def pin_memory(self):
        return self  # the bytes stay in pageable memory: decode_jpeg takes them from the host

    def to(self, device, non_blocking=False):
        from torchvision.io import ImageReadMode, decode_jpeg

        device = torch.device(device)
        S, bgr, mean, std, scale = self.spec
        jpegs = [k for k, it in enumerate(self.items) if it.data is not None]
        pixels = [it.pixels for it in self.items]
        if jpegs:
            try:
                with _no_torchcodec_notice():
                    decoded = decode_jpeg([self.items[k].data for k in jpegs], mode=ImageReadMode.RGB,
                                          device=device)
            except RuntimeError:  # name the file: decode them one by one
                decoded = [self._decode_one(self.items[k], device) for k in jpegs]
            for k, image in zip(jpegs, decoded):
                pixels[k] = image
        out = torch.empty(len(self.items), 3, S, S, dtype=torch.uint8, device=device)  # (B, 3, S, S)
        for k, (it, image) in enumerate(zip(self.items, pixels)):
            image = image.to(device, non_blocking=non_blocking)  # (3, H, W) uint8, RGB
            top, left, h, w = it.box
            crop = TF.resized_crop(image, top, left, h, w, [S, S], antialias=True)  # bilinear, as PIL's
            out[k] = crop.flip(-1) if it.flip else crop
        x = out.float()  # (B, 3, S, S), 0..255
        if bgr:
            x = x.flip(1)  # RGB -> BGR
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        sd = torch.tensor(std, device=device).view(1, 3, 1, 1)
        return (x.div(255.0).mul(scale) - m) / sd  # ToTensor, Scale, Normalize of the PIL path, in its order

    @staticmethod
    def _decode_one(item, device):
        from torchvision.io import ImageReadMode, decode_jpeg

        from .folder import ImageLoadError

        try:
            with _no_torchcodec_notice():
                try:
                    return decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    if device.type == "cpu":
                        raise
                    # A JPEG nvJPEG declines (some progressive or unusual files): libjpeg on the host, then move.
                    return decode_jpeg(item.data, mode=ImageReadMode.RGB).to(device)
        except RuntimeError as exc:
            raise ImageLoadError(f"cannot read image {item.path}: decode_jpeg on {device}: {exc} (expected a "
                                 f"readable JPEG; `python -m memvir prepare` verifies each one)") from None


@contextlib.contextmanager
def _no_torchcodec_notice():
    # torchvision 0.29 announces that its decoders move to TorchCodec (a DeprecationWarning on every call); they
    # still work, and TorchCodec is not a dependency here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        yield


def _collate_encoded(batch, *, collate_fn_map=None):
    return EncodedBatch(batch)


# torch's documented extension point: default_collate (the DataLoader's) looks a sample's type up in this map.
default_collate_fn_map[EncodedImage] = _collate_encoded


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
