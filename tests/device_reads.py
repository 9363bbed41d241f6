"""Count what would make the host wait for a GPU, on any device: `with device_reads(host=...) as seen: step()`.

On CUDA the host queues kernels and runs ahead; it waits when it needs a value that only the device has. A CPU run
has no device to wait for, but the code asks for the same things, so they can be counted deterministically:
  read       a tensor's value as a Python number (`item`, `int`, `float`, `bool`, `if t:`: aten::_local_scalar_dense),
             an op whose output size depends on values (nonzero, masked_select, unique, bincount,
             repeat_interleave without output_size, indexing with a boolean mask, torch.equal), or a tensor's
             contents on the host (`tolist`, `numpy`, `cpu`, `np.asarray(t)`);
  from host  a tensor made of Python or numpy values (`torch.tensor(list)`, `t[i] = 3`: aten::lift_fresh), which
             on CUDA is a host-to-device copy that waits for the device when the source is not pinned.
Tensors kept on the host by design (`host=`: MemVir's owner tables, read through numpy) are not counted. Not seen:
a copy by `.to(device)` (on a CPU run the host and the device are one); bench/memvir_step.py --device cuda counts
every synchronisation with torch.cuda.set_sync_debug_mode.
"""
import contextlib
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
TORCH = Path(torch.__file__).resolve().parent
# aten ops that read the device (the whole op name, or name.overload).
READ_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
            "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::bincount",
            "aten::equal", "aten::repeat_interleave.Tensor"}
INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}  # a mask: nonzero
HOST_METHODS = ("tolist", "numpy", "cpu")


def origin():
    """'path:line function' of the innermost caller outside torch and this file (where the read is asked for)."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path != Path(__file__).resolve() and TORCH not in path.parents:
            where = path.relative_to(ROOT) if ROOT in path.parents else path.name
            return f"{where}:{frame.lineno} {frame.name}"
    return "?"


class _Ops(TorchDispatchMode):
    """Record the reading ops and the tensors made from host values, as (kind, what, where)."""

    def __init__(self, seen, is_host):
        super().__init__()
        self.seen, self.is_host = seen, is_host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, overload = func._schema.name, func._overloadname
        first = args[0] if args else None
        if name in READ_OPS or f"{name}.{overload}" in READ_OPS:
            if not (name == "aten::repeat_interleave" and kwargs.get("output_size") is not None) \
                    and not (torch.is_tensor(first) and self.is_host(first)):
                self.seen.append(("read", name, origin()))
        elif name in INDEX_OPS and any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8)
                                       for i in (args[1] if len(args) > 1 else ()) if i is not None):
            self.seen.append(("read", f"{name} with a mask", origin()))
        elif name == "aten::lift_fresh":
            self.seen.append(("from host", name, origin()))
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_reads(host=()):
    """Yield a list that collects (kind, what, where) for each device read and host-made tensor in the block.

    Args:
        host: tensors that live on the host by design; reads of them (or of views of them) are not counted.
    """
    pointers = {t.untyped_storage().data_ptr() for t in host}

    def is_host(t):
        return t.device.type != "meta" and t.untyped_storage().data_ptr() in pointers

    seen = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}

    def counting(name):
        method = originals[name]

        def wrapper(self, *args, **kwargs):
            if not is_host(self):
                seen.append(("read", f"Tensor.{name}", origin()))
            return method(self, *args, **kwargs)
        return wrapper

    try:
        for name in HOST_METHODS:
            setattr(torch.Tensor, name, counting(name))
        with _Ops(seen, is_host):
            yield seen
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
