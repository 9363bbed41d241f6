"""Writing while training: config.json, steps.csv and TensorBoard events (rank 0 writes them)."""
from __future__ import annotations

import csv
import dataclasses
import math
import os

from ..files import atomic_json, atomic_write

KERNELS_KEY = "kernels"  # config.json's one key that is not a flag: the CPU kernels of the run


class RunOutputs:
    """The files rank 0 writes while training: config.json, steps.csv and TensorBoard events (closed on exit)."""

    def __init__(self, cfg, step, is_main, kernels=None):
        self.cfg, self.step, self.is_main, self.kernels = cfg, step, is_main, kernels
        self.steps = self.writer = None

    def __enter__(self):
        if self.is_main:
            # Imported here: TensorBoard (the 'train' extra) takes 0.3 s, and the report and the pipeline, which
            # import memvir.rundir, never write events.
            from torch.utils.tensorboard import SummaryWriter

            # The flags, and the CPU kernels the run trained with (memvir.portable.describe): not a flag, a fact.
            config = dataclasses.asdict(self.cfg)
            if self.kernels is not None:
                config[KERNELS_KEY] = self.kernels
            atomic_json(config, os.path.join(self.cfg.save_path, "config.json"))
            self.steps = StepLog(os.path.join(self.cfg.save_path, "steps.csv"), keep_below=self.step)
            # purge_step hides the events a killed run wrote after its last checkpoint (all of them when none).
            writer = SummaryWriter(self.cfg.save_path, purge_step=self.step)
            events = getattr(getattr(writer.file_writer, "event_writer", None), "_file_name", self.cfg.save_path)
            self.writer = _NamedErrors(writer, events)
        return self

    def __exit__(self, *exc):
        for f in (self.steps, self.writer):
            if f is not None:
                f.close()


def write_eval_scalars(writer, ev, history, improved, ks):
    """TensorBoard scalars with the official names (eval_epoch/*, eval_step/*, *_best)."""
    for k in ks:
        writer.add_scalar(f"eval_epoch/Recall_{k}", ev[f"recall@{k}"], ev["epoch"])
        writer.add_scalar(f"eval_step/Recall_{k}", ev[f"recall@{k}"], ev["step"])
    for name, key in (("RP", "r_precision"), ("MAP", "map_at_r"), ("NMI", "nmi")):
        if ev.get(key) is not None:
            writer.add_scalar(f"eval_epoch/{name}", ev[key], ev["epoch"])
            writer.add_scalar(f"eval_step/{name}", ev[key], ev["step"])
    for name, key in {"Recall_1": "recall@1", "RP": "r_precision", "MAP": "map_at_r"}.items():
        if key in improved:
            writer.add_scalar(f"eval_epoch/{name}_best", history["best"][key]["value"], ev["epoch"])
    for key, value in (ev.get("val") or {}).items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"eval_val/{key}", value, ev["epoch"])




class _NamedErrors:
    """`target`'s methods, whose OSError without a file name (a buffered write on a full disk: "[Errno 28] No space
    left on device") is given `path`, so that memvir.files.os_error_line names the file."""

    def __init__(self, target, path):
        self._target, self._path = target, path

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def named(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except OSError as exc:
                if exc.filename is None:
                    exc.filename = self._path
                raise
        return named


class StepLog:
    """steps.csv: one row per step, appended; on resume the rows of steps after the checkpoint are dropped."""

    COLUMNS = ("step", "epoch", "loss", "lr", "num_taken", "num_classes_in_use", "num_embeddings_in_use")

    def __init__(self, path, keep_below=0):
        kept = []
        if keep_below > 0 and os.path.exists(path):
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    try:
                        if int(row["step"]) < keep_below and None not in row.values():
                            kept.append([row[c] for c in self.COLUMNS])
                    except (TypeError, ValueError, KeyError):
                        pass  # a line cut short by a kill
        atomic_write(path, lambda fh: csv.writer(fh).writerows([self.COLUMNS, *kept]), mode="w")
        self.fh = _NamedErrors(open(path, "a", newline=""), path)  # a full disk shows at a write or the flush
        self.writer = csv.writer(self.fh)

    def write(self, step, epoch, loss, lr, num_taken, classes, embeddings):
        self.writer.writerow([step, epoch, repr(float(loss)), repr(float(lr)), num_taken, classes, embeddings])

    def flush(self):
        self.fh.flush()

    def close(self):
        self.fh.close()
