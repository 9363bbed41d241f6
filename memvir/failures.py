"""How a training run fails: divergence, out of memory, a batch of one image; each said in one line naming the flag
to change, before anything of the failed step is written (the last checkpoint stays whole).

The loop (memvir/train.py) calls these around the steps they guard:

    with out_of_memory(cfg, device): ...                       # the whole run
    with batch_of_one(cfg, n_train): emb = train_net(images)   # the forward pass
    check_embeddings(emb, cfg, step, epoch)                    # before the loss
    with failed_step(cfg, step, epoch): scaler.step(optimizer)
    loss_value = check_step(loss, params, cfg, step, epoch)    # after the step: one device->host read
"""
from __future__ import annotations

import contextlib
import math
import os
import re

import torch


class TrainingError(RuntimeError):
    """A run that cannot go on: divergence, out of memory. The message says what to change."""


@contextlib.contextmanager
def out_of_memory(cfg, device):
    """Turn running out of memory (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError) into a TrainingError
    that names every flag sizing what is held."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainingError(oom_message(cfg, device)) from None
    except RuntimeError as exc:
        if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
            raise TrainingError(oom_message(cfg, device)) from None
        raise


def oom_message(cfg, device):
    """Out of memory: every flag that sizes what is held, with the one that is often forgotten in numbers."""
    proxies = f"-C={cfg.C} proxies x --dim={cfg.dim}" if cfg.C else f"--dim={cfg.dim}"
    size = f" ({cfg.C * cfg.dim * 4 * 4 / 2**30:.1f} GiB with their gradient and Adam's state)" if cfg.C else ""
    memory = (f", MemVir keeping N(M+1)={cfg.mem_num_step * (cfg.mem_step_gap + 1)} steps of proxies and embeddings"
              if cfg.memvir else "")
    return (f"out of memory on {device} with --batch_size={cfg.batch_size}, --input_size={cfg.input_size}, "
            f"--backbone={cfg.backbone}, {proxies}{size}{memory}: lower whichever is too large (--batch_size, "
            f"--input_size, --dim, -C, --mem_num_step), or turn on --use_amp=1")


@contextlib.contextmanager
def batch_of_one(cfg, n_train):
    """A batch of one image cannot train BatchNorm (its variance over one value is 0): torch's "Expected more than
    1 value per channel" becomes a line that says which flag to change."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise TrainingError(f"a training batch holds a single image ({n_train} training images, --batch_size="
                            f"{cfg.batch_size}: the last batch of an epoch keeps what is left), and {cfg.backbone}'s "
                            f"BatchNorm cannot train on one image; choose a --batch_size that leaves more than one, "
                            f"or --freeze_BN 1") from None


def check_embeddings(emb, cfg, step, epoch):
    """Stop with one line when the embeddings are not finite or a row collapsed to zero (a diverged network)."""
    finite = torch.isfinite(emb).all()
    alive = (emb.detach().abs().amax(dim=1) > 0).all()
    if not bool(finite & alive):
        what = "the embeddings are not finite" if not bool(finite) else "an embedding collapsed to zero"
        raise TrainingError(diverged(what, step, epoch, cfg))


@contextlib.contextmanager
def failed_step(cfg, step, epoch):
    """An optimiser step that fails (e.g. a learning rate of 1e38: Adam's step size overflows float32) diverged."""
    try:
        yield
    except RuntimeError as exc:
        raise TrainingError(diverged(f"the optimiser step failed ({one_line(exc)[:80]})", step, epoch,
                                     cfg)) from None


def check_step(loss, params, cfg, step, epoch) -> float:
    """Return the loss as a float; stop with one line when it or a parameter is not finite after the step.

    The loss and the parameters' finiteness in one device->host read (one host sync per step, not two): a
    non-finite loss is still reported as such, and the run stops before anything of this step is written (the
    optimiser may have applied it; the last checkpoint is untouched).
    """
    finite = torch.isfinite(torch.stack(torch._foreach_norm(params))).all()  # () one reduction
    loss_value, params_finite = torch.stack([loss.detach().float(), finite.float()]).tolist()
    if not math.isfinite(loss_value):
        raise TrainingError(diverged(f"the loss is {loss_value}", step, epoch, cfg))
    if not params_finite:
        raise TrainingError(diverged("a parameter is not finite after the step", step, epoch, cfg))
    return loss_value


def diverged(what, step, epoch, cfg):
    """The line a diverged run ends with: where, what, whether a checkpoint is kept, which flags to lower."""
    ckpt_dir = os.path.join(cfg.save_path, "checkpoints")
    kept = (f"The last good checkpoint in {ckpt_dir} is kept" if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
            else "No checkpoint was written yet")
    return (f"training diverged at step {step} (epoch {epoch}): {what}. {kept}; lower --modellr (now "
            f"{cfg.modellr:g}) and/or --centerlr (now {cfg.centerlr:g}), or the loss's --scale (now {cfg.scale:g})"
            + (", or turn off --use_amp" if cfg.use_amp else ""))


def one_line(exc) -> str:
    """An exception's message in one line (a DataLoader worker's: the line it raised, without torch's traceback)."""
    text = str(exc)
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch wraps our line in the worker traceback
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]*(Error|Exception): ", "", last.strip())
    return re.sub(r"\s*\n\s*", " ", text).strip()
