"""What a loss is given, checked: a batch (shapes, dtypes, label range, finite values), a scale or margin (within
LOGIT_LIMIT), and the embeddings cast to the proxies' dtype.

Shared by the proxy losses (memvir.losses), MemVir (memvir.memory) and XBM's pair loss (memvir.xbm). Imports no
memvir module (a ground floor).
"""
import math

import torch

__all__ = ["LOGIT_LIMIT", "check_batch", "check_margin", "in_proxies_dtype"]

# The largest logit scale (and scale x margin, 1 / SoftTriple's gamma) a loss accepts. The papers use 1 to 100;
# at 1e6 a row's loss is at most ~3e6, so logits, their differences and a batch's sum of row losses stay far inside
# float32. Near float32's largest number they do not: SoftTriple(la=1e40) returned NaN without a word.
LOGIT_LIMIT = 1e6


def check_batch(emb, labels, num_classes, dim, values="read"):
    """Return the labels as int64 (what cross-entropy indexes with); raise a ValueError when the batch does not fit.

    The shapes and dtypes are checked on the host. The values (label range, finite embeddings) need the tensors'
    contents: one device->host read for the three numbers (min, max, all finite), a synchronisation on CUDA.

    Args:
        emb: (B, D) float embeddings.
        labels: (B,) labels in [0, num_classes), any integer dtype (int32, uint8, ...); bool and float are refused.
        num_classes: C, the number of classes (label range).
        dim: D, the embedding size the proxies have.
        values: "read" checks the values as above, with the ValueErrors below; "assert" asserts the same on the
            device, reading nothing (torch._assert_async: a RuntimeError on the CPU, on CUDA a device-side assert,
            which ends the process's CUDA context); None checks shapes and dtypes only, for a caller that checks the
            values elsewhere (MemVir leaves them to the wrapped loss when it hands it this very batch).
    Returns:
        (B,) int64 labels (the same tensor when it already is int64).
    """
    if not torch.is_tensor(emb) or emb.dim() != 2:
        raise ValueError(f"embeddings: expected a 2-D tensor (B, D={dim}), got {tuple(getattr(emb, 'shape', ()))}")
    if emb.shape[1] != dim:
        raise ValueError(f"embeddings: expected {dim} columns (the proxies' D), got shape {tuple(emb.shape)}")
    if emb.shape[0] == 0:
        raise ValueError("embeddings: expected at least one row, got an empty batch")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"labels: expected a 1-D tensor of length B={emb.shape[0]}, got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    labels = labels.long()  # before the range check: min/max exist for every dtype in int64
    if values is None:
        return labels
    if values not in ("read", "assert"):
        raise ValueError(f"check_batch values: expected 'read', 'assert' or None, got {values!r}")
    lo, hi = torch.aminmax(labels)  # () each, on the labels' device
    # One number that is finite iff every embedding is: a float64 sum of narrower floats cannot overflow (NaN and
    # inf carry through it); float64 embeddings take the largest magnitude instead. Fewer kernels than isfinite().
    x = emb.detach()
    total = (x.sum(dtype=torch.float64) if x.dtype != torch.float64 else x.abs().amax()).to(labels.device)  # ()
    if values == "assert":  # the device checks; nothing is read
        torch._assert_async((lo >= 0) & (hi < num_classes) & (total - total == 0),  # inf - inf, NaN: not 0
                            f"labels: expected values in [0, {num_classes}) and finite embeddings (asserted)")
        return labels
    lo, hi, total = torch.stack([lo, hi, total]).tolist()  # the one device->host read (float64: labels exact)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels: expected values in [0, {num_classes}), got min {int(lo)}, max {int(hi)}")
    if not math.isfinite(total):
        raise ValueError("embeddings: expected finite values, got NaN or inf")
    return labels


def in_proxies_dtype(emb, proxies):
    """The embeddings in the proxies' dtype (a (B, D) cast, differentiable).

    A network run in float16 or bfloat16 without autocast (`model.half()`), or in float64, emits embeddings of
    another dtype than the float32 proxies; the logits are computed in the proxies' dtype, as pytorch-metric-learning
    does, and the gradient flows back to the embeddings in their own dtype. Under autocast the matrix products are
    autocast as usual.
    """
    return emb if emb.dtype == proxies.dtype else emb.to(proxies.dtype)


def check_margin(margin, name, below=math.inf, scale=1.0):
    """Return the margin as a float; raise a ValueError unless 0 <= margin < below and scale * margin, which the
    loss adds to its logits, stays finite in float32 (beyond LOGIT_LIMIT, inf - inf is a NaN loss)."""
    if isinstance(margin, bool) or not 0 <= float(margin) < below or float(margin) * scale > LOGIT_LIMIT:
        raise ValueError(f"{name} margin: expected a number in [0, {min(below, LOGIT_LIMIT / scale):g}), got "
                         f"{margin!r}")
    return float(margin)
