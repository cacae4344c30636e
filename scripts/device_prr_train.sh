#!/usr/bin/env bash
# scripts/device_prr_train.sh — train PRR's controller on a GPU machine in one go (build, pipeline, results).
#   OUT=<dir> scripts/device_prr_train.sh [extra prr_testbed.train_controller args]
# Writes the run directory (rounds.json, per-round controllers) under $OUT/prr and installs the final controller in
# prr_testbed/assets/controller (also copied to $OUT/controller).
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
python3 -m prr_testbed.train_controller --device cuda --out "$OUT/prr" --install "$@" 2>&1 | grep -v "fit controller" | tee "$OUT/train.log"
cp -r prr_testbed/assets/controller "$OUT/controller"
