"""Benchmark: the cost of one MemVir step (loss forward + backward, memory full) against the plain computation.

    python -m bench.memvir_step                 # the paper's CARS196 settings, the N sweep, BN-Inception share
    python -m bench.memvir_step --quick         # fewer repetitions, no backbone timing

Variants, timed interleaved in one run (this machine is noisy: compare ratios, not seconds):
  plain     rule 4 as the official code computes it: concatenate the (1+K)B embeddings and (1+K)C proxies, one
            logit matrix, backward through all of it.               MemVir(..., fast=False)
  ours      the cached computation of memvir.memory (O(N) per step). MemVir(..., fast=True)
  baseline  the loss without MemVir (B x C logits).
Prints a table and writes JSON (default results/bench/memvir_step.json) that the Performance chapter reads.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from memvir.losses import NormSoftmax, ProxyNCA
from memvir.memory import MemVir

# The paper's CARS196 settings (official README): C=98 train classes, D=512, batch 128.
C, D, B = 98, 512, 128
SETTINGS = [("Norm-SoftMax", NormSoftmax, 45, 10), ("Proxy-NCA", ProxyNCA, 20, 25)]


def filled(loss_cls, N, M, fast, seed=0):
    """A MemVir whose memory is full (N*(M+1) steps pushed), so every step takes N past steps."""
    torch.manual_seed(seed)
    mv = MemVir(loss_cls(C, D), N, M, fast=fast)
    with torch.no_grad():
        for _ in range(max(mv.capacity, 1)):
            mv(F.normalize(torch.randn(B, D), dim=1), torch.randint(0, C, (B,)), 0)
    return mv


def time_step(criterion, memvir):
    """Seconds for one loss forward + backward on a fresh batch; the step also pushes into the memory."""
    emb = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    labels = torch.randint(0, C, (B,))
    start = time.perf_counter()
    value = criterion(emb, labels, 0) if memvir else criterion(emb, labels)
    value.backward()
    return time.perf_counter() - start


def compare(variants, repeats):
    """Median seconds per variant, the variants interleaved within each repetition."""
    times = {name: [] for name in variants}
    for name, (crit, memvir) in variants.items():  # one warm-up step each (allocations, caches)
        time_step(crit, memvir)
    for _ in range(repeats):
        for name, (crit, memvir) in variants.items():
            times[name].append(time_step(crit, memvir))
    return {name: statistics.median(t) for name, t in times.items()}


def backbone_step(repeats):
    """Seconds for one forward + backward of BN-Inception at batch 128, 224 px (the paper's training step)."""
    from memvir.models import build_model

    model = build_model("bninception", D, pretrained="none")
    x = torch.randn(B, 3, 224, 224)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 repetitions, no backbone timing")
    parser.add_argument("--no-backbone", action="store_true", help="skip the BN-Inception step timing")
    parser.add_argument("--out", default="results/bench/memvir_step.json")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "device": "cpu", "torch": torch.__version__},
              "shape": {"C": C, "D": D, "B": B}, "settings": [], "sweep": []}

    print(f"MemVir step, loss forward+backward with memory full; C={C} D={D} B={B}; median of {repeats}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'loss':<14}{'N':>4}{'M':>4}{'plain ms':>10}{'ours ms':>9}{'base ms':>9}{'plain/ours':>12}{'ours/base':>11}")
    for name, cls, N, M in SETTINGS:
        variants = {"plain": (filled(cls, N, M, fast=False), True), "ours": (filled(cls, N, M, fast=True), True),
                    "baseline": (cls(C, D), False)}
        t = compare(variants, repeats)
        row = {"loss": name, "N": N, "M": M, **{k: v * 1e3 for k, v in t.items()},
               "plain_over_ours": t["plain"] / t["ours"], "ours_over_baseline": t["ours"] / t["baseline"]}
        result["settings"].append(row)
        print(f"{name:<14}{N:>4}{M:>4}{row['plain']:>10.1f}{row['ours']:>9.1f}{row['baseline']:>9.2f}"
              f"{row['plain_over_ours']:>12.1f}{row['ours_over_baseline']:>11.1f}")

    print("\nN sweep (Norm-SoftMax, M=10): ours should grow linearly in N, plain quadratically")
    print(f"{'N':>4}{'plain ms':>10}{'ours ms':>9}{'plain/ours':>12}")
    for N in (5, 10, 20, 45):
        t = compare({"plain": (filled(NormSoftmax, N, 10, fast=False), True),
                     "ours": (filled(NormSoftmax, N, 10, fast=True), True)}, repeats)
        row = {"N": N, "plain": t["plain"] * 1e3, "ours": t["ours"] * 1e3, "plain_over_ours": t["plain"] / t["ours"]}
        result["sweep"].append(row)
        print(f"{N:>4}{row['plain']:>10.1f}{row['ours']:>9.1f}{row['plain_over_ours']:>12.1f}")
    # Linear fit of ours against N: the slope per extra step, and how well a line explains it.
    ns = [r["N"] for r in result["sweep"]]
    ts = [r["ours"] for r in result["sweep"]]
    slope, intercept = statistics.linear_regression(ns, ts)
    r2 = statistics.correlation(ns, ts) ** 2
    result["sweep_fit"] = {"ms_per_step": slope, "intercept_ms": intercept, "r2_linear": r2}
    print(f"ours ~ {intercept:.1f} ms + {slope:.2f} ms x N  (R^2 of a line: {r2:.4f})")

    if not (args.quick or args.no_backbone):
        bb = backbone_step(max(1, min(repeats, 3)))
        ours = result["settings"][0]["ours"] / 1e3
        result["backbone"] = {"bninception_fwd_bwd_ms": bb * 1e3, "memvir_share": ours / (bb + ours)}
        print(f"\nBN-Inception forward+backward, batch {B}, 224 px: {bb * 1e3:.0f} ms; "
              f"MemVir (Norm-SoftMax, N=45) is {100 * ours / (bb + ours):.2f}% of the whole step")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
