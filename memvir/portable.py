"""Portable CPU kernels: cap every library that picks its floating-point kernels by the CPU, before any of them loads.

Torch, oneDNN, MKL, OpenBLAS, numpy and faiss each look at the CPU's instruction set when they load and choose
kernels for it: on an AVX-512 machine they sum in other orders and fuse other operations than on an AVX2 one, so
the same run gives other floats from its first step, and a committed table cannot be reproduced elsewhere. Capped
at AVX2 (x86-64-v3: Intel since Haswell, 2013; AMD since Zen, 2017), they run the same kernels on every such
machine, with one exception that the instruction set does not cover: MKL also picks its code by the CPU's vendor.
Its AVX2 branch gave other matrix products on an Intel Xeon than on an AMD EPYC; its COMPATIBLE branch gave the
same bits on both, op by op (`python -m memvir kernels`; tests/kernels.json is this project's table). MKL's vector
math (torch's sqrt, behind the default Adam step) differs by vendor on every branch, so memvir.train uses torch's
fused Adam step, which does not call it.

`apply()` sets the caps as environment variables, so it must run before torch, numpy or faiss is imported; child
processes (papermill's kernels, torchrun's workers) inherit them. `python -m memvir` calls it first thing (see
memvir/__main__.py), so every command the pipeline, the Makefile and `--print-commands` run is capped; importing
memvir as a library changes nothing. A variable the user has set already is kept. `MEMVIR_PORTABLE=0` turns the
caps off: the fastest kernels of this CPU, and floats that match only a machine of the same kind.

Standard library only: this module is imported before anything else.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["SWITCH", "LEVEL", "CAPS", "enabled", "supported", "caps", "apply", "uncapped", "describe"]

SWITCH = "MEMVIR_PORTABLE"  # "0" (or false, no, off): no caps
LEVEL = "AVX2"  # the instruction set every capped library is held to

# The kernel-choosing libraries this project loads, and the variable each reads when it loads (found by reading
# each library's dispatch code and by hashing results with and without the variable; see bench/portable.py).
CAPS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised ATen kernels (default, avx2, avx512)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: torch's CPU convolutions and pooling
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN's name for it before version 2.5
    # MKL (torch's matrix products, and the vector math behind torch.exp): conditional numerical reproducibility.
    # Its AVX2 branch is one path on Intel CPUs and another on AMD ones; COMPATIBLE is the branch that gives the
    # same bits on both (measured op by op: `python -m memvir kernels`, tests/kernels.json).
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL's dispatch cap (on Intel CPUs MKL would take AVX-512)
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS of numpy, scipy (t-SNE, statistics) and faiss: its AVX2 kernels
    "FAISS_SIMD_LEVEL": "AVX2",  # faiss built with dynamic dispatch (1.12 and later): the search's SIMD code
    "FAISS_OPT_LEVEL": "avx2",  # faiss's older loader: which of its compiled libraries to load
}
# numpy's own SIMD loops (np.exp, reductions, sorting) dispatch by CPU feature; the names changed in numpy 2.4.
NUMPY_AVX512 = {"new": "X86_V4 AVX512_ICL AVX512_SPR",
                "old": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL "
                       "AVX512_SPR"}


def enabled(environ=None):
    """True unless MEMVIR_PORTABLE says 0, false, no or off."""
    environ = os.environ if environ is None else environ
    return environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def supported(cpuinfo="/proc/cpuinfo"):
    """(True, "") when this CPU can run at LEVEL, else (False, why): x86-64 with AVX2 and FMA, read on Linux."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return False, f"{platform.machine()} is not x86-64: its kernels are not capped"
    try:
        with open(cpuinfo) as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False, f"cannot read {cpuinfo} to check for AVX2: kernels not capped"
    if not {"avx2", "fma"} <= set(flags):
        return False, "this CPU has no AVX2: kernels not capped (it runs below the portable level already)"
    return True, ""


def caps():
    """{variable: value} that apply() sets: CAPS and numpy's, spelled for the installed numpy."""
    try:
        major, minor = (int(p) for p in metadata.version("numpy").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        major, minor = 2, 4
    return {**CAPS, "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512["new" if (major, minor) >= (2, 4) else "old"]}


def apply(environ=None):
    """Set the caps in `environ` (default os.environ) where not set already; return what was set.

    Call it before torch, numpy or faiss is imported in this process. Nothing is set when MEMVIR_PORTABLE=0 or
    the CPU cannot run at LEVEL.
    """
    environ = os.environ if environ is None else environ
    if not enabled(environ) or not supported()[0]:
        return {}
    added = {k: v for k, v in caps().items() if k not in environ}
    environ.update(added)
    return added


def uncapped(environ=None):
    """A copy of `environ` (default os.environ) without the caps apply() sets, for a child process that must run
    this CPU's own kernels (benchmarks and tests of the caps). OPENBLAS_CORETYPE is kept: some machines set it
    themselves, because older OpenBLAS builds compute wrong results on their CPU."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k not in caps() or k == "OPENBLAS_CORETYPE"}


def describe():
    """What this process's kernels are, for a run's config.json: mode, torch's CPU capability, the caps in force.

    mode is "portable" when the caps are in force and torch runs at LEVEL, "native" otherwise (MEMVIR_PORTABLE=0,
    a CPU or architecture that cannot be capped, or torch loaded before apply()).
    """
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability())
    ok, why = supported()
    in_force = {k: os.environ[k] for k in caps() if k in os.environ}
    portable = enabled() and ok and capability.upper() == LEVEL
    if not enabled():
        why = f"{SWITCH}=0"
    elif ok and not portable:
        why = f"torch runs at {capability}: it was loaded before the caps were set"
    return {"mode": "portable" if portable else "native", "cpu_capability": capability,
            "machine": platform.machine(), "why_native": "" if portable else why, "caps": in_force}
