"""Benchmark: what the trainer's per-step divergence check costs, as a share of a training step.

    python -m bench.divergence_check

After every optimiser step memvir.train checks that every parameter is finite: one fused norm per parameter
tensor (torch._foreach_norm), one isfinite over the stacked norms, one host sync. It also checks the batch's
embeddings (finite, no row collapsed to zero) before the loss. Timed interleaved with the step it guards, medians
of repetitions, on the glyph benchmark's model (the default profile) and on BN-Inception's parameters (the paper's
model; its forward + backward is not timed here: 17.8 s at batch 128 on this CPU, see chapter 08).
"""
import statistics
import time

import torch
import torch.nn.functional as F

from memvir.losses import NormSoftmax
from memvir.models import build_model


def check(params, emb):
    ok = torch.isfinite(emb).all() & (emb.detach().abs().amax(dim=1) > 0).all()
    return bool(ok) and bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())


def median_ms(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    torch.manual_seed(0)
    net = build_model("glyphcnn", 128, in_channels=1)
    loss = NormSoftmax(200, 128)
    params = [*net.parameters(), *loss.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, eps=0.01)
    images, labels = torch.randn(128, 1, 32, 32), torch.randint(0, 200, (128,))

    def step():
        emb = net(images, l2_norm=True)
        value = loss(emb, labels)
        opt.zero_grad()
        value.backward()
        opt.step()
        return emb

    emb = step()
    steps, checks = [], []
    for _ in range(15):  # interleaved: the machine's noise hits both alike
        steps.append(median_ms(step, 3))
        checks.append(median_ms(lambda: check(params, emb), 20))
    s, c = statistics.median(steps), statistics.median(checks)
    print(f"glyph profile (GlyphCNN 128-d, batch 128, {sum(p.numel() for p in params):,} parameters): "
          f"step {s:.2f} ms, check {c:.3f} ms = {100 * c / s:.2f}% of a step")
    bn = build_model("bninception", 512)
    bn_params = list(bn.parameters())
    emb = F.normalize(torch.randn(128, 512), dim=1)
    c = statistics.median(median_ms(lambda: check(bn_params, emb), 10) for _ in range(5))
    print(f"BN-Inception 512-d ({sum(p.numel() for p in bn_params):,} parameters): check {c:.2f} ms "
          f"= {100 * c / 17800:.3f}% of its 17.8 s CPU step")


if __name__ == "__main__":
    main()
