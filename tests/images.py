"""Synthetic photographs for the decode tests (tests/test_data_loading.py, tests/test_gpu.py)."""
import os

import numpy as np
from PIL import Image


def photo(path, size, seed=0, gray=False):
    """A JPEG whose red channel encodes x and green encodes y (so the crop box shows in the output), plus
    texture and noise (so resampling differences show too)."""
    W, H = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 255.0 / W, y * 255.0 / H, 128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)], -1)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(img)
    (im.convert("L") if gray else im).save(path, quality=90)
    return str(path)
