"""Benchmark: the cost of one MemVir step (loss forward + backward, memory full) against the plain computation.

    python -m bench.memvir_step                 # the paper's CARS196 settings, the N sweep, BN-Inception share
    python -m bench.memvir_step --quick         # fewer repetitions, no backbone timing
    python -m bench.memvir_step --fixed-cost    # MemVir's fixed cost per step: ours, plain, and ours before issue 14
    python -m bench.memvir_step --quick --device cuda   # on a GPU (bench/gpu_check.sh), with its syncs per step
    OMP_NUM_THREADS=1 python -m bench.memvir_step --fixed-cost --clock cpu   # CPU time: a shared machine

Variants, timed interleaved in one run (this machine is noisy: compare ratios, not seconds):
  plain     rule 4 as the official code computes it: concatenate the (1+K)B embeddings and (1+K)C proxies, one
            logit matrix, backward through all of it.               MemVir(..., fast=False)
  ours      the cached computation of memvir.memory (O(N) per step). MemVir(..., fast=True)
  baseline  the loss without MemVir (B x C logits).
Prints a table and writes JSON (default results/bench/memvir_step.json) that the Performance chapter reads.
On CUDA each variant's step is also counted for host-device synchronisations (torch.cuda.set_sync_debug_mode),
the waits that a CPU timing cannot show; tests/test_memory.py counts the same reads deterministically on the CPU.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.at_commit import modules_at
from memvir.losses import NormSoftmax, ProxyNCA
from memvir.memory import MemVir

# The paper's CARS196 settings (official README): C=98 train classes, D=512, batch 128.
C, D, B = 98, 512, 128
SETTINGS = [("Norm-SoftMax", NormSoftmax, 45, 10), ("Proxy-NCA", ProxyNCA, 20, 25)]
DEVICE = torch.device("cpu")  # where everything is timed: main() sets it from --device
CLOCK = time.perf_counter  # wall time; --clock cpu: time.thread_time


def batch(B, D, C):
    """A fresh batch on DEVICE: unit embeddings (B, D) that want gradients, labels (B,) in [0, C)."""
    emb = F.normalize(torch.randn(B, D, device=DEVICE), dim=1).requires_grad_()
    return emb, torch.randint(0, C, (B,), device=DEVICE)


def filled(loss_cls, N, M, fast, seed=0, memvir_cls=MemVir, B=B, D=D, C=C):
    """A MemVir on DEVICE whose memory is full (N*(M+1) steps pushed), so every step takes N past steps."""
    torch.manual_seed(seed)
    mv = memvir_cls(loss_cls(C, D), N, M, fast=fast).to(DEVICE)
    for _ in range(max(mv.capacity, 1)):  # gradients on: under torch.no_grad() MemVir reads, never pushes
        mv(*batch(B, D, C), 0)
    return mv


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_step(criterion, memvir, B=B, D=D, C=C):
    """Seconds for one loss forward + backward on a fresh batch; the step also pushes into the memory."""
    emb, labels = batch(B, D, C)
    sync()
    start = CLOCK()
    value = criterion(emb, labels, 0) if memvir else criterion(emb, labels)
    value.backward()
    sync()  # on CUDA the step is done when the device is
    return CLOCK() - start


def count_syncs(criterion, memvir, B=B, D=D, C=C):
    """Host-device synchronisations of one step on CUDA (each one a warning of the sync debug mode); None on CPU."""
    if DEVICE.type != "cuda":
        return None
    emb, labels = batch(B, D, C)
    sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            value = criterion(emb, labels, 0) if memvir else criterion(emb, labels)
            value.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_ops(criterion, memvir, B=B, D=D, C=C):
    """ATen ops one step dispatches on the CPU (forward + backward): (all, kernels), kernels = the ops that are not
    views. A kernel is a launch on a GPU, so this is the fixed cost in a unit no machine's load changes; on CUDA
    the backward runs on another thread, out of the mode's sight, so the count is taken on the CPU only."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.is_view] += 1
            return func(*args, **(kwargs or {}))

    if DEVICE.type != "cpu":
        return None
    counts = {True: 0, False: 0}
    emb, labels = batch(B, D, C)
    with Count():
        value = criterion(emb, labels, 0) if memvir else criterion(emb, labels)
        value.backward()
    return {"ops": counts[True] + counts[False], "kernels": counts[False]}


def compare(variants, repeats, **shape):
    """Median seconds per variant, the variants interleaved within each repetition; on CUDA also syncs per step."""
    times = {name: [] for name in variants}
    for name, (crit, memvir) in variants.items():  # one warm-up step each (allocations, caches)
        time_step(crit, memvir, **shape)
    names = list(variants)
    for r in range(repeats):  # the order rotates: no variant always runs right after the slowest one
        for name in names[r % len(names):] + names[:r % len(names)]:
            crit, memvir = variants[name]
            times[name].append(time_step(crit, memvir, **shape))
    syncs = {name: count_syncs(crit, memvir, **shape) for name, (crit, memvir) in variants.items()}
    return {name: statistics.median(t) for name, t in times.items()}, syncs


# ---- MemVir's fixed cost per step (issue 14, section 3) --------------------------------------------------------
# memory.py before the change, with the check_batch of losses.py it called then (three device reads), read
# from git and imported as modules of their own, so that before and after are timed interleaved in one run of one
# machine state.
BEFORE = "eaace4d02f1f0624d8e35e8cdf12aea2441414f7"  # the last commit of memvir/memory.py before issue 14
FIXED = dict(B=64, C=98, D=256, M=2, Ns=(1, 2, 5, 10, 20))


def memory_before():
    """(MemVir, NormSoftmax) of memvir/memory.py and losses.py at commit BEFORE; None without git history."""
    try:
        losses, memory = modules_at(BEFORE, tag="before")
    except (OSError, subprocess.CalledProcessError):  # a copy of the working tree without .git (a GPU machine)
        return None
    return memory.MemVir, losses.NormSoftmax


def fixed_cost(repeats, rounds):
    """Time ours, ours before issue 14 and plain at B64 C98 D256 M2 over N; fit ms = intercept + slope x N.

    Also the loss alone (no memory, the same B x C step), now and at BEFORE: the floor under any intercept, since
    every MemVir step scores its current batch against the current proxies and back-propagates that first. What
    MemVir adds is the intercept minus the loss alone of the same code.
    """
    B_, C_, D_, M = FIXED["B"], FIXED["C"], FIXED["D"], FIXED["M"]
    shape = dict(B=B_, C=C_, D=D_)
    before = memory_before()
    kinds = {"ours": (MemVir, NormSoftmax, True), "plain": (MemVir, NormSoftmax, False)}
    losses = {"loss": NormSoftmax}
    if before is None:
        print(f"no git history here: 'before' ({BEFORE[:7]}) is not timed")
    else:
        kinds["before"] = (*before, True)
        losses["loss_before"] = before[1]
    fitted = {k: loss for k, loss in (("ours", "loss"), ("before", "loss_before")) if k in kinds}

    print(f"MemVir fixed cost: Norm-SoftMax B={B_} C={C_} D={D_} M={M} on {DEVICE}; median of {repeats}, "
          f"{rounds} rounds, {torch.get_num_threads()} torch threads; 'before' = memvir/memory.py at {BEFORE[:7]}")
    out = {"shape": dict(FIXED, Ns=list(FIXED["Ns"])), "before_commit": BEFORE, "rounds": []}
    for r in range(rounds):
        rows = []
        for N in FIXED["Ns"]:
            variants = {k: (filled(loss_cls, N, M, fast, memvir_cls=cls, **shape), True)
                        for k, (cls, loss_cls, fast) in kinds.items()}
            variants.update({k: (loss_cls(C_, D_).to(DEVICE), False) for k, loss_cls in losses.items()})
            t, syncs = compare(variants, repeats, **shape)
            rows.append({"N": N, **{k: v * 1e3 for k, v in t.items()}})
            if DEVICE.type == "cuda":
                rows[-1]["syncs_per_step"] = syncs
            else:  # the same in ops: deterministic, so one round's count is every round's
                rows[-1]["kernels_per_step"] = {k: count_ops(*v, **shape)["kernels"] for k, v in variants.items()}
        fit = {}
        for k in fitted:
            slope, intercept = statistics.linear_regression([x["N"] for x in rows], [x[k] for x in rows])
            fit[k] = {"intercept_ms": intercept, "ms_per_step": slope}
        at20 = rows[-1]
        alone = {k: statistics.median(x[k] for x in rows) for k in losses}
        for k, loss in fitted.items():  # what MemVir adds to the loss's own step, whatever N
            fit[k]["added_ms"] = fit[k]["intercept_ms"] - alone[loss]
        summary = {"ours_over_plain_N20": at20["ours"] / at20["plain"], "loss_alone_ms": alone["loss"]}
        if "before" in kinds:
            summary["loss_alone_before_ms"] = alone["loss_before"]
            summary.update(before_over_plain_N20=at20["before"] / at20["plain"],
                           intercept_after_over_before=fit["ours"]["intercept_ms"] / fit["before"]["intercept_ms"],
                           added_after_over_before=fit["ours"]["added_ms"] / fit["before"]["added_ms"])
        out["rounds"].append({"rows": rows, "fit": fit, **summary})
        print(f"round {r + 1}:  {'N':>3}" + "".join(f"{k + ' ms':>15}" for k in (*kinds, *losses))
              + ("   syncs per step" if DEVICE.type == "cuda" else "   kernels per step"))
        for x in rows:
            print(f"{'':10}{x['N']:>3}" + "".join(f"{x[k]:>15.2f}" for k in (*kinds, *losses))
                  + f"   {x.get('syncs_per_step') or x.get('kernels_per_step')}")
        print("  fit: " + "; ".join(f"{k} {fit[k]['intercept_ms']:.2f} ms + {fit[k]['ms_per_step']:.3f} ms x N "
                                    f"(adds {fit[k]['added_ms']:.2f} ms to the loss)" for k in fitted)
              + f"; loss alone {summary['loss_alone_ms']:.2f} ms; N=20 ours/plain {summary['ours_over_plain_N20']:.3f}"
              + (f" (before {summary['before_over_plain_N20']:.3f}); intercept ours/before "
                 f"{summary['intercept_after_over_before']:.2f}, added ours/before "
                 f"{summary['added_after_over_before']:.2f}" if "before" in kinds else ""))
    return out


def backbone_step(repeats):
    """Seconds for one forward + backward of BN-Inception at batch 128, 224 px (the paper's training step)."""
    from memvir.models import build_model

    model = build_model("bninception", D, pretrained="none").to(DEVICE)
    x = torch.randn(B, 3, 224, 224, device=DEVICE)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x).sum().backward()
        sync()
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
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where to time (cuda: also the host-device synchronisations of each variant's step)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="wall: elapsed time; cpu: this thread's CPU time (time.thread_time), which leaves out "
                             "the time other processes hold the core (a shared machine); CPU, one torch thread")
    parser.add_argument("--out", default=None,
                        help="JSON file (default results/bench/memvir_step.json, memvir_step_fixed.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here")
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error(f"--clock cpu times this thread only: expected --device cpu and one torch thread "
                     f"(OMP_NUM_THREADS=1), got {args.device} with {torch.get_num_threads()}")
    global DEVICE, CLOCK
    DEVICE = torch.device(args.device)
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    repeats = 3 if args.quick else args.repeats
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
               "clock": args.clock, "torch": torch.__version__}
    if DEVICE.type == "cuda":
        machine.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    if args.fixed_cost:
        result = {"machine": machine, **fixed_cost(repeats, args.rounds)}
        return write(result, args.out or "results/bench/memvir_step_fixed.json")
    result = {"machine": machine, "shape": {"C": C, "D": D, "B": B}, "settings": [], "sweep": []}

    print(f"MemVir step, loss forward+backward with memory full; C={C} D={D} B={B} on {DEVICE}; median of "
          f"{repeats}, {torch.get_num_threads()} torch threads")
    print(f"{'loss':<14}{'N':>4}{'M':>4}{'plain ms':>10}{'ours ms':>9}{'base ms':>9}{'plain/ours':>12}{'ours/base':>11}")
    for name, cls, N, M in SETTINGS:
        variants = {"plain": (filled(cls, N, M, fast=False), True), "ours": (filled(cls, N, M, fast=True), True),
                    "baseline": (cls(C, D).to(DEVICE), False)}
        t, syncs = compare(variants, repeats)
        row = {"loss": name, "N": N, "M": M, **{k: v * 1e3 for k, v in t.items()},
               "plain_over_ours": t["plain"] / t["ours"], "ours_over_baseline": t["ours"] / t["baseline"]}
        if DEVICE.type == "cuda":
            row["syncs_per_step"] = syncs
        result["settings"].append(row)
        print(f"{name:<14}{N:>4}{M:>4}{row['plain']:>10.1f}{row['ours']:>9.1f}{row['baseline']:>9.2f}"
              f"{row['plain_over_ours']:>12.1f}{row['ours_over_baseline']:>11.1f}"
              + (f"   syncs per step {syncs}" if DEVICE.type == "cuda" else ""))

    print("\nN sweep (Norm-SoftMax, M=10): ours should grow linearly in N, plain quadratically; 'before' is ours at "
          f"{BEFORE[:7]} (before issue 14), timed in the same run")
    before = memory_before()
    print(f"{'N':>4}{'plain ms':>10}{'ours ms':>9}{'before ms':>11}{'plain/ours':>12}")
    for N in (5, 10, 20, 45):
        variants = {"plain": (filled(NormSoftmax, N, 10, fast=False), True),
                    "ours": (filled(NormSoftmax, N, 10, fast=True), True)}
        if before is not None:
            variants["before"] = (filled(before[1], N, 10, fast=True, memvir_cls=before[0]), True)
        t, _ = compare(variants, repeats)
        row = {"N": N, **{k: v * 1e3 for k, v in t.items()}, "plain_over_ours": t["plain"] / t["ours"]}
        result["sweep"].append(row)
        print(f"{N:>4}{row['plain']:>10.1f}{row['ours']:>9.1f}{row.get('before', float('nan')):>11.1f}"
              f"{row['plain_over_ours']:>12.1f}")
    # Linear fit against N: the slope per extra step, the intercept (what a step costs whatever N), and how well a
    # line explains it.
    ns = [r["N"] for r in result["sweep"]]
    for key, name in (("ours", "sweep_fit"), ("before", "sweep_fit_before")):
        if key not in result["sweep"][0]:
            continue
        ts = [r[key] for r in result["sweep"]]
        slope, intercept = statistics.linear_regression(ns, ts)
        r2 = statistics.correlation(ns, ts) ** 2
        result[name] = {"ms_per_step": slope, "intercept_ms": intercept, "r2_linear": r2}
        print(f"{key} ~ {intercept:.1f} ms + {slope:.2f} ms x N  (R^2 of a line: {r2:.4f})")

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
