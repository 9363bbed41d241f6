"""Several GPUs (or CPU processes) through PyTorch's DistributedDataParallel: `torchrun --nproc_per_node=K -m memvir
train ...` runs the loop of memvir/train.py once per process.

How the pieces fit (K processes, global batch B, each rank holding b = B/K images of it):
  * the BatchSampler gives rank r its contiguous slice of every global batch, so concatenating the ranks' slices in
    rank order gives back exactly the batch a one-process run sees;
  * the network is wrapped in DDP: each rank embeds its slice, (b, D);
  * `gather_batch` all-gathers the embeddings and labels, (B, D) and (B,), on every rank, so the loss and MemVir see
    the global batch: every rank computes the same loss and pushes the same step into an identical memory;
  * gradients. The gather's backward sums, over the ranks, the gradients that flow back to the local slice: each
    rank computed the same loss L, so rank r's slice receives K * dL/dE_r. DDP then averages the network's
    gradients over the K ranks: (1/K) sum_r K * J_r^T dL/dE_r = dL/dtheta, the one-process gradient.
    The loss (its proxies) is *not* wrapped in DDP: every rank computes the exact dL/dP from the same global batch,
    so the proxies and their optimiser state stay identical without communication (no double counting).
BatchNorm statistics are per rank unless frozen (--freeze_BN, as the paper trains) or synchronised: on CUDA the
trainer converts BatchNorm to SyncBatchNorm; on CPU (gloo) PyTorch has no SyncBatchNorm, and a warning says so.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "from_env", "pick_device", "determinism", "init", "wrap", "gather_batch", "broadcast_object",
           "barrier", "shutdown"]

TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 evaluates alone while the others wait at a barrier


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(environ=None) -> DistInfo:
    """Read RANK, WORLD_SIZE and LOCAL_RANK, as torchrun sets them; none set means one process."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return DistInfo()
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name, "0" if name != "WORLD_SIZE" else "1")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r}: expected an integer (torchrun sets it)") from None
    info = DistInfo(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank}, WORLD_SIZE={info.world_size}: expected 0 <= RANK < WORLD_SIZE")
    return info


def pick_device(gpu, info: DistInfo) -> torch.device:
    """The device to train on: torchrun's LOCAL_RANK GPU; else --gpu's GPU; else the first GPU; else the CPU.

    --gpu on a machine without CUDA warns and uses the CPU, so the official README's lines run anywhere.
    """
    cuda = torch.cuda.is_available()
    if info.enabled:
        if cuda:
            torch.cuda.set_device(info.local_rank)
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    if gpu is None:
        return torch.device("cuda", 0) if cuda else torch.device("cpu")
    if gpu.strip().lower() == "cpu":
        return torch.device("cpu")
    ids = [s.strip() for s in gpu.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ValueError(f"--gpu={gpu!r}: expected a GPU id such as 0 (or cpu)")
    if not cuda:
        warnings.warn(f"--gpu={gpu}: no CUDA GPU on this machine; training on the CPU", stacklevel=3)
        return torch.device("cpu")
    if len(ids) > 1:
        warnings.warn(f"--gpu={gpu}: one process uses one GPU (cuda:{ids[0]}); for several, run "
                      f"`torchrun --nproc_per_node={len(ids)} -m memvir train ...`", stacklevel=3)
    index = int(ids[0])
    if index >= torch.cuda.device_count():
        raise ValueError(f"--gpu={gpu}: this machine has {torch.cuda.device_count()} GPU(s), ids 0.."
                         f"{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


@contextlib.contextmanager
def determinism(deterministic: bool):
    """Set torch's determinism flags for the run and restore the caller's afterwards."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible results
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic, cudnn.benchmark = True, False
    else:
        cudnn.benchmark = True  # as the official code: fastest kernels, not reproducible on a GPU
    try:
        yield
    finally:
        if torch.are_deterministic_algorithms_enabled() != saved[0]:  # the call is slow the first time: skip it
            torch.use_deterministic_algorithms(saved[0])
        cudnn.deterministic, cudnn.benchmark = saved[1], saved[2]


def init(info: DistInfo, device: torch.device) -> bool:
    """Join the process group: NCCL between GPUs, gloo between CPU processes (MASTER_ADDR/PORT from torchrun).

    Returns True when this call created the group (False: one process, or a group that already exists).
    """
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, timeout=TIMEOUT)
    return True


class _GatherRows(torch.autograd.Function):
    """All-gather equal-sized (m, D) slices into (K*m, D); backward sums every rank's gradient and returns this
    rank's rows (what torch.distributed.nn.functional.all_gather does, without its deprecated API)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)  # (K*m, D)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # (K*m, D): dL_r / d(gathered) on this rank r
        dist.all_reduce(grad)  # sum over the ranks' losses (each rank computed the same L)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]  # (m, D)


def wrap(net, freeze_bn: bool, info: DistInfo, device: torch.device):
    """The network the loop calls: DDP around `net` under torchrun (SyncBatchNorm on CUDA unless BatchNorm is
    frozen), else `net` itself."""
    if not info.enabled:
        return net
    if not freeze_bn:
        if device.type == "cuda":  # the BatchNorm statistics of the global batch, as one GPU would see it
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        else:
            warnings.warn("several CPU processes without --freeze_BN: BatchNorm statistics are per process (PyTorch "
                          "has no SyncBatchNorm on CPU), so the run differs from a one-process run", stacklevel=3)
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def gather_batch(emb: torch.Tensor, labels: torch.Tensor, info: DistInfo):
    """Return the global batch, rank slices concatenated in rank order; gradients flow back to the local slice.

    Args:
        emb: (b, D) this rank's embeddings (b may differ by one between ranks on a short last batch).
        labels: (b,) their labels.
        info: the process's DistInfo; with one process the inputs come back unchanged.
    Returns:
        (B, D) embeddings and (B,) labels, identical on every rank.
    """
    if not info.enabled:
        return emb, labels
    size = torch.tensor([emb.shape[0]], device=emb.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    most = max(sizes)
    # all_gather needs equal shapes: pad the short slices with zero rows, cut them off after gathering.
    pad = most - emb.shape[0]
    emb_all = _GatherRows.apply(torch.nn.functional.pad(emb, (0, 0, 0, pad)))  # (K*most, D), differentiable
    labs = [torch.empty(most, dtype=labels.dtype, device=labels.device) for _ in range(info.world_size)]
    dist.all_gather(labs, torch.nn.functional.pad(labels, (0, pad)).contiguous())
    keep = torch.cat([torch.arange(r * most, r * most + n, device=emb.device) for r, n in enumerate(sizes)])
    return emb_all[keep], torch.cat([lab[:n] for lab, n in zip(labs, sizes)])  # (B, D), (B,)


def broadcast_object(obj, info: DistInfo):
    """Return rank 0's `obj` on every rank (picklable objects: rank 0's evaluation results)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
