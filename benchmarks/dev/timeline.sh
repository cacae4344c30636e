#!/usr/bin/env bash
# benchmarks/dev/timeline.sh — build the kernel with -DPRR_TIMELINE (phase stamps, development only) and print where
# a step's time goes (benchmarks/dev/timeline.py), then restore the source. Run on the GPU machine:
#   benchmarks/dev/timeline.sh "(1,32)" LowConfidence,PRR 126464 256
# TL_SHAPES="(1,32) (8,256)" runs several shapes; TL_DEFINES="NAME=VALUE ..." adds compile-time knobs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SRC=csrc/cuda/step_cuda.cu
cp "$SRC" /tmp/step_cuda_orig.cu
{ echo "#define PRR_TIMELINE 1"; for d in ${TL_DEFINES:-}; do echo "#define ${d%%=*} ${d#*=}"; done
  cat /tmp/step_cuda_orig.cu; } >"$SRC"
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -e . >/tmp/build_tl.log 2>&1 \
  || { tail -30 /tmp/build_tl.log; cp /tmp/step_cuda_orig.cu "$SRC"; exit 1; }
cp /tmp/step_cuda_orig.cu "$SRC"
for shape in ${TL_SHAPES:-"$1"}; do
  PYTHONUNBUFFERED=1 timeout 240 python3 benchmarks/dev/timeline.py "$shape" "${@:2}"
done
