#!/usr/bin/env bash
# mmfl GPU check: run from a bundle made by `make gpu-bundle` on a machine with a GPU, CUDA and
# torch 2.11 (found through python3; nothing is installed). Runs every gpu-labelled test,
# compute-sanitizer memcheck and racecheck over the kernel tests, and mmfl_bench --quick on every
# op, each step under a time limit and all of them under one budget (MMFL_GPU_CHECK_BUDGET
# seconds, 420 by default), so the whole check ends within 8 minutes. Logs, gtest JSON, the bench
# JSON and summary.json go to OUT.
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
# lib/: what the binaries need beyond glibc and torch; lib/fallback/ (the CUDA runtime) after the
# torch wheel's nvidia/*/lib, so that torch's own copy is the one loaded when it has one.
base_path="$root/lib:$torch_lib${nvidia_libs:+:$nvidia_libs}:$root/lib/fallback"
export LD_LIBRARY_PATH="$base_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >>"$out/gpu_check.log" 2>&1

# Do the binaries start here (shared libraries found, glibc and libstdc++ new enough)? First with
# the machine's libstdc++, then with the bundle's (lib/gcc: it needs a newer glibc, see MANIFEST).
# A bundle that cannot load says why instead of failing every step.
binaries_start() {
  local b
  for b in mmfl_kernels_test test_fusion_cuda; do
    "$bin/$b" --gtest_list_tests >/dev/null 2>"$out/preflight_$b.log" || { failing=$b; return 1; }
  done
  "$bin/mmfl_bench" --help >/dev/null 2>"$out/preflight_mmfl_bench.log" || { failing=mmfl_bench; return 1; }
}
failing=""
if ! binaries_start; then
  log "bin/$failing does not start with this machine's libstdc++: $(head -2 "$out/preflight_$failing.log" | tr '\n' ' ')"
  export LD_LIBRARY_PATH="$root/lib/gcc:$LD_LIBRARY_PATH"
  if ! binaries_start; then
    log "bin/$failing does not start on this machine: $(head -3 "$out/preflight_$failing.log" | tr '\n' ' ')"
    log "bundle: $(grep -E '^(glibc|libstdc\+\+|libs):' "$root/MANIFEST" 2>/dev/null | tr '\n' ' '); here: $(ldd --version 2>&1 | head -1)"
    exit 2
  fi
  log "using the bundle's libstdc++ (lib/gcc)"
fi
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# Is there a GPU? Without one, say so and stop: a skipped check must not look like a pass.
gpu=$("$py" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>>"$out/python.log")
if [[ -z "$gpu" ]]; then
  smi="not found"
  command -v nvidia-smi >/dev/null && smi=$(nvidia-smi -L 2>&1 | head -1)
  log "no GPU visible: torch.cuda.is_available() is False (nvidia-smi: ${smi:-no output}); nothing checked"
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
budget=${MMFL_GPU_CHECK_BUDGET:-420}
deadline=$((start + budget))
# step NAME LIMIT_S COMMAND...: runs with a time limit (cut to what is left of the budget), logs to
# OUT/NAME.log, records the result. A step with under 15 s left is not started (and counts as a
# failure: the check is incomplete).
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  if [[ $left -lt 15 ]]; then
    log "$(printf '%-22s %-28s' "$name" "not run: budget spent")"
    summary+=("{\"step\": \"$name\", \"status\": \"not run: budget of ${budget} s spent\"}")
    failed=1
    return
  fi
  [[ $limit -gt $left ]] && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=passed
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then status="timed out after ${limit} s"; failed=1
  elif [[ $rc -ne 0 ]]; then status="failed (exit $rc)"; failed=1; fi
  # A test that skipped (no usable device after all) or a bench without CUDA rows is not a pass.
  if [[ $status == passed ]]; then
    local skipped
    skipped=$(not_checked "$name")
    if [[ -n "$skipped" ]]; then status="failed: $skipped"; failed=1; fi
  fi
  log "$(printf '%-22s %-28s %4d s  (%s.log)' "$name" "$status" "$dt" "$name")"
  summary+=("{\"step\": \"$name\", \"status\": \"$status\", \"exit\": $rc, \"seconds\": $dt}")
}

# not_checked STEP: empty when the step's JSON shows that everything ran; otherwise what did not.
not_checked() {
  local json
  case $1 in
    kernel_tests | fusion_cuda_tests | bench) json="$out/$1.json" ;;
    memcheck | racecheck) json="$out/$1_tests.json" ;;
    *) return ;;
  esac
  "$py" - "$1" "$json" <<'PY' 2>&1
import json, sys
step, path = sys.argv[1], sys.argv[2]
try:
    data = json.load(open(path))
except Exception as e:
    print(f"no readable {path.rsplit('/', 1)[-1]} ({e.__class__.__name__})")
    sys.exit()
if step == "bench":
    rows = data.get("rows", data) if isinstance(data, dict) else data
    cuda = [r for r in rows if isinstance(r, dict) and str(r.get("backend", "")).startswith("cuda")]
    if not cuda:
        print("no CUDA rows in bench.json")
    sys.exit()
skipped = [f"{s['name']}.{t['name']}" for s in data.get("testsuites", [])
           for t in s.get("testsuite", []) if t.get("result") == "SKIPPED"]
if skipped:
    print(f"{len(skipped)} test(s) skipped, e.g. {skipped[0]}")
PY
}

# Every gpu-labelled test (the ctest label gpu: kernel tests named */cuda*, the CUDA adapters).
# The kernel tests' JSON carries, per registry case, each output's largest error as a fraction of
# its bound (error_over_bound_*).
step kernel_tests 90 "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*' \
  --gtest_output="json:$out/kernel_tests.json"
step fusion_cuda_tests 60 "$bin/test_fusion_cuda" --gtest_output="json:$out/fusion_cuda_tests.json"
# The benchmark before the sanitizers: its numbers are what bench/RESULTS.md needs, and the
# sanitizers are the steps most likely to run long.
step bench 90 "$bin/mmfl_bench" --device cuda --quick --json "$out/bench.json"
# The nccl backend at one rank (no mpirun here): NCCL's communicator and its all-reduce on this
# GPU, 1 MB to 256 MB, checked against the expected sums.
if [[ -x "$bin/mmfl_comm_bench" ]]; then
  step nccl_one_rank 40 "$bin/mmfl_comm_bench" --backend nccl --device cuda --max-mb 256 \
    --json "$out/nccl_one_rank.json"
fi
# The same kernel tests under compute-sanitizer (without the *Size* sweeps: it slows kernels
# 10-100x).
if [[ -n "$sanitizer" ]]; then
  step memcheck 120 "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check full \
    "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*-*Size*' \
    --gtest_output="json:$out/memcheck_tests.json"
  step racecheck 120 "$sanitizer" --tool racecheck --error-exitcode 1 \
    "$bin/mmfl_kernels_test" --gtest_filter='*/cuda*-*Size*' \
    --gtest_output="json:$out/racecheck_tests.json"
else
  log "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*): memcheck and racecheck not run"
  summary+=("{\"step\": \"memcheck\", \"status\": \"not run: no compute-sanitizer\"}")
  summary+=("{\"step\": \"racecheck\", \"status\": \"not run: no compute-sanitizer\"}")
  failed=1
fi

total=$(( $(date +%s) - start ))
{
  printf '{"gpu": "%s", "seconds": %d, "failed": %s, "steps": [' "$gpu" "$total" \
    "$([[ $failed -eq 0 ]] && echo false || echo true)"
  (IFS=,; printf '%s' "${summary[*]}")
  printf ']}\n'
} >"$out/summary.json"
log "done in $total s; $( [[ $failed -eq 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED' ); results in $out"
exit $failed
