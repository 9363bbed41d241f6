# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (memvir)
#     language: python
#     name: memvir
# ---

# %% [markdown]
# # Proxy losses: Norm-SoftMax and Proxy-NCA
#
# The official README trains MemVir with two losses, Norm-SoftMax {cite}`zhai2019normsoftmax` and Proxy-NCA
# {cite}`movshovitz2017proxynca`. Both are a cross-entropy over one logit per pair (embedding $x_i$, proxy
# $p_c$) of the batch and the $C$ training classes:
#
# $$\mathcal{L} = \frac{1}{B}\sum_{i=1}^{B} \Big[\log \sum_{c=1}^{C} e^{\,\ell(x_i, p_c)} - \ell(x_i, p_{y_i})\Big]$$
#
# with, writing $\hat v = v/\lVert v\rVert$ and $s$ for the scale,
#
# | loss | logit $\ell(x, p)$ | README scale |
# |---|---|---|
# | Norm-SoftMax | $s\,\cos(x, p) = s\,\hat x^\top \hat p$ | 23 |
# | Proxy-NCA (as in the MemVir code) | $-s\,\lVert \hat x - \hat p\rVert^2$ | 12 |
#
# A logit depends on one embedding and one proxy only, which is what MemVir needs: it can hand the loss a longer
# list of proxies (chapter 4). This chapter writes both logits by hand, checks them against `memvir.losses`,
# looks at what the scale does on a 2-D toy, and shows a fact the paper does not state: **Proxy-NCA at scale $s$ is
# Norm-SoftMax at scale $2s$.**

# %% tags=["parameters"]
toy_classes = 5  # C of the 2-D toy
points_per_class = 40  # toy points per class
steps = 300  # gradient steps of the toy training
seed = 0  # seed of the toy data and proxies

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from IPython.display import Markdown, display

import memvir

_ = torch.manual_seed(seed)

# %% [markdown]
# ## The two logits, by hand
#
# The library computes Proxy-NCA's squared distance expanded as
# $2s\,\hat x^\top\hat p - s\lVert\hat x\rVert^2 - s\lVert\hat p\rVert^2$ (one matrix product); by hand we take
# the distance itself. Both are checked against `logits` and `forward` of `memvir.losses`.

# %%
B, C, D = 8, toy_classes, 16
x = torch.randn(B, D)  # (B, D) raw embeddings
labels = torch.randint(0, C, (B,))  # (B,)
nsm = memvir.NormSoftmax(C, D, scale=23.0)
pnca = memvir.ProxyNCA(C, D, scale=12.0)

def unit(v):
    return v / v.norm(dim=1, keepdim=True)


xh = unit(x)  # (B, D) unit rows
by_hand = {
    "Norm-SoftMax": 23.0 * xh @ unit(nsm.proxies).T,  # (B, C)
    "Proxy-NCA": -12.0 * torch.cdist(xh, unit(pnca.proxies)) ** 2,  # (B, C)
}
for name, loss in (("Norm-SoftMax", nsm), ("Proxy-NCA", pnca)):
    logits = by_hand[name]
    # the formula above: log-sum-exp over the classes minus the logit of the right class
    ce = (torch.logsumexp(logits, dim=1) - logits[torch.arange(B), labels]).mean()
    assert torch.allclose(loss.logits(x, loss.proxies), logits, atol=1e-4)
    assert torch.allclose(loss(x, labels), ce, atol=1e-5)
    print(f"{name}: by hand {ce.item():.4f} = library {loss(x, labels).item():.4f}")

# %% [markdown]
# ## A 2-D toy
#
# With $D = 2$ the unit embeddings lie on a circle and everything can be drawn. The toy has
# `toy_classes` classes, each a cluster of angles; the embeddings are fixed and only the proxies learn (Adam, as
# the official code trains them). Both losses end with one proxy per cluster.

# %%
rng = np.random.default_rng(seed)
centres = np.linspace(0, 2 * np.pi, toy_classes, endpoint=False) + 0.3
angles = np.concatenate([rng.normal(c, 0.25, points_per_class) for c in centres])
toy_labels = torch.from_numpy(np.repeat(np.arange(toy_classes), points_per_class))
toy_x = torch.from_numpy(np.stack([np.cos(angles), np.sin(angles)], 1)).float()  # (n, 2)


def fit_proxies(loss):
    """Train only the proxies of `loss` on the toy, return the loss curve."""
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    curve = []
    for _ in range(steps):
        value = loss(toy_x, toy_labels)
        opt.zero_grad()
        value.backward()
        opt.step()
        curve.append(value.item())
    return curve


torch.manual_seed(seed)
toys = {"Norm-SoftMax, s=23": memvir.NormSoftmax(toy_classes, 2, scale=23.0),
        "Proxy-NCA, s=12": memvir.ProxyNCA(toy_classes, 2, scale=12.0)}
curves = {name: fit_proxies(loss) for name, loss in toys.items()}

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
colors = plt.get_cmap("tab10").colors
for ax, (name, loss) in zip(axes[:2], toys.items()):
    ax.scatter(toy_x[:, 0], toy_x[:, 1], c=[colors[int(y)] for y in toy_labels], s=12,
               alpha=0.6)
    p = F.normalize(loss.proxies.detach(), dim=1)
    for c in range(toy_classes):
        ax.annotate("", xy=p[c].tolist(), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=colors[c], lw=2))
    ax.set_aspect("equal")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)
    ax.set_title(f"{name}: proxies (arrows)")
for name, curve in curves.items():
    axes[2].plot(curve, label=name)
axes[2].set_xlabel("step")
axes[2].set_title("loss while the proxies learn")
axes[2].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the scale does
#
# Unit vectors bound every cosine to $[-1, 1]$, so without a scale the logits differ by at most 2 and the
# softmax can never be confident: the loss stays high and keeps pushing even perfectly placed embeddings. The
# scale sets how sharp the softmax may become. Take one embedding at angle $\theta$ from its proxy and the other
# $C-1$ proxies spread evenly on the circle; the probability of the right class and the gradient of the loss
# with respect to $\theta$:

# %%
theta = torch.linspace(-math.pi, math.pi, 721, requires_grad=True)  # angle to its proxy
others = torch.tensor([2 * math.pi * c / toy_classes for c in range(1, toy_classes)])
prob, grad = {}, {}  # scale -> P(right class), |d loss / d theta|, each (721,)
for s in (1.0, 4.0, 12.0, 23.0, 46.0):
    angle = torch.stack([theta, *[theta - o for o in others]], dim=1)  # (721, C)
    logits = s * torch.cos(angle)  # (721, C)
    right = torch.zeros(len(theta), dtype=torch.long)  # class 0 is the right one
    value = F.cross_entropy(logits, right, reduction="sum")
    prob[s] = torch.softmax(logits, 1)[:, 0].detach()
    grad[s] = torch.autograd.grad(value, theta)[0].abs()

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for s in prob:
    axes[0].plot(theta.detach(), prob[s], label=f"s={s:g}")
    axes[1].plot(theta.detach(), grad[s], label=f"s={s:g}")
axes[0].set_title("P(right class) vs angle to its proxy")
axes[1].set_title("|d loss / d angle|")
axes[1].set_yscale("log")
axes[1].set_ylim(1e-8, 1e2)  # the gradient is 0 on the proxy (theta = 0), by symmetry
for ax in axes:
    ax.set_xlabel("angle (radians)")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# With a small scale the right class never gets a probability near 1, and an embedding a few degrees from its
# proxy still gets almost as much gradient as one far away: the loss keeps pulling at what is already right.
# With a large scale the gradient within the class's sector falls by orders of magnitude: training concentrates on
# the embeddings that are still wrong. The smallest loss a
# perfectly placed embedding can reach falls like $e^{-s(1-\cos(2\pi/C))}$ (the nearest other proxies
# dominate the sum):

# %%
# NBVAL_CHECK_OUTPUT
right = torch.zeros(1, dtype=torch.long)  # class 0, the embedding's own, at angle 0
# float64: the floor falls below float32's resolution
angles_all = torch.cat([torch.zeros(1), others]).double()
floor = {s: F.cross_entropy(s * torch.cos(angles_all)[None], right).item()
         for s in (1.0, 4.0, 12.0, 23.0, 24.0, 46.0)}
pd.DataFrame({"scale": list(floor),
              "loss at theta=0": [f"{v:.3g}" for v in floor.values()]}).set_index("scale")

# %% [markdown]
# ## Proxy-NCA at scale $s$ is Norm-SoftMax at scale $2s$
#
# For unit vectors $\lVert\hat x - \hat p\rVert^2 = 2 - 2\,\hat x^\top\hat p$, so
#
# $$\ell_{\text{Proxy-NCA}, s}(x, p) = -2s + 2s\cos(x, p) = \ell_{\text{Norm-SoftMax}, 2s}(x, p) - 2s.$$
#
# The two differ by the same constant $-2s$ for every class, and a softmax does not change when all its logits
# move by one constant. So the two losses are *equal*, value and gradient, for every embedding and every proxy.
# The official Proxy-NCA normalises both the embedding and the proxy before the distance, so
# this holds for the losses as trained, not only for a textbook version. Checked with the library:

# %%
torch.manual_seed(seed)
B, C, D = 32, 98, 512  # CARS196's classes and the README's embedding size
emb = torch.randn(B, D, requires_grad=True)
labels = torch.randint(0, C, (B,))
rows = []
for s in (12.0, 23.0 / 2, 1.0):
    a, b = memvir.ProxyNCA(C, D, scale=s), memvir.NormSoftmax(C, D, scale=2 * s)
    b.proxies.data.copy_(a.proxies.data)  # the same proxies
    shift = a.logits(emb, a.proxies) - b.logits(emb, b.proxies)  # (B, C): -2s everywhere
    la, lb = a(emb, labels), b(emb, labels)
    ga = torch.autograd.grad(la, [emb, a.proxies])
    gb = torch.autograd.grad(lb, [emb, b.proxies])
    assert torch.allclose(shift, torch.full_like(shift, -2 * s), atol=1e-4)
    assert torch.allclose(la, lb, atol=1e-5)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(ga, gb))
    rows.append({"Proxy-NCA scale": s, "Norm-SoftMax scale": 2 * s,
                 "logit shift": round(shift.mean().item(), 4),
                 "|loss difference|": f"{abs(la - lb).item():.0e}"})
pd.DataFrame(rows)

# %% [markdown]
# The README's two rows therefore train almost the same loss: Proxy-NCA at scale 12 *is* Norm-SoftMax at scale
# 24, next to Norm-SoftMax at 23. What remains different is the initialisation of the proxies (normal with
# standard deviation $\sqrt{2/D}$ for Proxy-NCA, uniform in $\pm 1/\sqrt{C}$ for Norm-SoftMax; both give random
# directions of similar length, which also sets how far Adam's steps turn them). It is no surprise, then, that the
# README's Proxy-NCA and Norm-SoftMax numbers agree within their standard deviations, with and without MemVir
# (chapter 6).

# %% [markdown]
# ## The other losses of Table 4, and pytorch-metric-learning's
#
# The paper applies MemVir to six losses (its Table 4); `memvir.losses` has them all, each owning `proxies`:
# `Softmax` (plain classifier weights), `CosFace` and `ArcFace` (a margin on the target's cosine or angle),
# `ProxyAnchor` (each proxy pools its batch's positives and negatives: not a per-row cross-entropy, so MemVir
# takes its plain path) and `SoftTriple` ($K$ centres per class, proxies $(CK, D)$). The tests check each against
# its formula written out and against pytorch-metric-learning (PML) with the same weights.
#
# A PML user keeps their loss and their loop: `memvir.MemVir(pml_loss, ...)` is the one line to add. The PML
# loss's own weight stays the parameter that learns, so the optimiser built over it keeps working.

# %%
import pytorch_metric_learning.losses as pml

torch.manual_seed(0)
model = torch.nn.Linear(32, D)  # stands for an embedding network
loss_func = pml.CosFaceLoss(num_classes=C, embedding_size=D)  # a PML loss, unchanged
optimizer = torch.optim.Adam([*model.parameters(), *loss_func.parameters()], lr=1e-3)
# the one line:
criterion = memvir.MemVir(loss_func, num_steps=3, step_gap=1, warmup_epochs=1)
log = []
for epoch in range(3):
    for step in range(5):
        x, y = torch.randn(16, 32), torch.randint(0, C, (16,))
        loss = criterion(model(x), y, epoch)  # was: loss_func(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log.append({"epoch": epoch, "step": step, "loss": round(loss.item(), 3),
                    "classes in use": criterion.num_classes_in_use})
assert loss_func.W.grad is not None  # PML's (D, C) weight received the gradients
pd.DataFrame(log).set_index(["epoch", "step"]).T

# %% [markdown]
# ## What we saw

# %% tags=["hide-input"]
worst = max(float(r["|loss difference|"]) for r in rows)
display(Markdown(
    "Both logits written by hand gave the library's loss to four decimals. On the "
    "circle, the scale sets the floor of the loss of a perfectly placed embedding: "
    f"{floor[1.0]:.3g} at $s = 1$, {floor[23.0]:.2g} at the README's $s = 23$. "
    "Proxy-NCA at scale $s$ and Norm-SoftMax at $2s$ differed by the constant logit "
    f"shift $-2s$ only, their losses by at most {worst:.0e} ({len(rows)} scales, "
    f"$C = {C}$, $D = {D}$), their gradients not at all beyond float32 rounding. "
    f"MemVir over PML's CosFace grew its classes from {log[0]['classes in use']} to "
    f"{log[-1]['classes in use']} with PML's own weight learning."))
