#!/usr/bin/env bash
# benchmarks/dev/kernel_variants.sh — time variants of the CUDA kernel side by side in one device call. The tree as it
# is is built (unless already installed) and benchmarked first; then, for each variant, the kernel source is
#   "label:NAME=VALUE,NAME=VALUE"   the current source with those #defines prepended (compile-time knobs), or
#   "label:@path/to/step_cuda.cu"   another source in its place (an earlier version kept in benchmarks/dev/; it
#                                   must build against the current headers, as step_cuda_v11.cu does),
# rebuilt and benchmarked on the same shapes and policies. The current source is restored at the end.
#   OUT=... benchmarks/dev/kernel_variants.sh "(8,32);(32,256)" LowConfidence,PRR "ctas3:PRR_MIN_CTAS=3" \
#       "v11:@benchmarks/dev/step_cuda_v11.cu"
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source benchmarks/dev/variant_build.sh
OUT="${OUT:-$PWD/device_logs}"; mkdir -p "$OUT"
SHAPES="$1"; POLS="$2"; shift 2
bench() { PYTHONUNBUFFERED=1 timeout 200 python3 benchmarks/run_bench.py --no-append --shapes "$SHAPES" \
  --policies "$POLS" --compiled-policies "" 2>&1 | grep -E "^  |read bandwidth" | sed "s/^/[$1] /"; }
python3 -c "import prr_ext; assert prr_ext.has_cuda_kernels()" 2>/dev/null || variant_build base
bench base
for v in "$@"; do
  label="${v%%:*}"
  variant_apply "${v#*:}"
  variant_build "$label" && bench "$label"
done
variant_restore
