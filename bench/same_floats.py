"""Check: MemVir's step gives bitwise the same floats as at an earlier commit (a speed change must not move them).

    python -m bench.same_floats                   # against eaace4d, memory.py before issue 14's fixed-cost work
    python -m bench.same_floats --commit HEAD~3

Imports memvir/memory.py and memvir/losses.py of the commit from git (bench/at_commit.py, as bench/memvir_step.py
does) and runs the same 25 steps through both: every proxy loss, the cached and the plain path, device and host
storage, a short batch every seventh step (padding rows). Compares each step's loss, the embeddings' and the
proxies' gradients with torch.equal. Exits 1 if any differ; needs git history. The committed runs were trained
before; equal floats mean `make reproduce` still gives their tables.
"""
import argparse
import subprocess

import torch

from bench.at_commit import modules_at
from memvir import losses as losses_now
from memvir import memory as memory_now
from memvir.registry import loss_class

LOSSES = ("normsoftmax", "proxynca", "cosface", "arcface", "proxyanchor", "softtriple")


def run(losses, memory, name, fast, storage, steps=25, C=7, D=8):
    """Each step's (loss, embedding gradient (B, D), proxy gradient (C', D)) for a fixed stream of batches."""
    torch.manual_seed(0)
    loss = getattr(losses, loss_class(name).__name__)(C, D)  # that module's class, its default hyper-parameters
    mv = memory.MemVir(loss, 3, 1, fast=fast, storage=storage)
    g = torch.Generator().manual_seed(1)
    out = []
    for t in range(steps):
        B = 10 if t % 7 else 6  # a short batch now and then: the padding rows of the cached path
        emb = torch.randn(B, D, generator=g).requires_grad_()
        value = mv(emb, torch.randint(0, C, (B,), generator=g), 0)
        value.backward()
        out.append((value.detach(), emb.grad, mv.loss.proxies.grad.clone()))
        mv.loss.proxies.grad = None
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="eaace4d02f1f0624d8e35e8cdf12aea2441414f7")
    args = parser.parse_args(argv)
    try:
        then = modules_at(args.commit)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"same_floats: cannot read memvir/ at {args.commit!r} from git ({exc.__class__.__name__})")
        return 2
    differ = 0
    for name in LOSSES:
        for fast in (True, False):
            for storage in ("device", "host"):
                now, old = run(losses_now, memory_now, name, fast, storage), run(*then, name, fast, storage)
                same = all(torch.equal(a, b) for x, y in zip(now, old) for a, b in zip(x, y))
                differ += not same
                verdict = "bitwise" if same else "DIFFERENT"
                print(f"{name:<12} {'cached' if fast else 'plain':<7} {storage:<7} {verdict}")
    print(f"{differ} of {len(LOSSES) * 4} differ from {args.commit[:7]}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
