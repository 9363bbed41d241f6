"""What the portable kernels cost: the same glyph training with the caps (MEMVIR_PORTABLE=1) and without (=0).

    python -m bench.portable [--epochs 4] [--rounds 3] [--memvir]

Each training is a fresh `python -m memvir train` process on the default glyph benchmark, one thread, the two modes
interleaved (A B, B A, ...) so that a change of the machine's load hits both; it prints each pair's times and the
median ratio capped / uncapped, and whether the two modes gave the same metrics (they should not on a CPU whose
own kernels are not AVX2). Ratios, not times: this machine is noisy. Nothing is written but a temporary folder.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memvir import portable


def train_once(folder, switch, epochs, memvir):
    """One training in a fresh process; returns (seconds, last evaluation without its wall time)."""
    env = {**portable.uncapped(), "MEMVIR_PORTABLE": switch, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    args = [sys.executable, "-m", "memvir", "train", "--data_name", "glyphs", "--epochs", str(epochs),
            "--no_progress", "--max_to_keep", "1", "--save_path", str(folder)]
    if memvir:
        args += ["--memvir", "1", "--mem_num_step", "5", "--mem_step_gap", "2", "--warm_epoch", "1"]
    start = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"bench.portable: training failed: {out.stderr.strip().splitlines()[-1:]}")
    last = json.loads((Path(folder) / "metrics.json").read_text())["last"]
    return seconds, {k: v for k, v in last.items() if k != "wall_time"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memvir", action="store_true", help="train with MemVir (N=5, M=2, U=1)")
    args = parser.parse_args()
    ok, why = portable.supported()
    if not ok:
        sys.exit(f"bench.portable: nothing to compare: {why}")
    times, metrics = {"1": [], "0": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for switch in ("1", "0") if r % 2 == 0 else ("0", "1"):
                t, m = train_once(Path(tmp) / f"{switch}_{r}", switch, args.epochs, args.memvir)
                times[switch].append(t)
                metrics[switch] = m
            print(f"round {r + 1}: capped {times['1'][-1]:.1f} s, uncapped {times['0'][-1]:.1f} s, ratio "
                  f"{times['1'][-1] / times['0'][-1]:.3f}", flush=True)
    ratios = [a / b for a, b in zip(times["1"], times["0"])]
    print(f"capped / uncapped, median of {args.rounds} rounds ({args.epochs} epochs, "
          f"{'MemVir' if args.memvir else 'baseline'}): {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    same = metrics["1"] == metrics["0"]
    print(f"the two modes' last metrics are {'the same' if same else 'different'}: "
          f"R@1 {metrics['1']['recall@1']:.6f} capped, {metrics['0']['recall@1']:.6f} uncapped")


if __name__ == "__main__":
    main()
