#!/usr/bin/env bash
# scripts/device_model.sh — train (or continue training) the testbed's model on a GPU machine and check its quality
# bar (vanilla and Threshold(0.5) accuracy on the test split).
#   OUT=<dir> scripts/device_model.sh <name>:<prr_testbed.train_model args> [<name>:<args> ...]
# Each candidate trains concurrently on the one GPU (the model is small; the data workers are split between them)
# into runs/<name>; then vanilla (LowConfidence, one token per step) and Threshold(0.5) are evaluated on the
# held-out TEST split (500 prompts per family). Choose between candidates by their final VALID accuracy
# (runs/<name>/config.json -> training.final_valid_acc), never by the test numbers. Back under $OUT: per candidate
# the eval JSON and <name>/{config.json,model.safetensors} (3 files each, so at most 2 candidates per call).
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
workers=$(( (16 - 1) / $# )); (( workers >= 1 )) || workers=1
pids=()
for spec in "$@"; do
  name="${spec%%:*}"; args="${spec#*:}"
  # shellcheck disable=SC2086
  python3 -m prr_testbed.train_model --device cuda --no-progress --workers "$workers" --out "runs/$name" $args \
    >"runs/train_$name.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for spec in "$@"; do
  name="${spec%%:*}"
  grep -E "valid|step" "runs/train_$name.log" | tail -6
  python3 - "$name" <<'PY'
import json, sys
c = json.load(open(f"runs/{sys.argv[1]}/config.json"))["training"]
print(sys.argv[1], "final valid acc", c["final_valid_acc"], "train s", c["train_seconds"])
PY
  python3 -m prr_testbed.sweep --device cuda --model "runs/$name" --policies lowconf,threshold --taus 0.5 --n 500 \
    --batch-size 500 --no-progress --out "$OUT/eval_$name.json" --plot /tmp/eval_$name.png | tail -12
  mkdir -p "$OUT/$name" && cp "runs/$name/config.json" "runs/$name/model.safetensors" "$OUT/$name/"
done
