#!/usr/bin/env bash
# benchmarks/dev/timeline.sh — build the kernel with -DPRR_TIMELINE (phase stamps, development only) and print where
# a step's time goes (benchmarks/dev/timeline.py), then restore the source. Run on the GPU machine:
#   benchmarks/dev/timeline.sh "(1,32)" LowConfidence,PRR 126464 256
# TL_SHAPES="(1,32) (8,256)" runs several shapes; TL_DEFINES="NAME=VALUE,..." adds compile-time knobs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source benchmarks/dev/variant_build.sh
variant_apply "PRR_TIMELINE=1${TL_DEFINES:+,$TL_DEFINES}"
variant_build timeline || { variant_restore; exit 1; }
variant_restore
for shape in ${TL_SHAPES:-"$1"}; do
  PYTHONUNBUFFERED=1 timeout 240 python3 benchmarks/dev/timeline.py "$shape" "${@:2}"
done
