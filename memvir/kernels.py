"""The CPU kernels a training uses, hashed op by op: a table that names the kernel whose floats moved.

    python -m memvir kernels [--out FILE]       this machine's table (JSON), under the portable caps
    python -m memvir kernels --against FILE     which ops differ from FILE's table, and what chooses their kernel

Two machines give a training the same floats only if every kernel it calls gives the same bits on both. Each op
below runs once on fixed inputs, one thread, and its output is hashed; `library` says which library picks the
kernel (and so which variable of memvir/portable.py, or which choice of the code, would change it). The committed
table (tests/kernels.json) lets the fingerprint test say *which* kernel moved on a new CPU, not just that the
weights did. The ops are those of `../shared/kernels/probe.py`, whose names they keep, and a few more that the
project's own choices rest on (the fused Adam step it trains with; MKL's vector math behind torch's sqrt and log).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys

from . import files, portable

# Which library computes each kind of op on a CPU, and what decides its kernel there.
LIBRARIES = {
    "MKL BLAS": "MKL_CBWR (MKL's reproducibility branch; COMPATIBLE agrees across CPU vendors)",
    "MKL vector math": "MKL_CBWR on Intel CPUs; on others MKL takes its own path whatever the variable says",
    "oneDNN": "ONEDNN_MAX_CPU_ISA (torch's convolutions and pooling)",
    "ATen": "ATEN_CPU_CAPABILITY (torch's own vectorised loops)",
    "OpenBLAS": "OPENBLAS_CORETYPE and its thread count (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS)",
    "faiss": "FAISS_SIMD_LEVEL",
}


# Ops of the table that the fingerprint's training (tests/test_portable.py: a glyph MemVir run with Adam) never
# calls: a difference in these alone cannot explain a moved fingerprint.
NOT_IN_TRAINING = {"sqrt", "log", "adam step", "adamw step (fused, as memvir trains)", "sgd step (nesterov)",
                   "rmsprop step"}


def _randn(*shape, seed=0):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _linear_backward(which):
    import torch.nn.functional as F

    w, x = _randn(128, 256, seed=1).requires_grad_(), _randn(128, 256).requires_grad_()
    F.linear(x, w).square().sum().backward()
    return w.grad if which == "dW" else x.grad


def _conv_backward(which):
    import torch.nn.functional as F

    img, k = _randn(32, 32, 16, 16).requires_grad_(), _randn(64, 32, 3, 3, seed=1).requires_grad_()
    F.conv2d(img, k, padding=1).square().sum().backward()
    return k.grad if which == "dW" else img.grad


def _optimizer_step(make):
    p = _randn(1000, 128).requires_grad_()
    opt = make([p])
    p.square().sum().backward()
    opt.step()
    return p


def _numpy_matmul():
    import numpy as np
    from threadpoolctl import threadpool_limits  # OpenBLAS splits the work by threads: one, as our runs

    a = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    with threadpool_limits(1):
        return a @ b


def _faiss_search(part):
    import faiss
    import numpy as np

    xb = np.random.default_rng(0).standard_normal((2000, 128)).astype(np.float32)
    index = faiss.IndexFlatIP(128)
    index.add(xb)
    distances, ids = index.search(xb[:500], 10)
    return distances if part == "D" else ids


def _ops():
    """[(name, library, thunk)]: each thunk returns the op's output (a tensor or an array) on fixed inputs."""
    import torch
    import torch.nn.functional as F

    randn, linear_backward, conv_backward, optimizer_step = _randn, _linear_backward, _conv_backward, _optimizer_step
    numpy_matmul, faiss_search = _numpy_matmul, _faiss_search
    positive = randn(1000, 128).abs() + 0.1  # (1000, 128): inputs where sqrt and log are defined
    z = randn(128, 1000)  # (128, 1000): logits
    adam = dict(lr=1e-3, eps=0.01, weight_decay=1e-4)  # the official optimiser's settings
    return [
        ("mm 128x512 @ 512x1000", "MKL BLAS", lambda: randn(128, 512) @ randn(512, 1000, seed=1)),
        ("mm 128x64 @ 64x128 (small)", "MKL BLAS", lambda: randn(128, 64) @ randn(64, 128, seed=1)),
        ("mm 128x2304 @ 2304x128 (fc)", "MKL BLAS", lambda: randn(128, 2304) @ randn(2304, 128, seed=1)),
        ("addmm (linear fwd)", "MKL BLAS",
         lambda: F.linear(randn(128, 256), randn(128, 256, seed=1), randn(128, seed=2))),
        ("linear bwd dW", "MKL BLAS", lambda: linear_backward("dW")),
        ("linear bwd dX", "MKL BLAS", lambda: linear_backward("dX")),
        ("bmm", "MKL BLAS", lambda: torch.bmm(randn(8, 64, 32), randn(8, 32, 48, seed=1))),
        ("conv2d 3->32 3x3 fwd", "oneDNN", lambda: F.conv2d(randn(32, 3, 32, 32), randn(32, 3, 3, 3, seed=1),
                                                            padding=1)),
        ("conv2d 32->64 3x3 fwd", "oneDNN",
         lambda: F.conv2d(randn(32, 32, 16, 16), randn(64, 32, 3, 3, seed=1), padding=1)),
        ("conv2d bwd dW", "oneDNN", lambda: conv_backward("dW")),
        ("conv2d bwd dX", "oneDNN", lambda: conv_backward("dX")),
        ("batchnorm2d train", "ATen", lambda: torch.nn.BatchNorm2d(32).train()(randn(32, 32, 16, 16))),
        ("log_softmax", "ATen", lambda: F.log_softmax(z, 1)),
        ("logsumexp", "ATen", lambda: torch.logsumexp(z, 1)),
        ("exp", "MKL vector math", lambda: z.exp()),
        ("sqrt", "MKL vector math", lambda: positive.sqrt()),
        ("log", "MKL vector math", lambda: positive.log()),
        ("normalize", "ATen", lambda: F.normalize(randn(128, 128), dim=1)),
        ("cross_entropy", "ATen", lambda: F.cross_entropy(z, torch.arange(128) % 1000)),
        ("sum dim1", "ATen", lambda: z.sum(1)),
        ("relu+maxpool", "ATen", lambda: F.max_pool2d(F.relu(randn(32, 32, 16, 16)), 2)),
        ("avgpool global", "ATen", lambda: F.adaptive_avg_pool2d(randn(32, 64, 4, 4), 1)),
        # torch's default Adam on a CPU is a loop of tensor ops whose sqrt is MKL's vector math (per vendor);
        # the fused step, which memvir trains with (train.make_optimizer), is ATen's own loop.
        ("adam step", "MKL vector math", lambda: optimizer_step(lambda ps: torch.optim.Adam(ps, **adam))),
        ("adam step (fused, as memvir trains)", "ATen",
         lambda: optimizer_step(lambda ps: torch.optim.Adam(ps, **adam, fused=True))),
        ("adamw step (fused, as memvir trains)", "ATen",
         lambda: optimizer_step(lambda ps: torch.optim.AdamW(ps, **adam, fused=True))),
        ("sgd step (nesterov)", "ATen", lambda: optimizer_step(
            lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4))),
        ("rmsprop step", "MKL vector math", lambda: optimizer_step(
            lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.99, momentum=0.9, weight_decay=1e-4))),
        ("numpy matmul", "OpenBLAS", numpy_matmul),
        ("faiss IndexFlatIP search D", "faiss", lambda: faiss_search("D")),
        ("faiss IndexFlatIP search I", "faiss", lambda: faiss_search("I")),
    ]


def _digest(out):
    import numpy as np
    import torch

    array = out.detach().contiguous().cpu().numpy() if torch.is_tensor(out) else np.ascontiguousarray(out)
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def table():
    """This process's table: {"made_on": the CPU and kernels, "ops": {name: {"library", "hash", "in_training"}}}.

    Call it under the caps you want described (`python -m memvir kernels` sets the portable ones first).
    """
    import torch

    torch.set_num_threads(1)  # a reduction split over threads sums in another order
    ops = {name: {"library": library, "hash": _digest(thunk()), "in_training": name not in NOT_IN_TRAINING}
           for name, library, thunk in _ops()}
    return {"made_on": machine(), "ops": ops}


def machine():
    """The CPU (model, vendor) and the kernels this process runs (portable.describe())."""
    info = {"model": "", "vendor": ""}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = {"model name": "model", "vendor_id": "vendor"}.get(line.split(":", 1)[0].strip())
                if key and not info[key]:
                    info[key] = line.split(":", 1)[1].strip()
    except OSError:
        info["model"] = platform.processor()
    return {"cpu": info["model"], "vendor": info["vendor"], **portable.describe()}


def differences(mine, theirs, in_training=False):
    """[(op, library, what chooses its kernel)] for every op whose hash differs between two tables.

    An op only one table has is left out: an older table may lack an op that a newer one adds. With
    in_training=True, only the ops the fingerprint's training calls.
    """
    out = []
    for name, entry in mine["ops"].items():
        other = theirs["ops"].get(name)
        if in_training and not entry.get("in_training", True):
            continue
        if other is not None and other["hash"] != entry["hash"]:
            out.append((name, entry["library"], LIBRARIES.get(entry["library"], "")))
    return out


def explain(diffs, theirs):
    """One line that names the ops that differ from `theirs`, their libraries and what chooses their kernels."""
    made = theirs.get("made_on", {})
    where = f"{made.get('cpu') or 'another CPU'} ({made.get('vendor') or 'vendor unknown'})"
    by_library = {}
    for name, library, _ in diffs:
        by_library.setdefault(library, []).append(name)
    parts = [f"{library}: {', '.join(names)} (chosen by {LIBRARIES.get(library, '?')})"
             for library, names in by_library.items()]
    return f"{len(diffs)} kernel(s) give other bits here than on {where}: " + "; ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m memvir kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the table to this JSON file (default: print it)")
    parser.add_argument("--against", help="a table (JSON) to compare with: print the ops that differ; exit 1 if any")
    args = parser.parse_args(argv)
    mine = table()
    if args.against:
        try:
            theirs = json.loads(open(args.against).read())
            theirs["ops"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --against {args.against}: not a kernel table ({exc})", file=sys.stderr)
            return 2
        diffs = differences(mine, theirs)
        print(explain(diffs, theirs) if diffs else f"every op of {args.against} gives the same bits here")
        return 1 if diffs else 0
    if args.out:
        files.atomic_json(mine, args.out)
    else:
        print(json.dumps(mine, indent=1))
    return 0
