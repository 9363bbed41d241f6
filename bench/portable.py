"""What the portable kernels cost: the same glyph training with the caps (MEMVIR_PORTABLE=1) and without (=0).

    python -m bench.portable [--epochs 4] [--rounds 3] [--memvir] [--before CHECKOUT]

Each training is a fresh `python -m memvir train` process on the default glyph benchmark, one thread, the modes
interleaved (A B, B A, ...) so that a change of the machine's load hits all; it prints each round's times and the
median ratio capped / uncapped, and whether the modes gave the same metrics (capped and uncapped should not: MKL's
reproducible branch alone changes the bits). --before adds a third mode: the caps and code of another checkout of
memvir (a `git worktree` of an older commit), for the cost of a change of the caps. Ratios, not times: this machine
is noisy. Nothing is written but a temporary folder.
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


def train_once(folder, switch, epochs, memvir, checkout=None):
    """One training in a fresh process (memvir of `checkout` if given); returns (seconds, last evaluation)."""
    env = {**portable.uncapped(), "MEMVIR_PORTABLE": switch, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if checkout:
        env["PYTHONPATH"] = str(Path(checkout).resolve())
    args = [sys.executable, "-m", "memvir", "train", "--data_name", "glyphs", "--epochs", str(epochs),
            "--no_progress", "--max_to_keep", "1", "--save_path", str(folder)]
    if memvir:
        args += ["--memvir", "1", "--mem_num_step", "5", "--mem_step_gap", "2", "--warm_epoch", "1"]
    start = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True, cwd=checkout)
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
    parser.add_argument("--before", help="another checkout of memvir: its capped mode is timed too")
    args = parser.parse_args()
    ok, why = portable.supported()
    if not ok:
        sys.exit(f"bench.portable: nothing to compare: {why}")
    modes = {"capped": ("1", None), "uncapped": ("0", None)}
    if args.before:
        if not (Path(args.before) / "memvir" / "portable.py").is_file():
            sys.exit(f"bench.portable: --before {args.before}: not a checkout of memvir (no memvir/portable.py)")
        modes["capped before"] = ("1", args.before)
    times, metrics = {name: [] for name in modes}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for name in order:
                switch, checkout = modes[name]
                t, m = train_once(Path(tmp) / f"{name}_{r}".replace(" ", "_"), switch, args.epochs, args.memvir,
                                  checkout)
                times[name].append(t)
                metrics[name] = m
            print(f"round {r + 1}: " + ", ".join(f"{name} {times[name][-1]:.1f} s" for name in modes), flush=True)
    what = f"{args.rounds} rounds ({args.epochs} epochs, {'MemVir' if args.memvir else 'baseline'})"
    for name in modes:
        if name == "uncapped":
            continue
        ratios = [a / b for a, b in zip(times[name], times["uncapped"])]
        print(f"{name} / uncapped, median of {what}: {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    for name in modes:
        print(f"{name}: last R@1 {metrics[name]['recall@1']:.6f}, MAP@R {metrics[name]['map_at_r']:.6f}")


if __name__ == "__main__":
    main()
