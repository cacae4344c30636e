#!/usr/bin/env bash
# benchmarks/device_run.sh — build + CUDA tests + compute-sanitizer + benchmarks on the GPU machine, in one go.
#
#   benchmarks/device_run.sh [phases]      phases: any of build,test,sanitize,sanitizeall,bench,benchjson,sweep,
#                                          ncu,ncusrc,policies,decode,engines,trainlong,oneread
#                                          (default: build,test,sanitize,bench)
#
# Logs go to $OUT (or ./device_logs). The benchmark JSON (bench: run_bench.py's step_<device>.json, or a stamped
# name for a partial run; benchjson: bench_step_<device>.json) goes to $OUT/results/: copy it to benchmarks/results/
# and run `python benchmarks/render_results.py --write` to update benchmarks/RESULTS.md.
# trainlong: the long-family testbed model (prr_testbed.train_model --compile) for TRAIN_MINUTES (default 8), from
# TRAIN_INIT if set (a model folder carried with the call); its fp32 weights come back in 15 MB parts
# ($OUT/long_model.safetensors.part-*: `cat` them together) with config.json and the log.
# Knobs: TEST_ARGS (extra pytest args), SAN_K (pytest -k for the sanitizer runs), SAN_SHARDS (processes per tool in
# sanitizeall), SAN_TIMEOUT, BENCH_ARGS (run_bench.py args, split on spaces), BENCH_NOTE (run_bench.py --note, passed
# whole: it may contain spaces), PRR_COMMIT / PRR_KERNEL (the commit / kernel tag the JSON records, where this copy's
# git metadata is not the tree's).
set -uo pipefail
export PRR_TEST_THREADS="${PRR_TEST_THREADS:-16}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/device_logs}"
mkdir -p "$OUT"
PHASES="${1:-build,test,sanitize,bench}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
has() { [[ ",$PHASES," == *",$1,"* ]]; }
t0=$SECONDS
stamp() { echo "=== [$((SECONDS - t0))s] $*"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
$PY -c 'import torch,sys; print("torch", torch.__version__, "python", sys.version.split()[0])' | tee -a "$OUT/device.txt"

if has build; then
  stamp "build (pip install --no-build-isolation --no-deps -e .)"
  MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 $PY -m pip install --no-build-isolation --no-deps -v -e . \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
  grep -E "^prr_ext setup:|spill|Used [0-9]+ registers" "$OUT/build.log" | head -20
  $PY -c 'import prr_ext; print("CUDA kernels:", prr_ext.has_cuda_kernels())'
fi

if has test; then
  stamp "CUDA tests"
  timeout ${TEST_TIMEOUT:-300} $PY -m pytest python_tests/test_cuda_step.py -q -p no:cacheprovider --maxfail=15 ${TEST_ARGS:-} \
    2>&1 | tee "$OUT/test.log" | tail -25
fi

# CUDA tests under compute-sanitizer memcheck and racecheck: the ids that pytest -k "$1" selects, split round-robin
# into $2 shards per tool, every shard a process of its own, all at once on the one GPU; logs $OUT/$3_<tool>_<i>.log.
sanitize_shards() {
  local k="$1" shards="$2" prefix="$3" tool i
  $PY -m pytest python_tests/test_cuda_step.py -q -p no:cacheprovider --collect-only -k "$k" \
    2>/dev/null | grep "::" >"$OUT/${prefix}_ids.txt"
  if [[ ! -s "$OUT/${prefix}_ids.txt" ]]; then  # (pytest without ids would run every test under the rootdir)
    echo "compute-sanitizer: no CUDA test collected for -k \"$k\" (no GPU, or the extension does not import)"
    return 1
  fi
  stamp "compute-sanitizer memcheck + racecheck, $(wc -l <"$OUT/${prefix}_ids.txt") tests, $shards shard(s) per tool"
  for tool in memcheck racecheck; do
    for ((i = 0; i < shards; i++)); do
      mapfile -t ids < <(awk -v s="$shards" -v i="$i" 'NR % s == i' "$OUT/${prefix}_ids.txt")
      timeout ${SAN_TIMEOUT:-500} compute-sanitizer --tool "$tool" --error-exitcode 99 \
        $PY -m pytest -q -p no:cacheprovider "${ids[@]}" >"$OUT/${prefix}_${tool}_$i.log" 2>&1 &
    done
  done
  wait
  for f in "$OUT/${prefix}"_*_[0-9]*.log; do
    echo "$(basename "$f"): $(grep -E "[0-9]+ (passed|failed|skipped)" "$f" | tail -1) | $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$f" | tail -1)"
  done
}

if has sanitize; then  # a selection of tests (SAN_K), one process per tool
  sanitize_shards "${SAN_K:-(test_matches_cpu and bfloat16 and (lowconf or prr_temp or eb)) or (test_tie_heavy and prr_temp) or test_cuda_graph_replay or (test_nan_and_inf_rows and prr_temp) or test_large_block_global_sort or test_external_inputs}" 1 sanitize
fi

if has sanitizeall; then
  # the whole CUDA suite (racecheck alone runs ~4 min serially) but test_large_offsets (a 4 GiB logits tensor: under
  # memcheck it outlasts a call), in SAN_SHARDS shards per tool
  sanitize_shards "not test_large_offsets" "${SAN_SHARDS:-3}" sanall
fi

if has bench; then
  stamp "benchmarks"
  timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/run_bench.py --out "$OUT/results/" ${BENCH_ARGS:-} \
    ${BENCH_NOTE:+--note "$BENCH_NOTE"} 2>&1 | tee "$OUT/bench.log" | tail -60
fi

if has sweep; then
  stamp "launch-shape sweep"
  timeout ${SWEEP_TIMEOUT:-240} $PY benchmarks/dev/profile_step.py sweep 2>&1 | tee "$OUT/sweep.log"
fi

if has policies; then  # every commit rule on the shipped testbed model: benchmarks/results/policies_all_<gpu>.json
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE "[A-Z][0-9]{2,3}" | head -1 | tr 'A-Z' 'a-z')
  stamp "testbed sweep of every rule (500 test prompts per family)"
  mkdir -p "$OUT/results"
  timeout ${POLICIES_TIMEOUT:-400} $PY -m prr_testbed.sweep --device cuda --n 500 --batch-size 500 --no-progress \
    --out "benchmarks/results/policies_all_${gpu:-gpu}.json" --plot "benchmarks/results/pareto_all_${gpu:-gpu}.png" \
    > "$OUT/policies.log" 2>&1; tail -3 "$OUT/policies.log"
  cp benchmarks/results/policies_all_${gpu:-gpu}.* "$OUT/results/" 2>/dev/null
fi

if has decode; then  # whole-loop decode speed of the LLaDA-8B-shaped model: benchmarks/results/decode/decode_llada8b_cuda.json
  stamp "decode speed, LLaDA-8B-shaped random bf16 model (B = ${DECODE_BATCH:-1,8,32})"
  mkdir -p "$OUT/results"
  timeout ${DECODE_TIMEOUT:-540} $PY benchmarks/decode_speed.py --model llada8b --device cuda \
    --batch "${DECODE_BATCH:-1,8,32}" --repeats "${DECODE_REPEATS:-2}" > "$OUT/decode.log" 2>&1; tail -22 "$OUT/decode.log"
  cp benchmarks/results/decode/decode_llada8b_cuda.json "$OUT/results/" 2>/dev/null
fi

if has engines; then  # one step through each engine adapter (sglang if importable): results/engines/*_cuda.json
  stamp "engine adapters, one step each"
  mkdir -p "$OUT/results"
  timeout ${ENGINES_TIMEOUT:-300} $PY benchmarks/engine_steps.py --device cuda > "$OUT/engines.log" 2>&1
  tail -24 "$OUT/engines.log"
  cp benchmarks/results/engines/engine_steps_cuda.json "$OUT/results/" 2>/dev/null
fi

if has trainlong; then
  stamp "long-family model training (${TRAIN_MINUTES:-8} min${TRAIN_INIT:+, from $TRAIN_INIT})"
  rm -rf /tmp/long_model
  timeout $(( ${TRAIN_MINUTES:-8} * 60 + 150 )) $PY -m prr_testbed.train_model --families mul,cumsum,sort,trace \
    --mix ${TRAIN_MIX:-1,1,1,1} --batch-size 256 --lr ${TRAIN_LR:-1e-3} --warmup 200 --d-model 320 --n-layers 8 \
    --n-heads 8 --d-ff 832 ${TRAIN_INIT:+--init-from "$TRAIN_INIT"} --budget-minutes "${TRAIN_MINUTES:-8}" \
    --eval-every 100000 --final-eval-n 200 --checkpoint-every 0 --weights-dtype float32 --workers 14 --compile \
    --no-progress --seed "${TRAIN_SEED:-2}" --out /tmp/long_model > "$OUT/trainlong.log" 2>&1
  tail -3 "$OUT/trainlong.log"
  cp /tmp/long_model/config.json "$OUT/long_model_config.json" 2>/dev/null
  split -b 15000000 /tmp/long_model/model.safetensors "$OUT/long_model.safetensors.part-" 2>/dev/null
fi

if has oneread; then  # benchmarks/dev/prr_one_read.cu: PRR's second sweep from global memory or from a cluster's smem
  stamp "prr_one_read"
  nvcc -O3 -std=c++17 -arch=sm_90a benchmarks/dev/prr_one_read.cu -o /tmp/prr_one_read &&
    timeout ${ONEREAD_TIMEOUT:-180} /tmp/prr_one_read ${ONEREAD_ROWS:-256 1024 2048 8192} | tee "$OUT/oneread.txt"
fi

if has ncu; then
  stamp "ncu (one launch)"
  timeout ${NCU_TIMEOUT:-120} ncu -k regex:step_kernel -s 3 -c 1 --section SpeedOfLight --section LaunchStats \
    --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    $PY benchmarks/dev/profile_step.py ncu "${NCU_SHAPE:-(1,32)}" "${NCU_POLICY:-LowConfidence}" >"$OUT/ncu.txt" 2>&1
  grep -E "Duration|Elapsed Cycles|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Cluster|Stall|Issued Ipc|No Eligible|Theoretical Occ" "$OUT/ncu.txt" | head -40
fi

if has ncusrc; then
  # per-SASS-instruction warp-stall samples (where the time goes, by code region): the CSV is read off-line
  stamp "ncu source-level stall sampling"
  timeout ${NCU_TIMEOUT:-150} ncu -k regex:step_kernel -s 3 -c 1 --section WarpStateStats --section SourceCounters \
    --import-source no -f -o /tmp/ncu_src $PY benchmarks/dev/profile_step.py ncu "${NCU_SHAPE:-(8,256)}" \
    "${NCU_POLICY:-LowConfidence}" >"$OUT/ncu_src.log" 2>&1
  ncu -i /tmp/ncu_src.ncu-rep --page source --csv --print-source sass >"$OUT/ncu_sass.csv" 2>>"$OUT/ncu_src.log"
  grep -E "Duration|Stall|Warp Cycles" "$OUT/ncu_src.log" | head -20; wc -l "$OUT/ncu_sass.csv"
fi

if has benchjson; then
  stamp "pytest-benchmark"
  slug=$($PY -c 'import sys; sys.path.insert(0, "benchmarks"); import render_results as R; print(R.device_slug(sys.argv[1]))' \
    "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)")
  mkdir -p "$OUT/results"
  timeout 300 $PY -m pytest benchmarks/bench_step.py -q -p no:cacheprovider ${BENCHJSON_ARGS:-} \
    --benchmark-json="$OUT/results/bench_step_$slug.json" 2>&1 | tail -15
fi
stamp "done"
