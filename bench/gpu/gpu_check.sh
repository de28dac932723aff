#!/usr/bin/env bash
# mmfl GPU check: run from a bundle made by `make gpu-bundle` on a machine with a GPU, CUDA and
# torch 2.11 (found through python3; nothing is installed). Runs every gpu-labelled test,
# compute-sanitizer memcheck and racecheck over the kernel tests, and mmfl_bench --quick on every
# op, each step under a time limit so the whole check fits in 8 minutes. Logs, gtest JSON, the
# bench JSON and summary.json go to OUT.
#   bench/gpu/gpu_check.sh OUT            (in the bundle: make gpu-check OUT=DIR)
# Exit status: 0 all steps passed, 1 a step failed or timed out, 2 bad usage or a broken bundle,
# 3 no GPU visible (nothing was checked).
set -uo pipefail

out=${1:-}
if [[ -z "$out" ]]; then
  echo "usage: $0 OUT_DIR   (or: make gpu-check OUT=DIR)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=${MMFL_BUNDLE_ROOT:-$(cd "$here/../.." && pwd)}
bin=$root/bin
mkdir -p "$out" || { echo "gpu-check: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
start=$(date +%s)
summary=()

log() { echo "gpu-check: $*" | tee -a "$out/gpu_check.log"; }

for b in mmfl_kernels_test test_fusion_cuda mmfl_bench; do
  [[ -x "$bin/$b" ]] || { log "bundle is missing bin/$b (rebuild it with make gpu-bundle)"; exit 2; }
done

# LibTorch and CUDA's runtime libraries come from this machine's torch (and its nvidia-* wheels);
# the bundle's lib/ holds the few others the binaries were linked with.
torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>"$out/python.log")
if [[ -z "$torch_lib" ]]; then
  log "$py cannot import torch (see $out/python.log); set PYTHON=/path/to/python with torch 2.11"
  exit 2
fi
nvidia_libs=$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "lib"))})))
PY
)
export LD_LIBRARY_PATH="$root/lib:$torch_lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >>"$out/gpu_check.log" 2>&1

# Is there a GPU? Without one, say so and stop: a skipped check must not look like a pass.
gpu=$("$py" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>>"$out/python.log")
if [[ -z "$gpu" ]]; then
  smi=$(nvidia-smi -L 2>&1 | head -1)
  log "no GPU visible: torch.cuda.is_available() is False (nvidia-smi: ${smi:-not found}); nothing checked"
  printf '{"gpu": null, "status": "no GPU visible", "steps": []}\n' >"$out/summary.json"
  exit 3
fi
log "GPU: $gpu"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1

sanitizer=$(command -v compute-sanitizer || true)
for d in ${CUDA_HOME:-} /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-12; do
  [[ -z "$sanitizer" && -n "$d" && -x "$d/bin/compute-sanitizer" ]] && sanitizer=$d/bin/compute-sanitizer
done
[[ -z "$sanitizer" ]] && sanitizer=$(ls /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)

failed=0
# step NAME LIMIT_S COMMAND...: runs with a time limit, logs to OUT/NAME.log, records the result.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=passed
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then status="timed out after ${limit} s"; failed=1
  elif [[ $rc -ne 0 ]]; then status="failed (exit $rc)"; failed=1; fi
  log "$(printf '%-22s %-28s %4d s  (%s.log)' "$name" "$status" "$dt" "$name")"
  summary+=("{\"step\": \"$name\", \"status\": \"$status\", \"exit\": $rc, \"seconds\": $dt}")
}

# Every gpu-labelled test (the ctest label gpu: kernel tests named */cuda*, the CUDA adapters).
step kernel_tests 120 "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*' \
  --gtest_output="json:$out/kernel_tests.json"
step fusion_cuda_tests 60 "$bin/test_fusion_cuda" --gtest_output="json:$out/fusion_cuda_tests.json"
# The same kernel tests under compute-sanitizer (on fewer cases: it slows kernels 10-100x).
if [[ -n "$sanitizer" ]]; then
  step memcheck 120 "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check full \
    "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*-*Size*'
  step racecheck 120 "$sanitizer" --tool racecheck --error-exitcode 1 \
    "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*-*Size*'
else
  log "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*): memcheck and racecheck not run"
  summary+=("{\"step\": \"memcheck\", \"status\": \"not run: no compute-sanitizer\"}")
  failed=1
fi
step bench 120 "$bin/mmfl_bench" --device cuda --quick --json "$out/bench.json"

total=$(( $(date +%s) - start ))
{
  printf '{"gpu": "%s", "seconds": %d, "failed": %s, "steps": [' "$gpu" "$total" \
    "$([[ $failed -eq 0 ]] && echo false || echo true)"
  (IFS=,; printf '%s' "${summary[*]}")
  printf ']}\n'
} >"$out/summary.json"
log "done in $total s; $( [[ $failed -eq 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED' ); results in $out"
exit $failed
