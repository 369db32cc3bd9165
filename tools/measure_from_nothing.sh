#!/usr/bin/env bash
# Time the course's make commands from nothing: a fresh clone of this repository, an empty pip cache and an
# empty model cache, on this machine. docs/measurements.md's times come from this script; rerun it after a change.
#
#   tools/measure_from_nothing.sh                      # install, models, course; this CPU as it is
#   tools/measure_from_nothing.sh --emulate-avx2       # the same, computing like an AVX2-only CPU
#   tools/measure_from_nothing.sh --pip-cache DIR      # keep/reuse pip's cache in DIR (then the install
#                                                      # is a cached one: say so when you quote it)
#   tools/measure_from_nothing.sh --steps setup,models # a subset of setup, models, course, test
#
# The emulation (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) changes
# how torch computes, not how fast the compiler or llama.cpp run: quote its install time as this CPU's.
# Results: a summary on stdout and in $WORK/summary.txt; full logs beside it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
emulate=0
pip_cache=""
steps="setup,models,course"
while [ $# -gt 0 ]; do
  case "$1" in
    --emulate-avx2) emulate=1 ;;
    --pip-cache) pip_cache="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
work="$(mktemp -d /tmp/qllm-from-nothing.XXXXXX)"
git clone -q "$repo" "$work/course"
export PIP_CACHE_DIR="${pip_cache:-$work/pip-cache}" QLLM_CACHE_DIR="$work/models"
if [ "$emulate" = 1 ]; then
  export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
fi
cd "$work/course"
summary="$work/summary.txt"
{
  echo "from nothing: $(git log -1 --format='%h %s')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; emulate AVX2: $emulate"
  echo "pip cache: $PIP_CACHE_DIR ($( [ -n "$pip_cache" ] && echo 'given' || echo 'empty' ))"
} | tee "$summary"
for step in ${steps//,/ }; do
  started=$(date +%s)
  if make "$step" > "$work/$step.log" 2>&1; then status=ok; else status="FAILED (see $work/$step.log)"; fi
  seconds=$(( $(date +%s) - started ))
  printf '%-8s %4d min %02d s  %s\n' "$step" $((seconds / 60)) $((seconds % 60)) "$status" | tee -a "$summary"
  case "$step" in
    models) grep -E '^(gguf|hf|gptq|awq) ' "$work/$step.log" | tee -a "$summary" || true ;;
    course) grep -E '^(ok  |FAIL) ' "$work/$step.log" | tee -a "$summary" || true ;;
    setup) grep -E 'Building wheel for llama-cpp-python|Installing: about' "$work/$step.log" | head -2 \
             | tee -a "$summary" || true ;;
  esac
  [ "$status" = ok ] || exit 1
done
echo "logs and summary: $work" | tee -a "$summary"
