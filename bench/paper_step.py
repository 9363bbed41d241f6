"""Benchmark: what one paper-scale training step costs (CARS196, BN-Inception 224 px, MemVir N=45 M=10, Adam).

    python -m bench.paper_step                    # CPU: results/bench/paper_step.json
    python -m bench.paper_step --quick            # fewer images and repetitions (the GPU check uses this)
    python -m bench.paper_step --device cuda --out results/bench/gpu_paper_step.json

Figures, each in images/s on the device measured:
  decode     one process, no DataLoader: read + decode + train transform, per --decode path (pil, draft, and the
             gpu path's tensor code, here on the device measured): images/s per core.
  loader     the real ImageFolderDataset + train_transform + DataLoader, per worker count (1, 2, 4, all cores).
  model      BN-Inception (pretrained="none") forward+backward alone, fp32 and AMP (bf16 on CPU, fp16 + GradScaler
             on CUDA), channels_last off and on; and forward alone (no grad), for the evaluations.
  step       the whole step: loader (all cores) -> model -> MemVir(Norm-SoftMax) N=45 M=10, memory full -> Adam.
Then the projection: the wall time of one README MemVir CARS196 run (2,000 epochs) and of PROFILE=paper
(configs/paper.yml: 10 baseline runs of 130 epochs, evaluated every 5; 10 MemVir runs of 2,000, every 10), and the
loader-bound time of a MemVir run on a 16-core machine for each decode path.

The images: a synthetic folder with CARS196's sizes as far as they are known here. Nobody here has the archive's
size table: the published images are about 100-1000 px a side, typically ~700x480 (landscape car photos), and the
TFDS catalogue gives 1.82 GiB for its 16,185 images, ~118 KB a file. So: width ~ N(700, 170) clipped to
[100, 1000], aspect ratio ~ U(1.3, 1.6) (height = width / aspect), JPEG quality 90, content with smooth shading, a
texture and noise (noise set so that the mean file, printed, is ~116 KB). Files are in the page cache, as a real
data set of 1.8 GB is after the first epoch.
Timing is noisy on a shared machine: the JSON records `uptime`'s load average with the figures.
"""
import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memvir.data import transforms as TF
from memvir.data.folder import ImageFolderDataset, load_rgb

# The paper's CARS196 recipe (configs/paper.yml): 8,054 train images (98 classes), 8,131 test images.
TRAIN_IMAGES, TEST_IMAGES, C, D, N, M = 8054, 8131, 98, 512, 45, 10
MEMVIR_EPOCHS, MEMVIR_CHECK = 2000, 10
BASELINE_EPOCHS, BASELINE_CHECK = 130, 5
RUNS_PER_ROW = 5  # seeds 0-4, two baseline rows and two MemVir rows
TARGET_CORES = 16  # the cores a one-GPU machine typically has (issue 14)


def make_folder(root, n_images, n_classes=8, seed=0):
    """Write n_images synthetic JPEGs with CARS196-like sizes under root/<class>/; return the mean file bytes."""
    rng = np.random.default_rng(seed)
    sizes = []
    for k in range(n_images):
        w = int(np.clip(rng.normal(700, 170), 100, 1000))
        h = max(64, int(w / rng.uniform(1.3, 1.6)))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 200, 3).astype(np.float32)
        img = np.stack([base[0] + 50 * x / w, base[1] + 40 * y / h,
                        base[2] + 35 * np.sin(x / rng.uniform(5, 40)) * np.cos(y / rng.uniform(5, 40))], -1)
        img += rng.normal(0, 12, img.shape)  # noise sets the file size.astype(np.float32)
        path = Path(root) / f"c{k % n_classes}" / f"{k:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def rate(fn, images, repeats):
    """Median images/s of fn() (which processes `images` images) over repeats calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ====== decode + train transform in one process ======

def decode_rates(ds_paths, device, count, repeats):
    """Images/s per path, the paths interleaved within each repetition (a shared machine drifts)."""
    paths = ds_paths[:count]
    runs = {}
    for decode in TF.DECODE_PATHS:
        tf = TF.train_transform("bninception", 224, decode=decode)
        if decode == "pil":
            runs[decode] = lambda tf=tf: [tf(load_rgb(p)) for p in paths]
        elif decode == "draft":
            runs[decode] = lambda tf=tf: [tf.from_file(p) for p in paths]
        else:  # bytes + parameters on the host, then the batch's pixel work on `device`
            def run(tf=tf):
                TF.EncodedBatch([tf.from_file(p) for p in paths]).to(device)
                sync(device)
            runs[decode] = run
    times = {d: [] for d in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):
        for d, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[d].append(time.perf_counter() - start)
    return {d: len(paths) / statistics.median(t) for d, t in times.items()}


# ====== the DataLoader ======

def loader_for(root, decode, workers, batch, total):
    ds = ImageFolderDataset(root, TF.train_transform("bninception", 224, decode=decode))
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=total)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


def loader_rate(root, decode, workers, batch, batches):
    """Images/s of the loader alone (the gpu path: workers ship bytes; the device decode is timed in `step`)."""
    loader = loader_for(root, decode, workers, batch, batch * (batches + 2 * workers + 1))
    it = iter(loader)
    for _ in range(max(1, workers)):  # let every worker produce its first batch (start-up is not throughput)
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    del it, loader
    return batch * batches / seconds


# ====== the model ======

def model_rates(device, batch, repeats):
    from memvir.models import build_model

    out = {}
    for amp in (False, True):
        for channels_last in (False, True):
            net = build_model("bninception", D, pretrained="none").to(device)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = net.to(memory_format=fmt)
            x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=fmt)
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

            n = batch if device.type == "cuda" or not amp else min(batch, 4)  # CPU bf16: ~10x slower, fewer images
            x = x[:n]

            def step():
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    loss = net(x).float().square().sum()
                scaler.scale(loss).backward()
                net.zero_grad(set_to_none=True)
                sync(device)

            name = ("amp_" + ("fp16" if device.type == "cuda" else "bf16") if amp else "fp32") + \
                ("_channels_last" if channels_last else "")
            out[name] = rate(step, n, repeats if device.type == "cuda" or not amp else 1)
            print(f"  model fwd+bwd {name:<24}{out[name]:9.1f} images/s", flush=True)
    net = build_model("bninception", D, pretrained="none").to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)

    def forward():
        with torch.no_grad():
            net(x)
        sync(device)

    out["forward_fp32_eval"] = rate(forward, batch, repeats)
    print(f"  model forward (eval)    {out['forward_fp32_eval']:9.1f} images/s", flush=True)
    return out


# ====== the whole step ======

def step_rate(root, decode, device, workers, batch, steps, amp, channels_last):
    from memvir.losses import NormSoftmax
    from memvir.memory import MemVir
    from memvir.models import build_model, freeze_bn

    torch.manual_seed(0)
    net = build_model("bninception", D, pretrained="none").to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = NormSoftmax(C, D)
    criterion = MemVir(loss_fn, N, M, 0).to(device)
    for _ in range(criterion.capacity):  # fill the memory (gradients on: under no_grad MemVir does not push)
        criterion(torch.nn.functional.normalize(torch.randn(batch, D, device=device), dim=1),
                  torch.randint(0, C, (batch,), device=device), 0)
    optimizer = torch.optim.Adam([{"params": net.parameters(), "lr": 1e-4},
                                  {"params": loss_fn.parameters(), "lr": 1e-2}], eps=0.01)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    net.train()
    freeze_bn(net)  # the README's --freeze_BN
    loader = loader_for(root, decode, workers, batch, batch * (steps + 2 + workers))
    it = iter(loader)

    def one_step():
        images, labels = next(it)
        images = images.to(device, non_blocking=True)  # the gpu path decodes here
        labels = torch.as_tensor(labels % C).to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            emb = net(images)  # (B, D)
            loss = criterion(emb, labels, epoch=0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # train.py reads the loss every step

    for _ in range(1 + workers):  # warm-up: worker start-up, allocator, cuDNN autotuning
        one_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


# ====== the projection ======

def hours(images, per_second):
    return images / per_second / 3600.0


def projection(step_ips, eval_ips):
    """Wall hours of one MemVir CARS196 run and of PROFILE=paper at a measured step rate and evaluation rate."""
    def run_hours(epochs, check):
        return hours(epochs * TRAIN_IMAGES, step_ips) + hours(math.ceil(epochs / check) * TEST_IMAGES, eval_ips)

    one = run_hours(MEMVIR_EPOCHS, MEMVIR_CHECK)
    profile = 2 * RUNS_PER_ROW * (one + run_hours(BASELINE_EPOCHS, BASELINE_CHECK))
    return {"memvir_run_hours": one, "profile_paper_hours": profile,
            "memvir_run_train_images": MEMVIR_EPOCHS * TRAIN_IMAGES}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions")
    parser.add_argument("--batch", type=int, default=None, help="model and step batch [CUDA 128, CPU 16]")
    parser.add_argument("--decode-only", action="store_true", help="only the decode+transform figures")
    parser.add_argument("--out", default=None, help="[results/bench/paper_step.json; CUDA: gpu_paper_step.json]")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    batch = args.batch or (128 if device.type == "cuda" else 16)
    repeats = 2 if args.quick else 3
    n_images = 96 if args.quick else 256
    worker_counts = sorted({1, cores} if args.quick else {1, 2, 4, cores})
    out_path = Path(args.out or ("results/bench/gpu_paper_step.json" if device.type == "cuda"
                                 else "results/bench/paper_step.json"))
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "usable_cores": cores,
                          "torch_threads": torch.get_num_threads(), "device": str(device),
                          "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
                          platform.processor() or platform.machine(), "torch": torch.__version__,
                          "load_average_start": load_average()},
              "batch": batch, "quick": args.quick}
    print(f"paper step on {device} ({result['machine']['device_name']}), batch {batch}, {cores} cores, "
          f"{torch.get_num_threads()} torch threads, load {load_average()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="memvir_paper_step_") as root:
        mean_bytes = make_folder(root, n_images)
        paths = ImageFolderDataset(root).paths
        result["images"] = {"count": n_images, "mean_file_kb": mean_bytes / 1e3, "cars196_mean_file_kb": 118}
        print(f"{n_images} synthetic JPEGs, mean {mean_bytes / 1e3:.0f} KB (CARS196: ~118 KB)", flush=True)

        # ====== decode + transform, one process ======
        result["decode_per_core"] = decode_rates(paths, device, 48 if args.quick else 128,
                                                 repeats if not args.decode_only else 7)
        for k, v in result["decode_per_core"].items():
            print(f"  decode+transform {k:<6}{v:9.1f} images/s per core", flush=True)

        if args.decode_only:
            result["machine"]["load_average_end"] = load_average()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2))
            print(f"wrote {out_path}")
            return 0

        # ====== loader per worker count ======
        result["loader"] = {}
        for decode in TF.DECODE_PATHS:
            result["loader"][decode] = {}
            for w in worker_counts:
                ips = loader_rate(root, decode, w, 32, 4 if args.quick else 8)
                result["loader"][decode][str(w)] = ips
                print(f"  loader {decode:<6} {w:>2} workers {ips:9.1f} images/s", flush=True)

        # ====== model alone ======
        result["model"] = model_rates(device, batch, repeats)

        # ====== the whole step ======
        amp = device.type == "cuda"  # CPU: fp32 (bf16 autocast is slower than fp32 on CPUs without AMX)
        best_cl = result["model"]["amp_fp16_channels_last" if amp else "fp32_channels_last"] > \
            result["model"]["amp_fp16" if amp else "fp32"]
        result["step"] = {"amp": amp, "channels_last": best_cl, "workers": cores, "rates": {}}
        for decode in (TF.DECODE_PATHS if not args.quick or device.type == "cuda" else ("pil",)):
            ips = step_rate(root, decode, device, cores, batch, 3 if args.quick else 6, amp, best_cl)
            result["step"]["rates"][decode] = ips
            print(f"  full step ({decode}, {cores} workers) {ips:9.1f} images/s", flush=True)

    # ====== projections ======
    eval_ips = result["model"]["forward_fp32_eval"]
    result["projection"] = {
        "assumptions": ("train images/s = the full step measured here; evaluation images/s = the model's forward "
                        "alone (the test transform decodes no faster than the train one: on few cores the "
                        "evaluations are decode-bound too, so these hours are a lower bound there); CARS196 "
                        "8,054 train / 8,131 test images; PROFILE=paper = 10 baseline runs (130 epochs, eval "
                        "every 5) + 10 MemVir runs (2,000 epochs, eval every 10)"),
        "here": {d: projection(ips, eval_ips) for d, ips in result["step"]["rates"].items()},
        "loader_bound_16_cores": {d: {"images_per_s": r * TARGET_CORES,
                                      "memvir_run_hours": hours(MEMVIR_EPOCHS * TRAIN_IMAGES, r * TARGET_CORES)}
                                  for d, r in result["decode_per_core"].items() if d != "gpu"},
        "loader_bound_note": ("per-core decode+transform rate x 16 cores (linear scaling assumed; the loader "
                              "table shows how it scales here): the fastest a 16-core machine can feed the GPU "
                              "with that decoder. The gpu path's workers only read bytes; its limit is the "
                              "device decode, measured on CUDA by the GPU check."),
    }
    for d, p in result["projection"]["here"].items():
        print(f"  projection ({d}): one MemVir run {p['memvir_run_hours']:.0f} h, PROFILE=paper "
              f"{p['profile_paper_hours']:.0f} h on this machine")
    for d, p in result["projection"]["loader_bound_16_cores"].items():
        print(f"  16-core loader bound ({d}): {p['images_per_s']:.0f} images/s, a MemVir run >= "
              f"{p['memvir_run_hours']:.1f} h")
    result["machine"]["load_average_end"] = load_average()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
