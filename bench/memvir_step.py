"""Benchmark: the cost of one MemVir step (loss forward + backward, memory full) against the plain computation.

    python -m bench.memvir_step                 # the paper's CARS196 settings, the N sweep, BN-Inception share
    python -m bench.memvir_step --quick         # fewer repetitions, no backbone timing
    python -m bench.memvir_step --fixed-cost    # MemVir's fixed cost per step: ours, plain, and ours before issue 14

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
import importlib.util
import statistics
import subprocess
import tempfile
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


def time_step(criterion, memvir, B=B, D=D, C=C):
    """Seconds for one loss forward + backward on a fresh batch; the step also pushes into the memory."""
    emb = F.normalize(torch.randn(B, D), dim=1).requires_grad_()
    labels = torch.randint(0, C, (B,))
    start = time.perf_counter()
    value = criterion(emb, labels, 0) if memvir else criterion(emb, labels)
    value.backward()
    return time.perf_counter() - start


def compare(variants, repeats, **shape):
    """Median seconds per variant, the variants interleaved within each repetition."""
    times = {name: [] for name in variants}
    for name, (crit, memvir) in variants.items():  # one warm-up step each (allocations, caches)
        time_step(crit, memvir, **shape)
    names = list(variants)
    for r in range(repeats):  # the order rotates: no variant always runs right after the slowest one
        for name in names[r % len(names):] + names[:r % len(names)]:
            crit, memvir = variants[name]
            times[name].append(time_step(crit, memvir, **shape))
    return {name: statistics.median(t) for name, t in times.items()}


# ---- MemVir's fixed cost per step (issue 14, section 3) --------------------------------------------------------
# The memory.py before the change, read from git and imported as a module of its own, so that before and
# after are timed interleaved in one run of one machine state.
BEFORE = "eaace4d02f1f0624d8e35e8cdf12aea2441414f7"  # the last commit of memvir/memory.py before issue 14
FIXED = dict(B=64, C=98, D=256, M=2, Ns=(1, 2, 5, 10, 20))


def memory_before():
    """Import memvir/memory.py as it was at commit BEFORE (its relative imports made absolute)."""
    source = subprocess.run(["git", "show", f"{BEFORE}:memvir/memory.py"], capture_output=True, text=True,
                            check=True).stdout
    source = source.replace("from .losses import", "from memvir.losses import").replace(
        "from .pml import", "from memvir.pml import")
    path = Path(tempfile.mkdtemp()) / "memvir_memory_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("memvir_memory_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MemVir


def fixed_cost(repeats, rounds):
    """Time ours, ours before issue 14 and plain at B64 C98 D256 M2 over N; fit ms = intercept + slope x N."""
    B_, C_, D_, M = FIXED["B"], FIXED["C"], FIXED["D"], FIXED["M"]
    shape = dict(B=B_, C=C_, D=D_)
    kinds = {"ours": (MemVir, True), "before": (memory_before(), True), "plain": (MemVir, False)}

    def filled_fixed(cls, N, fast):
        torch.manual_seed(0)
        mv = cls(NormSoftmax(C_, D_), N, M, fast=fast)
        with torch.no_grad():
            for _ in range(mv.capacity):
                mv(F.normalize(torch.randn(B_, D_), dim=1), torch.randint(0, C_, (B_,)), 0)
        return mv

    print(f"MemVir fixed cost: Norm-SoftMax B={B_} C={C_} D={D_} M={M}; median of {repeats}, {rounds} rounds, "
          f"{torch.get_num_threads()} torch threads; 'before' = memvir/memory.py at {BEFORE[:7]}")
    out = {"shape": dict(FIXED, Ns=list(FIXED["Ns"])), "before_commit": BEFORE, "rounds": []}
    for r in range(rounds):
        rows = []
        for N in FIXED["Ns"]:
            variants = {k: (filled_fixed(cls, N, fast), True) for k, (cls, fast) in kinds.items()}
            t = compare(variants, repeats, **shape)
            rows.append({"N": N, **{k: v * 1e3 for k, v in t.items()}})
        fit = {}
        for k in ("ours", "before"):
            slope, intercept = statistics.linear_regression([x["N"] for x in rows], [x[k] for x in rows])
            fit[k] = {"intercept_ms": intercept, "ms_per_step": slope}
        at20 = rows[-1]
        summary = {"ours_over_plain_N20": at20["ours"] / at20["plain"],
                   "before_over_plain_N20": at20["before"] / at20["plain"],
                   "intercept_after_over_before": fit["ours"]["intercept_ms"] / fit["before"]["intercept_ms"]}
        out["rounds"].append({"rows": rows, "fit": fit, **summary})
        print(f"round {r + 1}:  {'N':>3}{'plain ms':>10}{'before ms':>11}{'ours ms':>9}")
        for x in rows:
            print(f"{'':10}{x['N']:>3}{x['plain']:>10.2f}{x['before']:>11.2f}{x['ours']:>9.2f}")
        print(f"  fit: before {fit['before']['intercept_ms']:.2f} ms + {fit['before']['ms_per_step']:.3f} ms x N; "
              f"ours {fit['ours']['intercept_ms']:.2f} ms + {fit['ours']['ms_per_step']:.3f} ms x N; "
              f"N=20 ours/plain {summary['ours_over_plain_N20']:.3f} (before {summary['before_over_plain_N20']:.3f})")
    return out


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
    parser.add_argument("--fixed-cost", action="store_true",
                        help="only the fixed-cost sweep (B64 C98 D256 M2, N 1..20): ours, before issue 14, plain")
    parser.add_argument("--rounds", type=int, default=3, help="--fixed-cost: repeat the whole sweep (noise)")
    parser.add_argument("--out", default=None,
                        help="JSON file (default results/bench/memvir_step.json, memvir_step_fixed.json)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu",
               "torch": torch.__version__}
    if args.fixed_cost:
        result = {"machine": machine, **fixed_cost(repeats, args.rounds)}
        return write(result, args.out or "results/bench/memvir_step_fixed.json")
    result = {"machine": machine, "shape": {"C": C, "D": D, "B": B}, "settings": [], "sweep": []}

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

    return write(result, args.out or "results/bench/memvir_step.json")


def write(result, path):
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
