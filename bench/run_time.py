"""Benchmark: where a long glyph run's time goes (issue 31: "a run twice as fast at the same floats halves it").

    OMP_NUM_THREADS=1 python -m bench.run_time                 # decisive's Norm-SoftMax rows, 8 epochs each
    OMP_NUM_THREADS=1 python -m bench.run_time --epochs 16 --row "Proxy-NCA, as long as MemVir"

Trains short runs with the flags of PROFILE=decisive's rows (its epochs cut to --epochs, the memory switched on
halfway, an evaluation every --check-epoch epochs) and splits each run's wall time into parts, timed in the
running process without changing memvir's code:
  data        the training loader's batches (glyph decoding, augmentation, collation: DataLoader.__next__)
  net fwd     the embedding network's forward (the outermost nn.Module call that is not the loss)
  loss fwd    the loss's forward, MemVir's memory included (the outermost call of the criterion)
  backward    Tensor.backward (network and loss)
  optimizer   the optimiser's step (torch's step hooks)
  evaluation  memvir.evaluation.evaluate: test and validation embeddings and the metrics
  checkpoint  memvir's save_checkpoint (one a epoch)
  other       the rest: steps.csv and TensorBoard writes, the finiteness check, the set-up, data rendering
Prints one table; the shares, not the seconds, carry over to another machine. A long run's share of evaluation is
(evaluations a long run makes) x (seconds an evaluation) / its time: the table says both per unit.
"""
import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.utils.data.dataloader as dataloader
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import memvir.evaluation
import memvir.rundir
from memvir.profile import load_profile

PARTS = ["data", "net fwd", "loss fwd", "backward", "optimizer", "evaluation", "checkpoint", "other"]
ROWS = ["MemVir + Norm-SoftMax, 8B", "Norm-SoftMax, as long as MemVir"]


class Clock:
    """Seconds per part; the training parts are not counted while an evaluation runs (it has its own forward)."""

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)
        self.depth, self.in_eval, self.started = 0, 0, {}

    def add(self, part, seconds):
        self.seconds[part] += seconds
        self.calls[part] += 1

    def timed(self, part, fn, training_only=True):
        clock = self

        def wrapper(*args, **kwargs):
            if training_only and clock.in_eval:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.add(part, time.perf_counter() - t)
        wrapper.__wrapped__ = fn
        return wrapper


def _replace_everywhere(original, wrapper):
    """Bind `wrapper` wherever a memvir module holds `original` (a `from .x import f` copies the name)."""
    for name, module in list(sys.modules.items()):
        if name == "memvir" or name.startswith("memvir."):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, wrapper)


def instrument(clock):
    """Wrap the parts' functions and hook torch's module and optimiser calls; returns a function that undoes it."""
    import memvir.train  # noqa: F401  (imported first, so that its bound names are the ones replaced)

    evaluate = memvir.evaluation.evaluate

    def evaluating(*args, **kwargs):
        clock.in_eval += 1
        t = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            clock.in_eval -= 1
            clock.add("evaluation", time.perf_counter() - t)

    save = memvir.rundir.save_checkpoint
    _replace_everywhere(evaluate, evaluating)
    _replace_everywhere(save, clock.timed("checkpoint", save, training_only=False))
    next_batch = dataloader._BaseDataLoaderIter.__next__
    dataloader._BaseDataLoaderIter.__next__ = clock.timed("data", next_batch)
    backward = torch.Tensor.backward
    torch.Tensor.backward = clock.timed("backward", backward)

    def pre(module, args):  # the outermost module call: the network's or the loss's forward
        if clock.depth == 0 and not clock.in_eval:
            clock.started[id(module)] = time.perf_counter()
        clock.depth += 1

    def post(module, args, output):
        clock.depth -= 1
        if clock.depth == 0 and id(module) in clock.started:
            part = "loss fwd" if _is_loss(module) else "net fwd"
            clock.add(part, time.perf_counter() - clock.started.pop(id(module)))

    def step_pre(optimizer, args, kwargs):
        clock.started["step"] = time.perf_counter()

    def step_post(optimizer, args, kwargs):
        clock.add("optimizer", time.perf_counter() - clock.started.pop("step"))

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
               torch.nn.modules.module.register_module_forward_hook(post),
               register_optimizer_step_pre_hook(step_pre),
               register_optimizer_step_post_hook(step_post)]

    def undo():
        for h in handles:
            h.remove()
        dataloader._BaseDataLoaderIter.__next__ = next_batch
        torch.Tensor.backward = backward
        _replace_everywhere(evaluating, evaluate)
    return undo


def _is_loss(module):
    """A loss module: one of memvir's losses or the MemVir wrapper (they own `proxies`)."""
    return type(module).__module__ in ("memvir.losses", "memvir.memory", "memvir.pml") or hasattr(module, "proxies")


def time_run(params, epochs, check_epoch):
    """One short run with `params` (a profile run's flags); returns ({part: seconds}, {part: calls}, total s)."""
    from memvir.train import train

    clock = Clock()
    undo = instrument(clock)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = dict(params, epochs=epochs, check_epoch=check_epoch, save_path=str(Path(tmp) / "run"),
                          warm_epoch=max(1, epochs // 2), progress=False)
            t = time.perf_counter()
            train(config)
            total = time.perf_counter() - t
    finally:
        undo()
    counted = sum(clock.seconds[p] for p in PARTS if p != "other")
    clock.seconds["other"] = total - counted
    return clock.seconds, clock.calls, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="decisive", help="the profile whose rows' flags are timed")
    parser.add_argument("--row", action="append", help=f"a row label (repeatable; default: {ROWS})")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per timed run (the memory on at half)")
    parser.add_argument("--check-epoch", type=int, default=4, help="an evaluation every this many epochs")
    parser.add_argument("--json", default=None, help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    torch.set_num_threads(1)
    out = {}
    for row in args.row or ROWS:
        run = profile.run(row)
        seconds, calls, total = time_run(run.params, args.epochs, args.check_epoch)
        evals = max(1, calls["evaluation"] // 2)  # evaluate() runs twice an evaluation: test and validation
        out[row] = {"total_s": total, "epochs": args.epochs, "evaluations": evals,
                    "parts_s": {p: seconds[p] for p in PARTS}, "calls": {p: calls[p] for p in PARTS}}
        print(f"\n{row}: {args.epochs} epochs, {evals} evaluations, {total:.1f} s, "
              f"{torch.get_num_threads()} torch thread(s)")
        print(f"  {'part':<11} {'seconds':>8} {'share':>6}  per unit")
        for p in PARTS:
            unit = {"evaluation": f"{seconds[p] / evals:.2f} s an evaluation",
                    "checkpoint": f"{seconds[p] / max(1, calls[p]):.3f} s a checkpoint"}.get(
                p, f"{seconds[p] / args.epochs:.2f} s an epoch")
            print(f"  {p:<11} {seconds[p]:8.2f} {100 * seconds[p] / total:5.1f}%  {unit}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
