"""Pretrained weights for a backbone: read a state_dict file safely (weights_only, Python 2 files too), download the
public ImageNet weights, and load them strictly (memvir.models.build_model calls these)."""
from __future__ import annotations

import contextlib
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
