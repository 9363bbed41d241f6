"""MemVir: a memory of past steps whose embeddings and proxies come back as virtual classes (Ko et al. 2021, Sec. 3).

Symbols of the paper and their names here (notebooks/04_memvir.py has the same table):

    N  num_steps       how many past steps are taken as virtual classes
    M  step_gap        how many steps are skipped between two taken steps
    U  warmup_epochs   epochs trained before the memory starts filling
    C  num_classes     classes of the training set (= loss.num_classes: len(loss.proxies) / K, K proxies per class)

Per training step, exactly:
  1. Look at the memory as it is *before* this step.
  2. If epoch >= U, push this step's detached embeddings (B, D), labels (B,) and a copy of the proxies (C, D)
     (stored as the loss compares them: embeddings as `loss.embed(x)`, unit rows unless the loss has
     `normalize_embeddings=False`; proxies as `loss.embed_proxies(p)`, unit rows for Norm-SoftMax and Proxy-NCA);
     keep only the newest N*(M+1) steps.
  3. From the memory of step 1, newest first, take positions M, 2M+1, 3M+2, ... (every (M+1)-th step), at most N.
  4. The k-th taken step adds its embeddings with labels + k*C and its proxies as C more classes (C*K rows for a
     loss with K proxies per class, SoftTriple's centres); the loss is the wrapped loss over
     [current; taken embeddings] against [current proxies; taken proxies].
The memory starts empty after warm-up and fills one step at a time, so the number of classes grows from C to
(N+1)*C: the paper's curriculum.

Two ablations change one rule each (`fill`, `virtual`; the flags --mem_fill and --mem_virtual):
  * fill="full" (rule 2): the memory records from epoch U - ceil(N*(M+1) / steps_per_epoch) on, the last steps of
    the warm-up, but nothing is taken before epoch U; from epoch U's first step on all N steps are taken (rule 3
    on a memory already holding N*(M+1) steps): the virtual classes without the curriculum.
  * virtual="embeddings" (rule 4): a taken step brings its embeddings with their own labels (not shifted by k*C),
    scored against the current C proxies only: more samples of the seen classes, no virtual class.
    virtual="proxies": it brings its proxies as C more classes, which no label points at (negatives only), and no
    embeddings. virtual="current", the control of "proxies": it brings the *current* proxies, detached (as this
    step would store them), as those C more classes: as many negatives on the same schedule, none of them from the
    past. All three take the plain path below (the fast path's cache is rule 4's). They are for asking what part of
    MemVir does the work, not recommended settings: "proxies" gained on glyphs at an untuned scale but not at
    scales chosen on validation classes (the chapter "Where MemVir delivers", question 4).

Two ways to compute step 4, equal to float tolerance (tests/test_memory.py checks values and gradients):
  * plain: concatenate everything and call the loss, as the official code does. Cost O(N^2 B C D).
  * fast (default for losses with `decomposable = True`): a past embedding row only needs its target logit and the
    log-sum-exp of its logits against each taken step's proxies. Between two frozen past steps those numbers never
    change, and a step taken now is taken again M+1 steps later together with the same older steps, so only the
    pairs with the newest taken step are new. A margin on the target (CosFace, ArcFace, SoftTriple:
    `loss.margin_targets`) touches a row's own target, in its own step's block: the cache holds a past row's target
    and own-step log-sum-exp with the margin, as the plain path scores them. We cache one log-sum-exp per (row, pair
    of steps) and compute only
    what depends on the current parameters: current embeddings x all proxies and past embeddings x current proxies.
    Cost O(N B C D) per step.

The cache is saved in `state_dict()` with the memory, so a resumed run reads the very floats the uninterrupted one
reads. Recomputing it after a load is no substitute: the incremental fill scores a row against a newer step in a
(K*B, D) x (D, C) matmul, a recomputation would score it in another shape, and the cached floats would differ in the
last bits (issue 11). It costs S x 2N floats per row of the batch, next to the S x C x D of the proxy snapshots.
"""
import math
import numbers
import warnings
from collections import namedtuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_batch, in_proxies_dtype

MEM_FILLS = ("curriculum", "full")  # how the memory fills: the paper's curriculum first (--mem_fill)
# What a taken past step brings: MemVir's both first (--mem_virtual); "current" is the control of "proxies".
MEM_VIRTUALS = ("both", "embeddings", "proxies", "current")

__all__ = ["MemVir", "TakenStep", "ADAPTERS"]

# What MemVir reads from a loss: `proxies` (C*K, D), `num_classes`, `proxies_per_class`, `embed`, `embed_proxies`,
# `similarity`, `margin_targets`, `decomposable`, `normalize_embeddings` and a call `loss(emb, labels, proxies,
# check=...)`: the interface of memvir.losses.ProxyLoss. Another library's loss comes through an adapter that gives
# it this interface: {top-level package of the loss's class: adapter}. memvir.pml registers pytorch-metric-learning's
# when imported (memvir.MemVir imports it), so the adapter depends on the memory and not the reverse.
ADAPTERS = {}

# The most a memory may ask for (bytes) once full: a bound on nonsense (N = 10**9), not on real settings, which the
# device's own memory bounds first. SOP's paper setting (N=5, M=100) needs 11.7 GB.
MAX_MEMORY_BYTES = 1 << 40


def _count(name, value):
    """Return `value` as an int when it is a whole number >= 0 (an int, or a float like 3.0); else raise a one-line
    ValueError (NaN, inf, a bool, a string, a tensor: int() of them fails or truncates in ways that hide the bug)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float, np.floating)) or not (
            math.isfinite(value) and int(value) == value and value >= 0):
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)

# One past step as the next call takes it (rule 3), trimmed to its real batch: embeddings (n, D) as stored
# (`loss.embed` of the step's embeddings), labels (n,) as the batch had them (not shifted by k*C), proxies (C, D)
# as stored (`loss.embed_proxies` of the step's proxies).
TakenStep = namedtuple("TakenStep", ["step", "embeddings", "labels", "proxies"])
_IndexTables = namedtuple("_IndexTables", ["slots", "offsets", "offsets_np", "rows"])  # MemVir._tables


class MemVir(nn.Module):
    """Wrap a proxy loss with a memory of past steps used as virtual classes (MemVir, Sec. 3.2).

    Args:
        loss: a loss of memvir.losses (owns `proxies` (C, D)); it becomes `self.loss`. One of
            pytorch-metric-learning's proxy losses (CosFaceLoss, ProxyAnchorLoss, ...) is taken too: `self.loss` is
            then a memvir.pml.PMLLoss over it, and `self.loss.pml` the PML loss, whose parameter learns.
        num_steps: N, past steps taken as virtual classes (0 turns MemVir off).
        step_gap: M, steps skipped between two taken steps.
        warmup_epochs: U, epochs (counted from 0) before the memory starts filling.
        fast: use the cached O(N) computation when the loss allows it (`loss.decomposable`); else the plain one.
        storage: "device" keeps the memory beside the proxies (the default, as the official code); "host" keeps it
            in host memory (pinned when CUDA is present) and moves to the device only the K taken steps a step
            needs: for SOP with N=5, M=100 the proxy snapshots alone are 505 x 11,318 x 512 floats (11.7 GB).
            On a GPU the pushes to the host and the copies back are queued on the stream, so a step does not wait;
            `state_dict()` waits for them first (read `mem_emb` on the host only after a synchronisation).
        storage_dtype: dtype of the stored embeddings and proxies; None keeps the proxies' dtype (exact fp32).
            torch.float16 or torch.bfloat16 halve the memory; both paths then read the same rounded values.
        fill: "curriculum" (the official rule 2: pushes from epoch U on, the taken steps grow 0..N) or "full"
            (pushes from epoch U - ceil(N*(M+1) / steps_per_epoch) on, taken from epoch U on: all N at once).
        virtual: what a taken step brings: "both" (rule 4), "embeddings" (its rows with their own labels, against
            the current proxies), "proxies" (its proxies as C more classes, negatives only) or "current" (the
            current proxies' detached copies in their place: the control of "proxies"). The ablations always take
            the plain path (simple and exact; `fast` is for rule 4), and are not recommended settings (above).
        steps_per_epoch: the training steps of one epoch (the loader's batches); needed by fill="full" only.
        (A call pushes only in a training step: in `criterion.eval()` mode or under `torch.no_grad()`, e.g. for a
        validation loss, the memory is read as in training and never written, as BatchNorm's running statistics.)
        check: how a step that takes past steps checks the batch's values (labels in [0, C), finite embeddings;
            with `check` the wrapped loss checks the warm-up's batch itself; the plain path hands it the
            concatenation with `check=False`, its values known good).
            True: one device->host read (a synchronisation on CUDA) and a one-line ValueError. False: asserted on
            the device, reading nothing, in the warm-up too (`check_batch(values="assert")`, the loss called with
            `check=False`): a bad batch is then a RuntimeError on
            the CPU and a device-side assert on CUDA, which ends the process's CUDA context. Shapes and dtypes are
            checked on the host either way.

    Example: C = 4 classes, N = 2 past steps taken every M + 1 = 2 steps, from epoch U = 1.

        >>> import torch, memvir
        >>> criterion = memvir.MemVir(memvir.losses.NormSoftmax(4, 8), num_steps=2, step_gap=1, warmup_epochs=1)
        >>> for epoch in range(2):
        ...     for step in range(3):
        ...         value = criterion(torch.randn(6, 8), torch.randint(0, 4, (6,)), epoch)  # (B, D), (B,)
        >>> criterion.num_taken, criterion.num_classes_in_use  # 2 steps in memory before the last: 1 taken
        (1, 8)
    """

    STORED = ("mem_emb", "mem_labels", "mem_sizes", "mem_proxies", "num_pushed")  # the memory (memory_bytes)
    CACHE = ("lse_cache", "target_cache", "lse_owner", "target_owner")  # the fast path's cache, saved too

    def __init__(self, loss, num_steps, step_gap, warmup_epochs=0, fast=True, storage="device", storage_dtype=None,
                 fill="curriculum", virtual="both", steps_per_epoch=None, check=True):
        super().__init__()
        for name, value in (("num_steps", num_steps), ("step_gap", step_gap), ("warmup_epochs", warmup_epochs)):
            _count(f"MemVir {name}", value)
        package = type(loss).__module__.split(".")[0]
        if package in ADAPTERS:  # e.g. a PML proxy loss: our formula over its own weight (memvir/pml.py)
            loss = ADAPTERS[package](loss)
        if not isinstance(getattr(loss, "proxies", None), torch.Tensor) or loss.proxies.dim() != 2:
            raise ValueError("MemVir loss: expected a loss with a `proxies` parameter of shape (C, D)" +
                             (f" (a {package} loss: import memvir.pml first, whose adapter MemVir then uses)"
                              if package == "pytorch_metric_learning" else ""))
        self.loss = loss
        self.num_steps, self.step_gap, self.warmup_epochs = int(num_steps), int(step_gap), int(warmup_epochs)
        if self.num_steps == 0:  # legal (an ablation's control), but a run labelled MemVir that is the loss alone
            warnings.warn("MemVir num_steps=0 (--mem_num_step 0): no past step is ever taken; this is the wrapped "
                          "loss alone", stacklevel=2)
        self.capacity = self.num_steps * (self.step_gap + 1)  # N*(M+1) steps kept
        self.fast, self.check = bool(fast), bool(check)
        if storage not in ("device", "host"):
            raise ValueError(f"MemVir storage: expected 'device' or 'host', got {storage!r}")
        if storage_dtype not in (None, torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise ValueError(f"MemVir storage_dtype: expected None or a torch float dtype, got {storage_dtype!r}")
        self.storage, self.storage_dtype = storage, storage_dtype
        if fill not in MEM_FILLS:
            raise ValueError(f"MemVir fill: expected one of {', '.join(MEM_FILLS)}, got {fill!r}")
        if virtual not in MEM_VIRTUALS:
            raise ValueError(f"MemVir virtual: expected one of {', '.join(MEM_VIRTUALS)}, got {virtual!r}")
        self.fill, self.virtual, self.steps_per_epoch = fill, virtual, steps_per_epoch
        self.fill_from = self._fill_from()  # the first epoch that pushes (rule 2); the memory is used from U on
        C, D = loss.proxies.shape
        dtype = storage_dtype or loss.proxies.dtype
        S, W = self.capacity, max(2 * self.num_steps - 1, 0)
        # What the memory will hold once full (proxy snapshots, the fast path's owners), said before it is asked
        # for: N = 10**9 otherwise failed deep inside torch.zeros, or much later at the first push.
        need = S * C * D * torch.finfo(dtype).bits // 8 + 8 * S * (W + 2)
        if need > MAX_MEMORY_BYTES:
            raise ValueError(f"MemVir num_steps={self.num_steps}, step_gap={self.step_gap}: the memory keeps N(M+1) = "
                             f"{S:,} steps, whose proxy snapshots alone ({S:,} x C={C:,} x D={D:,}) take "
                             f"{need / 2**30:,.1f} GiB; expected N(M+1) x C x D to fit in memory (the paper's largest "
                             f"setting, SOP with N=5, M=100, takes 11.7 GB)")
        # The ring buffers. Their batch dimension is allocated at the first push (and grows if a larger batch
        # comes); they are buffers, so they follow .to(device) and are saved in state_dict().
        self.register_buffer("mem_emb", torch.zeros(S, 0, D, dtype=dtype))  # (S, Bmax, D) past embeddings
        self.register_buffer("mem_labels", torch.zeros(S, 0, dtype=torch.long))  # (S, Bmax) their labels
        self.register_buffer("mem_sizes", torch.zeros(S, dtype=torch.long))  # (S,) rows used in each slot
        self.register_buffer("mem_proxies", torch.zeros(0, C, D, dtype=dtype))  # (S, C, D) proxies, allocated lazily
        self.register_buffer("num_pushed", torch.zeros((), dtype=torch.long))  # steps pushed so far
        # Fast-path cache, saved so that a resume is bitwise (module docstring): for the slot of a past step q,
        # lse_cache[slot, d, i] = logsumexp_c logit(emb_q[i], proxies_q'[c]) with q' = q + (d - N + 1)(M+1), and
        # target_cache[slot, i] = logit(emb_q[i], proxies_q[label_i]); each entry is valid when its owner (the push
        # index it was computed for; -1: none) is the step in the slot. The owners are host tensors, read through
        # numpy views every step without a device sync.
        self.register_buffer("lse_cache", torch.zeros(S, W, 0))  # (S, 2N-1, Bmax)
        self.register_buffer("target_cache", torch.zeros(S, 0))  # (S, Bmax)
        self.register_buffer("lse_owner", torch.full((S, W), -1, dtype=torch.long))  # (S, 2N-1), on the host
        self.register_buffer("target_owner", torch.full((S,), -1, dtype=torch.long))  # (S,), on the host
        self.num_taken = 0  # past steps used by the last call (for the curriculum plot)
        self.num_embeddings_in_use = 0  # rows in the last call's loss: B + sum of taken batch sizes
        self._index_tables = {}  # device -> _IndexTables (`_tables`), derived from N and M: not saved
        self._sync_from_buffers()

    # ---- what the rest of the code reads -------------------------------------------------------------------
    @property
    def num_classes(self):
        """C, the classes of one step: the loss's `num_classes` (its proxies may hold K rows per class)."""
        return getattr(self.loss, "num_classes", self.loss.proxies.shape[0])

    @property
    def num_classes_in_use(self):
        """C * (1 + number of past steps taken by the last call); C alone for virtual="embeddings"."""
        return self.num_classes * (1 + (self.num_taken if self.virtual != "embeddings" else 0))

    @property
    def memory_bytes(self):
        """Bytes held by the memory (embeddings, labels, proxy snapshots), wherever it is stored; not the cache."""
        return sum(self._buffers[n].numel() * self._buffers[n].element_size() for n in self.STORED)

    def _fill_from(self):
        """Return the first epoch that pushes: U, or for fill="full" early enough to hold N*(M+1) steps at U."""
        if self.fill == "curriculum" or self.capacity == 0:
            return self.warmup_epochs
        spe = self.steps_per_epoch
        if isinstance(spe, bool) or not isinstance(spe, (int, np.integer)) or spe < 1:
            raise ValueError(f"MemVir steps_per_epoch: expected an integer >= 1 with fill='full', got {spe!r}")
        lead = math.ceil(self.capacity / spe)  # epochs of pushes that fill the memory before epoch U
        if lead > self.warmup_epochs:
            raise ValueError(f"--mem_fill=full records the last N*(M+1)={self.capacity} steps of the warm-up, but "
                             f"--warm_epoch={self.warmup_epochs} gives {self.warmup_epochs * spe} ({spe} per epoch); "
                             f"expected --warm_epoch >= {lead}")
        return self.warmup_epochs - lead

    def reset(self):
        """Empty the memory (as at the start of training)."""
        self.num_pushed.zero_()
        self.mem_sizes.zero_()
        self.num_taken = self.num_embeddings_in_use = 0
        self._sync_from_buffers()

    def taken_steps(self):
        """Return the push indices of the past steps the next call takes, newest first (rule 3)."""
        count = min(self._num_pushed, self.capacity)
        positions = [k * (self.step_gap + 1) - 1 for k in range(1, self.num_steps + 1)]  # M, 2M+1, ...
        return [self._num_pushed - 1 - j for j in positions if j < count]

    def taken(self):
        """Return the past steps the next call takes, newest first, as TakenStep(step, embeddings, labels, proxies).

        Each is trimmed to its real batch size n and copied to the proxies' device and dtype (later pushes do not
        change it): embeddings (n, D) as stored (`loss.embed` rows, rounded if `storage_dtype` is set), labels (n,)
        unshifted, proxies (C, D) as stored (`loss.embed_proxies` rows). The k-th (from 1) is the k-th virtual
        class block of rule 4 (MemVir Sec. 3.2).
        """
        out = []
        for q in self.taken_steps():
            slot = q % self.capacity
            n = self._sizes[slot]
            out.append(TakenStep(q, self._fetch(self.mem_emb[slot, :n], copy=True),  # (n, D)
                                 self._fetch(self.mem_labels[slot, :n], copy=True),  # (n,)
                                 self._fetch(self.mem_proxies[slot], copy=True)))  # (C, D)
        return out

    # ---- the step --------------------------------------------------------------------------------------------
    def forward(self, emb, labels, epoch):
        """Return this step's loss over the current batch and the virtual classes of the taken past steps.

        Args:
            emb: (B, D) embeddings of the current batch (gradients flow to them).
            labels: (B,) labels in [0, C), of any integer dtype.
            epoch: the current epoch, counted from 0; the memory is used from epoch warmup_epochs on and fills
                from epoch `fill_from` on (warmup_epochs, earlier for fill="full").
        """
        # Shapes and dtypes here, on the host; the values below, once per step (`check`). int32 or uint8 labels
        # are common; cross-entropy and the memory want int64.
        labels = check_batch(emb, labels, self.num_classes, self.loss.embedding_size, values=None)
        epoch = _count("MemVir epoch", epoch)
        if not getattr(self.loss, "native", False):  # fp16, bf16, fp64 networks: scored in the proxies' dtype
            emb = in_proxies_dtype(emb, self.loss.proxies)  # (B, D)
        # Rules 1 and 3: the memory as it is before this step. Nothing is taken in the warm-up, where fill="full"
        # already pushes; the fast path's cache is filled only when a step is taken, so at epoch U it scores the
        # N steps afresh, as the plain path does.
        steps = self.taken_steps() if epoch >= self.warmup_epochs else []
        slots = [q % self.capacity for q in steps]
        self.num_taken = len(steps)
        past_rows = sum(self._sizes[s] for s in slots) if self.virtual in ("both", "embeddings") else 0
        self.num_embeddings_in_use = emb.shape[0] + past_rows
        embedded = None  # (emb_hat, proxies_hat) when the fast path has them: the push reuses them
        # The values are checked once. With no step taken and `check` the loss is handed this very batch and checks
        # them itself (one read, the same message). Otherwise here: a PMLLoss with native=True runs PML's own
        # forward, which does not check; the plain path's loss sees the concatenation (labels up to (1+K)C:
        # checking it would be a second read); the fast path calls no loss; check=False asserts on the device.
        here = bool(steps) or getattr(self.loss, "native", False) or not self.check
        if here:  # with `check`, the step's one device read
            check_batch(emb, labels, self.num_classes, self.loss.embedding_size, "read" if self.check else "assert")
        if not steps:
            loss = self.loss(emb, labels, check=not here)
        elif self.fast and self.virtual == "both" and getattr(self.loss, "decomposable", False):
            loss, embedded = self._fast_loss(emb, labels, steps, slots)
        else:  # also the ablations (virtual="embeddings", "proxies", "current"): plain only, the cache is rule 4's
            loss = self._plain_loss(emb, labels)
        # Rule 2, after the loss (whose inputs are copies, not the buffers); only for a training step: a
        # validation loss (criterion.eval(), or under torch.no_grad()) reads the memory and never writes it, as
        # BatchNorm's running statistics are read, not updated, in eval mode.
        if epoch >= self.fill_from and self.capacity > 0 and self.training and torch.is_grad_enabled():
            self._push(emb, labels, embedded)
        return loss

    def _plain_loss(self, emb, labels):
        """Rule 4 as written: one concatenated batch against one concatenated proxy list (or an ablation's part).

        virtual="embeddings" keeps the past rows' own labels and the current proxies alone; virtual="proxies" keeps
        the current batch alone against all the proxies; virtual="current" against the current proxies and as many
        detached copies of them as steps are taken. The loss reads C' = len(proxies) / K classes from the list,
        so SoftTriple's K centres and Proxy-Anchor's anchors over the batch need nothing more.
        """
        C = self.num_classes
        embs, labs, proxies = [emb], [labels], [self.loss.proxies]
        if self.virtual == "current":  # the control: as many negative blocks as steps taken, all the current proxies
            now = self.loss.embed_proxies(self.loss.proxies.detach())  # (C, D), as a push stores them, no gradient
            proxies += [now] * len(self.taken_steps())
        for k, past in enumerate(self.taken() if self.virtual != "current" else [], start=1):
            if self.virtual in ("both", "embeddings"):
                embs.append(past.embeddings)  # (n_k, D), no gradient
                labs.append(past.labels + k * C if self.virtual == "both" else past.labels)  # virtual or seen class
            if self.virtual in ("both", "proxies"):
                proxies.append(past.proxies)  # (C, D), no gradient
        # The values are checked (forward's one read; the memory holds checked rows): the loss checks shapes only.
        return self.loss(torch.cat(embs), torch.cat(labs), torch.cat(proxies), check=False)

    def _fast_loss(self, emb, labels, steps, slots):
        """Rule 4 with the constant past x past logits cached: same value and gradients, O(N) per step."""
        D = self.loss.proxies.shape[1]
        K = len(slots)
        proxies = self.loss.proxies  # (P, D), trainable; P = C proxy rows (C*K for SoftTriple)
        # Index tensors are views of tables kept on the device (`_tables`): no host-to-device copy, no sync.
        tables = self._tables(emb.device)
        slot_idx = tables.slots[slots[0], :K]  # (K,) = slots: the k-th taken step is M+1 slots before the (k-1)-th
        past_emb, past_labels, past_proxies = (self._gather(self.mem_emb, slots, slot_idx),  # (K, Bmax, D)
                                               self._gather(self.mem_labels, slots, slot_idx),  # (K, Bmax)
                                               self._gather(self.mem_proxies, slots, slot_idx))  # (K, P, D)
        if self.mem_emb.dtype != proxies.dtype:  # rounded on storage: embed again, as the plain path does
            past_emb, past_proxies = self.loss.embed(past_emb.flatten(0, 1)).view_as(past_emb), \
                self.loss.embed_proxies(past_proxies.flatten(0, 1)).view_as(past_proxies)
        Bmax = past_emb.shape[1]
        full = all(self._sizes[s] == Bmax for s in slots)  # the common case: every taken batch fills its slot

        # Current rows against all (1+K)C classes: the only block where embeddings get gradients. Two pieces, so
        # that backward computes no gradient for the K*C frozen proxies. What is stored is already embedded.
        emb_hat, proxies_hat = self.loss.embed(emb), self.loss.embed_proxies(proxies)  # (B, D), (P, D)
        logits = torch.cat([self.loss.similarity(emb_hat, proxies_hat),  # (B, C)
                            self.loss.similarity(emb_hat, past_proxies.flatten(0, 1))], dim=1)  # (B, (1+K)C)
        current = F.cross_entropy(self.loss.margin_targets(logits, labels), labels, reduction="sum")

        # Past rows: logsumexp over the current proxies (gradient to proxies) and over the taken steps' proxies
        # (constant, from the cache). A past row's target is in its own step's block, so the margin is in the cache.
        self._fill_cache(steps, slots, slot_idx, past_emb, past_labels, past_proxies)
        d = tables.offsets[:K, :K]  # (K, K): offset of step j seen from step k
        frozen_lse = torch.logsumexp(self.lse_cache[slot_idx[:, None], d], dim=1)  # (K, Bmax)
        live = self.loss.similarity(past_emb.reshape(K * Bmax, D), proxies_hat)  # (K*Bmax, C)
        lse = torch.logaddexp(torch.logsumexp(live, dim=1).view(K, Bmax), frozen_lse)  # (K, Bmax)
        past = lse - self.target_cache.index_select(0, slot_idx)  # (K, Bmax)
        if not full:  # padding rows of smaller batches count zero (torch.where of an all-true mask is `past` itself)
            if self.mem_sizes.device == proxies.device:  # (K,) on the device: no copy of a host list
                sizes = self._gather(self.mem_sizes, slots, slot_idx)
            else:  # host storage: this step's push writes mem_sizes on the host, maybe under a queued copy of it
                sizes = torch.tensor([self._sizes[s] for s in slots], pin_memory=True).to(proxies.device,
                                                                                          non_blocking=True)
            past = torch.where(tables.rows[None, :Bmax] < sizes[:, None], past, torch.zeros_like(past))
        loss = (current + past.sum()) / self.num_embeddings_in_use  # B + the taken rows, counted on the host
        return loss, (emb_hat.detach(), proxies_hat.detach())

    @torch.no_grad()
    def _fill_cache(self, steps, slots, slot_idx, past_emb, past_labels, past_proxies):
        """Compute the cache entries the taken steps need and do not have yet (normally: the newest step's)."""
        K, C, N = len(slots), self.num_classes, self.num_steps
        Bmax = past_emb.shape[1]
        tables = self._tables(self.lse_cache.device)
        d = tables.offsets_np[:K, :K]  # (K, K): d[k, j] = k - j + N - 1
        q, slots_np = np.asarray(steps), np.asarray(slots)
        lse_owner, target_owner = self._lse_owner, self._target_owner  # numpy views, taken once per step
        missing = lse_owner[slots_np[:, None], d] != q[:, None]  # (K, K): pair (k, j) not cached
        # A step whose target is not cached is new to the cache: compute its whole row of pairs at once.
        for kk in range(K):
            if target_owner[slots[kk]] == steps[kk]:
                continue
            logits = self.loss.similarity(past_emb[kk], past_proxies.flatten(0, 1)).view(Bmax, K, C)  # (Bmax, K, C)
            if self.loss.target_logit is not None:  # the margin on each row's target, in its own step's block
                logits[:, kk] = self.loss.margin_targets(logits[:, kk], past_labels[kk])
            logits = logits.to(self.lse_cache.dtype)
            # Step j's log-sum-exp goes to row kk's offset d[kk, j] = kk - j + N - 1 (j = 0..K-1), a device table.
            self.lse_cache[slots[kk]].index_copy_(0, tables.offsets[kk, :K], torch.logsumexp(logits, dim=2).T)
            own = logits[:, kk]  # (Bmax, C): against its own proxies; the target written in place, (Bmax, 1)
            torch.gather(own, 1, past_labels[kk][:, None], out=self.target_cache[slots[kk], :, None])
            target_owner[slots[kk]] = steps[kk]
            lse_owner[slots[kk], d[kk]] = steps[kk]
            missing[kk] = False
        # Remaining gaps, one proxy step at a time (normally the newest taken step's column). All K rows are
        # scored and the missing ones kept: one matmul, no second copy of the past embeddings. A row's own step is
        # never among them (it is filled with its target above, and both are invalidated together), so no margin.
        for jj in np.flatnonzero(missing.any(axis=0)):
            rows = np.flatnonzero(missing[:, jj])
            logits = self.loss.similarity(past_emb.reshape(K * Bmax, -1), past_proxies[jj])  # (K*Bmax, C)
            logits = logits.to(self.lse_cache.dtype)
            lse = torch.logsumexp(logits, dim=1).view(K, Bmax)  # (K, Bmax)
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo == len(rows):  # consecutive rows (the usual case: all but the newest), offsets consecutive
                self.lse_cache[slot_idx[lo:hi], tables.rows[lo - jj + N - 1:hi - jj + N - 1]] = lse[lo:hi]
            else:  # scattered rows (rare): one at a time, by host integers (an index tensor from the host would
                for r in rows.tolist():  # be a copy that waits for the device on CUDA)
                    self.lse_cache[slots[r], int(d[r, jj])] = lse[r]
            lse_owner[slots_np[rows], d[rows, jj]] = q[rows]

    # ---- the ring buffers ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _push(self, emb, labels, embedded=None):
        """Store this step's embeddings, labels and proxies in the slot of the oldest step (rule 2).

        `embedded`: (loss.embed(emb), loss.embed_proxies(proxies)) when the caller has them (the same floats).
        """
        B = emb.shape[0]
        if B > self.mem_emb.shape[1] or self.mem_proxies.shape[0] == 0:
            self._grow(max(B, self.mem_emb.shape[1]))
        slot = self._num_pushed % self.capacity
        # Stored as the loss compares them (`loss.embed` for embeddings, `loss.embed_proxies` for proxies), so that
        # no step has to map the N(M+1) snapshots again; every logit is the same as with the raw rows, up to rounding.
        # copy_ rounds to the storage dtype; non_blocking: from a GPU into pinned host storage the copy is queued on
        # the stream (no wait), and the taken steps' copies back to the device come after it on the same stream.
        emb_hat, proxies_hat = embedded or (self.loss.embed(emb.detach()),
                                            self.loss.embed_proxies(self.loss.proxies.detach()))
        self.mem_emb[slot, :B].copy_(emb_hat, non_blocking=True)
        self.mem_labels[slot, :B].copy_(labels, non_blocking=True)
        self.mem_sizes[slot].fill_(B)  # B as a kernel argument: no tensor made from a host value to copy
        self.mem_proxies[slot].copy_(proxies_hat, non_blocking=True)
        self.num_pushed += 1
        self._sizes[slot] = B
        self._num_pushed += 1
        self._target_owner[slot] = -1  # a new step in this slot: its cache entries are stale
        self._lse_owner[slot] = -1

    def _grow(self, batch):
        """(Re)allocate the buffers for batches of up to `batch` rows, keeping what is stored."""
        S, old = self.capacity, self.mem_emb.shape[1]
        C, D = self.loss.proxies.shape
        self._wait_for_pushes()  # what is kept is read on the host

        def widen(t, shape):
            new = self._alloc(shape, t.dtype)
            new[:, :old] = t[:, :old]
            return new

        self.mem_emb = widen(self.mem_emb, (S, batch, D))
        self.mem_labels = widen(self.mem_labels, (S, batch))
        if self.mem_proxies.shape[0] == 0:
            self.mem_proxies = self._alloc((S, C, D), self.mem_proxies.dtype)
        self._sync_from_buffers()

    def _alloc(self, shape, dtype):
        """A zeroed memory buffer where the storage option says (zeros: padding rows must stay finite)."""
        if self.storage == "device":
            return torch.zeros(shape, dtype=dtype, device=self.loss.proxies.device)
        return torch.zeros(shape, dtype=dtype, pin_memory=torch.cuda.is_available())

    def _gather(self, stored, slots, slot_idx):
        """The K taken slots of a stored buffer (S, ...) as a (K, ...) copy on the proxies' device and dtype.

        Stored beside the proxies: one index_select by `slot_idx`, a view of a device table (`_tables`), not
        `buffer[index]` (the same rows, ~5x faster on the CPU). Stored on the host for a GPU: one copy per slot,
        each from pinned memory and so asynchronous; a gather on the host would read slots whose pushes may still
        be in flight, into pageable memory, whose copy to the device waits for the stream.
        """
        p = self.loss.proxies
        if stored.device == p.device:
            return self._fetch(stored.index_select(0, slot_idx))
        return torch.stack([self._fetch(stored[s]) for s in slots])

    def _fetch(self, stored, copy=False):
        """Bring stored memory to the proxies' device and dtype (a no-op for default storage, unless `copy`)."""
        p = self.loss.proxies
        dtype = p.dtype if stored.is_floating_point() else stored.dtype
        return stored.to(device=p.device, dtype=dtype, non_blocking=True, copy=copy)

    def _tables(self, device):
        """Return the step's small index tables on `device`, built once per device and batch width.

        slots (S, N): slots[p, k] = (p - k(M+1)) mod S, the slot of the k-th taken step when the newest taken one
        is in slot p (rule 3 over the ring); offsets (N, N): offsets[k, j] = k - j + N - 1, the cache's offset of
        step j seen from step k (also as numpy, for the host owner tables); rows: 0, 1, ... up to max(Bmax, 2N-1).
        Views of them index every step, so a step copies no index from the host and never waits for the device.
        """
        width = max(self.mem_emb.shape[1], 2 * self.num_steps - 1)
        tables = self._index_tables.get(device)
        if tables is None or tables.rows.numel() != width:
            S, N, step = self.capacity, self.num_steps, self.step_gap + 1
            k = torch.arange(N)
            offsets = k[:, None] - k[None, :] + N - 1  # (N, N)
            tables = _IndexTables(slots=((torch.arange(S)[:, None] - step * k[None, :]) % S).to(device),  # (S, N)
                                  offsets=offsets.to(device), offsets_np=offsets.numpy(),
                                  rows=torch.arange(width, device=device))
            self._index_tables[device] = tables
        return tables

    # numpy views of the owner tables (host tensors), made afresh at each use so that a copy of the module
    # (copy.deepcopy, pickle) never reads another module's tables.
    @property
    def _lse_owner(self):
        return self.lse_owner.numpy()

    @property
    def _target_owner(self):
        return self.target_owner.numpy()

    def _sync_from_buffers(self, keep_cache=False):
        """Mirror the counters on the host (no device sync per step); unless `keep_cache`, empty the cache."""
        self._num_pushed = int(self.num_pushed)
        self._sizes = [int(s) for s in self.mem_sizes.tolist()]
        if keep_cache:
            return
        batch = self.mem_emb.shape[1]
        # The cache lives beside the proxies, in their dtype, whatever the storage.
        dev, dtype = self.loss.proxies.device, self.loss.proxies.dtype
        self.lse_cache = torch.zeros(self.capacity, max(2 * self.num_steps - 1, 0), batch, dtype=dtype, device=dev)
        self.target_cache = torch.zeros(self.capacity, batch, dtype=dtype, device=dev)
        self.lse_owner.fill_(-1)
        self.target_owner.fill_(-1)

    def _wait_for_pushes(self):
        """Host storage for a GPU: wait for the pushes' queued copies, before the host reads the memory."""
        if self.storage == "host" and self.loss.proxies.is_cuda:
            torch.cuda.current_stream(self.loss.proxies.device).synchronize()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._wait_for_pushes()  # the saved tensors are read on the host
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        # Another N or M keeps another number of steps: say so before anything of ours changes (the object stays
        # usable), instead of torch's size mismatch for mem_sizes.
        saved = state_dict.get(prefix + "mem_sizes")
        if saved is not None and saved.shape[0] != self.capacity:
            raise ValueError(f"MemVir load_state_dict: this memory keeps N(M+1) = {self.capacity} steps (N="
                             f"{self.num_steps}, M={self.step_gap}); the state_dict's keeps {saved.shape[0]}: it was "
                             f"saved by a MemVir with another N or M")
        problem = self._memory_problem({n: state_dict[prefix + n] for n in self.STORED if prefix + n in state_dict})
        if problem:  # values no push could have written: refused before anything changes, as the shapes above
            raise ValueError(f"MemVir load_state_dict: {problem}; expected a state_dict saved by MemVir.state_dict()")
        # The saved memory may hold a different batch width (or be allocated when ours is not): take its shapes,
        # the memory where the storage option says (pinned on the host), the cache where it is.
        for name in ("mem_emb", "mem_labels", "mem_proxies", "lse_cache", "target_cache"):
            saved, ours = state_dict.get(prefix + name), getattr(self, name)
            if saved is not None and saved.shape != ours.shape:
                setattr(self, name, self._alloc(saved.shape, ours.dtype) if name in self.STORED else
                        torch.zeros(saved.shape, dtype=ours.dtype, device=ours.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)
        cache = [prefix + n for n in self.CACHE]
        has_cache = all(k in state_dict for k in cache)
        if not has_cache:  # saved before the cache was saved: it is recomputed, equal up to rounding only
            missing_keys[:] = [k for k in missing_keys if k not in cache]
        self._sync_from_buffers(keep_cache=has_cache)

    def _memory_problem(self, saved):
        """What makes a saved memory one that pushes cannot have written, or None (checked on the host, once)."""
        if len(saved) < len(self.STORED):
            return None  # torch names the missing keys
        n, sizes, labels = saved["num_pushed"], saved["mem_sizes"], saved["mem_labels"]
        emb, proxies = saved["mem_emb"], saved["mem_proxies"]
        if n.dim() != 0 or n.is_floating_point() or int(n) < 0:
            return f"num_pushed is {n.tolist()!r} (a count of pushes: an integer >= 0)"
        C, D = self.loss.proxies.shape
        if emb.dim() != 3 or emb.shape[0] != self.capacity or emb.shape[2] != D or labels.shape != emb.shape[:2]:
            return (f"mem_emb {tuple(emb.shape)} and mem_labels {tuple(labels.shape)} (this memory holds "
                    f"({self.capacity}, B, {D}) and ({self.capacity}, B))")
        if proxies.shape[0] not in (0, self.capacity) or tuple(proxies.shape[1:]) != (C, D):
            return (f"mem_proxies {tuple(proxies.shape)} (this memory holds ({self.capacity}, {C}, {D}) or "
                    f"(0, {C}, {D}))")
        if ((sizes < 0) | (sizes > emb.shape[1])).any():
            return f"mem_sizes {sizes.tolist()} (batch sizes lie in [0, {emb.shape[1]}])"
        used = torch.arange(emb.shape[1])[None, :] < sizes.cpu()[:, None]  # (S, Bmax): the stored rows
        stored = labels.cpu()[used]
        if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) >= self.num_classes):
            return (f"stored labels from {int(stored.min())} to {int(stored.max())} (a push stores labels in [0, "
                    f"{self.num_classes}))")
        if not torch.isfinite(emb.cpu()[used]).all() or not torch.isfinite(proxies).all():
            return "stored embeddings or proxies that are not finite (NaN or inf)"
        return None

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .double() reach every buffer. Host storage stays where it is, and an explicit
        # storage dtype stays that dtype; the cache and the wrapped loss follow the module as usual, but the
        # cache's owners are host bookkeeping (read through numpy views) and stay on the host.
        stored = {n: self._buffers[n] for n in self.STORED}
        owners = {n: self._buffers[n] for n in ("lse_owner", "target_owner")}
        super()._apply(fn, *args, **kwargs)
        for n in self.STORED:
            if self.storage == "host":
                self._buffers[n] = stored[n]
            elif self.storage_dtype is not None and stored[n].is_floating_point():
                self._buffers[n] = self._buffers[n].to(self.storage_dtype)
        self._buffers.update(owners)
        return self

    def extra_repr(self):
        return (f"num_steps={self.num_steps}, step_gap={self.step_gap}, warmup_epochs={self.warmup_epochs}, "
                f"capacity={self.capacity}, fast={self.fast}, storage={self.storage}, "
                f"storage_dtype={self.storage_dtype}, fill={self.fill}, virtual={self.virtual}, "
                f"steps_per_epoch={self.steps_per_epoch}, check={self.check}")
