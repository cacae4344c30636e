#!/usr/bin/env bash
# scripts/device_prr_train.sh — train PRR's controller on a GPU machine in one go (build, pipeline, results).
#   OUT=<dir> scripts/device_prr_train.sh [extra prr_ext.train args]
# Writes the run directory (rounds.json, per-round controllers) under $OUT/prr and installs the final controller in
# prr_ext/assets/controller (also copied to $OUT/controller).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/device_logs}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c 'import torch,sys; print("torch", torch.__version__, "python", sys.version.split()[0])' | tee -a "$OUT/device.txt"
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -q -e . >"$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
python3 -c 'import prr_ext; assert prr_ext.has_cuda_kernels()'
python3 -m prr_ext.train --device cuda --out "$OUT/prr" --install "$@" 2>&1 | grep -v "fit controller" | tee "$OUT/train.log"
cp -r prr_ext/assets/controller "$OUT/controller"
