#!/usr/bin/env bash
# The GPU check (issue 14): one short run (under 5 minutes on one GPU) of what the CPU machines cannot test:
#   1. the tests marked `gpu` (tests/test_gpu.py): MemVir on the device and storage="host" pinned, AMP fp16 +
#      GradScaler training, --decode gpu (nvJPEG), faiss-gpu search if installed, DDP over NCCL with >1 GPU;
#   2. bench/paper_step.py --quick on CUDA;
#   3. bench/memvir_step.py --device cuda: the CARS196 settings (short) and the fixed-cost sweep (one round), each
#      variant's step also counted for host-device synchronisations.
# Results: results/bench/gpu_tests.json, gpu_paper_step.json, gpu_memvir_step.json, gpu_memvir_step_fixed.json
# (GPU_CHECK_OUT to change).
# Without CUDA it says so and exits 0, having run and written nothing.
#
#   bash bench/gpu_check.sh
set -uo pipefail
case "$0" in */*) cd "${0%/*}/.." ;; *) cd .. ;; esac  # the repository root
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || [ -n "${PYTHON:-}" ] || PY=python3
OUT=${GPU_CHECK_OUT:-results/bench}

if ! "$PY" -c 'import torch' 2>/dev/null; then  # not "no GPU": the check itself cannot run
    echo "gpu_check: cannot run '$PY' with torch (expected the project's .venv/bin/python, or PYTHON=...)" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False): nothing run, nothing written"
    exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0),
          "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
mkdir -p "$OUT"
status=0
start=$(date +%s)

# ====== 1. the gpu tests ======
timeout 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rA \
    --junitxml="$OUT/gpu_tests.xml" || status=1
"$PY" - "$OUT/gpu_tests.xml" "$OUT/gpu_tests.json" <<'EOF' || status=1
import json, sys, xml.etree.ElementTree as ET
cases = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    reason = next((c.get("message", "") for c in case if c.tag in ("failure", "error", "skipped")), "")
    cases.append({"test": case.get("name"), "outcome": kind, "seconds": float(case.get("time", 0)),
                  "message": reason[:300]})
json.dump({"tests": cases, "counts": {k: sum(c["outcome"] == k for c in cases)
                                      for k in ("passed", "failure", "error", "skipped")}},
          open(sys.argv[2], "w"), indent=2)
print("gpu_check: tests", {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")})
EOF
rm -f "$OUT/gpu_tests.xml"

# ====== 2. the paper-scale step ======
timeout 150 "$PY" -m bench.paper_step --quick --device cuda --out "$OUT/gpu_paper_step.json" || status=1

# ====== 3. the MemVir step ======
timeout 60 "$PY" -m bench.memvir_step --quick --device cuda --out "$OUT/gpu_memvir_step.json" || status=1
timeout 40 "$PY" -m bench.memvir_step --fixed-cost --rounds 1 --repeats 5 --device cuda \
    --out "$OUT/gpu_memvir_step_fixed.json" || status=1

echo "gpu_check: done in $(( $(date +%s) - start )) s, exit status $status; results in $OUT/gpu_*.json"
exit $status
