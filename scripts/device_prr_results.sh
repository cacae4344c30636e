#!/usr/bin/env bash
# scripts/device_prr_results.sh — the testbed's policy and controller-training tables of benchmarks/RESULTS.md, on a GPU
# machine.
#   OUT=<dir> scripts/device_prr_results.sh
# 1. the controller with progress labels (4 rounds), installed in prr_testbed/assets/controller;
# 2. the ablation with Learn2PD's binary labels (same settings; runs concurrently with 1 on the same GPU);
# 3. the policy sweep on the held-out test split: accuracy, NFE, AUP, Pareto plot. Threshold and PRR sweep the
#    same taus, so neither policy's AUP gets a wider range of operating points.
# Back under $OUT: rounds_progress.json, rounds_binary.json, controller/*, eval_results.json, pareto.png; they go to
# benchmarks/results/ as controller_rounds_{progress,binary}_<device>.json, policies_<device>.json and
# pareto_<device>.png, which benchmarks/render_results.py --write renders.
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
TAUS=0.5,0.7,0.8,0.9,0.95,0.98,0.99,0.995,0.999
COMMON=(--device cuda --rounds 3 --train-prompts 512 --val-prompts 128 --test-prompts 500 --batch-size 512
        --t-max-grid 1.0,2.0,4.0 --t-min-grid 0.25,0.5,0.8 --tau-grid "$TAUS" --select aup)
rm -rf runs/prr_progress runs/prr_binary
python3 -m prr_testbed.train_controller "${COMMON[@]}" --label progress --out runs/prr_progress --install >runs/train_progress.log 2>&1 &
p1=$!
python3 -m prr_testbed.train_controller "${COMMON[@]}" --label binary --out runs/prr_binary >runs/train_binary.log 2>&1 &
p2=$!
wait $p1; wait $p2
grep -E "^round|full refinement" runs/train_progress.log runs/train_binary.log
cp runs/prr_progress/rounds.json "$OUT/rounds_progress.json"
cp runs/prr_binary/rounds.json "$OUT/rounds_binary.json"
cp -r prr_testbed/assets/controller "$OUT/controller"
python3 -m prr_testbed.sweep --device cuda --n 500 --batch-size 500 --taus "$TAUS" --prr-taus "$TAUS" \
  --factors 0.05,0.1,0.25,0.5,1.0,2.0 --gammas 0.0001,0.001,0.01,0.1,0.5,1.0 --no-progress \
  --out "$OUT/eval_results.json" --plot "$OUT/pareto.png" | tail -45
