"""Tests that need CUDA (marked `gpu`, skipped without it; bench/gpu_check.sh runs them), and the check script's own
behaviour on a machine without CUDA (runs everywhere).

Oracles: the same computation on the CPU (MemVir, the search), the official PIL pipeline (--decode gpu), and the
training loop's own guarantees (finite losses, float32 weights) under AMP fp16 + GradScaler.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from images import photo

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bench/gpu_check.sh runs these where one is)")
TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, batch_size=32, dim=16,
            progress=False)


# ----------------------------------------------------------------------------------------------------------------
# The check script without CUDA (CPU machines: this is the test that runs here)


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_OUT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU found" in proc.stdout and "nothing run" in proc.stdout
    assert not out.exists()  # it wrote nothing, not even an empty folder


def test_gpu_check_fails_loudly_when_python_is_missing(tmp_path):
    # The CUDA probe failing for another reason must not pass for "no GPU" silently: it says what it ran.
    env = {**os.environ, "PYTHON": str(tmp_path / "no_such_python"), "PATH": str(tmp_path), "GPU_CHECK_OUT":
           str(tmp_path / "bench")}
    bash = shutil.which("bash")
    proc = subprocess.run([bash, str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "python" in (proc.stdout + proc.stderr).lower()


# ----------------------------------------------------------------------------------------------------------------
# MemVir on the device


def run_memvir(device, storage="device", steps=12, seed=0):
    from memvir.losses import NormSoftmax
    from memvir.memory import MemVir

    torch.manual_seed(seed)
    C, D, B = 10, 16, 24
    mv = MemVir(NormSoftmax(C, D), 3, 1, 0, storage=storage).to(device)
    g = torch.Generator().manual_seed(seed)
    losses, grads = [], []
    for _ in range(steps):
        emb = F.normalize(torch.randn(B, D, generator=g), dim=1).to(device).requires_grad_()
        labels = torch.randint(0, C, (B,), generator=g).to(device)
        loss = mv(emb, labels, 0)
        loss.backward()
        losses.append(loss.item())
        grads.append(emb.grad.cpu())
    return mv, losses, grads


def test_memvir_host_storage_on_the_cpu_matches_device_storage():
    # The host-storage code path, on a machine without CUDA (nothing is pinned there).
    mv, losses, grads = run_memvir("cpu", "host")
    _, ref_losses, ref_grads = run_memvir("cpu")
    assert losses == ref_losses and all(torch.equal(g, r) for g, r in zip(grads, ref_grads)) and mv.num_taken == 3


@gpu
@needs_cuda
@pytest.mark.parametrize("storage", ["device", "host"])
def test_memvir_on_cuda_matches_the_cpu(storage):
    mv, losses, grads = run_memvir("cuda", storage)
    _, ref_losses, ref_grads = run_memvir("cpu")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert mv.num_taken == 3  # the memory was full and in use
    memory = [mv.mem_emb, mv.mem_proxies]  # the big buffers: past embeddings and proxy snapshots
    if storage == "host":  # on the host, pinned (so the K taken steps copy asynchronously)
        assert all(t.device.type == "cpu" and t.is_pinned() for t in memory)
    else:
        assert all(t.device.type == "cuda" for t in memory)


@gpu
@needs_cuda
@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("fast", [True, False])
def test_memvir_step_on_cuda_never_waits_for_the_device(storage, fast):
    """With check=False a MemVir step (forward, backward, push) makes no host-device synchronisation: the sync
    debug mode turns any into an error. Host storage too: pushes into pinned memory and the taken steps' copies
    back are queued on the stream. Then the saved memory equals the pushed rows (state_dict waits for them)."""
    from memvir.losses import NormSoftmax
    from memvir.memory import MemVir

    torch.manual_seed(0)
    C, D, B = 10, 16, 24
    mv = MemVir(NormSoftmax(C, D), 3, 1, 0, storage=storage, fast=fast, check=False).to("cuda")
    batches = [(F.normalize(torch.randn(B, D), dim=1).cuda().requires_grad_(), torch.randint(0, C, (B,)).cuda())
               for _ in range(mv.capacity + 3)]
    for emb, labels in batches[:-1]:
        mv(emb, labels, 0).backward()
    torch.cuda.synchronize()
    emb, labels = batches[-1]
    torch.cuda.set_sync_debug_mode("error")
    try:
        mv(emb, labels, 0).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert mv.num_taken == 3
    saved = mv.state_dict()["mem_emb"][(mv._num_pushed - 1) % mv.capacity, :B]  # the last push
    torch.testing.assert_close(saved.cpu(), F.normalize(emb.detach(), dim=1).cpu(), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# AMP fp16 + GradScaler: the training loop on CUDA


@gpu
@needs_cuda
def test_amp_fp16_gradscaler_training_steps(tmp_path):
    from memvir.train import train

    res = train({**TINY, "epochs": 2, "check_epoch": 2, "gpu": "0", "use_amp": True, "memvir": True,
                 "mem_num_step": 2, "mem_step_gap": 0, "warm_epoch": 0, "save_path": str(tmp_path)})
    assert res["finished"]
    rows = (tmp_path / "steps.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert len(losses) == 2 * 4 and all(np.isfinite(losses))
    ckpt = torch.load(tmp_path / "checkpoints" / "epoch_00002.pt", weights_only=True, map_location="cpu")
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0  # a GradScaler ran (CPU runs save an empty one)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------------------------
# --decode gpu: nvJPEG on the device against the official PIL pipeline


@gpu
@needs_cuda
def test_decode_gpu_on_cuda_matches_pil(tmp_path):
    from memvir.data import transforms as TF

    paths = [photo(tmp_path / f"{k}.jpg", (300 + 110 * k, 240 + 70 * k), seed=k) for k in range(6)]
    pil, enc = TF.train_transform("bninception", 224), TF.train_transform("bninception", 224, decode="gpu")
    ref, items = [], []
    for seed, path in enumerate(paths):  # the same seed: the same crop box and flip in both
        torch.manual_seed(seed)
        ref.append(pil(Image.open(path).convert("RGB")))
        torch.manual_seed(seed)
        items.append(enc.from_file(path))
    out = TF.EncodedBatch(items).to("cuda")
    assert out.device.type == "cuda" and out.shape == (6, 3, 224, 224)
    diff = (out.cpu() - torch.stack(ref)).abs()
    # nvJPEG's IDCT and chroma upsampling are not libjpeg's: a few grey levels at edges, well under 1 on average.
    assert diff.mean() < 1.0 and diff.max() <= 16


@pytest.mark.parametrize("device", ["cpu", pytest.param("0", marks=[gpu, needs_cuda])])
def test_training_with_decode_gpu(tmp_path, device):
    # On the CPU the same code path runs (decode_jpeg on the CPU): train.py's `images.to(device)` decodes.
    from memvir.train import train

    for split in ("train", "test"):
        for c in range(4):
            for k in range(4):
                photo(tmp_path / "data" / split / f"c{c}" / f"{k}.jpg", (260 + 20 * k, 200), seed=16 * c + k)
    res = train({"data_name": "custom", "data": str(tmp_path / "data"), "backbone": "resnet18", "pretrained": "none",
                 "input_size": 64, "dim": 8, "batch_size": 8, "epochs": 1, "check_epoch": 1, "workers": 2,
                 "decode": "gpu", "gpu": device if device != "cpu" else "cpu", "use_amp": device != "cpu",
                 "progress": False,
                 "save_path": str(tmp_path / "run")})
    assert res["finished"] and res["last"]["recall@1"] >= 0


# ----------------------------------------------------------------------------------------------------------------
# faiss-gpu search


def faiss_gpus():
    try:
        import faiss

        return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    except ImportError:
        return 0


@gpu
@needs_cuda
@pytest.mark.skipif(CUDA and faiss_gpus() == 0, reason="faiss-gpu is not installed (faiss sees no GPU)")
def test_faiss_gpu_search_equals_the_cpu_search():
    from memvir.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 64)).astype(np.float32)
    labels = rng.integers(0, 50, 2000)
    on_gpu = retrieval_metrics(emb, labels, ks=(1, 2, 4, 8), use_gpu=True)
    on_cpu = retrieval_metrics(emb, labels, ks=(1, 2, 4, 8), use_gpu=False)
    for key in on_cpu:
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=1e-3), key


# ----------------------------------------------------------------------------------------------------------------
# DDP over NCCL (more than one GPU)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@gpu
@needs_cuda
@pytest.mark.skipif(CUDA and torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_over_nccl_two_gpus(tmp_path):
    argv = [f"--{k}={v}" for k, v in TINY.items() if k != "progress"] + [
        "--epochs=2", "--memvir=1", "--mem_num_step=2", "--mem_step_gap=0", "--warm_epoch=0",
        f"--save_path={tmp_path / 'run'}", "--no_progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "memvir", "train", *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finished"]
