#!/usr/bin/env bash
# benchmarks/dev/ab_build.sh — time the current kernel and an earlier one (benchmarks/dev/step_cuda_vN.cu) in one
# device call: build, bench, swap the kernel source in, rebuild, bench again (the same shapes and policies).
#   OUT=... benchmarks/dev/ab_build.sh benchmarks/dev/step_cuda_v8.cu "(1,32);(8,256)" LowConfidence,PRR
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-$PWD/device_logs}"; mkdir -p "$OUT"
OLD="$1"; SHAPES="$2"; POLS="${3:-LowConfidence,PRR}"
build() { MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  >"$OUT/build_$1.log" 2>&1 || { tail -30 "$OUT/build_$1.log"; exit 1; }; echo "built ($1)"; }
bench() { PYTHONUNBUFFERED=1 timeout 280 python3 benchmarks/run_bench.py --no-append --shapes "$SHAPES" \
  --policies "$POLS" --compiled-policies "" 2>&1 | grep -E "^  |read bandwidth" | tee "$OUT/bench_$1.log"; }
echo "== new"; bench new
cp csrc/cuda/step_cuda.cu /tmp/step_cuda_new.cu && cp "$OLD" csrc/cuda/step_cuda.cu
echo "== old ($OLD)"; build old && bench old
cp /tmp/step_cuda_new.cu csrc/cuda/step_cuda.cu
