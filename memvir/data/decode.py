"""The ways training images are decoded (--decode), by name: memvir/data/transforms.py implements them.

Apart from the transforms so that checking a config (memvir.config) needs no torchvision, which only the image
benchmarks need (the `vision` extra): the glyph benchmark trains without it.
"""

DECODE_PATHS = ("pil", "draft", "gpu")  # --decode: see memvir/data/transforms.py's docstring


def check_decode(decode):
    """Return `decode` if it is one of DECODE_PATHS, else raise a ValueError naming the flag."""
    if decode not in DECODE_PATHS:
        raise ValueError(f"--decode={decode!r}: expected one of {', '.join(DECODE_PATHS)}")
    return decode
