#!/usr/bin/env bash
# benchmarks/dev/define_variants.sh — time compile-time variants of the kernel in one device call: for each
# "label:NAME=VALUE,NAME=VALUE" the kernel source gets those #defines prepended, is rebuilt and benchmarked; the
# unmodified source is built and benchmarked first, and restored at the end.
#   OUT=... benchmarks/dev/define_variants.sh "(8,32);(32,256)" LowConfidence,PRR "ctas3:PRR_MIN_CTAS=3" ...
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-$PWD/device_logs}"; mkdir -p "$OUT"
SHAPES="$1"; POLS="$2"; shift 2
SRC=csrc/cuda/step_cuda.cu
cp "$SRC" /tmp/step_cuda_orig.cu
build() { MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -e . \
  >"/tmp/build_$1.log" 2>&1 || { tail -30 "/tmp/build_$1.log"; return 1; }; }
bench() { PYTHONUNBUFFERED=1 timeout 200 python3 benchmarks/run_bench.py --no-append --shapes "$SHAPES" \
  --policies "$POLS" --compiled-policies "" 2>&1 | grep -E "^  |read bandwidth" | sed "s/^/[$1] /"; }
python3 -c "import prr_ext; assert prr_ext.has_cuda_kernels()" 2>/dev/null || build base
bench base
for v in "$@"; do
  label="${v%%:*}"; defs="${v#*:}"
  { for d in ${defs//,/ }; do echo "#define ${d%%=*} ${d#*=}"; done; cat /tmp/step_cuda_orig.cu; } >"$SRC"
  build "$label" && bench "$label"
done
cp /tmp/step_cuda_orig.cu "$SRC"
