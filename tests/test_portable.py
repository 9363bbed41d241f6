"""memvir.portable: the CPU kernels capped before anything loads, and a fingerprint that catches drifting floats.

Oracles: each library's own report of the kernels it runs (torch's capability, numpy's SIMD table, threadpoolctl's
OpenBLAS core, faiss's SIMD level) in a fresh `python -m memvir` process, compared with the same libraries in a
process without the caps; and a fingerprint of a short training committed in tests/fingerprint.json, with the
table of the kernels it rests on, op by op, in tests/kernels.json (memvir/kernels.py). Both are made by
`python tests/test_portable.py --update` (run it only when a change of the numbers is intended, and say why).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memvir import portable

HERE = Path(__file__).resolve().parent
FINGERPRINT = HERE / "fingerprint.json"
KERNELS = HERE / "kernels.json"  # the op table of the CPU that made the fingerprint
CAPPABLE, WHY = portable.supported()
needs_caps = pytest.mark.skipif(not CAPPABLE, reason=f"this machine's kernels cannot be capped: {WHY}")

# What the libraries say they run, printed as JSON by a fresh process (started through memvir's entry point, or not).
PROBE = """
import json, sys
{prelude}
import numpy, torch, faiss, threadpoolctl
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # numpy.show_runtime's source
simd = {{k: __cpu_features__.get(k, False) for k in __cpu_dispatch__}}  # the dispatch targets it will use
print(json.dumps({{
    "torch": str(torch.backends.cpu.get_cpu_capability()),
    "numpy_avx512": sorted(k for k, on in simd.items() if on and ("AVX512" in k or "V4" in k)),
    "openblas": sorted({{i.get("architecture") for i in threadpoolctl.threadpool_info()
                         if i["internal_api"] == "openblas"}}),
    "faiss": faiss.SIMDConfig.get_level_name() if hasattr(faiss, "SIMDConfig") else "static",
}}))
"""


def probe(capped, extra_env=None):
    """Run PROBE in a fresh interpreter: with memvir's caps applied first (as `python -m memvir` does), or none."""
    env = {**portable.uncapped(), **(extra_env or {})}
    prelude = "from memvir import portable; portable.apply()" if capped else ""
    out = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the caps -------------------------------------------------------------------------------------------------


def test_apply_sets_every_cap_once_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(portable, "supported", lambda: (True, ""))
    env = {"OPENBLAS_CORETYPE": "Zen"}  # set by the user (or the machine): kept
    added = portable.apply(env)
    assert env["OPENBLAS_CORETYPE"] == "Zen" and "OPENBLAS_CORETYPE" not in added
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["FAISS_SIMD_LEVEL"] == "AVX2" and "NPY_DISABLE_CPU_FEATURES" in env
    assert portable.apply(env) == {}  # a second call changes nothing


@pytest.mark.parametrize("switch", ["0", "false", "No", " off "])
def test_the_switch_turns_the_caps_off(monkeypatch, switch):
    monkeypatch.setattr(portable, "supported", lambda: (True, ""))
    env = {"MEMVIR_PORTABLE": switch}
    assert portable.apply(env) == {} and set(env) == {"MEMVIR_PORTABLE"}


def test_supported_reads_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(portable.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx fma avx2 avx512f\n")
    assert portable.supported(str(cpuinfo)) == (True, "")
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx\n")  # Sandy Bridge: no AVX2
    ok, why = portable.supported(str(cpuinfo))
    assert not ok and "no AVX2" in why
    assert portable.supported(str(tmp_path / "none"))[0] is False
    monkeypatch.setattr(portable.platform, "machine", lambda: "aarch64")
    ok, why = portable.supported(str(cpuinfo))
    assert not ok and "aarch64" in why
    env = {}
    monkeypatch.setattr(portable, "supported", lambda: (False, "aarch64"))
    assert portable.apply(env) == {} and env == {}  # nothing capped where nothing can be


@pytest.mark.parametrize("version,name", [("2.4.6", "X86_V4"), ("3.0.0", "X86_V4"), ("2.3.1", "AVX512_SKX"),
                                          ("1.26.4", "AVX512F")])
def test_numpy_features_are_spelled_for_its_version(monkeypatch, version, name):
    monkeypatch.setattr(portable.metadata, "version", lambda pkg: version)
    assert name in portable.caps()["NPY_DISABLE_CPU_FEATURES"].split()


@needs_caps
def test_every_library_runs_at_avx2_when_capped():
    native, capped = probe(False), probe(True)
    assert capped == {"torch": "AVX2", "numpy_avx512": [], "openblas": ["Haswell"], "faiss": "AVX2"}, capped
    # Without the caps the same libraries may take more (AVX-512 here, where the CPU has it): then the caps are
    # what made the difference, and this test would fail if a cap stopped working.
    assert native["torch"] in ("AVX2", "AVX512")
    if native["torch"] == "AVX512":  # an AVX-512 CPU: numpy's own loops would take it too, uncapped
        assert native["numpy_avx512"], native


@needs_caps
def test_a_run_records_its_kernels(tmp_path):
    tiny = ["--data_name", "glyphs", "--num_classes", "20", "--instances_per_class", "10", "--input_size", "16",
            "--batch_size", "32", "--dim", "16", "--epochs", "1", "--no_progress"]
    native = probe(False)["torch"]
    for switch, mode, capability in (("1", "portable", "AVX2"), ("0", "native", native)):
        run = tmp_path / switch
        env = {**portable.uncapped(), "MEMVIR_PORTABLE": switch, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "memvir", "train", *tiny, "--save_path", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        kernels = json.loads((run / "config.json").read_text())["kernels"]
        assert (kernels["mode"], kernels["cpu_capability"]) == (mode, capability), kernels
        assert f"({mode} kernels, {capability})" in out.stdout.splitlines()[0]


# ---- the fingerprint: a short training whose bits are committed ---------------------------------------------

FINGERPRINT_ARGS = ["--data_name", "glyphs", "--num_classes", "24", "--instances_per_class", "8", "--input_size",
                    "16", "--batch_size", "24", "--n_instance", "2", "--dim", "16", "--epochs", "3", "--memvir",
                    "1", "--mem_num_step", "2", "--mem_step_gap", "1", "--warm_epoch", "1", "--max_to_keep", "1",
                    "--no_progress"]


def fingerprint(folder, switch="1"):
    """Train FINGERPRINT_ARGS in `folder` (a fresh process, portable kernels unless switch="0"); what it computed.

    weights: SHA-256 of the last checkpoint's network, proxies and MemVir memory (every tensor's bytes, in key
    order); metrics: every evaluation's metrics at full precision (wall times left out).
    """
    import torch

    env = {**portable.uncapped(), "MEMVIR_PORTABLE": switch, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "memvir", "train", *FINGERPRINT_ARGS, "--save_path", str(folder)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (ckpt,) = sorted((Path(folder) / "checkpoints").glob("epoch_*.pt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    digest = hashlib.sha256()
    for part in ("model", "criterion"):
        for key, tensor in sorted(state[part].items()):
            digest.update(key.encode())
            digest.update(tensor.detach().contiguous().numpy().tobytes())
    metrics = json.loads((Path(folder) / "metrics.json").read_text())
    evaluations = [{k: v for k, v in e.items() if k != "wall_time"} for e in metrics["evaluations"]]
    return {"weights": digest.hexdigest(), "evaluations": evaluations}


def kernel_table():
    """This CPU's op table, from a fresh `python -m memvir kernels` (capped as every run is)."""
    env = {**portable.uncapped(), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "memvir", "kernels"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@needs_caps
def test_training_matches_the_committed_fingerprint(tmp_path):
    committed = json.loads(FINGERPRINT.read_text())
    got = fingerprint(tmp_path / "run")
    if got["evaluations"] == committed["evaluations"] and got["weights"] == committed["weights"]:
        return
    # The bits moved. Either this CPU computes a kernel of the training differently from the CPU that made the
    # fingerprint (then no code can make them equal here: say which kernel, which library, which variable), or
    # every kernel agrees and the code changed the numbers (a failure).
    from memvir import kernels

    diffs = kernels.differences(kernel_table(), json.loads(KERNELS.read_text()), in_training=True)
    if diffs:
        pytest.skip("the committed fingerprint cannot be reproduced on this CPU, whose floats differ from the "
                    f"reference machine's: {kernels.explain(diffs, json.loads(KERNELS.read_text()))}: compare its runs with "
                    "the committed tables within the seed spread, not bit for bit (README, 'The same numbers')")
    assert got["evaluations"] == committed["evaluations"], (
        "the short training's metrics moved, and every kernel of tests/kernels.json gives the same bits here: a "
        "change of code (or of a kernel the table lacks) changes the project's numbers "
        f"(committed {committed['evaluations']}, now {got['evaluations']})")
    assert got["weights"] == committed["weights"], (
        "same metrics, other weights, and every kernel of tests/kernels.json gives the same bits here: the code (or "
        "a kernel the table lacks) moved the floats")


def test_kernel_differences_name_the_op_the_library_and_its_variable():
    from memvir import kernels

    ref = {"made_on": {"cpu": "Intel(R) Xeon(R)", "vendor": "GenuineIntel"},
           "ops": {"mm": {"library": "MKL BLAS", "hash": "a", "in_training": True},
                   "conv": {"library": "oneDNN", "hash": "b", "in_training": True},
                   "sqrt": {"library": "MKL vector math", "hash": "c", "in_training": False},
                   "gone": {"library": "ATen", "hash": "d", "in_training": True}}}
    mine = {"ops": {"mm": {"library": "MKL BLAS", "hash": "a", "in_training": True},
                    "conv": {"library": "oneDNN", "hash": "B", "in_training": True},
                    "sqrt": {"library": "MKL vector math", "hash": "C", "in_training": False},
                    "new": {"library": "ATen", "hash": "e", "in_training": True}}}
    assert [d[0] for d in kernels.differences(mine, ref)] == ["conv", "sqrt"]
    assert [d[0] for d in kernels.differences(mine, ref, in_training=True)] == ["conv"]
    line = kernels.explain(kernels.differences(mine, ref), ref)
    assert line.startswith("2 kernel(s) give other bits here than on Intel(R) Xeon(R) (GenuineIntel)")
    assert "oneDNN: conv (chosen by ONEDNN_MAX_CPU_ISA" in line and "MKL vector math: sqrt" in line
    assert "\n" not in line


def test_kernels_against_a_file_that_is_no_table_is_one_line(tmp_path, capsys, monkeypatch):
    from memvir import kernels

    monkeypatch.setattr(kernels, "table", lambda: {"made_on": {}, "ops": {}})  # no need to run the ops here
    (tmp_path / "t.json").write_text("[1, 2]")
    assert kernels.main(["--against", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --against {tmp_path / 't.json'}: not a kernel table") and err.count("\n") == 1


def test_the_committed_tables_describe_one_capped_machine():
    from memvir import kernels

    table, made = json.loads(KERNELS.read_text()), json.loads(FINGERPRINT.read_text())["made_on"]
    assert table["made_on"]["mode"] == "portable" and table["made_on"]["cpu"] == made["cpu"]
    assert table["made_on"]["caps"]["MKL_CBWR"] == portable.CAPS["MKL_CBWR"]  # made under today's caps
    assert all(entry["library"] in kernels.LIBRARIES for entry in table["ops"].values())


@needs_caps
def test_the_fingerprint_sees_a_change_of_kernels(tmp_path):
    # The same training on this CPU's own kernels (uncapped, MKL's branch for this CPU included): its weights
    # must differ from the committed ones, or the fingerprint could not catch a change of kernels.
    assert fingerprint(tmp_path / "native", switch="0")["weights"] != json.loads(FINGERPRINT.read_text())["weights"]


if __name__ == "__main__":  # python tests/test_portable.py --update: commit a new fingerprint (say why)
    import platform
    import tempfile

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_portable.py --update")
    with tempfile.TemporaryDirectory() as tmp:
        got = fingerprint(Path(tmp) / "run")
    KERNELS.write_text(json.dumps(kernel_table(), indent=1) + "\n")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    made = {"cpu": cpu, "native_capability": probe(False)["torch"], "machine": platform.machine()}
    FINGERPRINT.write_text(json.dumps({"made_on": made, "args": FINGERPRINT_ARGS, **got}, indent=1) + "\n")
    print(f"wrote {FINGERPRINT}: {got['weights']}")
