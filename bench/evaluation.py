"""Time and memory of `memvir.metrics.retrieval_metrics` on a Stanford-Online-Products-sized test set.

    OMP_NUM_THREADS=2 python -m bench.evaluation                 # 60,502 x 512, 11,316 classes (SOP test)
    OMP_NUM_THREADS=2 python -m bench.evaluation --n 6000 --repeats 2   # a quick small run

Variants, each in its own subprocess so that its peak memory is its own (ru_maxrss of the child; tracemalloc
does not see faiss's C++ allocations):
  ours        retrieval_metrics(emb, labels): checks, normalisation, chunked search, metrics
  bare        faiss.IndexFlatIP on the already-normalised embeddings, one search of the same depth
  pml_default pytorch-metric-learning's AccuracyCalculator() as it comes (k=None: every item's full ranking);
              skipped, with the estimate, above 4 GiB (or a quarter of the free memory) or 2 minutes
  pml_max_bin pytorch-metric-learning's AccuracyCalculator(k="max_bin_count"), the depth R-Precision needs
"bare" and the pml variants get the embeddings already L2-normalised (not timed); "ours" normalises them itself.
"ours" and "bare" alternate (interleaved repetitions, alternating order) and the ratio is taken from their
medians measured in the same run, for each Recall@K setting: retrieval_metrics' default ks=(1, 2, 4, 8)
(search depth 12 on SOP: the largest class, 12) and SOP's ks=(1, 10, 100, 1000) (depth 1001).
Peak memory is the rise of maxrss over the level after loading the data.

The data are random clustered embeddings with SOP's test-set shape: class sizes 2..12, average 5.35.
Writes a JSON summary to --out (default results/bench/evaluation.json).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOP_N, SOP_CLASSES, SOP_DIM = 60502, 11316, 512
# Two settings of Recall@K: retrieval_metrics' default, and SOP's Recall@1, 10, 100, 1000 (MemVir Table 3),
# which makes the search 1001 deep.
KS_SETTINGS = ("1,2,4,8", "1,10,100,1000")
ROOT = Path(__file__).resolve().parents[1]
PML_TIME_LIMIT_S = 120
PML_MEMORY_LIMIT = 4 * 2**30  # bytes; pml_default is skipped above this estimate
NOISE = 2.2  # per-coordinate noise around unit-variance centres: Recall@1 = 0.78 at SOP size


def sop_like_sizes(n, num_classes, rng, lo=2, hi=12):
    """Class sizes in [lo, hi] summing to n: every class starts at lo, the rest is dealt out at random."""
    if not lo * num_classes <= n <= hi * num_classes:
        raise ValueError(f"--n: expected between {lo} and {hi} items per class ({num_classes} classes), got n={n}")
    sizes = np.full(num_classes, lo)
    while (left := n - sizes.sum()) > 0:
        open_ = np.flatnonzero(sizes < hi)
        sizes += np.bincount(rng.choice(open_, size=left), minlength=num_classes)
        sizes = np.minimum(sizes, hi)  # over-dealt classes give back; the next round deals again
    return sizes


def make_data(n, num_classes, dim, seed, folder):
    """Write SOP-like clustered embeddings (n, dim) float32 and labels (n,) to `folder`; return the paths."""
    rng = np.random.default_rng(seed)
    sizes = sop_like_sizes(n, num_classes, rng)
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)  # (C, dim)
    emb_path, labels_path = Path(folder) / "emb.npy", Path(folder) / "labels.npy"
    emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        emb[start:stop] = centres[labels[start:stop]] + NOISE * rng.normal(size=(stop - start, dim))
    emb.flush()
    del emb
    np.save(labels_path, labels)
    return emb_path, labels_path, sizes


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() often says only 'x86_64')."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(variant, emb_path, labels_path, depth, ks):
    """Run one variant once in this (fresh) process; print a JSON line with its time and memory."""
    import faiss

    emb, labels = np.load(emb_path), np.load(labels_path)
    if variant != "ours":
        # In place, before the clock starts: the others get unit vectors for free. pml's default search is L2,
        # which on unit vectors ranks like the cosine, so its metrics can be compared with ours.
        faiss.normalize_L2(emb)
    if variant == "ours":
        from memvir.metrics import retrieval_metrics
    elif variant.startswith("pml"):
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        emb_t, labels_t = torch.from_numpy(emb), torch.from_numpy(labels)
    base, base_now = maxrss_mb(), rss_mb()

    start = time.perf_counter()
    if variant == "ours":
        result = retrieval_metrics(emb, labels, ks=ks, use_gpu=False)
    elif variant == "bare":
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        index.search(emb, depth)
        result = {}
    else:
        k = None if variant == "pml_default" else "max_bin_count"
        calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k=k,
                                  device=torch.device("cpu"))
        result = calc.get_accuracy(emb_t, labels_t)
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rise_mb": maxrss_mb() - base,
                      "baseline_maxrss_mb": base, "baseline_rss_mb": base_now, "threads": faiss.omp_get_max_threads(),
                      "metrics": result}))


def run_variant(variant, emb_path, labels_path, depth, ks, timeout=None):
    cmd = [sys.executable, "-m", "bench.evaluation", "--worker", variant, "--emb", str(emb_path),
           "--labels", str(labels_path), "--depth", str(depth), "--ks", ",".join(map(str, ks))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ks"], out["depth"] = list(ks), depth
    print(f"  {variant:<12} depth {depth:5d} {out['seconds']:8.2f} s   peak +{out['peak_rise_mb']:7.0f} MB",
          flush=True)
    return out


def pml_default_estimate(n, dim):
    """Memory that AccuracyCalculator() would need: with k=None it ranks all n - 1 other items for every query.

    It holds several (n, n) arrays at once: faiss's distances float32 and indices int64, the neighbour labels,
    the label equality and relevance masks, their cumulative sums and precisions. Measured on this benchmark:
    13.6 GB at n = 15,000, about 60 bytes per (query, neighbour) entry.
    """
    return n * n * 64 + n * dim * 4 * 3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=SOP_N, help="number of embeddings (SOP test set: 60502)")
    parser.add_argument("--dim", type=int, default=SOP_DIM, help="embedding size D")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of ours and bare, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks", action="append",
                        help=f"a comma-separated Recall@K setting; repeat for several "
                             f"(default: {' and '.join(KS_SETTINGS)})")
    parser.add_argument("--skip-pml", action="store_true", help="do not run the pytorch-metric-learning variants")
    parser.add_argument("--out", default="results/bench/evaluation.json", help="JSON file for the results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--emb", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = [tuple(int(k) for k in ks.split(",")) for ks in (args.ks or KS_SETTINGS)]
        if any(k < 1 for ks in settings for k in ks):
            raise ValueError
    except ValueError:
        parser.error(f"--ks: expected comma-separated positive ints such as 1,2,4,8, got {args.ks}")
    if args.worker:
        worker(args.worker, args.emb, args.labels, args.depth, settings[0])
        return 0
    if args.n < 2 or args.dim < 1 or args.repeats < 1:
        parser.error("--n must be >= 2, --dim >= 1, --repeats >= 1")

    num_classes = max(1, round(args.n * SOP_CLASSES / SOP_N))
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg_start": os.getloadavg(),
               "cpu_model": cpu_model(), "python": platform.python_version(), "numpy": np.__version__}
    print(f"machine: {machine['processor']}, {machine['cpus_usable']} usable CPUs, "
          f"OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}, load average {machine['loadavg_start']}")

    with tempfile.TemporaryDirectory(prefix="bench_evaluation_") as folder:
        t = time.perf_counter()
        emb_path, labels_path, sizes = make_data(args.n, num_classes, args.dim, args.seed, folder)
        print(f"data: {args.n} x {args.dim}, {num_classes} classes of {sizes.min()}..{sizes.max()} items "
              f"(mean {sizes.mean():.2f}), made in {time.perf_counter() - t:.1f} s")
        # The depth retrieval_metrics searches: the largest R or K beyond the query itself, plus the query.
        depths = {ks: min(max(int(sizes.max()) - 1, max(ks)) + 1, args.n) for ks in settings}

        runs = []
        for rep in range(args.repeats):
            print(f"repetition {rep + 1}/{args.repeats}", flush=True)
            for ks in settings:
                for variant in (("ours", "bare") if rep % 2 == 0 else ("bare", "ours")):
                    runs.append(run_variant(variant, emb_path, labels_path, depths[ks], ks))

        pml = {}
        if not args.skip_pml:
            need = pml_default_estimate(args.n, args.dim)
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            if need > min(avail / 4, PML_MEMORY_LIMIT):  # the machine is shared: stay well clear of its memory
                msg = (f"skipped: k=None ranks all {args.n - 1} other items per query, about {need / 2**30:.0f} GiB "
                       f"of (n, n) arrays; {avail / 2**30:.0f} GiB available")
                print(f"  pml_default  {msg}")
                pml["pml_default"] = {"skipped": msg, "estimated_bytes": need}
            else:
                try:
                    pml["pml_default"] = run_variant("pml_default", emb_path, labels_path, args.n, settings[0],
                                                     timeout=PML_TIME_LIMIT_S)
                except subprocess.TimeoutExpired:
                    msg = f"skipped: still running after {PML_TIME_LIMIT_S} s"
                    print(f"  pml_default  {msg}")
                    pml["pml_default"] = {"skipped": msg, "estimated_bytes": need}
                except RuntimeError as err:  # e.g. killed for memory: report it, keep the other results
                    print(f"  pml_default  failed: {err}")
                    pml["pml_default"] = {"skipped": f"failed: {err}", "estimated_bytes": need}
            pml["pml_max_bin"] = run_variant("pml_max_bin", emb_path, labels_path, int(sizes.max()), settings[0])
    machine["loadavg_end"] = os.getloadavg()

    summary = {"embeddings_mb": args.n * args.dim * 4 / 2**20, "settings": []}
    print()
    for ks in settings:
        mine = [r for r in runs if tuple(r["ks"]) == ks]
        times = {v: [r["seconds"] for r in mine if r["variant"] == v] for v in ("ours", "bare")}
        median = {v: statistics.median(times[v]) for v in times}
        pairs = [o / b for o, b in zip(times["ours"], times["bare"])]  # each repetition's own ratio
        row = {"ks": list(ks), "depth": depths[ks], "ours_seconds": times["ours"], "bare_seconds": times["bare"],
               "ours_seconds_median": median["ours"], "bare_seconds_median": median["bare"],
               "time_ratio_ours_over_bare": median["ours"] / median["bare"],
               "time_ratio_per_repetition": pairs,
               "ours_peak_rise_mb_max": max(r["peak_rise_mb"] for r in mine if r["variant"] == "ours"),
               "bare_peak_rise_mb_max": max(r["peak_rise_mb"] for r in mine if r["variant"] == "bare"),
               "metrics": next(r["metrics"] for r in mine if r["variant"] == "ours")}
        summary["settings"].append(row)
        print(f"ks={ks} (depth {depths[ks]}): ours / bare time {row['time_ratio_ours_over_bare']:.3f} "
              f"(medians {median['ours']:.2f} s / {median['bare']:.2f} s over {args.repeats} interleaved repetitions; "
              f"per repetition {', '.join(f'{p:.3f}' for p in pairs)})")
        print(f"  peak memory above the loaded embeddings ({summary['embeddings_mb']:.0f} MB): "
              f"ours {row['ours_peak_rise_mb_max']:.0f} MB, bare {row['bare_peak_rise_mb_max']:.0f} MB")
        print(f"  our metrics: {row['metrics']}")
    bare_default = summary["settings"][0]["bare_seconds_median"]
    for name, res in pml.items():
        if "seconds" in res:
            res["over_bare_of_first_setting"] = res["seconds"] / bare_default
            print(f"{name}: {res['seconds']:.2f} s ({res['over_bare_of_first_setting']:.2f}x bare at "
                  f"ks={settings[0]}), peak +{res['peak_rise_mb']:.0f} MB, {res['metrics']}")
        else:
            print(f"{name}: {res['skipped']}")
    print(f"load average at the start {machine['loadavg_start']}, at the end {machine['loadavg_end']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"n": args.n, "dim": args.dim, "num_classes": num_classes, "repeats": args.repeats, "seed": args.seed,
              "ks_settings": [list(ks) for ks in settings]}
    out.write_text(json.dumps({"machine": machine, "params": params, "summary": summary, "runs": runs, "pml": pml},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
